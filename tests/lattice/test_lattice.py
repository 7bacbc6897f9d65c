"""Lattice finding, indexing and per-position weighted least-squares fits."""

import numpy as np
import pytest

from distill4d.bragg import BraggPeaks, find_bragg_disks
from distill4d.lattice import Basis, find_lattice, fit_lattice, reduce_basis
from distill4d.simulate.kinematic import reciprocal_lattice, strained_scan

Q = 0.025  # 1/A per pixel of the default simulation


@pytest.fixture(scope="module")
def peaks():
    dc, truth = strained_scan((4, 4), (128, 128), kind="none", origin_px=(63.7, 64.4))
    return find_bragg_disks(dc), truth


def test_reduce_basis():
    u, v = reduce_basis(np.array([10.0, 0.0]), np.array([31.0, 5.0]))
    np.testing.assert_allclose(u, [1.0, 5.0])  # 31 - 3 * 10; shortest first
    np.testing.assert_allclose(v, [-10.0, 0.0])  # sign flipped: right-handed
    u, v = reduce_basis(np.array([0.0, 3.0]), np.array([2.0, 0.0]))  # made right-handed, shortest first
    assert np.hypot(*u) <= np.hypot(*v) and u[0] * v[1] - u[1] * v[0] > 0


def test_find_lattice_matches_the_crystal(peaks):
    bp, truth = peaks
    basis = find_lattice(bp)
    B = reciprocal_lattice(np.array([[3.840, 0.0], [0.0, 5.431]])) / Q  # b1, b2 in pixels
    # the allowed reflections form the centred lattice spanned by (1, 1) and (-1, 1)
    primitive = np.column_stack([B @ [1, 1], B @ [-1, 1]])
    assert abs(np.linalg.det(basis.matrix)) == pytest.approx(abs(np.linalg.det(primitive)), rel=1e-3)
    hk = np.linalg.solve(primitive, basis.matrix)  # basis vectors in primitive coordinates
    np.testing.assert_allclose(hk, np.round(hk), atol=2e-3)
    np.testing.assert_allclose(basis.origin, (63.7, 64.4), atol=0.05)


def test_fit_is_tight_and_uses_every_peak(peaks):
    bp, _ = peaks
    lat = fit_lattice(bp)
    assert lat.ok.all()
    np.testing.assert_array_equal(lat.n_used, bp.counts)
    assert np.nanmax(lat.rms_px) < 0.05
    np.testing.assert_allclose(lat.origin[..., 0], 63.7, atol=0.03)
    # every position gives the same lattice to 1e-4 relative
    spread = np.ptp(lat.u.reshape(-1, 2), axis=0).max() / np.hypot(*lat.basis.u)
    assert spread < 1e-4


def test_outliers_are_rejected(peaks):
    bp, _ = peaks
    clean = fit_lattice(bp)
    lists = []
    for i in range(4):
        for j in range(4):
            p = bp[i, j]
            # bright spurious peaks half-way between lattice points
            for frac, vec in ((0.5, clean.basis.u), (0.45, clean.basis.v)):
                junk = np.column_stack([p[:4, 0] + frac * vec[0], p[:4, 1] + frac * vec[1], np.full(4, p[:, 2].max())])
                p = np.vstack([p, junk])
            lists.append(p)
    dirty = BraggPeaks.from_list(lists, (4, 4), bp.calibration)
    lat = fit_lattice(dirty, clean.basis)
    np.testing.assert_allclose(lat.u, clean.u, atol=2e-3)
    np.testing.assert_allclose(lat.v, clean.v, atol=2e-3)
    np.testing.assert_array_equal(lat.n_used, bp.counts)  # every junk peak left out


def test_too_few_peaks_fail_with_nan(peaks):
    bp, _ = peaks
    lists = [bp[i, j] for i in range(4) for j in range(4)]
    lists[1] = lists[1][:2]  # two peaks cannot fix a 2D lattice
    lists[2] = lists[2][:0]
    # three collinear peaks (origin, u, 2u) cannot either
    b = fit_lattice(bp).basis
    lists[3] = np.array([[*b.origin, 1.0], [*(b.origin + b.u), 1.0], [*(b.origin + 2 * b.u), 1.0]])
    lat = fit_lattice(BraggPeaks.from_list(lists, (4, 4), bp.calibration), b)
    assert not lat.ok[0, 1] and not lat.ok[0, 2] and not lat.ok[0, 3]
    assert np.isnan(lat.u[0, 1]).all() and lat.n_used[0, 2] == 0
    assert lat.ok[1:].all()


def test_fixed_origin_and_unweighted_fits(peaks):
    bp, _ = peaks
    a = fit_lattice(bp)
    b = fit_lattice(bp, a.basis, fit_origin=False, weighted=False)
    np.testing.assert_allclose(b.origin, np.broadcast_to(a.basis.origin, b.origin.shape))
    np.testing.assert_allclose(b.u, a.u, atol=0.01)


def test_bad_inputs(peaks):
    bp, _ = peaks
    with pytest.raises(TypeError, match="BraggPeaks"):
        fit_lattice(np.zeros((3, 3)))
    with pytest.raises(TypeError, match="basis"):
        fit_lattice(bp, basis=np.eye(2))
    with pytest.raises(ValueError, match="at least 3 peaks"):
        find_lattice(BraggPeaks.from_list([np.zeros((0, 3))] * 4, (2, 2)))
    with pytest.raises(ValueError, match="max_residual_px"):
        fit_lattice(bp, max_residual_px=-1)
    assert isinstance(find_lattice(bp), Basis)
