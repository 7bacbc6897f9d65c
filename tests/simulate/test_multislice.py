"""Multislice CBED (abTEM): disks at kinematic positions, targets, strain as F^-T."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

abtem = pytest.importorskip("abtem")

from distill4d.bragg import find_bragg_disks
from distill4d.simulate.multislice import CBEDSettings, rebin_matrix, simulate_cbed
from distill4d.simulate.structure_factor import kinematic_reflections

A_SI = 5.431
SETTINGS = CBEDSettings(energy_eV=200e3, semiangle_mrad=2.0, shape=(128, 128), q_pixel_inv_A=0.025, thicknesses_A=(40.0, 100.0))


def si_011():
    from ase.build import bulk, surface

    atoms = surface(bulk("Si", "diamond", a=A_SI, cubic=True), (0, 1, 1), layers=1, periodic=True)
    return abtem.orthogonalize_cell(atoms)


@pytest.fixture(scope="module")
def si_result():
    return simulate_cbed(si_011(), SETTINGS)


def _nearest(points: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return np.min(np.hypot(points[:, None, 0] - ref[None, :, 0], points[:, None, 1] - ref[None, :, 1]), axis=1)


def _strong_kinematic(peaks: np.ndarray, settings: CBEDSettings, min_amp: float = 0.05) -> np.ndarray:
    """Kinematic spots out to (400) (|g| < 0.77 1/Å = 31 px): bright at 40-100 Å."""
    r = np.hypot(peaks[:, 0] - settings.origin_px[0], peaks[:, 1] - settings.origin_px[1])
    return peaks[(peaks[:, 2] > min_amp) & (r < 31)]


def test_rebin_matrix_conserves_flux_and_places_pixels():
    k = (np.arange(40) - 20) * 0.01
    w = rebin_matrix(k, 0.01, 16, 0.025, 8)
    # native pixels fully inside the detector range give all their flux
    assert np.allclose(w.sum(axis=0)[5:35], 1.0)
    # a native pixel centred on detector pixel 9's centre (q = 0.025) goes to pixel 9 only
    i = np.argmin(np.abs(k - 0.02))  # covers [0.015, 0.025]: fully inside pixel 9 ([0.0125, 0.0375])
    assert w[9, i] == pytest.approx(1.0)


def test_si011_thickness_series_and_flux(si_result):
    r = si_result
    assert r.patterns.shape == (2, 128, 128)
    # thicknesses are whole [011] repeats (a / sqrt(2) = 3.840 Å)
    assert np.allclose(r.thicknesses_A / (A_SI / np.sqrt(2)), np.round(r.thicknesses_A / (A_SI / np.sqrt(2))))
    assert abs(r.thicknesses_A[0] - 40.0) < 2.0 and abs(r.thicknesses_A[1] - 100.0) < 2.0
    # no absorption: the flux is conserved except what scatters beyond the simulated circle
    assert np.all(r.patterns.sum(axis=(1, 2)) > 0.9) and np.all(r.patterns.sum(axis=(1, 2)) <= 1.0 + 1e-4)
    assert r.probe.sum() == pytest.approx(1.0, abs=1e-3)
    # the vacuum disk radius is the semiangle: alpha / lambda / q_pixel = 3.19 px
    # (area = total / plateau value; abTEM's soft aperture edge, about one native pixel wide,
    # takes ~0.2 px off this estimate)
    radius = np.sqrt(r.probe.sum() / r.probe.max() / np.pi)
    assert radius == pytest.approx(2e-3 / SETTINGS.wavelength_A / SETTINGS.q_pixel_inv_A, abs=0.3)


@pytest.mark.parametrize("index", [0, 1])
def test_si011_disks_at_kinematic_positions(si_result, index):
    """Every strong kinematic disk is found within 0.5 px of its kinematic position."""
    r = si_result
    bp = find_bragg_disks(r.patterns[index][None], r.probe, kind="edge", progress=False)
    found = np.column_stack([bp.qx, bp.qy])
    strong = _strong_kinematic(r.peaks, SETTINGS)
    assert len(strong) >= 12  # (000), 4 x (111), 2 x (022), 4 x (311), 2 x (400) ...
    d = _nearest(strong[:, :2], found)
    assert np.all(d < 0.5), d


def test_target_peaks_coincide_with_kinematic_list(si_result):
    r = si_result
    t = r.target.astype(np.float64)
    from scipy.ndimage import maximum_filter

    is_max = (t == maximum_filter(t, size=5)) & (t > 0.02 * t.max())
    ii, jj = np.nonzero(is_max)
    # parabolic sub-pixel refinement of each local maximum
    def vertex(m, c, p):
        return 0.5 * (m - p) / (m - 2 * c + p)

    pos = np.array(
        [
            (i + vertex(t[i - 1, j], t[i, j], t[i + 1, j]), j + vertex(t[i, j - 1], t[i, j], t[i, j + 1]))
            for i, j in zip(ii, jj)
            if 0 < i < t.shape[0] - 1 and 0 < j < t.shape[1] - 1
        ]
    )
    listed = r.peaks[r.peaks[:, 2] > 0.02]
    assert len(pos) == len(listed)
    # each maximum is the pixel nearest its listed peak, and a 3-point parabola (not the spot's
    # exact shape) puts it within 0.1 px
    assert np.all(_nearest(np.column_stack([ii, jj]).astype(float), np.round(listed[:, :2])) == 0)
    assert np.all(_nearest(pos, listed[:, :2]) < 0.1)
    assert np.all(_nearest(listed[:, :2], pos) < 0.1)
    # the (000) spot is the brightest and equals 1
    assert t[64, 64] == pytest.approx(1.0, rel=1e-3)


def test_structure_factors_match_abtem_projected_potential():
    """|V(hk0)| from the Lobato form factors equals the FFT of abTEM's projected potential."""
    atoms = si_011()
    c = atoms.cell.array[2, 2]
    pot = abtem.Potential(atoms, sampling=0.04, projection="infinite", slice_thickness=c)
    proj = np.asarray(pot.build().project().compute(progress_bar=False).array)
    spec = np.abs(np.fft.fft2(proj))
    refl = kinematic_reflections(atoms, q_max_inv_A=1.5)
    zero_layer = refl.hkl[:, 2] == 0
    hkl, amp = refl.hkl[zero_layer], refl.amplitude[zero_layer]
    amp0 = amp[np.all(hkl == 0, axis=1)][0]
    fft_rel = spec[hkl[:, 0], hkl[:, 1]] / spec[0, 0]
    assert np.allclose(amp / amp0, fft_rel, atol=2e-3, rtol=0.02)
    # the listed reflections are all there is: extinct ones (e.g. (200) in this cell) are absent
    assert np.all(spec[hkl[:, 0], hkl[:, 1]] > 1e-3 * spec[0, 0])
    listed = {tuple(x) for x in hkl[:, :2]}
    g = np.hypot(np.fft.fftfreq(spec.shape[0], pot.sampling[0])[:, None], np.fft.fftfreq(spec.shape[1], pot.sampling[1])[None, :])
    strong = np.argwhere((spec > 1e-3 * spec[0, 0]) & (g < 1.45))
    for i, j in strong:
        h = i if i <= spec.shape[0] // 2 else i - spec.shape[0]
        k = j if j <= spec.shape[1] // 2 else j - spec.shape[1]
        assert (h, k) in listed


def test_strained_crystal_peaks_move_as_F_inverse_transpose(si_result):
    """A stretched cell (+2 % x, -1 % y) moves the multislice disks by F^-T."""
    F = np.diag([1.02, 0.99, 1.0])
    atoms = si_011()
    atoms.set_cell(atoms.cell.array @ F.T, scale_atoms=True)
    settings = dataclasses.replace(SETTINGS, thicknesses_A=(40.0,))
    r = simulate_cbed(atoms, settings)
    bp = find_bragg_disks(r.patterns[0][None], r.probe, kind="edge", progress=False)
    found = np.column_stack([bp.qx, bp.qy])
    strong = _strong_kinematic(si_result.peaks, settings)
    o = np.array(settings.origin_px, dtype=float)
    predicted = o + (strong[:, :2] - o) @ np.linalg.inv(F[:2, :2])  # g' = F^-T g (F diagonal)
    assert np.all(_nearest(predicted, found) < 0.3)
    # the unstrained positions are measurably wrong for the outer disks
    assert np.max(_nearest(strong[:, :2], found)) > 0.4


def test_settings_validation():
    with pytest.raises(ValueError, match="thicknesses_A"):
        CBEDSettings(thicknesses_A=(-5.0,))
    with pytest.raises(ValueError, match="energy_eV"):
        CBEDSettings(energy_eV=float("nan"))
    with pytest.raises(ValueError, match="shape"):
        CBEDSettings(shape=(4, 4))
    with pytest.raises(ValueError, match="orthogonal"):
        from ase.build import bulk

        simulate_cbed(bulk("Si"), SETTINGS)


@pytest.mark.slow
def test_frozen_phonons_are_seeded_and_damp_high_angles():
    """Thermal displacements move flux from the Bragg disks to a diffuse background, by seed."""
    settings = CBEDSettings(energy_eV=200e3, semiangle_mrad=2.0, shape=(64, 64), q_pixel_inv_A=0.05,
                            thicknesses_A=(150.0,), frozen_phonons=2, phonon_sigma_A=0.1)
    atoms = si_011()
    a = simulate_cbed(atoms, settings, seed=1)
    b = simulate_cbed(atoms, settings, seed=1)
    c = simulate_cbed(atoms, settings, seed=2)
    static = simulate_cbed(atoms, dataclasses.replace(settings, frozen_phonons=0))
    assert np.allclose(a.patterns, b.patterns, rtol=0, atol=1e-7)
    assert not np.allclose(a.patterns, c.patterns, rtol=0, atol=1e-7)
    # thermal diffuse scattering: more flux between the disks than the static lattice has
    o = np.array(settings.origin_px, dtype=float)
    xx, yy = np.meshgrid(np.arange(64), np.arange(64), indexing="ij")  # xx: qx (axis 0)
    in_disk = np.zeros((64, 64), dtype=bool)
    r = 2e-3 / settings.wavelength_A / settings.q_pixel_inv_A + 1.5
    for px, py, _ in a.peaks:
        in_disk |= np.hypot(xx - px, yy - py) <= r
    between_static = static.patterns[0][~in_disk].sum()
    between_phonon = a.patterns[0][~in_disk].sum()
    assert between_phonon > 1.5 * between_static


def test_strain_bound_of_a_multislice_pattern_is_not_beaten_by_the_correlation_detector():
    """The Cramér–Rao bound of a Si [011] pattern (eps_xx, eps_yy from the simulator's own
    response to a stretched cell) at 1e5 e-: the correlation detector's scatter over Poisson
    draws must not fall below it (it would if the bound were too high)."""
    from distill4d.datacube import DataCube
    from distill4d.lattice import strain_map
    from distill4d.lattice.precision import strain_crb
    from distill4d.simulate.augment import poisson_noise
    from distill4d.simulate.multislice import strain_renderer

    settings = dataclasses.replace(SETTINGS, thicknesses_A=(100.0,))
    render = strain_renderer(si_011(), settings)
    dose = 1e5
    bound = strain_crb(render, dose_e=dose, components=("eps_xx", "eps_yy"))
    assert all(1e-5 < v < 1e-2 for v in bound.values()), bound
    with pytest.raises(ValueError, match="diagonal"):
        render(np.array([[1.0, 1e-3], [1e-3, 1.0]]))
    p = render(np.eye(2))
    rng = np.random.default_rng(0)
    stack = np.stack([poisson_noise(p, dose_e=dose, rng=rng) for _ in range(48)])
    dc = DataCube(stack.reshape(6, 8, *p.shape), settings.calibration())
    sm = strain_map(find_bragg_disks(dc, simulate_cbed(si_011(), settings).probe, progress=False),
                    reference=(slice(None), slice(None)))
    for k in ("eps_xx", "eps_yy"):
        ratio = np.nanstd(getattr(sm, k)) / bound[k]
        assert ratio > 0.8, (k, ratio, bound)  # 48 draws: the std is known to about 10 %
