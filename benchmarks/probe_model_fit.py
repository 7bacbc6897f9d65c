#!/usr/bin/env python3
"""Experiment (issue 36): each disk fitted by the shifted vacuum probe times a smooth interior.

The idea: a disk's edge is the condenser aperture's image, centred on the lattice point whatever
the dynamics; what biases correlation is the uneven intensity inside and along the edge. Model
each disk (a circular window of radius r + ``margin`` px around correlation's peak) as

    P(x - c) * poly(x) + b

with P the vacuum probe image shifted by a Fourier phase (its edge profile and pixel integration
exact), poly a low-order polynomial of the window coordinates (``const``: 1; ``linear``: 1, u, v;
``bilinear``: + uv; ``quadratic``: + u², v²; u, v in disk radii) and b a constant background.
poly and b are linear for a fixed centre c; c takes Gauss-Newton steps from correlation's peak
(derivatives from the shifted probe's gradient), each step clipped to ``clip`` px.

Sets: the development sets of ``robust_strain_benchmark.py`` (the held-out sets are not used:
nothing here ships). Columns as in ``whole_pattern_fit.py``: RMS error of eps (%) against the
truth relative to the first layer, ``step`` = the strained layers' mean eps_xx over the true
-1.98 %, patterns/s of correlation plus the fit (one thread), and ``moving``: the 99th percentile
of the last Gauss-Newton step before its clip (px; 0 = every disk converged).

Prints its rows and writes benchmarks/data/probe_model_fit_<set>_<dose>.json (an experiment,
recorded in docs/experiments.md, not RESULTS.md).

Usage: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/probe_model_fit.py SET DOSE CONFIG [CONFIG ...]
  SET: thick | tilt | tilt_gradient; DOSE: 1e5 or nf (noise-free);
  CONFIG: interior[:margin_px[:iterations[:clip_px]]], e.g. linear:2:40:0.25 (the defaults)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import robust_strain_benchmark as rb  # noqa: E402
import strain_vs_py4dstem as svp  # noqa: E402
import whole_pattern_fit as wpf  # noqa: E402

from distill4d.bragg import find_bragg_disks, probe_template  # noqa: E402
from distill4d.bragg.peaks import BraggPeaks  # noqa: E402
from distill4d.lattice import strain_map  # noqa: E402

DEVELOPMENT = ("thick", "tilt", "tilt_gradient")


def interior_terms(u: np.ndarray, v: np.ndarray, kind: str) -> np.ndarray:
    """The interior polynomial's terms (..., p) at window coordinates u, v (disk radii)."""
    terms = {"const": [np.ones_like(u)], "linear": [np.ones_like(u), u, v]}
    terms["bilinear"] = terms["linear"] + [u * v]
    terms["quadratic"] = terms["bilinear"] + [u * u, v * v]
    return np.stack(terms[kind], -1)


def disk_windows(b, ii, base, probe, origin_px, h: int):
    """The (2h + 1)² windows of patterns b[ii] about integer centres base (m, 2), flattened (m, W²);
    the FFT of the probe's window about its integer origin, the origin's fraction, and the
    window's frequencies (kx, ky)."""
    W = 2 * h + 1
    nx, ny = b.shape[1:]
    off = np.arange(-h, h + 1)
    px = np.clip(base[:, 0, None] + off, 0, nx - 1)
    py = np.clip(base[:, 1, None] + off, 0, ny - 1)
    data = b[ii[:, None, None], px[:, :, None], py[:, None, :]].reshape(-1, W * W)
    ob = np.rint(origin_px).astype(int)
    fo = np.asarray(origin_px, float) - ob
    P0f = np.fft.fft2(np.asarray(probe, float)[ob[0] - h: ob[0] + h + 1, ob[1] - h: ob[1] + h + 1])
    return data, P0f, fo, np.fft.fftfreq(W)[:, None], np.fft.fftfreq(W)[None, :]


def probe_model_refine(b, qx, qy, probe, origin_px, radius_px, kind="linear", margin_px=2.0, iterations=40,
                       clip_px=0.25, extra_px=4):
    """Refine padded positions qx, qy (n, k) in patterns b (n, Qx, Qy).

    Returns (qx, qy, the last unclipped Gauss-Newton step of each disk, px)."""
    r = float(radius_px)
    h = int(np.ceil(r + extra_px))
    W = 2 * h + 1
    ii, kk = np.nonzero(np.isfinite(qx) & np.isfinite(qy))
    x0 = np.stack([qx[ii, kk], qy[ii, kk]], 1)
    base = np.rint(x0).astype(int)
    off = np.arange(-h, h + 1)
    data, P0f, fo, kx, ky = disk_windows(b, ii, base, probe, origin_px, h)
    frac = x0 - base
    u = ((off[None, :, None] - frac[:, 0, None, None]) / r + 0 * off[None, None, :]).reshape(-1, W * W)
    v = ((off[None, None, :] - frac[:, 1, None, None]) / r + 0 * off[None, :, None]).reshape(-1, W * W)
    w = np.clip(r + margin_px + 0.5 - np.hypot(u, v) * r, 0, 1)
    T = interior_terms(u, v, kind)
    p = T.shape[-1]
    d = frac.copy()
    a = None
    step = np.zeros_like(d)
    for _ in range(iterations):
        s = d - fo
        F = P0f[None] * np.exp(-2j * np.pi * (kx * s[:, 0, None, None] + ky * s[:, 1, None, None]))
        Pd = np.real(np.fft.ifft2(F)).reshape(-1, W * W)
        Gx = np.real(np.fft.ifft2(F * (2j * np.pi * kx))).reshape(-1, W * W)
        Gy = np.real(np.fft.ifft2(F * (2j * np.pi * ky))).reshape(-1, W * W)
        lin = np.concatenate([Pd[..., None] * T, np.ones_like(Pd)[..., None]], -1)
        if a is None:  # the linear part alone at the start
            N = np.einsum("mpi,mp,mpj->mij", lin, w, lin)
            a = np.linalg.solve(N, np.einsum("mpi,mp,mp->mi", lin, w, data)[..., None])[..., 0]
        poly = np.einsum("mpi,mi->mp", T, a[:, :p])
        J = np.concatenate([lin, (-Gx * poly)[..., None], (-Gy * poly)[..., None]], -1)
        N = np.einsum("mpi,mp,mpj->mij", J, w, J)
        sol = np.linalg.solve(N, np.einsum("mpi,mp,mp->mi", J, w, data)[..., None])[..., 0]
        a = sol[:, :p + 1]
        step = sol[:, p + 1:]
        d = d + np.clip(step, -clip_px, clip_px)
    ox, oy = accept_refined(qx, qy, ii, kk, base + d, x0)
    return ox, oy, np.hypot(*step.T)


def accept_refined(qx, qy, ii, kk, c, x0, max_px: float = 2.0):
    """Copies of padded qx, qy (n, k) with entries (ii, kk) set to the refined centres c (m, 2)
    where they moved less than ``max_px`` from their starts x0 (m, 2), else kept at the start."""
    ok = np.hypot(*(c - x0).T) < max_px
    ox, oy = qx.copy(), qy.copy()
    ox[ii, kk] = np.where(ok, c[:, 0], x0[:, 0])
    oy[ii, kk] = np.where(ok, c[:, 1], x0[:, 1])
    return ox, oy


def main(argv: list[str]) -> int:
    name, dose_text, configs = argv[0], argv[1], argv[2:]
    if name not in DEVELOPMENT:
        raise SystemExit(f"SET must be one of {DEVELOPMENT} (development sets only), got {name!r}")
    dose = None if dose_text == "nf" else float(dose_text)
    dc, truth, probe = rb.load_set(name, dose)
    expected = svp.expected_strain(truth, (0, svp.LAYER_WIDTH))[0]
    t = time.perf_counter()
    pk = find_bragg_disks(dc, probe, scheduler="inline", progress=False)
    t_corr = time.perf_counter() - t
    pt = probe_template(probe, datacube=dc, kind="disk")
    sm = strain_map(pk, reference=rb.REF)
    rows = [{"method": "correlation", **wpf.score(sm, expected, t_corr,
                                                   dc.n_patterns)}]
    qx, qy, intensity, count = pk.to_padded()
    n = dc.n_patterns
    b = np.asarray(dc.data, float).reshape(n, *dc.pattern_shape)
    for cfg in configs:
        parts = cfg.split(":")
        kind = parts[0]
        margin, iters, clip = (float(parts[1]) if len(parts) > 1 else 2.0, int(parts[2]) if len(parts) > 2 else 40,
                               float(parts[3]) if len(parts) > 3 else 0.25)
        t = time.perf_counter()
        ox, oy, last = probe_model_refine(b, qx.reshape(n, -1), qy.reshape(n, -1), probe, pt.origin_px, pt.radius_px,
                                          kind=kind, margin_px=margin, iterations=iters, clip_px=clip)
        s = time.perf_counter() - t
        peaks = BraggPeaks.from_padded(ox.reshape(qx.shape), oy.reshape(qy.shape), intensity, count, dc.calibration)
        sm = strain_map(peaks, reference=rb.REF)
        rows.append({"method": cfg, "moving": float(np.percentile(last, 99)),
                     **wpf.score(sm, expected, s + t_corr, n)})
    for r in rows:
        print(f"{name} {dose_text} {r['method']:18s} exx {r['strain']['eps_xx']:.3f} eyy {r['strain']['eps_yy']:.3f} "
              f"step {r['step']:.3f} moving {r.get('moving', 0):.3f} {r['patterns_per_s']:.0f} p/s", flush=True)
    (HERE / "data").mkdir(exist_ok=True)
    (HERE / "data" / f"probe_model_fit_{name}_{dose_text}.json").write_text(json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
