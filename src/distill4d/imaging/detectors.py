"""Virtual detector masks on the detector grid ``(Qx, Qy)``.

A pixel belongs to a circular or annular detector when the distance from its centre to
the origin lies in ``[r_inner, r_outer)``. Radii are in pixels here; :func:`detector_mask`
converts mrad or 1/Å with the DataCube's calibration.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING

import numpy as np

from .._validate import nonnegative_float, positive_float
from ..errors import Distill4dError

if TYPE_CHECKING:  # pragma: no cover
    from ..datacube import DataCube

__all__ = ["annulus_mask", "circle_mask", "detector_mask"]


def _radius_grid(shape: tuple[int, int], origin: tuple[float, float]) -> np.ndarray:
    qx = np.arange(shape[0], dtype=np.float64)[:, None] - origin[0]
    qy = np.arange(shape[1], dtype=np.float64)[None, :] - origin[1]
    return np.hypot(qx, qy)


def annulus_mask(
    shape: tuple[int, int], origin: tuple[float, float], r_inner_px: float, r_outer_px: float = math.inf
) -> np.ndarray:
    """Boolean mask of pixels whose centre is at a distance in ``[r_inner_px, r_outer_px)`` from ``origin``.

    Raises ValueError when the annulus contains no pixel of the detector (radii beyond the
    pattern); warns when the outer radius is clipped by the detector edge.
    """
    r_in = nonnegative_float("r_inner_px", r_inner_px)
    r_out = float(r_outer_px)
    if not r_out > r_in:
        raise Distill4dError(f"r_outer_px must be larger than r_inner_px, got {r_outer_px!r} <= {r_inner_px!r}")
    shape = (int(shape[0]), int(shape[1]))
    origin = (float(origin[0]), float(origin[1]))
    r = _radius_grid(shape, origin)
    mask = (r >= r_in) & (r < r_out)
    if not mask.any():
        raise Distill4dError(
            f"the detector [{r_in:g}, {r_out:g}) px around origin ({origin[0]:.1f}, {origin[1]:.1f}) "
            f"contains no pixel of the {shape[0]}x{shape[1]} pattern (its pixels lie between "
            f"{r.min():.1f} and {r.max():.1f} px from the origin)"
        )
    edge = _edge_distance(shape, origin)
    if math.isfinite(r_out) and r_out > edge + 1:
        warnings.warn(
            f"the detector's outer radius {r_out:.1f} px reaches beyond the pattern edge "
            f"({edge:.1f} px from the origin): the detector is clipped",
            stacklevel=2,
        )
    return mask


def circle_mask(shape: tuple[int, int], origin: tuple[float, float], radius_px: float) -> np.ndarray:
    """Boolean mask of pixels whose centre is within ``radius_px`` of ``origin`` (a BF detector).

    Raises ValueError when the circle reaches more than 1 px beyond the pattern edge: it
    would no longer be a disk detector.
    """
    radius = positive_float("radius_px", radius_px)
    edge = _edge_distance(shape, origin)
    if radius > edge + 1:
        raise Distill4dError(
            f"the detector radius {radius:g} px reaches beyond the {int(shape[0])}x{int(shape[1])} pattern "
            f"(its edge is {edge:.1f} px from the origin ({float(origin[0]):.1f}, {float(origin[1]):.1f}))"
        )
    return annulus_mask(shape, origin, 0.0, radius)


def _edge_distance(shape: tuple[int, int], origin: tuple[float, float]) -> float:
    """Distance in pixels from ``origin`` to the nearest edge of the detector."""
    ox, oy = float(origin[0]), float(origin[1])
    return min(ox + 0.5, int(shape[0]) - 0.5 - ox, oy + 0.5, int(shape[1]) - 0.5 - oy)


def detector_mask(
    datacube: "DataCube",
    kind: str,
    radii: tuple[float, ...] | None = None,
    *,
    unit: str = "px",
    origin: tuple[float, float] | None = None,
    mean_pattern: np.ndarray | None = None,
) -> np.ndarray:
    """A named virtual detector for ``datacube``.

    Parameters
    ----------
    kind : ``"bf"`` (disk of radius ``radii[0]``), ``"adf"`` / ``"annulus"`` (``radii = (inner, outer)``;
        outer may be ``inf`` for "to the detector edge").
    radii : radii in ``unit``. Defaults: BF = the bright-field disk radius (clipped, with a
        warning, to the detector edge); ADF = from 1.5x that radius to the detector edge (BF
        disk measured on the mean pattern when the calibration has no ``semiangle_mrad``).
    unit : ``"px"``, ``"mrad"`` or ``"inv_A"``.
    origin : ``(qx, qy)`` in pixels; default the calibration's origin, else the centre of the
        bright-field disk of the mean pattern.
    mean_pattern : the dataset's mean pattern if already computed (saves a pass over the data
        when several detectors are built).
    """
    from .origin import find_bf_disk

    cal = datacube.calibration
    angle_known = None not in (cal.semiangle_mrad, cal.q_pixel_inv_A, cal.energy_eV)
    need_disk = (origin is None and cal.origin_px is None) or (radii is None and not angle_known)
    if need_disk and mean_pattern is None:
        mean_pattern = datacube.mean_pattern()
    disk = find_bf_disk(mean_pattern) if need_disk else None
    if origin is None:
        origin = cal.origin_px if cal.origin_px is not None else (disk[0], disk[1])
    if radii is None:
        if angle_known:
            r_bf = cal.length_to_px(cal.semiangle_mrad, "mrad")
        else:
            r_bf = disk[2]
        edge = _edge_distance(datacube.pattern_shape, origin)
        if kind == "bf" and r_bf > edge:
            warnings.warn(
                f"the bright-field disk (radius {r_bf:.1f} px) reaches beyond the detector edge "
                f"({edge:.1f} px from the origin); the default BF detector is clipped to {edge:.1f} px",
                stacklevel=2,
            )
            r_bf = edge
        radii_px = (r_bf,) if kind == "bf" else (1.5 * r_bf, math.inf)
    else:
        radii_px = tuple(cal.length_to_px(r, unit) if math.isfinite(r) else math.inf for r in radii)
    if kind == "bf":
        if len(radii_px) != 1:
            raise Distill4dError(f"a 'bf' detector takes one radius, got {radii!r}")
        return circle_mask(datacube.pattern_shape, origin, radii_px[0])
    if kind in ("adf", "annulus"):
        if len(radii_px) != 2:
            raise Distill4dError(f"an '{kind}' detector takes two radii (inner, outer), got {radii!r}")
        return annulus_mask(datacube.pattern_shape, origin, *radii_px)
    raise Distill4dError(f"kind must be 'bf', 'adf' or 'annulus', got {kind!r}")
