"""The kinematic disk-pattern simulator: geometry, intensities, noise and ground truth."""

import math

import numpy as np
import pytest

from distill4d.calibration import Calibration
from distill4d.simulate.kinematic import (
    DEFAULT_CALIBRATION,
    SI110_LATTICE_A,
    kinematic_patterns,
    reciprocal_lattice,
    reflections,
    render_disks,
    strained_scan,
    vacuum_probe,
)


def test_reciprocal_lattice_is_inverse_transpose():
    A = np.array([[3.0, 1.0], [0.5, 4.0]])
    B = reciprocal_lattice(A)
    np.testing.assert_allclose(A.T @ B, np.eye(2), atol=1e-12)


def test_disk_area_and_subpixel_centre():
    p = render_disks((64, 64), [[[30.3, 40.7]]], [2.0], 5.0)[0]
    assert p.sum() == pytest.approx(2.0 * math.pi * 25, rel=0.01)
    x, y = np.indices(p.shape)
    assert (p * x).sum() / p.sum() == pytest.approx(30.3, abs=0.01)
    assert (p * y).sum() / p.sum() == pytest.approx(40.7, abs=0.01)
    assert p.max() == pytest.approx(2.0)


def test_vacuum_probe_radius_from_calibration():
    cal = Calibration(q_pixel_inv_A=0.02, energy_eV=300e3, semiangle_mrad=3.0)
    r = 3.0 / cal.mrad_per_px  # 7.6 px
    p = vacuum_probe((64, 64), calibration=cal, origin_px=(31.5, 32.25))
    assert p.sum() == pytest.approx(math.pi * r**2, rel=0.01)
    x, y = np.indices(p.shape)
    assert (p * x).sum() / p.sum() == pytest.approx(31.5, abs=0.01)


def test_reflections_extinction_of_centred_cell():
    hk, inten = reflections(SI110_LATTICE_A, 1.0)
    assert np.all((hk.sum(axis=1) % 2) == 0)  # h + k odd is extinct for the centred motif
    assert np.all(inten > 0)


def test_peaks_move_with_inverse_transpose_of_F():
    F = np.array([[1.01, 0.0], [0.0, 1.0]])
    _, t0 = kinematic_patterns(None, shape=(96, 96))
    _, t1 = kinematic_patterns(F, shape=(96, 96))
    j = int(np.nonzero((t0["hk"] == [2, 0]).all(axis=1))[0][0])
    g0 = t0["qx"][0, j] - 48.0
    g1 = t1["qx"][0, j] - 48.0
    # stretched along x in real space: g_x shrinks by 1/1.01
    assert g1 == pytest.approx(g0 / 1.01, rel=1e-12)
    assert g0 == pytest.approx(2 / 3.840 / 0.025, rel=1e-12)


def test_strained_scan_truth_and_layers():
    dc, truth = strained_scan((8, 3), (64, 64), kind="multilayer", strain=0.01, layer_width=2, rotation_deg=1.0)
    assert dc.shape == (8, 3, 64, 64)
    sign = np.array([1, 1, -1, -1, 1, 1, -1, -1])
    # eps = sym(F) - I with F = R(1 deg) (I + eps0): eps_xx = cos(1 deg) (1 + eps0_xx) - 1
    np.testing.assert_allclose(truth.eps_xx[:, 0], math.cos(math.radians(1)) * (1 + 0.01 * sign) - 1, atol=1e-12)
    np.testing.assert_allclose(np.degrees(truth.theta), 1.0, atol=1e-6)
    assert dc.calibration.origin_px == (32.0, 32.0)
    assert truth.peaks(0, 0).shape[1] == 3


def test_poisson_noise_is_seeded():
    a, _ = kinematic_patterns(None, shape=(64, 64), dose=1e4, seed=3)
    b, _ = kinematic_patterns(None, shape=(64, 64), dose=1e4, seed=3)
    c, _ = kinematic_patterns(None, shape=(64, 64), dose=1e4, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.sum() == pytest.approx(1e4, rel=0.05)
    assert np.all(a == np.round(a))


def test_bad_inputs():
    with pytest.raises(ValueError, match="singular"):
        kinematic_patterns(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="strain"):
        strained_scan((2, 2), (32, 32), strain=[[0.0, 0.01], [0.0, 0.0]])
    with pytest.raises(ValueError, match="kind"):
        strained_scan((2, 2), (32, 32), kind="twisted")
    with pytest.raises(ValueError, match="semiangle_mrad"):
        vacuum_probe((32, 32), calibration=Calibration(q_pixel_inv_A=0.02, energy_eV=300e3))
    assert DEFAULT_CALIBRATION.semiangle_mrad == 2.0
