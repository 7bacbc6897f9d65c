"""Crystal structures for multislice: prototypes, random crystals, orientation, strain, tiling."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("ase")

from ase.data import atomic_masses
from ase.neighborlist import neighbor_list

from distill4d.simulate import crystals as cr

AMU_PER_A3_TO_G_CM3 = 1.66053907
needs_pyxtal = pytest.mark.skipif(
    importlib.util.find_spec("pyxtal") is None or importlib.util.find_spec("spglib") is None,
    reason="random crystals need pyxtal and spglib (distill4d[sim])",
)
needs_spglib = pytest.mark.skipif(importlib.util.find_spec("spglib") is None, reason="needs spglib")


def nn_distance(atoms, cutoff=4.0):
    return float(neighbor_list("d", atoms, cutoff).min())


def pair(atoms, z1, z2, cutoff=3.5):
    i, j, d = neighbor_list("ijd", atoms, cutoff)
    return d[(atoms.numbers[i] == z1) & (atoms.numbers[j] == z2)]


def density(atoms):
    return atomic_masses[atoms.numbers].sum() / atoms.get_volume() * AMU_PER_A3_TO_G_CM3


def is_orthogonal(atoms):
    cell = np.asarray(atoms.cell)
    return np.abs(cell[~np.eye(3, dtype=bool)]).max() < 1e-9 and np.all(np.diag(cell) > 0)


# --- prototypes ---------------------------------------------------------------------------


def test_every_prototype_builds_with_a_sensible_cell():
    assert set(cr.list_prototypes()) == set(cr.PROTOTYPES)
    for name in cr.list_prototypes():
        atoms = cr.prototype(name)
        assert len(atoms) >= 2 and all(atoms.pbc), name
        assert 0.9 < nn_distance(atoms) < 3.5, name
        assert isinstance(cr.PROTOTYPES[name], str) and cr.PROTOTYPES[name]


@pytest.mark.parametrize(
    "name, n_atoms, nn",
    [
        ("Si", 8, lambda a, c: a * math.sqrt(3) / 4),
        ("Cu", 4, lambda a, c: a / math.sqrt(2)),
        ("Au", 4, lambda a, c: a / math.sqrt(2)),
        ("Al", 4, lambda a, c: a / math.sqrt(2)),
        ("Fe", 2, lambda a, c: a * math.sqrt(3) / 2),
        ("W", 2, lambda a, c: a * math.sqrt(3) / 2),
        ("Mg", 2, lambda a, c: min(a, math.sqrt(a * a / 3 + c * c / 4))),
        ("Zn", 2, lambda a, c: min(a, math.sqrt(a * a / 3 + c * c / 4))),
        ("NaCl", 8, lambda a, c: a / 2),
        ("MgO", 8, lambda a, c: a / 2),
        ("GaAs", 8, lambda a, c: a * math.sqrt(3) / 4),
        ("CeO2", 12, lambda a, c: a * math.sqrt(3) / 4),
        ("SrTiO3", 5, lambda a, c: a / 2),
        ("hBN", 4, lambda a, c: a / math.sqrt(3)),
    ],
)
def test_prototype_nearest_neighbour_distance_is_exact(name, n_atoms, nn):
    atoms = cr.prototype(name)
    a, c = atoms.cell.lengths()[0], atoms.cell.lengths()[2]
    assert len(atoms) == n_atoms
    assert nn_distance(atoms) == pytest.approx(nn(a, c), abs=1e-6)


def test_prototype_lattice_constants_and_densities():
    si = cr.prototype("Si")
    assert np.allclose(np.asarray(si.cell), np.diag([5.431] * 3))
    # room-temperature densities (g/cm3) of the prototypes' materials, within 1 %
    for name, rho in [("Si", 2.329), ("Cu", 8.96), ("Au", 19.30), ("Al", 2.70), ("Fe", 7.874),
                      ("W", 19.25), ("Mg", 1.738), ("NaCl", 2.165), ("MgO", 3.58), ("GaAs", 5.32),
                      ("CeO2", 7.22), ("SrTiO3", 5.12)]:  # fmt: skip
        assert density(cr.prototype(name)) == pytest.approx(rho, rel=0.01), name


def test_layered_and_polar_prototypes_have_the_right_bonds():
    mos2 = cr.prototype("MoS2")
    assert mos2.get_chemical_formula() == "Mo2S4"
    assert np.allclose(mos2.cell.cellpar(), [3.16, 3.16, 12.29, 90, 90, 120])
    assert pair(mos2, 42, 16).min() == pytest.approx(2.41, abs=0.05)
    assert len(pair(mos2, 42, 16)) == 12  # trigonal prismatic: 6 S around each Mo
    gan = cr.prototype("GaN")
    assert np.allclose(gan.cell.cellpar()[[0, 2]], [3.189, 5.185])
    assert pair(gan, 31, 7).min() == pytest.approx(1.95, abs=0.01)
    bto = cr.prototype("BaTiO3")
    ti_o = pair(bto, 22, 8)
    assert 1.8 < ti_o.min() < 1.95 and 2.1 < ti_o.max() < 2.25  # short and long apical bonds
    assert cr.prototype("hBN").cell.lengths()[2] == pytest.approx(6.66)


def test_prototype_overrides():
    ni = cr.prototype("Cu", elements=["Ni"], a=3.524)
    assert set(ni.get_chemical_symbols()) == {"Ni"}
    assert nn_distance(ni) == pytest.approx(3.524 / math.sqrt(2), abs=1e-9)
    kbr = cr.prototype("nacl", elements=("K", "Br"), a=6.6)
    assert kbr.get_chemical_formula() == "Br4K4" and nn_distance(kbr) == pytest.approx(3.3)
    ws2 = cr.prototype("MoS2", elements=("W", "S"), a=3.18, c=12.5)
    assert np.allclose(ws2.cell.cellpar()[[0, 2]], [3.18, 12.5])
    mg = cr.prototype("Mg", c=5.0)
    assert mg.cell.lengths()[2] == pytest.approx(5.0)


def test_prototype_bad_input():
    with pytest.raises(ValueError, match="valid names: .*Si.*MoS2"):
        cr.prototype("unobtainium")
    with pytest.raises(ValueError, match="allowed"):
        cr.prototype("Si", c=3.0)
    with pytest.raises(ValueError, match="elements"):
        cr.prototype("NaCl", elements=["Na"])
    with pytest.raises(ValueError, match="elements"):
        cr.prototype("Cu", elements=["Xx"])
    with pytest.raises(ValueError, match="a must be"):
        cr.prototype("Cu", a=-1.0)


# --- orientation --------------------------------------------------------------------------


def sorted_neighbour_distances(atoms, cutoff):
    return np.sort(neighbor_list("d", atoms, cutoff))


def assert_same_crystal(original, oriented, cutoff):
    # the same multiset of neighbour distances per atom (cells may hold different numbers of atoms)
    n0, n1 = len(original), len(oriented)
    g = math.gcd(n0, n1)
    d0 = np.sort(np.repeat(sorted_neighbour_distances(original, cutoff), n1 // g))
    d1 = np.sort(np.repeat(sorted_neighbour_distances(oriented, cutoff), n0 // g))
    assert d0.shape == d1.shape
    assert np.abs(d0 - d1).max() < 1e-3
    assert oriented.get_volume() / len(oriented) == pytest.approx(original.get_volume() / len(original))


def test_orient_si_011_cell_and_zone_reflections():
    si = cr.prototype("Si")
    a = 5.431
    out, info = cr.orient(si, [0, 1, 1])
    assert is_orthogonal(out)
    lx, ly, lz = np.diag(np.asarray(out.cell))
    # z is the lattice repeat along [011] of the fcc lattice: |(0, 1/2, 1/2) a| = a / sqrt(2)
    assert lz == pytest.approx(a / math.sqrt(2), abs=1e-9)
    assert sorted([lx, ly]) == pytest.approx([a / math.sqrt(2), a], abs=1e-9)
    assert len(out) == 4
    assert info["zone_axis"] == (0, 1, 1)
    assert info["orthogonalization_strain"] < 1e-9
    assert np.allclose(info["cell_lengths"], [lx, ly, lz])
    R = info["rotation"]
    assert np.allclose(R @ R.T, np.eye(3)) and np.linalg.det(R) == pytest.approx(1.0)
    assert np.allclose(R @ (np.array([0, 1, 1]) @ np.asarray(si.cell)) / (a * math.sqrt(2)), [0, 0, 1])
    assert np.allclose(info["cell_uvw"][2], [0, 0.5, 0.5])
    assert_same_crystal(si, out, 4.2)

    # zone-axis reflections: g = (h / lx, k / ly, 0); kinematic structure factor of the cell
    rec = np.asarray(out.cell.reciprocal())  # rows b_i, a_i . b_j = delta_ij
    assert np.allclose(rec[:2, 2], 0)
    hk = np.array([(h, k) for h in range(-6, 7) for k in range(-6, 7) if (h, k) != (0, 0)])
    g = hk @ rec[:2]
    assert np.allclose(g[:, 2], 0)
    f = np.abs(np.exp(2j * np.pi * (g @ out.positions.T)).sum(axis=1)) / len(out)
    s2 = np.round((np.linalg.norm(g, axis=1) * a) ** 2, 6)  # (|g| a)^2 = h^2 + k^2 + l^2
    allowed = {}
    for v, fv in zip(s2, f):
        if v <= 16 + 1e-6 and fv > 1e-6:
            allowed[v] = allowed.get(v, 0) + 1
    # (1-11)-type |g| = sqrt(3)/a (4), (02-2) sqrt(8)/a (2), (3-11) sqrt(11)/a (4), (400) 4/a (2);
    # (200) and (2-22) are forbidden in diamond
    assert allowed == {3.0: 4, 8.0: 2, 11.0: 4, 16.0: 2}
    assert np.any(np.isclose(s2, 4.0)) and np.any(np.isclose(s2, 12.0))


def test_orient_cubic_zone_axes_and_in_plane_rotation():
    si = cr.prototype("Si")
    out, info = cr.orient(si, [1, 1, 1])
    assert is_orthogonal(out)
    assert info["cell_lengths"][2] == pytest.approx(5.431 * math.sqrt(3))  # fcc repeat along [111]
    assert_same_crystal(si, out, 4.2)
    out, info = cr.orient(si, [0, 0, 1], x_axis=[1, 0, 0])
    assert np.allclose(info["cell_lengths"], 5.431) and len(out) == 8
    # a quarter turn keeps the cell exact (x and y swap); a generic angle needs strain
    out, info = cr.orient(si, [0, 1, 1], in_plane_rotation_rad=math.pi / 2)
    assert info["orthogonalization_strain"] < 1e-9
    assert info["cell_lengths"][:2] == pytest.approx([5.431, 5.431 / math.sqrt(2)])
    with pytest.raises(ValueError, match=r"zone_axis \[0, 1, 1\].*strain"):
        cr.orient(si, [0, 1, 1], in_plane_rotation_rad=0.3, tolerance=1e-3)


def test_orient_hcp_mg():
    mg = cr.prototype("Mg")
    a, c = 3.209, 5.211
    out, info = cr.orient(mg, [0, 0, 0, 1])
    assert is_orthogonal(out)
    assert info["cell_lengths"][2] == pytest.approx(c)
    assert sorted(info["cell_lengths"][:2]) == pytest.approx([a, a * math.sqrt(3)])
    assert_same_crystal(mg, out, 5.0)
    out4, info4 = cr.orient(mg, [2, -1, -1, 0])
    _, info3 = cr.orient(mg, [1, 0, 0])
    assert info4["zone_axis"] == info3["zone_axis"] == (1, 0, 0)
    assert is_orthogonal(out4) and info4["orthogonalization_strain"] < 1e-9
    assert info4["cell_lengths"][2] == pytest.approx(a)  # [2-1-10] repeat = a
    assert sorted(info4["cell_lengths"][:2]) == pytest.approx([c, a * math.sqrt(3)])
    assert_same_crystal(mg, out4, 5.0)
    # [01-10] and [0001] are perpendicular: 10-10-type views are also exact
    out, info = cr.orient(mg, [0, 1, -1, 0])
    assert is_orthogonal(out) and info["cell_lengths"][2] == pytest.approx(a * math.sqrt(3))


def test_orient_layered_and_tetragonal():
    mos2 = cr.prototype("MoS2")
    out, info = cr.orient(mos2, [0, 0, 1])
    assert info["cell_lengths"][2] == pytest.approx(12.29) and len(out) == 12
    assert_same_crystal(mos2, out, 4.0)
    bto = cr.prototype("BaTiO3")
    out, info = cr.orient(bto, [1, 0, 0])
    assert is_orthogonal(out) and sorted(info["cell_lengths"]) == pytest.approx([3.994, 3.994, 4.034])
    assert_same_crystal(bto, out, 4.5)


@needs_pyxtal
def test_orient_centred_orthorhombic_random_crystal_is_exact():
    atoms = cr.random_crystal(22, rng=3, max_atoms=24)  # F222
    for zone in ([1, 0, 0], [0, 1, 0], [0, 0, 1]):
        out, info = cr.orient(atoms, zone)
        assert is_orthogonal(out) and info["orthogonalization_strain"] < 1e-9
        i = int(np.argmax(np.abs(zone)))
        # the F-centred lattice repeats along each axis with the conventional cell length
        assert info["cell_lengths"][2] == pytest.approx(atoms.cell.lengths()[i])
        assert_same_crystal(atoms, out, 3.5)


@needs_pyxtal
def test_orient_matches_abtem_orthogonalize_cell():
    abtem = pytest.importorskip("abtem")
    from distill4d.simulate.crystals import _primitive

    for atoms, zone in ((cr.prototype("Si"), [0, 1, 1]), (cr.prototype("Mg"), [1, 0, 0]),
                        (cr.random_crystal(43, rng=1, max_atoms=24), [0, 1, 0])):  # fmt: skip
        out, info = cr.orient(atoms, zone)
        prim = _primitive(atoms)
        R = info["rotation"]
        rotated = prim.copy()
        rotated.positions[:] = prim.positions @ R.T
        rotated.set_cell(np.asarray(prim.cell) @ R.T, scale_atoms=False)
        ref = abtem.orthogonalize_cell(rotated, max_repetitions=5)
        assert np.allclose(np.diag(np.asarray(ref.cell)), info["cell_lengths"])
        assert len(ref) == len(out)


def test_orient_bad_input():
    si = cr.prototype("Si")
    with pytest.raises(ValueError, match="zone_axis must be a non-zero"):
        cr.orient(si, [0, 0, 0])
    with pytest.raises(ValueError, match="zone_axis must be integers"):
        cr.orient(si, [0, 0.5, 1])
    with pytest.raises(ValueError, match="hexagonal"):
        cr.orient(si, [1, 0, -1, 0])
    with pytest.raises(ValueError, match="u \\+ v \\+ t = 0"):
        cr.orient(cr.prototype("Mg"), [1, 1, 1, 0])
    with pytest.raises(ValueError, match="perpendicular"):
        cr.orient(si, [0, 0, 1], x_axis=[1, 0, 1])
    with pytest.raises(ValueError, match=r"zone_axis \[0, 1, 1\]"):
        cr.orient(cr.prototype("MoS2"), [0, 1, 1])  # no orthogonal cell within 5 repetitions


@needs_spglib
def test_zone_axes():
    assert cr.zone_axes(cr.prototype("Si"), 1) == [(1, 0, 0), (1, 1, 0), (1, 1, 1)]
    assert cr.zone_axes(cr.prototype("Si"), 2)[3:] == [(2, 1, 0), (2, 1, 1), (2, 2, 1)]
    raw = cr.zone_axes(cr.prototype("Si"), 1, symmetry_reduce=False)
    assert len(raw) == 13  # 26 non-zero directions in {-1, 0, 1}^3, +-pairs once
    mg_axes = cr.zone_axes(cr.prototype("Mg"), 1)
    assert (0, 0, 1) in mg_axes and (1, 0, 0) in mg_axes and (0, 1, 0) not in mg_axes


# --- strain and tiling --------------------------------------------------------------------


def test_deformation_gradient_convention():
    F = cr.deformation_gradient(exx=0.01, eyy=-0.02, exy=0.005)
    eps = 0.5 * (F + F.T) - np.eye(3)
    assert np.allclose(eps[:2, :2], [[0.01, 0.005], [0.005, -0.02]], atol=1e-15)
    assert np.allclose(F[2], [0, 0, 1]) and np.allclose(F[:, 2], [0, 0, 1])
    theta = 0.03
    Fr = cr.deformation_gradient(exx=0.01, exy=0.005, theta_rad=theta)
    U = np.array([[1.01, 0.005], [0.005, 1.0]])
    assert np.allclose(Fr[:2, :2].T @ Fr[:2, :2], U @ U)  # F = R U, U = I + eps
    assert math.atan2(Fr[1, 0] - Fr[0, 1], Fr[0, 0] + Fr[1, 1]) == pytest.approx(theta)
    with pytest.raises(ValueError, match="positive definite"):
        cr.deformation_gradient(exx=-1.5)
    with pytest.raises(ValueError, match="exy must be a finite"):
        cr.deformation_gradient(exy=float("nan"))


def test_strain_stretches_cell_and_reciprocal_lattice():
    si, _ = cr.orient(cr.prototype("Si"), [0, 1, 1])
    F = cr.deformation_gradient(exx=0.01)
    out = cr.strain(si, F)
    assert is_orthogonal(out)
    L0, L1 = np.diag(np.asarray(si.cell)), np.diag(np.asarray(out.cell))
    assert L1[0] == pytest.approx(1.01 * L0[0], rel=1e-14)
    assert L1[1:] == pytest.approx(L0[1:], rel=1e-14)
    assert np.allclose(out.positions, si.positions @ F.T)
    assert np.allclose(out.get_scaled_positions(), si.get_scaled_positions())
    # reciprocal vectors (columns g) transform with F^-T, also for a sheared cell
    Fs = cr.deformation_gradient(exx=0.01, eyy=-0.005, exy=0.02, theta_rad=0.01)
    sheared = cr.strain(si, Fs, allow_nonorthogonal=True)
    for Fi, strained in ((F, out), (Fs, sheared)):
        B0 = np.asarray(si.cell.reciprocal()).T
        B1 = np.asarray(strained.cell.reciprocal()).T
        assert np.allclose(B1, np.linalg.inv(Fi).T @ B0, atol=1e-14)
    assert sheared.get_volume() == pytest.approx(si.get_volume() * np.linalg.det(Fs))
    assert_same_crystal(si, cr.strain(si, np.eye(3)), 4.2)


def test_strain_bad_input():
    si, _ = cr.orient(cr.prototype("Si"), [0, 0, 1])
    with pytest.raises(ValueError, match="allow_nonorthogonal"):
        cr.strain(si, cr.deformation_gradient(exy=0.01))
    with pytest.raises(ValueError, match="allow_nonorthogonal"):
        cr.strain(si, cr.deformation_gradient(theta_rad=0.01))
    Fz = np.eye(3)
    Fz[0, 2] = 0.01
    with pytest.raises(ValueError, match="couple z"):
        cr.strain(si, Fz, allow_nonorthogonal=True)
    with pytest.raises(ValueError, match="3x3"):
        cr.strain(si, np.eye(2))
    with pytest.raises(ValueError, match="determinant"):
        cr.strain(si, np.diag([-1.0, 1.0, 1.0]))
    out = cr.strain(si, np.diag([1.0, 1.0, 0.98]))  # z stretch (e.g. Poisson) is allowed
    assert out.cell[2, 2] == pytest.approx(0.98 * si.cell[2, 2])


def test_repeat_to_extent():
    si, info = cr.orient(cr.prototype("Si"), [0, 1, 1])
    lx, ly, lz = info["cell_lengths"]
    out, reps = cr.repeat_to_extent(si, (20.0, 2 * ly), thickness_A=50.0)
    assert reps == (math.ceil(20.0 / lx), 2, math.ceil(50.0 / lz))
    assert len(out) == len(si) * np.prod(reps)
    L = np.diag(np.asarray(out.cell))
    assert L[0] >= 20.0 and L[1] == pytest.approx(2 * ly) and L[2] >= 50.0 and is_orthogonal(out)
    _, reps = cr.repeat_to_extent(si, (1.0, 1.0))
    assert reps == (1, 1, 1)
    with pytest.raises(ValueError, match="orthogonal"):
        cr.repeat_to_extent(cr.prototype("Mg"), (10.0, 10.0))
    with pytest.raises(ValueError, match="extent_A"):
        cr.repeat_to_extent(si, (10.0, -1.0))


# --- random crystals ----------------------------------------------------------------------


def test_crystal_system():
    expect = {1: "triclinic", 2: "triclinic", 3: "monoclinic", 15: "monoclinic",
              16: "orthorhombic", 74: "orthorhombic", 75: "tetragonal", 142: "tetragonal",
              143: "trigonal", 167: "trigonal", 168: "hexagonal", 194: "hexagonal",
              195: "cubic", 230: "cubic"}  # fmt: skip
    for sg, name in expect.items():
        assert cr.crystal_system(sg) == name
    for bad in (0, 231, -5):
        with pytest.raises(ValueError, match="space_group"):
            cr.crystal_system(bad)


@needs_pyxtal
def test_random_crystal_is_deterministic():
    a = cr.random_crystal(14, rng=np.random.default_rng(7))
    b = cr.random_crystal(14, rng=np.random.default_rng(7))
    assert np.array_equal(a.numbers, b.numbers)
    assert np.array_equal(a.positions, b.positions)
    assert np.array_equal(np.asarray(a.cell), np.asarray(b.cell))
    c = cr.random_crystal(14, rng=np.random.default_rng(8))
    assert len(c) != len(a) or not np.allclose(np.asarray(c.cell), np.asarray(a.cell))


@needs_pyxtal
@pytest.mark.parametrize("sg", [225, 194, 62, 14])
def test_random_crystal_has_requested_symmetry(sg):
    atoms = cr.random_crystal(sg, rng=np.random.default_rng(100 + sg))
    assert 1 <= len(atoms) <= 40 and all(atoms.pbc)
    assert 1 <= len(set(atoms.numbers)) <= 3
    assert set(atoms.get_chemical_symbols()) <= set(cr.COMMON_ELEMENTS)
    assert cr.spacegroup_number(atoms) == sg
    assert nn_distance(atoms, 6.0) > 1.0
    assert 5.0 < atoms.get_volume() / len(atoms) < 80.0  # Å^3 per atom


@needs_pyxtal
def test_random_crystal_given_elements_and_bad_input():
    atoms = cr.random_crystal(221, elements=["Sr", "Ti", "O"], rng=3, max_atoms=20)
    assert set(atoms.get_chemical_symbols()) == {"Sr", "Ti", "O"}
    assert cr.spacegroup_number(atoms) == 221
    for bad in (0, 231):
        with pytest.raises(ValueError, match="space_group"):
            cr.random_crystal(bad, rng=0)
    with pytest.raises(ValueError, match="max_atoms"):
        cr.random_crystal(230, elements=["Si", "O"], rng=0, max_atoms=20)
    with pytest.raises(ValueError, match="elements"):
        cr.random_crystal(225, elements=["Qq"], rng=0)
    with pytest.raises(TypeError, match="rng"):
        cr.random_crystal(225, rng="seed")


@needs_pyxtal
@pytest.mark.parametrize("sg", [2, 14, 62, 139, 166, 194, 225])
def test_cell_variant_keeps_the_space_group_and_moves_only_the_free_parameters(sg):
    atoms = cr.random_crystal(sg, rng=np.random.default_rng(200 + sg), max_atoms=24)
    par0 = atoms.cell.cellpar()
    v = cr.cell_variant(atoms, sg, rng=5, length_spread=0.25, angle_spread_deg=10.0)
    assert v is not None and cr.spacegroup_number(v) == sg
    assert np.allclose(v.get_scaled_positions(), atoms.get_scaled_positions(), atol=1e-9)
    par = v.cell.cellpar()
    ratio = par[:3] / par0[:3]
    assert np.all((ratio > 1 / 1.25 - 1e-9) & (ratio < 1.25 + 1e-9))
    assert np.all(np.abs(par[3:] - par0[3:]) <= 10.0 + 1e-9)
    system = cr.crystal_system(sg)
    if system == "cubic":  # one free length: the shape is kept, only the size moves
        assert np.allclose(ratio, ratio[0]) and np.allclose(par[3:], 90.0)
    elif system in ("tetragonal", "hexagonal", "trigonal"):
        assert math.isclose(par[0], par[1], rel_tol=1e-9) and not math.isclose(ratio[0], ratio[2], rel_tol=1e-6)
    else:
        assert len({round(r, 6) for r in ratio}) == 3
    if system not in ("triclinic", "monoclinic"):
        assert np.allclose(par[3:], par0[3:], atol=1e-6)
    # species replaced one for one: distinct species stay distinct, counts kept
    old, new = atoms.get_chemical_symbols(), v.get_chemical_symbols()
    assert sorted(np.unique(old, return_counts=True)[1]) == sorted(np.unique(new, return_counts=True)[1])
    assert len({(a, b) for a, b in zip(old, new)}) == len(set(old))
    again = cr.cell_variant(atoms, sg, rng=5, length_spread=0.25, angle_spread_deg=10.0)
    assert np.array_equal(np.asarray(again.cell), np.asarray(v.cell)) and again.get_chemical_symbols() == new
    with pytest.raises(ValueError, match="length_spread"):
        cr.cell_variant(atoms, sg, rng=0, length_spread=-0.1)


def test_import_is_light():
    code = (
        "import sys, distill4d, distill4d.simulate.crystals; "
        "print(sorted(m for m in ('ase', 'abtem', 'pyxtal', 'spglib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
