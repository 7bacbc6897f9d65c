"""The one error type of distill4d for bad input.

:class:`Distill4dError` is raised when what a user passed (an argument, a file, a
configuration) cannot be used. It subclasses :class:`ValueError`, so ``except ValueError``
keeps working. The command line shows it as one line (``distill4d: error: ...``); any
other exception there is a bug and shows its traceback.
"""

from __future__ import annotations

__all__ = ["Distill4dError", "Distill4dKeyError", "Distill4dTypeError"]


class Distill4dError(ValueError):
    """Bad input: an argument, a file or a configuration that cannot be used.

    The message names the argument, what it got and what it expects.

    Examples
    --------
    >>> from distill4d import Distill4dError
    >>> try:
    ...     raise Distill4dError("radius must be > 0, got -1")
    ... except ValueError as err:
    ...     print(err)
    radius must be > 0, got -1
    """


class Distill4dKeyError(Distill4dError, KeyError):
    """A :class:`Distill4dError` for a name that is not there (a dataset in a file, a signal).

    It is also a :class:`KeyError`, as the readers documented before; unlike a plain
    ``KeyError`` its message is shown as written, not quoted.
    """

    __str__ = Exception.__str__


class Distill4dTypeError(Distill4dError, TypeError):
    """A :class:`Distill4dError` for input of the wrong kind that came from a file the user gave
    (a dataset of complex numbers, a configuration entry that is not a table).

    It is also a :class:`TypeError`, as these checks raised before. A ``TypeError`` from a
    Python argument of the wrong type stays a plain ``TypeError``: a bug in the calling code.
    """
