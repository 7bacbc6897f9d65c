"""Rotation- and mirror-invariant encodings of the Bragg spots of one diffraction pattern.

A pattern is a list of spots ``(qx, qy, intensity)`` with ``qx, qy`` calibrated, in 1/Å,
relative to the direct beam. The encoding:

1. drops the direct beam (``|g| < direct_beam_inv_A``) and spots that are NaN-free but have
   intensity <= 0; intensities are raised to ``intensity_power`` (default 0.5, which tames
   the strong low-order spots) and normalised to sum 1;
2. takes the *scale* ``s`` (1/Å): the shortest ``|g|`` among the spots whose intensity is at
   least ``scale_threshold`` of the strongest. Every other feature is measured in units of
   ``s`` (``u = |g| / s``), so it does not change at all under a calibration error (all
   ``g`` times a constant); the scale itself carries the lattice size;
3. computes, all in reduced units ``u``:

   - ``radial``: intensity-weighted histogram of ``u`` over ``[0, U_MAX)`` with
     ``N_RADIAL`` bins, linear (two-bin) assignment so that it varies smoothly;
   - ``fourier``: for ``N_RINGS`` rings in ``u`` (edges :data:`RING_EDGES`) the magnitudes
     ``|Σ w exp(i m φ)|`` for ``m = 0..M_MAX`` (``m = 0``: the ring's weight), divided by the
     ring's weight for ``m >= 1``. A rotation multiplies each coefficient by a phase and a
     mirror conjugates it, so magnitudes are invariant (the reference EDiffCrystals keeps
     the phases and relies on random training orientations instead);
   - ``pair_distance``: histogram of ``|g_i - g_j| / s`` over ``[0, U_MAX)`` with
     ``N_PAIR`` bins, weights ``w_i w_j`` (normalised to sum 1), over the pairs ``i < j`` of
     the ``N_PAIR_SPOTS`` strongest spots (the cost grows with its square);
   - ``pair_angle``: histogram of the unsigned angle between ``g_i`` and ``g_j``
     (0-180 degrees, ``N_ANGLE`` bins of 5 degrees, linear assignment), same pairs and weights;
   - ``short``: ``|g|_k / s`` of the ``N_SHORT`` shortest strong spots after the first
     (ratios; repeated last value where there are fewer), and ``log(1 + n)`` with ``n`` the
     number of spots kept;
   - ``cell2d``: the 2D cell of the section: with ``g1`` the shortest strong spot and ``g2``
     the shortest strong spot at more than 8 degrees from the line of ``g1``,
     ``|g2| / |g1|`` and the angle between the lines of ``g1`` and ``g2`` (0-90 degrees);
     both 0 where there is no such ``g2``;
   - ``scale``: ``s`` in 1/Å (the last column, :data:`SCALE_INDEX`).

Models that must not depend on the calibration use ``features[:, :SCALE_INDEX]``
(:func:`shape_features`); lattice parameters are regressed as ``a · s`` (dimensionless) and
divided by ``s``, so a calibration error of x % moves them by x %.

:func:`encode_batch` encodes many patterns given as padded arrays ``(P, K)`` with counts
``(P,)`` (the padded form of :class:`distill4d.bragg.BraggPeaks`); it is vectorised over
patterns and spots. :func:`encode_ragged` encodes spot lists stored one after another (a
library), padding only one block of patterns at a time, so its memory follows the block, not
the number of patterns times the longest list. :func:`encode_peaks` encodes every position of a ``BraggPeaks``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from .._ragged import pad_rows, spot_lists
from .._validate import positive_float
from ..errors import Distill4dError

if TYPE_CHECKING:  # pragma: no cover
    from ..bragg.peaks import BraggPeaks

__all__ = [
    "U_MAX",
    "N_RADIAL",
    "RING_EDGES",
    "M_MAX",
    "N_PAIR",
    "N_ANGLE",
    "N_SHORT",
    "N_PAIR_SPOTS",
    "N_FEATURES",
    "SCALE_INDEX",
    "FEATURE_BLOCKS",
    "encode_spots",
    "encode_batch",
    "encode_ragged",
    "encode_peaks",
    "shape_features",
    "scale_inv_A",
]

#: Largest reduced length ``u = |g| / s`` of the radial and pair histograms.
U_MAX = 8.0
#: Bins of the radial histogram of ``u`` (width U_MAX / N_RADIAL = 0.25).
N_RADIAL = 32
#: Ring edges in ``u`` for the angular Fourier magnitudes.
RING_EDGES = (0.5, 1.25, 1.75, 2.5, 3.5, 5.0, 8.0)
#: Highest angular order of the Fourier magnitudes.
M_MAX = 6
#: Bins of the pair-distance histogram (width 0.25 in ``u``).
N_PAIR = 32
#: Bins of the pair-angle histogram (5 degrees each).
N_ANGLE = 36
#: The pair histograms use the strongest this many spots of a pattern (cost ∝ its square).
N_PAIR_SPOTS = 20
#: Number of shortest-spot ratios.
N_SHORT = 4

_N_RINGS = len(RING_EDGES) - 1
#: Ring of ``u`` by ``int(4 u)`` (every edge is a multiple of 1/4, so this equals the search
#: of :data:`RING_EDGES`, and is cheaper): ``_N_RINGS`` outside the rings.
_RING_OF_QUARTER = np.full(int(4 * U_MAX) + 2, _N_RINGS, dtype=np.int64)
for _r, (_lo, _hi) in enumerate(zip(RING_EDGES[:-1], RING_EDGES[1:])):
    _RING_OF_QUARTER[int(4 * _lo) : int(4 * _hi)] = _r
#: Name -> slice of every feature block.
FEATURE_BLOCKS: dict[str, slice] = {}
_start = 0
for _name, _n in (
    ("radial", N_RADIAL),
    ("fourier", _N_RINGS * (M_MAX + 1)),
    ("pair_distance", N_PAIR),
    ("pair_angle", N_ANGLE),
    ("short", N_SHORT + 1),
    ("cell2d", 2),
    ("scale", 1),
):
    FEATURE_BLOCKS[_name] = slice(_start, _start + _n)
    _start += _n
#: Length of a feature vector.
N_FEATURES = _start
#: Index of the scale ``s`` (1/Å): the last feature.
SCALE_INDEX = N_FEATURES - 1
del _start, _name, _n


def shape_features(features: Any) -> np.ndarray:
    """The calibration-free part of feature vectors ``(..., N_FEATURES)``: all but the scale."""
    return np.asarray(features)[..., :SCALE_INDEX]


def scale_inv_A(features: Any) -> np.ndarray:
    """The scale ``s`` (1/Å) of feature vectors ``(..., N_FEATURES)``."""
    return np.asarray(features)[..., SCALE_INDEX]


def _hist(values: np.ndarray, weights: np.ndarray, rows: np.ndarray, n_rows: int, n_bins: int,
          upper: float) -> np.ndarray:
    """Weighted histograms of ``values`` (flat) into ``n_bins`` bins over ``[0, upper)``, one per
    row, each value shared linearly between the two nearest bin centres (out-of-range parts dropped)."""
    x = np.clip(values * (n_bins / upper) - 0.5, -1.0, n_bins)
    i0 = np.floor(x)
    f = x - i0
    idx = rows * (n_bins + 2) + (i0.astype(np.int64) + 1)
    size = n_rows * (n_bins + 2)
    wf = weights * f
    out = np.bincount(idx, weights=weights - wf, minlength=size)
    out += np.bincount(idx + 1, weights=wf, minlength=size + 1)[:size]
    return out.reshape(n_rows, n_bins + 2)[:, 1 : n_bins + 1]


def _options(direct_beam_inv_A: float, intensity_power: float, scale_threshold: float) -> tuple[float, float, float]:
    """The encodings' options, checked: (direct beam radius 1/Å, intensity power, scale threshold)."""
    return (positive_float("direct_beam_inv_A", direct_beam_inv_A),
            positive_float("intensity_power", intensity_power, maximum=4.0),
            positive_float("scale_threshold", scale_threshold, maximum=1.0))


def encode_batch(
    qx_inv_A: Any,
    qy_inv_A: Any,
    intensity: Any,
    counts: Any,
    *,
    direct_beam_inv_A: float = 0.05,
    intensity_power: float = 0.5,
    scale_threshold: float = 0.05,
    chunk: int = 1024,
) -> np.ndarray:
    """Features ``(P, N_FEATURES)`` (float64) of ``P`` patterns given as padded arrays.

    Raises :class:`Distill4dError` for arrays of the wrong shape, NaN or Inf among the used
    entries, or a pattern with no spot left after dropping the direct beam.

    Parameters
    ----------
    qx_inv_A, qy_inv_A : ``(P, K)`` spot positions in 1/Å relative to the direct beam; only
        the first ``counts[p]`` entries of row ``p`` are read (the rest may be NaN).
    intensity : ``(P, K)`` spot intensities (any positive unit).
    counts : ``(P,)`` number of spots of each pattern.
    direct_beam_inv_A : spots with ``|g|`` below this (1/Å) are the direct beam and dropped.
    intensity_power : intensities are raised to this power before normalisation.
    scale_threshold : the scale ``s`` is the shortest ``|g|`` among spots at least this
        fraction of the strongest (after ``intensity_power``).
    chunk : patterns per vectorised block (bounds memory: ``chunk · K²`` pairs).
    """
    qx = np.asarray(qx_inv_A, dtype=np.float64)
    qy = np.asarray(qy_inv_A, dtype=np.float64)
    it = np.asarray(intensity, dtype=np.float64)
    n = np.asarray(counts)
    if qx.ndim != 2 or qy.shape != qx.shape or it.shape != qx.shape:
        raise Distill4dError(
            f"qx_inv_A, qy_inv_A and intensity must be padded arrays of one shape (P, K), got "
            f"{qx.shape}, {qy.shape}, {it.shape}"
        )
    if n.shape != qx.shape[:1] or n.dtype.kind not in "iu" or np.any(n < 0) or np.any(n > qx.shape[1]):
        raise Distill4dError(f"counts must be ({qx.shape[0]},) integers in 0..{qx.shape[1]}, got shape {n.shape}")
    beam, power, thresh = _options(direct_beam_inv_A, intensity_power, scale_threshold)
    chunk = max(1, int(chunk))
    used = np.arange(qx.shape[1]) < n[:, None]
    if not (np.all(np.isfinite(qx[used])) and np.all(np.isfinite(qy[used])) and np.all(np.isfinite(it[used]))):
        bad = int(np.flatnonzero(~np.all(np.isfinite(qx) & np.isfinite(qy) & np.isfinite(it) | ~used, axis=1))[0])
        raise Distill4dError(f"spots of pattern {bad} contain NaN or Inf values (qx, qy or intensity)")
    out = np.empty((qx.shape[0], N_FEATURES))
    order = np.argsort(n, kind="stable")  # blocks of similar length, each trimmed to its longest list
    for s in range(0, qx.shape[0], chunk):
        rows = order[s : s + chunk]
        K = max(1, int(n[rows[-1]]))
        out[rows] = _encode_block(qx[rows, :K], qy[rows, :K], it[rows, :K], used[rows, :K], beam, power, thresh,
                                  rows)
    return out


def encode_ragged(
    qx_inv_A: Any,
    qy_inv_A: Any,
    intensity: Any,
    counts: Any,
    *,
    direct_beam_inv_A: float = 0.05,
    intensity_power: float = 0.5,
    scale_threshold: float = 0.05,
    chunk: int = 1024,
    max_block_entries: int = 2**18,
    metric: bool = False,
) -> np.ndarray:
    """Features ``(P, N_FEATURES)`` (float64) of ``P`` spot lists stored one after another.

    The same features as :func:`encode_batch` (equal to rounding: the pair histograms add the
    same terms, possibly in another order). Raises :class:`Distill4dError` for arrays of the
    wrong shape, NaN or Inf values, or a pattern with no spot left after dropping the direct beam.

    Parameters
    ----------
    qx_inv_A, qy_inv_A, intensity : ``(N,)`` the spots of all patterns, pattern ``p``'s
        after those of patterns ``0..p-1``: positions in 1/Å relative to the direct beam, and
        intensities (any positive unit).
    counts : ``(P,)`` number of spots of each pattern (summing to ``N``).
    direct_beam_inv_A, intensity_power, scale_threshold : as in :func:`encode_batch`.
    chunk : most patterns per block.
    max_block_entries : a block holds at most this many padded spot entries (patterns times its
        longest list; a single longer pattern makes a block of its own): bounds the memory.
    metric : also the metric features of :func:`distill4d.identify.metric.metric_features`
        (2D lattice and quadratic-form fits), appended: ``(P, N_FEATURES + N_METRIC)``. About
        100 patterns/s (a loop over patterns), so off by default; the shipped model does not use them.
    """
    qx, qy, it, n, offsets = spot_lists(qx_inv_A, qy_inv_A, intensity, counts)
    beam, power, thresh = _options(direct_beam_inv_A, intensity_power, scale_threshold)
    chunk = max(1, int(chunk))
    budget = max(1, int(max_block_entries))
    P = n.size
    out = np.empty((P, N_FEATURES))
    order = np.argsort(n, kind="stable")  # blocks of similar length: little padding
    s = 0
    while s < P:
        e = min(s + chunk, P)
        K = max(1, int(n[order[e - 1]]))
        while (e - s) * K > budget and e - s > 1:
            e = s + max(1, budget // K)
            K = max(1, int(n[order[e - 1]]))
        rows = order[s:e]
        (bx, by, bi), used = pad_rows((qx, qy, it), offsets[rows], n[rows], fill=0.0)
        out[rows] = _encode_block(bx, by, bi, used, beam, power, thresh, rows)
        s = e
    if metric:
        from .metric import metric_features

        out = np.concatenate([out, metric_features(qx, qy, it, n, direct_beam_inv_A=beam, intensity_power=power)],
                             axis=1)
    return out


def kept_spots(qx: np.ndarray, qy: np.ndarray, it: np.ndarray, used: np.ndarray, beam: float, power: float,
               thresh: float) -> tuple[np.ndarray, ...]:
    """The spots of padded ``(P, K)`` lists that the encodings keep, and each pattern's scale.

    Returns ``qx``, ``qy`` (0 where unused), ``g = |q|`` (1/Å), ``keep`` (used, ``|g|`` at least
    ``beam`` 1/Å, intensity > 0), ``w`` (``intensity ** power`` of the kept spots, summing to 1
    per pattern; 0 elsewhere), ``strong`` (the kept spots of weight at least ``thresh`` times the
    strongest) and ``scale`` (P,): the shortest ``|g|`` among them (1/Å; inf for a pattern with
    no spot kept)."""
    qx = np.where(used, qx, 0.0)
    qy = np.where(used, qy, 0.0)
    g = np.sqrt(qx * qx + qy * qy)
    keep = used & (g >= beam) & (np.where(used, it, 0.0) > 0)
    w = np.where(keep, np.where(keep, it, 1.0) ** power, 0.0)
    total = w.sum(axis=1, keepdims=True)
    w /= np.where(total > 0, total, 1.0)
    wmax = w.max(axis=1, keepdims=True) if w.shape[1] else np.zeros((w.shape[0], 1))
    strong = keep & (w >= thresh * wmax)
    scale = np.where(strong, g, np.inf).min(axis=1) if w.shape[1] else np.full(w.shape[0], np.inf)
    return qx, qy, g, keep, w, strong, scale


def _encode_block(qx: np.ndarray, qy: np.ndarray, it: np.ndarray, used: np.ndarray, beam: float, power: float,
                  thresh: float, rows: np.ndarray) -> np.ndarray:
    """Features of padded ``(P, K)`` lists, the patterns ``rows`` (named in errors) of the input.

    The callers make blocks of similar lengths, a block at a time: temporaries of the whole
    input would cost more in fresh memory pages than the arithmetic."""
    P, K = qx.shape
    qx, qy, g, keep, w, strong, scale = kept_spots(qx, qy, it, used, beam, power, thresh)
    n_kept = keep.sum(axis=1)
    if np.any(n_kept == 0):
        bad = int(rows[np.flatnonzero(n_kept == 0)].min())
        raise Distill4dError(
            f"pattern {bad} has no spot left after dropping the direct beam (|g| < beam cut) and "
            f"spots of intensity <= 0; it cannot be encoded"
        )
    u = g / scale[:, None]
    feats = []
    # radial histogram of u (spots not kept have weight 0)
    feats.append(_hist(u.ravel(), w.ravel(), np.repeat(np.arange(P), K), P, N_RADIAL, U_MAX))
    # angular Fourier magnitudes per ring
    ring = _RING_OF_QUARTER[np.minimum(u * 4.0, 4 * U_MAX + 1).astype(np.int64)].ravel()  # u >= 0
    sel = np.flatnonzero(keep.ravel() & (ring < _N_RINGS))  # only the kept spots in a ring
    R, M1 = _N_RINGS, M_MAX + 1
    key = (sel // K) * R + ring[sel]
    ws, gsel = w.ravel()[sel], g.ravel()[sel]
    zr, zi = qx.ravel()[sel] / gsel, qy.ravel()[sel] / gsel  # z = exp(i phi)
    coef = np.empty((P * R, M1))
    coef[:, 0] = np.bincount(key, weights=ws, minlength=P * R)
    wr, wi = ws * zr, ws * zi  # w z^m, by repeated products, one order m at a time
    a, b = np.empty_like(wr), np.empty_like(wr)  # buffers: no new arrays in the loop
    for m in range(1, M1):
        if m > 1:
            np.multiply(wr, zi, out=a)
            np.multiply(wi, zi, out=b)
            np.multiply(wr, zr, out=wr)
            np.subtract(wr, b, out=wr)  # Re w z^m = Re w z^(m-1) zr - Im w z^(m-1) zi
            np.multiply(wi, zr, out=wi)
            np.add(wi, a, out=wi)  # Im w z^m = Re w z^(m-1) zi + Im w z^(m-1) zr
        coef[:, m] = np.hypot(np.bincount(key, weights=wr, minlength=P * R),
                              np.bincount(key, weights=wi, minlength=P * R))
    coef = coef.reshape(P, R, M1)  # (P, R, M+1)
    ring_w = coef[:, :, :1]
    coef[:, :, 1:] = np.divide(coef[:, :, 1:], ring_w, out=np.zeros_like(coef[:, :, 1:]), where=ring_w > 0)
    feats.append(coef.reshape(P, -1))
    # pair distances and angles over i < j, among the N_PAIR_SPOTS strongest spots
    L = min(K, N_PAIR_SPOTS)
    if K > L:
        top = np.argpartition(w, K - L, axis=1)[:, K - L :]  # the L largest weights
    else:
        top = np.broadcast_to(np.arange(K), (P, K))
    wt = np.take_along_axis(w, top, axis=1).astype(np.float32)
    xt = np.take_along_axis(qx, top, axis=1).astype(np.float32)
    yt = np.take_along_axis(qy, top, axis=1).astype(np.float32)
    iu, ju = np.triu_indices(L, 1)
    pw = (wt[:, iu] * wt[:, ju]).ravel()
    prow = np.repeat(np.arange(P), iu.size)
    xi, xj, yi, yj = xt[:, iu], xt[:, ju], yt[:, iu], yt[:, ju]
    d = (np.hypot(xi - xj, yi - yj) / scale[:, None].astype(np.float32)).ravel()
    total = pw.reshape(P, -1).sum(axis=1, dtype=np.float64) if iu.size else np.zeros(P)
    norm = np.where(total > 0, total, 1.0)[:, None]
    feats.append(_hist(d, pw, prow, P, N_PAIR, U_MAX) / norm)
    # atan2(|cross|, dot): accurate near 0 and 180 degrees, where arccos of a float32 cosine is not
    ang = np.degrees(np.arctan2(np.abs(xi * yj - yi * xj), xi * xj + yi * yj)).ravel()
    feats.append(_hist(ang, pw, prow, P, N_ANGLE, 180.0) / norm)
    # shortest strong spots after the first, as ratios, and the spot count
    us = np.where(strong, u, np.inf)
    if K > N_SHORT + 1:  # only the N_SHORT + 1 smallest matter: a partition, then a sort of those
        us = np.partition(us, N_SHORT, axis=1)[:, : N_SHORT + 1]
    gs = np.sort(us, axis=1)[:, 1 : N_SHORT + 1]
    if gs.shape[1] < N_SHORT:
        gs = np.concatenate([gs, np.full((P, N_SHORT - gs.shape[1]), np.inf)], axis=1)
    gs = np.maximum.accumulate(np.where(np.isfinite(gs), gs, -np.inf), axis=1)  # repeat the last value
    gs = np.where(np.isfinite(gs), gs, 1.0)
    feats.append(np.concatenate([gs, np.log1p(n_kept)[:, None]], axis=1))
    # the 2D cell of the section: g1 the shortest strong spot, g2 the shortest strong one off its line
    i1 = np.argmin(np.where(strong, g, np.inf), axis=1)
    x1 = np.take_along_axis(qx, i1[:, None], axis=1)
    y1 = np.take_along_axis(qy, i1[:, None], axis=1)
    c = np.abs(qx * x1 + qy * y1) / (np.where(keep, g, 1.0) * scale[:, None])
    off = strong & (c < math.cos(math.radians(8.0)))
    g2 = np.where(off, u, np.inf).min(axis=1)
    c2 = np.take_along_axis(c, np.argmin(np.where(off, u, np.inf), axis=1)[:, None], axis=1)[:, 0]
    has = np.isfinite(g2)
    feats.append(np.stack([np.where(has, g2, 0.0), np.where(has, np.degrees(np.arccos(np.clip(c2, 0, 1))), 0.0)], axis=1))
    feats.append(scale[:, None])
    return np.concatenate(feats, axis=1)


def encode_spots(qx_inv_A: Any, qy_inv_A: Any, intensity: Any, **kwargs: Any) -> np.ndarray:
    """Features ``(N_FEATURES,)`` of one pattern: spots ``qx_inv_A, qy_inv_A`` (1/Å, relative
    to the direct beam) with ``intensity``; keywords as in :func:`encode_batch`."""
    arrs = [np.asarray(a, dtype=np.float64) for a in (qx_inv_A, qy_inv_A, intensity)]
    if any(a.ndim != 1 for a in arrs) or len({a.size for a in arrs}) != 1:
        raise Distill4dError(
            f"qx_inv_A, qy_inv_A and intensity must be 1D arrays of one length, got shapes "
            f"{[a.shape for a in arrs]}"
        )
    if arrs[0].size == 0:
        raise Distill4dError("the pattern has no spots; it cannot be encoded")
    return encode_batch(*(a[None] for a in arrs), np.array([arrs[0].size]), **kwargs)[0]


def encode_peaks(peaks: "BraggPeaks", **kwargs: Any) -> np.ndarray:
    """Features ``(Rx, Ry, N_FEATURES)`` of every position of a :class:`~distill4d.bragg.BraggPeaks`.

    Needs the calibration's ``q_pixel_inv_A`` (1/Å per pixel) and ``origin_px`` (the direct
    beam, pixels); peaks are converted with ``g = (q - origin) · q_pixel_inv_A``.
    """
    cal = peaks.calibration
    pix = cal.require("q_pixel_inv_A")
    origin = cal.require("origin_px")
    qx, qy, it, count = peaks.to_padded()
    P = len(peaks)
    out = encode_batch(
        ((qx - origin[0]) * pix).reshape(P, -1),
        ((qy - origin[1]) * pix).reshape(P, -1),
        it.reshape(P, -1),
        count.reshape(P),
        **kwargs,
    )
    return out.reshape(peaks.scan_shape + (N_FEATURES,))
