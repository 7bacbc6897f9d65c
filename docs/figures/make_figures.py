"""Make the figures of the README and the documentation site (run once; the PNGs are committed).

    PYTHONPATH=src python docs/figures/make_figures.py            # all figures (CC-ST-AE training is most of the time)
    PYTHONPATH=src python docs/figures/make_figures.py phase      # only some of them

Every figure comes from data this script simulates with a known answer (the ``distill4d demo``
scans, a kinematic multilayer, one abTEM multislice pattern), analysed with the package's
public functions. Needs the ``ml`` and ``sim`` extras for the FCU-Net, CC-ST-AE, phase and
simulation figures.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
DPI = 80
_DEMO: Path | None = None


def _save(fig, name: str) -> None:
    path = HERE / name
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote {path.name} ({path.stat().st_size / 1e3:.0f} kB)")


def _panel(ax, image, title, cmap="gray", unit="", symmetric=False):
    image = np.asarray(image, dtype=float)
    kw = {}
    if symmetric:
        v = np.nanpercentile(np.abs(image), 99) or 1.0
        kw = {"vmin": -v, "vmax": v}
    im = ax.imshow(image, cmap=cmap, **kw)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    cb = plt.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    cb.ax.tick_params(labelsize=7)
    if unit:
        cb.set_label(unit, fontsize=8)


def demo_dir() -> Path:
    """The ``distill4d demo`` outputs (made once per run of this script)."""
    global _DEMO
    if _DEMO is None:
        from distill4d.cli import main
        from distill4d.cli.demo import run_demo

        _DEMO = Path(tempfile.mkdtemp(prefix="distill4d_figures_"))
        run_demo(_DEMO, main=main, progress=False)
    return _DEMO


def overview() -> None:
    from distill4d.bragg import find_bragg_disks
    from distill4d.io import read_results
    from distill4d.lattice import StrainMap

    d = demo_dir()
    com = read_results(d / "com.h5")
    smap = StrainMap.from_hdf5(d / "strain.h5")
    dc, probe = _multilayer()
    peaks = find_bragg_disks(dc[0:1, 0:1], probe, progress=False)[0, 0]
    fig, axes = plt.subplots(1, 3, figsize=(11.5, 3.4), gridspec_kw={"wspace": 0.35})
    axes[0].imshow(np.log1p(np.asarray(dc.pattern(0, 0), dtype=float)), cmap="gray")
    axes[0].scatter(peaks[:, 1], peaks[:, 0], s=16, facecolors="none", edgecolors="c", linewidths=0.8)
    axes[0].set_title("a diffraction pattern and its Bragg disks", fontsize=10)
    axes[0].set_xticks([])
    axes[0].set_yticks([])
    _panel(axes[1], np.asarray(com["idpc_phase"]), "iDPC phase of a weak phase object", unit="rad")
    _panel(axes[2], 100 * smap.eps_xx, "strain $\\epsilon_{xx}$ of a multilayer", cmap="RdBu_r", unit="%",
           symmetric=True)
    fig.suptitle("distill4d demo: simulated scans with known answers, analysed by the distill4d commands",
                 fontsize=10)
    _save(fig, "overview.png")


def virtual() -> None:
    from distill4d.io import read_results

    r = read_results(demo_dir() / "virtual.h5")
    keys = [k for k in ("bf", "adf") if k in r]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.8 * len(keys), 3.3))
    for ax, k in zip(np.atleast_1d(axes), keys):
        _panel(ax, np.asarray(r[k]), f"virtual {k.upper()}", unit="counts")
    _save(fig, "virtual.png")


def com_idpc() -> None:
    from distill4d.io import read_results

    r = read_results(demo_dir() / "com.h5")
    names = [k for k in ("dpc_x", "dpc_y") if k in r]
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(3.8 * (len(names) + 1), 3.3))
    for ax, k in zip(axes, names):
        _panel(ax, np.asarray(r[k]), k.replace("_", " ").upper().replace("DPC", "DPC"), cmap="RdBu_r", symmetric=True)
    _panel(axes[-1], np.asarray(r["idpc_phase"]), "iDPC phase", unit="rad")
    _save(fig, "com_idpc.png")


def _multilayer():
    import distill4d

    d = demo_dir()
    dc = distill4d.read(d / "multilayer.h5")
    probe = np.load(d / "probe.npy")
    return dc, probe


def strain() -> None:
    from distill4d.bragg import find_bragg_disks
    from distill4d.lattice import StrainMap

    dc, probe = _multilayer()
    peaks = find_bragg_disks(dc[0:1, 0:1], probe, progress=False)
    smap = StrainMap.from_hdf5(demo_dir() / "strain.h5")
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.3))
    axes[0].imshow(np.log1p(np.asarray(dc.pattern(0, 0), dtype=float)), cmap="magma")
    p = peaks[0, 0]
    axes[0].scatter(p[:, 1], p[:, 0], s=14, facecolors="none", edgecolors="c", linewidths=0.8)
    axes[0].set_title("one pattern (log) and its disks", fontsize=10)
    axes[0].set_xticks([])
    axes[0].set_yticks([])
    _panel(axes[1], 100 * smap.eps_xx, "$\\epsilon_{xx}$", cmap="RdBu_r", unit="%", symmetric=True)
    _panel(axes[2], 100 * smap.eps_yy, "$\\epsilon_{yy}$", cmap="RdBu_r", unit="%", symmetric=True)
    _save(fig, "strain.png")


def fcunet() -> None:
    from distill4d.bragg import find_bragg_disks
    from distill4d.ml.fcunet.detect import find_bragg_disks_fcunet

    dc, probe = _multilayer()
    sub = dc[0:1, 0:2]
    corr = find_bragg_disks(sub, probe, progress=False)
    net = find_bragg_disks_fcunet(sub, probe, device="cpu", progress=False)
    fig, ax = plt.subplots(1, 1, figsize=(4.6, 4.2))
    ax.imshow(np.log1p(np.asarray(dc.pattern(0, 0), dtype=float)), cmap="gray")
    for peaks, colour, label, marker in ((corr, "c", "correlation", "o"), (net, "m", "FCU-Net", "+")):
        p = peaks[0, 0]
        if marker == "o":
            ax.scatter(p[:, 1], p[:, 0], s=30, facecolors="none", edgecolors=colour, label=label, linewidths=0.8)
        else:
            ax.scatter(p[:, 1], p[:, 0], s=30, c=colour, marker=marker, label=label, linewidths=0.8)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Bragg disks: correlation and FCU-Net", fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    _save(fig, "fcunet.png")


def ccstae() -> None:
    from distill4d.ml.ccstae import CCSTAETrainConfig, strain_map_ccstae

    dc, probe = _multilayer()
    res = strain_map_ccstae(dc, probe, num_base=2, reference=(slice(0, 6), slice(0, 24)),
                            train=CCSTAETrainConfig(max_steps=300, seed=0), device="cpu", progress=False)
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.3))
    _panel(axes[0], res.bases[0], "learned base pattern 0", cmap="magma")
    _panel(axes[1], 100 * res.strain.eps_xx, "CC-ST-AE $\\epsilon_{xx}$", cmap="RdBu_r", unit="%", symmetric=True)
    _panel(axes[2], 100 * res.strain.eps_yy, "CC-ST-AE $\\epsilon_{yy}$", cmap="RdBu_r", unit="%", symmetric=True)
    _save(fig, "ccstae.png")


def phase() -> None:
    import distill4d
    from distill4d.io import read_results
    from distill4d.ml.phase import phase_image

    d = demo_dir()
    dc = distill4d.read(d / "scan.h5")
    img = phase_image(dc, progress=False)
    idpc = np.asarray(read_results(d / "com.h5")["idpc_phase"])
    fig, axes = plt.subplots(1, 2, figsize=(7.6, 3.3))
    _panel(axes[0], idpc, "iDPC phase", unit="rad")
    _panel(axes[1], img.image, f"ML phase retrieval ({img.model})", unit=img.units)
    _save(fig, "phase.png")


def simulation() -> None:
    from distill4d.simulate.crystals import orient, prototype
    from distill4d.simulate.multislice import CBEDSettings, simulate_cbed

    atoms, _ = orient(prototype("Si"), (0, 1, 1))
    s = CBEDSettings(energy_eV=300e3, semiangle_mrad=2.0, shape=(128, 128), q_pixel_inv_A=0.025,
                     thicknesses_A=(200.0,))
    r = simulate_cbed(atoms, s)
    fig, axes = plt.subplots(1, 2, figsize=(7.6, 3.5))
    _panel(axes[0], np.log1p(1e4 * r.patterns[0]), "multislice pattern (log), Si [011] 20 nm", cmap="magma")
    _panel(axes[1], np.sqrt(r.target), "FCU-Net target (sqrt)", cmap="magma")
    _save(fig, "simulation.png")


FIGURES = {"overview": overview, "virtual": virtual, "com_idpc": com_idpc, "strain": strain, "fcunet": fcunet,
           "ccstae": ccstae, "phase": phase, "simulation": simulation}


def main(names: list[str]) -> int:
    for name in names or list(FIGURES):
        t = time.perf_counter()
        FIGURES[name]()
        print(f"  {name}: {time.perf_counter() - t:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
