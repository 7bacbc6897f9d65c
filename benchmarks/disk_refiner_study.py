#!/usr/bin/env python3
"""A learned per-disk refiner for strain on thick and tilted crystals (issue 36), as a one-off study.

The idea: correlation says which disks exist and roughly where; a small CNN, shown a crop around each
disk in units of the disk radius, predicts the offset from there to the true lattice point, having
learned on multislice disks of other crystals how dynamical contrast (thickness, tilt, strain)
moves intensity inside a disk while the rim stays on the lattice point.

- Training data: two libraries of ``simulate.library`` (seeds 361 and 362, 96 and 300 simulations, 4
  thicknesses each: 1584 patterns; 128 x 128 px of 0.025 1/Å, 200 / 300 kV, 1.5-2.5 mrad, 100-800 Å,
  tilt up to 10 mrad (30 % on zone), diagonal strain up to 2 %, every prototype but Si, Ge and C, zone
  axes of index <= 1). Test crystal of the strain sets: Si [011], never in training.
- Crops: 17 x 17 bilinear samples over ±1.75 disk radii around a start within ±0.5 px of each true
  disk centre (disks holding >= 0.1 % of the pattern, away from the edge), divided by their mean;
  noise-free and 3 Poisson draws at 2e4-2e6 e⁻ per pattern. Target: (true − start) / radius.
- Network: 4 convolutions (32 channels, one of stride 2) and two linear layers; Adam, one-cycle
  schedule, batches of 256, flips and a transpose as augmentation; 1/8 of the simulations held out
  for the validation RMSE.
- Strain: `robust_strain_benchmark.py`'s sets and scorer; correlation's peaks (``find_bragg_disks``)
  moved by the prediction (clipped to ±1 px), once or twice, with or without the 8 dihedral views
  averaged.

Usage (one thread; about 20 min for the libraries, 10-30 min for training):
``OMP_NUM_THREADS=1 python benchmarks/disk_refiner_study.py --work DIR [--epochs 8] [--sets thick,tilt,tilt_gradient]``
(the held-out sets ``thick_45nm`` and ``tilt_gradient_y`` may be named too; they exist at 1e5 only).
Prints its rows; writes nothing else outside ``DIR``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

K, G = 1.75, 17  # crop half-width (disk radii) and samples per side
U = np.linspace(-K, K, G)
LIBRARIES = ((361, 96), (362, 300))


def build(work: Path) -> list[Path]:
    from distill4d.simulate.crystals import list_prototypes
    from distill4d.simulate.library import LibraryConfig, build_library

    protos = tuple(p for p in list_prototypes() if p not in ("Si", "Ge", "C"))
    out = []
    for seed, n in LIBRARIES:
        cfg = LibraryConfig(n_samples=n, shard_size=4, shape=(128, 128), q_pixel_inv_A=0.025, energies_kV=(200.0, 300.0),
                            semiangle_mrad=(1.5, 2.5), thickness_A=(100.0, 800.0), n_thicknesses=4, tilt_mrad=10.0,
                            on_zone_fraction=0.3, strain=0.02, prototypes=protos, max_zone_index=1, seed=seed)
        path = work / f"lib_{seed}"
        build_library(cfg, path, scheduler="inline", device="cpu", progress=False)
        out.append(path)
    return out


def radius_px(energy_eV: float, semiangle_mrad: float, q_pixel_inv_A: float) -> float:
    """The disk radius in detector pixels (the calibration's own conversion)."""
    from distill4d.calibration import Calibration

    cal = Calibration(q_pixel_inv_A=q_pixel_inv_A, energy_eV=energy_eV, semiangle_mrad=semiangle_mrad)
    return cal.length_to_px(semiangle_mrad, "mrad")


def crops(pattern: np.ndarray, cx: np.ndarray, cy: np.ndarray, r: float) -> np.ndarray:
    """(n, G, G) bilinear samples of ``pattern`` at ``c + u r``, each divided by its mean."""
    from scipy.ndimage import map_coordinates

    X, Y = np.broadcast_arrays(cx[:, None, None] + U[None, :, None] * r, cy[:, None, None] + U[None, None, :] * r)
    v = map_coordinates(pattern, [X.ravel(), Y.ravel()], order=1, mode="constant", cval=0.0).reshape(len(cx), G, G)
    return (v / np.maximum(v.mean(axis=(1, 2), keepdims=True), 1e-12)).astype(np.float32)


def dataset(path: Path, seed: int, jitter: float = 0.5, n_noise: int = 3, min_frac: float = 1e-3):
    from distill4d.simulate.library import Library

    lib = Library(path)
    q = lib.config.q_pixel_inv_A
    rng = np.random.default_rng(seed)
    Xs, Ys, groups = [], [], []
    for i in range(len(lib)):
        e = lib[i]
        P = np.asarray(e["pattern"], np.float64)
        r = radius_px(float(e["energy_eV"]), float(e["semiangle_mrad"]), q)
        pk = np.asarray(e["peaks"], np.float64)
        H, W = P.shape
        far = K * r + 2
        d = np.hypot(pk[:, 0] - H / 2, pk[:, 1] - W / 2)
        pk = pk[(d < min(H, W) / 2 - far) & (pk[:, 0] > far) & (pk[:, 1] > far) & (pk[:, 0] < H - far) & (pk[:, 1] < W - far)]
        xx, yy = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
        inten = np.array([P[(xx - x) ** 2 + (yy - y) ** 2 <= r * r].sum() for x, y, _ in pk])
        pk = pk[inten >= min_frac * P.sum()] if len(pk) else pk
        if not len(pk):
            continue
        for k in range(n_noise + 1):
            Pn = P if k == 0 else rng.poisson(P * 10 ** rng.uniform(4.3, 6.3) / P.sum()).astype(np.float64)
            off = rng.uniform(-jitter, jitter, size=(len(pk), 2))
            Xs.append(crops(Pn, pk[:, 0] + off[:, 0], pk[:, 1] + off[:, 1], r))
            Ys.append((-off / r).astype(np.float32))
            groups.append(np.full(len(pk), int(e["sample_index"]) + 100000 * seed))
    return np.concatenate(Xs), np.concatenate(Ys), np.concatenate(groups)


def network():
    import torch

    ch = 32
    return torch.nn.Sequential(
        torch.nn.Unflatten(1, (1, G, G)),
        torch.nn.Conv2d(1, ch, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(ch, ch, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(ch, ch, 3, padding=1, stride=2), torch.nn.ReLU(), torch.nn.Conv2d(ch, ch, 3, padding=1),
        torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(ch * 9 * 9, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))


def train(X, Y, groups, epochs: int, seed: int = 0):
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    ug = np.unique(groups)
    va = np.isin(groups, rng.choice(ug, size=max(1, len(ug) // 8), replace=False))
    Xt, Yt = torch.as_tensor(X[~va].reshape(-1, G * G)), torch.as_tensor(Y[~va])
    Xv, Yv = torch.as_tensor(X[va].reshape(-1, G * G)), torch.as_tensor(Y[va])
    net = network()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=epochs * math.ceil(len(Xt) / 256))
    for ep in range(epochs):
        net.train()
        perm = torch.randperm(len(Xt))
        for b in range(0, len(Xt), 256):
            idx = perm[b:b + 256]
            xb, yb = Xt[idx].reshape(-1, G, G), Yt[idx].clone()
            if torch.rand(()) < 0.5:
                xb, yb[:, 0] = xb.flip(1), -yb[:, 0]
            if torch.rand(()) < 0.5:
                xb, yb[:, 1] = xb.flip(2), -yb[:, 1]
            if torch.rand(()) < 0.5:
                xb, yb = xb.transpose(1, 2), yb.flip(1)
            loss = ((net(xb.reshape(-1, G * G)) - yb) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        net.eval()
        with torch.no_grad():
            rmse = float(((net(Xv) - Yv) ** 2).sum(1).mean().sqrt())
        print(f"epoch {ep}: validation RMSE {rmse:.4f} radii (start {float((Yv ** 2).sum(1).mean().sqrt()):.4f})",
              flush=True)
    return net


def predict(net, X: np.ndarray, views: bool) -> np.ndarray:
    import torch

    x = torch.as_tensor(X)
    with torch.no_grad():
        if not views:
            return net(x.reshape(-1, G * G)).numpy()
        outs = []
        for t in (False, True):
            for fx in (False, True):
                for fy in (False, True):
                    xx = x.transpose(1, 2) if t else x
                    xx = xx.flip(1) if fx else xx
                    xx = xx.flip(2) if fy else xx
                    p = net(xx.reshape(-1, G * G)).clone()
                    p[:, 0] = -p[:, 0] if fx else p[:, 0]
                    p[:, 1] = -p[:, 1] if fy else p[:, 1]
                    outs.append(p.flip(1) if t else p)
        return torch.stack(outs).mean(0).numpy()


def refine(dc, pk, net, passes: int, views: bool):
    from distill4d.bragg.peaks import BraggPeaks

    cal = dc.calibration
    r = radius_px(cal.energy_eV, cal.semiangle_mrad, cal.q_pixel_inv_A)
    qx, qy = pk.qx.copy(), pk.qy.copy()
    data = np.asarray(dc.data)
    ry = pk.scan_shape[1]
    for _ in range(passes):
        for i in range(len(pk.offsets) - 1):
            a, b = pk.offsets[i], pk.offsets[i + 1]
            if a < b:
                d = np.clip(predict(net, crops(np.asarray(data[i // ry, i % ry], np.float64), qx[a:b], qy[a:b], r), views) * r,
                            -1.0, 1.0)
                qx[a:b] += d[:, 0]
                qy[a:b] += d[:, 1]
    return BraggPeaks(qx, qy, pk.intensity, pk.offsets, pk.scan_shape, pk.calibration, pk.params)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="folder for the libraries (reused when there)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--libraries", type=int, default=len(LIBRARIES), help="use the first N libraries")
    ap.add_argument("--sets", default="thick,tilt,tilt_gradient")
    a = ap.parse_args(argv)
    import torch

    import fcunet_benchmark as fb
    import robust_strain_benchmark as rsb
    import strain_vs_py4dstem as svp
    from distill4d.bragg import find_bragg_disks

    torch.set_num_threads(1)
    libs = build(a.work)[: a.libraries]
    parts = [dataset(p, seed) for p, (seed, _) in zip(libs, LIBRARIES)]
    X, Y, g = (np.concatenate([p[k] for p in parts]) for k in range(3))
    print(f"{len(X)} crops of {len(np.unique(g))} simulations", flush=True)
    net = train(X, Y, g, a.epochs)
    for name in a.sets.split(","):
        for dose in (1e5, None) if name in rsb.FLOOR_SETS else (1e5,):  # the held-out sets exist at 1e5 only
            dc, truth, probe = rsb.load_set(name, dose)
            truth_bp, expected = truth.bragg_peaks(), svp.expected_strain(truth, (0, svp.LAYER_WIDTH))[0]
            pk = find_bragg_disks(dc, probe, scheduler="inline", progress=False)
            rows = [("correlation", pk)] + [(f"learned, {n} pass{'es' if n > 1 else ''}{', 8 views' if v else ''}",
                                              refine(dc, pk, net, n, v)) for n in (1, 2) for v in (False, True)]
            for label, p in rows:
                st = fb.strain_result(p, truth_bp, expected, rsb.REF)["strain"]
                print(f"| {name} | {dose or 'noise-free'} | {label} | {st['eps_xx']:.3f} | {st['eps_yy']:.3f} | "
                      f"{st['eps_xy']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
