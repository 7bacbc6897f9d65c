"""Bragg disk detection: probe template, correlation detection, automatic defaults, BraggPeaks, scoring."""


import numpy as np
import pytest

from distill4d.bragg import (
    BraggPeaks,
    DetectionParameters,
    auto_detection_parameters,
    disk_detection_accuracy,
    find_bragg_disks,
    probe_template,
)
from distill4d.bragg.score import match_peaks
from distill4d.datacube import DataCube
from distill4d.simulate.kinematic import strained_scan, vacuum_probe

ORIGIN = (64.3, 63.6)  # off-grid, so that sub-pixel positions are exercised


@pytest.fixture(scope="module")
def clean():
    return strained_scan((3, 3), (128, 128), kind="uniform", strain=0.004, rotation_deg=0.7, origin_px=ORIGIN)


@pytest.fixture(scope="module")
def clean_peaks(clean):
    return find_bragg_disks(clean[0])


def _errors(found, truth_xy, tol=1.0):
    ip, it = match_peaks(found[:, :2], truth_xy[:, :2], tol)
    return np.hypot(*(found[ip, :2] - truth_xy[it, :2]).T), ip, it


def test_noise_free_peaks_within_0p1_px(clean, clean_peaks):
    dc, truth = clean
    r = truth.radius_px
    for rx, ry in [(0, 0), (1, 2), (2, 1)]:
        t = truth.peaks(rx, ry)
        inner = t[(t[:, 0] >= r) & (t[:, 0] <= 127 - r) & (t[:, 1] >= r) & (t[:, 1] <= 127 - r)]
        found = clean_peaks[rx, ry]
        _, ip_all, _ = _errors(found, t)
        assert len(ip_all) == len(found)  # no spurious peak (disks cut by the edge included)
        whole = found[(found[:, 0] >= r) & (found[:, 0] <= 127 - r) & (found[:, 1] >= r) & (found[:, 1] <= 127 - r)]
        err, ip, it = _errors(whole, inner)
        assert len(it) >= 0.95 * len(inner)  # (almost) every disk away from the edge
        assert err.max() < 0.1  # disks whole on the detector: within 0.1 px
        assert np.sqrt(np.mean(err**2)) < 0.05
        # disks cut by the edge (centre 0.5-1 radius inside) are found too, within 0.75 px
        err_cut, _, _ = _errors(found, t)
        assert err_cut.max() < 0.75


def test_parabolic_and_hybrid_correlation(clean):
    dc, truth = clean
    t = truth.peaks(0, 0)
    for opts in ({"subpixel": "parabolic"}, {"corr_power": 0.5}, {"corr_power": 0.5, "sigma_cc_px": 1.0}):
        found = find_bragg_disks(dc[0:1, 0:1], **opts)[0, 0]
        err, ip, _ = _errors(found, t)
        assert len(ip) > 40, opts
        assert np.median(err) < 0.1, opts


def test_probe_template_centred_and_normalised(clean):
    dc, truth = clean
    vac = vacuum_probe((128, 128), origin_px=(60.2, 70.9))
    p = probe_template(vac)
    assert p.kernel.sum() == pytest.approx(1.0)
    assert p.radius_px == pytest.approx(truth.radius_px, abs=0.1)
    assert p.origin_px == pytest.approx((60.2, 70.9), abs=0.02)
    # centred at (0, 0) in FFT convention: centroid of the wrapped kernel is 0
    k = np.fft.fftshift(p.kernel)
    x, y = np.indices(k.shape)
    assert (k * x).sum() / k.sum() - 64 == pytest.approx(0.0, abs=0.01)
    assert (k * y).sum() / k.sum() - 64 == pytest.approx(0.0, abs=0.01)
    edge = probe_template(vac, kind="edge")
    assert abs(edge.kernel.sum()) < 1e-9
    # a stack is averaged; the estimate from the data matches the vacuum probe
    assert probe_template(np.stack([vac, vac])).radius_px == pytest.approx(p.radius_px)
    est = probe_template(None, datacube=dc)
    assert est.radius_px == pytest.approx(truth.radius_px, abs=0.15)
    assert est.origin_px == pytest.approx(ORIGIN, abs=0.05)


def test_vacuum_probe_gives_the_same_peaks(clean, clean_peaks):
    dc, _ = clean
    vac = vacuum_probe((128, 128), origin_px=(20.5, 99.0))
    with_vac = find_bragg_disks(dc[0:1, 0:1], probe=vac)
    err, ip, _ = _errors(with_vac[0, 0], clean_peaks[0, 0], 0.5)
    assert len(ip) == len(clean_peaks[0, 0])
    r = clean[1].radius_px
    f = with_vac[0, 0]
    whole = f[(f[:, 0] >= r) & (f[:, 0] <= 127 - r) & (f[:, 1] >= r) & (f[:, 1] <= 127 - r)]
    assert np.max(_errors(whole, clean_peaks[0, 0], 0.5)[0]) < 0.1
    # both templates find the true positions to the same precision (disks whole on the detector)
    err_vac, _, _ = _errors(whole, clean[1].peaks(0, 0))
    assert err_vac.max() < 0.1


def test_auto_parameters_follow_the_data(clean):
    dc, truth = clean
    p = auto_detection_parameters(dc)
    assert p.radius_px == pytest.approx(truth.radius_px, abs=0.15)
    assert p.edge_px == 0.5 * p.radius_px
    # nearest disks of the centred Si[110] cell: |(1,1)| = 12.8 px; half of it (strain 0.4 %)
    assert p.min_spacing_px == pytest.approx(12.77 / 2, rel=0.03)
    assert 0.001 <= p.min_relative_intensity <= 0.2
    n_true = np.isfinite(truth.qx[0, 0]).sum()
    assert n_true <= p.max_peaks <= 2 * n_true + 10
    # overrides win
    bp = find_bragg_disks(dc[0:1, 0:1], max_peaks=5, edge_px=20)
    assert bp.counts[0, 0] == 5
    assert bp.params["edge_px"] == 20
    found = bp[0, 0]
    assert np.all((found[:, :2] >= 20) & (found[:, :2] <= 107))


def test_noisy_default_detection_finds_the_lattice():
    from distill4d.lattice import find_lattice

    dc, truth = strained_scan((6, 6), (128, 128), kind="none", dose=2e4, background=0.05, seed=7)
    bp = find_bragg_disks(dc)
    score = disk_detection_accuracy(bp, truth.bragg_peaks())
    assert score.accuracy > 0.85
    assert score.mean_error_px < 0.4
    basis = find_lattice(bp)
    # the reduced lattice of the centred cell: u, v = (+-1, 1) reflections, 10.42 px, 7.36 px
    got = sorted([tuple(np.round(np.abs(basis.u), 1)), tuple(np.round(np.abs(basis.v), 1))])
    assert got[0] == pytest.approx((10.42, 7.36), abs=0.1) and got[1] == pytest.approx((10.42, 7.36), abs=0.1)
    assert basis.origin == pytest.approx((64.0, 64.0), abs=0.1)


def test_zero_and_nan_patterns_give_empty_lists(clean):
    dc, _ = clean
    data = np.array(dc.data[:2, :2])
    data[0, 1] = 0.0
    data[1, 0, 5, 7] = np.nan
    bp = find_bragg_disks(DataCube(data, dc.calibration))
    assert bp.counts[0, 1] == 0 and bp.counts[1, 0] == 0
    assert bp[0, 1].shape == (0, 3)
    assert bp.counts[0, 0] > 40 and bp.counts[1, 1] > 40
    all_zero = DataCube(np.zeros((2, 2, 32, 32)))
    assert find_bragg_disks(all_zero, radius_px=3, min_spacing_px=5, min_relative_intensity=0.01,
                            max_peaks=10, probe=vacuum_probe((32, 32))).n_peaks == 0
    with pytest.raises(ValueError, match="flat"):
        find_bragg_disks(all_zero)  # no probe to estimate from the data
    with pytest.raises(ValueError, match="NaN"):
        find_bragg_disks(DataCube(np.full((1, 2, 32, 32), np.nan)))


def test_bad_parameters_raise_clear_errors(clean):
    dc, _ = clean
    sub = dc[0:1, 0:1]
    with pytest.raises(ValueError, match="probe must have the pattern shape"):
        find_bragg_disks(sub, probe=np.ones((64, 64)))
    with pytest.raises(ValueError, match="radius_px"):
        find_bragg_disks(sub, radius_px=-2)
    with pytest.raises(ValueError, match="corr_power"):
        find_bragg_disks(sub, corr_power=2.0)
    with pytest.raises(ValueError, match="subpixel"):
        find_bragg_disks(sub, subpixel="magic")
    with pytest.raises(TypeError, match="unknown detection parameter"):
        find_bragg_disks(sub, minPeakSpacing=20)
    with pytest.raises(ValueError, match="max_peaks"):
        DetectionParameters(radius_px=3, edge_px=3, min_spacing_px=5, max_peaks=0)
    with pytest.raises(ValueError, match="kind"):
        probe_template(np.ones((8, 8)), kind="sigmoid")


def test_threads_scheduler_matches_inline(clean, clean_peaks):
    bp = find_bragg_disks(clean[0], scheduler="threads", n_workers=2, memory_budget=1 << 20)
    np.testing.assert_array_equal(bp.offsets, clean_peaks.offsets)
    np.testing.assert_allclose(bp.qx, clean_peaks.qx)


def test_braggpeaks_containers_and_hdf5(tmp_path, clean_peaks):
    bp = clean_peaks
    qx, qy, it, n = bp.to_padded()
    again = BraggPeaks.from_padded(qx, qy, it, n, bp.calibration)
    np.testing.assert_array_equal(again.qx, bp.qx)
    assert bp[1, 2].shape == (bp.counts[1, 2], 3)
    with pytest.raises(IndexError):
        bp[5, 0]
    path = tmp_path / "peaks.h5"
    bp.to_hdf5(path)
    back = BraggPeaks.from_hdf5(path)
    np.testing.assert_array_equal(back.qx, bp.qx)
    np.testing.assert_array_equal(back.intensity, bp.intensity)
    np.testing.assert_array_equal(back.offsets, bp.offsets)
    assert back.calibration == bp.calibration
    assert back.params["subpixel"] == "dft"
    with pytest.raises(FileExistsError):
        bp.to_hdf5(path)
    bp.to_hdf5(path, force=True)
    assert [p.name for p in tmp_path.iterdir()] == ["peaks.h5"]  # no temporary left behind
    with pytest.raises(FileNotFoundError):
        BraggPeaks.from_hdf5(tmp_path / "missing.h5")


# ----------------------------------------------------------------------------- scoring
T1 = np.array([[10.0, 10.0, 1.0], [20.0, 20.0, 3.0]])
P1 = np.array([[10.5, 10.0, 2.0], [40.0, 40.0, 2.0]])
T3 = np.array([[0.0, 0.0, 1.0]])
P3 = np.array([[0.1, 0.0, 1.0], [0.2, 0.0, 1.0]])


def test_score_hand_made_cases():
    # pixel 0.01 1/A, threshold 0.01 1/A = 1 px
    s = disk_detection_accuracy(P1, T1, threshold_inv_A=0.01, q_pixel_inv_A=0.01)
    # TP = 0.25 (matched true), FN = 0.75, FP = 0.5 (unmatched predicted) -> 0.25 / 1.5
    assert (s.tp, s.fp, s.fn) == pytest.approx((0.25, 0.5, 0.75))
    assert s.accuracy == pytest.approx(1 / 6)
    assert s.mean_error_px == pytest.approx(0.5)
    # one-to-one: a second prediction near the same true peak is a false positive
    s3 = disk_detection_accuracy(P3, T3, threshold_inv_A=0.01, q_pixel_inv_A=0.01)
    assert s3.accuracy == pytest.approx(1 / 1.5)
    # greedy by distance: Q-A (0.5) then P-B (0.8), although P is also within reach of A
    t = np.array([[0.0, 0.0, 1.0], [2.0, 0.0, 1.0]])
    p = np.array([[1.2, 0.0, 1.0], [-0.5, 0.0, 1.0]])
    s2 = disk_detection_accuracy(p, t, threshold_inv_A=0.015, q_pixel_inv_A=0.01)
    assert s2.accuracy == pytest.approx(1.0)
    assert s2.mean_error_px == pytest.approx(0.65)
    # aggregated over patterns: sums of TP, FP, FN
    agg = disk_detection_accuracy([P1, P3], [T1, T3], threshold_inv_A=0.01, q_pixel_inv_A=0.01)
    assert agg.accuracy == pytest.approx(1.25 / 3.0)
    np.testing.assert_allclose(agg.per_position, [1 / 6, 2 / 3])
    # nothing predicted: accuracy 0; nothing anywhere: NaN
    assert disk_detection_accuracy(np.zeros((0, 3)), T1, 0.01, 0.01).accuracy == 0.0
    assert np.isnan(disk_detection_accuracy(np.zeros((0, 3)), np.zeros((0, 3)), 0.01, 0.01).accuracy)
    with pytest.raises(ValueError, match="q_pixel_inv_A"):
        disk_detection_accuracy(P1, T1)
    with pytest.raises(ValueError, match="threshold_inv_A"):
        disk_detection_accuracy(P1, T1, threshold_inv_A=-1, q_pixel_inv_A=0.01)


def test_score_of_truth_against_itself_is_one(clean):
    truth = clean[1].bragg_peaks()
    s = disk_detection_accuracy(truth, truth)
    assert s.accuracy == pytest.approx(1.0)
    assert s.per_position.shape == (3, 3)


def test_auto_threshold_ignores_disks_cut_by_the_detector_edge():
    # At high dose the only maxima off the mean-pattern lattice are disks cut by the edge;
    # counting them as noise once set the threshold to 7 % and lost a third of the disks.
    from distill4d.bragg import auto_detection_parameters, disk_detection_accuracy, find_bragg_disks
    from distill4d.simulate.kinematic import strained_scan, vacuum_probe

    dc, truth = strained_scan((8, 8), (128, 128), kind="multilayer", strain=0.01, layer_width=4, dose=1e5, seed=2)
    probe = vacuum_probe((128, 128), calibration=dc.calibration)
    params = auto_detection_parameters(dc, probe)
    assert params.min_relative_intensity < 0.02
    peaks = find_bragg_disks(dc, probe, progress=False)
    score = disk_detection_accuracy(peaks, truth.bragg_peaks(), threshold_inv_A=0.05,
                                    q_pixel_inv_A=dc.calibration.q_pixel_inv_A)
    assert score.accuracy > 0.95


def test_overriding_the_threshold_recomputes_max_peaks():
    from distill4d.bragg import auto_detection_parameters, find_bragg_disks
    from distill4d.simulate.kinematic import strained_scan, vacuum_probe

    dc, _ = strained_scan((4, 4), (128, 128), kind="uniform", strain=0.0, dose=3e3, seed=3)
    probe = vacuum_probe((128, 128), calibration=dc.calibration)
    auto = auto_detection_parameters(dc, probe)
    assert auto.min_relative_intensity > 0.05  # off the lattice sites: above the noise
    assert auto.min_relative_intensity_sites < 0.01  # on the mean pattern's disks: 5 % of that
    high = auto_detection_parameters(dc, probe, min_relative_intensity=0.3)
    assert high.min_relative_intensity == 0.3 and high.min_relative_intensity_sites is None  # used everywhere
    assert high.max_peaks < auto.max_peaks  # fewer disks pass a higher threshold: the cap follows
    peaks = find_bragg_disks(dc, probe, min_relative_intensity=0.3, progress=False)
    assert peaks.params["max_peaks"] == high.max_peaks


@pytest.mark.parametrize("start", [(0.0, 0.0), (0.45, -0.3), (-0.4, 0.45)])
def test_dft_refinement_lands_on_a_band_limited_maximum(start):
    from distill4d.bragg.detect import _dft_refine

    # a periodic Gaussian correlation peak (sigma 2.5 px) centred off the pixel grid
    n, (x0, y0), s = 96, (40.37, 71.81), 2.5
    kx = np.fft.fftfreq(n)[:, None]
    ky = np.fft.rfftfreq(n)[None, :]
    M = (np.exp(-2 * (np.pi * s) ** 2 * (kx**2 + ky**2)) * np.exp(-2j * np.pi * (kx * x0 + ky * y0)))[None]
    x, y, v = _dft_refine(M, np.array([0]), np.array([x0 + start[0]]), np.array([y0 + start[1]]), (n, n), 16)
    assert np.hypot(x[0] - x0, y[0] - y0) < 0.003  # px
    peak = np.fft.irfft2(np.abs(M[0]), s=(n, n))[0, 0]  # the value at (x0, y0), where every phase is 0
    assert v[0] == pytest.approx(peak, rel=1e-4)
