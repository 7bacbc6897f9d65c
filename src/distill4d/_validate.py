"""Small validators that raise errors naming the argument, what it got and what it expects."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .errors import Distill4dError, Distill4dTypeError

__all__ = ["positive_int", "positive_float", "nonnegative_float", "intensity_dtype", "pattern_array", "is_dask"]


def is_dask(array: Any) -> bool:
    """True if ``array`` is a Dask collection (checked by type, without importing Dask)."""
    return type(array).__module__.startswith("dask.")


def positive_int(name: str, value: Any, *, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            value = int(value)
        else:
            raise Distill4dTypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise Distill4dError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def positive_float(name: str, value: Any, *, maximum: float = math.inf) -> float:
    """``value`` as a finite float in (0, maximum]."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise Distill4dTypeError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v <= 0 or v > maximum:
        raise Distill4dError(f"{name} must be a finite number in (0, {maximum:g}], got {value!r}")
    return v


def nonnegative_float(name: str, value: Any, *, maximum: float = math.inf) -> float:
    """``value`` as a finite float in [0, maximum]."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise Distill4dTypeError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < 0:
        raise Distill4dError(f"{name} must be a finite number >= 0, got {value!r}")
    if v > maximum:
        raise Distill4dError(f"{name} must be a finite number in [0, {maximum:g}], got {value!r}")
    return v


def intensity_dtype(name: str, dtype: Any) -> np.dtype:
    """Check that ``dtype`` can hold detector intensities (real integers or floats)."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "uif":
        what = {"c": "complex", "b": "boolean", "O": "object", "U": "string", "S": "bytes"}.get(
            dtype.kind, dtype.kind
        )
        raise TypeError(
            f"{name} must hold real detector intensities (integer or float), got dtype {dtype} "
            f"({what}); convert it first, e.g. np.abs(data)**2 for complex wave functions"
        )
    return dtype


def pattern_array(name: str, value: Any, *, ndim: int = 2) -> np.ndarray:
    """``value`` as a finite float array with ``ndim`` dimensions (a pattern, a mask, a probe)."""
    arr = np.asarray(value)
    if arr.ndim != ndim:
        raise Distill4dError(f"{name} must be a {ndim}D array, got shape {arr.shape}")
    if arr.dtype.kind == "b":
        arr = arr.astype(np.float32)
    intensity_dtype(name, arr.dtype)
    if arr.size == 0:
        raise Distill4dError(f"{name} is empty (shape {arr.shape})")
    if not np.all(np.isfinite(arr)):
        raise Distill4dError(f"{name} contains NaN or Inf values")
    return arr


def read_mapping_file(path: Any, what: str) -> dict[str, Any]:
    """A TOML (``.toml``) or JSON file as a dict; FileNotFoundError / ValueError naming ``what``."""
    import json
    import pathlib

    p = pathlib.Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} {p} does not exist")
    text = p.read_text()
    try:
        if p.suffix.lower() == ".toml":
            import tomllib

            d = tomllib.loads(text)
        else:
            d = json.loads(text)
    except ValueError as err:
        raise Distill4dError(f"cannot parse the {what} {p}: {err}") from None
    if not isinstance(d, dict):
        raise Distill4dError(f"the {what} {p} must hold a mapping of keys to values, got {type(d).__name__}")
    return d


def check_keys(cls: Any, d: Any, what: str) -> None:
    """ValueError naming the keys of ``d`` that are not fields of the dataclass ``cls``."""
    import dataclasses

    if not isinstance(d, dict):
        raise Distill4dTypeError(f"a {what} must be a mapping of keys to values, got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise Distill4dError(f"unknown {what} keys {unknown}; known: {sorted(known)}")
