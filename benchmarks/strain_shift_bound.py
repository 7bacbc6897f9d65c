"""Study: the strain precision of a detector that reads each disk's rigid shift (a known-template bound).

The shot-noise floor of the robust-strain section (``fcunet_dose.py``) is the Cramér-Rao bound
of one pattern under the simulator's full response to strain: disk shifts *and* the change of
the dynamical contrast inside the disks. A detector that registers each disk (correlation,
Sobel, templates, rim fits) reads only shifts. This bound asks what the best such reader could
do: every disk of the noise-free pattern (the pixels nearer its centre than any other's, within
the probe radius + 2.5 px; centres from correlation) is translated rigidly by ``(F^-T - I) g``
(``g`` its offset from the direct beam, px; Fourier shift), the rest of the pattern held, and
``lattice.precision.strain_crb`` gives the bound on eps_xx, eps_yy (estimated together, shear,
rotation and origin known) at ``--dose`` electrons. RMS over ``--positions`` positions of each
set. Prints its rows; writes nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fcunet_benchmark as fb  # noqa: E402

from distill4d.bragg import find_bragg_disks  # noqa: E402
from distill4d.lattice.precision import strain_crb  # noqa: E402


def _shift(image: np.ndarray, d: np.ndarray) -> np.ndarray:
    kx = np.fft.fftfreq(image.shape[0])[:, None]
    ky = np.fft.fftfreq(image.shape[1])[None, :]
    return np.real(np.fft.ifft2(np.fft.fft2(image) * np.exp(-2j * np.pi * (kx * d[0] + ky * d[1]))))


def rigid_bound(pattern: np.ndarray, peaks: np.ndarray, radius_px: float, dose: float) -> dict[str, float]:
    """Bound on eps_xx, eps_yy (fractions) for rigid disk shifts of ``pattern`` (peaks: (m, 3) px, px, I)."""
    centres = peaks[:, :2]
    beam = centres[np.argmin(np.hypot(*(centres - np.array(pattern.shape) / 2).T) - 1e-9 * peaks[:, 2])]
    ii, jj = np.indices(pattern.shape)
    d = np.hypot(ii[..., None] - centres[:, 0], jj[..., None] - centres[:, 1])  # (H, W, m)
    near = np.argmin(d, axis=-1)
    inside = np.take_along_axis(d, near[..., None], -1)[..., 0] <= radius_px + 2.5
    regions = [np.where(inside & (near == k), pattern, 0.0) for k in range(len(centres))]
    rest = pattern - np.sum(regions, axis=0)
    g = centres - beam

    def render(F: np.ndarray) -> np.ndarray:
        step = np.linalg.inv(F).T - np.eye(2)
        out = rest.copy()
        for k, reg in enumerate(regions):
            out += _shift(reg, step @ g[k]) if np.any(g[k]) else reg
        return np.clip(out, 0.0, None)

    return strain_crb(render, dose_e=dose, components=("eps_xx", "eps_yy"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", nargs="+", default=["thick", "tilt", "tilt_gradient"])
    ap.add_argument("--dose", type=float, default=1e5)
    ap.add_argument("--positions", type=int, default=16)
    args = ap.parse_args()
    for name in args.sets:
        if name == "thin":  # the kinematic multilayer of robust_strain_benchmark.py, noise-free
            import robust_strain_benchmark as rsb

            dc, truth, probe = rsb.load_set("thin", None)
        else:
            dc, truth, probe, _, _ = fb.load_or_simulate(name, (16, 16), (128, 128), False, None)
        pk = find_bragg_disks(dc, probe, scheduler="inline", progress=False)
        radius = float(pk.params["probe_radius_px"])
        rng = np.random.default_rng(0)
        sel = rng.choice(16 * 16, args.positions, replace=False)
        b = []
        for s in sel:
            rx, ry = divmod(int(s), 16)
            b.append(rigid_bound(np.asarray(dc.data[rx, ry], dtype=np.float64), pk[rx, ry], radius, args.dose))
        rms = {c: 100 * float(np.sqrt(np.mean([x[c] ** 2 for x in b]))) for c in ("eps_xx", "eps_yy")}
        print(f"{name}: rigid-shift bound at {args.dose:.0e} e-, RMS over {len(b)} positions: eps_xx "
              f"{rms['eps_xx']:.3f} %, eps_yy {rms['eps_yy']:.3f} % (disk radius {radius:.2f} px, "
              f"{np.mean([len(pk[divmod(int(s), 16)]) for s in sel]):.0f} disks)", flush=True)


if __name__ == "__main__":
    main()
