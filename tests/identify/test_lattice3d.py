import numpy as np
import pytest
from ase import Atoms

from distill4d.errors import Distill4dError
from distill4d.identify.lattice3d import LATTICE3D_NAMES, N_LATTICE3D, lattice3d_features, layer_offset
from distill4d.simulate.spots import spot_patterns


def _tilt(deg):
    """Rotation by ``deg`` degrees about the in-plane axis (1, 0.3, 0)."""
    ax = np.array([1.0, 0.3, 0.0]) / np.hypot(1.0, 0.3)
    K = np.array([[0, -ax[2], ax[1]], [ax[2], 0, -ax[0]], [-ax[1], ax[0], 0]])
    a = np.radians(deg)
    return np.eye(3) + np.sin(a) * K + (1 - np.cos(a)) * K @ K


def _fcc(a=8.0):
    return Atoms("C4", scaled_positions=[[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
                 cell=np.eye(3) * a, pbc=True)


def test_fcc_near_001_layer_sits_at_the_cell_centre_and_the_cell_is_square():
    # F-centred cubic along [001], 2 degrees off: the zero layer is the square lattice of {220}
    # (reduced cell |g2|/|g1| = 1, angle 90 degrees) and the first Laue layer ({111}-type spots) is
    # shifted by half of each reduced basis vector, (u, v) = (1/2, 1/2), up to the tilt's shift
    # H sin(tilt) / |g1| = 0.125 * 0.035 / 0.177 = 0.025
    (qx, qy, it), = spot_patterns(_fcc(), 1, rng=0, rotations=_tilt(2.0)[None], excitation_error_inv_A=0.03)
    F = dict(zip(LATTICE3D_NAMES, lattice3d_features(qx, qy, it, np.array([qx.size]))[0]))
    assert abs(F["g2_over_g1"] - 1) < 0.01 and F["cos12"] < 0.01
    assert abs(F["layer_u"] - 0.5) < 0.05 and abs(F["layer_v"] - 0.5) < 0.05
    assert F["u_off_half"] < 0.05 and F["v_off_half"] < 0.05
    assert F["layer1_fraction"] > 0.3 and F["no_layer_fraction"] < 0.05
    # the two first layers' stripes lie on either side of the centre, farther out than the zero
    # layer's spread (about H / tan(tilt) = 3.6 |g1| for a flat sphere)
    assert F["stripe_distance_over_width"] > 1.0 and 2.0 < F["stripe_distance_over_g1"] < 6.0
    # the first layer lies about H = 1/a = 0.125 1/Å off the sphere, so its mean log intensity is
    # lower by about (H / σ)² / 2 = 8.7 (less, as the tilt and the cut of weak spots go); the height
    # from that drop, H / |g1| (true 0.707), comes out low but of the right size, and the reduced
    # 3D cell of g1, g2, (t, H) is near the reciprocal cell of F-centred cubic (body-centred: three
    # equal lengths, |cos| 1/3 between each pair) within 15 % in length and 0.2 in |cos|
    assert F["log_intensity_drop_layer1"] > 1.0
    assert 0.2 < F["layer_height_over_g1"] < 0.9
    assert abs(F["cell3d_l2_over_l1"] - 1) < 0.15 and abs(F["cell3d_l3_over_l1"] - 1) < 0.15
    for c in ("cell3d_cos_alpha", "cell3d_cos_beta", "cell3d_cos_gamma"):
        assert abs(F[c] - 1 / 3) < 0.2


def test_simple_cubic_layer_projects_onto_the_lattice():
    # a primitive lattice along [001], 2 degrees off: the layer lands on the zero layer's own
    # lattice points (within the fit's tolerance), so every spot is on layer 0 and no layer is found
    sc = Atoms("C", cell=np.eye(3) * 8.0, pbc=True)
    (qx, qy, it), = spot_patterns(sc, 1, rng=0, rotations=_tilt(2.0)[None], excitation_error_inv_A=0.03)
    F = dict(zip(LATTICE3D_NAMES, lattice3d_features(qx, qy, it, np.array([qx.size]))[0]))
    assert F["layer0_fraction"] == 1.0 and F["layer_u"] == 0.0 and F["layer_v"] == 0.0


def test_features_invariant_to_rotation_mirror_and_basis_choice():
    (qx, qy, it), = spot_patterns(_fcc(7.3), 1, rng=0, rotations=_tilt(3.0)[None], excitation_error_inv_A=0.03)
    lists = [(qx, qy)]
    for ang, mirror in ((0.7, False), (2.1, True)):
        c, s = np.cos(ang), np.sin(ang)
        x, y = c * qx - s * qy, s * qx + c * qy
        lists.append((x, -y) if mirror else (x, y))
    F = lattice3d_features(np.concatenate([q[0] for q in lists]), np.concatenate([q[1] for q in lists]),
                           np.tile(it, 3), np.full(3, qx.size))
    assert F.shape == (3, N_LATTICE3D)
    np.testing.assert_allclose(F[1:], np.broadcast_to(F[0], F[1:].shape), atol=1e-6)
    # the offset does not depend on the basis or on the sign of t
    B = np.array([[0.2, 0.0], [0.05, 0.3]])
    t = 0.3 * B[0] + 0.6 * B[1]
    u, v = layer_offset(B, t)
    for B2, t2 in ((np.array([B[1] + B[0], B[0]]), t), (-B, -t), (B, t + 2 * B[0] - B[1])):
        np.testing.assert_allclose(layer_offset(B2, t2), (u, v), atol=1e-9)
    assert 0 <= u <= 0.5 and 0 <= v < 1


def test_bad_spot_lists_get_one_line_errors():
    with pytest.raises(Distill4dError, match="counts"):
        lattice3d_features(np.zeros(3), np.zeros(3), np.ones(3), np.array([2]))
    with pytest.raises(Distill4dError, match="NaN"):
        lattice3d_features(np.array([0.1, np.nan, 0.3]), np.zeros(3), np.ones(3), np.array([3]))
    with pytest.raises(Distill4dError, match="direct_beam_inv_A"):
        lattice3d_features(np.zeros(3), np.zeros(3), np.ones(3), np.array([3]), direct_beam_inv_A=0.0)
    with pytest.raises(Distill4dError, match="excitation_error_inv_A"):
        lattice3d_features(np.zeros(3), np.zeros(3), np.ones(3), np.array([3]), excitation_error_inv_A=-0.03)
    # no lattice (too few spots): zeros, not an error
    assert not lattice3d_features(np.array([0.3]), np.array([0.1]), np.ones(1), np.array([1])).any()


def test_layer_offset_refuses_bad_input():
    from distill4d import Distill4dError

    with pytest.raises(Distill4dError, match=r"\(2, 2\)"):
        layer_offset([1.0, 2.0, 3.0], [0.0, 0.0])
    with pytest.raises(Distill4dError, match="finite"):
        layer_offset([[1.0, 0.0], [0.0, 1.0]], [float("nan"), 0.0])
    with pytest.raises(Distill4dError, match="parallel"):
        layer_offset([[1.0, 0.0], [2.0, 0.0]], [0.3, 0.1])
