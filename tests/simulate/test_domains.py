"""The domain-image simulator: reproducible, fractions as asked, moving walls, physics of the variants."""

from __future__ import annotations

import math

import numpy as np
import pytest

from distill4d import Distill4dError
from distill4d.segment.readout import spectrum_orientation
from distill4d.segment.windows import window_features
from distill4d.simulate.domains import ninety_degree_rotation_deg, simulate_domains


def test_reproducible_and_seeded():
    a = simulate_domains((96, 96), n_frames=2, dose=10, read_noise=1, seed=4)
    b = simulate_domains((96, 96), n_frames=2, dose=10, read_noise=1, seed=4)
    c = simulate_domains((96, 96), n_frames=2, dose=10, read_noise=1, seed=5)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.labels, c.labels)


def test_fractions_follow_the_series_and_walls_move():
    d = simulate_domains((128, 128), n_frames=5, fraction_range=(0.2, 0.8), seed=1)
    assert d.fractions[:, 0] == pytest.approx(np.linspace(0.2, 0.8, 5), abs=0.01)
    assert d.fractions.sum(axis=1) == pytest.approx(1.0)
    # a pixel of variant 0 stays variant 0 as its area grows (walls move one way)
    assert np.all(d.labels[-1][d.labels[0] == 0] == 0)
    three = simulate_domains((128, 128), angles_deg=(0, 60, 120), fraction_range=(0.4, 0.4), seed=2)
    assert three.fractions[0] == pytest.approx([0.4, 0.3, 0.3], abs=0.01)


@pytest.mark.parametrize("kind", ["stripes", "lattice"])
def test_each_variant_has_its_orientation_and_period(kind):
    d = simulate_domains((256, 256), kind=kind, angles_deg=(25, 115), periods_px=9, fraction_range=(1.0, 1.0), seed=0)
    assert np.all(d.labels == 0)
    f = window_features(d.images[0], 64, 32)
    a, r = spectrum_orientation(f.flat().mean(axis=0), f.zero_frequency_px)
    if kind == "stripes":  # the stripe normal
        assert abs((a - 25 + 90) % 180 - 90) < 2
        assert f.period_px(r) == pytest.approx(9, rel=0.03)
        return
    # the strongest peak is one of the lattice's reflections (h, l): g = h/a along 25°, l/c across
    c = 9 * 1.02
    hits = []
    for h in range(0, 3):
        for l in range(-2, 3):
            if (h, l) == (0, 0) or (h + l) % 2:  # body-centred: h + l even
                continue
            gy, gx = h / 9, l / c  # in the lattice frame
            ang = (25 + math.degrees(math.atan2(gx, gy))) % 180
            hits.append(abs((a - ang + 90) % 180 - 90) < 2 and abs(f.period_px(r) * math.hypot(gy, gx) - 1) < 0.04)
    assert any(hits), (a, f.period_px(r))


def test_noise_gradient_and_ninety_degree_walls():
    clean = simulate_domains((64, 64), seed=0)
    noisy = simulate_domains((64, 64), dose=5.0, seed=0)
    assert noisy.images.dtype == np.float32
    assert np.all(noisy.images == np.round(noisy.images))  # Poisson counts
    assert abs(noisy.images.mean() / 5.0 - clean.images.mean()) < 0.05
    grad = simulate_domains((64, 64), gradient=0.5, contrast=0.01, seed=0)
    assert 0.3 < (grad.images.max() - grad.images.min()) / grad.images.mean() < 0.6
    assert ninety_degree_rotation_deg(1.0) == pytest.approx(90.0)
    assert ninety_degree_rotation_deg(1.02) == pytest.approx(91.134, abs=1e-3)


@pytest.mark.parametrize("kw, match", [
    ({"kind": "bubbles"}, "kind"), ({"angles_deg": []}, "angles_deg"), ({"periods_px": 1.0}, "periods_px"),
    ({"fraction_range": (0.2, 1.5)}, "fraction_range"), ({"dose": -1}, "dose"), ({"shape": (4, 4)}, "shape"),
])
def test_bad_parameters(kw, match):
    with pytest.raises(Distill4dError, match=match):
        simulate_domains(**kw)
