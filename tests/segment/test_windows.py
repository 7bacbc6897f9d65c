"""Windowed-FFT features: the peak of a stripe image at its frequency and angle, the real-space
taper, the grid, and clear errors for bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from distill4d import Distill4dError
from distill4d.segment.readout import spectrum_orientation
from distill4d.segment.windows import window_features, window_grid, window_taper


def _stripes(shape, angle_deg, period_px):
    y, x = np.mgrid[: shape[0], : shape[1]].astype(float)
    t = math.radians(angle_deg)
    return np.cos(2 * np.pi * (y * math.cos(t) + x * math.sin(t)) / period_px)


@pytest.mark.parametrize("angle, period", [(0.0, 8.0), (30.0, 6.0), (73.0, 10.0), (120.0, 5.0), (161.0, 12.0)])
@pytest.mark.parametrize("window, feature", [(64, 64), (128, 64)])
def test_stripe_peak_at_its_frequency_and_angle(angle, period, window, feature):
    f = window_features(_stripes((256, 256), angle, period), window, 32, feature_px=feature)
    spec = f.flat().mean(axis=0)
    a, r = spectrum_orientation(spec, f.zero_frequency_px)
    # exact pixel of the peak: frequency window/period cycles per window, binned by window/feature
    da = (a - angle + 90) % 180 - 90
    tol = 1.0 if window == feature else 3.0  # binning 2x2 frequencies costs resolution
    assert abs(da) < tol, (a, angle)
    assert f.period_px(r) == pytest.approx(period, rel=0.02 if window == feature else 0.06)
    # the peak holds most of the spectrum: the window's own spectrum has it too
    one = f.features[0, 1, 1]
    assert one.max() == pytest.approx(1.0) or one.max() > 0.9


def test_taper_is_in_real_space_and_full_magnitude_is_kept():
    """A stripe shifted by a quarter period has the same features (|FFT|, not |Re FFT|, whose
    peak vanishes for a sine), and the Hann taper removes the leakage a rectangular window has."""
    img_cos = _stripes((128, 128), 0.0, 128 / 10.3)  # not a whole number of periods per window
    y = np.mgrid[:128, :128][0]
    img_sin = np.sin(2 * np.pi * y / (128 / 10.3))
    a = window_features(img_cos, 128, 32, feature_px=128, clip=10.0).features[0, 0, 0]
    b = window_features(img_sin, 128, 32, feature_px=128, clip=10.0).features[0, 0, 0]
    assert np.abs(a - b).max() < 0.02 * a.max()
    hann = window_features(img_cos, 128, 32, feature_px=128, clip=10.0, taper="hann").features[0, 0, 0]
    rect = window_features(img_cos, 128, 32, feature_px=128, clip=10.0, taper="none").features[0, 0, 0]
    far = np.zeros((128, 128), bool)
    far[64 + 30 :, 64] = True  # frequencies along the stripe normal, far from the peak (10.3) and from 0
    assert rect[far].mean() > 3 * hann[far].mean()
    w = window_taper(8, "hann")
    assert w[0, 0] == 0 and w.max() == pytest.approx(1.0)


def test_grid_and_series():
    assert window_grid((1400, 1400), 128, 32) == (40, 40)
    f = window_features(np.random.default_rng(0).random((3, 160, 200)), 64, 32, feature_px=32)
    assert f.features.shape == (3, 4, 5, 32, 32)
    assert f.features.dtype == np.float32 and f.features.min() >= 0 and f.features.max() <= 1
    cy, cx = f.centres_px()
    assert cy[0] == pytest.approx(31.5) and cx[-1] == pytest.approx(4 * 32 + 31.5)


@pytest.mark.parametrize("images, kw, match", [
    (np.zeros(100), {}, "image"),
    (np.zeros((0, 0)), {}, "empty"),
    (np.zeros((64, 64)), {"window_px": 128}, "window_px must be at most"),
    (np.zeros((256, 256)), {"step_px": 0}, "step_px"),
    (np.full((256, 256), np.nan), {}, "NaN"),
    (np.zeros((256, 256)), {"feature_px": 48}, "multiple"),
    (np.zeros((256, 256)), {"taper": "kaiser"}, "taper"),
])
def test_bad_input_is_a_clear_error(images, kw, match):
    with pytest.raises(Distill4dError, match=match):
        window_features(images, **kw)


@pytest.mark.parametrize("taper, window, feature", [("hann", 64, 32), ("hamming", 32, 32), ("none", 48, 12)])
def test_features_equal_the_direct_definition(taper, window, feature):
    """The fast path (separable taper, row FFTs shared between windows, the mean removed in Fourier
    space, power binned from the half plane) equals taper -> subtract tapered mean -> fft2 -> RMS
    |F| over bins -> log(1 + x), centred, to float32 rounding."""
    img = np.random.default_rng(3).normal(size=(2, 150, 170)) + 5.0
    f = window_features(img, window, 24, feature_px=feature, taper=taper, clip=1e9, dc_radius_px=0.0)
    lin = window_features(img, window, 24, feature_px=feature, taper=taper, dc_radius_px=0.0, scale="linear")
    assert lin.scale == "linear" and lin.clip == 1.0
    tap = window_taper(window, taper).astype(np.float64)
    b = window // feature
    s = img.std()
    for k, i, j in [(0, 0, 0), (1, 2, 3), (0, f.grid_shape[0] - 1, f.grid_shape[1] - 1)]:
        win = img[k, i * 24 : i * 24 + window, j * 24 : j * 24 + window] / s * tap
        win -= win.mean() / tap.mean() * tap
        p = np.abs(np.fft.fftshift(np.fft.fft2(win))) ** 2  # zero frequency at window // 2
        # bin (m, c) holds frequencies b (m - F/2) .. + b - 1: starts at the zero frequency
        binned = p.reshape(feature, b, feature, b).mean(axis=(1, 3))
        want = np.log1p(np.sqrt(binned)) / 1e9
        want[feature // 2, feature // 2] = 0.0  # the centre (zero frequency) is always set to 0
        np.testing.assert_allclose(f.features[k, i, j], want, rtol=2e-4, atol=1e-6 * want.max())
        want = np.sqrt(binned)  # scale="linear": the RMS |F| itself, neither log nor clip
        want[feature // 2, feature // 2] = 0.0
        np.testing.assert_allclose(lin.features[k, i, j], want, rtol=2e-4, atol=1e-6 * want.max())
