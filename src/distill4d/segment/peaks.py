"""The ``peaks`` method: non-negative unmixing of the windows' spectra at the peaks of the mean spectrum.

The features are the linear RMS |FFT| of the tapered windows (``window_features(scale="linear")``,
not log-compressed or clipped). The mean spectrum over the series, less its radial median (the
background of noise and slow gradients), has local maxima at the variants' stripe or lattice
frequencies; the ``max_peaks`` highest (half plane) and their neighbourhoods (``2 halfwidth + 1``
bins square) are the only bins used. Each window's spectrum there, less the background, is
factorised by NMF into K non-negative components (the variants' spectra) and activations. In
amplitude, not in log, a window cut by a domain wall holds each variant roughly in proportion to
its area, so the wall lies where the activations cross and not on the window grid; and variants
whose peaks fall into the same bins (a/c twins: the same rows, a few per cent and ~2 degrees
apart) still differ in how the bins share each peak.

The number of variants, when not given, is the K in 2 .. ``max_variants`` at which adding a
component lowers the relative residual most (the smallest err(K) / err(K - 1)); 1 when even that
ratio is above ``single_ratio``. Each variant's activation is divided by its 90th percentile over
the windows, interpolated to pixels, and a pixel takes the strongest variant (-1 where none
reaches ``min_strength``).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from .._validate import nonnegative_float, positive_float, positive_int
from ..errors import Distill4dError
from .windows import WindowFeatures

__all__ = ["peak_bins", "peak_unmixing", "read_out_peaks"]


def _radial_background(mean: np.ndarray, centre: float) -> tuple[np.ndarray, np.ndarray]:
    """The median of ``mean`` (F, F) on rings of 1 px about ``centre``, as an image, and the radius image."""
    from scipy import ndimage

    f = mean.shape[0]
    yy, xx = np.mgrid[:f, :f] - centre
    r = np.hypot(yy, xx)
    ring = np.rint(r).astype(int)
    med = ndimage.median(mean, ring, index=np.arange(ring.max() + 1))
    return np.asarray(med)[ring], r


def peak_bins(features: WindowFeatures, *, max_peaks: int = 12, halfwidth: int = 2, min_radius_px: float = 2.0,
              min_sigma: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
    """``(mask, background)``: the bins (F, F) bool within ``halfwidth`` of the ``max_peaks`` highest
    local maxima (5 x 5) of the mean spectrum above its radial median, at least ``min_radius_px``
    from the zero frequency, in the half plane, and at least ``min_sigma`` robust standard
    deviations of the mean spectrum about that median (noise makes none); and that median (F, F)."""
    from scipy import ndimage

    if features.scale != "linear":
        raise Distill4dError("the peaks method needs linear features: window_features(..., scale='linear')")
    max_peaks = positive_int("max_peaks", max_peaks)
    halfwidth = positive_int("halfwidth", halfwidth, minimum=0)
    min_radius_px = nonnegative_float("min_radius_px", min_radius_px)
    min_sigma = nonnegative_float("min_sigma", min_sigma)
    f = features.feature_px
    c = features.zero_frequency_px
    mean = features.flat().mean(axis=0).astype(np.float64)
    bg, r = _radial_background(mean, c)
    excess = np.where(r >= min_radius_px, mean - bg, 0.0)
    sigma = 1.4826 * float(np.median(np.abs(excess[r >= min_radius_px])))
    yy, xx = np.mgrid[:f, :f] - c
    half = (yy > 0) | ((np.abs(yy) < 0.5) & (xx > 0))
    top = (excess == ndimage.maximum_filter(excess, 5)) & (excess > max(min_sigma * sigma, 0.0)) & half
    cand = np.argwhere(top)
    cand = cand[np.argsort(-excess[cand[:, 0], cand[:, 1]], kind="stable")[:max_peaks]]
    mask = np.zeros((f, f), bool)
    for i, j in cand:
        mask[max(i - halfwidth, 0) : i + halfwidth + 1, max(j - halfwidth, 0) : j + halfwidth + 1] = True
    return mask, bg


def _nmf(x: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    from sklearn.decomposition import NMF
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m = NMF(n_components=k, init="nndsvda", random_state=seed, max_iter=500)
        w = m.fit_transform(x)
    return w, m.components_, float(m.reconstruction_err_)


def peak_unmixing(features: WindowFeatures, n_variants: int | None = None, *, max_variants: int = 6,
                  single_ratio: float = 0.7, seed: int = 0, **bins: Any) -> dict[str, Any]:
    """Activations (T, ny, nx, V) >= 0 and component spectra (V, F, F) of linear ``features``
    (see the module), with the peak bins and, when ``n_variants`` is None, the relative residual
    of each K tried (``errors``, from K = 1)."""
    max_variants = positive_int("max_variants", max_variants)
    single_ratio = positive_float("single_ratio", single_ratio, maximum=1.0)
    mask, bg = peak_bins(features, **bins)
    t, ny, nx, f, _ = features.features.shape
    n = t * ny * nx
    x = np.maximum(features.flat()[:, mask] - bg[mask].astype(np.float32), 0)
    norm = float(np.linalg.norm(x))
    if not mask.any() or norm == 0 or float(features.features.max()) < 1e-3:  # (units of the series' std)
        raise Distill4dError("the images show no periodic contrast (no peak in the mean window spectrum above its noise)")
    if n_variants is not None:
        k = positive_int("n_variants", n_variants)
        if n <= k:
            raise Distill4dError(f"peaks needs more windows than variants ({k}), got {n} windows; use a smaller step_px")
        w, h, _ = _nmf(x, k, seed)
        errors: list[float] = []
    else:
        if n < 2:
            raise Distill4dError(f"peaks needs at least 2 windows to count the variants, got {n}; use a smaller step_px")
        fits = [_nmf(x, k, seed) for k in range(1, min(max_variants, n - 1) + 1)]
        errors = [e / norm for _, _, e in fits]
        ratios = np.array(errors[1:]) / np.maximum(np.array(errors[:-1]), 1e-12)
        k = 1 if not len(ratios) or ratios.min() > single_ratio else int(np.argmin(ratios)) + 2
        w, h, _ = fits[k - 1]
    spectra = np.zeros((k, f, f), np.float32)
    spectra[:, mask] = h
    return {"activations": w.reshape(t, ny, nx, k).astype(np.float32), "spectra": spectra, "mask": mask,
            "background": bg, "errors": errors}


def read_out_peaks(strength: np.ndarray, features: WindowFeatures, angles_deg: np.ndarray, periods_px: np.ndarray, *,
                   min_strength: float = 0.2, image_hw: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """The amplitude read-out of window strengths (T, ny, nx, V) >= 0: each variant divided by its
    90th percentile over the windows (the ``thresholds``), interpolated to pixels, the strongest
    taken; -1 where none reaches ``min_strength``. Variants are numbered by increasing orientation
    (``angles_deg``; ``periods_px`` ride along). Same keys as :func:`distill4d.segment.core.read_out`
    plus ``strength``, the divided strengths."""
    from .readout import area_fractions, upsample_strength

    min_strength = nonnegative_float("min_strength", min_strength)
    t, ny, nx, v = strength.shape
    order = np.argsort(angles_deg, kind="stable")
    st = strength[..., order]
    level = np.percentile(st.reshape(-1, v), 90, axis=0) if v else np.zeros(0)
    level = np.where(level > 0, level, 1.0)
    st = st / level.astype(np.float32)

    def labels_of(s: np.ndarray) -> np.ndarray:
        lab = np.argmax(s, axis=-1).astype(np.int16)
        lab[np.max(s, axis=-1) < min_strength] = -1
        return lab

    hw = tuple(image_hw or features.image_shape[1:])
    if v:
        lab_w = labels_of(st)
        labels = np.stack([labels_of(upsample_strength(st[k], features.window_px, features.step_px, hw))
                           for k in range(t)])
    else:
        lab_w = np.full((t, ny, nx), -1, np.int16)
        labels = np.full((t,) + hw, -1, np.int16)
    periods = np.asarray(periods_px, float)[order]
    return {"labels": labels, "labels_windows": lab_w, "fractions": area_fractions(labels, v), "thresholds": level,
            "variant_of_channel": np.arange(v), "variant_angles_deg": np.asarray(angles_deg, float)[order],
            "variant_periods_px": periods, "strength": st}
