"""The figure of a ptychographic reconstruction: phase, amplitude, probe modes, error curve."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .images import save_figure
from .scalebar import add_scale_bar

__all__ = ["ptycho_figure", "save_ptycho_png"]


def _scanned_box(result: Any, pad_px: int = 2) -> tuple[slice, slice]:
    """The object pixels covered by the probe centres (plus ``pad_px``)."""
    pos = result.positions_A / np.asarray(result.sampling_A)
    lo = np.maximum(np.floor(pos.min(axis=0)).astype(int) - pad_px, 0)
    hi = np.ceil(pos.max(axis=0)).astype(int) + pad_px + 1
    return slice(lo[0], hi[0]), slice(lo[1], hi[1])


def ptycho_figure(result: Any, *, title: str = "") -> Any:
    """Top: object phase (rad, scale bar in Å) and amplitude over the scanned area; bottom: the probe
    modes' intensities (with their share of the power) and the error per iteration (log scale)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    box = _scanned_box(result)
    phase = result.object_phase[box]
    amp = result.object_amplitude[box]
    modes = result.probe_modes
    m = len(modes)
    ncol = max(2, m + 1)
    fig = plt.figure(figsize=(3.2 * ncol, 7.0))
    grid = fig.add_gridspec(2, ncol * 2)
    half = ncol
    for k, (img, name, cmap, unit) in enumerate(((phase, "object phase", "magma", "rad"),
                                                 (amp, "object amplitude", "gray", ""))):
        ax = fig.add_subplot(grid[0, k * half : (k + 1) * half])
        lo, hi = np.percentile(img, [0.5, 99.5])
        im = ax.imshow(img, cmap=cmap, vmin=lo, vmax=hi if hi > lo else lo + 1e-6)
        ax.set_title(name)
        add_scale_bar(ax, result.sampling_A[1], "Å")
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=unit)
    power = np.sum(np.abs(modes) ** 2, axis=(1, 2))
    for i in range(m):
        ax = fig.add_subplot(grid[1, 2 * i : 2 * i + 2])
        ax.imshow(np.abs(modes[i]) ** 2, cmap="viridis")
        ax.set_title(f"probe mode {i} ({100 * power[i] / power.sum():.1f} %)")
        add_scale_bar(ax, result.sampling_A[1], "Å")
        ax.set_xticks([])
        ax.set_yticks([])
    ax = fig.add_subplot(grid[1, 2 * m :]) if 2 * m < 2 * ncol else fig.add_subplot(grid[1, -2:])
    its = np.arange(1, len(result.errors) + 1)
    if len(result.errors):
        ax.semilogy(its, result.errors, "o-", ms=3)
    ax.set_xlabel("iteration")
    ax.set_ylabel("error Σ(√I − √y)² / Σy")
    ax.set_title("error" + _noise_note(result))
    ax.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _noise_note(result: Any) -> str:
    """`` (last: R× the shot noise)`` for counted data with a finite last noise ratio, else ``''``."""
    ratio = result.noise_ratio
    return f" (last: {ratio:.2f}x the shot noise)" if np.isfinite(ratio) else ""


def save_ptycho_png(path: str | os.PathLike, result: Any, *, title: str = "", force: bool = False) -> Path:
    """Save :func:`ptycho_figure` as a PNG; refuses to overwrite an existing file unless ``force``."""
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; pass force=True (--force) to overwrite it")
    return save_figure(ptycho_figure(result, title=title), path, dpi=100)
