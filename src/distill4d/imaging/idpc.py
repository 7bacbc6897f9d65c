"""Integrated DPC (iDPC): the phase whose gradient is the CoM field.

With the CoM ``s`` in 1/Å in the scan frame, ``∇φ = 2π s`` (φ in radians, ∇ per Å), so
for a thin object iDPC gives the object phase convolved with the probe intensity.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..errors import Distill4dError
from ..calibration import Calibration
from ..results import Provenance, Results
from .com import CenterOfMass, estimate_scan_rotation, to_scan_frame
from .integrate import integrate_gradient

__all__ = ["IDPCResult", "idpc", "integrate_gradient"]


@dataclass
class IDPCResult:
    """iDPC phase and the scan-frame CoM field it was integrated from.

    Attributes
    ----------
    phase : (Rx, Ry) phase, in radians when calibrated (``units == "rad"``), otherwise in
        arbitrary units (``units == "a.u."``: pixel shift times scan positions).
    field_x, field_y : (Rx, Ry) CoM in the scan frame, in 1/Å (calibrated) or detector pixels.
    rotation_rad, flip : the scan rotation used (estimated when not given).
    units : ``"rad"`` or ``"a.u."``.
    calibration : of the data (scan step in Å for scale bars).
    provenance : how it was computed (method ``"idpc"``, rotation, flip; the CoM's under
        ``parameters["com"]``), or None.
    """

    phase: np.ndarray
    field_x: np.ndarray
    field_y: np.ndarray
    rotation_rad: float
    flip: bool
    units: str
    calibration: Calibration = field(default_factory=Calibration, repr=False)
    provenance: Provenance | None = field(default=None, repr=False)

    def to_result(self) -> Results:
        """The common result container: ``idpc_phase`` (``units``), ``dpc_x``, ``dpc_y`` (1/Å or px)."""
        field_unit = "1/Å" if self.units == "rad" else "px"
        prov = self.provenance or Provenance("idpc", {"rotation_rad": self.rotation_rad, "flip": self.flip})
        return Results({"idpc_phase": self.phase, "dpc_x": self.field_x, "dpc_y": self.field_y},
                       {"idpc_phase": self.units, "dpc_x": field_unit, "dpc_y": field_unit},
                       calibration=self.calibration, provenance=prov)


def idpc(com: CenterOfMass, *, rotation_rad: float | None = None, flip: bool | None = None) -> IDPCResult:
    """Integrate a CoM map into a phase image.

    The scan rotation comes from ``rotation_rad``/``flip``, else from the calibration, else it is
    estimated (:func:`estimate_scan_rotation`). The mean field (an origin offset) is removed
    before integration. The phase is in radians when the calibration
    has ``q_pixel_inv_A`` and ``scan_step_A``. Positions whose CoM is undefined (NaN) are filled
    with the mean field for the integration and are NaN in the result.
    """
    cal = com.calibration
    if rotation_rad is None and cal.scan_rotation_rad is not None:
        rotation_rad, flip = cal.scan_rotation_rad, cal.scan_flip if flip is None else flip
    if rotation_rad is None:
        rotation_rad, est_flip = estimate_scan_rotation(com)
        flip = est_flip if flip is None else flip
    flip = bool(flip)
    calibrated = cal.q_pixel_inv_A is not None and cal.scan_step_A is not None
    dqx, dqy = com.in_inv_A() if calibrated else (com.com_qx_px, com.com_qy_px)
    bad = ~(np.isfinite(dqx) & np.isfinite(dqy))
    if bad.all():
        raise Distill4dError("every CoM value is undefined (NaN): no phase can be integrated")
    if bad.any():
        warnings.warn(f"{int(bad.sum())} positions have no defined CoM; they are NaN in the phase", stacklevel=2)
        dqx = np.where(bad, np.nanmean(dqx), dqx)
        dqy = np.where(bad, np.nanmean(dqy), dqy)
    sx, sy = to_scan_frame(dqx, dqy, rotation_rad, flip)
    # A uniform field (an origin offset, a tilt) would integrate to a ramp: leave it out.
    gx, gy = sx - sx.mean(), sy - sy.mean()
    if calibrated:
        phase = integrate_gradient(2 * math.pi * gx, 2 * math.pi * gy, step=cal.scan_step_A)
    else:
        phase = integrate_gradient(gx, gy)
    phase[bad] = np.nan
    sx = np.where(bad, np.nan, sx)
    sy = np.where(bad, np.nan, sy)
    params = {"rotation_rad": float(rotation_rad), "flip": flip, "calibrated": calibrated}
    prov = (com.provenance.derive("idpc", params, key="com") if com.provenance is not None
            else Provenance("idpc", params))
    return IDPCResult(phase, sx, sy, float(rotation_rad), flip, "rad" if calibrated else "a.u.", cal, prov)
