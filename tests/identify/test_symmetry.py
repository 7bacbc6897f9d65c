import numpy as np
import pytest
from ase.geometry import cellpar_to_cell

from distill4d.calibration import electron_wavelength_A
from distill4d.errors import Distill4dError
from distill4d.identify.symmetry import (LATTICE_SYSTEMS, cell_distance, consensus_cell, consensus_tolerances,
                                         fit_heights, lattice_system, reduce_basis, symmetry_order,
                                         system_from_tolerances, system_tolerances)

CELLS = {
    "cubic": (4, 4, 4, 90, 90, 90),
    "hexagonal": (3, 3, 5, 90, 90, 120),
    "tetragonal": (3, 3, 5, 90, 90, 90),
    "rhombohedral": (4, 4, 4, 70, 70, 70),
    "orthorhombic": (3, 4, 5, 90, 90, 90),
    "monoclinic": (3, 4, 5, 90, 103, 90),
    "triclinic": (3, 4, 5, 80, 97, 113),
}
ORDERS = {"cubic": 48, "hexagonal": 24, "tetragonal": 16, "rhombohedral": 12, "orthorhombic": 8, "monoclinic": 4,
          "triclinic": 2}


def _unimodular(rng):
    while True:
        U = rng.integers(-2, 3, (3, 3))
        if abs(round(np.linalg.det(U))) == 1:
            return U


@pytest.mark.parametrize("system", list(CELLS))
def test_exact_cells_and_any_basis_direct_or_reciprocal(system):
    # the point-group order of an exact cell, whatever basis of its lattice, rotated or reciprocal
    rng = np.random.default_rng(0)
    cell = cellpar_to_cell(CELLS[system])
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    for basis in (cell, _unimodular(rng) @ cell @ q, np.linalg.inv(cell).T, _unimodular(rng) @ np.linalg.inv(cell).T):
        assert lattice_system(basis, 0.01)[0] == system
        assert symmetry_order(basis, 1e-6) == ORDERS[system]


def test_centred_cubic_primitive_cells_are_cubic_and_a_strained_cube_is_not():
    fcc = cellpar_to_cell((3, 3, 3, 60, 60, 60))
    bcc = cellpar_to_cell((3, 3, 3, 109.4712206, 109.4712206, 109.4712206))
    assert lattice_system(fcc)[0] == lattice_system(bcc)[0] == "cubic"
    # 3 % tetragonal strain: a metric change of about 6 % in the squared lengths
    strained = np.diag([4.0, 4.0, 4.12])
    assert lattice_system(strained, 0.01)[0] == "tetragonal"
    assert lattice_system(strained, 0.1)[0] == "cubic"


def test_reduce_basis_keeps_the_lattice_and_finds_the_shortest_vectors():
    rng = np.random.default_rng(1)
    cell = cellpar_to_cell((3, 4, 5, 80, 97, 113))
    b = reduce_basis(_unimodular(rng) @ _unimodular(rng) @ cell)
    assert abs(abs(np.linalg.det(b)) - abs(np.linalg.det(cell))) < 1e-9
    assert np.allclose(np.round(b @ np.linalg.inv(cell)), b @ np.linalg.inv(cell), atol=1e-9)
    assert np.linalg.norm(b[0]) <= 3 + 1e-9
    with pytest.raises(Distill4dError, match="coplanar"):
        reduce_basis([[1, 0, 0], [0, 1, 0], [1, 1, 0]])


def test_fit_heights_recovers_the_tilt_and_layer_height_of_a_simulated_pattern():
    # spots of a 3D lattice (1/Å) drawn from the model: weight |F|² exp(-s²/2σ²), |F|² log-normal,
    # kept down to 1e-3 of the strongest; the fit, given g1, g2, t, finds p and h within 4e-3 (1/Å; its
    # spread over seeds, set by the spread of log|F|², is about 1e-3)
    rng = np.random.default_rng(3)
    g1, g2, t = np.array([0.21, 0.0]), np.array([0.05, 0.24]), np.array([0.08, 0.11])
    p_true, h_true = np.array([0.012, -0.02]), 0.09
    k = 1.0 / electron_wavelength_A(200e3)
    n = np.stack(np.meshgrid(*(np.arange(-12, 13),) * 2, np.arange(-6, 7), indexing="ij"), -1).reshape(-1, 3)
    q = n[:, :1] * g1 + n[:, 1:2] * g2 + n[:, 2:] * t
    z = q @ p_true + n[:, 2] * h_true
    s = -(z + (np.sum(q * q, 1) + z * z) / (2 * k))
    w = np.exp(rng.normal(0, 1.0, len(q))) * np.exp(-s * s / (2 * 0.03**2))
    r = np.hypot(*q.T)
    inside = (r <= 1.5) & (r > 0.05)
    w = np.where(inside, w, 0) / w[inside].max()
    keep = w >= 1e-3
    fit = fit_heights(q[keep, 0], q[keep, 1], w[keep], np.stack([g1, g2]), t)
    p, h = (fit["p"], fit["h"])
    assert abs(h - h_true) < 4e-3 and np.linalg.norm(p - p_true) < 4e-3
    assert fit["matched"] == 1.0


def test_refine_projected_basis_averages_the_position_noise_of_t():
    # spots n1 g1 + n2 g2 + k t with 0.003 1/Å noise; t taken from one noisy spot is off by about
    # 0.004 1/Å, the least-squares t over all spots by far less
    from distill4d.identify.symmetry import refine_projected_basis

    rng = np.random.default_rng(5)
    g1, g2, t = np.array([0.21, 0.0]), np.array([0.05, 0.24]), np.array([0.08, 0.11])
    n = np.stack(np.meshgrid(np.arange(-5, 6), np.arange(-5, 6), np.arange(-2, 3), indexing="ij"), -1).reshape(-1, 3)
    q = n[:, :1] * g1 + n[:, 1:2] * g2 + n[:, 2:] * t + rng.normal(0, 0.003, (len(n), 2))
    t_spot = q[np.flatnonzero((n == [0, 0, 1]).all(1))[0]]
    B, t_fit = refine_projected_basis(q[:, 0], q[:, 1], np.stack([g1, g2]) + 0.002, t_spot)
    assert np.linalg.norm(t_fit - t) < 5e-4 and np.abs(B - np.stack([g1, g2])).max() < 5e-4


def test_spots_with_nan_or_mismatched_lengths_are_a_one_line_error():
    from distill4d.identify.symmetry import refine_projected_basis

    B, t = np.array([[0.2, 0.0], [0.0, 0.25]]), np.array([0.05, 0.07])
    with pytest.raises(Distill4dError, match="finite"):
        fit_heights([0.2, np.nan], [0.0, 0.25], [1.0, 0.5], B, t)
    with pytest.raises(Distill4dError, match="intensity"):
        fit_heights([0.2, 0.0], [0.0, 0.25], [1.0], B, t)
    with pytest.raises(Distill4dError, match="one length"):
        refine_projected_basis([0.2, 0.0], [0.0], B, t)


def _noisy_cells(cellpar, n, noise, rng):
    """``n`` bases of the lattice of ``cellpar``: each another basis, rotated, scaled by up to 2 % and
    with a relative Gaussian error of ``noise`` on every component (as one pattern's reconstruction)."""
    cell = cellpar_to_cell(cellpar)
    out = []
    for _ in range(n):
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        b = _unimodular(rng) @ cell @ q * (1 + rng.uniform(-0.02, 0.02))
        out.append(b @ (np.eye(3) + rng.normal(0, noise, (3, 3))))
    return out


def test_cell_distance_is_zero_for_one_lattice_in_any_basis_and_not_for_another():
    rng = np.random.default_rng(3)
    a, b = _noisy_cells(CELLS["monoclinic"], 2, 0.0, rng)
    assert cell_distance(a, b) < 1e-9
    assert cell_distance(a, cellpar_to_cell(CELLS["orthorhombic"])) > 0.05


def test_consensus_of_noisy_tetragonal_cells_is_tetragonal_where_single_cells_are_not():
    # 10 cells with 1 % relative noise and two wrong cells: single cells are tetragonal within 0.04
    # about half the time (0.49 over 50 such sets); the consensus (noise averaged over the agreeing
    # cells; its tetragonal tolerance at most 0.033 over those sets) is, and keeps the wrong ones out
    rng = np.random.default_rng(0)
    tol = 0.04
    right = []
    for _ in range(5):
        cells = _noisy_cells(CELLS["tetragonal"], 10, 0.01, rng)
        wrong = [cellpar_to_cell((3, 4.2, 5.5, 90, 110, 90)), rng.normal(size=(3, 3))]
        single = [system_from_tolerances(system_tolerances(c), tol) for c in cells]
        right.append(single.count("tetragonal") / 10)
        need = consensus_tolerances(cells + wrong, agree=0.1)
        assert system_from_tolerances(need, tol) == "tetragonal"
        assert need[LATTICE_SYSTEMS.index("tetragonal")] < np.median([system_tolerances(c)[3] for c in cells])
        assert set(consensus_cell(cells + wrong, agree=0.1)["members"]) <= set(range(10))
    assert max(right) < 1 and np.mean(right) < 0.7


def test_consensus_keeps_a_true_lower_symmetry():
    # an orthorhombic cell 4 % from tetragonal (b/a = 1.04): its noisy cells' consensus stays orthorhombic
    rng = np.random.default_rng(1)
    for _ in range(5):
        need = consensus_tolerances(_noisy_cells((3, 3.12, 5, 90, 90, 90), 10, 0.005, rng), agree=0.1)
        assert system_from_tolerances(need, 0.03) == "orthorhombic"


def test_consensus_needs_a_finite_cell():
    with pytest.raises(Distill4dError, match="no finite 3D cell"):
        consensus_cell([np.full((3, 3), np.nan)])
    with pytest.raises(Distill4dError, match="agree"):
        consensus_tolerances([np.eye(3)], agree=0)
