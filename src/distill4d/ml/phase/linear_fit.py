"""Least-squares fit of the linear phase model (:class:`~distill4d.ml.phase.model.RadialLinear`).

The model is linear in the data: ``out = b + Σ_{ring, bin} C[ring, bin] · F[ring, bin]``, where
``F[ring, bin]`` sums the prepared intensity of radial bin ``bin`` over the cluster positions at
distance ``ring`` (:func:`cluster_features`) and ``C = w2ᵀ w1`` has rank at most ``n_masks``. The fit
minimises the mean squared error over the training positions (each scan weighted equally, as the
gradient trainer's batches draw scans with equal probability) plus a ridge ``λ ‖C‖²``:

1. the full-rank ridge solution, truncated to rank ``n_masks`` by its SVD, then
2. alternating least squares on ``w1`` and ``w2`` (each step solves its half exactly, so the
   objective never rises) until it changes by less than 1e-10 (relative),

for a few ridges ``λ`` (relative to the features' mean square); the one with the lowest held-out
MSE is kept (the held-out region is used as the gradient trainer uses it: to choose among fits).
Finally ``C = U S Vᵀ`` gives the masks ``w1 = √S Vᵀ`` and cluster weights ``w2 = (U √S)ᵀ``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import Distill4dError

__all__ = ["RIDGES", "bin_onehot", "cluster_features", "fit_linear"]

#: Ridges tried, on the centred and scaled features (mean variance 1).
RIDGES = (1e-6, 1e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)
_MAX_SWEEPS = 300


def bin_onehot(bins: Any, n_bins: int) -> np.ndarray:
    """``(len(bins), n_bins)`` float64: row ``k`` is 1 at ``bins[k]`` (the radial bin of detector pixel
    ``k``), so ``patterns @ onehot`` sums each bin's pixels."""
    b = np.asarray(bins).reshape(-1)
    onehot = np.zeros((b.size, n_bins))
    onehot[np.arange(b.size), b] = 1.0
    return onehot


def cluster_features(padded: np.ndarray, bins: np.ndarray, n_bins: int, rings: np.ndarray, n_rings: int) -> np.ndarray:
    """``(X, Y, n_rings, n_bins)`` features of every output position from the prepared, padded
    patterns ``(X + c - 1, Y + c - 1, N, N)``: ``F[x, y, ring, bin] = Σ_{(i, j): rings[i, j] = ring}
    Σ_{k: bins[k] = bin} padded[x + i, y + j, k]`` (float64). ``bins``: the radial bin of each of the
    ``N²`` detector pixels; ``rings``: ``(c, c)`` ring index of each cluster position."""
    padded, rings = np.asarray(padded), np.asarray(rings)
    if padded.ndim != 4 or np.size(bins) != padded.shape[2] * padded.shape[3]:
        raise Distill4dError(f"padded must be (X + c - 1, Y + c - 1, N, N) with one bin per detector pixel "
                             f"(N² bins), got shape {padded.shape} and {np.size(bins)} bins")
    if rings.ndim != 2 or rings.shape[0] != rings.shape[1] or rings.shape[0] > min(padded.shape[:2]):
        raise Distill4dError(f"rings must be a (c, c) cluster no larger than the padded scan, got {rings.shape}")
    xh, yh = padded.shape[:2]
    c = rings.shape[0]
    onehot = bin_onehot(bins, n_bins)
    g = padded.reshape(xh * yh, -1).astype(np.float64) @ onehot
    g = g.reshape(xh, yh, n_bins)
    nx, ny = xh - c + 1, yh - c + 1
    out = np.zeros((nx, ny, n_rings, n_bins))
    for i in range(c):
        for j in range(c):
            out[:, :, rings[i, j]] += g[i : i + nx, j : j + ny]
    return out


def _solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    jitter = 1e-12 * max(float(np.trace(a)) / len(a), 1e-300)
    return np.linalg.solve(a + jitter * np.eye(len(a)), b)


def _rank_fit(A: np.ndarray, bvec: np.ndarray, lam: float, n_rings: int, n_bins: int,
              rank: int) -> tuple[np.ndarray, float, int]:
    """``(C, bias, sweeps)`` minimising ``[c,1]ᵀ A [c,1]ᵀ - 2 bᵀ [c,1] + λ‖c‖²`` with ``rank(C) <= rank``
    (``A``, ``bvec``: the weighted normal equations with the bias as the last column)."""
    d = n_rings * n_bins
    pen = np.zeros(d + 1)
    pen[:d] = lam
    Ap = A + np.diag(pen)
    full = _solve(Ap, bvec)
    C = full[:d].reshape(n_rings, n_bins)
    if rank >= min(n_rings, n_bins):
        return C, float(full[d]), 0
    u, s, vt = np.linalg.svd(C, full_matrices=False)
    w2 = (u[:, :rank] * np.sqrt(s[:rank])).T  # (rank, rings)
    w1 = np.sqrt(s[:rank])[:, None] * vt[:rank]  # (rank, bins)

    def objective(theta_full: np.ndarray) -> float:
        return float(theta_full @ Ap @ theta_full - 2 * bvec @ theta_full)

    def half(K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # c_full = [K θ; bias]: solve for (θ, bias)
        Kf = np.zeros((d + 1, K.shape[1] + 1))
        Kf[:d, :-1] = K
        Kf[d, -1] = 1.0
        sol = _solve(Kf.T @ Ap @ Kf, Kf.T @ bvec)
        return Kf @ sol, sol[:-1]

    eye_r, eye_b = np.eye(n_rings), np.eye(n_bins)
    prev, sweeps, c_full = np.inf, 0, None
    for sweeps in range(1, _MAX_SWEEPS + 1):
        K2 = np.einsum("rs,mb->rbms", eye_r, w1).reshape(d, rank * n_rings)  # C linear in w2
        c_full, theta = half(K2)
        w2 = theta.reshape(rank, n_rings)
        K1 = np.einsum("mr,bc->rbmc", w2, eye_b).reshape(d, rank * n_bins)  # C linear in w1
        c_full, theta = half(K1)
        w1 = theta.reshape(rank, n_bins)
        value = objective(c_full)
        if abs(prev - value) <= 1e-10 * max(abs(value), 1e-30):
            break
        prev = value
    return w2.T @ w1, float(c_full[d]), sweeps


def fit_linear(scans: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], bins: np.ndarray, n_bins: int,
               rings: np.ndarray, n_rings: int, rank: int,
               ridges: tuple[float, ...] | None = None) -> tuple[np.ndarray, np.ndarray, float, dict[str, Any]]:
    """Fit the linear model (module notes) to ``scans``: ``(padded patterns, standardised label,
    training mask, held-out mask)`` each (label and masks ``(X, Y)``).

    Returns ``(w1 (rank, n_bins), w2 (rank, n_rings), bias, info)``; ``info`` holds the chosen
    ``ridge`` and ``rank``, the ``sweeps`` of alternating least squares and one record per fit tried
    (``ridge``, ``rank``, ``train_mse``, ``held_out_mse``, ``held_out_r``, ``sweeps``).
    """
    if not scans or int(rank) < 1:
        raise Distill4dError(f"fit_linear needs at least one scan and a rank >= 1, got {len(scans)} scans, rank {rank}")
    d = n_rings * n_bins
    feats = []
    for padded, z, train, hold in scans:
        F = cluster_features(padded, bins, n_bins, rings, n_rings).reshape(-1, d)
        t, h = np.asarray(train, bool).reshape(-1), np.asarray(hold, bool).reshape(-1)
        feats.append((F, np.asarray(z, np.float64).reshape(-1), t, h))
    # centred on the training positions (the bias takes the means) and scaled by ring and by bin (a
    # diagonal scaling on each side keeps the rank of C), so that one relative ridge suits any data
    mean_f = np.mean([F[t].mean(axis=0) for F, _, t, _ in feats], axis=0)
    mean_z = float(np.mean([z[t].mean() for _, z, t, _ in feats]))
    var = np.mean([F[t].var(axis=0) for F, _, t, _ in feats], axis=0).reshape(n_rings, n_bins)
    s_r = np.sqrt(np.maximum(var.mean(axis=1), 1e-300))
    s_b = np.sqrt(np.maximum(var.mean(axis=0) / max(var.mean(), 1e-300), 1e-300))
    scale = np.outer(s_r, s_b).reshape(-1)
    A = np.zeros((d + 1, d + 1))
    bvec = np.zeros(d + 1)
    held = []
    for F, z, t, h in feats:
        X = np.concatenate([(F - mean_f) / scale, np.ones((len(F), 1))], axis=1)
        y = z - mean_z
        n = max(int(t.sum()), 1)
        A += X[t].T @ X[t] / n
        bvec += X[t].T @ y[t] / n
        held.append((X[t], y[t], X[h], y[h]))
    A /= len(feats)
    bvec /= len(feats)
    records, best = [], None
    for k in range(1, rank + 1):
        for rel in (RIDGES if ridges is None else ridges):
            C, bias, sweeps = _rank_fit(A, bvec, rel, n_rings, n_bins, k)
            coef = np.concatenate([C.reshape(-1), [bias]])
            tr, ho, rs = [], [], []
            for Xt, yt, Xh, yh in held:
                tr.append(float(np.mean((Xt @ coef - yt) ** 2)))
                ph = Xh @ coef
                ho.append(float(np.mean((ph - yh) ** 2)))
                rs.append(float(np.corrcoef(ph, yh)[0, 1]) if len(yh) > 1 and np.std(ph) > 0 else 0.0)
            rec = {"rank": k, "ridge": rel, "train_mse": float(np.mean(tr)), "held_out_mse": float(np.mean(ho)),
                   "held_out_r": float(np.mean(rs)), "sweeps": sweeps}
            records.append(rec)
            if best is None or rec["held_out_mse"] < best[0]["held_out_mse"]:
                best = (rec, C, bias)
    rec, C, bias = best
    C = C / scale.reshape(n_rings, n_bins)  # back to the unscaled, uncentred features
    bias = bias + mean_z - float(C.reshape(-1) @ mean_f)
    u, s, vt = np.linalg.svd(C, full_matrices=False)
    k = min(rec["rank"], len(s))
    w1 = np.zeros((rank, n_bins))
    w2 = np.zeros((rank, n_rings))
    w1[:k] = np.sqrt(s[:k])[:, None] * vt[:k]
    w2[:k] = (u[:, :k] * np.sqrt(s[:k])).T
    flip = np.sign(w1[np.arange(rank), np.argmax(np.abs(w1), axis=1)])
    flip[flip == 0] = 1.0
    w1 *= flip[:, None]
    w2 *= flip[:, None]
    return w1, w2, bias, {"ridge": rec["ridge"], "rank": rec["rank"], "sweeps": rec["sweeps"], "fits": records}
