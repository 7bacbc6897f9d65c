"""NumPy ``.npy`` files: memory-mapped (lazy, via :class:`NpySource`) or loaded (small files)."""

from __future__ import annotations

import os

import numpy as np

from .._validate import is_dask
from ..errors import Distill4dError, Distill4dTypeError
from ._common import Loaded, check_dtype, scan_chunks, want_lazy
from .sources import CorruptFileError, NpySource, read_npy_header

__all__ = ["read_npy"]


def read_npy(path: str, lazy: bool | None, budget: int) -> Loaded:
    """Read a ``.npy`` array (3D stack, 4D or squeezable 5D); see :func:`distill4d.io.read`."""
    shape, fortran, dtype, offset = read_npy_header(path)
    if dtype.hasobject:
        raise Distill4dTypeError(
            f"{path}: the array has dtype {dtype} (Python objects); expected real detector intensities"
        )
    check_dtype(dtype, path)
    if len(shape) < 3:
        raise Distill4dError(
            f"{path}: the array has shape {shape}, which is not 4D-STEM data "
            "(expected (Rx, Ry, Qx, Qy) or a stack (N, Qx, Qy))"
        )
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    source = NpySource(path)  # checks the file is long enough for its header's shape
    if want_lazy(lazy, nbytes, budget):
        import dask.array as da
        from dask.base import tokenize

        scan_axes = 1 if len(shape) == 3 else len(shape) - 2
        chunks = scan_chunks(shape, dtype.itemsize, None, budget, scan_axes=scan_axes)
        data = da.from_array(source, chunks=chunks, name=f"npy-{tokenize(source)}")
    else:
        try:
            data = np.load(path, allow_pickle=False)
        except (ValueError, EOFError, OSError) as err:
            raise CorruptFileError(f"{path}: the file is truncated or corrupt ({err})") from None
    return Loaded(data, name=os.path.basename(path), source=source if is_dask(data) else None)


def read_npy_2d(path: str) -> np.ndarray | None:
    """The array of a ``.npy`` file if it is 2D (an image), else None."""
    shape, _, dtype, _ = read_npy_header(path)
    if len(shape) != 2:
        return None
    check_dtype(dtype, path)
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, EOFError, OSError) as err:
        raise CorruptFileError(f"{path}: the file is truncated or corrupt ({err})") from None
