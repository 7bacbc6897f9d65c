"""Patterns resampled onto a model's grid (NumPy/SciPy; shared by the ML inference wrappers)."""

from __future__ import annotations

import numpy as np

__all__ = ["resample_patterns"]


def resample_patterns(images: np.ndarray, origin: tuple[float, float], scale: float, size: int) -> np.ndarray:
    """Images ``(n, Qx, Qy)`` on the model grid: model pixel ``u`` ↔ input ``origin + (u − size//2)·scale``.

    ``scale`` = model pixel / input pixel. When ``scale`` > 1.5 the input is first box-filtered
    over ``round(scale)`` pixels (the counts of the skipped pixels are kept). Outside the input: 0.
    """
    from scipy import ndimage

    imgs = np.asarray(images, dtype=np.float32)
    if abs(scale - 1.0) < 1e-9 and float(origin[0]).is_integer() and float(origin[1]).is_integer():
        out = np.zeros((imgs.shape[0], size, size), dtype=np.float32)
        c = size // 2
        ox, oy = int(origin[0]) - c, int(origin[1]) - c
        x0, y0 = max(0, -ox), max(0, -oy)
        x1, y1 = min(size, imgs.shape[1] - ox), min(size, imgs.shape[2] - oy)
        if x1 > x0 and y1 > y0:
            out[:, x0:x1, y0:y1] = imgs[:, ox + x0 : ox + x1, oy + y0 : oy + y1]
        return out
    box = int(round(scale))
    if scale > 1.5:
        imgs = ndimage.uniform_filter(imgs, size=(1, box, box), mode="constant")
    u = (np.arange(size) - size // 2) * scale
    gx, gy = np.meshgrid(origin[0] + u, origin[1] + u, indexing="ij")
    out = np.empty((imgs.shape[0], size, size), dtype=np.float32)
    for j in range(imgs.shape[0]):
        out[j] = ndimage.map_coordinates(imgs[j], [gx, gy], order=1, mode="constant", cval=0.0)
    return out
