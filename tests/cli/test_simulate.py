"""`distill4d simulate scan|library` on the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("abtem")

from distill4d.cli import main  # noqa: E402


@pytest.mark.e2e
def test_simulate_scan_writes_data_and_truth(tmp_path, capsys):
    out = tmp_path / "scan.h5"
    argv = ["simulate", "scan", "--preset", "gradient", "--scan", "6x4", "--shape", "64", "--q-pixel-inv-A", "0.04",
            "--thickness-A", "60", "--strain", "0.02", "-o", str(out)]
    assert main(argv) == 0
    from distill4d.simulate.scan import load_scan

    dc, truth = load_scan(out)
    assert dc.shape == (6, 4, 64, 64)
    assert truth.eps_xx[0, 0] == pytest.approx(-0.02) and truth.eps_xx[-1, 0] == pytest.approx(0.02)
    assert np.allclose(np.diff(truth.eps_xx[:, 0]), 0.04 / 5)
    # an existing output is kept unless --force
    before = out.stat().st_mtime_ns
    assert main(argv) == 1
    assert "already exists" in capsys.readouterr().err
    assert out.stat().st_mtime_ns == before


def test_simulate_scan_bad_zone(tmp_path, capsys):
    assert main(["simulate", "scan", "--zone", "1,1", "-o", str(tmp_path / "x.h5")]) == 1
    assert "--zone must be 3 whole numbers" in capsys.readouterr().err


def test_simulate_library_resumes(tmp_path, capsys):
    cfg = tmp_path / "lib.toml"
    cfg.write_text('n_samples = 2\nshard_size = 1\nshape = [32, 32]\nq_pixel_inv_A = 0.06\n'
                   'prototypes = ["Cu"]\nthickness_A = [10, 30]\nn_thicknesses = 1\nenergies_kV = [300]\n')
    out = tmp_path / "lib"
    base = ["simulate", "library", "--config", str(cfg), "-o", str(out), "--scheduler", "inline", "--no-progress"]
    assert main(base + ["--max-shards", "1"]) == 0
    assert "1/2 shards (partial" in capsys.readouterr().out
    summary = tmp_path / "s.json"
    assert main(base + ["--summary", str(summary)]) == 0
    assert "2/2 shards (complete)" in capsys.readouterr().out
    assert json.loads(summary.read_text())["shards_built"] == 1
    bad = tmp_path / "bad.toml"
    bad.write_text("n_samples = [")
    assert main(["simulate", "library", "--config", str(bad), "-o", str(tmp_path / "z")]) == 1
    assert "cannot parse" in capsys.readouterr().err
