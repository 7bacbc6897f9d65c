"""Each pattern's projected 3D lattice: its 2D lattice and Laue-layer vector, as invariant features.

A kinematic pattern at a random orientation holds the reciprocal-lattice points near the Ewald
sphere, projected on the detector: a slab of the 3D lattice. Its spots are a 2D lattice ``g1, g2``
(the projection of one lattice plane) and its copies shifted by ``k · t`` (Laue layers ``k``),
``t`` the projection of a third basis vector ``b3 = t + h ẑ``. The positions give ``g1, g2`` and
``t`` modulo the 2D lattice: 5 of the 6 parameters of the 3D metric (``h``, the layer height, is
what they do not give). Invariant to rotation, mirror and the choice of basis:

* the reduced 2D cell: ``|g2| / |g1|``, ``|cos|`` of their angle;
* ``t`` in fractional coordinates ``(u, v)`` of the reduced cell (``g1 · g2 <= 0``), taken modulo 1
  and folded by the inversion ``(u, v) -> (-u, -v)`` so that ``u`` is in ``[0, 1/2]``; its
  distances to the nearest multiple of 1/2, 1/3 and 1/4 (centring and higher symmetry put the
  layer at such offsets); the shortest ``|t + m g1 + n g2| / |g1|``;
* the fraction of spots (and of weight) on layer 0, on ``|k| = 1``, on ``|k| = 2`` and on none;
* the layers' stripe geometry: the spots of layer ``k`` lie where the sphere cuts it, a stripe at
  a distance about ``|k| h / tan(tilt)`` from the centre, as wide as the excitation error over
  ``tan(tilt)``; ``D`` half the distance between the weighted centroids of layers +1 and -1 (in
  units of ``|g1|``), ``W`` the weighted spread of layer 0 along that direction, and ``D / W``
  (``h`` in units of the excitation error).

In the kinematic library (relrods ``σ = 0.03`` 1/Å wide, spots kept down to 1e-3 of the
strongest) the slab is thicker than the layer spacing of cells of 5-10 Å, so the layers cover the
whole pattern instead of lying on Laue circles: their positions do not give ``h``. Their
intensities do: the spots of layer ``k`` are about ``k h`` off the sphere, so the mean log
intensity drops by about ``(k h)² / 2σ²``. The last columns (``N_POSITION`` on) use that: the drops
to layers 1 and 2, ``h ≈ σ sqrt(2 Δ₁)`` over ``|g1|`` (biased low by the tilt and the cut of weak
spots), and the reduced 3D cell of ``g1, g2, (t, h)``: ``|b2| / |b1|``, ``|b3| / |b1|`` and the
``|cos|`` of its three angles.

:func:`lattice3d_features` computes them per pattern (a loop over patterns: the fits of
:mod:`~distill4d.identify.metric`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._validate import positive_float
from ..errors import Distill4dError
from .metric import fit_layers, pattern_lattices
from .symmetry import pairwise_reduce

__all__ = ["LATTICE3D_NAMES", "N_LATTICE3D", "N_POSITION", "layer_offset", "lattice3d_features"]

#: Names of the columns of :func:`lattice3d_features`.
LATTICE3D_NAMES = (
    "g2_over_g1", "cos12", "layer_u", "layer_v",
    "u_off_half", "v_off_half", "u_off_third", "v_off_third", "u_off_quarter", "v_off_quarter",
    "t_reduced_over_g1",
    "layer0_fraction", "layer1_fraction", "layer2_fraction", "no_layer_fraction",
    "layer0_weight", "layer1_weight",
    "stripe_distance_over_g1", "stripe_width_over_g1", "stripe_distance_over_width",
    "log_intensity_drop_layer1", "log_intensity_drop_layer2", "layer_height_over_g1",
    "cell3d_l2_over_l1", "cell3d_l3_over_l1", "cell3d_cos_alpha", "cell3d_cos_beta", "cell3d_cos_gamma",
)
#: The first columns, from the spot positions alone (the rest use the intensities and the relrod width).
N_POSITION = 20
#: Number of 3D-lattice features.
N_LATTICE3D = len(LATTICE3D_NAMES)


def _reduced(basis: np.ndarray) -> np.ndarray:
    """Lagrange-Gauss reduced ``(2, 2)`` basis with ``|g1| <= |g2|`` and ``g1 · g2 <= 0``."""
    a, b = basis[0].copy(), basis[1].copy()
    for _ in range(16):
        if b @ b < a @ a:
            a, b = b, a
        m = round(float(a @ b) / float(a @ a))
        if m == 0:
            break
        b = b - m * a
    if b @ b < a @ a:
        a, b = b, a
    if a @ b > 0:
        b = -b
    return np.stack([a, b])


def layer_offset(basis: Any, t: Any) -> tuple[float, float]:
    """Fractional coordinates ``(u, v)`` of the layer vector ``t`` (2,) in the reduced cell of ``basis`` (2, 2).

    Modulo 1 and folded by the inversion so that ``u`` is in ``[0, 1/2]`` and ``v`` in ``[0, 1)``
    (``v`` in ``[0, 1/2]`` where ``u`` is 0 or 1/2): independent of the basis chosen for the
    lattice and of the sign of ``t``; unchanged by a rotation or mirror of the pattern.
    """
    B, t = np.asarray(basis, dtype=np.float64), np.asarray(t, dtype=np.float64)
    if B.shape != (2, 2) or t.shape != (2,) or not (np.isfinite(B).all() and np.isfinite(t).all()):
        raise Distill4dError(f"basis must be a finite (2, 2) array and t a finite (2,) vector (1/Å), got shapes "
                             f"{B.shape} and {t.shape}")
    if abs(np.linalg.det(B)) <= 1e-12 * float((B * B).sum()):
        raise Distill4dError("basis vectors are parallel: they span no 2D lattice")
    B = _reduced(B)
    uv = np.linalg.solve(B.T, t) % 1.0
    if uv[0] > 0.5 + 1e-9:
        uv = (-uv) % 1.0
    if (uv[0] < 1e-9 or abs(uv[0] - 0.5) < 1e-9) and uv[1] > 0.5:
        uv[1] = (-uv[1]) % 1.0
    return float(uv[0]), float(uv[1])


def _off(x: float, n: int) -> float:
    """Distance of ``x`` to the nearest multiple of ``1 / n``."""
    return abs(x * n - round(x * n)) / n


def lattice3d_features(qx_inv_A: Any, qy_inv_A: Any, intensity: Any, counts: Any, *,
                       direct_beam_inv_A: float = 0.05, intensity_power: float = 0.5,
                       excitation_error_inv_A: float = 0.03) -> np.ndarray:
    """Invariant features ``(P, N_LATTICE3D)`` of each pattern's projected 3D lattice (module docstring).

    Spot lists stored one after another (1/Å, 1/Å, any unit; ``counts`` (P,)). Spots within
    ``direct_beam_inv_A`` (1/Å) of the centre are dropped; weights are ``intensity **
    intensity_power``. A pattern with no 2D lattice gets zeros; one with no spot off the lattice
    gets ``(u, v) = (0, 0)`` and stripe features 0. ``excitation_error_inv_A`` (1/Å) is the relrod
    width ``σ`` of the height columns; those depend on the calibration as ``σ / |g1|`` does, the
    others not at all.
    """
    n_patterns, fits = pattern_lattices(qx_inv_A, qy_inv_A, intensity, counts, direct_beam_inv_A=direct_beam_inv_A,
                                        intensity_power=intensity_power)
    sigma = positive_float("excitation_error_inv_A", excitation_error_inv_A)
    out = np.zeros((n_patterns, N_LATTICE3D))
    for p, x, y, i, w, fit in fits:
        if not np.isfinite(fit["basis"]).all():
            continue
        B = _reduced(fit["basis"])
        g1, g2 = B
        n1 = math.sqrt(g1 @ g1)
        lay = fit_layers(x, y, B)
        layer, t = lay["layer"], lay["t"]
        row = out[p]
        row[0] = math.sqrt(g2 @ g2) / n1
        row[1] = abs(g1 @ g2) / (n1 * math.sqrt(g2 @ g2))
        if np.isfinite(t).all():
            u, v = layer_offset(B, t)
            row[2], row[3] = u, v
            row[4], row[5] = _off(u, 2), _off(v, 2)
            row[6], row[7] = _off(u, 3), _off(v, 3)
            row[8], row[9] = _off(u, 4), _off(v, 4)
            c = np.linalg.solve(B.T, t)
            best = min(np.linalg.norm(t - (math.floor(c[0]) + a) * g1 - (math.floor(c[1]) + b) * g2)
                       for a in (-1, 0, 1, 2) for b in (-1, 0, 1, 2))
            row[10] = best / n1
        m = len(layer)
        row[11] = np.mean(layer == 0)
        row[12] = np.mean(layer == 1)
        row[13] = np.mean(layer == 2)
        row[14] = np.mean(layer > 4)
        ws = w.sum()
        row[15] = w[layer == 0].sum() / ws
        row[16] = w[layer == 1].sum() / ws
        if not np.isfinite(t).all() or m == 0:
            continue
        _height(row, np.log(i), layer, B, t, n1, sigma)
        # the sign of each spot's layer: which multiple of +t or -t put it on the lattice
        q = np.stack([x, y], axis=1)
        on1 = layer == 1
        if on1.sum() >= 2:
            inv = np.linalg.inv(B.T)
            dp = q - t
            dm = q + t
            ep = np.linalg.norm(dp - np.round(dp @ inv.T) @ B, axis=1)
            em = np.linalg.norm(dm - np.round(dm @ inv.T) @ B, axis=1)
            plus, minus = on1 & (ep <= em), on1 & (em < ep)
            if plus.any() and minus.any():
                cp = (w[plus, None] * q[plus]).sum(0) / w[plus].sum()
                cm = (w[minus, None] * q[minus]).sum(0) / w[minus].sum()
                d = (cp - cm) / 2
                dn = math.sqrt(d @ d)
                if dn > 0:
                    z = layer == 0
                    proj = q[z] @ (d / dn)
                    wz = w[z]
                    width = math.sqrt((wz * proj**2).sum() / wz.sum()) if z.any() else 0.0
                    row[17] = dn / n1
                    row[18] = width / n1
                    row[19] = dn / max(width, 1e-3 * n1)
    return out


def _height(row: np.ndarray, logi: np.ndarray, layer: np.ndarray, B: np.ndarray, t: np.ndarray, n1: float,
            sigma: float) -> None:
    """Columns 20-27: the layer height from the layers' intensities, and the reduced 3D cell.

    A spot at excitation error ``s`` has the weight ``exp(-s² / 2σ²)``; the spots of layer ``k`` lie
    about ``k H`` off the sphere where those of layer 0 touch it, so the mean log intensity drops by
    about ``(k H)² / 2σ²`` from layer 0 to layer ``k``: ``H ≈ σ sqrt(2 Δ₁)``. With it the third
    basis vector is ``(t, H)`` and the cell ``g1, g2, (t, H)`` is reduced.
    """
    l0 = logi[layer == 0].mean() if (layer == 0).any() else 0.0
    drops = [l0 - logi[layer == k].mean() if (layer == k).any() else 0.0 for k in (1, 2)]
    row[20], row[21] = drops
    if not (layer == 1).any():
        return
    H = sigma * math.sqrt(2.0 * max(drops[0], 0.0))
    row[22] = H / n1
    if H <= 0:
        return
    b = _reduce3(np.array([[*B[0], 0.0], [*B[1], 0.0], [*t, H]]))
    lengths = np.linalg.norm(b, axis=1)
    row[23], row[24] = lengths[1] / lengths[0], lengths[2] / lengths[0]
    row[25] = abs(b[1] @ b[2]) / (lengths[1] * lengths[2])
    row[26] = abs(b[0] @ b[2]) / (lengths[0] * lengths[2])
    row[27] = abs(b[0] @ b[1]) / (lengths[0] * lengths[1])


def _reduce3(b: np.ndarray) -> np.ndarray:
    """A short basis of the 3D lattice of rows ``b`` (3, 3): pairwise reduction, then ``b3 ± b1 ± b2``."""
    b = b.copy()
    for _ in range(32):
        b, changed = pairwise_reduce(b)
        for s1 in (1, -1):
            for s2 in (1, -1):
                c = b[2] + s1 * b[0] + s2 * b[1]
                if c @ c < b[2] @ b[2] - 1e-12:
                    b[2] = c
                    changed = True
        if not changed:
            break
    return b[np.argsort(np.einsum("ij,ij->i", b, b))]
