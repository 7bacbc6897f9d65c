"""Windowed-FFT features of images: the input of every segmentation method.

Each image is cut into square windows (``window_px`` wide, every ``step_px``), each window is
tapered in real space (Hann or Hamming) *before* its FFT, and the feature is the centred
``log(1 + |FFT|)`` magnitude, binned to ``feature_px`` and clipped. Two fixes against the
reference implementation (m3_learning ``Bright_Field_NN``): its "Hamming" mask multiplies the
spectrum after the FFT (which blurs nothing and leaves the window edges' leakage in place), and
its ``abs`` mode keeps ``|Re FFT|`` only, which depends on where the lattice sits in the window.
Here the taper is applied to the pixels and the full ``|FFT|`` is kept.

All windows of all frames of a series go through one batched pass: a strided view of the
images, one real FFT per chunk of windows (:mod:`scipy.fft`, threads).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from ..errors import Distill4dError
from .._validate import positive_int

__all__ = ["TAPERS", "WindowFeatures", "check_images", "default_feature_px", "window_features", "window_grid", "window_taper"]

#: The real-space tapers a window can get.
TAPERS = ("hann", "hamming", "none")


def check_images(images: Any, name: str = "images") -> np.ndarray:
    """``images`` as a float32 array (T, H, W): a 2D image becomes one frame. Distill4dError when
    it is not 2D or 3D, empty, not real, or has NaN/Inf pixels."""
    arr = np.asarray(images)
    if arr.dtype.kind == "b":
        arr = arr.astype(np.float32)
    if arr.dtype.kind not in "uif":
        raise Distill4dError(f"{name} must be a real image (integer or float), got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise Distill4dError(f"{name} must be an image (H, W) or a series (T, H, W), got shape {np.shape(images)}")
    if arr.size == 0:
        raise Distill4dError(f"{name} is empty (shape {np.shape(images)})")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    bad = arr.size - int(np.isfinite(arr).sum())
    if bad:
        raise Distill4dError(f"{name} has {bad} NaN or Inf pixels; replace them (e.g. by the mean) first")
    return arr


def window_grid(shape: tuple[int, int], window_px: int, step_px: int) -> tuple[int, int]:
    """``(ny, nx)``: windows along each axis of an image of ``shape`` (H, W) px. Distill4dError when
    the window is larger than the image or the step is not a positive integer."""
    window_px = positive_int("window_px", window_px, minimum=2)
    step_px = positive_int("step_px", step_px)
    h, w = shape
    if window_px > h or window_px > w:
        raise Distill4dError(f"window_px must be at most the image size {h}x{w} px, got {window_px}")
    return (h - window_px) // step_px + 1, (w - window_px) // step_px + 1


def default_feature_px(window_px: int, largest: int = 64) -> int:
    """The feature side for a window: ``window_px / b`` for the smallest bin ``b`` that divides
    ``window_px`` and makes it at most ``largest`` px (64 for a 128 px window, 32 for 32 px)."""
    b = max(1, -(-window_px // largest))
    while window_px % b:
        b += 1
    return window_px // b


def window_taper(window_px: int, taper: str = "hann") -> np.ndarray:
    """The 2D real-space taper (outer product of the periodic 1D window), float32 (window_px, window_px)."""
    if taper not in TAPERS:
        raise Distill4dError(f"taper must be one of {TAPERS}, got {taper!r}")
    n = np.arange(window_px)
    if taper == "none":
        w = np.ones(window_px)
    else:
        a0 = 0.5 if taper == "hann" else 0.54
        w = a0 - (1 - a0) * np.cos(2 * np.pi * n / window_px)
    return np.outer(w, w).astype(np.float32)


@dataclasses.dataclass
class WindowFeatures:
    """The windowed-FFT features of a series.

    features : (T, ny, nx, F, F) float32 in [0, 1]: centred log(1 + RMS |FFT|) over bins of
        b x b frequencies (b = window_px / F), divided by the clip level. Bin j of an axis holds the
        frequencies ``b (j - F/2) .. b (j - F/2) + b - 1`` (cycles per window).
    window_px, step_px : window width and step (image px).
    image_shape : (T, H, W) of the input.
    clip : the clip level of log(1 + |FFT|) (the ``clip_quantile`` of the series).
    taper : the real-space taper.
    """

    features: np.ndarray
    window_px: int
    step_px: int
    image_shape: tuple[int, int, int]
    clip: float
    taper: str

    @property
    def grid_shape(self) -> tuple[int, int]:
        """(ny, nx) windows per frame."""
        return self.features.shape[1], self.features.shape[2]

    @property
    def feature_px(self) -> int:
        """F, the side of a feature (px)."""
        return self.features.shape[-1]

    @property
    def zero_frequency_px(self) -> float:
        """Where the zero frequency lies on both axes of a feature (px): ``F/2 - (b - 1)/(2 b)`` for
        bins of ``b = window_px / F`` frequencies (a bin's centre is its frequencies' mean)."""
        b = max(self.window_px // self.feature_px, 1)
        return self.feature_px / 2 - (b - 1) / (2 * b)

    def period_px(self, radius_px: float) -> float:
        """The real-space period (image px) of a feature peak ``radius_px`` from the zero frequency."""
        b = max(self.window_px // self.feature_px, 1)
        return self.window_px / max(radius_px * b, 1e-9)

    def flat(self) -> np.ndarray:
        """The features as (T·ny·nx, F, F) (a view)."""
        return self.features.reshape(-1, self.feature_px, self.feature_px)

    def centres_px(self) -> tuple[np.ndarray, np.ndarray]:
        """Image-pixel coordinates (y, x) of the window centres along each axis."""
        ny, nx = self.grid_shape
        c = (self.window_px - 1) / 2
        return np.arange(ny) * self.step_px + c, np.arange(nx) * self.step_px + c


def _spectra(windows: np.ndarray, bin_px: int) -> np.ndarray:
    """log(1 + RMS |FFT|) of tapered windows (n, w, w) over bins of ``bin_px``²
    frequencies, centred (zero frequency at ``w/bin_px // 2``): (n, w/bin_px, w/bin_px) float32."""
    import scipy.fft

    n, w, _ = windows.shape
    F = scipy.fft.rfft2(windows, overwrite_x=True).view(np.float32)  # (n, w, 2 (w//2+1)): re, im
    P = F[..., 0::2] ** 2
    P += F[..., 1::2] ** 2  # power, (n, w, w//2+1), ky in FFT order, kx = 0..w/2
    f, h = w // bin_px, w // 2
    # kx >= 0: bins of the half plane; kx < 0: |F(k)| = |F(-k)|, so bins of P(-ky, -kx)
    pos = _bin_rows(P[:, :, :h], bin_px, 0)
    neg = _bin_rows(P[:, :, 1 : h + 1], bin_px, bin_px - 1)
    pos = _bin_cols(pos, bin_px)
    neg = _bin_cols(neg, bin_px)
    out = np.empty((n, f, f), dtype=np.float32)
    rows = (np.arange(f) - f // 2) % f  # bin rows in FFT order -> centred
    out[:, :, f // 2 :] = pos[:, rows]
    # neg bin (m, c): -ky in [m b - 1, m b + b - 2] and -kx in [c b + 1, c b + b]: ky bin -m, kx bin -c-1
    out[:, :, : f // 2] = neg[:, (-rows) % f][:, :, ::-1]
    out *= 1.0 / (bin_px * bin_px)
    np.sqrt(out, out=out)
    np.log1p(out, out=out)
    return out


def _bin_rows(P: np.ndarray, b: int, offset: int) -> np.ndarray:
    """Sums of ``b`` consecutive rows (axis 1, cyclic), the first bin starting at row ``-offset``."""
    if offset:
        P = np.roll(P, offset, axis=1)
    out = P[:, 0::b].copy()
    for i in range(1, b):
        out += P[:, i::b]
    return out


def _bin_cols(P: np.ndarray, b: int) -> np.ndarray:
    out = P[..., 0::b].copy()
    for i in range(1, b):
        out += P[..., i::b]
    return out


def window_features(
    images: Any,
    window_px: int = 128,
    step_px: int = 32,
    *,
    feature_px: int | None = None,
    taper: str = "hann",
    clip_quantile: float = 0.999,
    clip: float | None = None,
    dc_radius_px: float = 1.0,
    workers: int | None = None,
    chunk: int = 256,
) -> WindowFeatures:
    """Windowed-FFT features of an image (H, W) or a series (T, H, W).

    window_px : window width (image px); step_px : step between windows (image px).
    feature_px : side of each feature (px); ``window_px`` must be a multiple of it (the spectrum
        is binned by ``window_px / feature_px``). Default: :func:`default_feature_px`.
    taper : real-space taper before the FFT: "hann" (default), "hamming" or "none".
    clip_quantile : log(1 + |FFT|) is divided by this quantile over the whole series and clipped to 1
        (the series is first divided by its standard deviation, so the pixel unit does not matter).
    clip : a fixed clip level instead (e.g. the ``clip`` of a model's training features).
    dc_radius_px : feature pixels within this radius of the centre (the DC term and the taper's
        leakage of the mean) are set to 0.
    workers : FFT threads (default: all cores).
    """
    arr = check_images(images)
    window_px = positive_int("window_px", window_px, minimum=2)
    step_px = positive_int("step_px", step_px)
    feature_px = default_feature_px(window_px) if feature_px is None else positive_int("feature_px", feature_px, minimum=2)
    if window_px % feature_px:
        raise Distill4dError(f"window_px ({window_px}) must be a multiple of feature_px, got feature_px {feature_px}")
    if not 0 < clip_quantile <= 1:
        raise Distill4dError(f"clip_quantile must be in (0, 1], got {clip_quantile!r}")
    t, h, w = arr.shape
    ny, nx = window_grid((h, w), window_px, step_px)
    # the pixel unit must not matter (log(1 + x) is not scale-free): the series in units of its std
    scale = float(arr.std())
    if scale > 0:
        arr = arr * np.float32(1.0 / scale)
    tap = window_taper(window_px, taper)
    bin_px = window_px // feature_px
    workers = workers or (len(_affinity()) or 1)
    view = np.lib.stride_tricks.sliding_window_view(arr, (window_px, window_px), axis=(1, 2))[:, ::step_px, ::step_px]
    view = view[:, :ny, :nx]  # (T, ny, nx, w, w), strided: no copy
    out = np.empty((t, ny, nx, feature_px, feature_px), dtype=np.float32)
    rows = max(1, chunk // nx)  # window rows per FFT batch
    jobs = [(k, i) for k in range(t) for i in range(0, ny, rows)]

    def run(job: tuple[int, int]) -> None:
        k, i = job
        part = view[k, i : i + rows]
        b = np.multiply(part, tap, dtype=np.float32)  # the copy and the real-space taper in one pass
        b -= (b.mean(axis=(2, 3), keepdims=True) / tap.mean()) * tap  # the window's (tapered) mean
        out[k, i : i + rows] = _spectra(b.reshape(-1, window_px, window_px), bin_px).reshape(
            len(part), nx, feature_px, feature_px)

    if workers > 1 and len(jobs) > 1:  # NumPy and pocketfft release the GIL: one chunk per thread
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(run, jobs))
    else:
        for job in jobs:
            run(job)
    out = out.reshape(t * ny * nx, feature_px, feature_px)
    c = feature_px // 2
    yy, xx = np.ogrid[:feature_px, :feature_px]
    out[:, (yy - c) ** 2 + (xx - c) ** 2 <= dc_radius_px**2] = 0.0
    if clip is None:
        sample = out[:: max(1, len(out) // 512)]
        clip = float(np.quantile(sample, clip_quantile))
    clip = float(clip) if clip and math.isfinite(clip) and clip > 0 else 1.0
    out /= clip
    np.clip(out, 0.0, 1.0, out=out)
    return WindowFeatures(out.reshape(t, ny, nx, feature_px, feature_px), window_px, step_px, (t, h, w), clip, taper)


def _affinity() -> set[int]:
    import os

    try:
        return os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))
