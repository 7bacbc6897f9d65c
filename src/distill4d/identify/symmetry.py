"""Lattice system of a 3D lattice by its metric symmetry, and the layer heights of one pattern.

:func:`lattice_system` reduces a basis (the three shortest non-coplanar lattice vectors, a
Minkowski, hence Buerger, reduced cell) and counts the integer matrices ``M`` with entries in
``{-1, 0, 1}`` and ``det M = ±1`` that keep its Gram matrix ``G`` within a relative tolerance:
``|M G Mᵀ - G|_ij <= tol · sqrt(G_ii G_jj)`` (``tol`` bounds the change of each cosine and of each
squared length relative to its own). For a reduced cell every symmetry of the lattice is such a
matrix, so the count is the order of the lattice point group: 48 cubic, 24 hexagonal, 16
tetragonal, 12 rhombohedral, 8 orthorhombic, 4 monoclinic, 2 triclinic. A direct basis and its
reciprocal have the same point group. On a noisy cell a loose tolerance can admit a set of
matrices that is no group; :func:`system_tolerances` therefore asks, per lattice system, whether
the ``order`` matrices of least metric change form that holohedry (closed under products, with
its 3-, 4- or 6-fold rotations) and which tolerance they need; :func:`lattice_system` takes the
highest-order system within the tolerance.

:func:`consensus_tolerances` does the same for many noisy reconstructions of one lattice (e.g. the
cells of several patterns of one structure, each in its own orientation): the reduced cells, scaled to
unit volume, are compared up to a {-1, 0, 1} unimodular matrix (:func:`cell_distance`), the largest
cluster of agreeing cells is aligned and averaged (:func:`consensus_cell`), and each holohedry is
tested on that mean.

:func:`fit_heights` fits the unknown ``z`` components of one pattern's projected 3D lattice (2D
lattice ``g1, g2`` and layer vector ``t``, 1/Å) by maximum likelihood of the spot intensities
under the kinematic model of :func:`~distill4d.simulate.spots.spot_patterns`: a lattice point
``q + z ẑ`` has the excitation error ``s = -(z + |G|² / 2k)`` and the log intensity
``log|F|² - s² / 2σ² + c``, with ``log|F|²`` Gaussian of a fitted spread; lattice points with no
spot are censored (below the cut ``min_relative_intensity``), with a fraction of them allowed
absent (systematic absences). The plane of ``g1, g2`` is tilted by a gradient ``p`` (2,) and
layer ``k`` lies ``k h`` above it: ``z = p · q + k h``; the 3D basis is then
``(g1, p·g1), (g2, p·g2), (t, p·t + h)``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import Distill4dError
from .metric import _spot_positions

__all__ = ["LATTICE_SYSTEMS", "POINT_GROUP_ORDERS", "reduce_basis", "symmetry_order", "system_tolerances",
           "system_from_tolerances", "system_by_gap", "lattice_system", "cell_distance", "consensus_cell",
           "consensus_tolerances",
           "refine_projected_basis", "fit_heights"]

#: Lattice systems, lowest symmetry first.
LATTICE_SYSTEMS = ("triclinic", "monoclinic", "orthorhombic", "tetragonal", "rhombohedral", "hexagonal", "cubic")
#: Order of each lattice system's point group (holohedry).
POINT_GROUP_ORDERS = (2, 4, 8, 16, 12, 24, 48)

_MATS: list[np.ndarray] = []


def _matrices() -> np.ndarray:
    """All ``(n, 3, 3)`` integer matrices with entries in {-1, 0, 1} and determinant ±1."""
    if not _MATS:
        m = np.array(list(itertools.product((-1, 0, 1), repeat=9)), dtype=np.float64).reshape(-1, 3, 3)
        d = np.round(np.linalg.det(m))
        _MATS.append(m[np.abs(d) == 1])
    return _MATS[0]


def pairwise_reduce(b: np.ndarray) -> tuple[np.ndarray, bool]:
    """One pass of pairwise (Lagrange-Gauss) reduction of the rows ``b`` (3, 3), sorted by length first:
    ``(reduced copy, whether any row changed)``."""
    b = b[np.argsort(np.einsum("ij,ij->i", b, b))]
    changed = False
    for i, j in ((0, 1), (0, 2), (1, 2)):
        r = round(float(b[i] @ b[j]) / float(b[i] @ b[i]))
        if r:
            b[j] = b[j] - r * b[i]
            changed = True
    return b, changed


def reduce_basis(basis: Any) -> np.ndarray:
    """A reduced basis ``(3, 3)`` (rows) of the lattice of ``basis`` (rows, any unit): the three
    shortest non-coplanar lattice vectors (successive minima), right-handed."""
    b = np.asarray(basis, dtype=np.float64)
    if b.shape != (3, 3) or not np.isfinite(b).all():
        raise Distill4dError(f"basis must be a finite (3, 3) array of row vectors, got shape {b.shape}")
    vol = abs(np.linalg.det(b))
    if vol <= 1e-12 * np.sum(b * b) ** 1.5:
        raise Distill4dError("basis vectors are coplanar: they span no 3D lattice")
    for _ in range(64):  # greedy pairwise reduction first, so that small coefficients suffice below
        b, changed = pairwise_reduce(b)
        if not changed:
            break
    c = np.array([v for v in itertools.product(range(-2, 3), repeat=3) if any(v)], dtype=np.float64)
    vecs = c @ b
    order = np.argsort(np.einsum("ij,ij->i", vecs, vecs), kind="stable")
    chosen: list[int] = []
    for i in order:
        trial = c[chosen + [i]]
        if np.linalg.matrix_rank(trial) == len(chosen) + 1:
            if len(chosen) == 2 and abs(round(np.linalg.det(trial))) != 1:
                continue
            chosen.append(int(i))
            if len(chosen) == 3:
                break
    out = vecs[chosen]
    if np.linalg.det(out) < 0:
        out[2] = -out[2]
    return out


def symmetry_order(basis: Any, tolerance: float | Any = 0.01) -> Any:
    """Number of point-group operations of the lattice of ``basis`` (3, 3) (rows) within each
    relative ``tolerance`` (a float, or a sequence: then an array of counts)."""
    worst = _deviations(basis)
    tol = np.atleast_1d(np.asarray(tolerance, dtype=np.float64))
    counts = (worst[None, :] <= tol[:, None]).sum(axis=1)
    return int(counts[0]) if np.ndim(tolerance) == 0 else counts


def _deviations(basis: Any) -> np.ndarray:
    """Largest relative metric change ``(n,)`` of every matrix of :func:`_matrices` on the reduced cell."""
    b = reduce_basis(basis)
    return _metric_deviations(b @ b.T)


def _metric_deviations(G: np.ndarray, G_from: np.ndarray | None = None, M: np.ndarray | None = None) -> np.ndarray:
    """Largest relative difference ``(n,)`` ``|M G_from Mᵀ - G|_ij / sqrt(G_ii G_jj)`` for every matrix of ``M``
    (default :func:`_matrices`); ``G_from`` defaults to ``G`` (how far each matrix changes the metric)."""
    M = _matrices() if M is None else M
    G_from = G if G_from is None else G_from
    dev = np.abs(np.einsum("nij,jk,nlk->nil", M, G_from, M) - G) / np.sqrt(np.outer(np.diag(G), np.diag(G)))
    return dev.reshape(len(M), 9).max(axis=1)


def _is_holohedry(ops: np.ndarray, system: str) -> bool:
    """Whether the integer matrices ``ops`` (k, 3, 3) are closed under products and hold the
    rotations of ``system``'s holohedry (4-fold: trace 1, 3-fold: trace 0, 6-fold: trace 2)."""
    code = lambda m: ((np.round(m).astype(np.int64).reshape(len(m), 9) + 1) * 3 ** np.arange(9)).sum(1)  # noqa: E731
    prod = np.einsum("aij,bjk->abik", ops, ops).reshape(-1, 3, 3)
    if np.abs(prod).max() > 1 or not np.isin(code(prod), code(ops)).all():
        return False
    det = np.round(np.linalg.det(ops))
    tr = np.round(np.einsum("kii->k", ops))[det > 0]
    has = {v: bool(np.any(tr == v)) for v in (0, 1, 2)}
    need = {"cubic": has[1] and has[0], "hexagonal": has[2], "tetragonal": has[1] and not has[0],
            "rhombohedral": has[0] and not has[2] and not has[1], "orthorhombic": not (has[0] or has[1])}
    return need.get(system, True)


def system_tolerances(basis: Any) -> np.ndarray:
    """``(7,)`` per lattice system (:data:`LATTICE_SYSTEMS` order) the tolerance its holohedry
    needs on ``basis`` (3, 3) (rows): the largest relative metric change among the ``order``
    matrices that change the reduced cell's metric least, if they form that group (closed, with
    its rotations), else inf; 0 for triclinic."""
    dev = _deviations(basis)
    order = np.argsort(dev, kind="stable")
    M = _matrices()
    out = np.full(len(LATTICE_SYSTEMS), np.inf)
    out[0] = 0.0
    for i, (system, k) in enumerate(zip(LATTICE_SYSTEMS, POINT_GROUP_ORDERS)):
        if i and _is_holohedry(M[order[:k]], system):
            out[i] = float(dev[order[k - 1]])
    return out


def system_from_tolerances(needed: Any, tolerance: float) -> str:
    """The highest-order lattice system whose needed tolerance (:func:`system_tolerances`) is within ``tolerance``."""
    needed = np.asarray(needed, dtype=np.float64)
    ok = [i for i in range(len(LATTICE_SYSTEMS)) if needed[i] <= tolerance]
    return LATTICE_SYSTEMS[max(ok, key=lambda i: POINT_GROUP_ORDERS[i])]


def system_by_gap(needed: Any, floor: float = 0.01, cap: float = 0.3) -> str:
    """The lattice system whose holohedry fits best against the next: the system ``S`` (needed
    tolerance at most ``cap``) that maximises ``min(needed of the higher-order systems) /
    max(needed[S], floor)`` (:func:`system_tolerances`; a noisy cell's true system needs a small
    tolerance, the next higher a much larger one, whatever the noise level)."""
    needed = np.asarray(needed, dtype=np.float64)
    best, best_score = LATTICE_SYSTEMS[0], -1.0
    for i, system in enumerate(LATTICE_SYSTEMS):
        if needed[i] > cap:
            continue
        higher = [needed[j] for j in range(len(LATTICE_SYSTEMS)) if POINT_GROUP_ORDERS[j] > POINT_GROUP_ORDERS[i]]
        score = (min(higher) if higher else cap * 10) / max(needed[i], floor)
        if score > best_score:
            best, best_score = system, score
    return best


def lattice_system(basis: Any, tolerance: float = 0.01) -> tuple[str, float]:
    """``(system, deviation)``: the lattice system of ``basis`` (3, 3) (rows, direct or reciprocal)
    by its metric symmetry, and the relative metric change its holohedry needs.

    For each holohedry, highest order first, the ``order`` matrices that change the reduced
    cell's metric least (module docstring) must form that group (closed, with its rotations)
    within the relative ``tolerance``; the first that does is the answer (triclinic otherwise).
    """
    if not tolerance > 0:
        raise Distill4dError(f"tolerance must be > 0 (a relative deviation), got {tolerance}")
    needed = system_tolerances(basis)
    system = system_from_tolerances(needed, tolerance)
    return system, float(needed[LATTICE_SYSTEMS.index(system)])


def _unit_metric(basis: np.ndarray) -> np.ndarray:
    """Gram matrix (3, 3) of the reduced cell of ``basis``, scaled to unit cell volume."""
    b = reduce_basis(basis)
    return _unit(b @ b.T)


def _align(Ga: np.ndarray, Gb: np.ndarray) -> tuple[float, np.ndarray]:
    """``(distance, M)``: the matrix of :func:`_matrices` that brings ``Gb`` closest to ``Ga`` and the
    largest relative change ``|M Gb Mᵀ - Ga|_ij / sqrt(Ga_ii Ga_jj)`` it leaves."""
    worst = _metric_deviations(Ga, Gb)
    k = int(np.argmin(worst))
    return float(worst[k]), _matrices()[k]


def cell_distance(basis_a: Any, basis_b: Any) -> float:
    """How far apart the lattices of two bases (3, 3) (rows, any unit) are in shape: the largest
    relative metric difference (as in :func:`symmetry_order`) of their reduced cells, each scaled to
    unit volume, over the {-1, 0, 1} unimodular matrices relating them (0: the same lattice up to a
    rotation and a scale)."""
    return _align(_unit_metric(np.asarray(basis_a, dtype=np.float64)),
                  _unit_metric(np.asarray(basis_b, dtype=np.float64)))[0]


def _pairwise(bases: Any) -> tuple[list[np.ndarray], list[int], np.ndarray, np.ndarray]:
    """``(unit-volume reduced metrics, their indices into bases, symmetric distances (n, n), aligning
    matrices (n, n, 3, 3))`` of the finite 3D bases among ``bases``."""
    metrics, index = [], []
    for i, b in enumerate(bases):
        b = np.asarray(b, dtype=np.float64)
        if b.shape != (3, 3) or not np.isfinite(b).all():
            continue
        try:
            metrics.append(_unit_metric(b))
        except Distill4dError:  # coplanar: no 3D cell
            continue
        index.append(i)
    if not metrics:
        raise Distill4dError("bases hold no finite 3D cell")
    n = len(metrics)
    dist = np.zeros((n, n))
    mats = np.empty((n, n, 3, 3))
    for i in range(n):
        mats[i, i] = np.eye(3)
        for j in range(n):
            if i != j:
                dist[i, j], mats[i, j] = _align(metrics[i], metrics[j])
    return metrics, index, np.maximum(dist, dist.T), mats


def _cluster(pair: tuple, agree: float) -> tuple[list[np.ndarray], np.ndarray, list[int]]:
    """``(metrics, their copies aligned to the centre's (m, 3, 3), indices into bases)`` of the
    largest cluster (:func:`consensus_cell`) of :func:`_pairwise`'s result ``pair``."""
    if not agree > 0:
        raise Distill4dError(f"agree must be > 0 (a relative metric difference), got {agree}")
    metrics, index, d, mats = pair
    n = len(metrics)
    size = (d <= agree).sum(axis=1)
    score = np.where(d <= agree, d, 0.0).sum(axis=1)
    centre = min(range(n), key=lambda i: (-size[i], score[i]))
    members = np.flatnonzero(d[centre] <= agree)
    aligned = np.array([mats[centre, j] @ metrics[j] @ mats[centre, j].T for j in members])
    return [metrics[j] for j in members], aligned, [index[j] for j in members]


def _unit(G: np.ndarray) -> np.ndarray:
    return G / np.linalg.det(G) ** (1.0 / 3.0)


def _realigned_mean(G_ref: np.ndarray, metrics: list[np.ndarray]) -> np.ndarray:
    """The mean of ``metrics``, each first brought closest to ``G_ref`` by a matrix of :func:`_matrices`."""
    out = []
    for G in metrics:
        M = _align(G_ref, G)[1]
        out.append(M @ G @ M.T)
    return _unit(np.mean(out, axis=0))


def consensus_cell(bases: Any, agree: float = 0.05) -> dict[str, Any]:
    """One 3D cell from many noisy reconstructions of the same lattice (e.g. one per pattern of a
    structure, each orientation's cell rotated differently): the reduced cells, scaled to unit volume,
    are compared by :func:`cell_distance`; the cell with the most others within ``agree`` (relative)
    is the centre (ties: the smallest summed distance to them), and the metrics of its cluster, each
    aligned to the centre's cell by its unimodular matrix, are averaged. Bases that are not finite or
    not 3D are skipped. Returns ``{"basis", "members"}``: a basis (3, 3) (rows, unit volume) of the
    mean metric and the indices of the averaged bases. (An alignment to one noisy cell follows that
    cell's noise; :func:`consensus_tolerances` realigns to each symmetric hypothesis instead.)"""
    _, aligned, members = _cluster(_pairwise(bases), agree)
    return {"basis": np.linalg.cholesky(_unit(aligned.mean(axis=0))), "members": members}


def consensus_tolerances(bases: Any, agree: float | Sequence[float] = 0.05) -> np.ndarray:
    """``(7,)`` per lattice system the relative tolerance its holohedry needs on the consensus of
    ``bases`` (as :func:`system_tolerances` on one cell; for :func:`system_from_tolerances`); ``(k,
    7)`` for a sequence of ``k`` values of ``agree`` (the comparison done once).

    The cluster of :func:`consensus_cell` is averaged; per system, the ``order`` matrices that change
    the mean's metric least must form the holohedry (else inf); the mean is symmetrised by them, every
    member realigned to that symmetric metric (so that the choice among symmetry-equivalent alignments
    does not follow the noise) and averaged again, and the largest relative metric change of those
    matrices on this mean is the system's tolerance. Noise of independent cells averages down as
    1/sqrt(members); a true lower symmetry stays."""
    agrees = np.atleast_1d(np.asarray(agree, dtype=np.float64))
    pair = _pairwise(bases)
    rows = []
    for a in agrees:
        metrics, aligned, _ = _cluster(pair, float(a))
        b = reduce_basis(np.linalg.cholesky(_unit(aligned.mean(axis=0))))
        G0 = b @ b.T
        M = _matrices()
        dev = _metric_deviations(G0)  # in this basis's frame (reduce_basis again may flip a vector)
        order = np.argsort(dev, kind="stable")
        out = np.full(len(LATTICE_SYSTEMS), np.inf)
        out[0] = 0.0
        for i, (system, k) in enumerate(zip(LATTICE_SYSTEMS, POINT_GROUP_ORDERS)):
            ops = M[order[:k]]
            if not i or not _is_holohedry(ops, system):
                continue
            G_sym = np.einsum("nij,jk,nlk->il", ops, G0, ops) / k
            out[i] = float(_metric_deviations(_realigned_mean(G_sym, metrics), M=ops).max())
        rows.append(out)
    return rows[0] if np.ndim(agree) == 0 else np.array(rows)


def refine_projected_basis(qx_inv_A: Any, qy_inv_A: Any, basis: Any, t: Any, *, tolerance_inv_A: float = 0.015,
                           max_layer: int = 4, rounds: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """``(basis, t)``: the 2D lattice ``g1, g2`` (2, 2) and layer vector ``t`` (2,) (1/Å) refined together
    by least squares on every spot within ``tolerance_inv_A`` of ``n1 g1 + n2 g2 + k t`` (``|k| <=
    max_layer``): a spot is indexed by ``(n1, n2, k)``, and ``[g1; g2; t]`` solves ``q = (n1, n2, k) ·
    [g1; g2; t]``. (:func:`~distill4d.identify.metric.fit_layers` returns one spot's position as ``t``,
    with that spot's position error.) Unchanged where fewer than 4 spots are indexed."""
    q = _spot_positions(qx_inv_A, qy_inv_A)
    B = np.asarray(basis, dtype=np.float64).copy()
    t = np.asarray(t, dtype=np.float64).copy()
    ks = np.arange(-max_layer, max_layer + 1)
    for _ in range(rounds):
        inv = np.linalg.inv(B.T)
        shifted = q[:, None, :] - ks[None, :, None] * t  # (n, K, 2)
        c = np.round(shifted @ inv.T)
        d = np.linalg.norm(shifted - c @ B, axis=2)
        best = np.argmin(d + 1e-9 * np.abs(ks)[None], axis=1)  # the lowest layer on ties
        dmin = d[np.arange(len(q)), best]
        hit = dmin < tolerance_inv_A
        if hit.sum() < 4:
            break
        N = np.concatenate([c[np.arange(len(q)), best], ks[best][:, None]], axis=1)[hit]
        if np.linalg.matrix_rank(N) < 3:
            break
        sol = np.linalg.lstsq(N, q[hit], rcond=None)[0]
        B, t = sol[:2], sol[2]
    return B, t


def _loglik(params: np.ndarray, pts: np.ndarray, layer: np.ndarray, obs: np.ndarray, logi: np.ndarray,
            k_inv: float, log_cut: float, absent: float, sigma: float | None) -> float:
    """Negative log-likelihood of the spot intensities (see :func:`fit_heights`)."""
    from scipy.special import log_ndtr

    p1, p2, h, m, log_tau = params[:5]
    sig = sigma if sigma is not None else math.exp(params[5])
    tau = math.exp(log_tau)
    z = pts[:, 0] * p1 + pts[:, 1] * p2 + layer * h
    s = -(z + (np.einsum("ij,ij->i", pts, pts) + z * z) * (0.5 * k_inv))
    mean = m - s * s / (2 * sig * sig)
    r = (logi - mean[obs]) / tau
    ll_obs = -0.5 * r * r - log_tau
    u = (log_cut - mean[~obs]) / tau
    ll_cen = np.logaddexp(math.log(absent), math.log1p(-absent) + log_ndtr(u))
    return -(ll_obs.sum() + ll_cen.sum())


def fit_heights(qx_inv_A: Any, qy_inv_A: Any, intensity: Any, basis: Any, t: Any, *,
                excitation_error_inv_A: float | None = 0.03, energy_eV: float = 200e3,
                max_g_inv_A: float = 1.5, min_relative_intensity: float = 1e-3,
                tolerance_inv_A: float = 0.015, max_layer: int = 12, absent_fraction: float = 0.05,
                direct_beam_inv_A: float = 0.05, max_points: int = 100_000) -> dict[str, Any]:
    """Maximum-likelihood ``z`` components of one pattern's projected 3D lattice (module docstring).

    Spots ``(qx, qy)`` (1/Å) and intensities (max 1); ``basis`` (2, 2) rows ``g1, g2`` and ``t``
    (2,) (1/Å), e.g. from :func:`~distill4d.identify.metric.fit_lattice2d` and
    :func:`~distill4d.identify.metric.fit_layers`. Every point ``n1 g1 + n2 g2 + k t`` with
    ``|k| <= max_layer`` and ``direct_beam_inv_A < |q| <= max_g_inv_A`` is a lattice point; the
    spot within ``tolerance_inv_A`` of it is its observation. ``excitation_error_inv_A``: the
    relrod width σ (1/Å), or None to fit it. Returns ``{"p", "h", "basis3d", "sigma", "tau",
    "nll", "matched"}``: the plane's gradient (2,), the layer height (1/Å), the 3D basis (3, 3)
    rows in 1/Å, σ, the spread of log|F|², the negative log-likelihood per lattice point and the
    fraction of spots matched to a lattice point. More than ``max_points`` lattice points in the
    disc (a basis far too short): Distill4dError.
    """
    from scipy.optimize import minimize

    from ..calibration import electron_wavelength_A

    x, y = _spot_positions(qx_inv_A, qy_inv_A).T
    it = np.asarray(intensity, dtype=np.float64)
    if it.shape != x.shape or not np.isfinite(it).all():
        raise Distill4dError(f"intensity must be a finite array of the spots' length {x.shape}, got shape {it.shape}")
    B = np.asarray(basis, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    if B.shape != (2, 2) or t.shape != (2,) or not (np.isfinite(B).all() and np.isfinite(t).all()):
        raise Distill4dError(f"basis must be a finite (2, 2) array and t a finite (2,) vector (1/Å), got shapes "
                             f"{B.shape} and {t.shape}")
    k_inv = electron_wavelength_A(energy_eV)
    keep = (np.hypot(x, y) > direct_beam_inv_A) & (it > 0)
    q = np.stack([x[keep], y[keep]], axis=1)
    logi = np.log(it[keep])
    # lattice points of every layer inside the disc
    inv = np.linalg.inv(B.T)
    pts_l, lay_l = [], []
    for k in range(-max_layer, max_layer + 1):
        c0 = inv @ (k * t)
        rad = max_g_inv_A * np.sqrt(np.sum(inv * inv, axis=1)) + 1
        n1 = np.arange(math.floor(-c0[0] - rad[0]), math.ceil(-c0[0] + rad[0]) + 1)
        n2 = np.arange(math.floor(-c0[1] - rad[1]), math.ceil(-c0[1] + rad[1]) + 1)
        a, b = np.meshgrid(n1, n2, indexing="ij")
        P = a.ravel()[:, None] * B[0] + b.ravel()[:, None] * B[1] + k * t
        r = np.hypot(P[:, 0], P[:, 1])
        ok = (r <= max_g_inv_A) & (r > direct_beam_inv_A)
        pts_l.append(P[ok])
        lay_l.append(np.full(ok.sum(), k, dtype=np.float64))
    pts, layer = np.concatenate(pts_l), np.concatenate(lay_l)
    # match spots to lattice points
    from scipy.spatial import cKDTree

    d, j = cKDTree(pts).query(q, distance_upper_bound=tolerance_inv_A)
    hit = np.isfinite(d)
    obs = np.zeros(len(pts), bool)
    obs_logi = np.full(len(pts), -np.inf)
    for jj, li in zip(j[hit], logi[hit]):  # the brightest spot on a point is its observation
        obs[jj] = True
        obs_logi[jj] = max(obs_logi[jj], li)
    lo = obs_logi[obs]
    log_cut = math.log(min_relative_intensity)
    sig0 = 0.03 if excitation_error_inv_A is None else float(excitation_error_inv_A)
    # grid for the tilt on layer 0 and the height on all layers, nuisance parameters profiled
    r2 = np.einsum("ij,ij->i", pts, pts)

    def profile(z: np.ndarray) -> np.ndarray:
        """Approximate NLL of many candidate heights ``z`` (c, n_points): offset and spread profiled."""
        if z.size > 4_000_000:  # in chunks: the memory of one (c, n_points) array stays below 32 MB
            step = max(1, 4_000_000 // z.shape[1])
            return np.concatenate([profile(z[i : i + step]) for i in range(0, len(z), step)])
        s = -(z + r2 * 0.5 * k_inv)
        e = s * s / (2 * sig0 * sig0)
        res = lo + e[:, obs]
        m = res.mean(axis=1)
        tau = np.maximum(res.std(axis=1), 0.05)
        from scipy.special import log_ndtr

        u = (log_cut - m[:, None] + e[:, ~obs]) / tau[:, None]
        cen = np.logaddexp(math.log(absent_fraction), math.log1p(-absent_fraction) + log_ndtr(u)).sum(axis=1)
        return obs.sum() * (np.log(tau) + 0.5) - cen

    zero = layer == 0
    g = np.linspace(-0.3, 0.3, 61)
    P1, P2 = np.meshgrid(g, g, indexing="ij")
    grid_p = np.stack([P1.ravel(), P2.ravel()], axis=1)
    best = None
    sel = zero
    if len(pts) > max_points:
        raise Distill4dError(f"{len(pts)} lattice points inside max_g_inv_A: more than max_points={max_points} "
                             "(a 2D lattice or layer vector far too short for these spots?)")
    if obs[zero].sum() >= 2:
        # tilt from layer 0 alone (the same profiled NLL on the points of layer 0)
        r2_all, obs_all, lo_all = r2, obs, lo
        r2, obs, lo = r2[zero], obs[zero], obs_logi[zero][obs[zero]]
        chunks = max(1, len(grid_p) * int(zero.sum()) // 4_000_000)
        nll = np.concatenate([profile(gp @ pts[zero].T) for gp in np.array_split(grid_p, chunks)])
        r2, obs, lo = r2_all, obs_all, lo_all
        order = np.argsort(nll)[:3]
        starts_p = grid_p[order]
    else:
        starts_p = np.zeros((1, 2))
    del sel
    hs = np.linspace(-1.0, 1.0, 801)
    starts = []
    for p in starts_p:
        base = pts @ p
        chunks = max(1, hs.size * len(pts) // 4_000_000)
        nll = np.concatenate([profile(base[None, :] + hc[:, None] * layer[None, :]) for hc in np.array_split(hs, chunks)])
        for i in np.argsort(nll)[:3]:
            starts.append((float(nll[i]), p[0], p[1], hs[i]))
    starts.sort()
    for _, p1, p2, h in starts[:3]:
        z = pts @ np.array([p1, p2]) + h * layer
        s = -(z + r2 * 0.5 * k_inv)
        res = lo + s[obs] ** 2 / (2 * sig0 * sig0)
        x0 = [p1, p2, h, res.mean(), math.log(max(res.std(), 0.05))]
        if excitation_error_inv_A is None:
            x0.append(math.log(sig0))
        out = minimize(_loglik, np.array(x0), method="Nelder-Mead",
                       args=(pts, layer, obs, lo, k_inv, log_cut, absent_fraction, excitation_error_inv_A),
                       options={"xatol": 1e-5, "fatol": 1e-3, "maxiter": 2000})
        if best is None or out.fun < best.fun:
            best = out
    p1, p2, h = best.x[:3]
    if h < 0:  # the mirror z -> -z is the same lattice metric; keep h >= 0
        p1, p2, h = -p1, -p2, -h
    pvec = np.array([p1, p2])
    b3 = np.array([[*B[0], B[0] @ pvec], [*B[1], B[1] @ pvec], [*t, t @ pvec + h]])
    return {"p": pvec, "h": float(h), "basis3d": b3,
            "sigma": float(math.exp(best.x[5])) if excitation_error_inv_A is None else float(excitation_error_inv_A),
            "tau": float(math.exp(best.x[4])), "nll": float(best.fun) / len(pts),
            "matched": float(hit.mean()) if hit.size else 0.0}
