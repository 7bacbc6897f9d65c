"""Picklable array sources for lazy reads: they reopen their file in each process.

A Dask array made with ``dask.array.from_array(source, chunks=...)`` over one of these
classes carries only the file path (and offsets) in its task graph, so slices of it can be
pickled and sent to Dask workers, which open the file themselves on first access. The open
handle is never pickled, and is reopened after a fork (the process id is checked).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..errors import Distill4dError, Distill4dKeyError

__all__ = ["H5Source", "MemmapSource", "NpySource", "CorruptFileError"]


class CorruptFileError(Distill4dError):
    """A file that cannot be read because it is truncated, corrupt or not in the format its name says."""


def _file_token(path: str) -> tuple:
    try:
        st = os.stat(path)
        return (st.st_size, st.st_mtime_ns)
    except OSError:
        return (None, None)


class _Source:
    """Shared machinery: lazy per-process opening, pickling without the handle, Dask tokens."""

    path: str
    shape: tuple[int, ...]
    dtype: np.dtype

    def __init__(self) -> None:
        self._handle: Any = None
        self._pid: int | None = None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def _array(self) -> Any:
        if self._handle is None or self._pid != os.getpid():
            self._handle = self._open()
            self._pid = os.getpid()
        return self._handle

    def _open(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handle"] = None
        state["_pid"] = None
        if "_fd" in state:
            state["_fd"] = None
            state["_fd_pid"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def __dask_tokenize__(self) -> tuple:
        return (type(self).__name__, self._key(), _file_token(self.path))

    def _key(self) -> tuple:  # pragma: no cover - abstract
        raise NotImplementedError

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[tuple(slice(None) for _ in self.shape)]
        return out if dtype is None else out.astype(dtype)


def open_h5_file(path: str) -> Any:
    """``h5py.File(path, "r")`` with the compression filters registered; a missing file raises
    FileNotFoundError and an unreadable one CorruptFileError, both naming the file."""
    import h5py
    import hdf5plugin  # noqa: F401  (registers bitshuffle/LZ4/... filters)

    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except OSError as err:
        lines = str(err).strip().splitlines()
        raise CorruptFileError(
            f"{path}: not a readable HDF5 file; the file is truncated or corrupt "
            f"({lines[0] if lines else type(err).__name__})"
        ) from None


class H5Source(_Source):
    """One HDF5 dataset, opened read-only on first access in each process.

    Parameters
    ----------
    path : the HDF5 file.
    dataset : the dataset's path inside the file (e.g. ``"/datacube_root/datacube/data"``).
    shape, dtype : the dataset's shape and dtype (read from the file when omitted).
    """

    def __init__(
        self, path: str | os.PathLike, dataset: str, shape: tuple[int, ...] | None = None, dtype: Any = None
    ) -> None:
        super().__init__()
        self.path = os.fspath(path)
        self.dataset = str(dataset)
        if shape is None or dtype is None:
            dset = self._array()
            shape, dtype = dset.shape, dset.dtype
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)

    def _open(self) -> Any:
        f = open_h5_file(self.path)
        try:
            return f[self.dataset]
        except KeyError:
            f.close()
            raise Distill4dKeyError(
                f"{self.path}: dataset {self.dataset!r} not found (was the file changed?)"
            ) from None

    def _key(self) -> tuple:
        return (self.path, self.dataset, self.shape, str(self.dtype))

    def __getitem__(self, key: Any) -> np.ndarray:
        dset = self._array()
        try:
            return np.asarray(dset[key])
        except (OSError, RuntimeError) as err:
            raise CorruptFileError(
                f"{self.path}: reading {self.dataset}{_fmt_key(key)} failed: "
                f"the file is truncated or corrupt ({err})"
            ) from None

    def __repr__(self) -> str:
        return f"H5Source({self.path!r}, {self.dataset!r}, shape={self.shape}, dtype={self.dtype})"


class MemmapSource(_Source):
    """A binary array at a byte offset in a file, memory-mapped on first access in each process.

    Parameters
    ----------
    path : the file.
    offset : byte offset of the first element.
    dtype : element dtype; a structured dtype with ``field`` reads one field of each record
        (e.g. frames with a per-frame header).
    shape : shape of the records (the field's own shape is appended).
    field : name of the field of a structured ``dtype`` to expose, or None.
    order : "C" or "F" memory order.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        offset: int,
        dtype: Any,
        shape: tuple[int, ...],
        field: str | None = None,
        order: str = "C",
    ) -> None:
        super().__init__()
        self._fd: int | None = None
        self._fd_pid: int | None = None
        self.path = os.fspath(path)
        self.offset = int(offset)
        self.record_dtype = np.dtype(dtype)
        self.record_shape = tuple(int(s) for s in shape)
        self.field = field
        self.order = order
        if field is None:
            self.dtype = self.record_dtype
            self.shape = self.record_shape
        else:
            sub = self.record_dtype[field]
            self.dtype = np.dtype(sub.base)
            self.shape = self.record_shape + tuple(sub.shape)
        need = self.offset + int(np.prod(self.record_shape, dtype=np.int64)) * self.record_dtype.itemsize
        size = os.path.getsize(self.path)
        if size < need:
            raise CorruptFileError(
                f"{self.path}: the file is truncated or corrupt: it has {size} bytes, "
                f"but its header describes {need} bytes of data"
            )

    def _open(self) -> Any:
        mm = np.memmap(
            self.path,
            dtype=self.record_dtype,
            mode="r",
            offset=self.offset,
            shape=self.record_shape,
            order=self.order,
        )
        return mm if self.field is None else mm[self.field]

    def _key(self) -> tuple:
        return (self.path, self.offset, str(self.record_dtype), self.record_shape, self.field, self.order)

    def __getitem__(self, key: Any) -> np.ndarray:
        span = self._contiguous_span(key)
        if span is not None:
            return self._pread(*span)
        return np.array(self._array()[key])  # a copy: never hand out views of the map

    def _contiguous_span(self, key: Any) -> tuple[int, int, tuple[int, ...]] | None:
        """``(first element, element count, shape)`` when ``key`` selects one contiguous C-order run.

        That is the case for the usual engine reads: a range of scan rows, or a range of
        positions within one row, with whole patterns.
        """
        if self.field is not None or self.order != "C":
            return None
        key = key if isinstance(key, tuple) else (key,)
        if len(key) > len(self.shape) or not all(isinstance(k, slice) for k in key):
            return None
        ranges = []
        for k, n in zip(key, self.shape):
            start, stop, step = k.indices(n)
            if step != 1:
                return None
            ranges.append((start, max(start, stop)))
        ranges += [(0, n) for n in self.shape[len(ranges):]]
        # Contiguous when every axis before the last partial (not whole) axis holds one index.
        partial = [i for i, ((a, b), n) in enumerate(zip(ranges, self.shape)) if (a, b) != (0, n)]
        if partial and any(ranges[i][1] - ranges[i][0] != 1 for i in range(partial[-1])):
            return None
        strides = np.cumprod((self.shape[1:] + (1,))[::-1])[::-1]
        first = int(sum(a * st for (a, _), st in zip(ranges, strides)))
        out_shape = tuple(b - a for a, b in ranges)
        count = int(np.prod(out_shape, dtype=np.int64))
        return first, count, out_shape

    def _pread(self, first: int, count: int, shape: tuple[int, ...]) -> np.ndarray:
        """Read ``count`` elements from element ``first`` with ``os.preadv`` into a new array.

        Unlike slicing a memory map, this leaves no file pages mapped into the process, so
        its resident memory stays at the size of the buffers whatever the file size.
        """
        out = np.empty(shape, dtype=self.dtype)
        if count == 0:
            return out
        if self._fd is None or self._fd_pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDONLY)
            self._fd_pid = os.getpid()
        view = memoryview(out.reshape(-1).view(np.uint8))
        offset = self.offset + first * self.dtype.itemsize
        done = 0
        while done < view.nbytes:
            n = os.preadv(self._fd, [view[done:]], offset + done)
            if n == 0:
                raise CorruptFileError(f"{self.path}: the file is truncated or corrupt (it ended early)")
            done += n
        return out

    def memmap(self) -> np.ndarray:
        """The memory map itself (in this process)."""
        return self._array()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, shape={self.shape}, dtype={self.dtype})"


class NpySource(MemmapSource):
    """A ``.npy`` file, memory-mapped on first access in each process."""

    def __init__(self, path: str | os.PathLike) -> None:
        shape, fortran, dtype, offset = read_npy_header(path)
        super().__init__(path, offset, dtype, shape, order="F" if fortran else "C")


def read_npy_header(path: str | os.PathLike) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """``(shape, fortran_order, dtype, data_offset)`` of a ``.npy`` file; CorruptFileError if unreadable."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:  # 3.0 (utf-8 field names) has no public reader
                shape, fortran, dtype = np.lib.format._read_array_header(f, version)
            offset = f.tell()
    except (ValueError, EOFError, SyntaxError, OSError) as err:
        raise CorruptFileError(
            f"{path}: not a readable .npy file, it is truncated or corrupt ({err})"
        ) from None
    return tuple(int(s) for s in shape), bool(fortran), np.dtype(dtype), int(offset)


def _fmt_key(key: Any) -> str:
    if not isinstance(key, tuple):
        key = (key,)
    parts = []
    for k in key:
        if isinstance(k, slice):
            parts.append(f"{'' if k.start is None else k.start}:{'' if k.stop is None else k.stop}")
        else:
            parts.append(repr(k))
    return "[" + ", ".join(parts) + "]"
