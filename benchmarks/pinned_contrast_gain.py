#!/usr/bin/env python3
"""Experiment (issue 36): correlation's per-reflection response to a lattice shift, measured on the
scan's own reference pattern with the disk contrast pinned on the detector, then inverted.

The argument (that of ``fixed_interior_fit.py``): under a strain the excitation error at a fixed
detector position inside disk g changes by at most r/|g| of its change at a fixed position relative to
the disk, so the dynamical contrast stays (nearly) where it is on the detector while the rim moves with
the lattice. Correlation weighs the contrast with the rim, so its peak moves by only part of the rim's
shift: R_g d instead of d, R_g a 2 x 2 response per reflection. ``fixed_interior_fit.py`` fitted every
disk with that model, and its answer hung on where the interior stopped being read. Here the model is
used only once per scan, to measure R_g: the reference region's mean pattern is rendered with each
disk's rim (the vacuum probe) shifted by +-``shift`` px in x and in y and its interior F_g (the mean
disk divided by the probe where the probe is bright, extended outward by the nearest such pixel) held
in place; correlation runs on the renders, and R_g is its peak's central difference. In every pattern
each correlation peak is then replaced by ``anchor_g + R_g^-1 (peak - anchor_g)``, anchor_g the peak of
reflection g in the reference mean, and the lattice and strain are fitted as usual. The cost is one
correlation of five renders per scan and a 2 x 2 solve per disk. Correlation's precision is kept (its
noise is scaled by R_g^-1, about 1.1x).

Prints its rows (development sets; an experiment recorded in docs/experiments.md, not RESULTS.md).

Usage: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/pinned_contrast_gain.py SET DOSE [shift_px [core]]
  SET: thick | tilt | tilt_gradient | thin | thin_low_dose; DOSE: 1e5 (3e3 for thin_low_dose) or nf (noise-free)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import robust_strain_benchmark as rb  # noqa: E402
import whole_pattern_fit as wpf  # noqa: E402
from fixed_interior_fit import setup, shifted_probe  # noqa: E402

from distill4d.bragg import find_bragg_disks  # noqa: E402
from distill4d.bragg.peaks import BraggPeaks  # noqa: E402
from distill4d.datacube import DataCube  # noqa: E402
from distill4d.lattice import strain_map  # noqa: E402


def renders(ref_mean, ref_q, ref_F, P0f, kx, ky, base_off, h, shifts, radius_px):
    """The reference mean with every disk (pixels within radius + 2 px of its centre, so that no disk
    overwrites a neighbour) replaced by P(q - c - s) F_g(q), one pattern per s."""
    out = []
    off = np.arange(-h, h + 1)
    for s in shifts:
        pat = np.array(ref_mean, dtype=np.float64)
        for c, (b, F) in zip(ref_q, ref_F):
            P = shifted_probe(P0f, kx, ky, (c - b - base_off + np.asarray(s, float))[None])[0][0]
            d = c - b
            disk = np.hypot(off[:, None] - d[0], off[None, :] - d[1]) <= radius_px + 2
            win = pat[b[0] - h: b[0] + h + 1, b[1] - h: b[1] + h + 1]
            win[disk] = (P * F)[disk]
        out.append(pat)
    return np.stack(out)


def match(peaks_xy, targets, tol=2.0):
    """For each target (m, 2) the nearest peak within ``tol`` px, else NaN: (m, 2)."""
    d2 = ((targets[:, None, :] - peaks_xy[None]) ** 2).sum(-1)
    j = d2.argmin(1)
    out = peaks_xy[j].astype(float)
    out[d2[np.arange(len(j)), j] > tol * tol] = np.nan
    return out


def responses(dc, probe, ref_mean, ref_q, ref_F, P0f, kx, ky, base_off, h, shift, radius_px):
    """R_g (m, 2, 2): column k = d(correlation peak)/d(rim shift along axis k), and the anchors (m, 2)."""
    shifts = [(0, 0), (shift, 0), (-shift, 0), (0, shift), (0, -shift)]
    pats = renders(ref_mean, ref_q, ref_F, P0f, kx, ky, base_off, h, shifts, radius_px)
    pk = find_bragg_disks(DataCube(pats[:, None], calibration=dc.calibration), probe, scheduler="inline",
                          progress=False)
    at = [match(pk[i, 0][:, :2], ref_q) for i in range(len(shifts))]
    R = np.stack([(at[1] - at[2]) / (2 * shift), (at[3] - at[4]) / (2 * shift)], -1)
    return R


def corrected(pk, ref_q, anchors, R, tol=3.0):
    """Every correlation peak matched (within ``tol`` px) to a reference disk g moved to anchor_g +
    R_g^-1 (peak - anchor_g); unmatched peaks and disks without a finite R_g are left as they are."""
    qx, qy, intensity, count = pk.to_padded()
    ox, oy = qx.copy(), qy.copy()
    ok = np.all(np.isfinite(R), axis=(1, 2)) & np.all(np.isfinite(anchors), axis=1)
    Rinv = np.full_like(R, np.nan)
    Rinv[ok] = np.linalg.inv(R[ok])
    xy = np.stack([qx, qy], -1)
    d2 = ((xy[..., None, :] - ref_q) ** 2).sum(-1)
    d2 = np.where(np.isfinite(d2), d2, np.inf)
    j = d2.argmin(-1)
    use = (np.take_along_axis(d2, j[..., None], -1)[..., 0] < tol * tol) & ok[j]
    new = anchors[j] + np.einsum("...ij,...j->...i", Rinv[j], xy - anchors[j])
    ox[use], oy[use] = new[use][:, 0], new[use][:, 1]
    return BraggPeaks.from_padded(ox, oy, intensity, count, pk.calibration)


def main(argv: list[str]) -> int:
    name, dose_text = argv[0], argv[1]
    shift = float(argv[2]) if len(argv) > 2 else 0.25
    core = float(argv[3]) if len(argv) > 3 else 0.7
    S = setup(name, dose_text, 4.0, core)
    t = time.perf_counter()
    dc, probe, expected, n, pk, t_corr, pt, rows = (S[k] for k in ("dc", "probe", "expected", "n", "pk", "t_corr",
                                                                    "pt", "rows"))
    ref_mean, ref_q, ref_F, P0f, kx, ky, base_off, h = (S[k] for k in ("ref_mean", "ref_q", "ref_F", "P0f", "kx",
                                                                       "ky", "base_off", "h"))
    R = responses(dc, probe, ref_mean, ref_q, ref_F, P0f, kx, ky, base_off, h, shift, pt.radius_px)
    s = time.perf_counter() - t + S["t_ref"]  # the responses and the reference they need, after correlation
    R_one = np.broadcast_to(np.nanmedian(R, axis=0), R.shape).copy()  # one response for every reflection
    for lab, RR in (("per reflection", R), ("median response", R_one)):
        sm = strain_map(corrected(pk, ref_q, ref_q, RR), reference=rb.REF)
        rows.append((f"{lab} s{shift} c{core}", wpf.score(sm, expected,
                                                            s + t_corr, n)))
    diag = R[:, [0, 1], [0, 1]]
    print(f"{name} {dose_text} R diagonal median {np.nanmedian(diag, 0).round(3)}, range "
          f"{np.nanmin(diag):.3f}-{np.nanmax(diag):.3f}, off-diagonal median |.| "
          f"{np.nanmedian(np.abs(R[:, [0, 1], [1, 0]])):.3f}, {np.isfinite(diag).all(1).sum()} of {len(R)} disks",
          flush=True)
    for lab, r in rows:
        print(f"{name} {dose_text} {lab:20s} exx {r['strain']['eps_xx']:.3f} eyy {r['strain']['eps_yy']:.3f} "
              f"exy {r['strain']['eps_xy']:.3f} bias {r['bias']['eps_xx']:.3f}/{r['bias']['eps_yy']:.3f} "
              f"step {r['step']:.3f} {r['patterns_per_s']:.0f} p/s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
