"""Centre-of-mass Bragg-disk locator: sub-pixel accuracy, strain on simulated scans, low dose, inputs."""

import numpy as np
import pytest

from distill4d.bragg import find_bragg_disks, find_bragg_disks_com
from distill4d.datacube import DataCube
from distill4d.lattice import strain_from_deformation, strain_map
from distill4d.simulate.kinematic import DEFAULT_CALIBRATION, render_disks, strained_scan, vacuum_probe

TRUE = np.array([30.37, 33.81])  # (qx, qy) pixels of the test disk
REF = (slice(0, 4), slice(None))  # the first layer (+1 %) of an 8x8 multilayer scan, layer_width=4


def _disk_cube(centre=TRUE, shape=(64, 64)) -> DataCube:
    im = render_disks(shape, np.asarray(centre, float)[None, None], [1.0], 4.1, edge_px=1.0)
    return DataCube(im[None].astype(np.float32), DEFAULT_CALIBRATION)


def _rms_strain_error(sm, truth) -> dict:
    """RMS of (measured - true) strain relative to the reference layer, fractions."""
    s = strain_from_deformation(truth.F @ np.linalg.inv(truth.F[REF][0, 0]))
    return {k: float(np.sqrt(np.nanmean((getattr(sm, k) - s[k]) ** 2))) for k in ("eps_xx", "eps_yy")}


def _multilayer(dose, seed=0):
    dc, truth = strained_scan((8, 8), (128, 128), kind="multilayer", strain=0.01, layer_width=4, dose=dose, seed=seed)
    return dc, truth, vacuum_probe((128, 128), calibration=dc.calibration)


# ----------------------------------------------------------------------------- accuracy
@pytest.mark.parametrize("start", [(30.0, 34.0), (32.0, 32.5)])  # 0.4 px and 2.2 px from the disk
def test_single_disk_at_subpixel_position(start):
    bp = find_bragg_disks_com(_disk_cube(), spots_px=[start], radius_px=5.1, scheduler="inline")
    qx, qy, it = bp[0, 0][0]
    # The rendered disk's own pixel centroid is 0.008 px from TRUE (sampling of the soft
    # edge); re-centring converges to it from 2.2 px away (measured error 0.008 px).
    assert np.hypot(qx - TRUE[0], qy - TRUE[1]) < 0.05
    assert it == pytest.approx(np.pi * 4.1**2, rel=0.02)  # window total = disk integral (pattern units)
    # without re-centring the window cut by 2.2 px pulls the estimate to the start (0.55 px off)
    bp0 = find_bragg_disks_com(_disk_cube(), spots_px=[start], radius_px=5.1, iterations=0, scheduler="inline")
    if np.hypot(*(np.array(start) - TRUE)) > 2:
        assert np.hypot(bp0.qx[0] - TRUE[0], bp0.qy[0] - TRUE[1]) > 0.3


def test_spots_from_the_mean_pattern_and_background():
    # 2x1 scan of one disk on a flat background of 0.2 (per pixel, disk = 1): the background
    # would pull an unsubtracted centre of mass towards the window centre.
    dc = _disk_cube()
    data = np.concatenate([dc.data, dc.data], axis=1) + np.float32(0.2)
    dc2 = DataCube(data, DEFAULT_CALIBRATION)
    probe = vacuum_probe((64, 64), calibration=DEFAULT_CALIBRATION)
    bp = find_bragg_disks_com(dc2, probe, scheduler="inline")
    assert bp.params["method"] == "com" and bp.params["n_spots"] == 1 and bp.params["spots_from"] == "mean pattern"
    np.testing.assert_allclose(bp.counts, 1)
    np.testing.assert_allclose(bp.qx, TRUE[0], atol=0.05)
    np.testing.assert_allclose(bp.qy, TRUE[1], atol=0.05)
    # the same window without background subtraction is biased by the flat 0.2 when off centre
    nobg = find_bragg_disks_com(dc2, spots_px=[(32.0, 32.5)], radius_px=5.1, iterations=0, background=False,
                                scheduler="inline")
    withbg = find_bragg_disks_com(dc2, spots_px=[(32.0, 32.5)], radius_px=5.1, iterations=0, scheduler="inline")
    err = lambda b: np.hypot(b.qx[0] - TRUE[0], b.qy[0] - TRUE[1])
    assert err(nobg) > err(withbg) + 0.05


def test_empty_windows_are_dropped_not_nan():
    dc, _, probe = _multilayer(None)
    data = np.array(dc.data)
    data[0, 1] = 0.0  # an empty pattern
    data[0, 2] = np.nan  # a broken one
    bp = find_bragg_disks_com(DataCube(data, dc.calibration), probe, scheduler="inline")
    k = bp.params["n_spots"]
    assert bp.counts[0, 1] == 0 and bp.counts[0, 2] == 0
    assert bp.counts[0, 0] == k and bp.counts[1:].min() == k
    assert np.all(np.isfinite(bp.qx)) and np.all(np.isfinite(bp.intensity)) and np.all(bp.intensity > 0)


@pytest.mark.parametrize("dose, tol", [(None, 1e-4), (1e5, 1e-3)])
def test_strain_of_multilayer(dose, tol):
    # Measured RMS errors (eps_xx, eps_yy): noise-free 0.0009 %, 0.0035 %; 1e5 e-/pattern
    # (seeds 0-2) 0.023-0.031 %, 0.026-0.034 %. Tolerances: 0.01 % and 0.1 %.
    dc, truth, probe = _multilayer(dose)
    bp = find_bragg_disks_com(dc, probe)
    assert bp.counts.min() == bp.params["n_spots"] > 50
    sm = strain_map(bp, reference=REF)
    assert not sm.mask.any()
    err = _rms_strain_error(sm, truth)
    assert err["eps_xx"] < tol and err["eps_yy"] < tol
    assert set(np.round(sm.eps_xx[:, 0], 2)) == {0.0, -0.02}  # 0.99 / 1.01 - 1 = -1.98 %


def test_low_dose_against_correlation():
    # 1e3 e-/pattern. Measured over seeds 0-2 (RMS eps_xx, eps_yy): CoM 0.30-0.35 %,
    # 0.27-0.34 %; correlation (find_bragg_disks) 0.24-0.25 %, 0.23-0.27 %. The CoM of a
    # flat-topped disk weighs every count by its distance from the centre, while correlation
    # takes the position from the disk edge, so CoM is ~1.3x noisier here (also at 1e4 and
    # 1e5 e-); bounds: 0.6 % and a factor 2 of correlation.
    dc, truth, probe = _multilayer(1e3, seed=0)
    com = find_bragg_disks_com(dc, probe)
    assert com.counts.min() >= 0.9 * com.params["n_spots"]  # weak disks with no counts are dropped
    sm = strain_map(com, reference=REF)
    assert not sm.mask.any()
    err = _rms_strain_error(sm, truth)
    cc = _rms_strain_error(strain_map(find_bragg_disks(dc, probe), reference=REF), truth)
    for k in ("eps_xx", "eps_yy"):
        assert np.isfinite(err[k]) and err[k] < 6e-3
        assert err[k] < 2 * cc[k]


def test_schedulers_and_explicit_spots_agree():
    dc, _, probe = _multilayer(1e4)
    a = find_bragg_disks_com(dc, probe, scheduler="inline")
    b = find_bragg_disks_com(dc, probe, memory_budget=1 << 21, n_workers=2)  # several tiles, threads
    c = find_bragg_disks_com(dc, spots_px=a.params["spots_px"], radius_px=a.params["radius_px"], scheduler="inline")
    for x in (b, c):
        np.testing.assert_array_equal(x.offsets, a.offsets)
        np.testing.assert_array_equal(x.qx, a.qx)
        np.testing.assert_array_equal(x.intensity, a.intensity)
    # default radius from the calibration: semiangle / (mrad per pixel) + 1
    cal = dc.calibration
    d = find_bragg_disks_com(dc, spots_px=[(64.0, 64.0)], scheduler="inline")
    assert d.params["radius_px"] == pytest.approx(cal.semiangle_mrad / cal.mrad_per_px + 1)


# ----------------------------------------------------------------------------- inputs
def test_bad_inputs():
    dc = _disk_cube()
    with pytest.raises(TypeError, match="datacube"):
        find_bragg_disks_com(np.zeros((1, 1, 64, 64)))
    for bad in ([1.0, 2.0], np.zeros((0, 2)), [(1.0, 2.0, 3.0)], [(np.nan, 30.0)]):
        with pytest.raises(ValueError, match="spots_px"):
            find_bragg_disks_com(dc, spots_px=bad, radius_px=5)
    with pytest.raises(ValueError, match="spots_px"):  # no window fits on the detector
        find_bragg_disks_com(dc, spots_px=[(1.0, 30.0)], radius_px=5)
    for bad in (0, -1, np.inf, 40):
        with pytest.raises(ValueError, match="radius_px"):
            find_bragg_disks_com(dc, spots_px=[TRUE], radius_px=bad)
    with pytest.raises(TypeError, match="radius_px"):
        find_bragg_disks_com(dc, spots_px=[TRUE], radius_px=[5.0])
    with pytest.raises(ValueError, match="iterations"):
        find_bragg_disks_com(dc, spots_px=[TRUE], iterations=-1)
    with pytest.raises(TypeError, match="iterations"):
        find_bragg_disks_com(dc, spots_px=[TRUE], iterations=1.5)
    with pytest.raises(TypeError, match="background"):
        find_bragg_disks_com(dc, spots_px=[TRUE], background="yes")
    with pytest.raises(ValueError, match="min_spot_intensity"):
        find_bragg_disks_com(dc, min_spot_intensity=1.5)


def test_no_disk_in_the_mean_pattern():
    empty = DataCube(np.zeros((2, 2, 64, 64), np.float32), DEFAULT_CALIBRATION)
    probe = vacuum_probe((64, 64), calibration=DEFAULT_CALIBRATION)
    with pytest.raises(ValueError, match="spots_px"):
        find_bragg_disks_com(empty, probe, scheduler="inline")
