"""Kinematic convergent-beam (disk) patterns of a strained 2D crystal, with ground truth.

A crystal is given by its real-space lattice ``lattice_A`` (a 2x2 array whose *columns*
are the lattice vectors a1, a2 in Å, in detector coordinates (x = first axis)). Its
reciprocal lattice is ``B = A^-T`` (columns b1, b2 in 1/Å, ``a_i . b_j = delta_ij``). At a
scan position with deformation ``F`` the lattice is ``F A`` and a reflection ``(h, k)`` sits
at ``g = F^-T B (h, k)``; its disk (radius = convergence semiangle) is drawn at
``origin_px + D g / q_pixel_inv_A`` with a soft, anti-aliased edge and exact sub-pixel
position, where ``D`` is an optional elliptic distortion of the detector.

Intensities are kinematic: ``|F_hk|^2`` of a motif of identical atoms times a Debye-Waller
like decay ``exp(-(|g| / decay_inv_A)^2)``; the direct beam has per-pixel intensity 1.
Everything is vectorised; a 32x32 scan of 128x128 patterns takes about a second.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from .._validate import nonnegative_float, positive_float, positive_int
from ..calibration import Calibration
from ..datacube import DataCube
from ..errors import Distill4dError

__all__ = [
    "SI110_LATTICE_A",
    "SI110_MOTIF",
    "reciprocal_lattice",
    "reflections",
    "render_disks",
    "kinematic_patterns",
    "vacuum_probe",
    "strained_scan",
    "ScanTruth",
    "deformation_to_strain",
    "DEFAULT_CALIBRATION",
]

#: Si viewed along [110]: centred rectangular cell (columns: a1 along x, a2 along y), in Å.
SI110_LATTICE_A = np.array([[3.840, 0.0], [0.0, 5.431]])
#: Fractional positions of the (projected dumbbell) motif of the centred cell.
SI110_MOTIF = ((0.0, 0.0), (0.5, 0.5))
#: A calibration giving disks of radius ~4.1 px and |g_220| ~ 20.8 px at 300 kV.
DEFAULT_CALIBRATION = Calibration(q_pixel_inv_A=0.025, energy_eV=300e3, semiangle_mrad=2.0)


def _lattice(name: str, value: Any) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != (2, 2) or not np.all(np.isfinite(arr)):
        raise Distill4dError(f"{name} must be a finite 2x2 array (columns = lattice vectors), got {arr!r}")
    if abs(np.linalg.det(arr)) < 1e-12:
        raise Distill4dError(f"{name} must have two non-collinear lattice vectors, got {arr.tolist()}")
    return arr


def reciprocal_lattice(lattice_A: Any) -> np.ndarray:
    """Reciprocal basis ``A^-T`` (columns b1, b2 in 1/Å, no 2*pi) of a real-space basis (columns, Å)."""
    return np.linalg.inv(_lattice("lattice_A", lattice_A)).T


def reflections(
    lattice_A: Any,
    q_max_inv_A: float,
    *,
    motif: Any = SI110_MOTIF,
    decay_inv_A: float = 1.0,
    min_intensity: float = 1e-6,
) -> tuple[np.ndarray, np.ndarray]:
    """Allowed reflections ``(h, k)`` with ``0 < |g| <= q_max_inv_A`` and their relative intensities.

    Returns ``hk`` (m, 2) integers and ``intensity`` (m,) = ``|F_hk / n_atoms|^2 exp(-(|g|/decay)^2)``;
    reflections weaker than ``min_intensity`` (e.g. extinct ones) are left out.
    """
    B = reciprocal_lattice(lattice_A)
    q_max = positive_float("q_max_inv_A", q_max_inv_A)
    decay = positive_float("decay_inv_A", decay_inv_A)
    # |g| >= |(h,k)| * smallest singular value of B
    n = int(math.ceil(q_max / np.linalg.svd(B, compute_uv=False).min())) + 1
    h, k = np.meshgrid(np.arange(-n, n + 1), np.arange(-n, n + 1), indexing="ij")
    hk = np.stack([h.ravel(), k.ravel()], axis=1)
    g = hk @ B.T
    gl = np.hypot(g[:, 0], g[:, 1])
    keep = (gl > 0) & (gl <= q_max)
    hk, gl = hk[keep], gl[keep]
    xyz = np.asarray(motif, dtype=np.float64).reshape(-1, 2)
    f = np.exp(2j * np.pi * (hk @ xyz.T)).sum(axis=1) / len(xyz)
    intensity = np.abs(f) ** 2 * np.exp(-((gl / decay) ** 2))
    keep = intensity >= min_intensity
    return hk[keep], intensity[keep]


def render_disks(
    shape: tuple[int, int],
    centers_px: Any,
    amplitudes: Any,
    radius_px: float,
    *,
    edge_px: float = 1.0,
    chunk: int = 64,
) -> np.ndarray:
    """Draw soft-edged disks on ``n`` patterns.

    Parameters
    ----------
    shape : pattern shape ``(Qx, Qy)`` in pixels.
    centers_px : ``(n, m, 2)`` disk centres ``(qx, qy)`` in pixels (NaN: no disk).
    amplitudes : ``(n, m)`` or ``(m,)`` per-pixel intensity inside each disk.
    radius_px : disk radius in pixels.
    edge_px : width of the linear edge ramp in pixels (anti-aliasing; the disk area stays pi R^2).

    Returns
    -------
    ``(n, Qx, Qy)`` float64 patterns.
    """
    qx_n, qy_n = (positive_int("shape", s) for s in shape)
    centers = np.asarray(centers_px, dtype=np.float64)
    if centers.ndim != 3 or centers.shape[2] != 2:
        raise Distill4dError(f"centers_px must have shape (n, m, 2), got {centers.shape}")
    n, m = centers.shape[:2]
    amps = np.broadcast_to(np.asarray(amplitudes, dtype=np.float64), (n, m))
    radius = positive_float("radius_px", radius_px)
    edge = positive_float("edge_px", edge_px)
    half = int(math.ceil(radius + edge)) + 1
    offs = np.arange(-half, half + 1)
    out = np.zeros((n, qx_n * qy_n))
    reach = radius + edge
    for s in range(0, n, chunk):
        c = centers[s : s + chunk]
        a = amps[s : s + chunk]
        ok = (
            np.isfinite(c).all(axis=2)
            & (a != 0)
            & (c[..., 0] > -reach)
            & (c[..., 0] < qx_n - 1 + reach)
            & (c[..., 1] > -reach)
            & (c[..., 1] < qy_n - 1 + reach)
        )
        ii, jj = np.nonzero(ok)
        if ii.size == 0:
            continue
        cx, cy = c[ii, jj, 0], c[ii, jj, 1]
        px = np.round(cx).astype(np.int64)[:, None] + offs  # (K, P)
        py = np.round(cy).astype(np.int64)[:, None] + offs
        dx = px - cx[:, None]
        dy = py - cy[:, None]
        r = np.sqrt(dx[:, :, None] ** 2 + dy[:, None, :] ** 2)  # (K, P, P)
        val = np.clip((radius - r) / edge + 0.5, 0.0, 1.0) * a[ii, jj][:, None, None]
        inside = (
            ((px >= 0) & (px < qx_n))[:, :, None] & ((py >= 0) & (py < qy_n))[:, None, :] & (val > 0)
        )
        flat = (ii[:, None, None] * (qx_n * qy_n) + px[:, :, None] * qy_n + py[:, None, :])[inside]
        nb = min(chunk, n - s)
        out[s : s + nb] += np.bincount(flat, weights=val[inside], minlength=nb * qx_n * qy_n).reshape(nb, -1)
    return out.reshape(n, qx_n, qy_n)


def _disk_radius_px(calibration: Calibration) -> float:
    return calibration.length_to_px(calibration.require("semiangle_mrad"), "mrad")


def _origin(shape: tuple[int, int], origin_px: Any) -> np.ndarray:
    if origin_px is None:
        return np.array([shape[0] / 2.0, shape[1] / 2.0])
    o = np.asarray(origin_px, dtype=np.float64)
    if o.shape != (2,) or not np.all(np.isfinite(o)):
        raise Distill4dError(f"origin_px must be a finite pair (qx, qy) in pixels, got {origin_px!r}")
    return o


def _ellipse_matrix(ellipse: Any) -> np.ndarray:
    """Detector distortion: stretch by ``ratio`` along the direction at ``angle_rad`` from x."""
    if ellipse is None:
        return np.eye(2)
    try:
        ratio, angle = (float(v) for v in ellipse)
    except (TypeError, ValueError):
        raise TypeError(f"ellipse must be a pair (ratio, angle_rad), got {ellipse!r}") from None
    positive_float("ellipse ratio", ratio)
    c, s = math.cos(angle), math.sin(angle)
    R = np.array([[c, -s], [s, c]])
    return R @ np.diag([ratio, 1.0]) @ R.T


def kinematic_patterns(
    deformation: Any = None,
    *,
    shape: tuple[int, int] = (128, 128),
    calibration: Calibration = DEFAULT_CALIBRATION,
    lattice_A: Any = SI110_LATTICE_A,
    motif: Any = SI110_MOTIF,
    decay_inv_A: float = 1.0,
    bragg_scale: float = 0.5,
    origin_px: Any = None,
    ellipse: Any = None,
    edge_px: float = 1.0,
    background: float = 0.0,
    dose: float | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Simulate disk patterns for ``n`` deformations of a crystal.

    Parameters
    ----------
    deformation : ``(n, 2, 2)`` or ``(2, 2)`` deformation gradients ``F`` (real-space lattice
        ``F A``; identity when None). Rotations are deformations too.
    shape : pattern shape ``(Qx, Qy)`` in pixels.
    calibration : needs ``q_pixel_inv_A``, ``energy_eV`` and ``semiangle_mrad`` (disk radius).
    lattice_A, motif : real-space basis (columns, Å) and fractional atom positions.
    decay_inv_A : intensity envelope ``exp(-(|g|/decay)^2)``, 1/Å.
    bragg_scale : per-pixel intensity of a full-strength Bragg disk relative to the direct beam (1).
    origin_px : direct-beam position ``(qx, qy)`` in pixels (default: ``(Qx/2, Qy/2)``).
    ellipse : ``(ratio, angle_rad)`` elliptic distortion of the detector, or None.
    edge_px : width of the anti-aliased disk edge in pixels.
    background : amplitude of a broad Gaussian diffuse background around the origin
        (per pixel, relative to the direct beam).
    dose : electrons per pattern; when given, patterns are scaled to this total and
        Poisson noise is drawn with ``seed``. Without it patterns are noise-free.

    Returns
    -------
    patterns : ``(n, Qx, Qy)`` float32.
    truth : dict with ``qx``, ``qy`` (n, m) disk centres in pixels (NaN where the centre is
        off the detector), ``intensity`` (n, m) integrated disk intensity in pattern units,
        ``hk`` (m, 2) indices (``(0, 0)`` first: the direct beam) and ``radius_px``.
    """
    A = _lattice("lattice_A", lattice_A)
    shape = (positive_int("shape", shape[0]), positive_int("shape", shape[1]))
    F = np.eye(2) if deformation is None else np.asarray(deformation, dtype=np.float64)
    if F.shape == (2, 2):
        F = F[None]
    if F.ndim != 3 or F.shape[1:] != (2, 2) or not np.all(np.isfinite(F)):
        raise Distill4dError(f"deformation must be finite with shape (n, 2, 2) or (2, 2), got shape {F.shape}")
    if np.any(np.abs(np.linalg.det(F)) < 1e-6):
        raise Distill4dError("deformation contains a singular matrix (det F = 0)")
    q_pixel = calibration.require("q_pixel_inv_A")
    radius = _disk_radius_px(calibration)
    origin = _origin(shape, origin_px)
    D = _ellipse_matrix(ellipse)
    bragg_scale = nonnegative_float("bragg_scale", bragg_scale)
    background = nonnegative_float("background", background)

    # Reflections that can reach the detector under deformations of up to ~30 %.
    corners = np.array([[0, 0], [0, shape[1]], [shape[0], 0], [shape[0], shape[1]]], dtype=float)
    q_max = 1.3 * np.max(np.hypot(*(corners - origin).T)) * q_pixel * max(1.0, np.abs(D).max())
    hk, rel = reflections(A, q_max, motif=motif, decay_inv_A=decay_inv_A)
    hk = np.concatenate([[[0, 0]], hk])
    amp = np.concatenate([[1.0], bragg_scale * rel])

    B = reciprocal_lattice(A)
    Binv_T = np.linalg.inv(F).transpose(0, 2, 1)  # F^-T, (n, 2, 2)
    g = np.einsum("nij,jk,mk->nmi", Binv_T, B, hk)  # (n, m, 2) in 1/Å
    pos = origin + np.einsum("ij,nmj->nmi", D, g) / q_pixel
    patterns = render_disks(shape, pos, amp, radius, edge_px=edge_px)
    if background > 0:
        x = np.arange(shape[0])[:, None] - origin[0]
        y = np.arange(shape[1])[None, :] - origin[1]
        w = 0.25 * min(shape)
        patterns += background * np.exp(-(x**2 + y**2) / (2 * w**2))
    integrated = np.broadcast_to(amp * math.pi * radius**2, pos.shape[:2]).copy()
    if dose is not None:
        dose = positive_float("dose", dose)
        scale = dose / patterns.sum(axis=(1, 2))
        rng = np.random.default_rng(seed)
        patterns = rng.poisson(patterns * scale[:, None, None]).astype(np.float64)
        integrated *= scale[:, None]
    on = (pos[..., 0] >= 0) & (pos[..., 0] <= shape[0] - 1) & (pos[..., 1] >= 0) & (pos[..., 1] <= shape[1] - 1)
    qx = np.where(on, pos[..., 0], np.nan)
    qy = np.where(on, pos[..., 1], np.nan)
    truth = {
        "qx": qx,
        "qy": qy,
        "intensity": np.where(on, integrated, np.nan),
        "hk": hk,
        "radius_px": np.float64(radius),
    }
    return patterns.astype(np.float32), truth


def vacuum_probe(
    shape: tuple[int, int] = (128, 128),
    *,
    calibration: Calibration = DEFAULT_CALIBRATION,
    origin_px: Any = None,
    edge_px: float = 1.0,
) -> np.ndarray:
    """A vacuum probe: one soft-edged disk (per-pixel intensity 1) at ``origin_px`` (default centre)."""
    shape = (positive_int("shape", shape[0]), positive_int("shape", shape[1]))
    origin = _origin(shape, origin_px)
    return render_disks(shape, origin[None, None], [1.0], _disk_radius_px(calibration), edge_px=edge_px)[0].astype(
        np.float32
    )


def deformation_to_strain(F: Any) -> dict[str, np.ndarray]:
    """Strain ``(F + F^T)/2 - I`` and rotation ``atan2(F10 - F01, F00 + F11)`` of ``F`` (..., 2, 2).

    The same convention as :func:`distill4d.lattice.strain_from_deformation` (used here).
    """
    from ..lattice.strain import strain_from_deformation

    return strain_from_deformation(F)


@dataclasses.dataclass
class ScanTruth:
    """Ground truth of :func:`strained_scan`.

    ``F`` (Rx, Ry, 2, 2) deformation gradients; ``eps_xx``, ``eps_yy``, ``eps_xy`` (fractions)
    and ``theta`` (radians) of shape (Rx, Ry); ``qx``, ``qy``, ``intensity`` (Rx, Ry, m) disk
    centres in pixels and integrated intensities (NaN: off the detector); ``hk`` (m, 2);
    ``radius_px`` the disk radius; ``origin_px`` the direct-beam position.
    """

    F: np.ndarray
    eps_xx: np.ndarray
    eps_yy: np.ndarray
    eps_xy: np.ndarray
    theta: np.ndarray
    qx: np.ndarray
    qy: np.ndarray
    intensity: np.ndarray
    hk: np.ndarray
    radius_px: float
    origin_px: tuple[float, float]
    calibration: Calibration

    def peaks(self, rx: int, ry: int) -> np.ndarray:
        """True peaks at one position as ``(k, 3)``: qx, qy (pixels), intensity."""
        p = np.stack([self.qx[rx, ry], self.qy[rx, ry], self.intensity[rx, ry]], axis=1)
        return p[np.isfinite(p[:, 0])]

    def bragg_peaks(self):
        """The true peaks as a :class:`distill4d.bragg.BraggPeaks`."""
        from ..bragg.peaks import BraggPeaks

        count = np.isfinite(self.qx).sum(axis=-1)
        order = np.argsort(~np.isfinite(self.qx), axis=-1, kind="stable")
        take = lambda a: np.take_along_axis(a, order, axis=-1)  # noqa: E731
        return BraggPeaks.from_padded(take(self.qx), take(self.qy), take(self.intensity), count, self.calibration)


def strained_scan(
    scan_shape: tuple[int, int] = (16, 16),
    pattern_shape: tuple[int, int] = (128, 128),
    *,
    kind: str = "multilayer",
    strain: Any = 0.01,
    rotation_deg: float = 0.0,
    layer_width: int = 4,
    deformation: Any = None,
    calibration: Calibration = DEFAULT_CALIBRATION,
    dose: float | None = None,
    seed: int = 0,
    **pattern_options: Any,
) -> tuple[DataCube, ScanTruth]:
    """A simulated scan of a deformed crystal and its ground truth.

    Parameters
    ----------
    scan_shape, pattern_shape : ``(Rx, Ry)`` and ``(Qx, Qy)``.
    kind : ``"uniform"`` (``F = R(rotation) (I + eps)`` everywhere), ``"multilayer"`` (layers
        ``layer_width`` scan rows thick along Rx, alternating ``+eps`` / ``-eps``, with the
        rotation), or ``"none"`` (perfect crystal). Ignored when ``deformation`` is given.
    strain : real-space strain ``eps``: a float (``eps_xx``) or a symmetric 2x2 tensor (fractions).
    rotation_deg : lattice rotation in degrees (counter-clockwise from x towards y).
    deformation : explicit ``(Rx, Ry, 2, 2)`` field of ``F``.
    calibration : used for the disk radius and pixel size and attached to the DataCube.
    dose, seed : electrons per pattern and the noise seed (see :func:`kinematic_patterns`).
    **pattern_options : passed to :func:`kinematic_patterns` (lattice_A, motif, origin_px,
        ellipse, background, ...).
    """
    rx, ry = (positive_int("scan_shape", s) for s in scan_shape)
    if deformation is not None:
        F = np.asarray(deformation, dtype=np.float64)
        if F.shape != (rx, ry, 2, 2):
            raise Distill4dError(f"deformation must have shape {(rx, ry, 2, 2)}, got {F.shape}")
    else:
        eps = np.asarray(strain, dtype=np.float64)
        if eps.ndim == 0:
            eps = np.array([[float(eps), 0.0], [0.0, 0.0]])
        if eps.shape != (2, 2) or not np.allclose(eps, eps.T) or not np.all(np.isfinite(eps)):
            raise Distill4dError(f"strain must be a float (eps_xx) or a symmetric 2x2 array, got {strain!r}")
        t = math.radians(float(rotation_deg))
        R = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
        if kind == "uniform":
            F = np.broadcast_to(R @ (np.eye(2) + eps), (rx, ry, 2, 2)).copy()
        elif kind == "multilayer":
            layer_width = positive_int("layer_width", layer_width)
            sign = np.where((np.arange(rx) // layer_width) % 2 == 0, 1.0, -1.0)
            F = R @ (np.eye(2) + sign[:, None, None] * eps)  # (rx, 2, 2)
            F = np.broadcast_to(F[:, None], (rx, ry, 2, 2)).copy()
        elif kind == "none":
            F = np.broadcast_to(np.eye(2), (rx, ry, 2, 2)).copy()
        else:
            raise Distill4dError(f"kind must be 'uniform', 'multilayer' or 'none', got {kind!r}")
    patterns, t = kinematic_patterns(
        F.reshape(-1, 2, 2), shape=pattern_shape, calibration=calibration, dose=dose, seed=seed, **pattern_options
    )
    qshape = patterns.shape[1:]
    origin = _origin(qshape, pattern_options.get("origin_px"))
    dc = DataCube(
        patterns.reshape(rx, ry, *qshape),
        calibration.replace(origin_px=(float(origin[0]), float(origin[1]))),
        name=f"kinematic {kind}",
    )
    m = t["qx"].shape[1]
    truth = ScanTruth(
        F=F,
        **deformation_to_strain(F),
        qx=t["qx"].reshape(rx, ry, m),
        qy=t["qy"].reshape(rx, ry, m),
        intensity=t["intensity"].reshape(rx, ry, m),
        hk=t["hk"],
        radius_px=float(t["radius_px"]),
        origin_px=(float(origin[0]), float(origin[1])),
        calibration=dc.calibration,
    )
    return dc, truth
