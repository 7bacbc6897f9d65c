"""Preparation of 4D scans for the phase-retrieval models (shared by training and inference).

Every pattern is resampled onto an ``N x N`` grid spanning ``± extent`` convergence semiangles
around the beam centre (the bright-field radius in pixels comes from the calibration:
semiangle / mrad per pixel, or is measured on the mean pattern), box-filtered first when that
bins the detector, and divided by its mean over the grid (total-count normalisation: the
prepared pattern has mean 1). This is what makes a model transfer between datasets.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ...errors import Distill4dError
from ..._validate import positive_float
from ...datacube import DataCube
from .._common.resample import resample_patterns

__all__ = ["phase_geometry", "prepare_phase_patterns"]


def phase_geometry(datacube: DataCube, *, origin_px: tuple[float, float] | None = None,
                   bf_radius_px: float | None = None, **engine: Any) -> dict[str, float]:
    """Beam centre and bright-field radius (detector pixels) used to prepare the patterns.

    ``origin_px``: given, else the calibration's, else measured on the mean pattern.
    ``bf_radius_px``: given, else semiangle / (mrad per pixel) from the calibration, else
    measured on the mean pattern.
    """
    from ...imaging.origin import find_bf_disk

    cal = datacube.calibration
    origin = origin_px if origin_px is not None else cal.origin_px
    radius = bf_radius_px
    if radius is None and cal.semiangle_mrad is not None and cal.q_pixel_inv_A is not None \
            and cal.energy_eV is not None:
        radius = cal.semiangle_mrad / cal.mrad_per_px
    if origin is None or radius is None:
        cx, cy, r = find_bf_disk(datacube.mean_pattern(**engine))
        origin = (cx, cy) if origin is None else origin
        radius = r if radius is None else radius
    ox, oy = (float(v) for v in origin)
    radius = positive_float("bf_radius_px", radius)
    if not (math.isfinite(ox) and math.isfinite(oy)):
        raise Distill4dError(f"origin_px must be finite, got {origin!r}")
    return {"origin_px": (ox, oy), "bf_radius_px": radius}


def prepare_phase_patterns(patterns: np.ndarray, geometry: dict[str, Any], size: int, extent: float) -> np.ndarray:
    """Patterns ``(..., Qx, Qy)`` → ``(..., size, size)`` float32 on the model grid (module notes).

    Model pixel ``u`` (centre ``(size - 1) / 2``) ↔ detector ``origin + (u - (size - 1)/2) · s``
    with ``s = extent · bf_radius_px / (size / 2)`` detector pixels per model pixel. Each pattern
    is divided by its mean over the grid. ValueError for NaN/Inf or a pattern with no counts.
    """
    arr = np.asarray(patterns)
    lead = arr.shape[:-2]
    flat = arr.reshape((-1,) + arr.shape[-2:])
    scale = extent * geometry["bf_radius_px"] / (size / 2)
    ox, oy = geometry["origin_px"]
    shift = (size // 2 - (size - 1) / 2) * scale  # resample_patterns centres model pixel size//2
    out = resample_patterns(flat, (ox + shift, oy + shift), scale, size)
    mean = out.mean(axis=(1, 2), dtype=np.float64)
    bad = ~np.isfinite(mean) | (mean <= 0)
    if bad.any():
        what = "NaN/Inf values" if not np.all(np.isfinite(mean)) else "no counts inside the model's detector grid"
        raise Distill4dError(f"{int(bad.sum())} of {len(mean)} patterns have {what}; crop the scan to valid "
                             "positions or repair the data")
    out /= mean[:, None, None].astype(np.float32)
    return out.reshape(lead + (size, size))


def _prepared_moments(batch: np.ndarray, geometry: dict[str, Any], size: int, extent: float) -> np.ndarray:
    """``(2, size, size)``: sum and sum of squares of the prepared patterns of ``batch``."""
    p = prepare_phase_patterns(batch, geometry, size, extent).astype(np.float64)
    return np.stack([p.sum(axis=0), (p * p).sum(axis=0)])


def _scan_norm(total: np.ndarray, total_sq: np.ndarray, n: int) -> tuple[np.ndarray, np.float32]:
    """The scan's mean prepared pattern and the RMS of the deviations from it (input_norm "scan")."""
    mean = total / n
    rms = math.sqrt(max(float(np.mean(total_sq / n - mean**2)), 0.0))
    if not rms > 0:
        raise Distill4dError("every prepared pattern of the scan is the same: input_norm='scan' has nothing to scale")
    return mean.astype(np.float32), np.float32(rms)


def _pass_options(engine: dict[str, Any]) -> dict[str, Any]:
    """The engine options that a reduction pass (mean pattern, scan statistics) accepts."""
    return {k: v for k, v in engine.items() if k not in ("checkpoint", "job_key", "desc")}
