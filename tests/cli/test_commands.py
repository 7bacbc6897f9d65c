import json
import subprocess
import sys

import numpy as np
import pytest

import distill4d
from distill4d import Calibration, DataCube
from distill4d.cli import main
from distill4d.imaging import circle_mask, virtual_images


@pytest.fixture
def scan_file(tmp_path):
    rng = np.random.default_rng(4)
    data = rng.poisson(3.0, (16, 16, 64, 64)).astype(np.float32)
    data[:, :, 24:40, 24:40] += 200.0  # a bright "disk" around (31.5, 31.5)
    path = tmp_path / "scan.h5"
    distill4d.write(path, DataCube(data, Calibration(q_pixel_inv_A=0.02, energy_eV=300e3, scan_step_A=0.5)))
    return path, data


def test_import_is_light():
    code = ("import sys, distill4d; heavy = [m for m in ('torch', 'distributed', 'dask', 'abtem', 'fastapi', "
            "'h5py', 'matplotlib', 'scipy') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_virtual_writes_exact_images_and_png(scan_file, tmp_path, capsys):
    path, data = scan_file
    out = tmp_path / "v.h5"
    assert main(["virtual", str(path), "--bf", "6", "--adf", "10", "--origin-px", "31.5", "31.5",
                 "-o", str(out), "--no-progress"]) == 0
    arrays = distill4d.io.read_results(out)
    expected = virtual_images(DataCube(data), {"bf": circle_mask((64, 64), (31.5, 31.5), 6)})["bf"]
    np.testing.assert_allclose(arrays["bf"], expected, rtol=1e-12)
    assert arrays.calibration.q_pixel_inv_A == 0.02 and arrays.calibration.scan_step_A == 0.5
    assert arrays.provenance.method == "virtual" and arrays.provenance.inputs == (str(path),)
    assert arrays.provenance.parameters["detectors"]["bf"] == ["bf", [6.0]]
    assert out.with_suffix(".png").stat().st_size > 1000
    assert not (tmp_path / "v.h5.partial").exists()


def test_existing_output_is_never_overwritten_without_force(scan_file, tmp_path, capsys):
    path, _ = scan_file
    out = tmp_path / "v.h5"
    out.write_bytes(b"precious")
    assert main(["virtual", str(path), "-o", str(out), "--no-progress"]) == 1
    assert "exists" in capsys.readouterr().err and "--force" in capsys.readouterr().err + "--force"
    assert out.read_bytes() == b"precious"
    assert main(["virtual", str(path), "-o", str(out), "--no-progress", "--force"]) == 0
    assert out.read_bytes() != b"precious"


def test_output_may_not_be_the_input(scan_file, capsys):
    path, _ = scan_file
    assert main(["virtual", str(path), "-o", str(path), "--force", "--no-progress"]) == 1
    assert "input" in capsys.readouterr().err


def test_interrupted_run_resumes_with_the_same_command(scan_file, tmp_path, monkeypatch):
    import distill4d.imaging.virtual as virtual

    path, data = scan_file
    out = tmp_path / "v.h5"
    argv = ["virtual", str(path), "--bf", "6", "--origin-px", "31.5", "31.5", "-o", str(out),
            "--memory-budget-MB", "1", "--no-progress", "--no-png", "--scheduler", "inline"]
    real = virtual._virtual_batch
    calls = []

    def flaky(batch, plans):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(batch, plans)

    monkeypatch.setattr(virtual, "_virtual_batch", flaky)
    assert main(argv) == 130
    assert not out.exists()
    done = list((tmp_path / "v.h5.partial" / "virtual").glob("tile_*.npz"))
    assert len(done) == 2
    calls.clear()
    monkeypatch.setattr(virtual, "_virtual_batch", lambda batch, plans: (calls.append(1), real(batch, plans))[1])
    assert main(argv) == 0
    n_tiles = len(json.loads((tmp_path / "v.h5.partial" / "virtual" / "manifest.json").read_text())["tiles"]) \
        if (tmp_path / "v.h5.partial").exists() else None
    assert n_tiles is None  # cleaned up after success
    assert len(calls) >= 1
    arrays = distill4d.io.read_results(out)
    expected = virtual_images(DataCube(data), {"bf": circle_mask((64, 64), (31.5, 31.5), 6)})["bf"]
    np.testing.assert_allclose(arrays["bf"], expected, rtol=1e-12)


def test_com_and_idpc_from_the_command_line(tmp_path):
    from distill4d.simulate.phase_object import phase_object_scan

    sim = phase_object_scan(scan_shape=(32, 32))
    path = tmp_path / "po.h5"
    distill4d.write(path, sim.datacube)
    out = tmp_path / "com.h5"
    assert main(["com", str(path), "-o", str(out), "--no-progress", "--rotation-deg", "0", "--no-flip"]) == 0
    arrays = distill4d.io.read_results(out)
    corr = np.corrcoef(np.asarray(arrays["idpc_phase"]).ravel(), sim.smoothed_phase_rad.ravel())[0, 1]
    assert corr > 0.98  # 32x32 scan: the mirrored boundary costs a little against the 48x48 test


def test_bad_inputs_give_one_clear_line(tmp_path, scan_file, capsys):
    path, _ = scan_file
    assert main(["info", str(tmp_path / "missing.h5")]) == 1
    err = capsys.readouterr().err
    assert "missing.h5" in err and "Traceback" not in err
    assert main(["virtual", str(path), "--bf", "500", "--origin-px", "31.5", "31.5", "-o", str(tmp_path / "x.h5")]) == 1
    err = capsys.readouterr().err
    assert "radius" in err or "detector" in err
    assert not (tmp_path / "x.h5").exists()
    assert main(["virtual", str(path), "--adf", "80", "90", "--origin-px", "31.5", "31.5",
                 "-o", str(tmp_path / "x.h5")]) == 1
    assert "contains no pixel" in capsys.readouterr().err
    assert main(["virtual", str(path), "--memory-budget-MB", "0", "-o", str(tmp_path / "x.h5")]) == 1
    assert "memory-budget" in capsys.readouterr().err
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"\x00not hdf5 at all" * 100)
    assert main(["info", str(garbage)]) == 1
    assert "garbage.h5" in capsys.readouterr().err


def test_info_prints_shape_and_calibration(scan_file, capsys):
    path, _ = scan_file
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "16x16" in out and "64x64" in out and "300 kV" in out


@pytest.mark.slow
@pytest.mark.e2e
def test_demo_runs_and_recovers_the_phase(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["idpc_correlation_with_true_phase"] > 0.95
    assert summary["idpc_correlation_with_probe_smoothed_phase"] > 0.98
    # layers differing by 2 % at 1e4 electrons per pattern, referenced to the first layer:
    # eps_xx within 0.15 % RMS, all positions fitted, the other layers at 0.99 / 1.01 - 1
    assert summary["strain_eps_xx_rms_error_percent"] < 0.15
    assert summary["strain_eps_xx_other_layers_expected_percent"] == pytest.approx(-1.9802, abs=1e-3)
    assert abs(summary["strain_eps_xx_other_layers_median_percent"] + 1.98) < 0.1
    assert "expect 0 % and -1.98 % stripes" in capsys.readouterr().out
    assert summary["strain_positions_fitted_fraction"] == 1.0
    for f in ("scan.h5", "virtual.h5", "virtual.png", "com.h5", "com.png"):
        assert (out / f).exists()
    before = (out / "summary.json").read_text()
    assert main(["demo", "-o", str(out), "--no-progress"]) == 1
    assert "--force" in capsys.readouterr().err
    assert (out / "summary.json").read_text() == before


@pytest.mark.slow
@pytest.mark.e2e
def test_disks_and_strain_commands_recover_a_known_strain(tmp_path, capsys):
    from distill4d.bragg import BraggPeaks
    from distill4d.lattice import StrainMap
    from distill4d.simulate.kinematic import strained_scan, vacuum_probe

    dc, truth = strained_scan((8, 8), (128, 128), kind="uniform", strain=0.01, dose=None)
    scan = tmp_path / "strained.h5"
    distill4d.write(scan, dc)
    probe = tmp_path / "probe.npy"
    np.save(probe, vacuum_probe((128, 128), calibration=dc.calibration))
    peaks_file = tmp_path / "peaks.h5"
    assert main(["disks", str(scan), "--probe", str(probe), "-o", str(peaks_file), "--no-progress"]) == 0
    peaks = BraggPeaks.from_hdf5(peaks_file)
    assert peaks.scan_shape == (8, 8) and peaks.counts.min() >= 10
    assert (tmp_path / "peaks.png").exists()
    # A uniform strain referenced to a region of the same scan gives zero strain everywhere ...
    out = tmp_path / "strain.h5"
    assert main(["strain", str(scan), "--probe", str(probe), "-o", str(out), "--no-progress",
                 "--reference", "0:4,0:8"]) == 0
    smap = StrainMap.from_hdf5(out)
    assert np.nanmax(np.abs(smap.eps_xx)) < 5e-4 and np.nanmax(np.abs(smap.eps_xy)) < 5e-4
    # the file records its command, inputs, detector and reference
    prov = smap.provenance
    assert prov.command.startswith("distill4d ") and prov.inputs == (str(scan), str(probe))
    # the default --method auto keeps plain correlation on these even (kinematic) disks, and says why
    assert prov.parameters["detection"]["method"] == "correlation"
    assert prov.parameters["detection"]["parameters"]["auto"]["chosen"] == "correlation"
    assert prov.parameters["reference"] == [[0, 4], [0, 8]] and smap.calibration == dc.calibration
    # ... and a multilayer (alternating +-1 % eps_xx along Rx) referenced to its first layer.
    ml, mtruth = strained_scan((8, 8), (128, 128), kind="multilayer", strain=0.01, layer_width=2, dose=None)
    ml_file = tmp_path / "ml.h5"
    distill4d.write(ml_file, ml)
    out2 = tmp_path / "ml_strain.h5"
    assert main(["strain", str(ml_file), "-o", str(out2), "--no-progress", "--reference", "0:2,0:8"]) == 0
    smap2 = StrainMap.from_hdf5(out2)
    expected = (1 + mtruth.eps_xx) / (1 + mtruth.eps_xx[0, 0]) - 1  # stretch along x relative to layer 1
    assert np.ptp(expected) > 0.019  # the layers really differ by 2 %
    np.testing.assert_allclose(smap2.eps_xx, expected, atol=5e-4)
    np.testing.assert_allclose(smap2.eps_yy, 0.0, atol=5e-4)
    assert main(["strain", str(ml_file), "-o", str(tmp_path / "x.h5"), "--reference", "0:2"]) == 1
    assert "x0:x1,y0:y1" in capsys.readouterr().err
    # --smooth averages over neighbouring positions: the 2-row layers (+-1 %) blur towards each other
    out3 = tmp_path / "ml_smooth.h5"
    assert main(["strain", str(ml_file), "-o", str(out3), "--no-progress", "--reference", "0:2,0:8",
                 "--smooth", "1"]) == 0
    np.testing.assert_allclose(StrainMap.from_hdf5(out3).eps_xx, smap2.smoothed(1.0).eps_xx, atol=1e-12)
    assert np.ptp(StrainMap.from_hdf5(out3).eps_xx[2:6]) < 0.8 * np.ptp(expected[2:6])
    assert main(["strain", str(ml_file), "-o", str(tmp_path / "y.h5"), "--smooth", "-1"]) == 1
    assert "sigma" in capsys.readouterr().err


def test_bad_input_is_one_line_and_a_bug_shows_its_traceback(scan_file, tmp_path, capsys, monkeypatch):
    from distill4d import Distill4dError
    from distill4d.cli import imaging

    path, _ = scan_file
    # bad input: one line on stderr, no traceback, exit code 1
    assert main(["strain", str(path), "-o", str(tmp_path / "x.h5"), "--reference", "0:2"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("distill4d: error: --reference must look like x0:x1,y0:y1")
    assert "Traceback" not in err
    assert main(["info", str(path), "--dataset", "/nope"]) == 1  # a missing dataset is bad input too
    err = capsys.readouterr().err
    assert "distill4d: error:" in err and "/nope" in err and "Traceback" not in err
    bad = tmp_path / "complex.npy"  # the wrong kind of data in a file is bad input, not a bug
    np.save(bad, np.ones((2, 2, 4, 4), dtype=np.complex64))
    assert main(["virtual", str(bad), "-o", str(tmp_path / "c.h5")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("distill4d: error:") and "real detector intensities" in err and "Traceback" not in err

    # an internal bug (here a KeyError inside a command) is not dressed up as a user error
    def broken(args):
        raise KeyError("internal")

    monkeypatch.setattr(imaging, "cmd_info", broken)
    with pytest.raises(KeyError, match="internal"):
        main(["info", str(path)])
    assert "distill4d: error" not in capsys.readouterr().err

    # --debug shows the traceback of bad input as well
    with pytest.raises(Distill4dError, match="x0:x1,y0:y1"):
        main(["--debug", "strain", str(path), "-o", str(tmp_path / "x.h5"), "--reference", "0:2"])


def test_bad_input_in_a_subprocess_prints_one_line(tmp_path):
    code = "import sys; from distill4d.cli import main; sys.exit(main(sys.argv[1:]))"
    out = subprocess.run([sys.executable, "-c", code, "info", str(tmp_path / "missing.h5")],
                         capture_output=True, text=True, env={**__import__("os").environ,
                                                              "PYTHONPATH": str(_src())})
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("distill4d: error:") and "missing.h5" in out.stderr


def _src():
    from pathlib import Path

    return Path(distill4d.__file__).resolve().parents[1]


def test_python_m_runs_the_command():
    out = subprocess.run([sys.executable, "-m", "distill4d.cli", "--version"], capture_output=True, text=True,
                         env={**__import__("os").environ, "PYTHONPATH": str(_src())})
    assert out.returncode == 0 and out.stdout.startswith("distill4d ")


def test_a_wrongly_typed_config_value_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('max_steps = "ten"\n')
    lib = tmp_path / "lib"
    lib.mkdir()
    assert main(["train", "fcunet", "--library", str(lib), "--out", str(tmp_path / "w.pt"), "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("distill4d: error:") and "max_steps must be an integer, got 'ten'" in err
    cfg.write_text("model = 3\n")
    assert main(["train", "fcunet", "--library", str(lib), "--out", str(tmp_path / "w.pt"), "--config", str(cfg)]) == 1
    assert "[model] must be a table" in capsys.readouterr().err


def test_disks_and_strain_print_a_short_parameter_line_and_keep_the_full_set(tmp_path, capsys):
    """The screen shows the parameters a user chooses (method, probe, radius, threshold) in a short
    line; the full set (lattice sites included) is in the output file's provenance."""
    from distill4d.bragg import BraggPeaks
    from distill4d.lattice import StrainMap
    from distill4d.simulate.kinematic import strained_scan

    dc, _ = strained_scan((3, 3), (128, 128), kind="uniform", strain=0.01)
    scan = tmp_path / "s.h5"
    distill4d.write(scan, dc)
    for cmd in ("disks", "strain"):
        out = tmp_path / f"{cmd}.h5"
        assert main([cmd, str(scan), "-o", str(out), "--no-progress", "--no-png"]) == 0
        lines = capsys.readouterr().out.splitlines()
        line = next(x for x in lines if x.startswith("found "))
        assert len(line) < 300 and "sites_px" not in line
        assert "radius_px 4.0" in line and "threshold" in line and "probe disk" in line
        assert max(map(len, lines)) < 300
        params = (BraggPeaks.from_hdf5(out).provenance.parameters if cmd == "disks"
                  else StrainMap.from_hdf5(out).provenance.parameters["detection"]["parameters"])
        assert "sites_px" in params and "min_relative_intensity" in params


def test_strain_on_noise_marks_every_position_invalid_and_warns_once(tmp_path, capsys):
    """No crystal: no lattice anywhere, so the map is NaN (mask True) with one warning line."""
    from distill4d.lattice import StrainMap

    rng = np.random.default_rng(0)
    cal = Calibration(q_pixel_inv_A=0.025, energy_eV=300e3, semiangle_mrad=2.0)
    scan = tmp_path / "noise.h5"
    distill4d.write(scan, DataCube(rng.poisson(1.0, (4, 4, 128, 128)).astype(np.float32), cal))
    out = tmp_path / "strain.h5"
    assert main(["strain", str(scan), "-o", str(out), "--no-progress"]) == 0
    captured = capsys.readouterr()
    warnings = [x for x in captured.err.splitlines() if "warning" in x]
    assert len(warnings) == 1 and "no lattice at 16 of 16 positions" in warnings[0]
    assert "% needed" in warnings[0] and "no crystal lattice" in warnings[0]
    assert "strain (median" not in captured.out  # no numbers are reported
    smap = StrainMap.from_hdf5(out)
    assert smap.mask.all() and np.isnan(smap.eps_xx).all()
    assert out.with_suffix(".png").exists()


def _options(parser, name="distill4d"):
    """(command, argparse action) of every option and positional argument, subcommands included."""
    import argparse

    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for n, sp in a.choices.items():
                yield from _options(sp, f"{name} {n}")
        elif not isinstance(a, (argparse._HelpAction, argparse._VersionAction)):
            yield name, a


def test_every_option_has_help_and_states_its_default():
    """--help describes every option (FILE included: its formats and the FILE.h5:/path form), and
    names the default of each option that has one."""
    from distill4d.cli import build_parser

    missing = []
    for cmd, a in _options(build_parser()):
        flag = "/".join(a.option_strings) or a.dest
        d = a.default
        if not a.help:
            missing.append(f"{cmd} {flag}: no help")
        elif not (d is None or d is False or a.required) and "default" not in a.help.lower():
            missing.append(f"{cmd} {flag}: default {d!r} not stated")
        if a.dest == "file" and not a.option_strings:
            assert a.metavar == "FILE" and "FILE.h5:/" in a.help and ".mib" in a.help, cmd
    assert not missing, "\n".join(missing)
