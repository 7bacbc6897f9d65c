"""Walls at pixel precision: lock-in fringe energy (distill4d.segment.walls)."""

from __future__ import annotations

import numpy as np
import pytest

from distill4d import Distill4dError
from distill4d.segment import mean_iou, segment
from distill4d.segment.walls import fringe_energy, refine_walls
from distill4d.simulate.domains import simulate_domains


def _two_variant_image(seed: int = 0, period: float = 8.0):
    """256 x 256 px: stripes with their normal along axis 0 left of a curved wall
    x = 110 + 20 sin(2 pi y / 256), along axis 1 right of it; Poisson noise (20 counts/px mean)."""
    h = w = 256
    y, x = np.mgrid[:h, :w].astype(float)
    wall_x = 110 + 20 * np.sin(2 * np.pi * np.arange(h) / h)
    truth = (x >= wall_x[:, None]).astype(np.int16)
    img = np.where(truth == 0, 1 + 0.5 * np.cos(2 * np.pi * y / period), 1 + 0.5 * np.cos(2 * np.pi * x / period))
    rng = np.random.default_rng(seed)
    return rng.poisson(20 * img).astype(np.float32), truth, wall_x


def _wall_position(labels: np.ndarray) -> np.ndarray:
    """The first column of label 1 in every row (px)."""
    return np.argmax(labels == 1, axis=1).astype(float)


def test_fringe_energy_is_high_on_its_own_stripes():
    img, truth, _ = _two_variant_image()
    e0 = fringe_energy(img, 0.0, 8.0, 6.4)
    e1 = fringe_energy(img, 90.0, 8.0, 6.4)
    # away from the wall, each variant's energy is >= 10x larger on its own stripes
    left, right = np.s_[:, :60], np.s_[:, 180:]
    assert np.median(e0[left]) > 10 * np.median(e0[right])
    assert np.median(e1[right]) > 10 * np.median(e1[left])


def test_refine_moves_a_straight_wall_onto_the_curved_one():
    """Labels with a straight wall at x = 110 (up to 20 px off the true curved wall) are moved to
    within 2 px of it on average; a row's wall is never more than 6 px off."""
    img, truth, wall_x = _two_variant_image()
    coarse = np.zeros_like(truth)
    coarse[:, 110:] = 1
    before = np.abs(_wall_position(coarse) - np.ceil(wall_x))
    assert before.mean() > 10
    refined, info = refine_walls(img, coarse, [0.0, 90.0], [8.0, 8.0], band_px=32)
    assert info["applied"] and min(info["contrast"]) > 10
    after = np.abs(_wall_position(refined[0]) - np.ceil(wall_x))
    assert after.mean() < 2.0
    assert after.max() <= 6
    assert mean_iou(refined[0], truth) > 0.97 > mean_iou(coarse, truth)


def test_refine_leaves_labels_where_fringes_do_not_differ():
    """Two variants with the same fringe (angle and period): contrast about 1, labels unchanged."""
    img, truth, _ = _two_variant_image()
    coarse = np.zeros_like(truth)
    coarse[:, 110:] = 1
    out, info = refine_walls(img, coarse, [90.0, 90.0], [8.0, 8.0], band_px=32)
    assert not info["applied"] and "do not tell the variants apart" in info["reason"]
    np.testing.assert_array_equal(out[0], coarse)


def test_segment_refines_walls_by_default():
    """peaks on a simulated two-variant image (64 px windows): the refined map scores higher than
    the window read-out, and says so in its parameters."""
    d = simulate_domains(shape=(256, 256), angles_deg=(20.0, 110.0), periods_px=8.0, dose=30.0, seed=3)
    plain = segment(d.images, "peaks", domains=2, window_px=64, step_px=16, refine=False)
    refined = segment(d.images, "peaks", domains=2, window_px=64, step_px=16)
    assert refined.parameters["walls"]["applied"]
    assert plain.parameters["walls"] == {"applied": False, "reason": "refine=False"}
    m_plain, m_ref = mean_iou(plain.labels, d.labels), mean_iou(refined.labels, d.labels)
    assert m_ref > 0.96 and m_ref > m_plain + 0.02  # seed 3: 0.939 -> 0.968
    np.testing.assert_allclose(refined.fractions.sum(axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"labels": np.zeros((1, 10, 10), np.int16)}, "same shape"),
        ({"band_px": 0}, "band_px"),
        ({"sigma_periods": -1}, "sigma_periods"),
        ({"angles_deg": [0.0]}, "one value per variant"),
    ],
)
def test_refine_bad_input(kwargs, match):
    img, truth, _ = _two_variant_image()
    args = {"images": img, "labels": truth, "angles_deg": [0.0, 90.0], "periods_px": [8.0, 8.0], "band_px": 32,
            **kwargs}
    with pytest.raises(Distill4dError, match=match):
        refine_walls(**args)


@pytest.mark.parametrize("args, match", [((np.zeros(8), 0.0, 8.0, 6.0), "image"), ((np.zeros((8, 8)), 0.0, 0.0, 6.0), "period_px"),
                                         ((np.zeros((8, 8)), 0.0, 8.0, -1.0), "sigma_px"),
                                         ((np.zeros((8, 8)), float("nan"), 8.0, 6.0), "angle_deg")])
def test_fringe_energy_bad_input(args, match):
    with pytest.raises(Distill4dError, match=match):
        fringe_energy(*args)


def test_refine_rejects_nan_images():
    img, truth, _ = _two_variant_image()
    img[5, 5] = np.nan
    coarse = np.zeros_like(truth)
    coarse[:, 110:] = 1
    with pytest.raises(Distill4dError, match="NaN"):
        refine_walls(img, coarse, [0.0, 90.0], [8.0, 8.0], band_px=32)
