"""`distill4d segment`: images, series, HDF5 datasets and 4D scans to a results file with labels,
labels on the window grid, fractions and the latent; saved models re-used; clear errors."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

import distill4d
from distill4d.cli import main
from distill4d.segment import mean_iou
from distill4d.simulate.domains import simulate_domains


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    d = simulate_domains((160, 160), n_frames=3, angles_deg=(10, 100), periods_px=6, fraction_range=(0.3, 0.7),
                         dose=30, seed=21)
    path = tmp_path_factory.mktemp("seg") / "series.npy"
    np.save(path, d.images)
    return path, d


def _read(path):
    with h5py.File(path) as f:
        return {k: f["results"][k][()] for k in f["results"]}, dict(f["results/labels_windows"].attrs), dict(f.attrs)


def test_series_to_labels_fractions_and_figure(series, tmp_path, capsys):
    path, d = series
    out = tmp_path / "domains.h5"
    argv = ["segment", str(path), "-o", str(out), "--method", "kmeans", "--domains", "2", "--window", "32", "--step", "8",
            "--plot", str(tmp_path / "domains.png")]
    assert main(argv) == 0
    arrays, grid, attrs = _read(out)
    assert arrays["labels"].shape == (3, 160, 160) and arrays["labels"].dtype == np.int16
    assert arrays["labels_windows"].shape == (3, 17, 17) and grid["window_px"] == 32 and grid["step_px"] == 8
    assert arrays["fractions"].shape == (3, 2) and arrays["channels"].shape == (3, 17, 17, 2)
    assert attrs["method"] == "kmeans"
    assert mean_iou(arrays["labels"], d.labels) > 0.85
    # the fractions follow the truth's change over the series (0.3 -> 0.7 for the 10° variant)
    assert np.abs(arrays["fractions"][:, 0] - d.fractions[:, 0]).max() < 0.1
    assert (tmp_path / "domains.png").stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "2 domain variants" in printed and "walls: placed by fringe energy" in printed
    assert main(argv) == 1  # outputs exist: refused without --force
    assert "exists; pass --force" in capsys.readouterr().err


def test_png_and_hdf5_dataset_inputs(tmp_path):
    from PIL import Image

    d = simulate_domains((128, 128), angles_deg=(0, 90), periods_px=6, seed=2)
    img = (d.images[0] * 200).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "im.png")
    with h5py.File(tmp_path / "im.h5", "w") as f:
        f["entry/image"] = d.images[0]
    for src in (str(tmp_path / "im.png"), f"{tmp_path / 'im.h5'}:/entry/image"):
        out = tmp_path / ("o_png.h5" if src.endswith("png") else "o_h5.h5")
        assert main(["segment", src, "-o", str(out), "--method", "nmf", "--domains", "2", "--window", "32",
                     "--step", "8", "--no-png"]) == 0
        arrays, _, _ = _read(out)
        assert arrays["labels"].shape == (1, 128, 128)
        assert mean_iou(arrays["labels"], d.labels) > 0.85


def test_4d_scan_segmented_on_its_patterns(tmp_path):
    # two domains of diffraction patterns: spots along the first or the second detector axis
    rng = np.random.default_rng(0)
    q = np.zeros((2, 32, 32), np.float32)
    q[0, 16, 16] = q[1, 16, 16] = 100
    for s in (-8, 8):
        q[0, 16 + s, 16] = 20
        q[1, 16, 16 + s] = 20
    truth = np.zeros((12, 10), np.int16)
    truth[:, 5:] = 1
    data = rng.poisson(q[truth] + 0.5).astype(np.float32)
    dc = distill4d.DataCube.from_array(data)
    scan = tmp_path / "scan.h5"
    distill4d.write(scan, dc)
    out = tmp_path / "d.h5"
    assert main(["segment", str(scan), "-o", str(out), "--method", "kmeans", "--domains", "2", "--no-progress"]) == 0
    arrays, _, _ = _read(out)
    assert arrays["labels"].shape == (1, 12, 10)
    assert mean_iou(arrays["labels"], truth[None]) > 0.9
    # orientations of the two pattern variants: 0° (spots along the first axis) and 90°
    a = np.sort(np.mod(arrays["variant_angles_deg"] + 45, 180) - 45)  # 180° is 0°
    assert np.allclose(a, [0, 90], atol=3)


@pytest.mark.slow
def test_autoencoder_saves_and_reuses_its_model(series, tmp_path, capsys):
    path, d = series
    m = tmp_path / "ae.pt"
    assert main(["segment", str(path), "-o", str(tmp_path / "a.h5"), "--method", "autoencoder", "--domains", "2",
                 "--window", "32", "--step", "8", "--steps", "300", "--save-model", str(m), "--no-png"]) == 0
    assert m.is_file() and m.with_suffix(".json").is_file()
    assert main(["segment", str(path), "-o", str(tmp_path / "b.h5"), "--method", "autoencoder", "--domains", "2",
                 "--model", str(m), "--no-png"]) == 0
    a, _, attrs_a = _read(tmp_path / "a.h5")
    b, grid, attrs_b = _read(tmp_path / "b.h5")
    assert attrs_a["model_path"] == attrs_b["model_path"] == str(m)
    assert grid["window_px"] == 32  # the model's window geometry
    assert np.array_equal(a["labels"], b["labels"])  # the same model on the same frames
    assert "rotation_deg" in b and "scale" in b
    assert mean_iou(b["labels"], d.labels) > 0.8  # measured 0.842 after 300 steps (k-means: test above, > 0.85)


@pytest.mark.parametrize("extra, message", [
    (["--window", "512"], "window_px must be at most the image size 160x160 px, got 512"),
    (["--step", "0"], "step_px must be >= 1, got 0"),
    (["--method", "kmeans", "--model", "m.pt"], "--model is a saved autoencoder"),
    (["--method", "kmeans", "--domains", "0"], "domains must be >= 1, got 0"),
])
def test_bad_arguments_are_one_clear_line(series, tmp_path, capsys, extra, message):
    path, _ = series
    argv = ["segment", str(path), "-o", str(tmp_path / "x.h5"), "--no-png"] + extra
    if "--method" not in extra:
        argv += ["--method", "kmeans"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0


def test_nan_image_is_refused(tmp_path, capsys):
    img = np.zeros((64, 64), np.float32)
    img[3, 3] = np.nan
    np.save(tmp_path / "nan.npy", img)
    assert main(["segment", str(tmp_path / "nan.npy"), "-o", str(tmp_path / "x.h5"), "--method", "kmeans",
                 "--window", "32"]) == 1
    assert "1 NaN or Inf pixels" in capsys.readouterr().err


def test_no_refine_keeps_the_window_read_out(series, tmp_path, capsys):
    """--no-refine: the labels of the window read-out, and the parameters say so; the default's
    walls by fringe energy score at least as high on the same series."""
    import json

    path, d = series
    base = ["segment", str(path), "--method", "kmeans", "--domains", "2", "--window", "32", "--step", "8", "--no-png"]
    assert main(base + ["-o", str(tmp_path / "plain.h5"), "--no-refine"]) == 0
    assert "walls: window read-out (refine=False)" in capsys.readouterr().out
    assert main(base + ["-o", str(tmp_path / "refined.h5")]) == 0
    plain, _, attrs = _read(tmp_path / "plain.h5")
    refined, _, attrs_r = _read(tmp_path / "refined.h5")
    assert json.loads(attrs["parameters"])["walls"]["applied"] is False
    assert json.loads(attrs_r["parameters"])["walls"]["applied"] is True
    assert mean_iou(refined["labels"], d.labels) >= mean_iou(plain["labels"], d.labels) - 0.002
