"""Shared pieces of the readers: memory budget, chunking, units, shapes, results of a reader."""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any

import numpy as np

from .._validate import intensity_dtype, positive_int
from ..calibration import Calibration
from ..errors import Distill4dError, Distill4dTypeError

__all__ = [
    "Loaded",
    "memory_budget",
    "want_lazy",
    "scan_chunks",
    "length_to_A",
    "inv_length_to_inv_A",
    "angle_to_mrad",
    "to_4d",
]

#: How error messages name the dataset and scan-shape options: the CLI flag and the keyword of read().
DATASET_HINT = "--dataset PATH (dataset= in Python)"
SCAN_SHAPE_HINT = "--scan-shape RX RY (scan_shape=(Rx, Ry) in Python)"

#: Size of one lazy chunk the readers aim for, in bytes (whole patterns along the scan).
CHUNK_TARGET_BYTES = 96 * 2**20


@dataclasses.dataclass
class Loaded:
    """What a format reader hands back before shaping: data (NumPy or Dask, 3D-5D) and calibration.

    ``q_pixel_mrad`` is the detector pixel as an angle when the file gives it in mrad only;
    it becomes ``q_pixel_inv_A`` once the beam energy is known (from the file or the caller).
    ``scan_shape`` is the scan a stack of frames ``(N, Qx, Qy)`` was recorded on, when the
    format knows it (the caller's ``scan_shape`` wins).
    """

    data: Any
    calibration: Calibration = dataclasses.field(default_factory=Calibration)
    q_pixel_mrad: float | None = None
    name: str = ""
    scan_shape: tuple[int, int] | None = None  # the format's own scan shape for a stack of frames
    source: Any = None  # the picklable file reader behind a lazy ``data``, if any


def memory_budget(value: int | None) -> int:
    """The memory budget in bytes: ``value``, else env DISTILL4D_MEMORY_BUDGET, else the engine default."""
    if value is None:
        from ..engine import DEFAULT_MEMORY_BUDGET

        env = os.environ.get("DISTILL4D_MEMORY_BUDGET")
        if env:
            try:
                value = int(float(env))
            except ValueError:
                raise Distill4dError(
                    f"environment variable DISTILL4D_MEMORY_BUDGET must be a number of bytes, got {env!r}"
                ) from None
        else:
            value = DEFAULT_MEMORY_BUDGET
    return positive_int("memory_budget", value, minimum=1 << 20)


def want_lazy(lazy: bool | None, nbytes: int, budget: int) -> bool:
    """Whether to read lazily: ``lazy`` when given, else when the data is larger than the budget."""
    if lazy is None:
        return nbytes > budget
    if not isinstance(lazy, (bool, np.bool_)):
        raise TypeError(f"lazy must be True, False or None, got {lazy!r}")
    return bool(lazy)


def scan_chunks(
    shape: tuple[int, ...],
    itemsize: int,
    storage_chunks: tuple[int, ...] | None = None,
    budget: int | None = None,
    scan_axes: int = 2,
) -> tuple[int, ...]:
    """Dask chunks of whole patterns along the scan, about CHUNK_TARGET_BYTES each.

    The first ``scan_axes`` axes are the scan (2 for ``(Rx, Ry, Qx, Qy)``, 1 for a stack
    ``(N, Qx, Qy)``); the others are kept whole. Chunk edges fall on the storage chunks of
    an HDF5 dataset where it has them, so that no storage chunk is read twice.
    """
    target = CHUNK_TARGET_BYTES if budget is None else max(1, min(CHUNK_TARGET_BYTES, budget // 4))
    pattern = int(np.prod(shape[scan_axes:], dtype=np.int64)) * itemsize
    per_chunk = max(1, target // max(pattern, 1))  # patterns per chunk
    store = tuple(storage_chunks) if storage_chunks else (1,) * len(shape)

    def aligned(n: int, step: int, total: int) -> int:
        n = max(1, min(n, total))
        if step > 1 and n >= step:
            n = (n // step) * step
        elif step > 1:
            n = min(step, total)
        return n

    if scan_axes == 1:
        return (aligned(per_chunk, store[0], shape[0]),) + tuple(shape[1:])
    lead = tuple(1 for _ in shape[: scan_axes - 2])
    rx, ry = shape[scan_axes - 2], shape[scan_axes - 1]
    sx, sy = store[scan_axes - 2], store[scan_axes - 1]
    if per_chunk >= ry:
        return lead + (aligned(per_chunk // ry, sx, rx), ry) + tuple(shape[scan_axes:])
    return lead + (1, aligned(per_chunk, sy, ry)) + tuple(shape[scan_axes:])


# ---------------------------------------------------------------------- units
_LENGTH_A = {
    "a": 1.0,
    "å": 1.0,
    "ang": 1.0,
    "angstrom": 1.0,
    "angstroms": 1.0,
    "nm": 10.0,
    "pm": 0.01,
    "um": 1e4,
    "µm": 1e4,
    "μm": 1e4,
    "mm": 1e7,
    "m": 1e10,
}
_ANGLE_MRAD = {"mrad": 1.0, "rad": 1e3, "urad": 1e-3, "µrad": 1e-3, "μrad": 1e-3}


def _clean_units(units: Any) -> str:
    if isinstance(units, bytes):
        units = units.decode("utf-8", "replace")
    u = str(units or "").strip().lower()
    u = u.replace("[", "").replace("]", "").replace("_", "").replace(" ", "")
    u = u.replace("\u00c5", "å").replace("\u212b", "å")  # Å and the Ångström sign
    return u


def _inverse_base(u: str) -> str | None:
    """'1/nm', 'nm^-1', 'nm-1', 'nm⁻¹' -> 'nm'; None when not an inverse unit."""
    for pattern in (r"^1/(.+)$", r"^(.+)\^-1$", r"^(.+)\*\*-1$", r"^(.+)⁻¹$", r"^(.+)-1$"):
        m = re.match(pattern, u)
        if m:
            return m.group(1)
    return None


def length_to_A(value: float, units: Any) -> float | None:
    """A real-space length in Å, or None when ``units`` is not a length unit (e.g. pixels, '')."""
    u = _clean_units(units)
    if u in _LENGTH_A and _inverse_base(u) is None:
        return float(value) * _LENGTH_A[u]
    return None


def inv_length_to_inv_A(value: float, units: Any) -> float | None:
    """A reciprocal length in 1/Å, or None when ``units`` is not a reciprocal length unit."""
    base = _inverse_base(_clean_units(units))
    if base is not None and base in _LENGTH_A:
        return float(value) / _LENGTH_A[base]
    return None


def angle_to_mrad(value: float, units: Any) -> float | None:
    """An angle in mrad, or None when ``units`` is not an angle unit."""
    u = _clean_units(units)
    if u in _ANGLE_MRAD:
        return float(value) * _ANGLE_MRAD[u]
    return None


def positive_or_none(value: Any) -> float | None:
    """``value`` as a float when it is finite and > 0, else None (file values are not trusted blindly)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def same_step(a: float | None, b: float | None) -> float | None:
    """The common step of two axes, or None when either is unknown or they differ by more than 1e-6."""
    if a is None or b is None:
        return None
    return a if abs(a - b) <= 1e-6 * max(abs(a), abs(b)) else None


# ---------------------------------------------------------------------- shapes
def to_4d(data: Any, path: str, scan_shape: tuple[int, int] | None = None, what: str = "") -> Any:
    """``data`` as ``(Rx, Ry, Qx, Qy)``.

    A stack ``(N, Qx, Qy)`` becomes ``scan_shape + (Qx, Qy)`` when ``scan_shape`` is given,
    else a line scan ``(1, N, Qx, Qy)``. A 5D array with size-1 leading axes is squeezed.
    A 4D array whose scan does not match ``scan_shape`` is reshaped when the number of
    patterns agrees.
    """
    label = f"{path}{(' ' + what) if what else ''}"
    shape = tuple(int(s) for s in data.shape)
    while len(shape) > 4 and shape[0] == 1:
        data = data[0]
        shape = shape[1:]
    if len(shape) > 4:
        raise Distill4dError(
            f"{label} has shape {shape}: more than 4 dimensions with a leading axis longer than 1; "
            f"choose one 4D dataset with {DATASET_HINT}, or slice it first"
        )
    if len(shape) < 3:
        raise Distill4dError(
            f"{label} has shape {shape}: a {len(shape)}D array is not 4D-STEM data "
            "(expected (Rx, Ry, Qx, Qy), or a stack of patterns (N, Qx, Qy))"
        )
    n = int(np.prod(shape[:-2], dtype=np.int64))
    if scan_shape is not None:
        scan_shape = _check_scan_shape(scan_shape)
        if scan_shape[0] * scan_shape[1] != n:
            raise Distill4dError(
                f"the scan shape {scan_shape[0]} x {scan_shape[1]} (--scan-shape / scan_shape=) holds "
                f"{scan_shape[0] * scan_shape[1]} patterns, "
                f"but {label} has {n} (shape {shape})"
            )
        if shape[:-2] != scan_shape:
            data = data.reshape(scan_shape + shape[-2:])
        return data
    if len(shape) == 3:
        data = data.reshape((1,) + shape)
    return data


def _check_scan_shape(scan_shape: Any) -> tuple[int, int]:
    try:
        a, b = scan_shape
    except (TypeError, ValueError):
        raise TypeError(f"scan_shape must be a pair (Rx, Ry) of integers, got {scan_shape!r}") from None
    return positive_int("scan_shape[0]", a), positive_int("scan_shape[1]", b)


def check_dtype(dtype: Any, path: str, what: str = "") -> np.dtype:
    """Raise Distill4dTypeError (a TypeError naming the file) unless ``dtype`` holds real intensities."""
    label = f"{path}{(' ' + what) if what else ''}"
    try:
        return intensity_dtype(label, dtype)
    except TypeError as err:
        raise Distill4dTypeError(str(err).replace(" must hold", ": the data must hold", 1)) from None


def native(data: Any) -> Any:
    """``data`` in native byte order (a lazy conversion for Dask arrays)."""
    dt = np.dtype(data.dtype)
    if dt.byteorder not in ("=", "|") and dt.byteorder != ("<" if np.little_endian else ">"):
        return data.astype(dt.newbyteorder("="))
    return data
