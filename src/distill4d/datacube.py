"""DataCube: a 4D-STEM dataset ``(Rx, Ry, Qx, Qy)`` with its calibration.

The array is either in memory (a NumPy array, possibly memory-mapped) or lazy (a Dask
array whose blocks are read from disk on demand). Calibration travels through slicing,
cropping and binning. Heavy work (mean pattern, virtual images, ...) goes through
:mod:`distill4d.engine`, which reads the data chunk by chunk with bounded memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ._validate import intensity_dtype, is_dask, positive_int
from .calibration import Calibration
from .errors import Distill4dError

if TYPE_CHECKING:  # pragma: no cover
    import dask.array as da

__all__ = ["DataCube"]


class DataCube:
    """A 4D-STEM dataset: diffraction patterns ``(Qx, Qy)`` on a scan grid ``(Rx, Ry)``.

    Parameters
    ----------
    data : array with 4 dimensions ``(Rx, Ry, Qx, Qy)``: NumPy (in memory or memory-mapped)
        or Dask (lazy). Intensities must be real (integer or float).
    calibration : :class:`Calibration`; an empty one when omitted.
    name : a short label (e.g. the file it came from).
    reader : optional fast path for lazy data: an object with the same ``shape`` and ``dtype``
        whose ``reader[x0:x1, y0:y1]`` returns those patterns as a NumPy array (the file
        readers of :mod:`distill4d.io` set it; picklable for Dask workers). The engine reads
        tiles through it instead of through Dask. A sliced, cropped or binned DataCube has none.

    Examples
    --------
    >>> import numpy as np
    >>> dc = DataCube.from_array(np.ones((4, 5, 16, 16)), q_pixel_inv_A=0.01, energy_eV=300e3)
    >>> dc.scan_shape, dc.pattern_shape
    ((4, 5), (16, 16))
    """

    def __init__(
        self, data: Any, calibration: Calibration | None = None, *, name: str = "", reader: Any = None
    ) -> None:
        if not (isinstance(data, np.ndarray) or is_dask(data)):
            data = np.asarray(data)
        if data.ndim != 4:
            hint = ""
            if data.ndim == 3:
                hint = " (a 3D stack of patterns: reshape it to (Rx, Ry, Qx, Qy), e.g. data[None])"
            elif data.ndim == 2:
                hint = " (a single pattern: use data[None, None])"
            raise Distill4dError(f"DataCube data must be 4D (Rx, Ry, Qx, Qy), got shape {tuple(data.shape)}{hint}")
        if any(int(s) == 0 for s in data.shape):
            raise Distill4dError(f"DataCube data has an empty axis: shape {tuple(data.shape)}")
        intensity_dtype("DataCube data", data.dtype)
        if calibration is None:
            calibration = Calibration()
        if not isinstance(calibration, Calibration):
            raise TypeError(f"calibration must be a distill4d.Calibration, got {type(calibration).__name__}")
        if reader is not None and (tuple(reader.shape) != _shape_of(data) or np.dtype(reader.dtype) != data.dtype):
            raise Distill4dError(
                f"reader has shape {tuple(reader.shape)} and dtype {reader.dtype}, "
                f"but the data has {_shape_of(data)} and {data.dtype}"
            )
        self.data = data
        self.calibration = calibration
        self.name = str(name)
        self.reader = reader

    # ---------------------------------------------------------------- factories
    @classmethod
    def from_array(
        cls, array: Any, calibration: Calibration | None = None, *, name: str = "", **calibration_fields: Any
    ) -> "DataCube":
        """Wrap an array; calibration fields may be given by keyword (``q_pixel_inv_A=...``)."""
        calibration = calibration or Calibration()
        if calibration_fields:
            calibration = calibration.replace(**calibration_fields)
        return cls(array, calibration, name=name)

    # ---------------------------------------------------------------- properties
    @property
    def shape(self) -> tuple[int, int, int, int]:
        return tuple(int(s) for s in self.data.shape)  # type: ignore[return-value]

    @property
    def scan_shape(self) -> tuple[int, int]:
        return self.shape[0], self.shape[1]

    @property
    def pattern_shape(self) -> tuple[int, int]:
        return self.shape[2], self.shape[3]

    @property
    def n_patterns(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.data.dtype)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def is_lazy(self) -> bool:
        """True when the data is read from disk on demand (Dask array or memory map)."""
        return is_dask(self.data) or isinstance(self.data, np.memmap)

    def __repr__(self) -> str:
        kind = "lazy" if self.is_lazy else "in memory"
        label = f" '{self.name}'" if self.name else ""
        return (
            f"DataCube{label}: scan {self.scan_shape[0]}x{self.scan_shape[1]}, "
            f"patterns {self.pattern_shape[0]}x{self.pattern_shape[1]}, {self.dtype}, "
            f"{self.nbytes / 1e9:.3g} GB {kind}"
        )

    # ---------------------------------------------------------------- access
    def pattern(self, rx: int, ry: int) -> np.ndarray:
        """The diffraction pattern at scan position ``(rx, ry)`` as a NumPy array."""
        for name, v, n in (("rx", rx, self.shape[0]), ("ry", ry, self.shape[1])):
            if not isinstance(v, (int, np.integer)) or not -n <= v < n:
                raise IndexError(f"{name} must be an integer in [0, {n}), got {v!r}")
        p = self.data[rx, ry]
        return np.asarray(p.compute() if is_dask(p) else p)

    def __getitem__(self, key: Any) -> "DataCube | np.ndarray":
        """``dc[rx, ry]`` gives one pattern; ``dc[x0:x1, y0:y1]`` a sub-scan DataCube."""
        if not isinstance(key, tuple):
            key = (key,)
        if len(key) > 2:
            raise IndexError(
                "index a DataCube on its two scan axes only (dc[x0:x1, y0:y1]); crop the detector "
                "with dc.crop_q(...)"
            )
        if all(isinstance(k, (int, np.integer)) for k in key) and len(key) == 2:
            return self.pattern(*key)
        key = key + (slice(None),) * (2 - len(key))
        if not all(isinstance(k, slice) for k in key):
            raise IndexError(f"use two integers (one pattern) or slices (a sub-scan), got {key!r}")
        for k in key:
            if k.step not in (None, 1):
                raise IndexError("strided scan slices are not supported; use bin_r() to bin the scan")
        sub = self.data[key[0], key[1]]
        if 0 in sub.shape[:2]:
            raise IndexError(f"the slice {key!r} selects no scan position of a {self.scan_shape} scan")
        return DataCube(sub, self.calibration, name=self.name)

    def crop_q(self, qx: slice, qy: slice) -> "DataCube":
        """Crop the detector to ``[qx, qy]`` (slices, step 1); the origin moves with it."""
        qx0, qx1, _ = qx.indices(self.shape[2])
        qy0, qy1, _ = qy.indices(self.shape[3])
        if qx1 <= qx0 or qy1 <= qy0:
            raise Distill4dError(f"crop ({qx}, {qy}) leaves no pixel of a {self.pattern_shape} pattern")
        data = self.data[:, :, qx0:qx1, qy0:qy1]
        return DataCube(data, self.calibration.cropped(qx0, qy0), name=self.name)

    def with_calibration(self, **fields: Any) -> "DataCube":
        """The same data with calibration fields replaced (e.g. ``energy_eV=300e3``)."""
        return DataCube(self.data, self.calibration.replace(**fields), name=self.name, reader=self.reader)

    # ---------------------------------------------------------------- binning
    def bin_q(self, factor: int) -> "DataCube":
        """Sum ``factor x factor`` detector pixels; the detector is trimmed to a multiple of factor."""
        factor = positive_int("factor", factor)
        return self._bin(factor, axes=(2, 3), calibration=self.calibration.binned(q_factor=factor))

    def bin_r(self, factor: int) -> "DataCube":
        """Sum ``factor x factor`` scan positions; the scan is trimmed to a multiple of factor."""
        factor = positive_int("factor", factor)
        return self._bin(factor, axes=(0, 1), calibration=self.calibration.binned(r_factor=factor))

    def _bin(self, factor: int, axes: tuple[int, int], calibration: Calibration) -> "DataCube":
        if factor == 1:
            return DataCube(self.data, calibration, name=self.name)
        shape = self.shape
        if any(shape[a] < factor for a in axes):
            raise Distill4dError(f"binning factor {factor} is larger than axes {axes} of shape {shape}")
        out_dtype = _sum_dtype(self.dtype)
        trimmed = tuple(slice(0, (s // factor) * factor) if i in axes else slice(None) for i, s in enumerate(shape))
        data = self.data[trimmed]
        if is_dask(data):
            import dask.array as da

            aligned = {a: max(factor, (int(data.chunks[a][0]) // factor) * factor) for a in axes}
            data = da.coarsen(np.sum, data.astype(out_dtype).rechunk(aligned), {a: factor for a in axes})
        else:
            new_shape: list[int] = []
            for i, s in enumerate(data.shape):
                new_shape += [s // factor, factor] if i in axes else [s]
            sum_axes = tuple(j for j, i in enumerate(_summed_axis_flags(axes, data.ndim)) if i)
            data = np.asarray(data).reshape(new_shape).sum(axis=sum_axes, dtype=out_dtype)
        return DataCube(data, calibration, name=self.name)

    # ---------------------------------------------------------------- reductions
    def mean_pattern(self, **engine_options: Any) -> np.ndarray:
        """Mean diffraction pattern (float64), read chunk by chunk. NaN patterns propagate."""
        from .engine import reduce_patterns

        total = reduce_patterns(self, _sum_batch, combine="sum", **engine_options)
        return total / self.n_patterns

    def max_pattern(self, **engine_options: Any) -> np.ndarray:
        """Pixel-wise maximum over all patterns (float64), read chunk by chunk."""
        from .engine import reduce_patterns

        return reduce_patterns(self, _max_batch, combine="max", **engine_options)

    def compute(self) -> "DataCube":
        """An in-memory copy (reads everything: check ``nbytes`` first)."""
        data = self.data.compute() if is_dask(self.data) else np.array(self.data)
        return DataCube(data, self.calibration, name=self.name)

    def to_dask(self, chunk_bytes: int = 128 * 2**20) -> "da.Array":
        """The data as a Dask array chunked over the scan (about ``chunk_bytes`` per chunk)."""
        import dask.array as da

        if is_dask(self.data):
            return self.data
        row = self.shape[1] * self.shape[2] * self.shape[3] * self.dtype.itemsize
        rows = max(1, min(self.shape[0], chunk_bytes // max(row, 1)))
        return da.from_array(self.data, chunks=(rows, -1, -1, -1))


def _shape_of(data: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in data.shape)


def _summed_axis_flags(axes: tuple[int, int], ndim: int) -> list[bool]:
    """For the reshaped binning array: True where an axis is a summed (factor) axis."""
    flags: list[bool] = []
    for i in range(ndim):
        flags += [False, True] if i in axes else [False]
    return flags


def _sum_dtype(dtype: np.dtype) -> np.dtype:
    if dtype.kind == "u":
        return np.dtype(np.uint64) if dtype.itemsize >= 4 else np.dtype(np.uint32)
    if dtype.kind == "i":
        return np.dtype(np.int64)
    return dtype


def _sum_batch(batch: np.ndarray) -> np.ndarray:
    return batch.sum(axis=0, dtype=np.float64)


def _max_batch(batch: np.ndarray) -> np.ndarray:
    return batch.max(axis=0).astype(np.float64)
