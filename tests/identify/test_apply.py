"""Tests of distill4d.identify.apply and `distill4d identify`: a scan's Bragg peaks -> crystal system,
space group and lattice parameters, per pattern and aggregated over a region."""

import numpy as np
import pytest

from distill4d import Distill4dError
from distill4d.bragg import BraggPeaks
from distill4d.calibration import Calibration
from distill4d.cli import main
from distill4d.identify import CrystalIdentifier, identify
from distill4d.identify.encode import encode_batch
from distill4d.identify.models import SYSTEMS
from distill4d.results import read_results

PIX = 0.02  # 1/Å per detector pixel
ORIGIN = (64.0, 64.0)
CUBIC = ("Si", "Al", "Au", "NaCl", "Fe", "Cu")
HEXAGONAL = ("Mg", "Ti", "MoS2", "GaN", "Zn", "hBN")


@pytest.fixture(scope="module")
def model():
    from distill4d.simulate.spots import spot_library

    lib = spot_library([], prototypes=CUBIC + HEXAGONAL, n_orientations=30, seed=0, excitation_error_inv_A=0.03)
    X = encode_batch(lib.qx, lib.qy, lib.intensity, lib.counts)
    st = lib.structure
    return CrystalIdentifier(n_estimators=30, seed=0).fit(X, lib.system[st], lib.space_group[st], lib.cellpar[st])


def _peaks(name="Cu", shape=(3, 4), seed=5, calibration=True, scale=1.0):
    """A scan of ``name`` (a held-in prototype) in random orientations: spots in detector pixels plus the direct beam."""
    from distill4d.simulate.crystals import prototype
    from distill4d.simulate.spots import spot_patterns

    pats = spot_patterns(prototype(name), shape[0] * shape[1], rng=seed, excitation_error_inv_A=0.03)
    spots = []
    for qx, qy, it in pats:
        qx, qy = qx * scale / PIX + ORIGIN[0], qy * scale / PIX + ORIGIN[1]
        spots.append(np.column_stack([np.r_[ORIGIN[0], qx], np.r_[ORIGIN[1], qy], np.r_[10.0, it]]))
    cal = Calibration(q_pixel_inv_A=PIX, origin_px=ORIGIN) if calibration else Calibration()
    return BraggPeaks.from_list(spots, shape, calibration=cal)


def test_identify_peaks_per_pattern_and_aggregate(model):
    res = identify(_peaks("Cu"), model, region=(slice(0, 2), slice(0, 4)))
    assert res.system.shape == (3, 4) and res.system_proba.shape == (3, 4, 7)
    assert res.space_group.shape == (3, 4, 3) and res.lattice.shape == (3, 4, 6)
    assert res.valid.sum() >= 8
    assert res.n_aggregated == res.valid[:2].sum()
    # Cu was trained on (an in-library structure): its aggregate over 8 patterns is cubic and 225
    assert SYSTEMS[res.agg_system] == "cubic"
    assert res.agg_space_group[0] == 225
    assert abs(res.agg_lattice[0] - 3.61) < 0.1 * 3.61
    assert np.all(res.agg_lattice_std >= 0) and np.all(np.isfinite(res.agg_lattice))
    text = res.summary()
    assert "cubic" in text and "space group" in text


def test_calibration_error_moves_lattice_not_class(model):
    a = identify(_peaks("Mg", scale=1.0), model)
    b = identify(_peaks("Mg", scale=1.0 / 1.02), model)  # patterns 2 % smaller in 1/Å: the cell 2 % larger
    np.testing.assert_array_equal(a.system, b.system)
    assert a.agg_system == b.agg_system
    np.testing.assert_allclose(b.agg_lattice[:3] / a.agg_lattice[:3], 1.02, rtol=2e-3)


def test_bad_input_is_refused(model):
    with pytest.raises(Distill4dError, match="q_pixel_inv_A"):
        identify(_peaks(calibration=False), model)
    empty = BraggPeaks.from_list([np.zeros((0, 3))] * 4, (2, 2), calibration=Calibration(q_pixel_inv_A=PIX, origin_px=ORIGIN))
    with pytest.raises(Distill4dError, match="no peak"):
        identify(empty, model)
    beam_only = BraggPeaks.from_list([np.array([[64.0, 64.0, 1.0]])] * 4, (2, 2),
                                     calibration=Calibration(q_pixel_inv_A=PIX, origin_px=ORIGIN))
    with pytest.raises(Distill4dError, match="no pattern has 3 or more spots"):
        identify(beam_only, model)
    with pytest.raises(Distill4dError, match="aggregation"):
        identify(_peaks(), model, aggregation="vote")
    with pytest.raises(TypeError, match="BraggPeaks or a DataCube"):
        identify(np.zeros((2, 2, 8, 8)), model)


def test_cli_identify_writes_results(model, tmp_path, capsys):
    peaks_file = tmp_path / "peaks.h5"
    _peaks("Cu").to_hdf5(peaks_file)
    model_file = tmp_path / "m.npz"
    model.save(model_file)
    out = tmp_path / "crystals.h5"
    assert main(["identify", str(peaks_file), "--model", str(model_file), "-o", str(out), "--region", "0:3,0:4",
                 "--no-png"]) == 0
    text = capsys.readouterr().out
    assert "cubic" in text and "wrote" in text
    r = read_results(out)
    assert r["probabilities"].shape == (3, 4, 7) and r["space_group"].shape == (3, 4, 3)
    assert r.attrs["aggregate_crystal_system_name"] == "cubic"
    assert r.attrs["crystal_systems"].split(",") == list(SYSTEMS)
    assert r["aggregate_lattice_parameters"].shape == (6,)
    # no calibration: one clear line, exit code 1
    bare = tmp_path / "bare.h5"
    _peaks(calibration=False).to_hdf5(bare)
    assert main(["identify", str(bare), "--model", str(model_file), "-o", str(tmp_path / "x.h5"), "--no-png"]) == 1
    err = capsys.readouterr().err
    assert "has no calibration q_pixel_inv_A" in err and "--q-pixel-inv-A" in err
    # ... which the command line can give
    assert main(["identify", str(bare), "--model", str(model_file), "-o", str(tmp_path / "y.h5"), "--no-png",
                 "--q-pixel-inv-A", str(PIX), "--origin-px", "64", "64"]) == 0


def test_shipped_model_loads_with_its_card():
    from distill4d.identify.apply import default_model_path
    from distill4d.identify.encode import N_FEATURES
    from distill4d.identify import load_default
    from distill4d.ml._common.model_files import read_card

    path = default_model_path()
    assert path.stat().st_size < 5e6  # a few MB at most
    card = read_card(str(path), "identify")
    assert card.command.startswith("distill4d train identify")
    held = card.metrics
    assert held["system_accuracy"] > held["most_common_system_fraction"] + 0.1  # better than chance on held-out
    model = load_default()
    X = np.abs(np.random.default_rng(0).normal(size=(5, N_FEATURES))) + 0.1
    out = model.predict(X)
    assert out["system_proba"].shape == (5, 7) and np.allclose(out["system_proba"].sum(1), 1)
    assert out["space_group"].shape == (5, 3) and out["lattice"].shape == (5, 6)
    assert set(card["config"]) >= {"space_groups", "n_structures", "n_orientations", "seed"}


def test_cli_identify_runs_the_disk_detection_on_a_scan(model, tmp_path, capsys):
    import distill4d
    from distill4d.simulate.kinematic import strained_scan

    dc, _ = strained_scan((4, 4), (64, 64), kind="uniform", strain=0.0, dose=None)
    scan = tmp_path / "scan.h5"
    distill4d.write(scan, dc)
    model_file = tmp_path / "m.npz"
    model.save(model_file)
    out = tmp_path / "c.h5"
    assert main(["identify", str(scan), "--model", str(model_file), "-o", str(out), "--no-png", "--no-progress",
                 "--scheduler", "inline"]) == 0
    r = read_results(out)
    assert r["valid"].shape == (4, 4) and r["valid"].all()  # every pattern's disks were found and identified
    assert "identified 16 of 16 patterns" in capsys.readouterr().out


def test_predict_spots_refuses_lists_of_different_shapes(model):
    from distill4d.identify import predict_spots

    qx = np.zeros((2, 5))
    with pytest.raises(Distill4dError, match=r"one shape \(P, K\)"):
        predict_spots(qx, qx[:, :4], qx, np.array([5, 5]), model)
    with pytest.raises(Distill4dError, match=r"count \(P,\)"):
        predict_spots(qx, qx, qx, np.array([5]), model)
