"""Tests of distill4d.cli.imaging (info, virtual, com) on real files and their input options."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

import distill4d
from distill4d.cli import main

HOT = "Merlin_navigation4x2_signalNx256_ROI/002_merlin_test_roi_sig256x128_nav4x2_hot_pixel_52x_39y.mib"


@pytest.mark.parametrize("command", ["virtual", "com"])
def test_sparse_merlin_file_says_what_it_found_and_which_flags_to_pass(merlin: Path, tmp_path: Path, capsys,
                                                                       command: str) -> None:
    out = tmp_path / "x.h5"
    assert main([command, str(merlin / HOT), "-o", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("distill4d: error: no bright-field disk found") and "\n" not in err
    assert "only 6 of its 32768 pixels" in err and "qx, qy = 88, 52" in err  # the hot pixel
    assert "--origin-px QX QY" in err and "--bf R" in err
    assert not out.exists()


def test_sparse_merlin_file_runs_with_the_origin_and_radii_given(merlin: Path, tmp_path: Path, capsys) -> None:
    v = tmp_path / "v.h5"
    assert main(["virtual", str(merlin / HOT), "--origin-px", "64", "128", "--bf", "40", "--adf", "60",
                 "-o", str(v), "--no-png", "--no-progress"]) == 0
    res = distill4d.io.read_results(v)
    assert res["bf"].shape == (2, 4) and res["adf"].shape == (2, 4)
    c = tmp_path / "c.h5"
    assert main(["com", str(merlin / HOT), "--origin-px", "64", "128", "-o", str(c), "--no-png",
                 "--no-progress"]) == 0
    assert distill4d.io.read_results(c)["com_qx"].shape == (2, 4)


def _stack_file(path: Path) -> np.ndarray:
    rng = np.random.default_rng(2)
    data = rng.poisson(2.0, (12, 32, 32)).astype(np.uint16)
    data[:, 12:20, 12:20] += 100
    with h5py.File(path, "w") as f:
        d = f.create_dataset("entry/data/data", data=data)
        d.attrs["beam_energy"] = 200.0
        d.attrs["beam_energy_units"] = "kV"
        f["entry/data"].attrs["q_pixel_inv_A"] = 0.025
    return data


def test_scan_shape_reads_a_stack_from_the_command_line(tmp_path: Path, capsys) -> None:
    path = tmp_path / "frames.h5"
    data = _stack_file(path)
    out = tmp_path / "v.h5"
    assert main(["virtual", str(path), "--scan-shape", "3", "4", "--bf", "4", "--origin-px", "15.5", "15.5",
                 "-o", str(out), "--no-png", "--no-progress"]) == 0
    bf = np.asarray(distill4d.io.read_results(out)["bf"])
    mask = distill4d.imaging.circle_mask((32, 32), (15.5, 15.5), 4)
    np.testing.assert_array_equal(bf, data.reshape(3, 4, 32, 32)[:, :, mask].sum(axis=-1))
    assert main(["virtual", str(path), "-o", str(tmp_path / "w.h5"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "--scan-shape RX RY" in err and "scan_shape=(" in err.split("--scan-shape RX RY")[1][:30]


def test_info_reads_the_arina_data_file_with_a_scan_shape(det: Path, capsys) -> None:
    assert main(["info", str(det / "test_00_data_000001.h5"), "--scan-shape", "4", "4"]) == 0
    assert "scan 4x4, patterns 192x192" in capsys.readouterr().out
    assert main(["info", str(det / "test_00_data_000001.h5")]) == 1
    assert "--scan-shape RX RY" in capsys.readouterr().err


def test_info_says_which_attributes_calibrated_the_file(tmp_path: Path, capsys) -> None:
    path = tmp_path / "frames.h5"
    _stack_file(path)
    assert main(["info", f"{path}:/entry/data/data", "--scan-shape", "3", "4"]) == 0
    out = capsys.readouterr().out
    assert "beam energy      200 kV" in out and "q pixel size     0.025 1/Å" in out
    assert "calibration read from HDF5 attributes:" in out
    assert "energy_eV = 200000 from /entry/data/data: beam_energy = 200 (kV, from beam_energy_units)" in out
    assert "q_pixel_inv_A = 0.025 from /entry/data: q_pixel_inv_A = 0.025" in out


@pytest.mark.parametrize("how", ["inline", "flag"])
def test_figure_title_names_the_file_and_dataset(tmp_path: Path, monkeypatch, how: str) -> None:
    path = tmp_path / "scan.h5"
    cube = distill4d.DataCube(np.random.default_rng(0).poisson(5.0, (4, 4, 16, 16)).astype(np.float32))
    distill4d.write(path, cube)
    titles = []
    monkeypatch.setattr("distill4d.plot.save_images_png", lambda *a, title="", **k: titles.append(title))
    name = "/datacube_root/datacube/data"
    src = [f"{path}:{name}"] if how == "inline" else [str(path), "--dataset", name]
    common = ["--origin-px", "7.5", "7.5", "--no-progress"]
    assert main(["virtual", *src, *common, "--bf", "3", "--adf", "5", "-o", str(tmp_path / "v.h5")]) == 0
    assert main(["com", *src, *common, "-o", str(tmp_path / "c.h5")]) == 0
    assert titles == [f"virtual images: scan.h5:{name}", f"centre of mass / iDPC: scan.h5:{name}"]
