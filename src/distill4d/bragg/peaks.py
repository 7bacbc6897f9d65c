"""BraggPeaks: a ragged list of peaks (qx, qy, intensity) at every scan position."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..calibration import Calibration
from ..errors import Distill4dError
from ..results import Provenance, Results

__all__ = ["BraggPeaks"]

_FORMAT = "distill4d-braggpeaks-1"


class BraggPeaks:
    """Peaks found at every position of a scan ``(Rx, Ry)``.

    All peaks are kept in flat arrays ``qx``, ``qy`` (detector pixels) and ``intensity``;
    the peaks of position ``(rx, ry)`` are ``offsets[i]:offsets[i+1]`` with
    ``i = rx * Ry + ry``. ``peaks[rx, ry]`` gives them as an ``(m, 3)`` array.

    Parameters
    ----------
    qx, qy, intensity : flat float arrays of equal length.
    offsets : int array of length ``Rx * Ry + 1``, starting at 0, non-decreasing.
    scan_shape : ``(Rx, Ry)``.
    calibration : calibration of the data (pixel size in 1/Å, origin, ...).
    params : the detection parameters used (stored with the peaks).
    provenance : how the peaks were found; default: method ``params["method"]`` with ``params``.
    """

    def __init__(
        self,
        qx: Any,
        qy: Any,
        intensity: Any,
        offsets: Any,
        scan_shape: tuple[int, int],
        calibration: Calibration | None = None,
        params: dict[str, Any] | None = None,
        provenance: Provenance | None = None,
    ) -> None:
        self.qx = np.asarray(qx, dtype=np.float64).ravel()
        self.qy = np.asarray(qy, dtype=np.float64).ravel()
        self.intensity = np.asarray(intensity, dtype=np.float64).ravel()
        self.offsets = np.asarray(offsets, dtype=np.int64).ravel()
        self.scan_shape = (int(scan_shape[0]), int(scan_shape[1]))
        self.calibration = calibration or Calibration()
        self.params = dict(params or {})
        if provenance is not None and not isinstance(provenance, Provenance):
            raise TypeError(f"provenance must be a Provenance or None, got {type(provenance).__name__}")
        self.provenance = provenance or Provenance(str(self.params.get("method", "")), self.params)
        n = self.qx.size
        if self.qy.size != n or self.intensity.size != n:
            raise Distill4dError(
                f"qx, qy and intensity must have the same length, got {n}, {self.qy.size}, {self.intensity.size}"
            )
        npos = self.scan_shape[0] * self.scan_shape[1]
        if (
            self.offsets.size != npos + 1
            or self.offsets[0] != 0
            or self.offsets[-1] != n
            or np.any(np.diff(self.offsets) < 0)
        ):
            raise Distill4dError(
                f"offsets must be non-decreasing, of length Rx*Ry+1 = {npos + 1}, from 0 to {n}; "
                f"got length {self.offsets.size}"
            )

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_padded(
        cls,
        qx: Any,
        qy: Any,
        intensity: Any,
        count: Any,
        calibration: Calibration | None = None,
        params: dict[str, Any] | None = None,
    ) -> "BraggPeaks":
        """From padded arrays ``(Rx, Ry, K)`` whose first ``count[rx, ry]`` entries are peaks."""
        qx, qy, it = (np.asarray(a, dtype=np.float64) for a in (qx, qy, intensity))
        count = np.asarray(count, dtype=np.int64)
        if qx.ndim != 3 or qy.shape != qx.shape or it.shape != qx.shape or count.shape != qx.shape[:2]:
            raise Distill4dError(
                f"padded arrays must be (Rx, Ry, K) with count (Rx, Ry); got {qx.shape}, {qy.shape}, "
                f"{it.shape}, {count.shape}"
            )
        take = np.arange(qx.shape[2]) < count[..., None]
        offsets = np.concatenate([[0], np.cumsum(count.ravel())])
        return cls(qx[take], qy[take], it[take], offsets, qx.shape[:2], calibration, params)

    @classmethod
    def from_list(
        cls, peaks: list[Any], scan_shape: tuple[int, int], calibration: Calibration | None = None
    ) -> "BraggPeaks":
        """From a list (row-major over the scan) of ``(m, 3)`` arrays (qx, qy, intensity)."""
        arrs = [np.asarray(p, dtype=np.float64).reshape(-1, 3) for p in peaks]
        if len(arrs) != scan_shape[0] * scan_shape[1]:
            raise Distill4dError(f"need {scan_shape[0] * scan_shape[1]} peak lists for scan {scan_shape}, got {len(arrs)}")
        flat = np.concatenate(arrs) if arrs else np.zeros((0, 3))
        offsets = np.concatenate([[0], np.cumsum([len(a) for a in arrs])])
        return cls(flat[:, 0], flat[:, 1], flat[:, 2], offsets, scan_shape, calibration)

    # ------------------------------------------------------------------ access
    @property
    def counts(self) -> np.ndarray:
        """Number of peaks at each position, ``(Rx, Ry)``."""
        return np.diff(self.offsets).reshape(self.scan_shape)

    @property
    def n_peaks(self) -> int:
        return int(self.qx.size)

    def __len__(self) -> int:
        return self.scan_shape[0] * self.scan_shape[1]

    def __getitem__(self, key: tuple[int, int]) -> np.ndarray:
        """Peaks at ``(rx, ry)`` as an ``(m, 3)`` array: qx, qy (pixels), intensity."""
        try:
            rx, ry = key
            i = int(np.ravel_multi_index((int(rx), int(ry)), self.scan_shape))
        except (TypeError, ValueError):
            raise IndexError(f"index BraggPeaks with (rx, ry) inside scan {self.scan_shape}, got {key!r}") from None
        s, e = self.offsets[i], self.offsets[i + 1]
        return np.stack([self.qx[s:e], self.qy[s:e], self.intensity[s:e]], axis=1)

    def position_index(self) -> np.ndarray:
        """Flat (row-major) scan index of every peak."""
        return np.repeat(np.arange(len(self)), np.diff(self.offsets))

    def to_padded(self, max_peaks: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(qx, qy, intensity, count)`` padded to ``(Rx, Ry, K)`` with NaN (K: the largest count)."""
        counts = np.diff(self.offsets)
        k = int(counts.max(initial=0)) if max_peaks is None else int(max_peaks)
        slot = np.arange(self.n_peaks) - np.repeat(self.offsets[:-1], counts)
        pos = self.position_index()
        use = slot < k
        out = []
        for a in (self.qx, self.qy, self.intensity):
            p = np.full((len(self), max(k, 1)), np.nan)
            p[pos[use], slot[use]] = a[use]
            out.append(p.reshape(self.scan_shape + (max(k, 1),)))
        return out[0], out[1], out[2], np.minimum(counts, k).reshape(self.scan_shape)

    def __repr__(self) -> str:
        return (
            f"BraggPeaks: scan {self.scan_shape[0]}x{self.scan_shape[1]}, {self.n_peaks} peaks "
            f"({self.n_peaks / max(len(self), 1):.1f} per position)"
        )

    # ------------------------------------------------------------------ files
    def to_result(self) -> Results:
        """The common result container: ``qx``, ``qy`` ('pixels'), ``intensity``, ``offsets``, with
        ``scan_shape`` and ``params`` (JSON) as attributes, the calibration and provenance."""
        arrays = {name: getattr(self, name) for name in ("qx", "qy", "intensity", "offsets")}
        attrs = {"scan_shape": list(self.scan_shape), "params": json.dumps(self.params, default=str)}
        return Results(arrays, {"qx": "pixels", "qy": "pixels"}, attrs, self.calibration, self.provenance)

    def to_hdf5(self, path: str | os.PathLike, force: bool = False) -> Path:
        """Write to an HDF5 file (atomically: a temporary file in the same folder, then renamed).

        Layout: datasets ``qx``, ``qy`` (pixels), ``intensity``, ``offsets``; attributes
        ``format``, ``scan_shape``, ``params`` (JSON) and ``provenance`` (JSON); the calibration
        fields as attributes of ``/calibration``.
        Raises FileExistsError if ``path`` exists and ``force`` is False.
        """
        r = self.to_result()
        return r.replace(attrs={"format": _FORMAT, **r.attrs}).to_h5(path, force=force, group="")

    @classmethod
    def from_hdf5(cls, path: str | os.PathLike) -> "BraggPeaks":
        """Read a file written by :meth:`to_hdf5` (also one written before provenance was kept)."""
        from ..io.hdf5 import open_h5
        from ..results import read_results

        with open_h5(path, expect_format=_FORMAT):
            pass
        r = read_results(path)
        return cls(
            r["qx"], r["qy"], r["intensity"], r["offsets"], tuple(int(s) for s in r.attrs["scan_shape"]),
            r.calibration, json.loads(r.attrs["params"]), r.provenance,
        )
