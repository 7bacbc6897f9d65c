#!/usr/bin/env python3
"""Experiment (issue 36): each disk fitted as the shifted probe times an interior fixed on the detector.

The argument: the excitation error at detector position q inside disk g is
s(q) = -(2 q.g - |g|^2) / 2K; under a strain g -> (1 + e) g it changes by -e |g| (q.g^ - |g|) / K,
zero at the disk centre and at most r/|g| of the change at a fixed position *relative to the disk*
(-e |g|^2 / K). So the dynamical contrast inside a disk stays (nearly) where it is on the detector
while the disk's rim, the aperture's image, moves with the lattice. Correlation and registered
templates move the contrast with the disk and follow only part of a strain step. Model each disk as

    a * P(q - c) * F_g(q) + b

with P the vacuum probe shifted by a Fourier phase and F_g the interior of reflection g read from
the reference region's mean pattern, F_g = R / P(q - c_ref) where the reference disk is bright
(> ``core`` of the probe's maximum), extended outward by its nearest such pixel. c, a and b are
fitted by Gauss-Newton from correlation's peak (steps clipped to ``clip`` px); F_g is fixed, so
nothing in the model trades against the shift.

Prints its rows (development sets; an experiment recorded in docs/experiments.md, not RESULTS.md).

Usage: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fixed_interior_fit.py SET DOSE [margin_px [iterations [core]]]
  SET: thick | tilt | tilt_gradient | thin; DOSE: 1e5 or nf (noise-free)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import robust_strain_benchmark as rb  # noqa: E402
import strain_vs_py4dstem as svp  # noqa: E402
import whole_pattern_fit as wpf  # noqa: E402
from probe_model_fit import accept_refined, disk_windows  # noqa: E402

from distill4d.bragg import find_bragg_disks, probe_template  # noqa: E402
from distill4d.bragg.peaks import BraggPeaks  # noqa: E402
from distill4d.lattice import strain_map  # noqa: E402


def shifted_probe(P0f, kx, ky, s):
    """The probe window shifted by s (m, 2) px, its x and y gradients: 3 x (m, W, W)."""
    F = P0f[None] * np.exp(-2j * np.pi * (kx * s[:, 0, None, None] + ky * s[:, 1, None, None]))
    return (np.real(np.fft.ifft2(F)), np.real(np.fft.ifft2(F * (2j * np.pi * kx))),
            np.real(np.fft.ifft2(F * (2j * np.pi * ky))))


def interiors(ref_mean, ref_q, probe_win, P0f, kx, ky, base_off, h, core):
    """F_g on the detector around each reference disk: dict (reflection index) -> (W, W) window at ref_q's rint."""
    out = []
    for c in ref_q:
        b = np.rint(c).astype(int)
        win = ref_mean[b[0] - h: b[0] + h + 1, b[1] - h: b[1] + h + 1]
        Pd = shifted_probe(P0f, kx, ky, (c - b - base_off)[None])[0][0]
        bright = Pd > core * Pd.max()
        F = np.where(bright, win / np.where(bright, Pd, 1.0), 0.0)
        idx = ndimage.distance_transform_edt(~bright, return_distances=False, return_indices=True)
        out.append((b, F[idx[0], idx[1]]))
    return out


def fixed_interior_refine(b, qx, qy, ref_q, ref_F, probe, origin_px, radius_px, margin_px=2.0, iterations=12,
                          clip_px=0.25, h=None):
    """Refine padded positions (n, k) in patterns b (n, Qx, Qy); disks matched to the nearest reference disk."""
    r = float(radius_px)
    ii, kk = np.nonzero(np.isfinite(qx) & np.isfinite(qy))
    x0 = np.stack([qx[ii, kk], qy[ii, kk]], 1)
    d2 = ((x0[:, None, :] - ref_q[None]) ** 2).sum(-1)
    j = d2.argmin(1)
    near = d2[np.arange(j.size), j] < 9.0
    ii, kk, x0, j = ii[near], kk[near], x0[near], j[near]
    W = 2 * h + 1
    off = np.arange(-h, h + 1)
    fb_ = np.array([ref_F[m][0] for m in j])  # each disk's window: the reference disk's pixel grid
    data, P0f, fo, kx, ky = disk_windows(b, ii, fb_, probe, origin_px, h)
    Fw = np.stack([ref_F[m][1] for m in j]).reshape(-1, W * W)
    d = x0 - fb_
    u = off[None, :, None] - d[:, 0, None, None]
    v = off[None, None, :] - d[:, 1, None, None]
    w = np.clip(r + margin_px + 0.5 - np.hypot(u, v), 0, 1).reshape(-1, W * W)
    step = np.zeros_like(d)
    for _ in range(iterations):
        Pd, Gx, Gy = (x.reshape(-1, W * W) for x in shifted_probe(P0f, kx, ky, d - fo))
        lin = np.stack([Pd * Fw, np.ones_like(Pd)], -1)
        N = np.einsum("mpi,mp,mpj->mij", lin, w, lin)
        ab = np.linalg.solve(N, np.einsum("mpi,mp,mp->mi", lin, w, data)[..., None])[..., 0]
        resid = data - np.einsum("mpi,mi->mp", lin, ab)
        J = np.stack([lin[..., 0], lin[..., 1], -ab[:, :1] * Gx * Fw, -ab[:, :1] * Gy * Fw], -1)
        N = np.einsum("mpi,mp,mpj->mij", J, w, J)
        sol = np.linalg.solve(N, np.einsum("mpi,mp,mp->mi", J, w, resid)[..., None])[..., 0]
        step = sol[:, 2:]
        d = d + np.clip(step, -clip_px, clip_px)
    ox, oy = accept_refined(qx, qy, ii, kk, fb_ + d, x0)
    return ox, oy, np.hypot(*step.T)


def setup(name: str, dose_text: str, pad_px: float, core: float) -> dict:
    """A development set, correlation's peaks and strain row (printed), and each reference disk's interior:
    the reference region's mean pattern, its disks ``ref_q`` (those whose window of half-width
    ``h = ceil(radius + pad_px)`` fits the detector) and their ``interiors`` (``ref_F``)."""
    from distill4d.datacube import DataCube

    dose = None if dose_text == "nf" else float(dose_text)
    dc, truth, probe = rb.load_set(name, dose)
    expected = svp.expected_strain(truth, (0, svp.LAYER_WIDTH))[0]
    n = dc.n_patterns
    t = time.perf_counter()
    pk = find_bragg_disks(dc, probe, scheduler="inline", progress=False)
    t_corr = time.perf_counter() - t
    sm = strain_map(pk, reference=rb.REF)
    rows = [("correlation", wpf.score(sm, expected, t_corr, n))]
    print(f"{name} {dose_text} correlation        exx {rows[0][1]['strain']['eps_xx']:.3f}", flush=True)
    t = time.perf_counter()
    pt = probe_template(probe, datacube=dc, kind="disk")
    data = np.asarray(dc.data, float)
    ref_mean = data[rb.REF].reshape(-1, *dc.pattern_shape).mean(0)
    rp = find_bragg_disks(DataCube(ref_mean[None, None], calibration=dc.calibration), probe, scheduler="inline",
                          progress=False)
    ref_q = rp[0, 0][:, :2]
    h = int(np.ceil(pt.radius_px + pad_px))
    W = 2 * h + 1
    ob = np.rint(pt.origin_px).astype(int)
    P0f = np.fft.fft2(np.asarray(probe, float)[ob[0] - h: ob[0] + h + 1, ob[1] - h: ob[1] + h + 1])
    kx, ky = np.fft.fftfreq(W)[:, None], np.fft.fftfreq(W)[None, :]
    nxp, nyp = dc.pattern_shape
    inside = (ref_q[:, 0] > h) & (ref_q[:, 0] < nxp - h - 1) & (ref_q[:, 1] > h) & (ref_q[:, 1] < nyp - h - 1)
    ref_q = ref_q[inside]
    base_off = np.asarray(pt.origin_px) - ob
    ref_F = interiors(ref_mean, ref_q, None, P0f, kx, ky, base_off, h, core)
    t_ref = time.perf_counter() - t  # the reference disks and interiors, after correlation
    return dict(dc=dc, probe=probe, expected=expected, n=n, pk=pk, t_corr=t_corr, t_ref=t_ref, pt=pt, rows=rows, data=data,
                ref_mean=ref_mean, ref_q=ref_q, h=h, P0f=P0f, kx=kx, ky=ky, base_off=base_off, ref_F=ref_F)


def main(argv: list[str]) -> int:
    name, dose_text = argv[0], argv[1]
    margin = float(argv[2]) if len(argv) > 2 else 2.0
    iters = int(argv[3]) if len(argv) > 3 else 12
    core = float(argv[4]) if len(argv) > 4 else 0.7
    S = setup(name, dose_text, margin + 2, core)
    dc, probe, expected, n, pk, t_corr, pt, rows, data, ref_q, ref_F, h = (
        S[k] for k in ("dc", "probe", "expected", "n", "pk", "t_corr", "pt", "rows", "data", "ref_q", "ref_F", "h"))
    qx, qy, intensity, count = pk.to_padded()
    b = data.reshape(n, *dc.pattern_shape)
    t = time.perf_counter()
    ox, oy, last = fixed_interior_refine(b, qx.reshape(n, -1), qy.reshape(n, -1), ref_q, ref_F, probe, pt.origin_px,
                                         pt.radius_px, margin_px=margin, iterations=iters, h=h)
    s = time.perf_counter() - t
    peaks = BraggPeaks.from_padded(ox.reshape(qx.shape), oy.reshape(qy.shape), intensity, count, dc.calibration)
    sm = strain_map(peaks, reference=rb.REF)
    rows.append((f"fixed m{margin} it{iters} core{core}", wpf.score(sm, expected,
                                                                   s + t_corr, n)))
    for lab, r in rows:
        print(f"{name} {dose_text} {lab:18s} exx {r['strain']['eps_xx']:.3f} eyy {r['strain']['eps_yy']:.3f} "
              f"exy {r['strain']['eps_xy']:.3f} step {r['step']:.3f} moving {np.percentile(last, 99):.3f} "
              f"{r['patterns_per_s']:.0f} p/s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
