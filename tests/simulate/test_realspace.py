"""Multislice 4D-STEM scans (abTEM) with projected-potential labels: structures, flux,
geometry, physics of the labels, reproducibility, noise and input checks."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

abtem = pytest.importorskip("abtem")
pytest.importorskip("ase")

from distill4d.simulate.realspace import (
    MOS2_A_A,
    apply_dose,
    cubic_slab,
    interaction_parameter,
    mos2_monolayer,
    perovskite_slab,
    simulate_realspace_scan,
)

STEP = 0.35
KW = {"energy_eV": 80e3, "semiangle_mrad": 25.0, "scan_step_A": STEP, "detector_shape": 32, "num_workers": 2}
REGION = ((1.0, 1.0), (2.0, 2.0))  # 3 x 3 positions of the same scan grid


def _periodic_distances(atoms, i_sel, j_sel):
    """In-plane-periodic 3D distances between atoms i_sel and j_sel (Å)."""
    lengths = atoms.cell.lengths()
    d = atoms.positions[i_sel][:, None, :] - atoms.positions[j_sel][None, :, :]
    d[..., :2] -= np.round(d[..., :2] / lengths[:2]) * lengths[:2]
    return np.linalg.norm(d, axis=-1)


@pytest.fixture(scope="module")
def mos2():
    return mos2_monolayer(repeats=(2, 1))


@pytest.fixture(scope="module")
def scan(mos2):
    return simulate_realspace_scan(mos2, **KW)


# ---------------------------------------------------------------------------- structures
def test_interaction_parameter_matches_abtem():
    from abtem.core.energy import energy2sigma

    for e in (80e3, 200e3, 300e3):
        assert interaction_parameter(e) == pytest.approx(energy2sigma(e), rel=1e-5)
    assert interaction_parameter(300e3) == pytest.approx(6.526e-4, rel=1e-3)


def test_mos2_cell_geometry_and_stoichiometry():
    atoms = mos2_monolayer(repeats=(3, 2))
    sym = np.array(atoms.get_chemical_symbols())
    assert (sym == "Mo").sum() == 2 * 3 * 2 and (sym == "S").sum() == 4 * 3 * 2
    cell = np.asarray(atoms.cell)
    np.testing.assert_allclose(cell, np.diag(np.diag(cell)), atol=1e-9)  # orthogonal
    np.testing.assert_allclose(np.diag(cell)[:2], [3 * MOS2_A_A, 2 * math.sqrt(3) * MOS2_A_A], rtol=1e-9)
    d = _periodic_distances(atoms, sym == "Mo", sym == "S")
    assert d.min() == pytest.approx(2.41, abs=0.05)
    assert np.all(np.sort(d, axis=1)[:, :6] < 2.45)  # trigonal prismatic: 6 S per Mo
    z = atoms.positions[:, 2]
    assert z.min() >= 1.9 and cell[2, 2] - z.max() >= 1.9  # vacuum on both sides
    assert np.all((atoms.positions[:, :2] >= 0) & (atoms.positions[:, :2] < np.diag(cell)[:2]))


def test_mos2_vacancies_fraction_record_and_seed():
    pristine = mos2_monolayer(repeats=(3, 2))
    a = mos2_monolayer(repeats=(3, 2), vacancy_fraction=0.25, seed=7)
    b = mos2_monolayer(repeats=(3, 2), vacancy_fraction=0.25, seed=7)
    c = mos2_monolayer(repeats=(3, 2), vacancy_fraction=0.25, seed=8)
    sym = np.array(a.get_chemical_symbols())
    assert (sym == "S").sum() == 24 - 6 and (sym == "Mo").sum() == 12
    np.testing.assert_array_equal(a.positions, b.positions)
    assert not np.array_equal(a.info["removed_indices"], c.info["removed_indices"])
    removed = a.info["removed_indices"]
    assert len(removed) == 6 and set(np.array(pristine.get_chemical_symbols())[removed]) == {"S"}
    np.testing.assert_allclose(a.info["removed_positions"], pristine.positions[removed])
    kept = np.setdiff1d(np.arange(len(pristine)), removed)
    np.testing.assert_allclose(a.positions, pristine.positions[kept])
    mo = mos2_monolayer(repeats=(3, 2), vacancy_fraction=0.5, vacancy_element="Mo")
    assert mo.get_chemical_symbols().count("Mo") == 6


def test_perovskite_slab_columns_and_thickness():
    atoms = perovskite_slab(thickness_A=20.0, repeats=(2, 3))
    sym = atoms.get_chemical_symbols()
    n = 2 * 3 * 5  # 20 Å / 3.905 Å -> 5 cells
    assert atoms.info["thickness_A"] == pytest.approx(5 * 3.905)
    assert (sym.count("Sr"), sym.count("Ti"), sym.count("O")) == (n, n, 3 * n)
    np.testing.assert_allclose(atoms.cell.lengths()[:2], [2 * 3.905, 3 * 3.905])
    z = atoms.positions[:, 2]
    assert z.min() > 0 and z.max() < atoms.cell[2, 2]
    ti = atoms.positions[np.array(sym) == "Ti"]
    np.testing.assert_allclose(np.mod(ti[:, :2], 3.905), 3.905 / 2, atol=1e-9)  # B+O columns at cell centres
    with pytest.raises(ValueError, match="zone"):
        perovskite_slab(thickness_A=10.0, zone="110")
    with pytest.raises(ValueError, match="formula"):
        perovskite_slab(thickness_A=10.0, formula="NaCl")


def test_cubic_slab_rocksalt_columns_and_thickness():
    atoms = cubic_slab("MgO", "rocksalt", a_A=4.212, thickness_A=40.0, repeats=(2, 3), vacuum_A=3.0)
    sym = np.array(atoms.get_chemical_symbols())
    nz = round(40.0 / 4.212)  # 9 cells
    n = 2 * 3 * nz * 4
    assert atoms.info["n_cells_z"] == nz and atoms.info["thickness_A"] == pytest.approx(nz * 4.212)
    assert (int((sym == "Mg").sum()), int((sym == "O").sum())) == (n, n)
    np.testing.assert_allclose(atoms.cell.lengths(), [2 * 4.212, 3 * 4.212, nz * 4.212 + 6.0])
    z = atoms.positions[:, 2]
    assert z.min() == pytest.approx(3.0) and z.max() < atoms.cell[2, 2] - 3.0
    # [001] rocksalt: Mg and O alternate along every column, a/2 apart in x and y
    xy = np.round(np.mod(atoms.positions[:, :2], 4.212) / (4.212 / 2)).astype(int) % 2
    assert len({tuple(v) for v in xy}) == 4
    corner = np.all(np.abs(atoms.positions[:, :2]) < 1e-6, axis=1)
    assert corner.sum() == 2 * nz and set(sym[corner]) == {"Mg", "O"}
    with pytest.raises(ValueError, match="crystalstructure"):
        cubic_slab("MgO", "hcp", a_A=4.2, thickness_A=10.0)
    with pytest.raises(ValueError, match="cannot build"):
        cubic_slab("MgO", "fcc", a_A=4.2, thickness_A=10.0)


# ---------------------------------------------------------------------------- the scan
def test_scan_shape_and_calibration(scan, mos2):
    dc, lab = scan
    lx, ly = mos2.cell.lengths()[:2]
    nx, ny = round(lx / STEP), round(ly / STEP)
    assert dc.shape == (nx, ny, 32, 32)
    md = lab["metadata"]
    np.testing.assert_allclose(md["scan_step_xy_A"], [lx / nx, ly / ny])
    assert all(abs(s / STEP - 1) <= STEP / (2 * min(lx, ly)) for s in md["scan_step_xy_A"])
    cal = dc.calibration
    assert cal.origin_px == (16.0, 16.0) and cal.energy_eV == 80e3 and cal.semiangle_mrad == 25.0
    assert cal.mrad_per_px == pytest.approx(3 * 25.0 / 16, rel=1e-9)  # default q_max = 3 x semiangle
    assert cal.scan_step_A == pytest.approx(math.sqrt(lx / nx * ly / ny))
    pos = lab["scan_positions_A"]
    assert pos.shape == (nx, ny, 2)
    np.testing.assert_allclose(pos[1, 0] - pos[0, 0], [lx / nx, 0.0])
    np.testing.assert_allclose(pos[0, 1] - pos[0, 0], [0.0, ly / ny])
    for key in ("projected_potential", "phase", "projected_potential_point", "projected_potential_blurred"):
        assert lab[key].shape == (nx, ny) and np.all(np.isfinite(lab[key]))
    assert "atoms_removed" not in lab
    # the simulation cell was enlarged to hold the probe and a detector pixel
    assert min(md["sim_extent_A"]) >= max(10.0, 1 / cal.q_pixel_inv_A) - 1e-9


def test_flux_is_conserved(scan):
    dc, lab = scan
    totals = dc.data.sum(axis=(2, 3), dtype=np.float64)
    assert dc.data.dtype == np.float32 and dc.data.min() >= 0
    assert np.all(totals > 0.95) and np.all(totals < 1.0 + 1e-4)
    assert totals.mean() == pytest.approx(1.0, abs=0.01)
    assert lab["metadata"]["detected_fraction_mean"] == pytest.approx(totals.mean(), rel=1e-5)


def test_bright_field_disk_radius_and_centre(scan):
    dc, _ = scan
    mean = dc.data.mean(axis=(0, 1), dtype=np.float64)
    c = dc.calibration.origin_px
    radius = math.sqrt((mean > 0.5 * mean[int(c[0]), int(c[1])]).sum() / math.pi)
    expected = dc.calibration.semiangle_mrad / dc.calibration.mrad_per_px
    assert radius == pytest.approx(expected, abs=1.0)
    # over a whole period the deflections average out: the mean pattern is centred on the origin
    qx, qy = np.indices(mean.shape)
    assert (mean * qx).sum() / mean.sum() == pytest.approx(c[0], abs=0.05)
    assert (mean * qy).sum() / mean.sum() == pytest.approx(c[1], abs=0.05)


def test_label_maxima_at_mo_columns(scan, mos2):
    _, lab = scan
    v = lab["projected_potential"]
    steps = lab["metadata"]["scan_step_xy_A"]
    neigh = [np.roll(np.roll(v, dx, 0), dy, 1) for dx in (-1, 0, 1) for dy in (-1, 0, 1) if dx or dy]
    local_max = np.all([v > n for n in neigh], axis=0) & (v > np.percentile(v, 75))
    mx, my = np.nonzero(local_max)
    for p in mos2.positions[np.array(mos2.get_chemical_symbols()) == "Mo"]:
        i, j = round(p[0] / steps[0]), round(p[1] / steps[1])
        dx = np.abs((mx - i + v.shape[0] // 2) % v.shape[0] - v.shape[0] // 2)
        dy = np.abs((my - j + v.shape[1] // 2) % v.shape[1] - v.shape[1] // 2)
        assert np.min(np.maximum(dx, dy)) <= 1, f"no label maximum within one step of Mo at {p[:2]}"
    # the potential is positive everywhere and its mean is kept by every label
    assert v.min() > 0
    assert lab["projected_potential_blurred"].mean() == pytest.approx(v.mean(), rel=1e-6)
    sigma = lab["metadata"]["sigma_rad_per_V_A"]
    assert sigma == pytest.approx(interaction_parameter(80e3))
    np.testing.assert_allclose(lab["phase"], sigma * v)


def test_adf_image_correlates_with_label(scan):
    dc, lab = scan
    qx, qy = np.indices(dc.pattern_shape)
    c = dc.calibration.origin_px
    theta = np.hypot(qx - c[0], qy - c[1]) * dc.calibration.mrad_per_px
    adf = dc.data[:, :, theta > 1.6 * dc.calibration.semiangle_mrad].sum(axis=-1)
    for key in ("projected_potential", "projected_potential_blurred"):
        r = np.corrcoef(adf.ravel(), lab[key].ravel())[0, 1]
        assert r > 0.5, (key, r)


def test_centre_of_mass_follows_the_potential_gradient(scan):
    """The beam is deflected toward the columns: CoM (qx, qy) ∥ ∇V (x, y), axis by axis."""
    dc, lab = scan
    data = dc.data.astype(np.float64)
    qx, qy = np.indices(dc.pattern_shape)
    c = dc.calibration.origin_px
    tot = data.sum(axis=(2, 3))
    com = [(data * (q - o)).sum(axis=(2, 3)) / tot for q, o in ((qx, c[0]), (qy, c[1]))]
    b = lab["projected_potential_blurred"]
    grad = [np.roll(b, -1, a) - np.roll(b, 1, a) for a in (0, 1)]
    for a in (0, 1):
        assert np.corrcoef(com[a].ravel(), grad[a].ravel())[0, 1] > 0.9
    assert abs(np.corrcoef(com[0].ravel(), grad[1].ravel())[0, 1]) < 0.3


def test_region_is_a_block_of_the_full_scan(scan, mos2):
    dc, lab = scan
    sub, sub_lab = simulate_realspace_scan(mos2, scan_region=REGION, **KW)
    i0, j0 = sub_lab["metadata"]["scan_start_index"]
    assert sub.shape[:2] == (3, 3) and (i0, j0) == (3, 3)
    block = (slice(i0, i0 + 3), slice(j0, j0 + 3))
    np.testing.assert_allclose(sub.data, dc.data[block], atol=2e-6)
    np.testing.assert_allclose(sub_lab["projected_potential"], lab["projected_potential"][block], rtol=1e-12)
    np.testing.assert_allclose(sub_lab["scan_positions_A"], lab["scan_positions_A"][block], rtol=1e-12)


# ---------------------------------------------------------------------------- randomness
def test_same_seed_is_bit_identical_and_dose_gives_counts():
    atoms = mos2_monolayer(repeats=(2, 1), vacancy_fraction=0.25, seed=3)
    kw = dict(KW, scan_region=REGION, frozen_phonons=2, seed=5)
    a, lab_a = simulate_realspace_scan(atoms, dose_e=1e4, **kw)
    b, _ = simulate_realspace_scan(atoms, dose_e=1e4, **kw)
    clean, _ = simulate_realspace_scan(atoms, **kw)
    other, _ = simulate_realspace_scan(atoms, **dict(kw, seed=6))
    assert a.data.dtype == np.uint32
    np.testing.assert_array_equal(a.data, b.data)
    assert not np.array_equal(clean.data, other.data)  # other frozen-phonon displacements
    counts = a.data.sum(axis=(2, 3), dtype=np.float64)
    expected = 1e4 * clean.data.sum(axis=(2, 3), dtype=np.float64)
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected))
    assert counts.mean() == pytest.approx(1e4, rel=0.03)
    np.testing.assert_array_equal(lab_a["atoms_removed"]["indices"], atoms.info["removed_indices"])
    assert lab_a["metadata"]["units"].startswith("electrons")
    again = apply_dose(clean, 1e4, seed=5)
    np.testing.assert_array_equal(again.data, a.data)


# ---------------------------------------------------------------------------- inputs
@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"scan_step_A": -0.2}, "scan_step_A"),
        ({"detector_shape": 0}, "detector_shape"),
        ({"detector_shape": (32, 0)}, "detector_shape"),
        ({"energy_eV": float("nan")}, "energy_eV"),
        ({"semiangle_mrad": 0.0}, "semiangle_mrad"),
        ({"frozen_phonons": -1}, "frozen_phonons"),
        ({"dose_e": -5.0}, "dose_e"),
        ({"device": "tpu"}, "device"),
        ({"scan_region": ((2.0, 2.0), (1.0, 3.0))}, "scan_region"),
        ({"q_max_mrad": 20.0}, "q_max_mrad"),  # the 25 mrad disk does not fit
        ({"sampling_A": 0.5}, "sampling_A"),
        ({"phonon_sigma_A": {"Mo": 0.05}}, "phonon_sigma_A"),
    ],
)
def test_bad_input_names_the_argument(mos2, kwargs, name):
    with pytest.raises(ValueError, match=name):
        simulate_realspace_scan(mos2, **dict(KW, **kwargs))


def test_bad_structures():
    import ase

    skew = ase.Atoms("Mo", positions=[(0, 0, 1)], cell=[[3, 0, 0], [1.5, 2.6, 0], [0, 0, 3]])
    with pytest.raises(ValueError, match="orthogonal"):
        simulate_realspace_scan(skew, **KW)
    outside = ase.Atoms("Mo", positions=[(0, 0, 5)], cell=[5, 5, 4])
    with pytest.raises(ValueError, match="inside the cell"):
        simulate_realspace_scan(outside, **KW)
    with pytest.raises(ValueError, match="vacancy_fraction"):
        mos2_monolayer(vacancy_fraction=1.5)
    with pytest.raises(ValueError, match="repeats"):
        mos2_monolayer(repeats=(0, 1))


def test_import_is_lazy():
    code = (
        "import sys, distill4d.simulate.realspace; "
        "print(sorted(m for m in ('abtem', 'ase') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
