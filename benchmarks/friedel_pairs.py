#!/usr/bin/env python3
"""Experiment (issue 36): Friedel-pair registration of the Bragg disks.

The idea: on zone, a centrosymmetric crystal's pattern is symmetric under inversion through the
direct beam, disk interiors included, so the patch around disk g and the 180°-rotated patch around
disk -g of the same pattern are the same image; their cross-correlation would place the pair
without the probe or a template. Here: correlation's peaks (``detect_batch``), each paired with the
peak nearest to its inversion through the pattern's brightest peak (within 2 px), windows of
``2 r + 3`` px half-width around both (cosine taper beyond ``r + 1`` px), the cross-correlation of
the window of g with the rotated window of -g, its maximum refined by the package's DFT upsampling
(``bragg.detect._dft_refine``, 1/16 px), and the pair written as ``c +- g`` about the centre ``c``
that registration gives, with ``g = (q_g - q_-g) / 2`` of correlation; unpaired peaks keep
correlation's positions (``--drop-unpaired``: dropped).

What the registration measures: with ``A(u) = I(a + u)`` (window of g at the integer pixel a) and
``B(u) = I(b - u)`` (the rotated window of -g at b), inversion symmetry ``I(c + u) = I(c - u)``
gives ``B(u) = A(u + 2c - a - b)``: the peak is at ``2c - a - b``, a function of the inversion
centre ``c`` alone. The pair's separation, and with it g, the lattice and the strain, does not
enter it. ``--synthetic`` checks this on disks with a linear ramp inside (inverted in the partner,
the pattern inversion-symmetric about a known c): the error of the pair centre and of g, per detector.

Prints its rows (RMS error of eps (%) against the truth relative to the first layer, as
``robust_strain_benchmark.py`` scores them; layer bias = RMS of the scan-row means of the error;
patterns/s of the whole batch call, one thread; ``sym``: median ``|q_g + q_-g - 2 q_000|`` of
correlation's pairs, px). An experiment recorded in docs/experiments.md, not RESULTS.md.

Usage: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/friedel_pairs.py [--drop-unpaired] SET@DOSE [SET@DOSE ...]
  SET: thick | tilt | tilt_gradient | thin | thin_low_dose; DOSE: 1e5, 3e3 or nf (noise-free)
       OMP_NUM_THREADS=1 .venv/bin/python benchmarks/friedel_pairs.py --synthetic
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import scipy.fft as sfft

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from distill4d.bragg import BraggPeaks, DetectionParameters, detection_setup, probe_template  # noqa: E402
from distill4d.bragg.detect import _dft_refine, _kernel_ft, _parabolic, detect_batch  # noqa: E402

PAIR_TOLERANCE_PX = 2.0


def partners(q: np.ndarray, o: np.ndarray, tol: float = PAIR_TOLERANCE_PX) -> np.ndarray:
    """Index of each peak's Friedel partner (mutual nearest to its inversion through ``o``), else -1."""
    d = np.hypot(*(2 * o - q[:, None] - q[None]).transpose(2, 0, 1))
    j = np.argmin(d, axis=1)
    i = np.arange(len(j))
    ok = (d[i, j] <= tol) & (j[j] == i) & (j != i)
    return np.where(ok, j, -1)


def _windows(img: np.ndarray, corners: np.ndarray, h: int) -> np.ndarray:
    nx, ny = img.shape
    off = np.arange(-h, h + 1)
    px = np.clip(corners[:, 0, None] + off, 0, nx - 1)
    py = np.clip(corners[:, 1, None] + off, 0, ny - 1)
    return img[px[:, :, None], py[:, None, :]]


def friedel_batch(b: np.ndarray, kft: np.ndarray, params: DetectionParameters, radius_px: float,
                  drop_unpaired: bool = False, margin_px: float = 3.0, up: int = 16) -> dict:
    """Correlation's peaks, then each Friedel pair written as ``c +- g`` (module doc); padded outputs."""
    out = dict(detect_batch(b, kft, params))
    qx, qy, it = out["qx"].copy(), out["qy"].copy(), out["intensity"].copy()
    h = int(math.ceil(2 * radius_px + margin_px))
    W = 2 * h + 1
    off = np.arange(-h, h + 1)
    rr = np.hypot(off[:, None], off[None, :])
    edge = radius_px + 1.0
    taper = np.where(rr <= edge, 1.0, np.cos(0.5 * np.pi * np.clip((rr - edge) / max(h - edge, 1.0), 0, 1)) ** 2)
    pats, gi, gj = [], [], []
    paired = np.zeros(qx.shape, bool)
    for p in range(b.shape[0]):
        c = int(out["count"][p])
        if c < 3:
            continue
        q = np.stack([qx[p, :c], qy[p, :c]], 1)
        j = partners(q, q[0])
        i = np.nonzero(j > np.arange(c))[0]
        pats += [p] * i.size
        gi += list(i)
        gj += list(j[i])
        paired[p, :c] = j >= 0
        paired[p, 0] = True  # the direct beam
    if gi:
        pats, gi, gj = np.array(pats), np.array(gi), np.array(gj)
        a = np.rint(np.stack([qx[pats, gi], qy[pats, gi]], 1)).astype(np.int64)
        bb = np.rint(np.stack([qx[pats, gj], qy[pats, gj]], 1)).astype(np.int64)
        A = np.stack([_windows(b[p], a[k:k + 1], h)[0] for k, p in enumerate(pats)])
        B = np.stack([_windows(b[p], bb[k:k + 1], h)[0][::-1, ::-1] for k, p in enumerate(pats)])
        A = (A - A.mean(axis=(1, 2), keepdims=True)) * taper
        B = (B - B.mean(axis=(1, 2), keepdims=True)) * taper
        M = sfft.rfft2(A) * np.conj(sfft.rfft2(B))
        cc = sfft.irfft2(M, s=(W, W))
        flat = cc.reshape(len(gi), -1).argmax(axis=1)
        ii = np.arange(len(gi))
        fx, fy, _ = _parabolic(cc, ii, flat // W, flat % W)
        fx, fy, _ = _dft_refine(M, ii, fx, fy, (W, W), up)
        s = np.stack([(fx + W // 2) % W - W // 2, (fy + W // 2) % W - W // 2], 1)  # A(u) = B(u - s)
        centre = (a + bb + s) / 2.0
        g = np.stack([qx[pats, gi] - qx[pats, gj], qy[pats, gi] - qy[pats, gj]], 1) / 2.0
        qx[pats, gi], qy[pats, gi] = (centre + g).T
        qx[pats, gj], qy[pats, gj] = (centre - g).T
    if drop_unpaired:
        keep = paired & np.isfinite(qx)
        order = np.argsort(~keep, axis=1, kind="stable")
        take = lambda v: np.take_along_axis(np.where(keep, v, np.nan), order, axis=1)  # noqa: E731
        qx, qy, it = take(qx), take(qy), take(it)
        out["count"] = keep.sum(axis=1).astype(np.int32)
    out["qx"], out["qy"], out["intensity"] = qx, qy, it
    return out


def symmetry_px(res: dict) -> float:
    """Median ``|q_g + q_-g - 2 q_000|`` over correlation's Friedel pairs (px)."""
    d = []
    for p in range(res["qx"].shape[0]):
        c = int(res["count"][p])
        if c < 3:
            continue
        q = np.stack([res["qx"][p, :c], res["qy"][p, :c]], 1)
        j = partners(q, q[0])
        i = np.nonzero(j > np.arange(c))[0]
        d += list(np.hypot(*(q[i] + q[j[i]] - 2 * q[0]).T))
    return float(np.median(d)) if d else float("nan")


def run(name: str, dose, drop_unpaired: bool) -> None:
    import fcunet_benchmark as fb
    import robust_strain_benchmark as rb
    import strain_vs_py4dstem as svp

    dc, truth, probe = rb.load_set(name, dose)
    expected = svp.expected_strain(truth, (0, svp.LAYER_WIDTH))[0]
    template, params = detection_setup(dc, probe)
    kft = _kernel_ft(template)
    stack = np.asarray(dc.data, dtype=np.float64).reshape(-1, *dc.pattern_shape)
    sym = float("nan")
    for m in ("correlation", "friedel"):
        t = time.perf_counter()
        if m == "correlation":
            res = detect_batch(stack, kft, params)
            sym = symmetry_px(res)
        else:
            res = friedel_batch(stack, kft, params, template.radius_px, drop_unpaired)
        s = time.perf_counter() - t
        sh = dc.scan_shape + (res["qx"].shape[1],)
        pk = BraggPeaks.from_padded(res["qx"].reshape(sh), res["qy"].reshape(sh), res["intensity"].reshape(sh),
                                    res["count"].reshape(dc.scan_shape), dc.calibration, params={"method": m})
        r = fb.strain_result(pk, truth.bragg_peaks(), expected, rb.REF)
        st, pa = r["strain"], r["strain_parts"]
        label = "nf" if dose is None else f"{dose:.0e}".replace("e+0", "e")
        print(f"{name:14s} {label:4s} {m:12s} eps_xx {st['eps_xx']:.3f} eps_yy {st['eps_yy']:.3f} "
              f"eps_xy {st['eps_xy']:.3f} bias {pa['eps_xx']['rows']:.3f} / {pa['eps_yy']['rows']:.3f} "
              f"{dc.n_patterns / s:.0f} patterns/s" + (f"  sym {sym:.3f} px" if m == "correlation" else ""), flush=True)


def synthetic(seed: int = 0, n: int = 8, size: int = 128, radius: float = 6.0, ramp: float = 0.6) -> None:
    """Disks with a ramp inside, pattern inversion-symmetric about a known centre: centre and g errors."""
    x = np.arange(size)[:, None]
    y = np.arange(size)[None, :]

    def disk(cx, cy, direction, slope):
        m = np.clip(radius + 0.5 - np.hypot(x - cx, y - cy), 0, 1)
        return m * (1 + slope * ((x - cx) * direction[0] + (y - cy) * direction[1]) / radius)

    rng = np.random.default_rng(seed)
    gs = [np.array([20.3, 1.1]), np.array([-2.2, 18.7]), np.array([18.1, 19.8])]
    pats, truths = [], []
    for _ in range(n):
        c = np.array([63.3, 64.6]) + rng.uniform(-0.5, 0.5, 2)
        img = 3 * disk(*c, (1, 0), 0.0)
        for g in gs:
            d = rng.normal(size=2)
            d /= np.linalg.norm(d)
            img = img + disk(*(c + g), d, ramp) + disk(*(c - g), -d, ramp)
        pats.append(img)
        truths.append((c, gs))
    b = np.stack(pats)
    template = probe_template(disk(size // 2, size // 2, (1, 0), 0.0), kind="disk")
    params = DetectionParameters(radius_px=template.radius_px, edge_px=radius + 2, min_spacing_px=2 * radius)
    kft = _kernel_ft(template)
    for name, res in (("correlation", detect_batch(b, kft, params)),
                      ("friedel", friedel_batch(b, kft, params, template.radius_px))):
        ce, ge = [], []
        for p, (c, g_true) in enumerate(truths):
            q = np.stack([res["qx"][p, :res["count"][p]], res["qy"][p, :res["count"][p]]], 1)
            for g in g_true:
                i = np.argmin(np.hypot(*(q - c - g).T))
                j = np.argmin(np.hypot(*(q - c + g).T))
                ce.append(np.hypot(*((q[i] + q[j]) / 2 - c)))
                ge.append(np.hypot(*((q[i] - q[j]) / 2 - g)))
        print(f"synthetic {name:12s} pair centre error median {np.median(ce):.3f} px, "
              f"g error median {np.median(ge):.3f} px (ramp {ramp} across the disk radius {radius} px)")


def main(argv: list[str]) -> int:
    if "--synthetic" in argv:
        synthetic()
        return 0
    drop = "--drop-unpaired" in argv
    for spec in (a for a in argv if not a.startswith("--")):
        name, dose = spec.split("@")
        run(name, None if dose == "nf" else float(dose), drop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
