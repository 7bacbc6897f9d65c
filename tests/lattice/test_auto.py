"""``method="auto"``: correlation on even (on-zone) disks, a robust detector where the disks are
uneven and their bias varies across the scan, and the choice recorded with its evidence."""

import numpy as np
import pytest

from distill4d.datacube import DataCube
from distill4d.errors import Distill4dError
from distill4d.lattice.auto import choose_disk_method, disk_evidence, find_bragg_disks_auto, find_disks_by_method

from _synth import LATTICE_N as N
from _synth import LATTICE_PROBE as PROBE
from _synth import lattice_points, tilt_series
from _synth import uneven_disks as pattern


def _noisy(data: np.ndarray, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).poisson(data).astype(np.float32)


@pytest.fixture(scope="module")
def thin():
    """4 x 4 positions of even disks (a thin crystal on zone), Poisson noise."""
    img = pattern(lattice_points())
    return DataCube(_noisy(np.broadcast_to(img, (4, 4, N, N)), 1))


@pytest.fixture(scope="module")
def tilted():
    """4 x 4 positions, the tilt growing along the scan columns: each disk's interior ramp grows
    with g along qx and with the tilt, and the disks' brightness with g_x (the Laue circle
    moves): uneven Friedel pairs, and a correlation bias that varies across the reference rows."""
    pts = lattice_points()
    frames = tilt_series(np.linspace(0.0, 0.6, 4), pts)
    # brighter on one side of the direct beam along qx (uneven Friedel pairs)
    qx = np.indices((N, N))[0]
    frames = frames * (1.0 + 0.8 * np.tanh((qx - pts[0, 0]) / 15.0))
    return DataCube(_noisy(np.broadcast_to(frames, (4, 4, N, N)), 2))


def test_auto_keeps_correlation_on_even_disks(thin):
    ch = choose_disk_method(thin, PROBE, reference=(slice(0, 2), slice(None)))
    assert ch.method == "correlation"
    assert ch.evidence["friedel_asymmetry"] < 0.05 and "scores" not in ch.evidence
    assert "on zone" in ch.reason


def test_auto_takes_a_robust_detector_on_tilted_disks(tilted):
    ch = choose_disk_method(tilted, PROBE, reference=(slice(0, 2), slice(None)))
    assert ch.evidence["friedel_asymmetry"] > 0.15
    scores = ch.evidence["scores"]
    assert ch.method in ("rim", "sobel")
    # the winner's reference-region strain scatter beats correlation's by the margin
    assert scores[ch.method] < 0.8 * scores["correlation"]


@pytest.fixture(scope="module")
def contrasty():
    """6 x 6 positions of disks full of contrast (a dark half, blurred 0.7 px), the same everywhere (a thick
    crystal on zone), ~28,000 e- per pattern."""
    from scipy import ndimage

    img = ndimage.gaussian_filter(pattern(lattice_points(), "half", 0.7), 0.7) * 0.02
    return DataCube(_noisy(np.broadcast_to(img, (6, 6, N, N)), 4))


def test_auto_takes_templates_on_disks_full_of_contrast(contrasty):
    ref = (slice(0, 6), slice(None))
    ch = choose_disk_method(contrasty, PROBE, reference=ref)
    assert ch.evidence["interior_contrast"] > 0.3
    scores = ch.evidence["scores"]
    # scored on the reference positions its templates were not made from: 0.054 % against correlation's 0.077 %
    assert ch.method == "template" and scores["template"] < 0.8 * scores["correlation"]
    peaks = find_bragg_disks_auto(contrasty, PROBE, reference=ref, scheduler="inline", progress=False)
    assert peaks.params["method"] == "template" and peaks.params["auto"]["chosen"] == "template"
    assert peaks.params["reference"] == [[0, 6], [0, 6]]


def test_template_candidate_is_scored_on_the_other_half(contrasty):
    from distill4d.lattice.auto import _template_on_block
    from distill4d.bragg import probe_template

    import distill4d.bragg.refine as refine

    peaks_c = find_disks_by_method("correlation", contrasty, PROBE, scheduler="inline", progress=False)
    seen = {}
    setup, batch = refine.template_setup, refine.template_batch

    def spy_setup(ref_mean, *args, **kw):
        seen["mean"] = np.array(ref_mean)
        return setup(ref_mean, *args, **kw)

    def spy_batch(b, *args, **kw):
        seen["scored"] = np.array(b)
        return batch(b, *args, **kw)

    refine.template_setup, refine.template_batch = spy_setup, spy_batch
    try:
        pk = _template_on_block(contrasty, probe_template(PROBE), peaks_c)
    finally:
        refine.template_setup, refine.template_batch = setup, batch
    assert pk.scan_shape == (18, 1) and (pk.counts > 3).all()
    ix, iy = np.indices((6, 6))
    data = np.asarray(contrasty.data, np.float64)
    # templates from the (ix + iy) even positions only, registered in the odd ones only
    assert np.allclose(seen["mean"], data[(ix + iy) % 2 == 0].mean(axis=0))
    assert np.array_equal(seen["scored"], data[(ix + iy) % 2 == 1])
    # a dead pattern among the scored ones is left out, not taken for another crystal
    bad = np.array(contrasty.data)
    bad[0, 1, 10, 10] = np.nan
    dead = DataCube(bad)
    pk = _template_on_block(dead, probe_template(PROBE),
                            find_disks_by_method("correlation", dead, PROBE, scheduler="inline", progress=False))
    assert pk.scan_shape == (17, 1)
    with pytest.raises(Distill4dError, match="too small to split"):
        _template_on_block(contrasty[0:1, 0:2], probe_template(PROBE), peaks_c)


def test_template_candidate_refuses_a_block_of_two_crystals(contrasty):
    """Templates assume one crystal state: where half the block shows another lattice (rotated 20 degrees
    about the direct beam), the template candidate is refused instead of scored."""
    from distill4d.bragg import probe_template
    from distill4d.lattice.auto import _template_on_block

    pts = lattice_points()
    c, t = pts[0], np.deg2rad(20.0)
    rot = c + (pts - c) @ np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])
    other = _noisy(np.broadcast_to(pattern(rot, "half", 0.7) * 0.02, (N, N)), 5)
    data = np.array(contrasty.data)
    data[:, 3:] = other
    two = DataCube(data)
    peaks_c = find_disks_by_method("correlation", two, PROBE, scheduler="inline", progress=False)
    with pytest.raises(Distill4dError, match="not one crystal state"):
        _template_on_block(two, probe_template(PROBE), peaks_c)
    ch = choose_disk_method(two, PROBE, reference=(slice(0, 6), slice(None)))
    assert ch.method != "template" and ch.evidence["scores"]["template"] is None


def test_auto_records_its_choice_in_the_peaks_provenance(tilted):
    peaks = find_bragg_disks_auto(tilted, PROBE, reference=(slice(0, 2), slice(None)), scheduler="inline",
                                  progress=False)
    auto = peaks.params["auto"]
    assert peaks.params["method"] == auto["chosen"] != "correlation"
    assert peaks.provenance.parameters["auto"]["reason"].startswith(auto["chosen"])
    assert "friedel_asymmetry" in auto and "scores" in auto


def test_disk_evidence_of_even_disks(thin):
    ev = disk_evidence(thin, PROBE)
    assert ev["n_disks"] >= 9 and ev["n_pairs"] >= 4
    assert ev["friedel_asymmetry"] < 0.05
    assert ev["interior_contrast"] < 0.1  # flat disks (Poisson noise only)


def test_bad_options_are_refused(thin):
    with pytest.raises(Distill4dError, match="candidates"):
        choose_disk_method(thin, PROBE, candidates=("correlation", "magic"))
    with pytest.raises(Distill4dError, match="reference"):
        choose_disk_method(thin, PROBE, reference=(slice(10, 12), slice(None)))


def test_auto_passes_what_the_choice_measured_to_the_whole_scan(tilted):
    """The thresholds chosen once and, for the rim fit, the tilt-bias coefficient learned on the
    validation block are reused: the whole-scan detection does not choose them again."""
    ref = (slice(0, 2), slice(None))
    ch = choose_disk_method(tilted, PROBE, reference=ref)
    assert {"min_spacing_px", "min_relative_intensity", "max_peaks"} <= set(ch.settings)
    peaks = find_bragg_disks_auto(tilted, PROBE, reference=ref, scheduler="inline", progress=False)
    if ch.method == "rim":
        assert peaks.params["tilt_bias"]["source"] == "given"
        assert peaks.params["rim"]["bias_px"] == pytest.approx(ch.settings["tilt_bias_px"])
    assert peaks.params["min_relative_intensity"] == pytest.approx(ch.settings["min_relative_intensity"])


@pytest.mark.parametrize("thickness_A, tried", [(600.0, True), (100.0, False)])
def test_auto_tries_the_robust_detectors_on_a_thick_crystal_on_zone(thickness_A, tried):
    """Multislice Si [011] on zone, 6 x 6 positions at 1e5 e-/pattern: at 60 nm the disks are full of dynamical
    contrast (interior contrast 0.45 measured; Friedel pairs still symmetric), so the candidates run on the
    reference region and the best is validated there; at 10 nm the disks are flat (0.07) and correlation is
    kept untried."""
    pytest.importorskip("abtem")
    from distill4d.simulate.crystals import orient, prototype
    from distill4d.simulate.multislice import CBEDSettings, vacuum_probe_pattern
    from distill4d.simulate.scan import scan_preset, simulate_scan

    settings = CBEDSettings(energy_eV=200e3, semiangle_mrad=2.0, shape=(96, 96), q_pixel_inv_A=0.03)
    si = orient(prototype("Si"), (0, 1, 1))[0]
    fields = scan_preset("multilayer", (6, 6), strain=0.01, layer_width=3, thickness_A=thickness_A)
    dc, _ = simulate_scan(si, fields, settings, dose_e=1e5, seed=3)
    ch = choose_disk_method(dc, vacuum_probe_pattern(settings), reference=(slice(0, 3), slice(None)))
    ev = ch.evidence
    assert ev["friedel_asymmetry"] < 0.15  # on zone either way
    assert (ev["interior_contrast"] >= 0.3) == tried
    assert ("scores" in ev) == tried
    if tried:
        assert "thick crystal" in ch.reason
        assert ch.method == "correlation" or ev["scores"][ch.method] < 0.8 * ev["scores"]["correlation"]
    else:
        assert ch.method == "correlation" and "flat inside" in ch.reason
