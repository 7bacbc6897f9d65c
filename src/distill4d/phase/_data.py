"""Patterns for ptychography: cropped around the origin, as amplitudes, read once and kept within a budget.

Every pattern of the region is read once (whole scan rows through the DataCube's ``reader`` when it
has one, else through its array), cropped to an ``(N, N)`` window centred on the diffraction origin
(pixels outside the detector are masked), turned into the amplitude ``sqrt(max(I, 0))`` (centred; a batch
is moved to FFT order, zero frequency at pixel ``(0, 0)``, when it is used), and stored as float32: in memory when it fits
``memory_budget`` bytes, else in a temporary file read back per batch with ``os.pread``.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np

from .._validate import is_dask
from ..errors import Distill4dError

__all__ = ["PatternStore", "read_rows"]


def read_rows(cube: Any, xs: slice, ys: slice) -> np.ndarray:
    """Patterns ``cube[xs, ys]`` as a NumPy array (through the file reader when there is one)."""
    if cube.reader is not None:
        return np.asarray(cube.reader[xs, ys])
    block = cube.data[xs, ys]
    return np.asarray(block.compute() if is_dask(block) else block)


class PatternStore:
    """Cropped amplitudes of the patterns of a scan region, indexed by position ``i = x * ny + y``.

    Attributes
    ----------
    n : pattern window size N (pixels).
    mask : (N, N) float32, 1 where the window lies on the detector (FFT order).
    mean_intensity : mean total intensity of a pattern inside the window.
    mean_pattern : (N, N) float64 mean pattern inside the window (FFT order).
    """

    def __init__(self, cube: Any, region: tuple[slice, slice], origin_px: tuple[float, float], n: int,
                 memory_budget: int = 2**30, rows_per_read: int | None = None) -> None:
        (x0, x1, _), (y0, y1, _) = region[0].indices(cube.shape[0]), region[1].indices(cube.shape[1])
        self.scan_shape = (x1 - x0, y1 - y0)
        self.n = n
        qx, qy = cube.pattern_shape
        cx, cy = int(round(origin_px[0])), int(round(origin_px[1]))
        lo_x, lo_y = cx - n // 2, cy - n // 2
        # window pixel (i, j) <- detector pixel (lo_x + i, lo_y + j)
        sx = slice(max(lo_x, 0), min(lo_x + n, qx))
        sy = slice(max(lo_y, 0), min(lo_y + n, qy))
        if sx.stop <= sx.start or sy.stop <= sy.start:
            raise Distill4dError(f"the {n}x{n} pattern window around the origin {origin_px} misses the detector")
        self._src = (sx, sy)
        self._dst = (slice(sx.start - lo_x, sx.stop - lo_x), slice(sy.start - lo_y, sy.stop - lo_y))
        mask = np.zeros((n, n), np.float32)
        mask[self._dst] = 1.0
        self.mask = np.fft.ifftshift(mask)
        count = self.scan_shape[0] * self.scan_shape[1]
        nbytes = count * n * n * 4
        self._file: Any = None
        if nbytes <= memory_budget:
            self._array: np.ndarray | None = np.empty((count, n, n), np.float32)
        else:
            self._array = None
            self._file = tempfile.TemporaryFile(prefix="distill4d-ptycho-")
        row_bytes = self.scan_shape[1] * cube.pattern_shape[0] * cube.pattern_shape[1] * 8
        rows = rows_per_read or max(1, min(self.scan_shape[0], (memory_budget // 4) // max(row_bytes, 1)))
        total = 0.0
        mean = np.zeros((n, n), np.float64)
        for r0 in range(x0, x1, rows):
            r1 = min(r0 + rows, x1)
            block = read_rows(cube, slice(r0, r1), slice(y0, y1))
            amp, block_mean = self._prepare(block.reshape(-1, qx, qy))
            total += float(block_mean.sum())
            mean += block_mean
            i0 = (r0 - x0) * self.scan_shape[1]
            if self._array is not None:
                self._array[i0 : i0 + len(amp)] = amp
            else:
                self._file.seek(i0 * n * n * 4)
                self._file.write(np.ascontiguousarray(amp).tobytes())
        if self._file is not None:
            self._file.flush()
        self.mean_intensity = total / count
        self.mean_pattern = np.fft.ifftshift(mean / count)  # FFT order
        if not self.mean_intensity > 0:
            raise Distill4dError("the patterns have no positive intensity inside the pattern window")

    def _prepare(self, block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The windows' amplitudes (float32, centred: the batches are shifted to FFT order on the device)
        and the sum of their intensities per pixel (float64, centred)."""
        out = np.zeros((len(block), self.n, self.n), np.float32)
        win = out[(slice(None),) + self._dst]
        win[...] = block[(slice(None),) + self._src]
        np.maximum(win, 0.0, out=win)
        summed = out.sum(axis=0, dtype=np.float64)
        if not np.all(np.isfinite(summed)):  # a NaN or Inf anywhere in the block makes a sum non-finite
            bad = int(np.sum(~np.isfinite(block).all(axis=(1, 2))))
            raise Distill4dError(f"the data contain NaN or Inf values ({bad} patterns of a block of {len(block)}); "
                                 "ptychography needs every pattern finite")
        np.sqrt(out, out=out)
        return out, summed

    @property
    def in_memory(self) -> bool:
        return self._array is not None

    def get(self, index: np.ndarray) -> np.ndarray:
        """Amplitudes of the positions ``index`` -> (len(index), N, N) float32, centred (not FFT order)."""
        if self._array is not None:
            return self._array[index]
        size = self.n * self.n * 4
        out = np.empty((len(index), self.n, self.n), np.float32)
        fd = self._file.fileno()
        for k, i in enumerate(index):
            out[k] = np.frombuffer(os.pread(fd, size, int(i) * size), np.float32).reshape(self.n, self.n)
        return out

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
