"""Windowed-FFT features of images: the input of every segmentation method.

Each image is cut into square windows (``window_px`` wide, every ``step_px``), each window is
tapered in real space (Hann or Hamming) *before* its FFT, and the feature is the centred
``log(1 + |FFT|)`` magnitude, binned to ``feature_px`` and clipped. Two fixes against the
reference implementation (m3_learning ``Bright_Field_NN``): its "Hamming" mask multiplies the
spectrum after the FFT (which blurs nothing and leaves the window edges' leakage in place), and
its ``abs`` mode keeps ``|Re FFT|`` only, which depends on where the lattice sits in the window.
Here the taper is applied to the pixels and the full ``|FFT|`` is kept.

All windows of a frame go through one batched pass (:mod:`scipy.fft`, float32, threads): the
taper is separable, so each image row segment is tapered and transformed along x once and shared
by the ``window_px / step_px`` windows that hold it; each window then adds its FFT along y. The
window's tapered mean is removed in Fourier space (a few low frequencies), the power is binned
straight from the half plane of the real FFT, and the spectra are written in place.
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
    scale : ``"log"`` (the above) or ``"linear"``: the RMS |FFT| itself in units of the series'
        standard deviation, neither clipped nor divided (clip 1).
    """

    features: np.ndarray
    window_px: int
    step_px: int
    image_shape: tuple[int, int, int]
    clip: float
    taper: str
    scale: str = "log"

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


def _taper_spectrum_support(tap: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
    """Where the real FFT of the taper is not zero (a few low frequencies for Hann and Hamming) and
    its values there divided by its zero-frequency term: subtracting ``F[0, 0]`` times these from a
    tapered window's FFT ``F`` removes the window's tapered mean."""
    import scipy.fft

    T = scipy.fft.rfft2(tap.astype(np.float64))
    sup = np.nonzero(np.abs(T) > 1e-9 * abs(T[0, 0]))
    return sup, (T[sup] / T[0, 0]).astype(np.complex64)


def _spectra_into(F: np.ndarray, bin_px: int, out: np.ndarray, log: bool = True) -> None:
    """``out`` (n, f, f) = log(1 + RMS |FFT|) (``log``; else the RMS |FFT| itself) over bins of
    ``bin_px``² frequencies, centred (zero frequency at ``f // 2``), from the real FFTs ``F``
    (n, w, w//2 + 1) complex64 of windows (overwritten)."""
    n, w, _ = F.shape
    b, f, h = bin_px, w // bin_px, w // 2
    Fv = F.view(np.float32)  # (n, w, 2 (w//2+1)): re, im
    Fv *= Fv  # re², im²
    # column bins of the power: kx >= 0 (bin c: kx = c b .. c b + b - 1) and, for the half plane
    # kx < 0 through |F(k)| = |F(-k)|, kx = c b + 1 .. c b + b
    pos = _sum_views([Fv[..., 2 * i + j : 2 * h : 2 * b] for i in range(b) for j in (0, 1)])
    neg = _sum_views([Fv[..., 2 * (i + 1) + j : 2 * h + 2 : 2 * b] for i in range(b) for j in (0, 1)])
    # row bins, centred: out row r holds ky = (r - f/2) b .. + b - 1 from ``pos``, and the mirrored
    # bin -ky = (f/2 - r) b - b + 1 .. (f/2 - r) b from ``neg`` (columns reversed)
    r = np.arange(f)
    half = f // 2
    right, left = out[:, :, half:], out[:, :, :half]
    for i in range(b):
        if i == 0:
            np.copyto(right, pos[:, ((r - half) * b) % w])
            np.copyto(left, neg[:, ((half - r) * b - b + 1) % w, ::-1])
        else:
            right += pos[:, ((r - half) * b + i) % w]
            left += neg[:, ((half - r) * b - b + 1 + i) % w, ::-1]
    out *= 1.0 / (b * b)
    np.sqrt(out, out=out)
    if log:
        out += 1.0
        np.log(out, out=out)  # log(1 + RMS |FFT|); NumPy's float32 log is vectorised, log1p is not


def _sum_views(views: list[np.ndarray]) -> np.ndarray:
    """The sum of equally shaped arrays, in a new array."""
    out = views[0].copy()
    for v in views[1:]:
        out += v
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
    chunk: int = 64,
    scale: str = "log",
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
    scale : "log" (default) or "linear": the RMS |FFT| itself, not clipped (the input of the
        ``peaks`` method, whose window strengths add up across a domain wall).
    """
    arr = check_images(images)
    window_px = positive_int("window_px", window_px, minimum=2)
    step_px = positive_int("step_px", step_px)
    feature_px = default_feature_px(window_px) if feature_px is None else positive_int("feature_px", feature_px, minimum=2)
    if window_px % feature_px:
        raise Distill4dError(f"window_px ({window_px}) must be a multiple of feature_px, got feature_px {feature_px}")
    if not 0 < clip_quantile <= 1:
        raise Distill4dError(f"clip_quantile must be in (0, 1], got {clip_quantile!r}")
    if scale not in ("log", "linear"):
        raise Distill4dError(f"scale must be 'log' or 'linear', got {scale!r}")
    t, h, w = arr.shape
    ny, nx = window_grid((h, w), window_px, step_px)
    import scipy.fft

    # the pixel unit must not matter (log(1 + x) is not scale-free): the series in units of its std,
    # folded into the taper
    std = float(arr.std())
    tap = window_taper(window_px, taper)
    sup, tap_ft = _taper_spectrum_support(tap)
    if std > 0:
        tap *= np.float32(1.0 / std)
    bin_px = window_px // feature_px
    workers = workers or (len(_affinity()) or 1)
    out = np.empty((t, ny, nx, feature_px, feature_px), dtype=np.float32)
    # the taper is separable, w(y) w(x): the FFT along x of a tapered row segment is shared by the
    # window_px / step_px windows that hold that row, so rows are transformed once per frame and
    # each window only adds its FFT along y
    wy = tap[:, window_px // 2] / tap[window_px // 2, window_px // 2]
    wx = tap[window_px // 2] / wy[window_px // 2]
    wy = wy.astype(np.complex64)[None, :, None]
    used_h = (ny - 1) * step_px + window_px
    seg = np.lib.stride_tricks.sliding_window_view(arr[:, :used_h], window_px, axis=2)[:, :, ::step_px][:, :, :nx]
    rows = max(1, chunk // nx)  # window rows per batch
    R = np.empty((used_h, nx, window_px // 2 + 1), np.complex64)  # one frame's row FFTs

    def rows_ft(k: int, y: int) -> None:  # FFTs along x of row segments y .. y + 4 w of frame k
        y1 = min(y + 4 * window_px, used_h)
        R[y:y1] = scipy.fft.rfft(np.multiply(seg[k, y:y1], wx, dtype=np.float32), axis=-1, overwrite_x=True,
                                 workers=1)

    def windows_ft(k: int, i: int) -> None:  # window rows i .. i + rows of frame k
        for j in range(i, min(i + rows, ny)):
            F = np.multiply(R[j * step_px : j * step_px + window_px].transpose(1, 0, 2), wy)  # (nx, w, w//2 + 1)
            F = scipy.fft.fft(F, axis=1, overwrite_x=True, workers=1)
            F[:, sup[0], sup[1]] -= F[:, :1, 0] * tap_ft  # the window's tapered mean, removed in Fourier space
            _spectra_into(F, bin_px, out[k, j], log=scale == "log")

    pool = None
    if workers > 1 and (ny > rows or used_h > 4 * window_px):  # NumPy and pocketfft release the GIL
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(workers)
    try:
        for k in range(t):
            for fn, starts in ((rows_ft, range(0, used_h, 4 * window_px)), (windows_ft, range(0, ny, rows))):
                if pool is None:
                    for i in starts:
                        fn(k, i)
                else:
                    list(pool.map(lambda i: fn(k, i), starts))
    finally:
        if pool is not None:
            pool.shutdown()
    out = out.reshape(t * ny * nx, feature_px, feature_px)
    c = feature_px // 2
    yy, xx = np.ogrid[:feature_px, :feature_px]
    out[:, (yy - c) ** 2 + (xx - c) ** 2 <= dc_radius_px**2] = 0.0
    if scale == "linear":
        return WindowFeatures(out.reshape(t, ny, nx, feature_px, feature_px), window_px, step_px, (t, h, w), 1.0, taper,
                              scale)
    if clip is None:
        sample = out[:: max(1, len(out) // 256)]
        clip = float(np.quantile(sample, clip_quantile))
    clip = float(clip) if clip and math.isfinite(clip) and clip > 0 else 1.0
    out *= np.float32(1.0 / clip)
    np.minimum(out, 1.0, out=out)  # the features are >= 0 already
    return WindowFeatures(out.reshape(t, ny, nx, feature_px, feature_px), window_px, step_px, (t, h, w), clip, taper)


def _affinity() -> set[int]:
    import os

    try:
        return os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))
