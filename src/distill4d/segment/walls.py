"""Domain walls placed at pixel precision, by lock-in demodulation of the image at each variant's
fringe frequency.

The window read-out places a wall where the variants' window strengths cross between window
centres (``step_px`` apart), from windows of ``window_px``: it follows a curved wall only at that
scale. Here each variant ``v`` with fringe orientation ``θ_v`` (the stripe normal, degrees from the
first image axis towards the second) and period ``p_v`` (px) gets a local fringe energy

    E_v = |G_σ * (I · exp(-2πi k_v·r))|²,  k_v = (cos θ_v, sin θ_v) / p_v,  σ = ``sigma_periods`` · p_v,

the image's Fourier component at ``k_v`` in a Gaussian neighbourhood (a lock-in amplifier, as the
amplitude image of geometric phase analysis). Each energy is divided by its median over the pixels
of its variant further than ``band_px`` from any wall (over the whole series); pixels within
``band_px`` of a wall then take the variant of the largest divided energy, among the variants of
their frame. Background (-1) stays as it is.

Refinement needs fringes that tell the variants apart: for every variant, its energy on its own
pixels must be at least ``min_contrast`` times its energy on the other variants' pixels. Where it is
not (the a/c variants of a nearly square lattice share their fringe frequencies within the
tetragonality), the labels are returned unchanged, and the returned info says why.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._validate import nonnegative_float, positive_float
from ..errors import Distill4dError

__all__ = ["fringe_energy", "refine_walls"]

#: pixels sampled per variant and frame for the medians
_SAMPLE = 20000


def fringe_energy(image: np.ndarray, angle_deg: float, period_px: float, sigma_px: float) -> np.ndarray:
    """``|G_σ * (I · exp(-2πi k·r))|²`` (H, W) float32 of ``image`` (H, W) less its mean, for the fringe
    of ``period_px`` whose normal is at ``angle_deg`` (degrees from the first axis towards the second);
    Gaussian of ``sigma_px`` px, mirrored edges."""
    from scipy.ndimage import gaussian_filter

    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2 or img.size == 0:
        raise Distill4dError(f"image must be a non-empty (H, W) array, got shape {img.shape}")
    period_px = positive_float("period_px", period_px)
    sigma_px = positive_float("sigma_px", sigma_px)
    if not math.isfinite(float(angle_deg)):
        raise Distill4dError(f"angle_deg must be a finite number, got {angle_deg!r}")
    img = img - np.float32(img.mean())
    th = math.radians(angle_deg)
    ky, kx = math.cos(th) / period_px, math.sin(th) / period_px
    py = np.exp(-2j * np.pi * ky * np.arange(img.shape[0])).astype(np.complex64)
    px = np.exp(-2j * np.pi * kx * np.arange(img.shape[1])).astype(np.complex64)
    z = img * py[:, None] * px[None, :]
    re = gaussian_filter(z.real, sigma_px, mode="mirror")
    im = gaussian_filter(z.imag, sigma_px, mode="mirror")
    return re * re + im * im


def _wall_distance(labels: np.ndarray) -> np.ndarray:
    """Distance (px) of every pixel to the nearest pixel edge where the label changes; inf without walls."""
    from scipy.ndimage import distance_transform_edt

    wall = np.zeros(labels.shape, bool)
    d0 = labels[1:, :] != labels[:-1, :]
    d1 = labels[:, 1:] != labels[:, :-1]
    wall[1:, :] |= d0
    wall[:-1, :] |= d0
    wall[:, 1:] |= d1
    wall[:, :-1] |= d1
    if not wall.any():
        return np.full(labels.shape, np.inf)
    return distance_transform_edt(~wall)


def refine_walls(
    images: Any,
    labels: Any,
    angles_deg: Any,
    periods_px: Any,
    *,
    band_px: float,
    sigma_periods: float = 0.8,
    min_contrast: float = 3.0,
    seed: int = 0,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Labels (T, H, W) with the pixels within ``band_px`` of a wall relabelled by fringe energy (see
    the module's text), and ``{"applied": bool, "reason": str, "contrast": [per variant], "changed":
    fraction of pixels relabelled}``. ``images`` (T, H, W) or (H, W) of the labels' shape;
    ``angles_deg``, ``periods_px`` (V,) of the variants 0 .. V-1; ``seed``: the pixel samples of the
    medians."""
    img = np.asarray(images, dtype=np.float32)
    lab = np.asarray(labels)
    if img.ndim == 2:
        img = img[None]
    if lab.ndim == 2:
        lab = lab[None]
    if img.shape != lab.shape:
        raise Distill4dError(f"images and labels must have the same shape, got {img.shape} and {lab.shape}")
    ang = np.asarray(angles_deg, dtype=np.float64).ravel()
    per = np.asarray(periods_px, dtype=np.float64).ravel()
    if ang.shape != per.shape:
        raise Distill4dError(f"angles_deg and periods_px must have one value per variant, got {ang.shape} and {per.shape}")
    band_px = positive_float("band_px", band_px)
    sigma_periods = positive_float("sigma_periods", sigma_periods)
    min_contrast = nonnegative_float("min_contrast", min_contrast)
    v = len(ang)
    out = lab.copy()
    info: dict[str, Any] = {"applied": False, "reason": "", "contrast": [], "changed": 0.0}
    if v < 2:
        info["reason"] = "fewer than two variants"
        return out, info
    if not (np.isfinite(ang).all() and np.isfinite(per).all() and (per >= 2).all()):
        info["reason"] = "a variant without a finite fringe period of at least 2 px"
        return out, info
    if not np.isfinite(img).all():
        raise Distill4dError("images contain NaN or Inf values")

    # energies of pass 1 kept for pass 2 while they fit in 256 MiB (one large frame, short series)
    keep = lab.shape[0] * v * img[0].size * 4 <= 2**28
    cache: dict[int, np.ndarray] = {}

    def energies(t: int) -> np.ndarray:
        if t in cache:
            return cache.pop(t)
        e = np.stack([fringe_energy(img[t], ang[j], per[j], sigma_periods * per[j]) for j in range(v)])
        if keep:
            cache[t] = e
        return e

    # pass 1: each energy's median on its own confident pixels and on the others', over the series
    rng = np.random.default_rng(seed)
    own: list[list[np.ndarray]] = [[] for _ in range(v)]
    other: list[list[np.ndarray]] = [[] for _ in range(v)]
    bands: list[np.ndarray | None] = []  # per frame: the labelled pixels within band_px of a wall (None: no wall)
    for t in range(lab.shape[0]):
        dist = _wall_distance(lab[t])
        if not np.isfinite(dist).any():
            bands.append(None)
            continue
        bands.append((dist <= band_px) & (lab[t] >= 0))
        e = energies(t)
        conf = (dist > band_px) & (lab[t] >= 0)
        for j in range(v):
            for sel, acc in ((conf & (lab[t] == j), own[j]), (conf & (lab[t] != j), other[j])):
                vals = e[j][sel]
                acc.append(vals if len(vals) <= _SAMPLE else rng.choice(vals, _SAMPLE, replace=False))
    if all(b is None for b in bands):
        info["reason"] = "no walls"
        return out, info
    med_own = np.array([np.median(np.concatenate(a)) if sum(map(len, a)) >= 100 else np.nan for a in own])
    med_other = np.array([np.median(np.concatenate(a)) if sum(map(len, a)) >= 100 else np.nan for a in other])
    contrast = med_own / np.maximum(med_other, 1e-30)
    info["contrast"] = [round(float(c), 2) if np.isfinite(c) else None for c in contrast]
    if not np.isfinite(med_own).all() or not (med_own > 0).all():
        info["reason"] = f"a variant with fewer than 100 px further than {band_px:g} px from a wall"
        return out, info
    if (np.isfinite(contrast) & (contrast < min_contrast)).any():
        info["reason"] = f"fringes do not tell the variants apart (contrast {np.nanmin(contrast):.2g} < {min_contrast:g})"
        return out, info
    # pass 2: relabel the band
    changed = 0
    for t, band in enumerate(bands):
        if band is None or not band.any():
            cache.pop(t, None)
            continue
        present = np.unique(lab[t][lab[t] >= 0])
        e = energies(t)[present] / med_own[present, None, None].astype(np.float32)
        new = present[np.argmax(e, axis=0)].astype(out.dtype)
        changed += int(np.sum(new[band] != lab[t][band]))
        out[t][band] = new[band]
    info.update(applied=True, changed=changed / lab.size)
    return out, info
