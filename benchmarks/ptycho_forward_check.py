#!/usr/bin/env python3
"""Does ptychography's multislice forward model explain the thick SrTiO3 scan with the true object?

The noise-free ``sto_thick`` patterns (benchmarks/data/phase) at 64 random scan positions are
compared with the patterns predicted from the TRUE potential (abTEM's, of the benchmark's own
atoms, sliced as asked) and the true probe (25 mrad, focus on the entrance plane, unit intensity):

- ``abtem S``: abTEM's own multislice with S slices on the simulation's grid, rebinned onto the
  detector as the benchmark data were (S = 126 reproduces the data: a check of this script);
- ``model S u``: the forward model of :mod:`distill4d.phase.ptycho` (probe x slice, Fresnel
  propagation ``exp(-i pi lambda dz k^2)``, far field ``|FFT|^2``) on a window of ``48 u`` pixels of
  ``0.278 / u`` Å; for ``u > 1`` only the central 48 x 48 pixels (the detector) are compared. The
  slices are ``exp(i sigma V_s)`` of the potential band-limited to the window's Nyquist frequency.

Errors: ``R = sum |I - y| / sum y`` and the ptychography error ``A = sum (sqrt I - sqrt y)^2 / sum y``
(the value of ``A`` that Poisson noise alone gives at 2e4 e-/pattern is printed too: the floor under
the reconstruction's own error at that dose).
Usage: ``OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/ptycho_forward_check.py``.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from phase_data import build_atoms, load_or_simulate  # noqa: E402


def errors(pred: np.ndarray, data: np.ndarray) -> tuple[float, float]:
    r = float(np.abs(pred - data).sum() / data.sum())
    a = float(((np.sqrt(np.clip(pred, 0, None)) - np.sqrt(np.clip(data, 0, None))) ** 2).sum() / data.sum())
    return r, a


def potential_slices(abtem, atoms, slices: int, gpts: tuple[int, int]) -> np.ndarray:
    cz = float(atoms.cell[2, 2])
    pot = abtem.Potential(atoms, gpts=gpts, slice_thickness=cz / slices, projection="infinite", device="cpu")
    arr = pot.build(lazy=False)
    v = np.asarray(arr.array, dtype=np.float64)
    assert v.shape[0] == slices, v.shape
    return v


def abtem_patterns(abtem, atoms, slices, gpts, positions, rebin) -> np.ndarray:
    cz = float(atoms.cell[2, 2])
    pot = abtem.Potential(atoms, gpts=gpts, slice_thickness=cz / slices, projection="infinite", device="cpu")
    arr = pot.build(lazy=False)
    probe = abtem.Probe(semiangle_cutoff=25.0, energy=80e3, device="cpu")
    probe.grid.match(arr)
    meas = probe.scan(arr, scan=abtem.CustomScan(positions), detectors=abtem.PixelatedDetector(max_angle="cutoff"),
                      lazy=False)
    wx, wy = rebin(meas.shape[-2], meas.sampling[-2]), rebin(meas.shape[-1], meas.sampling[-1])
    a = np.asarray(meas.array, np.float64)
    return np.einsum("ji,pik,lk->pjl", wx.toarray(), a, wy.toarray())


def fourier_eval(v: np.ndarray, cell: tuple[float, float], xs: np.ndarray, ys: np.ndarray, kcut: float) -> np.ndarray:
    """Periodic ``v`` (G x G on ``cell``), band-limited to |kx|, |ky| <= kcut, at points xs (n), ys (m)."""
    f = np.fft.fft2(v) / v.size
    kx = np.fft.fftfreq(v.shape[0], cell[0] / v.shape[0])
    ky = np.fft.fftfreq(v.shape[1], cell[1] / v.shape[1])
    f = f * (np.abs(kx)[:, None] <= kcut) * (np.abs(ky)[None, :] <= kcut)
    ex = np.exp(2j * np.pi * xs[:, None] * kx[None, :])
    ey = np.exp(2j * np.pi * ys[:, None] * ky[None, :])
    return (ex @ f @ ey.T).real


def model_patterns(v_slices, cell, positions, cal, slices_dz, u, probe_k_amp=None, n=48) -> np.ndarray:
    from distill4d.phase.probe import probe_from_calibration
    from distill4d.simulate.realspace import interaction_parameter

    q = cal.q_pixel_inv_A
    N = n * u
    dx = 1.0 / (N * q)
    sigma = interaction_parameter(cal.energy_eV)
    lam = cal.wavelength_A
    probe = probe_from_calibration(cal, (N, N), defocus_A=0.0)
    k = np.fft.fftfreq(N, dx)
    prop = np.exp(-1j * np.pi * lam * slices_dz * (k[:, None] ** 2 + k[None, :] ** 2))
    out = []
    grid = (np.arange(N) - N // 2) * dx
    for p in positions:
        psi = probe.copy()
        for s, v in enumerate(v_slices):
            obj = np.exp(1j * sigma * fourier_eval(v, cell, p[0] + grid, p[1] + grid, 0.5 / dx))
            if s > 0:
                psi = np.fft.ifft2(np.fft.fft2(psi) * prop)
            psi = psi * obj
        far = np.fft.fftshift(np.abs(np.fft.fft2(psi, norm="ortho")) ** 2)
        c = N // 2
        out.append(far[c - n // 2 : c + n // 2, c - n // 2 : c + n // 2])
    return np.asarray(out)


def main() -> None:
    from distill4d.simulate._abtem import abtem_session
    from distill4d.simulate.realspace import _rebin_matrix

    dc, labels = load_or_simulate("sto_thick")
    meta = labels["metadata"]
    cal = dc.calibration
    atoms = build_atoms("sto_thick")
    cell = (float(atoms.cell[0, 0]), float(atoms.cell[1, 1]))
    rng = np.random.default_rng(0)
    nx, ny = dc.scan_shape
    pick = rng.choice(nx * ny, 64, replace=False)
    pos_all = np.asarray(labels["scan_positions_A"]).reshape(-1, 2)
    positions = pos_all[pick]
    data = np.asarray(dc.data, np.float64).reshape(nx * ny, *dc.pattern_shape)[pick]
    gpts = tuple(int(g) for g in meta["sim_gpts"])
    print(f"cell {cell} Å, sim gpts {gpts}, detected fraction {data.sum(axis=(1, 2)).mean():.4f}, "
          f"q {cal.q_pixel_inv_A:.6f} 1/Å, object pixel {1 / (48 * cal.q_pixel_inv_A):.4f} Å", flush=True)

    def rebin(n_src, dk):
        return _rebin_matrix(n_src, dk, 48, cal.q_pixel_inv_A)

    rows = []
    with abtem_session("cpu", lazy=False) as abtem:
        for s in (126, 32, 8):
            t = time.perf_counter()
            pred = abtem_patterns(abtem, atoms, s, gpts, positions, rebin)
            rows.append((f"abtem {s} slices (sim grid, rebinned)", *errors(pred, data), pred.sum(axis=(1, 2)).mean()))
            print(rows[-1], f"{time.perf_counter() - t:.0f} s", flush=True)
        vs = {s: potential_slices(abtem, atoms, s, gpts) for s in (1, 8, 32)}
    cz = float(atoms.cell[2, 2])
    for s, u in ((1, 1), (8, 1), (32, 1), (8, 2), (32, 2)):
        t = time.perf_counter()
        pred = model_patterns(vs[s], cell, positions, cal, cz / s, u)
        rows.append((f"model {s} slices, upsampling {u}", *errors(pred, data), pred.sum(axis=(1, 2)).mean()))
        print(rows[-1], f"{time.perf_counter() - t:.0f} s", flush=True)
    counts = np.load(HERE / "data" / "ptycho" / "sto_thick_20000.npy", mmap_mode="r")
    c = np.asarray(counts, np.float64).reshape(nx * ny, *dc.pattern_shape)[pick]
    r, a_floor = errors(2e4 * data, c)
    print(f"noise floor at 2e4 e-/pattern (noise-free x dose against the counts): A = {a_floor:.5f}")
    print("\n| forward model (true object, true probe) | R | A (ptycho error) | predicted total |")
    print("|---|---|---|---|")
    for name, r, a, tot in rows:
        print(f"| {name} | {r:.4f} | {a:.5f} | {tot:.4f} |")


if __name__ == "__main__":
    main()
