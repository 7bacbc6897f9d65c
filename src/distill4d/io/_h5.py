"""HDF5 helpers shared by the readers of :mod:`distill4d.io` (own/EMD HDF5, ARINA, RosettaSciIO)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..calibration import Calibration
from .sources import CorruptFileError

__all__ = ["dask_token", "h5_value", "read_all", "safe_calibration", "short_error"]


def short_error(err: BaseException) -> str:
    """The first line of an error's message (its type name when it has none)."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def dask_token(source: Any) -> str:
    """A deterministic Dask token of a file source (the name of the Dask array over it)."""
    from dask.base import tokenize

    return tokenize(source)


def read_all(dset: Any, path: str) -> np.ndarray:
    """The whole HDF5 dataset ``dset`` of the file ``path`` in memory (CorruptFileError if it cannot be read)."""
    try:
        return np.asarray(dset[()])
    except (OSError, RuntimeError) as err:
        raise CorruptFileError(
            f"{path}: reading dataset {dset.name} failed: the file is truncated or corrupt ({short_error(err)})"
        ) from None


def safe_calibration(fields: dict[str, Any], path: str) -> Calibration:
    """A Calibration from file values, dropping (with a warning) any that fails validation."""
    import warnings

    good: dict[str, Any] = {}
    for key, value in fields.items():
        if value is None:
            continue
        try:
            Calibration(**{key: value})
        except (TypeError, ValueError) as err:
            warnings.warn(f"{path}: ignoring calibration {key}={value!r} from the file ({err})", stacklevel=4)
            continue
        good[key] = value
    return Calibration(**good)


def h5_value(obj: Any) -> Any:
    """The value of an HDF5 dataset as a Python scalar, string or array (None for a group)."""
    import h5py

    if isinstance(obj, h5py.Group):
        return None
    v = obj[()]
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.ndarray) and v.ndim == 0:
        return v.item()
    return v
