"""One result container: named arrays + their units + the Calibration + provenance.

Every analysis result (virtual images, CoM / iDPC, Bragg peaks, strain maps, ML phase
images, CC-ST-AE) can be turned into a :class:`Results` and written with one writer,
:meth:`Results.to_h5` (the atomic results writer of :mod:`distill4d.io.write`), and read
back with :meth:`Results.from_h5` / :func:`read_results`.

File layout (``distill4d_format = "results"``)::

    /                 distill4d_format="results", distill4d_format_version, distill4d_version,
                      provenance = JSON {method, parameters, inputs, command, version, created},
                      + the caller's attrs
    /calibration      attributes Calibration.to_attrs() (names carry units: scan_step_A, ...)
    /results/<name>   one dataset per array, attribute ``units``

The result classes with a file format of their own (``StrainMap``, ``BraggPeaks``) keep
their arrays at the root (so their files read as before) and add the same ``/calibration``
group and ``provenance`` attribute.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import datetime
import json
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .calibration import Calibration
from .errors import Distill4dError

__all__ = ["Provenance", "Results", "command_line", "read_results"]


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command as typed: ``"distill4d " + " ".join(argv)`` (default ``sys.argv[1:]``)."""
    return " ".join(["distill4d", *(sys.argv[1:] if argv is None else argv)])


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _version() -> str:
    from ._version import __version__

    return __version__


def _jsonable(value: Any) -> Any:
    """``value`` with tuples, NumPy scalars/arrays, slices and paths turned into JSON types."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, slice):
        return [value.start, value.stop] if value.step in (None, 1) else [value.start, value.stop, value.step]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    return str(value)


@dataclasses.dataclass(frozen=True)
class Provenance:
    """How a result was made.

    Attributes
    ----------
    method : what computed it (e.g. ``"strain_map"``, ``"idpc"``, ``"correlation"``).
    parameters : the method's parameters (JSON-able after conversion: tuples become lists,
        slices ``[start, stop]``, other objects their ``str``).
    inputs : the input files or upstream results it came from.
    command : the command line, when made by the CLI (``""`` otherwise).
    version : the distill4d version that made it.
    created : UTC time of creation, ISO 8601.
    """

    method: str
    parameters: dict[str, Any] = dataclasses.field(default_factory=dict)
    inputs: tuple[str, ...] = ()
    command: str = ""
    version: str = dataclasses.field(default_factory=_version)
    created: str = dataclasses.field(default_factory=_now)

    def __post_init__(self) -> None:
        if not isinstance(self.method, str):
            raise TypeError(f"method must be a string, got {type(self.method).__name__}")
        if not isinstance(self.parameters, Mapping):
            raise TypeError(f"parameters must be a dict {{name: value}}, got {type(self.parameters).__name__}")
        if isinstance(self.inputs, (str, os.PathLike)):
            raise TypeError(f"inputs must be a list of paths or names, got the single value {self.inputs!r}")
        object.__setattr__(self, "parameters", _jsonable(self.parameters))
        object.__setattr__(self, "inputs", tuple(os.fspath(i) if isinstance(i, os.PathLike) else str(i)
                                                 for i in self.inputs))
        for name in ("command", "version", "created"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name} must be a string, got {getattr(self, name)!r}")

    def derive(
        self, method: str, parameters: Mapping[str, Any] | None = None, *, key: str = "input", **changes: Any
    ) -> "Provenance":
        """The provenance of a result computed from this one by ``method``: this method and its
        parameters go under ``parameters[key]`` as ``{"method", "parameters"}``; inputs and command
        carry over unless given in ``changes``."""
        params = {key: {"method": self.method, "parameters": dict(self.parameters)}, **(parameters or {})}
        return dataclasses.replace(self, method=method, parameters=params, version=_version(), created=_now(),
                                   **changes)

    def replace(self, **changes: Any) -> "Provenance":
        """A copy with the given fields changed (e.g. ``command=..., inputs=(path,)``)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of the fields."""
        out = dataclasses.asdict(self)
        out["inputs"] = list(self.inputs)
        return out

    def to_json(self) -> str:
        """:meth:`to_dict` as JSON text (the ``provenance`` attribute of results files)."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Provenance":
        """Inverse of :meth:`to_dict`; missing fields get their defaults, unknown keys are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        kwargs.setdefault("method", "")
        kwargs["inputs"] = tuple(kwargs.get("inputs", ()))
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str | bytes) -> "Provenance":
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Results(collections.abc.Mapping):
    """Named result arrays with units, calibration and provenance; a read-only dict ``{name: array}``.

    Attributes
    ----------
    arrays : ``{name: np.ndarray}``.
    units : ``{name: unit}`` (``""`` where none was given).
    attrs : other file-level attributes (e.g. the command line of files written before
        provenance existed).
    calibration : the calibration of the data the arrays came from.
    provenance : how they were made, or None when not recorded.
    """

    arrays: dict[str, np.ndarray]
    units: dict[str, str] = dataclasses.field(default_factory=dict)
    attrs: dict[str, Any] = dataclasses.field(default_factory=dict)
    calibration: Calibration = dataclasses.field(default_factory=Calibration)
    provenance: Provenance | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.arrays, Mapping):
            raise TypeError(f"arrays must be a dict {{name: array}}, got {type(self.arrays).__name__}")
        if not isinstance(self.units, Mapping):
            raise TypeError(f"units must be a dict {{name: unit}}, got {type(self.units).__name__}")
        unknown = set(self.units) - set(self.arrays)
        if unknown:
            raise Distill4dError(f"units given for {sorted(unknown)}, which are not among the arrays {sorted(self.arrays)}")
        if not isinstance(self.calibration, Calibration):
            raise TypeError(f"calibration must be a distill4d.Calibration, got {type(self.calibration).__name__}")
        if self.provenance is not None and not isinstance(self.provenance, Provenance):
            raise TypeError(f"provenance must be a Provenance or None, got {type(self.provenance).__name__}")
        object.__setattr__(self, "arrays", dict(self.arrays))
        object.__setattr__(self, "units", {k: str(self.units.get(k, "")) for k in self.arrays})
        object.__setattr__(self, "attrs", dict(self.attrs))

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self.arrays[name]
        except KeyError:
            raise KeyError(f"no result {name!r}; available: {sorted(self.arrays)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.arrays)

    def __len__(self) -> int:
        return len(self.arrays)

    def __repr__(self) -> str:
        items = ", ".join(
            f"{k} {np.shape(v)} {np.asarray(v).dtype}" + (f" [{self.units[k]}]" if self.units.get(k) else "")
            for k, v in self.arrays.items()
        )
        how = f", method {self.provenance.method!r}" if self.provenance is not None else ""
        return f"Results({items}{how})"

    def to_h5(self, path: str | os.PathLike, *, force: bool = False, group: str = "results") -> Path:
        """Write the arrays (with units) under ``/<group>``, ``/calibration`` and the provenance to an
        HDF5 file, atomically (:func:`distill4d.io.write.write_results_file`). ``group=""`` puts the
        arrays at the root (the layout of ``StrainMap`` and ``BraggPeaks`` files). FileExistsError
        if ``path`` exists and not ``force``."""
        from .io.write import write_results_file

        return write_results_file(path, self.arrays, units=self.units, attrs=self.attrs, force=force,
                                  calibration=self.calibration, provenance=self.provenance, group=group)

    def replace(self, **changes: Any) -> "Results":
        """A copy with the given fields changed (e.g. ``arrays={**r.arrays, "extra": a}``)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_h5(cls, path: str | os.PathLike) -> "Results":
        """Read a results file (also those written before calibration and provenance were stored)."""
        return read_results(path)


def read_results(path: str | os.PathLike) -> Results:
    """Read a results file: one written by :func:`distill4d.write` with a dict or
    :meth:`Results.to_h5`, the ``results=`` stored beside a DataCube, or a ``StrainMap`` /
    ``BraggPeaks`` file.

    Returns a :class:`Results`: a read-only mapping ``{name: array}`` with ``.units``,
    ``.attrs``, ``.calibration`` (empty where the file has none) and ``.provenance`` (None where
    the file records none; files written before provenance existed give one from their
    ``command`` and ``input`` attributes).
    """
    from .io.write import read_results_file

    arrays, units, attrs, calibration = read_results_file(path)
    return Results(arrays, units, attrs, calibration, _read_provenance(attrs))


def _read_provenance(attrs: dict[str, Any]) -> Provenance | None:
    """The ``provenance`` attribute (removed from ``attrs``), else one from an older file's
    ``command`` / ``input`` attributes, else None."""
    text = attrs.pop("provenance", None)
    if text is not None:
        try:
            return Provenance.from_json(text)
        except (ValueError, TypeError, KeyError) as err:
            raise Distill4dError(f"the file's provenance attribute is not valid provenance JSON ({err})") from None
    if "command" not in attrs:
        return None
    inputs = (str(attrs["input"]),) if "input" in attrs else ()
    return Provenance("", inputs=inputs, command=str(attrs["command"]),
                      version=str(attrs.get("distill4d_version", "")), created="")
