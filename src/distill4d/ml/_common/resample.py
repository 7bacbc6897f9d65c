"""Patterns resampled onto a model's grid (NumPy/SciPy; shared by the ML inference wrappers)."""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["resample_patterns"]


@functools.lru_cache(maxsize=32)
def _axis_matrix(n: int, origin: float, scale: float, size: int) -> tuple[np.ndarray, int, int]:
    """The resampling of one axis as ``(A, i0, i1)``: ``A`` (size, i1 - i0) float32 maps input pixels
    ``i0 .. i1 - 1`` (those with a weight) to the model grid: the box filter then linear interpolation
    of :func:`resample_patterns`, applied to each unit vector."""
    from scipy import ndimage

    eye = np.eye(n, dtype=np.float32)
    if scale > 1.5:
        eye = ndimage.uniform_filter1d(eye, int(round(scale)), axis=1, mode="constant")
    u = origin + (np.arange(size) - size // 2) * scale
    A = np.stack([ndimage.map_coordinates(eye[k], [u], order=1, mode="constant", cval=0.0) for k in range(n)], 1)
    used = np.flatnonzero(np.abs(A).sum(axis=0) > 0)
    i0, i1 = (int(used[0]), int(used[-1]) + 1) if used.size else (0, 0)
    A = np.ascontiguousarray(A[:, i0:i1])
    A.setflags(write=False)
    return A, i0, i1


def resample_patterns(images: np.ndarray, origin: tuple[float, float], scale: float, size: int) -> np.ndarray:
    """Images ``(n, Qx, Qy)`` on the model grid: model pixel ``u`` ↔ input ``origin + (u − size//2)·scale``.

    ``scale`` = model pixel / input pixel. When ``scale`` > 1.5 the input is first box-filtered
    over ``round(scale)`` pixels (the counts of the skipped pixels are kept). Outside the input: 0.
    Both steps act on each axis alone, so they run as two matrix products over all the images (the
    same values to float32 rounding); images with NaN/Inf where the grid reads take the
    pixel-by-pixel path (a bad pixel spoils the model pixels near it); elsewhere they are ignored.
    """
    imgs = np.asarray(images)
    if abs(scale - 1.0) < 1e-9 and float(origin[0]).is_integer() and float(origin[1]).is_integer():
        out = np.zeros((imgs.shape[0], size, size), dtype=np.float32)
        c = size // 2
        ox, oy = int(origin[0]) - c, int(origin[1]) - c
        x0, y0 = max(0, -ox), max(0, -oy)
        x1, y1 = min(size, imgs.shape[1] - ox), min(size, imgs.shape[2] - oy)
        if x1 > x0 and y1 > y0:
            out[:, x0:x1, y0:y1] = imgs[:, ox + x0 : ox + x1, oy + y0 : oy + y1]
        return out
    ax, x0, x1 = _axis_matrix(imgs.shape[1], float(origin[0]), float(scale), int(size))
    ay, y0, y1 = _axis_matrix(imgs.shape[2], float(origin[1]), float(scale), int(size))
    if x1 == x0 or y1 == y0:
        return np.zeros((imgs.shape[0], size, size), dtype=np.float32)
    support = imgs[:, x0:x1, y0:y1].astype(np.float32)  # only the pixels the grid reads
    if np.issubdtype(imgs.dtype, np.integer):  # counts: finite by construction
        return _two_products(support, ax, ay)
    good = np.isfinite(support).all(axis=(1, 2))
    if good.all():
        return _two_products(support, ax, ay)
    out = np.empty((imgs.shape[0], size, size), dtype=np.float32)
    out[good] = _two_products(support[good], ax, ay)
    out[~good] = _resample_pixelwise(imgs[~good].astype(np.float32), origin, scale, size)
    return out


def _two_products(support: np.ndarray, ax: np.ndarray, ay: np.ndarray) -> np.ndarray:
    """``ax @ support[j] @ ay.T`` for every image ``j``, as two large matrix products (one BLAS call
    each, rather than two small ones per image)."""
    b, nx, ny = support.shape
    size = ax.shape[0]
    t = support.reshape(b * nx, ny) @ ay.T  # (b·nx, size): the y axis
    t = np.ascontiguousarray(t.reshape(b, nx, size).transpose(0, 2, 1)).reshape(b * size, nx)
    return (t @ ax.T).reshape(b, size, size).transpose(0, 2, 1).copy()


def _resample_pixelwise(imgs: np.ndarray, origin: tuple[float, float], scale: float, size: int) -> np.ndarray:
    """:func:`resample_patterns` image by image (``scipy.ndimage``): NaN/Inf stay local."""
    from scipy import ndimage

    box = int(round(scale))
    if scale > 1.5:
        imgs = ndimage.uniform_filter(imgs, size=(1, box, box), mode="constant")
    u = (np.arange(size) - size // 2) * scale
    gx, gy = np.meshgrid(origin[0] + u, origin[1] + u, indexing="ij")
    out = np.empty((imgs.shape[0], size, size), dtype=np.float32)
    for j in range(imgs.shape[0]):
        out[j] = ndimage.map_coordinates(imgs[j], [gx, gy], order=1, mode="constant", cval=0.0)
    return out
