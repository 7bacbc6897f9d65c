"""Seeded, physics-informed augmentation of simulated diffraction training samples (NumPy).

A sample is ``(pattern, target, peaks)``:

- ``pattern``: ``(Qx, Qy)`` diffraction pattern (counts or arbitrary intensity, >= 0);
  axis 0 is qx, axis 1 is qy.
- ``target``: ``(Qx, Qy)`` structure-factor image (sharp peaks at the Bragg positions) or None;
  every geometric change is applied to it exactly as to the pattern.
- ``peaks``: ``(n, 2)`` or ``(n, 2 + k)`` array (columns qx_px, qy_px, then e.g. an amplitude)
  or None. Pixel index ``i`` has its centre at coordinate ``i``. Extra columns are carried
  unchanged; mapped peaks may land outside ``[0, Q - 1]`` (they are not dropped).

The direct beam (origin) is at ``origin_px``, by default ``(Qx // 2, Qy // 2)``.

Geometry is one affine map about the origin, ``p' = origin + M (p - origin) + shift``, applied
to the peaks exactly and to the images by bilinear resampling (``order=1``, the default, is
non-negative, agrees with :mod:`distill4d.simulate.augment_torch` and keeps sums and centroids
exact for pure shifts; it slightly blurs, by at most a ``[1/2, 1/2]`` kernel per axis) or cubic
splines (``order=3``: sharper, may ring slightly negative). Outside the detector the image is
zero (scipy ``mode="grid-constant"``, which interpolates towards zero across the edge like
``grid_sample(padding_mode="zeros")``). Images are resampled, not rescaled: a map with
determinant ``det M`` multiplies the total intensity by about ``det M`` (minus what leaves the
detector).

Every function is pure (inputs are not modified); randomness only comes from an explicit
``numpy.random.Generator``. Floating inputs keep their dtype, integer ones become float64.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from scipy import ndimage

from .._validate import nonnegative_float, pattern_array, positive_float
from ..errors import Distill4dError

__all__ = [
    "AugmentConfig",
    "affine",
    "bad_pixels",
    "ellipse_matrix",
    "elliptic_distortion",
    "intensity_scale",
    "lorentzian_background",
    "plasmon_background",
    "poisson_noise",
    "random_augment",
    "shift",
]

Sample = tuple[np.ndarray, "np.ndarray | None", "np.ndarray | None"]


# --------------------------------------------------------------------------------------------
# validation helpers (shared with augment_torch)


def _float_dtype(dtype: np.dtype) -> np.dtype:
    return dtype if dtype.kind == "f" else np.dtype(np.float64)


def _pattern(name: str, value: Any) -> np.ndarray:
    return pattern_array(name, value, ndim=2)


def _target(value: Any, shape: tuple[int, ...]) -> np.ndarray | None:
    if value is None:
        return None
    arr = pattern_array("target", value, ndim=2)
    if arr.shape != shape:
        raise Distill4dError(f"target must have the pattern's shape {shape}, got {arr.shape}")
    return arr


def _peaks(value: Any, name: str = "peaks") -> np.ndarray | None:
    if value is None:
        return None
    arr = np.asarray(value)
    if arr.ndim != 2 or arr.shape[1] < 2:
        raise Distill4dError(f"{name} must have shape (n, 2) or (n, 3) (qx_px, qy_px[, amplitude]), got {arr.shape}")
    if arr.dtype.kind not in "uif":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr[:, :2])):
        raise Distill4dError(f"{name} contains NaN or Inf coordinates; drop those rows first")
    return arr


def _origin(shape: tuple[int, ...], origin_px: Any) -> np.ndarray:
    if origin_px is None:
        return np.array([shape[0] // 2, shape[1] // 2], dtype=np.float64)
    return _pair("origin_px", origin_px, "(qx, qy)")


def _pair(name: str, value: Any, what: str = "(dqx, dqy)") -> np.ndarray:
    try:
        v = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a pair of numbers {what} in pixels, got {value!r}") from None
    if v.shape != (2,) or not np.all(np.isfinite(v)):
        raise Distill4dError(f"{name} must be a finite pair {what} in pixels, got {value!r}")
    return v


def _matrix(value: Any) -> np.ndarray:
    try:
        m = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"matrix must be a 2x2 array of numbers, got {value!r}") from None
    if m.shape != (2, 2) or not np.all(np.isfinite(m)):
        raise Distill4dError(f"matrix must be a finite 2x2 array, got {value!r}")
    if abs(np.linalg.det(m)) < 1e-9:
        raise Distill4dError(f"matrix must be invertible, got {m.tolist()} (det = {np.linalg.det(m):.3g})")
    return m


def _fraction(name: str, value: Any) -> float:
    v = nonnegative_float(name, value)
    if v > 1:
        raise Distill4dError(f"{name} must be a fraction in [0, 1], got {value!r}")
    return v


def _generator(rng: Any) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
    return rng


def ellipse_matrix(ratio: float, angle_rad: float) -> np.ndarray:
    """``D = R(angle) diag(ratio, 1) R(angle)^T``: a stretch by ``ratio`` along the direction at
    ``angle_rad`` from the qx axis (towards qy), lengths perpendicular to it unchanged (det D = ratio)."""
    ratio = positive_float("ratio", ratio)
    try:
        angle = float(angle_rad)
    except (TypeError, ValueError):
        raise TypeError(f"angle_rad must be a number, got {angle_rad!r}") from None
    if not math.isfinite(angle):
        raise Distill4dError(f"angle_rad must be finite, got {angle_rad!r}")
    c, s = math.cos(angle), math.sin(angle)
    R = np.array([[c, -s], [s, c]])
    return R @ np.diag([ratio, 1.0]) @ R.T


# --------------------------------------------------------------------------------------------
# geometry


def affine(
    pattern: Any,
    target: Any = None,
    peaks: Any = None,
    *,
    matrix: Any = ((1.0, 0.0), (0.0, 1.0)),
    shift_px: Any = (0.0, 0.0),
    origin_px: Any = None,
    order: int = 1,
) -> Sample:
    """Map ``p -> origin + matrix (p - origin) + shift_px`` (pixels) on pattern, target and peaks.

    The images are resampled once (``out(p') = in(p)``; bilinear for ``order=1``, cubic
    splines for ``order=3``; zero outside the detector); peak coordinates are mapped exactly.
    Returns ``(pattern, target, peaks)`` with None passed through.
    """
    pat = _pattern("pattern", pattern)
    tgt = _target(target, pat.shape)
    pk = _peaks(peaks)
    M = _matrix(matrix)
    s = _pair("shift_px", shift_px)
    o = _origin(pat.shape, origin_px)
    if order not in (1, 3):
        raise Distill4dError(f"order must be 1 (bilinear) or 3 (cubic spline), got {order!r}")
    Minv = np.linalg.inv(M)
    # input coordinate of output pixel x: o + Minv (x - s - o)
    offset = o - Minv @ (o + s)

    def resample(img: np.ndarray) -> np.ndarray:
        out = ndimage.affine_transform(
            img.astype(np.float64), Minv, offset=offset, order=order, mode="grid-constant", cval=0.0
        )
        return out.astype(_float_dtype(img.dtype))

    new_pk = None
    if pk is not None:
        new_pk = pk.astype(_float_dtype(pk.dtype), copy=True)
        xy = pk[:, :2].astype(np.float64)
        new_pk[:, :2] = o + (xy - o) @ M.T + s
    return resample(pat), (None if tgt is None else resample(tgt)), new_pk


def elliptic_distortion(
    pattern: Any,
    target: Any = None,
    peaks: Any = None,
    *,
    ratio: float,
    angle_rad: float,
    origin_px: Any = None,
    order: int = 1,
) -> Sample:
    """Elliptic (projector-lens like) distortion about ``origin_px``.

    A pure stretch by ``ratio`` (1.02: 2 % longer) along the direction at ``angle_rad`` from the
    qx axis, ``D = R diag(ratio, 1) R^T``; it is *not* area-preserving (det D = ratio), so the
    resampled total intensity grows by about ``ratio``. Peaks map exactly,
    ``p' = origin + D (p - origin)``. See :func:`affine` for the resampling.
    """
    return affine(pattern, target, peaks, matrix=ellipse_matrix(ratio, angle_rad), origin_px=origin_px, order=order)


def shift(pattern: Any, target: Any = None, peaks: Any = None, *, shift_px: Any, order: int = 1) -> Sample:
    """Sub-pixel shift by ``shift_px = (dqx, dqy)`` pixels: ``peaks += shift_px``.

    Images are shifted by bilinear interpolation (``order=1``: sum and centroid exact away from
    the edges, no wrap-around; ``order=3``: cubic splines), zero filled at the edges.
    """
    return affine(pattern, target, peaks, shift_px=shift_px, order=order)


# --------------------------------------------------------------------------------------------
# intensity


def lorentzian_background(probe: Any, width_px: float) -> np.ndarray:
    """``probe`` convolved with the 2D Lorentzian ``1 / (q^2 + width_px^2)`` (q in pixels).

    Linear (not circular) convolution by FFT on a ``(2 Qx, 2 Qy)`` grid, with the kernel
    evaluated at every probe-to-pixel offset, so nothing wraps around; unnormalised, float64.
    """
    pr = pattern_array("probe", probe, ndim=2).astype(np.float64)
    w = positive_float("width_px", width_px)
    nx, ny = 2 * pr.shape[0], 2 * pr.shape[1]
    dx = np.fft.fftfreq(nx, 1.0 / nx)[:, None]  # 0..nx/2-1, -nx/2..-1 (integers)
    dy = np.fft.fftfreq(ny, 1.0 / ny)[None, :]
    kernel = 1.0 / (dx**2 + dy**2 + w**2)
    spec = np.fft.rfft2(pr, s=(nx, ny)) * np.fft.rfft2(kernel)
    out = np.fft.irfft2(spec, s=(nx, ny))[: pr.shape[0], : pr.shape[1]]
    return np.maximum(out, 0.0)


def plasmon_background(pattern: Any, probe: Any, *, fraction: float, width_px: float) -> np.ndarray:
    """Add a plasmon-like diffuse background to ``pattern``.

    The background is the vacuum ``probe`` image (same shape as the pattern, >= 0) convolved with
    a 2D Lorentzian ``I(q) ∝ 1 / (q^2 + width_px^2)`` (the small-angle plasmon cross-section, q in
    pixels from the probe; see :func:`lorentzian_background`), scaled so that its total over the
    detector is ``fraction`` x the pattern's total. The 2D Lorentzian's integral diverges
    logarithmically, so its tails are cut by the detector edge; physically ``width_px`` (the
    characteristic angle theta_E ~ E_p / 2E_0, ~0.03 mrad at 300 kV) is well below a pixel, the
    visible halo is the 1/q^2 tail. Returns the new pattern (target and peaks are unchanged).
    """
    pat = _pattern("pattern", pattern)
    pr = pattern_array("probe", probe, ndim=2)
    if pr.shape != pat.shape:
        raise Distill4dError(f"probe must have the pattern's shape {pat.shape}, got {pr.shape}")
    if np.any(pr < 0) or not pr.sum() > 0:
        raise Distill4dError("probe must be >= 0 with a positive total (a vacuum probe image)")
    fraction = nonnegative_float("fraction", fraction)
    width = positive_float("width_px", width_px)
    total = float(pat.sum(dtype=np.float64))
    dtype = _float_dtype(pat.dtype)
    if fraction == 0 or total == 0:
        return pat.astype(dtype, copy=True)
    bg = lorentzian_background(pr, width)
    bg *= fraction * total / bg.sum()
    return (pat.astype(np.float64) + bg).astype(dtype)


def poisson_noise(pattern: Any, *, dose_e: float, rng: np.random.Generator) -> np.ndarray:
    """Scale ``pattern`` (>= 0) so its total is ``dose_e`` electrons and draw Poisson counts.

    Returns float64 counts (their expected total is ``dose_e``).
    """
    pat = _pattern("pattern", pattern)
    dose = positive_float("dose_e", dose_e)
    rng = _generator(rng)
    total = float(pat.sum(dtype=np.float64))
    if not math.isfinite(total) or total <= 0:
        raise Distill4dError(f"pattern must have a positive finite total to be scaled to dose_e, got total {total!r}")
    if pat.min() < 0:
        raise Distill4dError(f"pattern must be >= 0 for Poisson noise, got minimum {pat.min()!r}")
    return rng.poisson(pat.astype(np.float64) * (dose / total)).astype(np.float64)


def bad_pixels(
    pattern: Any,
    *,
    hot_fraction: float,
    dead_fraction: float,
    hot_value: float | None = None,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Set random pixels dead (0) and hot (``hot_value``).

    Each pixel is independently dead with probability ``dead_fraction`` or else hot with
    probability ``hot_fraction`` (the masks are disjoint; ``hot_fraction + dead_fraction <= 1``).
    ``hot_value`` defaults to 10 x the pattern's maximum (1.0 if the maximum is <= 0): far
    above any real pixel, like a stuck or noisy detector pixel.
    Returns ``(pattern, hot_mask, dead_mask)``.
    """
    pat = _pattern("pattern", pattern)
    hot_f = _fraction("hot_fraction", hot_fraction)
    dead_f = _fraction("dead_fraction", dead_fraction)
    if hot_f + dead_f > 1:
        raise Distill4dError(f"hot_fraction + dead_fraction must be <= 1, got {hot_f} + {dead_f}")
    rng = _generator(rng)
    if hot_value is None:
        peak = float(pat.max())
        hot = 10.0 * peak if peak > 0 else 1.0
    else:
        hot = nonnegative_float("hot_value", hot_value)
    u = rng.random(pat.shape)
    dead = u < dead_f
    hot_mask = (u >= dead_f) & (u < dead_f + hot_f)
    out = pat.astype(_float_dtype(pat.dtype), copy=True)
    out[dead] = 0
    out[hot_mask] = hot
    return out, hot_mask, dead


def intensity_scale(pattern: Any, *, factor: float) -> np.ndarray:
    """``pattern * factor`` (``factor`` > 0: a detector gain or beam-current change)."""
    pat = _pattern("pattern", pattern)
    f = positive_float("factor", factor)
    return (pat.astype(np.float64) * f).astype(_float_dtype(pat.dtype))


# --------------------------------------------------------------------------------------------
# random chain


def _range(name: str, value: Any, *, positive: bool = False) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a pair (low, high), got {value!r}") from None
    check = positive_float if positive else nonnegative_float
    check(f"{name} low", lo)
    check(f"{name} high", hi)
    if lo > hi:
        raise Distill4dError(f"{name} must have low <= high, got {value!r}")
    return lo, hi


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Ranges and probabilities of :func:`random_augment` (defaults for FCU-Net training).

    ellipticity_max : stretch ratio drawn uniformly in ``[1, 1 + ellipticity_max]`` along an
        angle uniform in ``[0, pi)`` (0.03: up to 3 %).
    shift_max_px : ``dqx``, ``dqy`` each uniform in ``[-shift_max_px, shift_max_px]`` pixels.
    plasmon_fraction : background total / pattern total, uniform in this range (``(0, 0)``: off).
    plasmon_width_px : Lorentzian width in pixels, uniform in this range.
    intensity_factor : gain applied to the pattern, log-uniform in this range.
    dose_e : electrons per pattern, log-uniform in this range; None: no Poisson noise.
    noise_probability : probability that Poisson noise is applied.
    bad_pixel_probability : probability that hot and dead pixels are applied.
    hot_fraction_max, dead_fraction_max : fractions drawn uniformly in ``[0, max]``.
    hot_value : value of hot pixels (None: 10 x the pattern maximum, see :func:`bad_pixels`).
    order : image interpolation order (1 bilinear, 3 cubic spline; the torch version is bilinear).
    """

    ellipticity_max: float = 0.03
    shift_max_px: float = 2.0
    plasmon_fraction: tuple[float, float] = (0.0, 0.3)
    plasmon_width_px: tuple[float, float] = (0.5, 5.0)
    intensity_factor: tuple[float, float] = (0.5, 2.0)
    dose_e: tuple[float, float] | None = (1e2, 1e6)
    noise_probability: float = 0.9
    bad_pixel_probability: float = 0.2
    hot_fraction_max: float = 1e-3
    dead_fraction_max: float = 1e-3
    hot_value: float | None = None
    order: int = 1

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)
        set_("ellipticity_max", nonnegative_float("ellipticity_max", self.ellipticity_max))
        set_("shift_max_px", nonnegative_float("shift_max_px", self.shift_max_px))
        set_("plasmon_fraction", _range("plasmon_fraction", self.plasmon_fraction))
        set_("plasmon_width_px", _range("plasmon_width_px", self.plasmon_width_px, positive=True))
        set_("intensity_factor", _range("intensity_factor", self.intensity_factor, positive=True))
        if self.dose_e is not None:
            set_("dose_e", _range("dose_e", self.dose_e, positive=True))
        set_("noise_probability", _fraction("noise_probability", self.noise_probability))
        set_("bad_pixel_probability", _fraction("bad_pixel_probability", self.bad_pixel_probability))
        set_("hot_fraction_max", _fraction("hot_fraction_max", self.hot_fraction_max))
        set_("dead_fraction_max", _fraction("dead_fraction_max", self.dead_fraction_max))
        if self.hot_fraction_max + self.dead_fraction_max > 1:
            raise Distill4dError(
                f"hot_fraction_max + dead_fraction_max must be <= 1, got {self.hot_fraction_max} + "
                f"{self.dead_fraction_max}"
            )
        if self.hot_value is not None:
            set_("hot_value", nonnegative_float("hot_value", self.hot_value))
        if self.order not in (1, 3):
            raise Distill4dError(f"order must be 1 (bilinear) or 3 (cubic spline), got {self.order!r}")


def random_augment(
    pattern: Any,
    target: Any,
    peaks: Any,
    probe: Any,
    *,
    rng: np.random.Generator,
    config: AugmentConfig = AugmentConfig(),
    origin_px: Any = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, dict[str, Any]]:
    """Apply a random, physically ordered chain of augmentations to one sample.

    1. plasmon background from ``probe`` (None: skipped) on the pattern (the specimen's own
       inelastic scattering, so it is distorted along with the pattern);
    2. elliptic distortion about ``origin_px`` then shift, as one resampling of pattern and
       target and an exact map of the peaks (:func:`affine`);
    3. Poisson noise at a log-uniform dose (with ``config.noise_probability``);
    4. intensity scale (a gain) of the pattern;
    5. hot and dead pixels (with ``config.bad_pixel_probability``).

    The target is only changed by step 2; the peaks' extra columns (amplitudes) are carried
    unchanged (``params["count_scale"] * params["intensity_factor"]`` converts pattern units).
    All parameters are drawn first, in a fixed order, so the same ``rng`` state gives bit-identical
    output. Returns ``(pattern, target, peaks, params)``; ``params`` holds ``ratio``,
    ``angle_rad``, ``shift_px``, ``plasmon_fraction``, ``plasmon_width_px``, ``dose_e`` (None when
    no noise), ``count_scale`` (dose / total before noise, 1 without noise), ``intensity_factor``,
    ``hot_fraction``, ``dead_fraction`` (0 when not applied), ``hot_mask`` and ``dead_mask``.
    """
    if not isinstance(config, AugmentConfig):
        raise TypeError(f"config must be an AugmentConfig, got {type(config).__name__}")
    rng = _generator(rng)
    pat = _pattern("pattern", pattern)
    tgt = _target(target, pat.shape)
    pk = _peaks(peaks)
    c = config

    # all scalar draws first, always the same number, in a fixed order
    u = rng.random(12)
    ratio = 1.0 + c.ellipticity_max * u[0]
    angle = math.pi * u[1]
    shift_px = (c.shift_max_px * (2 * u[2] - 1), c.shift_max_px * (2 * u[3] - 1))
    fraction = c.plasmon_fraction[0] + (c.plasmon_fraction[1] - c.plasmon_fraction[0]) * u[4]
    width = c.plasmon_width_px[0] + (c.plasmon_width_px[1] - c.plasmon_width_px[0]) * u[5]
    lf = np.log(c.intensity_factor)
    factor = float(np.exp(lf[0] + (lf[1] - lf[0]) * u[6]))
    dose = None
    if c.dose_e is not None and u[7] < c.noise_probability:
        ld = np.log(c.dose_e)
        dose = float(np.exp(ld[0] + (ld[1] - ld[0]) * u[8]))
    bad = u[9] < c.bad_pixel_probability
    hot_f = c.hot_fraction_max * u[10] if bad else 0.0
    dead_f = c.dead_fraction_max * u[11] if bad else 0.0
    noise_seed, bad_seed = rng.integers(0, 2**63 - 1, size=2)

    if probe is None:
        fraction = 0.0
    else:
        pat = plasmon_background(pat, probe, fraction=fraction, width_px=width)
    D = ellipse_matrix(ratio, angle)
    pat, tgt, pk = affine(pat, tgt, pk, matrix=D, shift_px=shift_px, origin_px=origin_px, order=c.order)
    count_scale = 1.0
    if dose is not None:
        if c.order == 3:
            pat = np.maximum(pat, 0)  # spline ringing
        count_scale = dose / float(pat.sum(dtype=np.float64))
        pat = poisson_noise(pat, dose_e=dose, rng=np.random.default_rng(noise_seed))
    pat = intensity_scale(pat, factor=factor)
    if bad:
        pat, hot_mask, dead_mask = bad_pixels(
            pat, hot_fraction=hot_f, dead_fraction=dead_f, hot_value=c.hot_value, rng=np.random.default_rng(bad_seed)
        )
    else:
        hot_mask, dead_mask = np.zeros(pat.shape, dtype=bool), np.zeros(pat.shape, dtype=bool)
    params = {
        "ratio": float(ratio),
        "angle_rad": float(angle),
        "shift_px": (float(shift_px[0]), float(shift_px[1])),
        "plasmon_fraction": float(fraction),
        "plasmon_width_px": float(width),
        "dose_e": dose,
        "count_scale": float(count_scale),
        "intensity_factor": factor,
        "hot_fraction": float(hot_f),
        "dead_fraction": float(dead_f),
        "hot_mask": hot_mask,
        "dead_mask": dead_mask,
    }
    return pat, tgt, pk, params
