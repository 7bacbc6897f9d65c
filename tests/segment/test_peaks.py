"""The ``peaks`` method: NMF of the linear window spectra at the mean spectrum's peaks."""

import numpy as np
import pytest

from distill4d.errors import Distill4dError
from distill4d.segment import mean_iou, segment
from distill4d.segment.windows import window_features
from distill4d.simulate.domains import simulate_domains


def _two_stripes(wall_px: int, shape=(256, 384), periods=(9.0, 11.0), angles=(20.0, 105.0), dose=20.0, seed=1):
    """Stripes of angle 0 left of a straight wall at column ``wall_px``, angle 1 right of it; Poisson noise."""
    y, x = np.mgrid[: shape[0], : shape[1]].astype(float)
    waves = [1 + 0.5 * np.cos(2 * np.pi * (x * np.sin(np.radians(a)) + y * np.cos(np.radians(a))) / p)
             for a, p in zip(angles, periods)]
    img = np.where(x < wall_px, waves[0], waves[1])
    return np.random.default_rng(seed).poisson(dose * img).astype(np.float32), (x >= wall_px).astype(np.int16)


def test_a_wall_between_window_centres_is_placed_to_a_few_pixels():
    # windows of 64 px every 32 px: their centres lie at 31.5 + 32 i; a read-out per window would put
    # the wall on that grid (up to 16 px off); the activations are amplitudes, so it lands between
    for wall in (171, 187):
        img, truth = _two_stripes(wall)
        s = segment(img, "peaks", domains=2, window_px=64, step_px=32)
        lab = s.labels[0]
        assert set(np.unique(lab)) == {0, 1}
        right = int(np.argmax(np.bincount(lab[:, -1])))
        found = (lab == right).mean(axis=0)  # per column: the share labelled as the right-hand variant
        col = int(np.argmin(np.abs(found - 0.5)))
        assert abs(col - wall) <= 5  # px


def test_stripes_and_a_c_twins_without_the_number_of_variants():
    d = simulate_domains((384, 384), angles_deg=(15.0, 75.0, 135.0), periods_px=8.0, dose=30.0, seed=3)
    s = segment(d.images, "peaks", window_px=64, step_px=16)
    assert s.n_variants == 3
    assert mean_iou(s.labels, d.labels) > 0.9
    found = np.sort(s.variant_angles_deg)
    assert np.max(np.abs(found - np.array([15.0, 75.0, 135.0]))) < 4.0  # degrees
    # a/c twins: the same rows a few per cent and ~2 degrees apart, in the same spectral bins
    from distill4d.simulate.domains import ninety_degree_rotation_deg

    d = simulate_domains((384, 384), kind="lattice", tetragonality=1.04, angles_deg=(30.0, 30.0 + ninety_degree_rotation_deg(1.04)),
                         periods_px=8.0, dose=30.0, seed=4)
    s = segment(d.images, "peaks", window_px=64, step_px=16)
    assert s.n_variants == 2
    assert mean_iou(s.labels, d.labels) > 0.85


def test_bad_input_for_peaks():
    rng = np.random.default_rng(0)
    with pytest.raises(Distill4dError, match="no periodic contrast"):
        segment(rng.poisson(5.0, (256, 256)).astype(np.float32), "peaks", window_px=64, step_px=32)
    img, _ = _two_stripes(150)
    with pytest.raises(Distill4dError, match="scale 'linear'"):
        segment(None, "peaks", features=window_features(img, 64, 32))


def test_4d_scan_through_its_patterns():
    """route="patterns": each diffraction pattern is a window's spectrum; two grains whose spot
    lattices are rotated by 30 degrees are told apart without the number of variants."""
    import distill4d
    from distill4d.segment import segment_datacube

    rng = np.random.default_rng(2)
    n, q = 24, 48
    grain = (np.add.outer(np.arange(n), np.arange(n)) > 26).astype(int)  # a diagonal boundary
    yy, xx = np.mgrid[:q, :q] - q / 2
    pats = []
    for rot in (np.radians(10.0), np.radians(40.0)):
        p = np.zeros((q, q))
        for h in range(-2, 3):
            for k in range(-2, 3):
                gx, gy = 7.0 * (h * np.cos(rot) - k * np.sin(rot)), 7.0 * (h * np.sin(rot) + k * np.cos(rot))
                p += np.exp(-((xx - gx) ** 2 + (yy - gy) ** 2) / 2.0)
        pats.append(50 * p)
    data = rng.poisson(np.stack([pats[g] for g in grain.ravel()]).reshape(n, n, q, q) + 1.0).astype(np.float32)
    s = segment_datacube(distill4d.DataCube.from_array(data), "peaks", engine={"progress": False})
    assert s.n_variants == 2
    assert mean_iou(s.labels, grain[None]) > 0.95


def test_absurd_peaks_parameters_are_named():
    from distill4d.segment.peaks import peak_unmixing

    img, _ = _two_stripes(150)
    f = window_features(img, 64, 32, scale="linear")
    for kw, name in (({"max_variants": 0}, "max_variants"), ({"single_ratio": 2.0}, "single_ratio"),
                     ({"n_variants": 0}, "n_variants"), ({"max_peaks": 0}, "max_peaks"),
                     ({"halfwidth": -1}, "halfwidth"), ({"min_sigma": -1.0}, "min_sigma")):
        with pytest.raises(Distill4dError, match=name):
            peak_unmixing(f, **kw)
