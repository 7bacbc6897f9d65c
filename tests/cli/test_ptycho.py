"""``distill4d ptycho``: the round trip, refusing to overwrite, resuming from OUTPUT.partial/."""

import numpy as np
import pytest

pytest.importorskip("torch")

import distill4d  # noqa: E402
from distill4d.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    from distill4d.simulate.phase_object import phase_object_scan

    sim = phase_object_scan(scan_shape=(10, 10), pattern_size=32, step_px=2, q_pixel_inv_A=0.07,
                            semiangle_mrad=20.0, energy_eV=300e3, defocus_A=60.0)
    path = tmp_path_factory.mktemp("ptycho") / "scan.h5"
    distill4d.write(path, sim.datacube.with_calibration(scan_rotation_rad=0.0))
    return path


def test_round_trip(scan, tmp_path, capsys):
    out = tmp_path / "p.h5"
    args = ["ptycho", str(scan), "-o", str(out), "--defocus-A", "60", "--iterations", "3", "--device", "cpu",
            "--no-progress", "--region", "0:8,1:9", "--modes", "2", "--threads", "1"]
    assert main(args) == 0
    assert out.exists() and out.with_suffix(".png").exists()
    assert not (tmp_path / "p.h5.partial").exists()
    res = distill4d.read_results(out)
    assert res.units["object_phase"] == "rad"
    assert res["phase_on_scan_grid"].shape == (8, 8)
    assert res["probe_modes_real"].shape == (2, 32, 32)
    assert len(res["errors"]) == 3
    assert res.provenance.method == "ptychography" and res.provenance.command.startswith("distill4d")
    assert res.provenance.parameters["region"] == [0, 8, 1, 9]
    printed = capsys.readouterr().out
    assert "wrote" in printed and "amplitude loss (auto: the patterns are not counts)" in printed
    assert main(args) == 1  # exists, no --force
    assert "--force" in capsys.readouterr().err


def test_validation_fraction_keeps_the_iteration_of_the_lowest_held_out_loss(scan, tmp_path, capsys):
    out = tmp_path / "v.h5"
    assert main(["ptycho", str(scan), "-o", str(out), "--defocus-A", "60", "--iterations", "3", "--device", "cpu",
                 "--no-progress", "--no-png", "--validation-fraction", "0.25"]) == 0
    res = distill4d.read_results(out)
    curve = np.asarray(res["validation_errors"])
    assert curve.shape == (3,) and res.attrs["chosen_iteration"] == int(np.argmin(curve)) + 1
    assert res.provenance.parameters["validation_positions"] == 25
    assert "held-out positions" in capsys.readouterr().out


def test_resumes_from_partial(scan, tmp_path):
    from distill4d.phase import reconstruct

    out = tmp_path / "p.h5"
    kw = dict(defocus_A=60.0, iterations=3, device="cpu", progress=False)
    cube = distill4d.read(scan)

    def stop(it, err):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        reconstruct(cube, checkpoint=tmp_path / "p.h5.partial" / "ptycho.pt", callback=stop, **kw)
    assert main(["ptycho", str(scan), "-o", str(out), "--defocus-A", "60", "--iterations", "3", "--device", "cpu",
                 "--no-progress", "--no-png"]) == 0
    res = distill4d.read_results(out)
    assert res.provenance.parameters["resumed_at_iteration"] == 1
    full = reconstruct(cube, **kw)
    np.testing.assert_array_equal(res["object_phase"], full.object_phase)


def test_tied_slices_say_how_many_iterations_started_coarse(scan, tmp_path, capsys):
    """``--tied-slices`` with 8 slices: the first iterations use 2 thicker slices (at most half of 4 here); the
    summary and the provenance say how many; ``--coarse-iterations 0`` turns it off."""
    base = ["ptycho", str(scan), "--defocus-A", "60", "--iterations", "4", "--device", "cpu", "--no-progress",
            "--slices", "8", "--slice-thickness-A", "5", "--tied-slices", "--threads", "1"]
    assert main([*base, "-o", str(tmp_path / "a.h5")]) == 0
    p = distill4d.read_results(tmp_path / "a.h5").provenance.parameters
    assert (p["coarse_iterations"], p["coarse_slices"]) == (2, 2) and 1 <= p["coarse_iterations_run"] <= 2
    assert f"the first {p['coarse_iterations_run']} with 2 thicker slices" in capsys.readouterr().out
    assert main([*base, "-o", str(tmp_path / "b.h5"), "--coarse-iterations", "0"]) == 0
    assert distill4d.read_results(tmp_path / "b.h5").provenance.parameters["coarse_iterations_run"] == 0
    assert "thicker slices" not in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--slices", "2"], "slice_thickness_A"),
    (["--defocus-A", "1e7"], "defocus_A"),
    (["--region", "0:1"], "--region"),
    (["--probe", "missing.npy"], "does not exist"),
    (["--validation-fraction", "0.5"], "validation_fraction"),
    (["--coarse-iterations", "2"], "coarse_iterations needs tied_slices"),
])
def test_bad_options_are_one_line_errors(scan, tmp_path, capsys, extra, message):
    rc = main(["ptycho", str(scan), "-o", str(tmp_path / "x.h5"), "--device", "cpu", "--no-progress", *extra])
    err = capsys.readouterr().err
    assert rc == 1 and message in err and err.count("\n") == 1


def test_missing_calibration_names_the_flag(tmp_path, capsys):
    path = tmp_path / "raw.npy"
    np.save(path, np.ones((4, 4, 16, 16), np.float32))
    rc = main(["ptycho", str(path), "-o", str(tmp_path / "x.h5"), "--device", "cpu", "--no-progress"])
    assert rc == 1 and "energy_eV" in capsys.readouterr().err


def test_phase_pipeline_trains_on_ptychography(tmp_path):
    """``phase --train-on-ptycho``: ptychography of 8 of 20 rows, a linear model trained on its phase,
    the image of the whole scan; on the 12 rows never reconstructed it correlates with the true phase
    >= 0.85 (measured 0.96 on a 32 x 32 scan); the model then serves another scan with --weights."""
    from distill4d.simulate.phase_object import phase_object_scan

    sim = phase_object_scan(scan_shape=(20, 20), pattern_size=32, step_px=2, q_pixel_inv_A=0.07,
                            semiangle_mrad=20.0, energy_eV=300e3, defocus_A=60.0, dose_per_pattern=2e4, seed=2)
    scan = tmp_path / "scan.h5"
    distill4d.write(scan, sim.datacube.with_calibration(scan_rotation_rad=0.0))
    out = tmp_path / "image.h5"
    assert main(["phase", str(scan), "--train-on-ptycho", "0:8,0:20", "--defocus-A", "60", "--iterations", "6",
                 "--train-steps", "200", "--no-progress", "--no-png", "-o", str(out)]) == 0
    res = distill4d.read_results(out)
    img = res["ptychographic_phase"]
    assert img.shape == (20, 20) and res.units["ptychographic_phase"] == "rad"
    assert res["ptychographic_label"].shape == (8, 20)
    assert list(res["ptychographic_region"]) == [0, 8, 0, 20]
    r = np.corrcoef(img[8:].ravel(), sim.phase_rad[8:].ravel())[0, 1]
    assert r >= 0.85, r
    weights = tmp_path / "image_model.pt"
    assert weights.exists() and weights.with_suffix(".json").exists()
    assert main(["phase", str(scan), "--weights", str(weights), "--no-progress", "--no-png",
                 "-o", str(tmp_path / "again.h5")]) == 0
    again = distill4d.read_results(tmp_path / "again.h5")["ptychographic_phase"]
    np.testing.assert_allclose(again, img, atol=1e-5)


def test_phase_pipeline_with_a_tied_slice_label_on_a_repeating_crystal(tmp_path):
    """``phase --train-on-ptycho ... --slices 6 --slice-thickness-A 20 --tied-slices --train-model mlp`` on six
    identical slices (3.6 rad summed): on the 12 rows never reconstructed the image correlates with the
    summed true phase >= 0.95 (measured 0.972), and >= 0.05 above the same pipeline with a single-slice
    label (measured 0.863)."""
    from _ptsim import Q, multislice_scan, random_atoms

    one = random_atoms((40, 40), 1 / (48 * Q), 14, 0.6, seed=3)
    cube, truth = multislice_scan(np.stack([one] * 6), dz_A=20.0, scan_shape=(20, 20), defocus_A=50.0)
    scan = tmp_path / "scan.h5"
    distill4d.write(scan, cube.with_calibration(scan_rotation_rad=0.0))
    base = ["phase", str(scan), "--train-on-ptycho", "0:8,0:20", "--defocus-A", "50", "--iterations", "8",
            "--train-model", "mlp", "--no-progress", "--no-png"]
    r = {}
    for name, extra in (("tied", ["--slices", "6", "--slice-thickness-A", "20", "--tied-slices"]), ("single", [])):
        assert main([*base, *extra, "-o", str(tmp_path / f"{name}.h5")]) == 0
        img = distill4d.read_results(tmp_path / f"{name}.h5")["ptychographic_phase"]
        r[name] = np.corrcoef(img[8:].ravel(), truth[8:].ravel())[0, 1]
    assert r["tied"] >= 0.95 and r["tied"] >= r["single"] + 0.05, r


def test_auto_defocus_option(scan, tmp_path, capsys):
    """``--defocus-A auto`` runs the search (the module's scan was made at 60 Å: found within 20 Å) and records
    it; a word other than auto is refused by the parser, naming the option."""
    out = tmp_path / "auto.h5"
    assert main(["ptycho", str(scan), "-o", str(out), "--defocus-A", "auto", "--iterations", "2", "--device", "cpu",
                 "--no-progress", "--no-png", "--threads", "1"]) == 0
    p = distill4d.read_results(out).provenance.parameters
    assert abs(p["defocus_A"] - 60.0) <= 20.0 and p["defocus_search"]["trials"]
    with pytest.raises(SystemExit):
        main(["ptycho", str(scan), "-o", str(tmp_path / "x.h5"), "--defocus-A", "fast"])
    assert "--defocus-A" in capsys.readouterr().err


def test_phase_pipeline_label_border(tmp_path, capsys):
    """``--train-border-A``: the label's positions within that distance of the region's edge are left
    out (1 Å at 0.5 Å steps: 2 positions each side); a border that leaves no label is refused before
    any ptychography, naming the option."""
    from distill4d.cli.phase import label_border_mask

    m = label_border_mask((10, 8), 1.0, 0.5)
    assert m.sum() == 6 * 4 and m[2:8, 2:6].all()
    assert label_border_mask((10, 8), 0.0, 0.5).all()
    assert not label_border_mask((3, 3), 5.0, 0.5).any()
    with pytest.raises(ValueError, match="--train-border-A must be >= 0"):
        label_border_mask((10, 8), -1.0, 0.5)
    from distill4d.simulate.phase_object import phase_object_scan

    sim = phase_object_scan(scan_shape=(12, 12), pattern_size=32, step_px=2, q_pixel_inv_A=0.07,
                            semiangle_mrad=20.0, energy_eV=300e3, defocus_A=60.0, dose_per_pattern=2e4, seed=2)
    scan = tmp_path / "scan.h5"
    distill4d.write(scan, sim.datacube.with_calibration(scan_rotation_rad=0.0))
    rc = main(["phase", str(scan), "--train-on-ptycho", "0:6,0:12", "--train-border-A", "5", "--no-progress",
               "--no-png", "-o", str(tmp_path / "image.h5")])
    assert rc == 1 and "leaves fewer than 2 rows of label" in capsys.readouterr().err


def test_auto_loss_is_explained_and_a_thick_counted_scan_gets_a_multislice_note(tmp_path, capsys):
    """Counts that one slice cannot fit (three strong slices 40 Å apart at 2e5 e-/pattern: the trial leaves
    4.8x the shot noise) keep the amplitude loss, and the command says why and suggests multislice; a
    thin counted scan gets the Poisson loss and no note."""
    from _ptsim import Q, multislice_scan, random_atoms

    from distill4d.simulate.phase_object import phase_object_scan

    pixel = 1 / (48 * Q)
    phases = np.stack([random_atoms((40, 40), pixel, 14, 1.0, seed=s) for s in range(3)])
    thick, _ = multislice_scan(phases, dz_A=40.0, scan_shape=(20, 20), defocus_A=50.0, dose=2e5)
    thin = phase_object_scan(scan_shape=(20, 20), pattern_size=32, step_px=2, q_pixel_inv_A=0.07,
                             semiangle_mrad=20.0, energy_eV=300e3, defocus_A=50.0, dose_per_pattern=2e4,
                             seed=1).datacube
    for name, cube, loss, note in (("thick", thick, "amplitude", True), ("thin", thin, "poisson", False)):
        path = tmp_path / f"{name}.h5"
        distill4d.write(path, cube.with_calibration(scan_rotation_rad=0.0))
        assert main(["ptycho", str(path), "-o", str(tmp_path / f"{name}_p.h5"), "--defocus-A", "50",
                     "--iterations", "1", "--device", "cpu", "--no-progress", "--no-png", "--threads", "1"]) == 0
        cap = capsys.readouterr()
        assert f"; {loss} loss (auto: a single-slice trial left" in cap.out, cap.out
        assert ("too thick for a single slice" in cap.err) is note, cap.err
        assert distill4d.read_results(tmp_path / f"{name}_p.h5").provenance.parameters["loss"] == loss
