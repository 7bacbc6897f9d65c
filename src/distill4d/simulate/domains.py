"""Simulated images of ferroelectric domains with ground truth (for the segmentation tests and benchmark).

Each domain variant is a periodic pattern with its own orientation and period: ``"stripes"``
(lower magnification: one cosine, e.g. the contrast of a/c stripes) or ``"lattice"`` (atomic
resolution: a body-centred rectangular lattice with cell a x c, c = a · tetragonality, atoms
elongated along c, so that 90° variants differ by the cell's and the motif's orientation).
Domains are separated by walls along random smooth curves: the level sets of a slowly varying
field (a ramp plus smoothed noise). In a series the walls move: the fraction of variant 0 goes
linearly from ``fraction_range[0]`` to ``fraction_range[1]``. Then blur, a slow intensity
gradient, Poisson noise (``dose`` counts per pixel) and Gaussian read noise.

Reproducible bit for bit for a seed (NumPy's ``default_rng``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from ..errors import Distill4dError
from .._validate import nonnegative_float, positive_float, positive_int

__all__ = ["DOMAIN_KINDS", "DomainSeries", "ninety_degree_rotation_deg", "simulate_domains"]

#: What a variant looks like.
DOMAIN_KINDS = ("stripes", "lattice")


def ninety_degree_rotation_deg(tetragonality: float) -> float:
    """The angle (degrees) between the c axes of the two variants across a 90° wall:
    ``2 atan(c/a)`` (90° plus the lattice rotation of a coherent wall, e.g. 91.1° for c/a = 1.02)."""
    return math.degrees(2 * math.atan(positive_float("tetragonality", tetragonality)))


@dataclasses.dataclass
class DomainSeries:
    """Simulated domain images and their ground truth.

    images : (T, H, W) float32 (counts when ``dose`` is set).
    labels : (T, H, W) int16, the variant of each pixel (0 .. K-1).
    angles_deg : (K,) orientation of each variant (stripe normal or the a axis), degrees from the
        first image axis towards the second, in [0, 180).
    periods_px : (K,) stripe period or lattice constant a (px).
    fractions : (T, K) area fraction of each variant in each frame.
    params : the simulation's parameters.
    """

    images: np.ndarray
    labels: np.ndarray
    angles_deg: np.ndarray
    periods_px: np.ndarray
    fractions: np.ndarray
    params: dict[str, Any]


def _field(shape: tuple[int, int], smooth_px: float, rng: np.random.Generator) -> np.ndarray:
    """A ramp in a random direction plus smoothed noise: its level sets are smooth random curves."""
    from scipy.ndimage import gaussian_filter

    h, w = shape
    y, x = np.mgrid[:h, :w].astype(np.float64)
    phi = rng.uniform(0, 2 * np.pi)
    ramp = ((y - h / 2) * math.cos(phi) + (x - w / 2) * math.sin(phi)) / max(h, w)
    noise = gaussian_filter(rng.standard_normal(shape), smooth_px, mode="wrap")
    noise /= noise.std() + 1e-12
    return ramp * 4 + 0.5 * noise


def _stripes(shape: tuple[int, int], angle_deg: float, period_px: float, phase: float) -> np.ndarray:
    h, w = shape
    y, x = np.mgrid[:h, :w].astype(np.float64)
    t = math.radians(angle_deg)
    return 0.5 + 0.5 * np.cos(2 * np.pi * (y * math.cos(t) + x * math.sin(t)) / period_px + phase)


def _lattice(shape: tuple[int, int], angle_deg: float, a_px: float, tetragonality: float, offset: np.ndarray) -> np.ndarray:
    """Body-centred rectangular lattice (a along ``angle_deg``, c = a·tetragonality across), Gaussian
    atoms (σ 0.12 a along a, 0.18 a along c), the centre atom at 0.5 weight: a Fourier series."""
    h, w = shape
    y, x = np.mgrid[:h, :w].astype(np.float64)
    t = math.radians(angle_deg)
    u = (y * math.cos(t) + x * math.sin(t)) / a_px + offset[0]
    v = (-y * math.sin(t) + x * math.cos(t)) / (a_px * tetragonality) + offset[1]
    out = np.zeros(shape)
    for hh in range(-3, 4):
        for ll in range(-3, 4):
            amp = math.exp(-2 * math.pi**2 * ((0.12 * hh) ** 2 + (0.18 * ll) ** 2))
            amp *= 1 + 0.5 * (-1) ** (hh + ll)
            if amp > 1e-4:
                out += amp * np.cos(2 * np.pi * (hh * u + ll * v))
    out -= out.min()
    return out / out.max()


def simulate_domains(
    shape: tuple[int, int] = (256, 256),
    *,
    n_frames: int = 1,
    kind: str = "stripes",
    angles_deg: Any = (0.0, 90.0),
    periods_px: Any = 8.0,
    tetragonality: float = 1.02,
    fraction_range: tuple[float, float] = (0.5, 0.5),
    wall_smooth_px: float | None = None,
    contrast: float = 1.0,
    dose: float | None = None,
    read_noise: float = 0.0,
    gradient: float = 0.0,
    blur_px: float = 0.0,
    seed: int = 0,
) -> DomainSeries:
    """Domain images (T, H, W) with ground-truth variant labels.

    shape : (H, W) px. n_frames : T. kind : "stripes" or "lattice".
    angles_deg : orientation of each variant (degrees), K = len(angles_deg) >= 1.
    periods_px : stripe period / lattice constant a of each variant (px), one value or K values.
    tetragonality : c/a of the lattice (1.005 to 1.05 for BaTiO3 / PbTiO3).
    fraction_range : fraction of variant 0 in the first and the last frame (the others share the rest).
    wall_smooth_px : smoothing length (px) of the random wall curves (default a quarter of the larger side).
    contrast : modulation of the pattern (0..1) on a flat background of 1 - contrast.
    dose : mean counts per pixel (Poisson noise); None: noiseless.
    read_noise : Gaussian read noise (counts; with no dose, in units of the mean intensity).
    gradient : slow linear intensity gradient (random direction): the intensity goes from
        1 - gradient/2 to 1 + gradient/2 of its mean across the image.
    blur_px : Gaussian blur σ (px) of the noiseless image.
    seed : the random walls, phases and noise.
    """
    from scipy.ndimage import gaussian_filter

    if len(shape) != 2:
        raise Distill4dError(f"shape must be (H, W), got {shape!r}")
    h, w = positive_int("shape[0]", shape[0], minimum=8), positive_int("shape[1]", shape[1], minimum=8)
    n_frames = positive_int("n_frames", n_frames)
    if kind not in DOMAIN_KINDS:
        raise Distill4dError(f"kind must be one of {DOMAIN_KINDS}, got {kind!r}")
    angles = np.atleast_1d(np.asarray(angles_deg, dtype=np.float64))
    k = len(angles)
    if k < 1 or angles.ndim != 1 or not np.all(np.isfinite(angles)):
        raise Distill4dError(f"angles_deg must be one or more finite angles (degrees), got {angles_deg!r}")
    periods = np.broadcast_to(np.asarray(periods_px, dtype=np.float64), (k,)).copy() if np.ndim(periods_px) == 0 \
        else np.asarray(periods_px, dtype=np.float64)
    if periods.shape != (k,) or not np.all(periods >= 2):
        raise Distill4dError(f"periods_px must be one value or {k} values, each >= 2 px, got {periods_px!r}")
    tetragonality = positive_float("tetragonality", tetragonality)
    f0, f1 = (float(v) for v in fraction_range)
    if not (0 <= f0 <= 1 and 0 <= f1 <= 1):
        raise Distill4dError(f"fraction_range must be two fractions in [0, 1], got {fraction_range!r}")
    wall_smooth_px = max(h, w) / 4 if wall_smooth_px is None else positive_float("wall_smooth_px", wall_smooth_px)
    contrast = positive_float("contrast", contrast, maximum=1.0)
    if dose is not None:
        dose = positive_float("dose", dose)
    read_noise = nonnegative_float("read_noise", read_noise)
    gradient = nonnegative_float("gradient", gradient)
    blur_px = nonnegative_float("blur_px", blur_px)
    rng = np.random.default_rng(positive_int("seed", seed, minimum=0))

    field = _field((h, w), wall_smooth_px, rng)
    patterns = []
    for j in range(k):
        if kind == "stripes":
            p = _stripes((h, w), angles[j], periods[j], rng.uniform(0, 2 * np.pi))
        else:
            p = _lattice((h, w), angles[j], periods[j], tetragonality, rng.uniform(0, 1, 2))
        patterns.append((1 - contrast) + contrast * p)
    yy, xx = np.mgrid[:h, :w]
    g_phi = rng.uniform(0, 2 * np.pi)
    proj = yy * math.cos(g_phi) + xx * math.sin(g_phi)
    ramp = 1 + gradient * ((proj - proj.min()) / max(float(np.ptp(proj)), 1e-12) - 0.5)
    flat = np.sort(field.ravel())
    images = np.empty((n_frames, h, w), dtype=np.float32)
    labels = np.empty((n_frames, h, w), dtype=np.int16)
    for t in range(n_frames):
        f = f0 if n_frames == 1 else f0 + (f1 - f0) * t / (n_frames - 1)
        cuts = [f + (1 - f) * i / (k - 1) for i in range(k - 1)] if k > 1 else []
        levels = [np.inf if c >= 1 else flat[int(c * flat.size)] for c in cuts]
        lab = np.searchsorted(np.asarray(levels), field, side="right").astype(np.int16) if levels else \
            np.zeros((h, w), np.int16)
        img = np.choose(lab, patterns)
        if blur_px > 0:
            img = gaussian_filter(img, blur_px, mode="reflect")
        img = img * ramp
        if dose is not None:
            img = rng.poisson(img * dose).astype(np.float64)
            img += rng.normal(0, read_noise, img.shape) if read_noise else 0.0
        elif read_noise:
            img = img + rng.normal(0, read_noise, img.shape)
        images[t], labels[t] = img, lab
    fractions = np.stack([(labels == j).mean(axis=(1, 2)) for j in range(k)], axis=1)
    params = dict(shape=(h, w), n_frames=n_frames, kind=kind, angles_deg=angles.tolist(), periods_px=periods.tolist(),
                  tetragonality=tetragonality, fraction_range=(f0, f1), wall_smooth_px=wall_smooth_px,
                  contrast=contrast, dose=dose, read_noise=read_noise, gradient=gradient, blur_px=blur_px, seed=seed)
    return DomainSeries(images, labels, np.mod(angles, 180.0), periods, fractions, params)
