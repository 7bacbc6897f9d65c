"""From per-window channels to domain maps: thresholds, masks, labels, fractions and variants.

The channels of a method (the autoencoder's latent, NMF activations, mixture
probabilities, one-hot k-means clusters) are ``(T, ny, nx, C)`` values >= 0 on the window grid.

1. One Otsu threshold per channel over the whole series (:func:`otsu_threshold`), then a
   morphological opening and closing of each frame's mask (:func:`channel_masks`).
2. Each channel's strength is its value over its threshold inside its mask, 0 outside; each
   window's strongest channel "wins" it. Channels are grouped into domain variants by the windows
   they win (:func:`group_spectra`: the correlation of their mean spectra, for a given number of
   variants; :func:`group_channels`: by orientation and period otherwise).
3. A variant's map is the sum of its channels; it gets its own Otsu threshold over the series,
   opening and closing, and strength (one variant is often spread over several channels, whose
   separate masks would leave holes). Each window, and each image pixel (strengths interpolated linearly between the window centres,
   :func:`upsample_strength`), takes its strongest variant; -1 (background or undecided) where
   no strength reaches 1 (no channel above its threshold).
4. Area fraction of every variant in every frame (:func:`area_fractions`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import Distill4dError

__all__ = [
    "adjusted_rand_index",
    "area_fractions",
    "channel_masks",
    "channel_shares",
    "channel_strength",
    "group_channels",
    "group_spectra",
    "label_map",
    "match_labels",
    "mean_iou",
    "otsu_threshold",
    "spectrum_orientation",
    "upsample_strength",
    "variant_strength",
]


def otsu_threshold(values: Any, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` (any shape; NaN ignored): the level maximising the between-class
    variance of a ``bins``-bin histogram (the middle of the gap when empty bins tie). A constant
    input gives its value."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise Distill4dError("values for an Otsu threshold are empty or all NaN")
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return lo
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m = np.cumsum(hist * centres)
    mu0 = m / np.maximum(w0, 1)
    mu1 = (m[-1] - m) / np.maximum(w1, 1)
    between = (w0 * w1 * (mu0 - mu1) ** 2)[:-1]
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))  # a plateau over empty bins: its middle
    return float((edges[best[0] + 1] + edges[best[-1] + 1]) / 2)


def channel_shares(channels: Any) -> np.ndarray:
    """Each window's channels divided by their sum (0 where all are 0), float32, same shape: which
    channel a window belongs to, without its contrast (the autoencoder's channels grow with
    the window's contrast, so one Otsu threshold over the series leaves weak windows undecided)."""
    ch = np.asarray(channels, dtype=np.float32)
    tot = ch.sum(axis=-1, keepdims=True)
    return np.divide(ch, tot, out=np.zeros_like(ch), where=tot > 0)


def channel_masks(channels: np.ndarray, *, open_px: int = 1, close_px: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``(masks, thresholds)``: one Otsu threshold per channel over the whole series (C,) and the masks
    ``channels > threshold`` (T, ny, nx, C) bool, opened then closed in each frame with a square of
    ``2 r + 1`` windows (r = ``open_px``, ``close_px``; 0: none). A channel that is constant over the
    series (never used) has no mask."""
    ch = _check_channels(channels)
    from scipy.ndimage import binary_closing, binary_opening

    t, ny, nx, c = ch.shape
    thresholds = np.array([otsu_threshold(ch[..., j]) for j in range(c)])
    masks = ch > thresholds
    for j in range(c):
        if not masks[..., j].any():
            continue
        for k in range(t):
            m = masks[k, :, :, j]
            if open_px:
                m = binary_opening(m, np.ones((2 * open_px + 1,) * 2, bool), border_value=0)
            if close_px:
                # pad by reflection so that closing does not erode the frame's border
                p = close_px
                mp = np.pad(m, p, mode="reflect")
                m = binary_closing(mp, np.ones((2 * p + 1,) * 2, bool))[p:-p, p:-p]
            masks[k, :, :, j] = m
    return masks, thresholds


def channel_strength(channels: np.ndarray, masks: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Each channel over its threshold inside its mask, 0 outside: (T, ny, nx, C) float32."""
    ch = _check_channels(channels)
    thr = np.where(np.asarray(thresholds) > 0, thresholds, 1.0)
    return np.where(masks, ch / thr, 0.0).astype(np.float32)


def variant_strength(strength: np.ndarray, variant_of_channel: np.ndarray, n_variants: int) -> np.ndarray:
    """The largest strength of each variant's channels: (T, ny, nx, V); channels of variant -1 are left out."""
    out = np.zeros(strength.shape[:-1] + (n_variants,), dtype=np.float32)
    for c, v in enumerate(np.asarray(variant_of_channel)):
        if v >= 0:
            np.maximum(out[..., v], strength[..., c], out=out[..., v])
    return out


def label_map(strength: np.ndarray) -> np.ndarray:
    """The strongest variant (or channel) along the last axis; -1 where no strength reaches 1. int16."""
    lab = np.argmax(strength, axis=-1).astype(np.int16)
    lab[np.max(strength, axis=-1) < 1.0] = -1
    return lab


def _axis_weights(n_grid: int, n_px: int, window_px: int, step_px: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    g = (np.arange(n_px) - (window_px - 1) / 2) / step_px
    g = np.clip(g, 0, n_grid - 1)
    i0 = np.floor(g).astype(np.intp)
    i1 = np.minimum(i0 + 1, n_grid - 1)
    return i0, i1, (g - i0).astype(np.float32)


def upsample_strength(strength: np.ndarray, window_px: int, step_px: int, image_hw: tuple[int, int]) -> np.ndarray:
    """Window-grid values (ny, nx, V) to image pixels (H, W, V), linear between window centres (a
    window's centre is at ``(window_px - 1)/2 + i step_px`` px), constant beyond the outer centres."""
    ny, nx = strength.shape[:2]
    y0, y1, fy = _axis_weights(ny, image_hw[0], window_px, step_px)
    x0, x1, fx = _axis_weights(nx, image_hw[1], window_px, step_px)
    rows = strength[y0] * (1 - fy)[:, None, None] + strength[y1] * fy[:, None, None]
    return rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]


def area_fractions(labels: np.ndarray, n_variants: int) -> np.ndarray:
    """Fraction of each frame's pixels labelled with each variant: (T, V) for labels (T, H, W)
    (background -1 counts in the area, so a row sums to at most 1)."""
    lab = np.asarray(labels)
    lab = lab.reshape(lab.shape[0], -1) if lab.ndim > 1 else lab[None]
    return np.stack([(lab == v).mean(axis=1) for v in range(n_variants)], axis=1) if n_variants else \
        np.zeros((lab.shape[0], 0))


def spectrum_orientation(spectrum: np.ndarray, centre: float | None = None) -> tuple[float, float]:
    """``(angle_deg, radius_px)`` of the strongest peak of a centred spectrum (F, F): the angle from
    the first axis towards the second, in [0, 180) (the orientation of the stripe normal or lattice
    row), and the distance (px) from ``centre`` (the zero frequency; default F/2, see
    :attr:`WindowFeatures.zero_frequency_px`), refined by the centroid of the 5x5 neighbourhood
    weighted by (value - median)⁴."""
    s = np.asarray(spectrum, dtype=np.float64)
    f = s.shape[0]
    c = f // 2 if centre is None else float(centre)
    yy, xx = np.mgrid[:f, :f] - c
    masked = np.where(np.hypot(yy, xx) >= 2, s, -np.inf)  # not the zero frequency's neighbourhood
    i, j = np.unravel_index(int(np.argmax(masked)), s.shape)
    lo_i, lo_j = max(i - 2, 0), max(j - 2, 0)
    patch = np.clip(s[lo_i : i + 3, lo_j : j + 3] - float(np.median(s)), 0, None) ** 4
    py, px = np.mgrid[lo_i : lo_i + patch.shape[0], lo_j : lo_j + patch.shape[1]]
    wsum = patch.sum()
    dy = (float((patch * py).sum() / wsum) if wsum > 0 else float(i)) - c
    dx = (float((patch * px).sum() / wsum) if wsum > 0 else float(j)) - c
    return math.degrees(math.atan2(dx, dy)) % 180.0, math.hypot(dy, dx)


def group_channels(
    angles_deg: Any, radii: Any, *, n_variants: int | None = None, tol_deg: float = 10.0, tol_rel: float = 0.1,
    used: Any = None,
) -> np.ndarray:
    """The variant of each channel (C,) int, -1 for unused channels: channels whose orientations
    (degrees, modulo 180) differ by less than ``tol_deg`` and whose peak radii (periods) by less than
    ``tol_rel`` (relative) are one variant (complete linkage). ``n_variants``: cut the linkage tree
    into that many variants instead (fewer if fewer channels are used). Variants are numbered by
    increasing orientation."""
    from scipy.cluster.hierarchy import fcluster, linkage

    a = np.asarray(angles_deg, dtype=np.float64) % 180
    r = np.asarray(radii, dtype=np.float64)
    use = np.ones(len(a), bool) if used is None else np.asarray(used, bool)
    out = np.full(len(a), -1, dtype=np.int64)
    idx = np.flatnonzero(use)
    if len(idx) == 0:
        return out
    if len(idx) == 1:
        out[idx] = 0
        return out
    da = np.abs(a[idx, None] - a[None, idx]) % 180
    da = np.minimum(da, 180 - da) / tol_deg
    dr = np.abs(np.log(np.maximum(r[idx, None], 1e-9) / np.maximum(r[None, idx], 1e-9))) / math.log1p(tol_rel)
    d = np.maximum(da, dr)
    cond = d[np.triu_indices(len(idx), 1)]
    tree = linkage(cond, method="complete")
    if n_variants is not None:
        groups = fcluster(tree, t=min(int(n_variants), len(idx)), criterion="maxclust")
    else:
        groups = fcluster(tree, t=1.0, criterion="distance")
    # number the variants by the circular mean orientation of their channels
    keys = {}
    for g in np.unique(groups):
        sel = a[idx][groups == g]
        keys[g] = math.degrees(math.atan2(np.sin(np.radians(2 * sel)).mean(), np.cos(np.radians(2 * sel)).mean())) / 2 % 180
    order = {g: n for n, g in enumerate(sorted(keys, key=keys.get))}
    out[idx] = [order[g] for g in groups]
    return out


def group_spectra(spectra: Any, n_variants: int, *, used: Any = None) -> np.ndarray:
    """The variant of each channel (C,) int, -1 for unused channels: the channels' mean window
    spectra (C, F, F) clustered by correlation distance (complete linkage) into ``n_variants``
    groups (fewer if fewer channels are used), numbered in channel order. The spectra are not
    centred on their common mean: with a few channels, one of them mixing two variants, that mean
    made two pure channels of different variants look alike."""
    from scipy.cluster.hierarchy import fcluster, linkage

    sp = np.asarray(spectra, dtype=np.float64)
    use = np.ones(len(sp), bool) if used is None else np.asarray(used, bool)
    out = np.full(len(sp), -1, dtype=np.int64)
    idx = np.flatnonzero(use)
    if len(idx) <= 1 or n_variants <= 1:
        out[idx] = 0
        return out
    x = sp[idx].reshape(len(idx), -1)
    x = x - x.mean(axis=1, keepdims=True)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    d = np.clip(1 - x @ x.T, 0, 2)
    tree = linkage(d[np.triu_indices(len(idx), 1)], method="complete")
    groups = fcluster(tree, t=min(int(n_variants), len(idx)), criterion="maxclust")
    _, first = np.unique(groups, return_index=True)
    order = {g: n for n, g in enumerate(groups[np.sort(first)])}
    out[idx] = [order[g] for g in groups]
    return out


# ---------------------------------------------------------------------- scores against a truth
def match_labels(pred: Any, truth: Any) -> dict[int, int]:
    """The one-to-one matching of predicted labels to true labels (>= 0) with the largest overlap
    (Hungarian algorithm): ``{pred_label: true_label}``; -1 is never matched."""
    from scipy.optimize import linear_sum_assignment

    p, t = np.asarray(pred).ravel(), np.asarray(truth).ravel()
    if p.shape != t.shape:
        raise Distill4dError(f"pred and truth must have the same shape, got {np.shape(pred)} and {np.shape(truth)}")
    pl = np.unique(p[p >= 0])
    tl = np.unique(t[t >= 0])
    if len(pl) == 0 or len(tl) == 0:
        return {}
    conf = np.zeros((len(pl), len(tl)))
    pi = np.searchsorted(pl, p)
    ti = np.searchsorted(tl, t)
    ok = (p >= 0) & (t >= 0)
    np.add.at(conf, (pi[ok], ti[ok]), 1)
    rows, cols = linear_sum_assignment(-conf)
    return {int(pl[r]): int(tl[c]) for r, c in zip(rows, cols)}


def mean_iou(pred: Any, truth: Any, mapping: dict[int, int] | None = None) -> float:
    """Mean over the true labels of intersection over union after :func:`match_labels` (unmatched
    predictions and -1 count as wrong)."""
    p, t = np.asarray(pred).ravel(), np.asarray(truth).ravel()
    mapping = match_labels(p, t) if mapping is None else mapping
    lut = {k: v for k, v in mapping.items()}
    mapped = np.full(p.shape, -2, dtype=np.int64)
    for k, v in lut.items():
        mapped[p == k] = v
    ious = []
    for c in np.unique(t[t >= 0]):
        inter = np.sum((mapped == c) & (t == c))
        union = np.sum((mapped == c) | (t == c))
        ious.append(inter / union if union else 1.0)
    return float(np.mean(ious))


def adjusted_rand_index(pred: Any, truth: Any) -> float:
    """Adjusted Rand index of two labellings (-1 is a label of its own); independent of label names."""
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(np.asarray(truth).ravel(), np.asarray(pred).ravel()))


def _check_channels(channels: Any) -> np.ndarray:
    ch = np.asarray(channels, dtype=np.float32)
    if ch.ndim != 4:
        raise Distill4dError(f"channels must be (T, ny, nx, C), got shape {ch.shape}")
    if not np.all(np.isfinite(ch)):
        raise Distill4dError("channels contain NaN or Inf values")
    return ch
