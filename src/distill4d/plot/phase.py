"""The linear phase model's learned virtual detectors (radial masks) and cluster weights."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .images import save_figure

__all__ = ["save_phase_masks_png"]


def save_phase_masks_png(path: str | os.PathLike, model: Any, *, force: bool = False) -> Path:
    """Top row: each layer-1 mask on the prepared detector grid (axes in convergence semiangles α);
    bottom row: its layer-2 weights over the c x c cluster of scan positions."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; pass force=True (--force) to overwrite it")
    masks = model.masks().detach().cpu().numpy()
    weights = model.cluster_weights().detach().cpu().numpy()
    ext = model.config.extent
    n = len(masks)
    fig, axes = plt.subplots(2, n, figsize=(3.0 * n, 5.8), squeeze=False)
    for i in range(n):
        m = float(np.abs(masks[i]).max()) or 1.0
        im = axes[0, i].imshow(masks[i], cmap="RdBu_r", vmin=-m, vmax=m, extent=(-ext, ext, ext, -ext))
        axes[0, i].set_title(f"mask {i}")
        axes[0, i].set_xlabel("ky / α")
        axes[0, i].set_ylabel("kx / α")
        fig.colorbar(im, ax=axes[0, i], fraction=0.046, pad=0.04)
        w = float(np.abs(weights[i]).max()) or 1.0
        r = (weights.shape[-1] - 1) // 2
        im = axes[1, i].imshow(weights[i], cmap="RdBu_r", vmin=-w, vmax=w, extent=(-r - 0.5, r + 0.5, r + 0.5, -r - 0.5))
        axes[1, i].set_title(f"cluster weights {i}")
        axes[1, i].set_xlabel("Δy (steps)")
        axes[1, i].set_ylabel("Δx (steps)")
        fig.colorbar(im, ax=axes[1, i], fraction=0.046, pad=0.04)
    fig.suptitle("linear phase model: learned radial detectors (top) and cluster weights (bottom)")
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)
