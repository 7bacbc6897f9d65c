"""Panels of 2D maps (virtual images, CoM components, phase) saved as one PNG."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import Distill4dError

__all__ = ["images_figure", "save_figure", "save_images_png"]


def save_images_png(
    path: str | os.PathLike,
    images: dict[str, np.ndarray],
    *,
    units: dict[str, str] | None = None,
    title: str = "",
    diverging: tuple[str, ...] = (),
    subtract_mean: tuple[str, ...] = (),
    scan_step_A: float | None = None,
    q_pixel_inv_A: float | None = None,
    diffraction: bool = False,
    force: bool = False,
) -> Path:
    """Save ``images`` ({name: (Rx, Ry) array}) side by side as a PNG with colour bars.

    Rx runs down the page and Ry across (the array's own orientation). Names listed in
    ``diverging`` get a colour map centred at zero; names listed in ``subtract_mean`` are shown
    minus their mean (e.g. a centre of mass offset by +20 px: its variation, not one flat colour),
    and their colour-bar label says so with the mean subtracted. Real-space maps get a scale bar in Å or nm
    from ``scan_step_A`` (Å); with ``diffraction`` the images are diffraction patterns and get a
    1/Å scale bar from ``q_pixel_inv_A`` (1/Å); without the pixel size the axes are in pixels.
    Colour limits are the 0.5-99.5 percentiles, so a few hot positions do not wash out the
    image; NaN positions are grey. Refuses to overwrite an existing file unless ``force``.
    """
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; pass force=True (--force) to overwrite it")
    fig = images_figure(images, units=units, title=title, diverging=diverging, subtract_mean=subtract_mean,
                        scan_step_A=scan_step_A, q_pixel_inv_A=q_pixel_inv_A, diffraction=diffraction)
    return save_figure(fig, path, dpi=110)


def images_figure(
    images: dict[str, np.ndarray],
    *,
    units: dict[str, str] | None = None,
    title: str = "",
    diverging: tuple[str, ...] = (),
    subtract_mean: tuple[str, ...] = (),
    scan_step_A: float | None = None,
    q_pixel_inv_A: float | None = None,
    diffraction: bool = False,
) -> Any:
    """The figure of :func:`save_images_png` (a matplotlib Figure, not saved)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from .scalebar import label_diffraction, label_real_space

    if not images:
        raise Distill4dError("images is empty: nothing to plot")
    if diffraction and scan_step_A is not None:
        raise Distill4dError("scan_step_A goes with real-space maps; diffraction patterns take q_pixel_inv_A")
    if not diffraction and q_pixel_inv_A is not None:
        raise Distill4dError("q_pixel_inv_A goes with diffraction patterns: pass diffraction=True")
    units = units or {}
    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4.0), squeeze=False)
    for ax, (name, img) in zip(axes[0], images.items()):
        img = np.asarray(img, dtype=np.float64)
        finite = img[np.isfinite(img)]
        label = units.get(name, "")
        if name in subtract_mean and finite.size:
            mean = float(finite.mean())
            img, finite = img - mean, finite - mean
            label = f"{label} − mean ({mean:+.3g}{' ' + units[name] if units.get(name) else ''})".strip()
        if finite.size:
            lo, hi = np.percentile(finite, [0.5, 99.5])
        else:
            lo, hi = 0.0, 1.0
        if name in diverging:
            m = max(abs(lo), abs(hi)) or 1.0
            lo, hi, cmap = -m, m, "RdBu_r"
        else:
            cmap = "gray"
        if hi <= lo:
            hi = lo + 1.0
        cm = plt.get_cmap(cmap).with_extremes(bad="0.6")
        im = ax.imshow(img, cmap=cm, vmin=lo, vmax=hi, interpolation="nearest")
        if diffraction:
            label_diffraction(ax, q_pixel_inv_A)
        else:
            label_real_space(ax, scan_step_A)
        ax.set_title(name)
        bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        if label:
            bar.set_label(label)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_figure(fig: Any, path: Path, *, dpi: int = 110) -> Path:
    """Save ``fig`` to ``path`` atomically (a temporary file renamed into place) and close it."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    try:
        fig.savefig(tmp, dpi=dpi)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def save_bragg_vector_map_png(
    path: str | os.PathLike, mean_pattern: np.ndarray, peaks, *, title: str = "", force: bool = False
) -> Path:
    """Mean pattern (log scale) beside the Bragg vector map: a histogram of every detected
    disk position weighted by its intensity, on the detector grid; a 1/Å scale bar when the
    peaks' calibration has ``q_pixel_inv_A``."""
    mean_pattern = np.asarray(mean_pattern, dtype=np.float64)
    qx, qy, w = peaks.qx, peaks.qy, peaks.intensity
    ok = np.isfinite(qx) & np.isfinite(qy) & np.isfinite(w)
    bins = [np.arange(mean_pattern.shape[0] + 1) - 0.5, np.arange(mean_pattern.shape[1] + 1) - 0.5]
    bvm, _, _ = np.histogram2d(qx[ok], qy[ok], bins=bins, weights=np.clip(w[ok], 0, None))
    floor = max(float(np.nanmin(mean_pattern[mean_pattern > 0])) if np.any(mean_pattern > 0) else 1.0, 1e-12)
    return save_images_png(
        path,
        {"mean pattern (log10)": np.log10(np.clip(mean_pattern, floor, None)),
         "Bragg vector map (sqrt)": np.sqrt(bvm)},
        title=title, q_pixel_inv_A=peaks.calibration.q_pixel_inv_A, diffraction=True, force=force,
    )
