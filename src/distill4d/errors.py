"""The one error type of distill4d for bad input.

:class:`Distill4dError` is raised when what a user passed (an argument, a file, a
configuration) cannot be used. It subclasses :class:`ValueError`, so ``except ValueError``
keeps working. The command line shows it as one line (``distill4d: error: ...``); any
other exception there is a bug and shows its traceback.
"""

from __future__ import annotations

__all__ = ["Distill4dError"]


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
