"""The domain-map figure: one frame with the domain labels over it, and the area fraction of every
variant against the frame."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import Distill4dError

__all__ = ["domains_figure", "save_domains_png"]


def domains_figure(images: Any, segmentation: Any, path_or_ax: Any = None, *, frame: int = 0, title: str = "",
                   force: bool = False) -> Any:
    """A figure of ``images`` (H, W) or (T, H, W) (the input, or any image on the labels' grid) with
    ``segmentation.labels`` of ``frame`` over it (-1 left clear; legend: each variant's orientation
    in degrees) and ``segmentation.fractions`` against the frame. ``path_or_ax``: None (return the
    figure), a path (saved; refused if it exists unless ``force``) or two matplotlib axes."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    img = np.asarray(images, dtype=np.float32)
    img = img[None] if img.ndim == 2 else img
    labels = segmentation.labels
    if not 0 <= frame < labels.shape[0]:
        raise Distill4dError(f"frame must be in 0..{labels.shape[0] - 1}, got {frame}")
    if img.shape[1:] != labels.shape[1:]:
        raise Distill4dError(f"images of shape {img.shape[1:]} do not match the labels' {labels.shape[1:]}")
    path = None
    if path_or_ax is None or isinstance(path_or_ax, (str, os.PathLike)):
        path = None if path_or_ax is None else Path(path_or_ax)
        if path is not None and path.exists() and not force:
            raise FileExistsError(f"{path} exists; pass force=True (--force) to overwrite it")
        fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 4.4), gridspec_kw={"width_ratios": [1.1, 1]})
    else:
        ax0, ax1 = path_or_ax
        fig = ax0.figure
    v = segmentation.n_variants
    colours = plt.get_cmap("tab10")(np.arange(max(v, 1)) % 10)
    shown = img[min(frame, len(img) - 1)]
    lo, hi = np.percentile(shown, [1, 99])
    ax0.imshow(shown, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1)
    lab = labels[frame].astype(float)
    lab[lab < 0] = np.nan
    if v:
        ax0.imshow(lab, cmap=ListedColormap(colours[:v]), vmin=-0.5, vmax=v - 0.5, alpha=0.45, interpolation="nearest")
    ax0.set_title(f"{title + ': ' if title else ''}frame {frame}, {segmentation.method}", fontsize=10)
    ax0.set_xticks([])
    ax0.set_yticks([])
    t = np.arange(segmentation.fractions.shape[0])
    for j in range(v):
        ang = segmentation.variant_angles_deg[j]
        name = f"variant {j} ({ang:.0f}°)" if np.isfinite(ang) else f"variant {j}"
        ax1.plot(t, segmentation.fractions[:, j], "o-", color=colours[j], label=name, ms=3)
        ax0.plot([], [], "s", color=colours[j], label=name)
    if v:
        ax1.legend(fontsize=8, loc="best")
    from matplotlib.ticker import MaxNLocator

    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax1.set_xlabel("frame")
    ax1.set_ylabel("area fraction")
    ax1.set_ylim(0, 1)
    ax1.grid(alpha=0.3)
    fig.tight_layout()
    if path is not None:
        from .images import save_figure

        save_figure(fig, path, dpi=110)
        return path
    return fig


def save_domains_png(path: str | os.PathLike, images: Any, segmentation: Any, *, frame: int = 0, title: str = "",
                     force: bool = False) -> Path:
    """Save :func:`domains_figure` to ``path`` (PNG); refused if it exists unless ``force``."""
    return domains_figure(images, segmentation, path, frame=frame, title=title, force=force)
