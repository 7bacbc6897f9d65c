import numpy as np
import pytest

from distill4d.errors import Distill4dError
from distill4d.identify.metric import METRIC_NAMES, N_METRIC, fit_forms, fit_lattice2d, metric_features


def _zone_pattern(cell, uvw, g_max=1.2):
    """Noise-free ZOLZ spots (1/Å) of a primitive lattice ``cell`` (rows, Å) with the beam along [uvw]."""
    cell = np.asarray(cell, dtype=float)
    recip = np.linalg.inv(cell).T  # rows: a*, b*, c*
    beam = np.asarray(uvw, dtype=float) @ cell
    beam /= np.linalg.norm(beam)
    r = np.arange(-8, 9)
    hkl = np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    hkl = hkl[np.any(hkl != 0, axis=1) & (hkl @ np.asarray(uvw) == 0)]
    G = hkl @ recip
    e1 = np.cross(beam, [0.3, 0.5, 0.8])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(beam, e1)
    qx, qy = G @ e1, G @ e2
    keep = np.hypot(qx, qy) <= g_max
    return qx[keep], qy[keep]


def _rotate(qx, qy, angle, mirror=False):
    c, s = np.cos(angle), np.sin(angle)
    x, y = c * qx - s * qy, s * qx + c * qy
    return (x, -y) if mirror else (x, y)


@pytest.mark.parametrize("uvw", [(1, 1, 0), (0, 0, 1), (1, 1, 1)])
def test_cubic_a_recovered_from_one_zone(uvw):
    a = 3.9
    qx, qy = _zone_pattern(np.eye(3) * a, uvw)
    fit = fit_lattice2d(qx, qy)
    assert fit["indexed"].all()
    res, par = fit_forms(fit["gram"][None])["cubic"]
    assert res[0] < 1e-6
    assert abs(1 / np.sqrt(par[0, 0]) - a) < 0.005  # Å


def test_tetragonal_a_c_recovered_and_cubic_rejected():
    a, c = 3.0, 5.0
    qx, qy = _zone_pattern(np.diag([a, a, c]), (1, 0, 0))
    G = fit_lattice2d(qx, qy)["gram"]
    forms = fit_forms(G[None])
    res, par = forms["tetragonal"]
    assert res[0] < 1e-6
    np.testing.assert_allclose(par[0], [1 / a**2, 1 / c**2], rtol=1e-3)
    # c/a = 5/3 is not commensurate with a cube: the cubic form leaves a residual, though only of
    # about 1 % (index pairs up to 2 approximate any 2D Gram matrix that closely)
    assert forms["cubic"][0][0] > 0.005


def test_features_invariant_to_rotation_and_mirror_and_noise_tolerant():
    rng = np.random.default_rng(0)
    qx, qy = _zone_pattern(np.diag([3.0, 3.0, 5.0]), (1, 1, 0))
    it = rng.uniform(0.1, 1.0, qx.size)
    lists = [(qx, qy)] + [_rotate(qx, qy, ang, mirror) for ang, mirror in ((0.7, False), (2.1, True), (-1.3, False))]
    F = metric_features(np.concatenate([q[0] for q in lists]), np.concatenate([q[1] for q in lists]),
                        np.tile(it, len(lists)), np.full(len(lists), qx.size))
    assert F.shape == (len(lists), N_METRIC) == (4, len(METRIC_NAMES))
    np.testing.assert_allclose(F[1:], np.broadcast_to(F[0], F[1:].shape), atol=1e-6)
    assert F[0, 0] == 1.0  # every spot on the 2D lattice
    # with the library's position noise (0.003 1/Å) the 2D lattice still indexes the spots and
    # gives A, C within 3 % ([100] zone: along [110] the section is also that of a cell of a / sqrt 2)
    qx, qy = _zone_pattern(np.diag([3.0, 3.0, 5.0]), (1, 0, 0))
    nx, ny = qx + rng.normal(0, 0.003, qx.size), qy + rng.normal(0, 0.003, qy.size)
    fit = fit_lattice2d(nx, ny)
    assert fit["indexed"].mean() > 0.95
    res, par = fit_forms(fit["gram"][None])["tetragonal"]
    np.testing.assert_allclose(par[0], [1 / 9, 1 / 25], rtol=0.03)


def test_metric_features_rejects_bad_counts():
    with pytest.raises(Distill4dError, match="counts"):
        metric_features(np.zeros(3), np.zeros(3), np.ones(3), np.array([2]))


def test_encode_ragged_metric_option_appends_the_metric_features():
    from distill4d.identify.encode import N_FEATURES, encode_ragged

    qx, qy = _zone_pattern(np.eye(3) * 4.0, (1, 1, 0))
    it = np.linspace(1.0, 0.2, qx.size)
    n = np.array([qx.size])
    base = encode_ragged(qx, qy, it, n)
    both = encode_ragged(qx, qy, it, n, metric=True)
    assert both.shape == (1, N_FEATURES + N_METRIC)
    np.testing.assert_array_equal(both[:, :N_FEATURES], base)
    np.testing.assert_allclose(both[:, N_FEATURES:], metric_features(qx, qy, it, n))


def test_fit_layers_explains_a_projected_3d_lattice_not_random_points():
    from ase import Atoms

    from distill4d.identify.metric import fit_layers
    from distill4d.simulate.spots import spot_patterns

    atoms = Atoms("C", cell=[[7.1, 0, 0], [1.3, 8.2, 0], [0.9, 1.7, 9.3]], pbc=True)
    rng = np.random.default_rng(3)
    for qx, qy, it in spot_patterns(atoms, 3, rng=1, excitation_error_inv_A=0.03):
        fit = fit_lattice2d(qx, qy, it**0.5)
        assert fit["indexed"].mean() < 0.6  # most spots are off one plane (a wide relrod, a big cell)
        explained = (fit_layers(qx, qy, fit["basis"])["layer"] <= 4).mean()
        assert explained > 0.9
        r = np.hypot(qx, qy).max() * np.sqrt(rng.random(qx.size))
        ph = rng.random(qx.size) * 2 * np.pi
        rx, ry = r * np.cos(ph), r * np.sin(ph)
        # the chance level: random points (as many, in the same disc) against the same lattice
        assert (fit_layers(rx, ry, fit["basis"])["layer"] <= 4).mean() < explained - 0.3
    with pytest.raises(Distill4dError, match="NaN"):
        metric_features(np.array([0.1, np.nan, 0.3]), np.zeros(3), np.ones(3), np.array([3]))
    with pytest.raises(Distill4dError, match="direct_beam_inv_A"):
        metric_features(np.zeros(3), np.zeros(3), np.ones(3), np.array([3]), direct_beam_inv_A=-1.0)


def test_lattice_fits_refuse_bad_spots_in_one_line():
    from distill4d.identify.metric import fit_layers

    with pytest.raises(Distill4dError, match="one length"):
        fit_lattice2d(np.zeros(3), np.zeros(4))
    with pytest.raises(Distill4dError, match="NaN"):
        fit_lattice2d(np.array([0.1, np.nan]), np.zeros(2))
    with pytest.raises(Distill4dError, match="tolerance_inv_A"):
        fit_lattice2d(np.zeros(2), np.zeros(2), tolerance_inv_A=0.0)
    with pytest.raises(Distill4dError, match="basis"):
        fit_layers(np.zeros(2), np.zeros(2), np.eye(3))
