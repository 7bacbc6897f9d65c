"""Metric indexing of one pattern's spots: its 2D lattice, and how well each crystal system's
quadratic form explains it.

Every reciprocal-lattice vector ``g`` of a crystal has ``Q = |g|²`` given by the crystal's
quadratic form in its indices ``(h, k, l)``: cubic ``(h² + k² + l²) A``; tetragonal
``(h² + k²) A + l² C``; hexagonal and trigonal (hexagonal axes) ``(h² + hk + k²) A + l² C``;
orthorhombic and lower have 3 or more parameters. A pattern whose spots lie on one plane of
the reciprocal lattice (the zero-order Laue zone) shows a 2D lattice: two vectors ``g1, g2``
with the Gram matrix ``G = [[g1·g1, g1·g2], [g1·g2, g2·g2]]`` (1/Å², rotation- and
mirror-invariant). If ``g1, g2`` have indices ``n1, n2``, then ``G = A·M_A + C·M_C`` with the
integer matrices ``M`` of the form's parts (``M_A[i, j] = n_i · n_j`` over ``h, k`` for the
tetragonal ``A``, ...): 3 equations, 1 unknown (cubic) or 2 (tetragonal, hexagonal), so a
single 2D section can test the cubic form (2 degrees of freedom) and the uniaxial ones (1)
but not the orthorhombic one (3 unknowns, none left over).

:func:`fit_lattice2d` fits the 2D lattice of a spot list (the pair of short spots that indexes
the most spots, refined by least squares) and reports the fraction of spots off it (higher-order
Laue zones, or spots of no zone). :func:`fit_forms` fits the cubic, tetragonal and hexagonal
forms to a Gram matrix over all index pairs with ``|h|, |k|, |l| <= MAX_INDEX`` and returns
the best relative residual of each and its parameters (the cubic ``a = 1 / sqrt(A)``, Å).
:func:`metric_features` puts both into rotation-invariant features, one row per pattern.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from .._ragged import spot_lists
from .._validate import positive_float
from ..errors import Distill4dError

__all__ = ["MAX_INDEX", "N_METRIC", "METRIC_NAMES", "fit_lattice2d", "fit_layers", "fit_forms", "metric_features"]

#: Largest |index| of the basis vectors tried by :func:`fit_forms`.
MAX_INDEX = 2
#: Names of the columns of :func:`metric_features`.
METRIC_NAMES = (
    "indexed_fraction", "indexed_weight", "g2_over_g1", "cos12", "area_over_g1sq",
    "cubic_log_residual", "cubic_a_times_g1",
    "tetragonal_log_residual", "tetragonal_log_c_over_a",
    "hexagonal_log_residual", "hexagonal_log_c_over_a",
)
#: Number of metric features.
N_METRIC = len(METRIC_NAMES)

_TABLES: dict[str, Any] = {}


def _tables() -> dict[str, Any]:
    """Integer design matrices ``(pairs, 3, p)`` of each form over all index pairs, and their pseudo-inverses."""
    if _TABLES:
        return _TABLES
    r = np.arange(-MAX_INDEX, MAX_INDEX + 1)
    v = np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    v = v[np.any(v != 0, axis=1)]
    # keep one of +-n1 (G does not change when both vectors flip; a flip of one is covered by n2 -> -n2)
    lead = np.array([row[np.flatnonzero(row)[0]] for row in v])
    v1 = v[lead > 0]
    i, j = np.meshgrid(np.arange(len(v1)), np.arange(len(v)), indexing="ij")
    n1, n2 = v1[i.ravel()].astype(np.float64), v[j.ravel()].astype(np.float64)
    cross = np.cross(n1, n2)
    ok = np.any(cross != 0, axis=1)
    n1, n2 = n1[ok], n2[ok]

    def parts(f: Any) -> np.ndarray:  # (pairs, 3): the entries G11, G22, G12 of one bilinear part
        return np.stack([f(n1, n1), f(n2, n2), f(n1, n2)], axis=1)

    hk = lambda a, b: a[:, 0] * b[:, 0] + a[:, 1] * b[:, 1]  # noqa: E731
    ll = lambda a, b: a[:, 2] * b[:, 2]  # noqa: E731
    hex_ = lambda a, b: a[:, 0] * b[:, 0] + a[:, 1] * b[:, 1] + 0.5 * (a[:, 0] * b[:, 1] + a[:, 1] * b[:, 0])  # noqa: E731
    designs = {
        "cubic": (parts(hk) + parts(ll))[:, :, None],
        "tetragonal": np.stack([parts(hk), parts(ll)], axis=2),
        "hexagonal": np.stack([parts(hex_), parts(ll)], axis=2),
    }
    for name, D in designs.items():
        # drop pairs whose design is rank-deficient (the form cannot be solved from them)
        rank = np.linalg.matrix_rank(D)
        D = D[rank == D.shape[2]]
        _TABLES[name] = (D, np.linalg.pinv(D))
    return _TABLES


def fit_forms(gram: Any, precision: float = 0.01) -> dict[str, tuple[float, np.ndarray]]:
    """Best fit of each form to 2D Gram matrices: ``{name: (residual, params)}`` per pattern.

    ``gram`` (P, 3): ``G11, G22, G12`` (1/Å²). For each form (``cubic``: A; ``tetragonal``
    and ``hexagonal``: A, C; 1/Å²) and every index pair with ``|h|, |k|, |l| <= MAX_INDEX``,
    the least-squares parameters (all must be > 0) and the relative residual
    ``|G - fit| / |G|``; returned: the smallest residual ``(P,)`` and its parameters ``(P, p)``.
    Ties within ``precision`` (relative) go to the largest ``A`` (the fewest, lowest indices).
    """
    G = np.asarray(gram, dtype=np.float64)
    if G.ndim != 2 or G.shape[1] != 3:
        raise Distill4dError(f"gram must have shape (P, 3) (G11, G22, G12), got {G.shape}")
    norm = np.linalg.norm(G, axis=1)
    out = {}
    for name, (D, Dp) in _tables().items():
        res = np.empty(len(G))
        par = np.empty((len(G), D.shape[2]))
        for p in range(len(G)):
            x = Dp @ G[p]  # (pairs, k)
            fit = np.einsum("nij,nj->ni", D, x)
            r = np.linalg.norm(fit - G[p], axis=1) / max(norm[p], 1e-30)
            r = np.where(np.all(x > 0, axis=1), r, np.inf)
            best = r.min()
            if not np.isfinite(best):
                res[p], par[p] = 1.0, np.nan
                continue
            near = np.flatnonzero(r <= best + precision)
            k = near[np.argmax(x[near, 0])]
            res[p], par[p] = r[k], x[k]
        out[name] = (res, par)
    return out


def _spot_positions(qx: Any, qy: Any) -> np.ndarray:
    """``(n, 2)`` spot positions (1/Å) of one pattern; Distill4dError unless qx, qy are finite (n,) arrays."""
    x, y = np.asarray(qx, dtype=np.float64), np.asarray(qy, dtype=np.float64)
    if x.ndim != 1 or y.shape != x.shape:
        raise Distill4dError(f"qx and qy must be flat arrays of one length (1/Å), got shapes {x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise Distill4dError("qx and qy must be finite (spot positions in 1/Å); they hold NaN or Inf")
    return np.stack([x, y], axis=1)


def fit_lattice2d(qx: Any, qy: Any, weight: Any = None, *, tolerance_inv_A: float = 0.012,
                  n_candidates: int = 8, max_spots: int = 60) -> dict[str, Any]:
    """The 2D lattice of one spot list (1/Å, direct beam removed): ``{"basis", "indexed", "gram"}``.

    Candidates: pairs of the ``n_candidates`` shortest spots among the ``max_spots`` strongest
    (by ``weight``, default all equal) that are more than 8 degrees from collinear; each pair is
    reduced (Lagrange-Gauss) and indexes the spots whose distance to the nearest lattice point is
    below ``tolerance_inv_A`` (1/Å); the pair that indexes the most, refined by least squares on
    the spots it indexes and applied again. ``basis`` (2, 2) rows ``g1, g2`` (|g1| <= |g2|),
    ``indexed`` (n,) bool over all spots, ``gram`` (3,) ``G11, G22, G12`` (1/Å²). With fewer than
    two non-collinear spots: basis NaN, nothing indexed.
    """
    q = _spot_positions(qx, qy)
    positive_float("tolerance_inv_A", tolerance_inv_A)
    n = len(q)
    w = np.ones(n) if weight is None else np.asarray(weight, dtype=np.float64)
    if w.shape != (n,) or not np.isfinite(w).all():
        raise Distill4dError(f"weight must be ({n},) finite values like qx, got shape {w.shape}")
    nan = {"basis": np.full((2, 2), np.nan), "indexed": np.zeros(n, bool), "gram": np.full(3, np.nan)}
    if n < 2:
        return nan
    strong = np.argsort(-w, kind="stable")[:max_spots]
    qs = q[strong]
    g = np.hypot(qs[:, 0], qs[:, 1])
    cand = qs[np.argsort(g, kind="stable")[:n_candidates]]
    ii, jj = np.triu_indices(len(cand), 1)
    a, b = cand[ii], cand[jj]
    cross = a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]
    ok = np.abs(cross) > math.sin(math.radians(8.0)) * np.hypot(*a.T) * np.hypot(*b.T)
    if not ok.any():
        return nan
    a, b = a[ok], b[ok]
    for _ in range(8):  # Lagrange-Gauss reduction, vectorised over the pairs
        swap = np.sum(b * b, 1) < np.sum(a * a, 1)
        a, b = np.where(swap[:, None], b, a), np.where(swap[:, None], a, b)
        m = np.round(np.sum(a * b, 1) / np.sum(a * a, 1))
        b = b - m[:, None] * a
    B = np.stack([a, b], axis=1)  # (pairs, 2, 2), rows g1, g2
    inv = np.linalg.inv(np.transpose(B, (0, 2, 1)))  # coefficients c = inv(B^T) q
    c = np.einsum("pij,nj->pni", inv, q)
    d = np.linalg.norm(q[None] - np.einsum("pni,pij->pnj", np.round(c), B), axis=2)
    count = (d < tolerance_inv_A).sum(axis=1)
    area = np.abs(np.linalg.det(B))
    best = np.lexsort((area, -count))[0]
    basis = B[best]
    hit = d[best] < tolerance_inv_A
    for _ in range(2):
        idx = np.round(np.linalg.solve(basis.T, q.T).T)
        if hit.sum() >= 3 and np.linalg.matrix_rank(idx[hit]) == 2:
            basis = np.linalg.lstsq(idx[hit], q[hit], rcond=None)[0]
        idx = np.round(np.linalg.solve(basis.T, q.T).T)
        hit = np.linalg.norm(q - idx @ basis, axis=1) < tolerance_inv_A
    g1, g2 = basis
    if g2 @ g2 < g1 @ g1:
        g1, g2 = g2, g1
    return {"basis": np.stack([g1, g2]), "indexed": hit, "gram": np.array([g1 @ g1, g2 @ g2, g1 @ g2])}


def pattern_lattices(qx_inv_A: Any, qy_inv_A: Any, intensity: Any, counts: Any, *, direct_beam_inv_A: float = 0.05,
                     intensity_power: float = 0.5) -> tuple[int, Iterator[tuple[Any, ...]]]:
    """``(P, fits)``: the number of patterns of spot lists stored one after another (checked here), and
    an iterator over ``(p, qx, qy, i, w, fit)`` per pattern: its spots (1/Å) beyond ``direct_beam_inv_A``
    with a positive intensity, their intensities, their weights ``intensity ** intensity_power`` and
    :func:`fit_lattice2d` of them."""
    qx, qy, it, n, off = spot_lists(qx_inv_A, qy_inv_A, intensity, counts)
    direct_beam_inv_A = positive_float("direct_beam_inv_A", direct_beam_inv_A)
    intensity_power = positive_float("intensity_power", intensity_power, maximum=4.0)

    def fits() -> Iterator[tuple[Any, ...]]:
        for p in range(len(n)):
            sl = slice(off[p], off[p + 1])
            x, y, i = qx[sl], qy[sl], it[sl]
            keep = (np.hypot(x, y) >= direct_beam_inv_A) & (i > 0)
            x, y, i = x[keep], y[keep], i[keep]
            w = i**intensity_power
            yield p, x, y, i, w, fit_lattice2d(x, y, w)

    return len(n), fits()


def metric_features(qx_inv_A: Any, qy_inv_A: Any, intensity: Any, counts: Any, *,
                    direct_beam_inv_A: float = 0.05, intensity_power: float = 0.5, return_gram: bool = False) -> Any:
    """Rotation-invariant metric features ``(P, N_METRIC)`` of spot lists stored one after another.

    Columns :data:`METRIC_NAMES`: the fraction of spots (and of weight ``intensity **
    intensity_power``) that the 2D lattice of :func:`fit_lattice2d` indexes; its reduced cell
    ``|g2| / |g1|``, ``|cos|`` of their angle and area over ``|g1|²``; per form of
    :func:`fit_forms` ``log10`` of the relative residual, and the parameters as ratios
    (``a · |g1|`` for the cubic, ``log10(C / A)`` for the uniaxial forms): all free of the
    calibration. A pattern with no 2D lattice gets zeros and residuals of 1.
    """
    n_patterns, fits = pattern_lattices(qx_inv_A, qy_inv_A, intensity, counts, direct_beam_inv_A=direct_beam_inv_A,
                                        intensity_power=intensity_power)
    out = np.zeros((n_patterns, N_METRIC))
    grams = np.full((n_patterns, 3), np.nan)
    for p, x, y, _, w, fit in fits:
        if not np.isfinite(fit["gram"]).all():
            continue
        hit = fit["indexed"]
        G = fit["gram"]
        out[p, 0] = hit.mean()
        out[p, 1] = w[hit].sum() / w.sum()
        out[p, 2] = math.sqrt(G[1] / G[0])
        out[p, 3] = abs(G[2]) / math.sqrt(G[0] * G[1])
        out[p, 4] = math.sqrt(max(G[0] * G[1] - G[2] ** 2, 0.0)) / G[0]
        grams[p] = G
    ok = np.isfinite(grams).all(axis=1)
    forms = fit_forms(grams[ok])
    g1 = np.sqrt(grams[ok, 0])
    cols = {"cubic": (5, lambda par: g1 / np.sqrt(par[:, 0])),
            "tetragonal": (7, lambda par: np.log10(par[:, 1] / par[:, 0])),
            "hexagonal": (9, lambda par: np.log10(par[:, 1] / par[:, 0]))}
    for name, (col, ratio) in cols.items():
        res, par = forms[name]
        out[ok, col] = np.log10(np.maximum(res, 1e-6))
        out[ok, col + 1] = np.nan_to_num(ratio(par))
    out[~ok, 5] = out[~ok, 7] = out[~ok, 9] = 0.0
    return (out, grams) if return_gram else out


def fit_layers(qx: Any, qy: Any, basis: Any, *, tolerance_inv_A: float = 0.015, max_layer: int = 4,
               n_candidates: int = 24) -> dict[str, Any]:
    """The spots of one list (1/Å) on the 2D lattice ``basis`` (2, 2) or on one of its layers.

    A projection of a 3D lattice onto the detector plane is a 2D lattice (the projection of one
    lattice plane) plus its copies shifted by ``k · t``, ``t`` the projection of a third basis
    vector (Laue layers ``k``). The offset ``t`` (1/Å) is taken among the spots off the lattice
    (the ``n_candidates`` shortest): the one whose multiples ``k · t``, ``0 < |k| <= max_layer``,
    put the most spots within ``tolerance_inv_A`` of a shifted lattice point. Returns ``{"t",
    "layer"}``: ``t`` (2,) (NaN when no spot is off the lattice) and ``layer`` (n,) the layer of
    each spot (0: on the lattice; ``max_layer + 1``: on none).
    """
    q = _spot_positions(qx, qy)
    positive_float("tolerance_inv_A", tolerance_inv_A)
    B = np.asarray(basis, dtype=np.float64)
    if B.shape != (2, 2):
        raise Distill4dError(f"basis must be (2, 2) rows g1, g2 (1/Å), got shape {B.shape}")
    inv = np.linalg.inv(B.T)
    c = q @ inv.T
    d0 = np.linalg.norm(q - np.round(c) @ B, axis=1)
    layer = np.where(d0 < tolerance_inv_A, 0, max_layer + 1)
    off = np.flatnonzero(layer != 0)
    if off.size == 0 or not np.isfinite(B).all():
        return {"t": np.full(2, np.nan), "layer": layer}
    cand = q[off[np.argsort(np.hypot(*q[off].T))[:n_candidates]]]  # (C, 2)
    ks = np.array([k for k in range(1, max_layer + 1) for k in (k, -k)])
    shifted = q[None, None] - ks[None, :, None, None] * cand[:, None, None, :]  # (C, K, n, 2)
    cs = shifted @ inv.T
    d = np.linalg.norm(shifted - np.round(cs) @ B, axis=3)  # (C, K, n)
    hit = (d < tolerance_inv_A) & (layer != 0)[None, None]
    count = hit.any(axis=1).sum(axis=1)
    best = int(np.argmax(count))
    kbest = np.where(hit[best].any(axis=0), np.abs(ks[np.argmax(hit[best], axis=0)]), max_layer + 1)
    layer = np.where(layer == 0, 0, kbest)
    return {"t": cand[best], "layer": layer}
