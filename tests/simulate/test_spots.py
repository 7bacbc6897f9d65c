"""Tests of distill4d.simulate.spots: kinematic spot lists, augmentation, the labelled library."""

import numpy as np
import pytest

from distill4d import Distill4dError
from distill4d.simulate.spots import SYSTEMS, SpotLibrary, augment_spots, random_rotations, spot_library, spot_patterns


def _al():
    from distill4d.simulate.crystals import prototype

    return prototype("Al")


def test_random_rotations_are_rotations():
    R = random_rotations(50, 0)
    np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R), 1.0)
    np.testing.assert_array_equal(R, random_rotations(50, 0))


def test_zone_axis_pattern_of_fcc():
    """Al along [001]: the strongest spots are {200} (|g| = 2/a) and {220}; {100} and {110} are extinct."""
    atoms = _al()
    a = atoms.cell.cellpar()[0]
    (qx, qy, it), = spot_patterns(atoms, 1, rng=0, rotations=np.eye(3)[None], max_g_inv_A=1.0)
    g = np.hypot(qx, qy)
    strongest = g[it > 0.999]
    assert strongest.size == 4
    np.testing.assert_allclose(strongest, 2 / a, rtol=1e-9)
    np.testing.assert_allclose(np.sort(g[it > 0.5])[-1], 2 * np.sqrt(2) / a, rtol=1e-9)
    assert not np.any(np.isclose(g, 1 / a)) and not np.any(np.isclose(g, np.sqrt(2) / a))
    assert np.all(g <= 1.0) and it.max() == pytest.approx(1.0)


def test_excitation_error_fades_spots():
    atoms = _al()
    tilt = np.radians(2.0)
    R = np.array([[1, 0, 0], [0, np.cos(tilt), -np.sin(tilt)], [0, np.sin(tilt), np.cos(tilt)]])
    narrow = spot_patterns(atoms, 1, rng=0, rotations=R[None], excitation_error_inv_A=0.005, min_relative_intensity=0)
    wide = spot_patterns(atoms, 1, rng=0, rotations=R[None], excitation_error_inv_A=0.05, min_relative_intensity=0)
    # more spots survive a wider relrod, and the outer ones are relatively stronger
    assert np.sum(wide[0][2] > 1e-3) > np.sum(narrow[0][2] > 1e-3)


def test_deterministic_and_bad_input():
    atoms = _al()
    a = spot_patterns(atoms, 3, rng=5)
    b = spot_patterns(atoms, 3, rng=5)
    for p, q in zip(a, b):
        for x, y in zip(p, q):
            np.testing.assert_array_equal(x, y)
    with pytest.raises(Distill4dError, match="max_g_inv_A"):
        spot_patterns(atoms, 1, rng=0, max_g_inv_A=-1)
    with pytest.raises(Distill4dError, match="rotations"):
        spot_patterns(atoms, 2, rng=0, rotations=np.eye(3)[None])


def test_augment_spots():
    atoms = _al()
    (qx, qy, it), = spot_patterns(atoms, 1, rng=0, rotations=np.eye(3)[None], max_g_inv_A=1.5)
    ax, ay, ai = augment_spots(qx, qy, it, rng=1, position_sigma_inv_A=0, intensity_noise=0,
                               drop_weak_fraction=0, calibration_error=0.03)
    ratio = np.hypot(ax, ay) / np.hypot(qx, qy)
    assert np.ptp(ratio) < 1e-12 and abs(ratio[0] - 1) <= 0.03
    ex, ey, _ = augment_spots(qx, qy, it, rng=1, detector_edge_inv_A=0.6, calibration_error=0)
    assert ex.size < qx.size and np.all(np.abs(ex) <= 0.6) and np.all(np.abs(ey) <= 0.6)


def test_small_library_labels_and_roundtrip(tmp_path):
    lib = spot_library([225, 194], n_structures=1, n_orientations=4, seed=0, max_atoms=8, prototypes=("Al",))
    assert len(lib.space_group) == 3
    assert [SYSTEMS[s] for s in lib.system] == ["cubic", "hexagonal", "cubic"]
    assert lib.space_group.tolist() == [225, 194, 225]
    assert lib.cellpar.shape == (3, 6) and np.all(lib.cellpar[:, :3] > 1)
    assert len(lib) == lib.qx.shape[0] == lib.structure.size and set(lib.structure) <= {0, 1, 2}
    assert np.all(np.isnan(lib.qx[np.arange(lib.qx.shape[1]) >= lib.counts[:, None]]))
    lib.save(tmp_path / "lib.npz")
    back = SpotLibrary.load(tmp_path / "lib.npz")
    np.testing.assert_array_equal(back.counts, lib.counts)
    np.testing.assert_array_equal(back.name, lib.name)
    sub = lib.subset([2])
    assert sub.space_group.tolist() == [225] and set(sub.structure) == {0}
    again = spot_library([225, 194], n_structures=1, n_orientations=4, seed=0, max_atoms=8, prototypes=("Al",))
    np.testing.assert_array_equal(again.qx, lib.qx)


def test_library_resumes_from_cache(tmp_path):
    kw = dict(n_structures=1, n_orientations=3, seed=1, max_atoms=8, prototypes=("Al", "Mg"))
    first = spot_library([194], cache_dir=tmp_path, **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"structure_0000{i}.npz" for i in range(3)]
    (tmp_path / "structure_00001.npz").unlink()  # as if interrupted before the second structure
    again = spot_library([194], cache_dir=tmp_path, **kw)
    for f in ("qx", "qy", "intensity", "counts", "structure", "space_group", "cellpar", "name"):
        np.testing.assert_array_equal(getattr(again, f), getattr(first, f))
    with pytest.raises(Distill4dError, match="other arguments"):
        spot_library([194], cache_dir=tmp_path, **{**kw, "seed": 2})
    with pytest.raises(Distill4dError, match="cache_dir"):
        spot_library([194], cache_dir=tmp_path / "missing", **kw)


def test_zone_rotations_put_a_low_index_zone_axis_on_the_beam():
    from distill4d.simulate.crystals import prototype
    from distill4d.simulate.spots import ZONE_TILT_MRAD, zone_rotations

    atoms = prototype("Mg")  # hexagonal: [100], [110], [001] ... are the shortest directions
    cell = atoms.cell.array
    R = zone_rotations(atoms, 40, rng=3)
    np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-12)
    beams = R.transpose(0, 2, 1)[:, :, 2]  # the crystal direction along +z, Cartesian
    r = np.arange(-2, 3)
    uvw = np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)[1:]
    uvw = uvw[np.abs(uvw).sum(1) > 0]
    dirs = uvw @ cell
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    off_mrad = np.degrees(np.arccos(np.clip(np.abs(beams @ dirs.T).max(1), -1, 1))) * np.pi / 180 * 1e3
    assert np.all(off_mrad <= ZONE_TILT_MRAD + 1e-6)  # within the tilt of an index-2 zone axis
    assert len({tuple(np.round(b, 1)) for b in np.abs(beams)}) >= 3  # several axes drawn
    # on a zone with a narrow relrod the spots are the zero-order Laue zone: the beam's reciprocal
    # lattice plane; a random orientation with the same relrod gives almost none
    on = spot_patterns(atoms, 40, rng=0, rotations=R, excitation_error_inv_A=0.003)
    rand = spot_patterns(atoms, 40, rng=0, excitation_error_inv_A=0.003)
    assert np.median([len(p[0]) for p in on]) >= 10 > np.median([len(p[0]) for p in rand])
    flat = atoms.copy()
    flat.set_cell([cell[0], cell[1], [0.0, 0.0, 0.0]])
    with pytest.raises(Distill4dError, match="non-zero volume"):
        zone_rotations(flat, 3, rng=0)
    with pytest.raises(Distill4dError, match="one per orientation"):
        spot_patterns(atoms, 3, rng=0, excitation_error_inv_A=np.array([0.01, 0.02]))


def test_the_tail_adds_the_weak_upper_laue_zone_spots_of_a_thick_crystal():
    from distill4d.simulate.crystals import prototype
    from distill4d.simulate.spots import MERGE_INV_A

    atoms = prototype("Cu")  # fcc, a 3.615 Å, seen exactly along [001]
    R = np.eye(3)[None]
    plain = spot_patterns(atoms, 1, rng=0, rotations=R, excitation_error_inv_A=0.003)[0]
    tailed = spot_patterns(atoms, 1, rng=0, rotations=R, excitation_error_inv_A=0.003, tail=0.02)[0]
    g_plain, g_tail = np.hypot(plain[0], plain[1]), np.hypot(tailed[0], tailed[1])
    # zero-order Laue zone only: (200) at 2 / a is the shortest; the tail adds the first Laue
    # zone's (111) projected on the (110) position, 1.414 / a, far weaker than (200)
    assert abs(g_plain.min() - 2 / 3.615) < 1e-3
    near = np.abs(g_tail - np.sqrt(2) / 3.615) < 1e-3
    assert near.sum() == 4 and np.all(tailed[2][near] < 0.1)
    assert np.all(tailed[2][np.abs(g_tail - 2 / 3.615) < 1e-3] > 0.5)
    # projections of several points on one spot are merged: no two spots closer than the merge step
    d = np.hypot(tailed[0][:, None] - tailed[0][None], tailed[1][:, None] - tailed[1][None])
    assert d[np.triu_indices(len(d), 1)].min() > MERGE_INV_A / 2
    with pytest.raises(Distill4dError, match="tail"):
        spot_patterns(atoms, 1, rng=0, rotations=R, tail=-0.1)
