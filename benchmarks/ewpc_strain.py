#!/usr/bin/env python3
"""Experiment (issue 36): strain from the exit-wave power cepstrum (EWPC) of each pattern.

Padgett, Holtz, Muller et al., Ultramicroscopy 214 (2020) 112994. The cepstrum
``C(r) = DFT(w (log(I / <I> + c) - m))`` of a pattern ``I`` (``w`` a window, ``m`` the windowed
mean of the log, ``c`` against the log of empty pixels) has sharp peaks at the real-space
lattice vectors; the log turns a disk intensity that varies slowly over the pattern (thickness,
tilt) into an additive term near r = 0, and a contrast common to every disk changes only the
phase of a peak, which ``|C|`` does not see.

Here: the two basis vectors are the strongest non-collinear peaks of the reference layer's mean
``|C|^2`` (refined on the reference layer's mean pattern); in every pattern the peaks at ``a``,
``b``, ``a + b``, ``a - b`` (``orders=2``: also the second-order combinations; ``orders=3``: every
combination up to 3) are refined by Newton steps on ``log |C(r)|^2``, with ``C`` and its first and
second derivatives evaluated exactly as discrete Fourier sums at the current ``r`` (batched matrix
products; no interpolation), and the lattice ``A`` (columns a, b) is their least-squares fit
(weighted by ``|C|^2``, or not: ``weighted=0``). A peak at ``r`` cepstrum pixels is the real-space
vector ``(r_x / Qx, r_y / Qy)`` per reciprocal pixel, so ``F = A A_ref^-1`` (``A_ref`` the reference
layer's median) and the strain is ``lattice.strain_from_deformation(F)``, the package's convention.

Variants (``--config key=value,...``): ``c``; ``window`` (hann, tukeyA, gaussS: sigma S px, none); ``smooth`` (a
Gaussian blur of sigma px before the log); ``transform`` (log, or powP: ``(I/<I> + c)^P``);
``motif``: the peak searched in ``|C|^2 / |M|^2`` with ``M`` the cepstrum of one disk: ``probe``
(the vacuum probe), ``logprobe`` (its log), ``folded`` (each pattern's own mean disk: the log
pattern less ``log c`` in a window of radius r + 1.5 px around every lattice point of the seed
lattice, weighted by the window there, summed), ``folded_ref`` (one motif: the reference layer's
mean pattern folded); ``weighted=2``: each order weighted by 1 / the variance of its position over
the reference layer (noisy data only: noise-free the variances are ~0). The paper's transform is the default
(``c=0.1``, hann, first orders, no motif); the best variant on the development sets was
``motif=folded,orders=2,c=0.3``.

Sets and errors as in ``robust_strain_benchmark.py`` (RMS of eps (%) and theta (deg) against the
truth relative to the first layer; layer bias = RMS of the scan-row means of the error).
``correlation`` (``find_bragg_disks`` + ``strain_map``) runs side by side for the patterns/s ratio
(one thread; the 2 cores are shared, so only the ratio means much). ``--held-out`` runs
only ``thick_45nm`` and ``tilt_gradient_y`` (run once, to report; never tuned on).

Prints its rows and writes benchmarks/data/ewpc_strain.json (an experiment, recorded in
docs/experiments.md, not RESULTS.md).

Usage: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ewpc_strain.py [--sets thick,tilt] [--held-out]
       [--config "" "motif=folded,orders=2,c=0.3" ...]   # the two reported rows
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import fcunet_benchmark as fb  # noqa: E402
import robust_strain_benchmark as rb  # noqa: E402
import strain_vs_py4dstem as svp  # noqa: E402

from distill4d.bragg import find_bragg_disks  # noqa: E402
from distill4d.lattice import strain_from_deformation, strain_map  # noqa: E402

ORDERS = {
    "1": np.array([[1, 0], [0, 1], [1, 1], [1, -1]], dtype=np.float64),
    "2": np.array([[1, 0], [0, 1], [1, 1], [1, -1], [2, 0], [0, 2], [2, 1], [1, 2], [2, -1], [1, -2]],
                  dtype=np.float64),
}
# every combination up to 3 (the basis first: the weights are relative to its stronger peak)
ORDERS["3"] = np.array([[1, 0], [0, 1]] + [[h, k] for h in range(4) for k in range(-3, 4)
                                           if (h > 0 or k > 0) and (h, k) not in ((1, 0), (0, 1))], dtype=np.float64)
DEFAULT = {"c": 0.1, "window": "hann", "orders": "1", "weighted": 1, "motif": "none", "smooth": 0.0,
           "transform": "log"}
DEV = [("thin", 1e5), ("thin", None), ("thin_low_dose", 3e3), ("thick", 1e5), ("thick", None),
       ("tilt", 1e5), ("tilt", None), ("tilt_gradient", 1e5), ("tilt_gradient", None)]
HELD_OUT = [("thick_45nm", 1e5), ("tilt_gradient_y", 1e5)]


def window(n: int, kind: str) -> np.ndarray:
    if kind == "hann":
        return np.hanning(n)
    if kind.startswith("gauss"):  # a Gaussian of sigma S px about the centre
        return np.exp(-0.5 * ((np.arange(n) - n // 2) / float(kind[5:])) ** 2)
    if kind.startswith("tukey"):
        from scipy.signal.windows import tukey

        return tukey(n, float(kind[5:]))
    return np.ones(n)


TRANSFORM = "log"


def transform(x: np.ndarray, c: float) -> np.ndarray:
    """``log(x + c)`` (``TRANSFORM`` "log") or ``(x + c)^p`` ("powP")."""
    if TRANSFORM == "log":
        return np.log(x + c)
    return (x + c) ** float(TRANSFORM[3:])


def log_patterns(p: np.ndarray, c: float, kind: str) -> np.ndarray:
    """``w (log(I / <I> + c) - m)`` of each pattern ``(N, Qx, Qy)``."""
    p = np.asarray(p, dtype=np.float64)
    mean = p.mean(axis=(-2, -1), keepdims=True)
    L = transform(np.maximum(p / np.where(mean > 0, mean, 1.0), 0.0), c)
    w = window(p.shape[-2], kind)[:, None] * window(p.shape[-1], kind)[None, :]
    return (L - (L * w).sum(axis=(-2, -1), keepdims=True) / w.sum()) * w


def seed(L: np.ndarray, min_radius: float = 3.0) -> np.ndarray:
    """Two lattice vectors (columns, cepstrum px, integer) from the strongest non-collinear peaks of
    the mean ``|C|^2`` of the log patterns ``L``."""
    F = np.fft.fft2(L)
    C = np.fft.fftshift((F.real**2 + F.imag**2).mean(axis=0))
    nx, ny = C.shape
    rx, ry = np.arange(nx)[:, None] - nx // 2, np.arange(ny)[None, :] - ny // 2
    rad = np.hypot(rx, ry)
    pk = (C == ndimage.maximum_filter(C, size=3, mode="wrap")) & (rad >= min_radius) & (rad <= 0.45 * min(nx, ny))
    ix, iy = np.nonzero(pk)
    order = np.argsort(C[ix, iy])[::-1]
    vec = np.stack([ix[order] - nx // 2, iy[order] - ny // 2], axis=1).astype(np.float64)
    a = vec[0]
    for b in vec[1:]:
        if abs(a[0] * b[1] - a[1] * b[0]) / (np.hypot(*a) * np.hypot(*b)) > math.sin(math.radians(20)):
            return np.column_stack([a, b])
    raise RuntimeError("no two non-collinear cepstrum peaks")


def _log_power_derivatives(C, Cx, Cy, Cxx, Cxy, Cyy):
    """``|C|^2`` and the gradient and Hessian of ``log |C|^2`` from C and its complex derivatives."""
    f = C.real**2 + C.imag**2
    cc = np.conj(C)
    gx, gy = 2 * (cc * Cx).real, 2 * (cc * Cy).real
    hxx = 2 * ((np.conj(Cx) * Cx).real + (cc * Cxx).real)
    hyy = 2 * ((np.conj(Cy) * Cy).real + (cc * Cyy).real)
    hxy = 2 * ((np.conj(Cx) * Cy).real + (cc * Cxy).real)
    fs = np.maximum(f, 1e-300)
    g = np.stack([gx / fs, gy / fs], -1)
    H = np.stack([np.stack([hxx / fs - g[..., 0] ** 2, hxy / fs - g[..., 0] * g[..., 1]], -1),
                  np.stack([hxy / fs - g[..., 0] * g[..., 1], hyy / fs - g[..., 1] ** 2], -1)], -2)
    return f, g, H


def _sums(L: np.ndarray, r: np.ndarray, kx: np.ndarray, ky: np.ndarray):
    """``|C|^2`` at ``r`` (N, P, 2) and the gradient and Hessian of ``log |C|^2`` there."""
    P = r.shape[1]
    dx = -1j * kx[None, :, None]
    ey = np.exp(-1j * ky[None, None, :] * r[:, :, 1:2])  # (N, P, Qy)
    exT = np.swapaxes(np.exp(-1j * kx[None, None, :] * r[:, :, 0:1]), 1, 2)  # (N, Qx, P)
    M = L @ np.swapaxes(np.concatenate([ey, ey * (-1j * ky), ey * (-(ky**2))], axis=1), 1, 2)
    M0, My, Myy = M[:, :, :P], M[:, :, P:2 * P], M[:, :, 2 * P:]
    C, Cx, Cxx = (M0 * exT).sum(1), (M0 * exT * dx).sum(1), (M0 * exT * dx * dx).sum(1)
    Cy, Cxy, Cyy = (My * exT).sum(1), (My * exT * dx).sum(1), (Myy * exT).sum(1)
    return _log_power_derivatives(C, Cx, Cy, Cxx, Cxy, Cyy)


def _window_sums(m: np.ndarray, d: np.ndarray, r: np.ndarray, shape):
    """As :func:`_sums` for small per-pattern windows ``m`` (N, D, D) at offsets ``d`` (D,) px."""
    kx = 2 * np.pi * d / shape[0]
    ky = 2 * np.pi * d / shape[1]
    ex = np.exp(-1j * kx[None, None, :] * r[:, :, 0:1])  # (N, P, D)
    ey = np.exp(-1j * ky[None, None, :] * r[:, :, 1:2])
    fx, fy = -1j * kx, -1j * ky
    def S(ax, ay):
        return np.einsum("nxy,npx,npy->np", m, ex * ax, ey * ay)
    C, Cx, Cy = S(1, 1), S(fx, 1), S(1, fy)
    Cxx, Cxy, Cyy = S(fx * fx, 1), S(fx, fy), S(1, fy * fy)
    return _log_power_derivatives(C, Cx, Cy, Cxx, Cxy, Cyy)


def folded_motif(p: np.ndarray, A0: np.ndarray, c: float, kind: str, origin, radius: float):
    """Each pattern's mean disk in the log domain: ``log(I/<I> + c) - log c`` in a window of radius
    ``radius + 1.5`` px around every reciprocal lattice point of the seed lattice ``A0`` (nearest
    pixel), weighted by the pattern window there and summed. Returns ((N, D, D), offsets (D,))."""
    p = np.asarray(p, dtype=np.float64)
    n, qx, qy = p.shape
    mean = p.mean(axis=(-2, -1), keepdims=True)
    U = transform(np.maximum(p / np.where(mean > 0, mean, 1.0), 0.0), c) - transform(np.zeros(1), c)
    G = np.linalg.inv((A0 / np.array([[qx], [qy]]))).T  # columns u, v in px
    W = int(math.ceil(radius + 1.5))
    d = np.arange(-W, W + 1)
    hk = np.stack(np.meshgrid(np.arange(-12, 13), np.arange(-12, 13), indexing="ij"), -1).reshape(-1, 2)
    g = np.asarray(origin, float)[None] + hk @ G.T
    gi = np.rint(g).astype(int)
    inside = (gi[:, 0] - W >= 0) & (gi[:, 0] + W < qx) & (gi[:, 1] - W >= 0) & (gi[:, 1] + W < qy)
    gi = gi[inside]
    wx, wy = window(qx, kind), window(qy, kind)
    wg = wx[gi[:, 0]] * wy[gi[:, 1]]
    mask = (d[:, None] ** 2 + d[None, :] ** 2) <= (radius + 1.5) ** 2
    m = np.zeros((n, d.size, d.size))
    for (x, y), w in zip(gi, wg):
        m += w * U[:, x - W:x + W + 1, y - W:y + W + 1]
    return m * mask, d


def refine(L: np.ndarray, r0: np.ndarray, iterations: int = 4, max_step: float = 0.5, motif=None):
    """Newton steps on ``log |C(r)|^2`` (less ``log |M(r)|^2``, ``M`` the cepstrum of ``motif``, when
    given) from ``r0`` ``(N, P, 2)``; ``C`` and its derivatives as exact Fourier sums. Returns the
    positions and ``|C|^2`` there."""
    n, qx, qy = L.shape
    kx = 2 * np.pi * (np.arange(qx) - qx // 2) / qx  # |C| does not depend on the q origin
    ky = 2 * np.pi * (np.arange(qy) - qy // 2) / qy
    r = np.array(r0, dtype=np.float64)
    for it in range(iterations + 1):
        f, g, H = _sums(L, r, kx, ky)
        if it == iterations:
            return r, f
        if isinstance(motif, tuple):  # per-pattern folded motifs
            _, gm, Hm = _window_sums(motif[0], motif[1], r, (qx, qy))
            g = g - gm
            H = H - Hm
        elif motif is not None:
            _, gm, Hm = _sums(motif[None], r.reshape(1, -1, 2), kx, ky)
            g = g - gm.reshape(g.shape)
            H = H - Hm.reshape(H.shape)
        hxx, hxy, hyy, gx, gy = H[..., 0, 0], H[..., 0, 1], H[..., 1, 1], g[..., 0], g[..., 1]
        det = hxx * hyy - hxy**2
        ok = (det > 0) & (hxx < 0)  # concave: Newton; else a gradient step of max_step
        dsafe = np.where(ok, det, 1.0)
        gn = np.hypot(gx, gy) + 1e-300
        sx = np.where(ok, -(hyy * gx - hxy * gy) / dsafe, max_step * gx / gn)
        sy = np.where(ok, -(hxx * gy - hxy * gx) / dsafe, max_step * gy / gn)
        f = np.minimum(1.0, max_step / np.maximum(np.hypot(sx, sy), 1e-300))
        r[:, :, 0] += sx * f
        r[:, :, 1] += sy * f


def motif_pattern(probe: np.ndarray, kind: str, c: float, window_kind: str):
    """The one-disk pattern whose cepstrum divides the patterns' (``kind``: none, probe, logprobe)."""
    if kind == "none":
        return None
    P = np.asarray(probe, dtype=np.float64)
    P = P / P.max()
    if kind == "probe":
        m = P
    elif kind == "logprobe":  # the log of a disk as bright as the mean pattern's direct beam
        m = np.log(P * 100.0 + c) - np.log(c)
    else:
        raise SystemExit(f"unknown motif {kind!r}")
    w = window(P.shape[0], window_kind)[:, None] * window(P.shape[1], window_kind)[None, :]
    return (m * w).astype(np.complex128)


def ewpc_lattice(patterns: np.ndarray, ref: np.ndarray, cfg: dict, probe=None, origin=None, chunk: int = 64) -> np.ndarray:
    """``(N, 2, 2)`` lattice vectors (columns, cepstrum px) of ``patterns``; seeded on ``ref``."""
    c, kind, O = float(cfg["c"]), str(cfg["window"]), ORDERS[str(cfg["orders"])]
    global TRANSFORM
    TRANSFORM = str(cfg["transform"])
    if float(cfg["smooth"]) > 0:
        patterns = ndimage.gaussian_filter(np.asarray(patterns, dtype=np.float64), (0, cfg["smooth"], cfg["smooth"]))
        ref = ndimage.gaussian_filter(np.asarray(ref, dtype=np.float64), (0, cfg["smooth"], cfg["smooth"]))
    folded = str(cfg["motif"]) == "folded"
    motif = None if str(cfg["motif"]).startswith("folded") else motif_pattern(probe, str(cfg["motif"]), c, kind)
    radius = math.sqrt((np.asarray(probe) > 0.5 * np.max(probe)).sum() / math.pi) if probe is not None else 4.0
    Lr = log_patterns(ref, c, kind)
    A0 = seed(Lr)
    r, _ = refine(log_patterns(ref.mean(axis=0)[None], c, kind), A0.T[None].copy(), iterations=8, motif=motif)
    A0 = r[0].T
    if str(cfg["motif"]) == "folded_ref":  # one motif: the reference layer's mean pattern folded
        m, d = folded_motif(ref.mean(axis=0)[None], A0, c, kind, origin, radius)
    wj = None
    if int(cfg["weighted"]) == 2:  # each order weighted by 1 / its position variance over the reference
        mr = folded_motif(ref, A0, c, kind, origin, radius) if folded else motif
        if str(cfg["motif"]) == "folded_ref":
            mr = (np.broadcast_to(m, (len(ref),) + m.shape[1:]), d)
        rr, _ = refine(Lr, np.broadcast_to(O @ A0.T, (len(ref), len(O), 2)).copy(), motif=mr)
        wj = 1.0 / np.maximum(rr.var(axis=0).sum(axis=-1), 1e-12)
    out = []
    for i in range(0, len(patterns), chunk):
        L = log_patterns(patterns[i:i + chunk], c, kind)
        if folded:
            motif = folded_motif(patterns[i:i + chunk], A0, c, kind, origin, radius)
        elif str(cfg["motif"]) == "folded_ref":
            motif = (np.broadcast_to(m, (len(L),) + m.shape[1:]), d)
        r, val = refine(L, np.broadcast_to(O @ A0.T, (len(L), len(O), 2)).copy(), motif=motif)
        if wj is not None:
            w = np.broadcast_to(wj, val.shape)
        else:
            w = val / val[:, :2].max(axis=1, keepdims=True) if int(cfg["weighted"]) else np.ones_like(val)
        Wn = O[None] * w[:, :, None]
        At = np.linalg.solve(np.einsum("npi,pj->nij", Wn, O), np.einsum("npi,npd->nid", Wn, r))
        out.append(np.swapaxes(At, 1, 2))
    return np.concatenate(out)


def errors(st: dict, expected: dict) -> dict:
    e = svp.strain_errors(st, expected)
    parts = {k: fb.error_parts(st[k], expected[k]) for k in ("eps_xx", "eps_yy")}
    return {"strain": e, "layer_bias": {k: v["rows"] for k, v in parts.items()}}


def run_set(name: str, dose, configs: list[dict]) -> dict:
    dc, truth, probe = rb.load_set(name, dose)
    d = np.asarray(dc.data, dtype=np.float64)
    R, Q = d.shape[:2], d.shape[2:]
    expected = svp.expected_strain(truth, (0, svp.LAYER_WIDTH))[0]
    out: dict = {}
    t = time.perf_counter()
    pk = find_bragg_disks(dc, probe, scheduler="inline", progress=False)
    sm = strain_map(pk, reference=rb.REF)
    s = time.perf_counter() - t
    out["correlation"] = errors({k: getattr(sm, k) for k in rb.KEYS}, expected) | {"patterns_per_s": d.shape[0] * d.shape[1] / s}
    for cfg in configs:
        label = ",".join(f"{k}={v}" for k, v in cfg.items())
        t = time.perf_counter()
        A = ewpc_lattice(d.reshape(-1, *Q), d[rb.REF].reshape(-1, *Q), cfg, probe, dc.calibration.origin_px).reshape(R + (2, 2))
        Aref = np.median(A[rb.REF].reshape(-1, 2, 2), axis=0)
        st = strain_from_deformation(A @ np.linalg.inv(Aref))
        s = time.perf_counter() - t
        out[f"ewpc {label}"] = errors(st, expected) | {"patterns_per_s": d.shape[0] * d.shape[1] / s}
    dose_label = "noise-free" if dose is None else f"{dose:.0e}".replace("e+0", "e")
    for m, r in out.items():
        e, b = r["strain"], r["layer_bias"]
        print(f"| `{name}` | {dose_label} | {m} | {e['eps_xx']:.3f} | {e['eps_yy']:.3f} | {e['eps_xy']:.3f} | "
              f"{e['theta']:.4f} | {b['eps_xx']:.3f} / {b['eps_yy']:.3f} | {r['patterns_per_s']:.0f} |", flush=True)
    return out


def parse_config(text: str) -> dict:
    cfg = dict(DEFAULT)
    for item in filter(None, text.split(",")):
        k, v = item.split("=")
        if k not in cfg:
            raise SystemExit(f"unknown config key {k!r}; known: {sorted(cfg)}")
        cfg[k] = type(DEFAULT[k])(v)
    return cfg


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sets", default=None, help="comma-separated development sets (default: all)")
    p.add_argument("--held-out", action="store_true", help="only the held-out sets, to report")
    p.add_argument("--config", nargs="*", default=[""], help="EWPC settings, e.g. c=0.1,window=hann,orders=1,weighted=1")
    a = p.parse_args(argv)
    configs = [parse_config(c) for c in a.config]
    plan = HELD_OUT if a.held_out else [s for s in DEV if a.sets is None or s[0] in a.sets.split(",")]
    print("| set | dose | method | eps_xx | eps_yy | eps_xy | theta | layer bias xx / yy | patterns/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    path = HERE / "data" / "ewpc_strain.json"
    raw = json.loads(path.read_text()) if path.exists() else {}
    for name, dose in plan:
        key = f"{name}@{'noise-free' if dose is None else f'{dose:.0e}'}"
        raw[key] = run_set(name, dose, configs)
        path.write_text(json.dumps(raw, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
