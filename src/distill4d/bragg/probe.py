"""The probe template: the vacuum (direct-beam) disk, centred at pixel (0, 0) for FFT correlation."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from scipy import ndimage

from .._validate import pattern_array, positive_float
from ..datacube import DataCube
from ..errors import Distill4dError
from .mean import finite_mean_pattern

__all__ = ["KINDS", "Probe", "probe_template", "measure_disk", "sobel_magnitude"]

#: Probe template kinds.
KINDS = ("disk", "edge", "sobel")


def sobel_magnitude(images: Any) -> np.ndarray:
    """Sobel gradient magnitude of each image over the last two axes (float64, pattern units per px;
    the detector edge repeats its pixels); images of a stack are filtered independently."""
    a = np.asarray(images, dtype=np.float64)
    # derivative along one image axis, [1, 2, 1] along the other, nothing along the stack's axes
    # (``ndimage.sobel`` on a stack would also smooth across neighbouring images)
    d, s = [-1.0, 0.0, 1.0], [1.0, 2.0, 1.0]
    gx = ndimage.correlate1d(ndimage.correlate1d(a, d, axis=-2, mode="nearest"), s, axis=-1, mode="nearest")
    gy = ndimage.correlate1d(ndimage.correlate1d(a, d, axis=-1, mode="nearest"), s, axis=-2, mode="nearest")
    return np.hypot(gx, gy)


@dataclasses.dataclass(frozen=True)
class Probe:
    """A probe template for correlation disk detection.

    Attributes
    ----------
    kernel : 2D float64 template centred at pixel ``(0, 0)`` (FFT convention, wrapped),
        normalised so that the plain disk sums to 1 (the ``"edge"`` kernel then sums to 0).
    radius_px : disk radius in pixels (from the area of the disk).
    origin_px : centre ``(qx, qy)`` of the disk in the source image, in pixels.
    kind : ``"disk"`` (the probe itself), ``"edge"`` (probe minus its Gaussian blur) or
        ``"sobel"`` (the probe's Sobel gradient magnitude, normalised to sum 1: a ring on the rim,
        for patterns filtered the same way, see ``DetectionParameters.prefilter``).
    """

    kernel: np.ndarray
    radius_px: float
    origin_px: tuple[float, float]
    kind: str = "disk"

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.kernel.shape)  # type: ignore[return-value]


def measure_disk(image: Any) -> tuple[tuple[float, float], float, np.ndarray]:
    """Find the brightest disk of a pattern: its centre (pixels), radius (pixels) and a mask.

    The background (median of the image) is removed, the disk is the connected region
    above half the (lightly smoothed) maximum that contains the maximum, grown by 2 pixels
    to take in the soft edge. The radius is ``sqrt(area / pi)`` with ``area`` = integrated
    intensity / plateau intensity; the centre is the intensity centroid.

    Raises ValueError when the image has no positive feature.
    """
    im = np.asarray(image, dtype=np.float64)
    im = im - np.median(im)
    smooth = ndimage.gaussian_filter(im, 1.0)
    peak = np.unravel_index(int(np.argmax(smooth)), im.shape)
    top = smooth[peak]
    if not top > 0:
        raise Distill4dError("no disk found: the image is flat (no pixel above the background)")
    labels, _ = ndimage.label(smooth > 0.5 * top)
    core = labels == labels[peak]
    mask = ndimage.binary_dilation(core, iterations=2)
    w = np.where(mask, np.clip(im, 0, None), 0.0)
    total = w.sum()
    plateau = np.median(im[core & (im > 0.5 * top)]) if np.any(core & (im > 0.5 * top)) else top
    radius = math.sqrt(total / (math.pi * plateau))
    x = np.arange(im.shape[0])[:, None]
    y = np.arange(im.shape[1])[None, :]
    centre = (float((w * x).sum() / total), float((w * y).sum() / total))
    return centre, radius, mask


def _fourier_shift(image: np.ndarray, shift: tuple[float, float]) -> np.ndarray:
    """``image`` translated by ``shift`` pixels (periodic, sub-pixel exact for band-limited images)."""
    kx = np.fft.fftfreq(image.shape[0])[:, None]
    ky = np.fft.fftfreq(image.shape[1])[None, :]
    phase = np.exp(-2j * np.pi * (kx * shift[0] + ky * shift[1]))
    return np.real(np.fft.ifft2(np.fft.fft2(image) * phase))


def probe_template(
    probe: Any = None,
    *,
    datacube: DataCube | None = None,
    kind: str = "disk",
    sigma_px: float | None = None,
) -> Probe:
    """Build a probe template from a vacuum probe, a stack of them, or the data itself.

    Parameters
    ----------
    probe : a 2D vacuum-probe pattern ``(Qx, Qy)``, a 3D stack ``(n, Qx, Qy)`` (averaged),
        a DataCube of vacuum patterns (averaged), a :class:`Probe` (returned unchanged when
        ``kind`` matches), or None: the central (brightest) disk of the mean pattern of
        ``datacube``.
    datacube : the data the template is for; its pattern shape must match the probe's.
    kind : ``"disk"`` (the probe), ``"edge"`` (probe minus its Gaussian blur: a trench
        kernel that ignores smooth backgrounds and sharpens correlation peaks) or ``"sobel"``
        (the Sobel gradient magnitude of the probe, normalised to sum 1: the kernel of
        edge-filtered correlation, Pekin et al., Ultramicroscopy 176 (2017); the patterns must be
        filtered the same way, ``prefilter="sobel"`` of the detection).
    sigma_px : Gaussian width of the ``"edge"`` kernel in pixels (default: radius / 2).

    Returns
    -------
    Probe
    """
    if kind not in KINDS:
        raise Distill4dError(f"kind must be one of {KINDS}, got {kind!r}")
    if datacube is not None and not isinstance(datacube, DataCube):
        raise TypeError(f"datacube must be a distill4d.DataCube, got {type(datacube).__name__}")
    if isinstance(probe, Probe):
        if probe.kind == kind and (sigma_px is None or kind == "disk"):
            _check_shape(probe.shape, datacube)
            return probe
        base = probe.kernel if probe.kind == "disk" else None
        if base is None:
            raise Distill4dError(f"cannot turn a {probe.kind!r} Probe into another kind; build it from the probe image")
        disk = base
        radius, origin = probe.radius_px, probe.origin_px
    else:
        if probe is None:
            if datacube is None:
                raise Distill4dError("probe_template needs a probe image or a datacube (to estimate the probe from)")
            image = finite_mean_pattern(datacube)
        elif isinstance(probe, DataCube):
            image = finite_mean_pattern(probe)
        else:
            arr = np.asarray(probe)
            if arr.ndim == 3:
                arr = pattern_array("probe", arr, ndim=3).astype(np.float64).mean(axis=0)
            image = pattern_array("probe", arr, ndim=2).astype(np.float64)
        _check_shape(image.shape, datacube)
        origin, radius, mask = measure_disk(image)
        crop = np.where(mask, np.clip(image - np.median(image), 0, None), 0.0)
        disk = _fourier_shift(crop, (-origin[0], -origin[1]))
        disk /= disk.sum()
    if kind == "disk":
        return Probe(disk, float(radius), origin, "disk")
    if kind == "sobel":
        ring = np.fft.ifftshift(sobel_magnitude(np.fft.fftshift(disk)))
        return Probe(ring / ring.sum(), float(radius), origin, "sobel")
    sigma = radius / 2 if sigma_px is None else positive_float("sigma_px", sigma_px)
    edge = disk - ndimage.gaussian_filter(disk, sigma, mode="wrap")
    return Probe(edge, float(radius), origin, "edge")


def _check_shape(shape: tuple[int, ...], datacube: DataCube | None) -> None:
    if datacube is not None and tuple(shape) != datacube.pattern_shape:
        raise Distill4dError(
            f"probe must have the pattern shape of the data {datacube.pattern_shape}, got {tuple(shape)}"
        )
