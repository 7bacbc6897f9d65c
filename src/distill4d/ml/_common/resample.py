"""Patterns resampled onto a model's grid (NumPy/SciPy; shared by the ML inference wrappers)."""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["resample_patterns"]


@functools.lru_cache(maxsize=32)
def _axis_matrix(n: int, origin: float, scale: float, size: int) -> tuple[np.ndarray, int, int]:
    """The resampling of one axis as ``(A, i0, i1)``: ``A`` (size, i1 - i0) float32 maps input pixels
    ``i0 .. i1 - 1`` (those with a weight) to the model grid: the box filter then linear interpolation
    of :func:`resample_patterns`, applied to each unit vector: ``scipy.ndimage``'s ``uniform_filter1d``
    and ``map_coordinates(order=1, mode="constant")``, written out in NumPy (importing ``scipy.ndimage``
    costs about 0.4 CPU s; the tests hold the two equal)."""
    k = np.arange(n)
    if scale > 1.5:  # box filter of ``box`` pixels (SciPy's window: j - box//2 .. j - box//2 + box - 1), zeros outside
        box = int(round(scale))
        lo = k[None, :] - box // 2  # (row k = unit vector at k, column j)
        box_m = ((k[:, None] >= lo) & (k[:, None] <= lo + box - 1)).astype(np.float32) / np.float32(box)
    else:
        box_m = np.eye(n, dtype=np.float32)
    u = origin + (np.arange(size) - size // 2) * scale
    # linear interpolation at u; 0 outside [0, n - 1] (no interpolation beyond the edges)
    inside = (u >= 0) & (u <= n - 1)
    i0 = np.clip(np.floor(u).astype(np.int64), 0, n - 1)
    i1 = np.clip(i0 + 1, 0, n - 1)
    t = (u - i0).astype(np.float64)
    W = np.zeros((size, n))
    rows = np.flatnonzero(inside)
    np.add.at(W, (rows, i0[rows]), 1.0 - t[rows])
    np.add.at(W, (rows, i1[rows]), np.where(i1[rows] != i0[rows], t[rows], 0.0))
    A = (W @ box_m.T.astype(np.float64)).astype(np.float32)  # A[u, k]: model pixel u from input pixel k
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
