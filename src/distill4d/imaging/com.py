"""Centre of mass (CoM) of every pattern, and its rotation into the scan frame (DPC).

For a thin (phase) object the CoM of the diffraction pattern, in 1/Å, equals
``∇φ / 2π`` averaged over the probe intensity, where ``φ`` is the object's phase in
radians and ``∇`` is taken in the scan frame. Detector axes can be rotated (and
transposed) with respect to the scan axes: with ``d`` the CoM on the detector and ``s``
the same vector in the scan frame, ``d = R(θ) P s`` where ``θ`` is the scan rotation and
``P`` swaps the two axes when ``flip`` is set.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .._validate import pattern_array
from ..errors import Distill4dError
from .integrate import integrate_gradient

if TYPE_CHECKING:  # pragma: no cover
    from ..calibration import Calibration
    from ..datacube import DataCube
    from ..results import Provenance, Results

__all__ = ["CenterOfMass", "center_of_mass", "estimate_scan_rotation", "to_scan_frame"]

_SUB_BATCH = 32


@dataclass
class CenterOfMass:
    """CoM of every pattern relative to the origin, on the detector axes.

    Attributes
    ----------
    com_qx_px, com_qy_px : (Rx, Ry) CoM shift along Qx and Qy in detector pixels; NaN where a
        pattern has no positive total intensity or contains NaN/Inf.
    origin_px : the origin ``(qx, qy)`` in pixels the shifts are measured from.
    calibration : the DataCube's calibration (for conversion to 1/Å or mrad).
    provenance : how it was computed (method ``"center_of_mass"``, origin, mask), or None.
    """

    com_qx_px: np.ndarray
    com_qy_px: np.ndarray
    origin_px: tuple[float, float]
    calibration: "Calibration" = field(repr=False)
    provenance: "Provenance | None" = field(default=None, repr=False)

    def to_result(self) -> "Results":
        """The common result container: ``com_qx``, ``com_qy`` ('px'), calibration and provenance."""
        from ..results import Provenance, Results

        prov = self.provenance or Provenance("center_of_mass", {"origin_px": self.origin_px})
        return Results({"com_qx": self.com_qx_px, "com_qy": self.com_qy_px}, {"com_qx": "px", "com_qy": "px"},
                       calibration=self.calibration, provenance=prov)

    def in_inv_A(self) -> tuple[np.ndarray, np.ndarray]:
        """The CoM shifts in 1/Å (needs ``q_pixel_inv_A``)."""
        q = self.calibration.require("q_pixel_inv_A")
        return self.com_qx_px * q, self.com_qy_px * q

    def in_mrad(self) -> tuple[np.ndarray, np.ndarray]:
        """The CoM shifts as beam deflection angles in mrad (needs q pixel size and energy)."""
        a = self.calibration.mrad_per_px
        return self.com_qx_px * a, self.com_qy_px * a


def _com_batch(batch: np.ndarray, weights: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """Weighted total and first moments of each pattern -> (n, 2) CoM in pixels (NaN if undefined)."""
    w, wqx, wqy = weights
    n = batch.shape[0]
    out = np.empty((n, 2))
    for i in range(0, n, _SUB_BATCH):
        sub = batch[i : i + _SUB_BATCH]
        total = np.einsum("nij,ij->n", sub, w, dtype=np.float64)
        mx = np.einsum("nij,ij->n", sub, wqx, dtype=np.float64)
        my = np.einsum("nij,ij->n", sub, wqy, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            cx, cy = mx / total, my / total
        bad = ~(total > 0) | ~np.isfinite(cx) | ~np.isfinite(cy)
        cx[bad] = np.nan
        cy[bad] = np.nan
        out[i : i + sub.shape[0], 0] = cx
        out[i : i + sub.shape[0], 1] = cy
    return out


def center_of_mass(
    datacube: "DataCube",
    *,
    mask: Any = None,
    origin: tuple[float, float] | None = None,
    **engine_options: Any,
) -> CenterOfMass:
    """Centre of mass of every pattern, relative to the diffraction origin.

    Parameters
    ----------
    datacube : the dataset.
    mask : optional detector mask (Qx, Qy), boolean or weights: only these pixels count
        (e.g. ``circle_mask(...)`` around the BF disk to leave out noisy high angles).
    origin : ``(qx, qy)`` in pixels; default the calibration's origin, else the centre of the
        bright-field disk of the mean pattern.
    **engine_options : passed to :func:`distill4d.engine.map_patterns`.
    """
    from ..engine import map_patterns
    from .origin import find_bf_disk

    shape = datacube.pattern_shape
    if mask is None:
        w = np.ones(shape)
    else:
        w = pattern_array("mask", mask).astype(np.float64)
        if w.shape != shape:
            raise Distill4dError(f"mask has shape {w.shape}, but the patterns are {shape}")
        if not np.any(w):
            raise Distill4dError("mask is all zero: no pixel would count")
    if origin is None:
        origin = datacube.calibration.origin_px
    if origin is None:
        cx, cy, _ = find_bf_disk(datacube.mean_pattern(**_reduce_options(engine_options)))
        origin = (cx, cy)
    origin = (float(origin[0]), float(origin[1]))
    if not all(math.isfinite(o) for o in origin):
        raise Distill4dError(f"origin must be finite, got {origin}")
    qx, qy = np.indices(shape, dtype=np.float64)
    fn = functools.partial(_com_batch, weights=(w, w * (qx - origin[0]), w * (qy - origin[1])))
    engine_options.setdefault("desc", "centre of mass")
    com = map_patterns(datacube, fn, **engine_options)
    from ..results import Provenance

    prov = Provenance("center_of_mass", {"origin_px": origin, "mask": None if mask is None else "given"})
    return CenterOfMass(com[..., 0], com[..., 1], origin, datacube.calibration, prov)


def _reduce_options(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k in ("memory_budget", "scheduler", "n_workers", "progress")}


def to_scan_frame(
    dqx: np.ndarray, dqy: np.ndarray, rotation_rad: float, flip: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Rotate a detector-frame vector field ``(dqx, dqy)`` into the scan frame ``(sx, sy)``.

    Inverts ``d = R(θ) P s`` (see the module docstring).
    """
    c, s = math.cos(rotation_rad), math.sin(rotation_rad)
    a = c * dqx + s * dqy
    b = -s * dqx + c * dqy
    return (b, a) if flip else (a, b)


def _curl_energy(sx: np.ndarray, sy: np.ndarray) -> float:
    curl = np.gradient(sy, axis=0) - np.gradient(sx, axis=1)
    return float(np.nanmean(curl**2))


def estimate_scan_rotation(com: CenterOfMass) -> tuple[float, bool]:
    """Scan rotation (radians) and flip that make the CoM field curl-free.

    A gradient field has no curl, so the rotation that minimises the mean squared curl of
    the field in the scan frame is the detector rotation, up to 180°. The 180° ambiguity is
    resolved so that the integrated phase has positive skewness (atoms and particles
    shift the phase up); pass the rotation explicitly where that does not hold.
    Needs a scan of at least 3x3 positions.
    """
    dqx, dqy = com.com_qx_px, com.com_qy_px
    if min(dqx.shape) < 3:
        raise Distill4dError(f"estimating the scan rotation needs a scan of at least 3x3, got {dqx.shape}")
    if np.mean(np.isfinite(dqx)) < 0.5:
        raise Distill4dError("more than half of the CoM values are undefined (NaN): cannot estimate the rotation")
    fx, fy = np.nan_to_num(dqx - np.nanmean(dqx)), np.nan_to_num(dqy - np.nanmean(dqy))
    best = (math.inf, 0.0, False)
    coarse = np.deg2rad(np.arange(0.0, 180.0, 1.0))
    for flip in (False, True):
        costs = [_curl_energy(*to_scan_frame(fx, fy, t, flip)) for t in coarse]
        i = int(np.argmin(costs))
        fine = coarse[i] + np.deg2rad(np.linspace(-1.0, 1.0, 81))
        fcosts = [_curl_energy(*to_scan_frame(fx, fy, t, flip)) for t in fine]
        j = int(np.argmin(fcosts))
        if fcosts[j] < best[0]:
            best = (fcosts[j], float(fine[j]), flip)
    _, theta, flip = best
    sx, sy = to_scan_frame(fx, fy, theta, flip)
    phase = integrate_gradient(sx, sy)
    centred = phase - phase.mean()
    if np.mean(centred**3) < 0:
        theta += math.pi
    return float(math.remainder(theta, 2 * math.pi)), flip
