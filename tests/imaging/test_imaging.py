import math
import warnings

import numpy as np
import pytest
from _synth import shifted_disk_cube, soft_disk

from distill4d import Calibration, DataCube
from distill4d.imaging import (
    CenterOfMass,
    annulus_mask,
    center_of_mass,
    circle_mask,
    detector_mask,
    estimate_scan_rotation,
    find_bf_disk,
    find_origins,
    fit_origin_plane,
    idpc,
    virtual_image,
    virtual_images,
)
from distill4d.simulate.phase_object import phase_object_scan


@pytest.fixture(scope="module")
def counts():
    rng = np.random.default_rng(11)
    return DataCube(rng.poisson(30.0, (7, 9, 40, 40)).astype(np.uint16), Calibration(origin_px=(20.0, 19.5)))


def _direct(data, mask):
    return np.tensordot(data.astype(np.float64), mask.astype(np.float64), axes=([2, 3], [0, 1]))


# ------------------------------------------------------------------ virtual images
@pytest.mark.parametrize("lazy", [False, True])
def test_virtual_bf_adf_equal_direct_numpy(counts, lazy):
    dc = DataCube(counts.to_dask(chunk_bytes=30000), counts.calibration) if lazy else counts
    masks = {
        "bf": circle_mask((40, 40), (20, 19.5), 6.0),
        "adf": annulus_mask((40, 40), (20, 19.5), 10.0),  # to the edge: summed as total - complement
        "ring": annulus_mask((40, 40), (20, 19.5), 8.0, 15.0),
        "weighted": np.linspace(0, 1, 1600).reshape(40, 40),
    }
    images = virtual_images(dc, masks, memory_budget=1 << 20, scheduler="threads")
    for name, mask in masks.items():
        np.testing.assert_allclose(images[name], _direct(counts.data, mask), rtol=1e-12, err_msg=name)
    # integer counts are summed exactly
    np.testing.assert_array_equal(images["adf"], _direct(counts.data, masks["adf"]))


def test_virtual_image_of_float_data_and_defaults():
    rng = np.random.default_rng(2)
    data = rng.random((3, 4, 32, 32)) * 100
    data[:, :, 12:21, 12:21] += 1000  # a bright disk around (16, 16)
    dc = DataCube(data)
    bf_mask = detector_mask(dc, "bf")
    assert bf_mask[16, 16] and not bf_mask[2, 2]
    np.testing.assert_allclose(virtual_image(dc, bf_mask), _direct(data, bf_mask), rtol=1e-12)
    adf = detector_mask(dc, "adf")
    assert not adf[16, 16] and adf[0, 0]


def test_default_bf_detector_is_clipped_to_the_detector_edge():
    data = np.zeros((2, 2, 32, 32))
    data[:, :, :, :12] = 100.0  # a "disk" cut by the edge: its measured radius exceeds the edge distance
    dc = DataCube(data, Calibration(origin_px=(16.0, 4.0)))
    with pytest.warns(UserWarning, match="clipped"):
        mask = detector_mask(dc, "bf")
    assert mask.sum() == circle_mask((32, 32), (16.0, 4.0), 4.5).sum()
    with pytest.raises(ValueError, match="reaches beyond"):
        detector_mask(dc, "bf", (8.0,))


def test_detector_radii_in_mrad_use_the_calibration():
    cal = Calibration(q_pixel_inv_A=0.02, energy_eV=300e3, origin_px=(32.0, 32.0))
    dc = DataCube(np.ones((1, 1, 64, 64)), cal)
    r_px = 10.0 / cal.mrad_per_px
    m = detector_mask(dc, "bf", (10.0,), unit="mrad")
    assert m.sum() == circle_mask((64, 64), (32, 32), r_px).sum()
    with pytest.raises(ValueError, match="energy_eV"):
        detector_mask(DataCube(np.ones((1, 1, 8, 8)), Calibration(q_pixel_inv_A=0.1, origin_px=(4, 4))), "bf", (5,), unit="mrad")


def test_nan_patterns_give_nan_pixels_only_there(counts):
    data = counts.data.astype(np.float32)
    data[2, 3, 5, 5] = np.nan
    data[4, 1, 30, 30] = np.inf
    img = virtual_image(DataCube(data), annulus_mask((40, 40), (20, 20), 0.0))
    assert np.isnan(img[2, 3]) and np.isinf(img[4, 1])
    ok = np.isfinite(img)
    assert ok.sum() == img.size - 2
    np.testing.assert_allclose(img[ok], counts.data.astype(np.float64).sum(axis=(2, 3))[ok])


def test_bad_detectors_are_refused_with_a_clear_message(counts):
    with pytest.raises(ValueError, match="contains no pixel"):
        annulus_mask((40, 40), (20, 20), 60.0, 80.0)
    with pytest.raises(ValueError, match="contains no pixel"):
        detector_mask(counts, "adf", (100.0, 200.0))
    with pytest.raises(ValueError, match="larger than r_inner"):
        annulus_mask((40, 40), (20, 20), 10.0, 5.0)
    with pytest.raises(ValueError, match="radius_px"):
        circle_mask((40, 40), (20, 20), -3)
    with pytest.raises(ValueError, match=">= 0"):
        annulus_mask((40, 40), (20, 20), -3, 5)
    with pytest.raises(ValueError, match="reaches beyond"):
        circle_mask((40, 40), (20, 20), 25)
    with pytest.warns(UserWarning, match="clipped"):
        annulus_mask((40, 40), (20, 20), 5.0, 30.0)
    with pytest.raises(ValueError, match="shape"):
        virtual_image(counts, np.ones((20, 20), bool))
    with pytest.raises(ValueError, match="all zero"):
        virtual_image(counts, np.zeros((40, 40), bool))
    with pytest.raises(ValueError, match="NaN"):
        virtual_image(counts, np.full((40, 40), np.nan))
    with pytest.raises(ValueError, match="kind"):
        detector_mask(counts, "haadf-ish", (1, 2))


def test_single_position_scan(counts):
    one = counts[0:1, 0:1]
    img = virtual_image(one, circle_mask((40, 40), (20, 20), 5))
    assert img.shape == (1, 1)
    com = center_of_mass(one, origin=(20, 20))
    assert com.com_qx_px.shape == (1, 1) and np.isfinite(com.com_qx_px[0, 0])
    with pytest.raises(ValueError, match="at least 3x3"):
        idpc(com)
    with pytest.raises(ValueError, match="at least 2x2"):
        idpc(com, rotation_rad=0.0)


# ------------------------------------------------------------------ origin and CoM
def test_find_bf_disk_subpixel_and_robust_to_a_hot_pixel():
    p = 500 * soft_disk((64, 64), (30.3, 33.8), 9.0) + 5
    p[3, 60] = 1e6  # hot pixel
    cx, cy, r = find_bf_disk(p)
    assert abs(cx - 30.3) < 0.05 and abs(cy - 33.8) < 0.05
    assert abs(r - 9.0) < 0.3
    with pytest.raises(ValueError, match="no positive intensity"):
        find_bf_disk(np.zeros((8, 8)))


def test_center_of_mass_recovers_known_beam_shifts():
    rng = np.random.default_rng(5)
    shifts = rng.uniform(-2.0, 2.0, (6, 5, 2))
    dc = DataCube(shifted_disk_cube((6, 5), 48, shifts), Calibration(q_pixel_inv_A=0.02, energy_eV=200e3))
    com = center_of_mass(dc, origin=(23.5, 23.5))
    err = np.hypot(com.com_qx_px - shifts[..., 0], com.com_qy_px - shifts[..., 1])
    assert err.max() < 0.01  # pixels, noise-free
    qx, _ = com.in_inv_A()
    np.testing.assert_allclose(qx, com.com_qx_px * 0.02)
    ax, _ = com.in_mrad()
    np.testing.assert_allclose(ax, com.com_qx_px * dc.calibration.mrad_per_px)
    # with Poisson noise at 2e5 electrons per pattern (CoM noise ~0.01 px) still within 0.05 px
    noisy = DataCube(rng.poisson(dc.data / dc.data.sum(axis=(2, 3), keepdims=True) * 2e5).astype(np.uint16))
    com_n = center_of_mass(noisy, origin=(23.5, 23.5), mask=circle_mask((48, 48), (23.5, 23.5), 14))
    assert np.hypot(com_n.com_qx_px - shifts[..., 0], com_n.com_qy_px - shifts[..., 1]).max() < 0.05


def test_center_of_mass_of_empty_or_nan_pattern_is_nan():
    data = shifted_disk_cube((2, 2), 32, np.zeros((2, 2, 2)))
    data[0, 1] = 0.0
    data[1, 0, 3, 3] = np.nan
    com = center_of_mass(DataCube(data), origin=(15.5, 15.5))
    assert np.isnan(com.com_qx_px[0, 1]) and np.isnan(com.com_qy_px[1, 0])
    assert abs(com.com_qx_px[0, 0]) < 1e-9 and abs(com.com_qy_px[1, 1]) < 1e-9


def test_descan_plane_is_recovered():
    rx, ry = np.indices((8, 7), dtype=np.float64)
    shifts = np.stack([0.1 * rx - 0.05 * ry, 0.02 * rx + 0.08 * ry], axis=2)
    dc = DataCube(shifted_disk_cube((8, 7), 40, shifts, radius=7))
    origins = find_origins(dc)
    fitted = fit_origin_plane(origins)
    np.testing.assert_allclose(origins - 19.5, shifts, atol=0.05)
    np.testing.assert_allclose(fitted - 19.5, shifts, atol=0.03)
    with pytest.raises(ValueError, match="at least 3"):
        fit_origin_plane(np.full((2, 2, 2), np.nan))


# ------------------------------------------------------------------ DPC / iDPC
@pytest.fixture(scope="module")
def weak_phase():
    return phase_object_scan(scan_shape=(48, 48), pattern_size=64, step_px=1, q_pixel_inv_A=0.04,
                             semiangle_mrad=20.0, energy_eV=300e3)


def _corr(a, b):
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_idpc_recovers_the_phase_of_a_weak_phase_object(weak_phase):
    com = center_of_mass(weak_phase.datacube)
    res = idpc(com)  # rotation estimated from the data
    assert res.units == "rad"
    assert abs(res.rotation_rad) < math.radians(0.5) and not res.flip
    assert _corr(res.phase, weak_phase.phase_rad) > 0.95
    assert _corr(res.phase, weak_phase.smoothed_phase_rad) > 0.99
    # calibrated amplitude: within 5 % of the probe-smoothed phase
    assert res.phase.std() == pytest.approx(weak_phase.smoothed_phase_rad.std(), rel=0.05)


@pytest.mark.parametrize("theta_deg,flip", [(0.0, True), (37.0, False), (-120.0, True), (170.0, False)])
def test_scan_rotation_is_estimated(weak_phase, theta_deg, flip):
    com = center_of_mass(weak_phase.datacube)
    # Express the true (scan-frame) field on a detector rotated by theta and maybe transposed.
    sx, sy = com.com_qx_px, com.com_qy_px
    if flip:
        sx, sy = sy, sx
    t = math.radians(theta_deg)
    dqx = math.cos(t) * sx - math.sin(t) * sy
    dqy = math.sin(t) * sx + math.cos(t) * sy
    rotated = CenterOfMass(dqx, dqy, com.origin_px, com.calibration)
    est, est_flip = estimate_scan_rotation(rotated)
    assert est_flip == flip
    assert abs(math.remainder(est - t, 2 * math.pi)) < math.radians(0.1)
    assert _corr(idpc(rotated).phase, weak_phase.smoothed_phase_rad) > 0.99


def test_rotated_detector_end_to_end(weak_phase):
    # The detector rotated by 90 degrees (patterns rotated): the estimate finds it.
    dc = weak_phase.datacube
    rot = DataCube(np.rot90(dc.data, 1, axes=(2, 3)).copy(), dc.calibration.replace(origin_px=None))
    res = idpc(center_of_mass(rot))
    assert abs(math.degrees(res.rotation_rad) - 90.0) < 0.5
    assert _corr(res.phase, weak_phase.smoothed_phase_rad) > 0.99


def test_idpc_uncalibrated_and_with_undefined_positions(weak_phase):
    dc = weak_phase.datacube
    data = dc.data.copy()
    data[5, 5] = 0.0
    plain = DataCube(data, Calibration(origin_px=dc.calibration.origin_px))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = idpc(center_of_mass(plain), rotation_rad=0.0, flip=False)
    assert res.units == "a.u." and np.isnan(res.phase[5, 5])
    ok = np.isfinite(res.phase)
    assert _corr(res.phase[ok], weak_phase.smoothed_phase_rad[ok]) > 0.98
