"""`distill4d strain`: region arguments are checked against the scan before any pattern is read."""

import numpy as np
import pytest

import distill4d
from distill4d.cli import main


@pytest.fixture
def scan(tmp_path):
    from distill4d.simulate.kinematic import strained_scan

    dc, _ = strained_scan((6, 6), (64, 64), kind="uniform", strain=0.01, dose=None)
    path = tmp_path / "scan.h5"
    distill4d.write(path, dc)
    return path


@pytest.fixture
def no_detection(monkeypatch):
    """Fail the test if the disk detection starts."""
    import distill4d.bragg

    def boom(*args, **kwargs):
        raise AssertionError("the disk detection ran")

    monkeypatch.setattr(distill4d.bragg, "find_bragg_disks", boom)


@pytest.mark.parametrize("method", ["auto", "correlation", "rim", "template", "com", "ccstae", "poisson"])
@pytest.mark.parametrize("region, message", [
    ("50:100,50:100", "--reference region 50:100,50:100 selects no position of the scan of 6 x 6 positions"),
    ("abc", "--reference must look like x0:x1,y0:y1 (scan positions), got 'abc'"),
    ("3:3,0:6", "--reference region 3:3,0:6 selects no position"),
])
def test_bad_regions_are_refused_before_the_detection(scan, tmp_path, capsys, no_detection, method, region, message):
    out = tmp_path / "s.h5"
    assert main(["strain", str(scan), "--method", method, "-o", str(out), "--reference", region]) == 1
    err = capsys.readouterr().err
    assert err.startswith("distill4d: error: " + message) and err.count("\n") == 1
    assert not out.exists() and not (tmp_path / "s.h5.partial").exists()


def test_a_region_reaching_past_the_scan_is_clipped_with_a_warning(scan, tmp_path, capsys):
    out = tmp_path / "s.h5"
    assert main(["strain", str(scan), "-o", str(out), "--reference", "0:100,-8:3", "--no-progress", "--no-png"]) == 0
    err = capsys.readouterr().err
    assert ("distill4d: warning: --reference region 0:100,-8:3 reaches past the scan of 6 x 6 positions; "
            "using 0:6,0:3") in err
    smap = distill4d.lattice.StrainMap.from_hdf5(out)
    assert smap.provenance.parameters["reference"] == [[0, 6], [0, 3]]  # the region used
    assert np.nanmax(np.abs(smap.eps_xx)) < 1e-3
    assert not (tmp_path / "s.h5.partial").exists()


def test_detection_is_kept_until_the_output_is_written(scan, tmp_path, capsys, monkeypatch):
    import distill4d.lattice
    from distill4d import Distill4dError

    real = distill4d.lattice.strain_map

    def failing(*args, **kwargs):
        raise Distill4dError("the fit failed")

    monkeypatch.setattr(distill4d.lattice, "strain_map", failing)
    out = tmp_path / "s.h5"
    argv = ["strain", str(scan), "-o", str(out), "--no-progress", "--no-png"]
    assert main(argv) == 1
    assert list((tmp_path / "s.h5.partial" / "disks").glob("tile_*.npz"))  # the detection can be resumed
    monkeypatch.setattr(distill4d.lattice, "strain_map", real)
    assert main(argv) == 0
    assert out.exists() and not (tmp_path / "s.h5.partial").exists()


@pytest.mark.parametrize("method", ["sobel", "rim", "template"])
def test_named_robust_methods_run_and_are_recorded(scan, tmp_path, capsys, method):
    from distill4d.lattice import StrainMap

    out = tmp_path / "s.h5"
    assert main(["strain", str(scan), "--method", method, "-o", str(out), "--reference", "0:3,0:6",
                 "--no-progress"]) == 0
    smap = StrainMap.from_hdf5(out)
    assert smap.provenance.parameters["detection"]["method"] == method
    # a uniform 1 % strain referenced to part of the same scan reads 0 everywhere (noise-free)
    assert np.nanmax(np.abs(smap.eps_xx)) < 1e-3 and np.nanmax(np.abs(smap.eps_yy)) < 1e-3


def test_poisson_fit_with_a_tv_prior_writes_standard_errors(tmp_path, capsys):
    """Issue 33: `--method poisson --prior tv 1` on a noisy ±1 % multilayer: the layers are
    found, standard errors written beside the maps, the prior recorded."""
    from distill4d.results import read_results
    from distill4d.simulate.kinematic import strained_scan

    dc, truth = strained_scan((12, 6), (96, 96), kind="multilayer", strain=0.01, layer_width=3, dose=1e4, seed=2,
                              edge_px=2.0, background=0.02)
    path = tmp_path / "ml.h5"
    distill4d.write(path, dc)
    out = tmp_path / "s.h5"
    assert main(["strain", str(path), "--method", "poisson", "--reference", "0:3,0:6", "--prior", "tv", "1",
                 "-o", str(out), "--no-progress"]) == 0
    r = read_results(out)
    assert {"se_eps_xx", "se_eps_yy", "se_eps_xy", "se_theta", "shift_px"} <= set(r.arrays)
    assert r.provenance.parameters["prior"]["tv"] == 1.0
    exx = np.asarray(r["eps_xx"])
    assert np.nanmedian(exx[3:6]) == pytest.approx(-0.0198, abs=1.5e-3)  # the -1 % layer against the +1 % one
    assert np.nanmedian(exx[6:9]) == pytest.approx(0.0, abs=1e-3)
    assert 0 < np.nanmedian(r["se_eps_xx"]) < 2e-3


@pytest.mark.parametrize("argv, message", [
    (["--method", "poisson"], "--method poisson needs --reference"),
    (["--prior", "tv", "-1", "--reference", "0:3,0:6"], "prior 'tv' value must be in"),
    (["--prior", "median", "2"], "prior must be 'none', 'gaussian SIGMA' or 'tv LAMBDA'"),
    (["--prior", "tv", "1", "--smooth", "1"], "--smooth SIGMA is --prior gaussian SIGMA"),
])
def test_bad_poisson_and_prior_options_are_one_line(scan, tmp_path, capsys, argv, message):
    assert main(["strain", str(scan), "-o", str(tmp_path / "s.h5"), *argv]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s.h5").exists()
