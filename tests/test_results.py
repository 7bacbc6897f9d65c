"""The result container: arrays + units + calibration + provenance, one writer, round trip."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

import distill4d
from distill4d import Calibration
from distill4d.io import read_results, write
from distill4d.results import Provenance, Results, command_line

CAL = Calibration(scan_step_A=2.5, q_pixel_inv_A=0.02, energy_eV=300e3, origin_px=(31.5, 32.0))


def test_results_round_trip_with_calibration_and_provenance(tmp_path):
    prov = Provenance("virtual", {"bf": (0, 5.0), "region": (slice(0, 4), slice(2, 6))},
                      inputs=[tmp_path / "scan.h5"], command="distill4d virtual scan.h5")
    res = Results({"bf": np.arange(12.0).reshape(3, 4), "mask": np.eye(3, dtype=np.uint8)},
                  units={"bf": "counts"}, calibration=CAL, provenance=prov, attrs={"note": "x"})
    assert res.units == {"bf": "counts", "mask": ""} and "virtual" in repr(res)
    out = res.to_h5(tmp_path / "r.h5")
    with pytest.raises(FileExistsError):
        res.to_h5(out)
    back = Results.from_h5(out)
    for k in res:
        np.testing.assert_array_equal(back[k], res[k])
    assert back.units == res.units and back.calibration == CAL and back.attrs["note"] == "x"
    assert back.provenance == prov and back.provenance.version == distill4d.__version__
    assert back.provenance.parameters == {"bf": [0, 5.0], "region": [[0, 4], [2, 6]]}
    assert back.provenance.inputs == (str(tmp_path / "scan.h5"),) and back.provenance.created
    with h5py.File(out) as f:  # the layout the docs describe
        assert f.attrs["distill4d_format"] == "results" and f["results/bf"].attrs["units"] == "counts"
        assert dict(f["calibration"].attrs)["scan_step_A"] == 2.5
        assert json.loads(f.attrs["provenance"])["method"] == "virtual"


def test_results_files_written_before_still_read(tmp_path):
    # a file of the CLI before /calibration and provenance: calibration_<field> and command attrs
    attrs = {"command": "distill4d virtual scan.h5", "input": "scan.h5",
             **{f"calibration_{k}": v for k, v in CAL.to_attrs().items()}}
    out = write(tmp_path / "old.h5", {"bf": np.ones((2, 2))}, units={"bf": "counts"}, attrs=attrs)
    res = read_results(out)
    assert res.calibration == CAL and res["bf"].shape == (2, 2)
    assert res.provenance.command == "distill4d virtual scan.h5" and res.provenance.inputs == ("scan.h5",)
    plain = read_results(write(tmp_path / "plain.h5", {"x": np.zeros(3)}))
    assert plain.provenance is None and plain.calibration == Calibration()


def test_results_bad_input(tmp_path):
    with pytest.raises(ValueError, match="units given for"):
        Results({"a": np.ones(2)}, units={"b": "px"})
    with pytest.raises(TypeError, match="calibration"):
        Results({"a": np.ones(2)}, calibration={"scan_step_A": 1.0})
    with pytest.raises(TypeError, match="provenance"):
        write(tmp_path / "x.h5", {"a": np.ones(2)}, provenance={"method": "x"})
    with pytest.raises(TypeError, match="inputs"):
        Provenance("x", inputs="scan.h5")
    with pytest.raises(ValueError, match="reserved"):
        write(tmp_path / "x.h5", {"a": np.ones(2)}, attrs={"provenance": "x"})
    assert command_line(["strain", "a.h5"]) == "distill4d strain a.h5"


def test_provenance_derive_keeps_the_upstream_method():
    up = Provenance("correlation", {"radius_px": 4.0}, inputs=("scan.h5",), command="distill4d strain scan.h5")
    down = up.derive("strain_map", {"reference": None}, key="detection")
    assert down.method == "strain_map" and down.inputs == up.inputs and down.command == up.command
    assert down.parameters == {"detection": {"method": "correlation", "parameters": {"radius_px": 4.0}},
                               "reference": None}
    assert Provenance.from_json(down.to_json()) == down


def test_strain_map_carries_detection_parameters_calibration_and_provenance(tmp_path):
    from distill4d.bragg import BraggPeaks, find_bragg_disks
    from distill4d.lattice import StrainMap, strain_map
    from distill4d.simulate.kinematic import strained_scan

    dc, _ = strained_scan((4, 4), (128, 128), kind="uniform", strain=0.01, dose=None)
    peaks = find_bragg_disks(dc, scheduler="inline", progress=False)
    assert peaks.provenance.method == "correlation" and peaks.provenance.parameters["probe_kind"] == "disk"
    smap = strain_map(peaks, reference=(slice(0, 2), slice(None)), max_residual_px=2.0)
    prov = smap.provenance
    assert prov.method == "strain_map" and smap.calibration == dc.calibration
    assert prov.parameters["detection"]["method"] == "correlation"
    assert prov.parameters["detection"]["parameters"]["radius_px"] == peaks.params["radius_px"]
    assert prov.parameters["lattice_fit"] == {"max_residual_px": 2.0}
    assert prov.parameters["reference"] == [[0, 2], [None, None]]
    np.testing.assert_allclose(prov.parameters["reference_basis_px"], smap.reference)
    assert smap.smoothed(1.0).provenance.parameters["smoothed_sigma"] == 1.0
    # a lattice fitted first carries the detection on to the map as well
    from distill4d.lattice import fit_lattice

    via = strain_map(fit_lattice(peaks, max_residual_px=2.0), reference=(slice(0, 2), slice(None))).provenance
    assert via.parameters["detection"] == prov.parameters["detection"] and via.method == "strain_map"
    # the files keep their own layout and now carry calibration and provenance
    out = smap.to_hdf5(tmp_path / "strain.h5")
    back = StrainMap.from_hdf5(out)
    assert back.provenance == prov and back.calibration == dc.calibration
    res = read_results(out)
    assert res.units["eps_xx"] == "fraction" and res.provenance == prov
    pk = BraggPeaks.from_hdf5(peaks.to_hdf5(tmp_path / "peaks.h5"))
    assert pk.provenance == peaks.provenance and pk.calibration == dc.calibration


def test_strain_and_peaks_files_written_before_still_read(tmp_path):
    """The layouts of StrainMap and BraggPeaks files before the common writer (no provenance)."""
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f.attrs["format"] = "distill4d-strainmap-1"
        f.attrs["rotation_rad"] = 0.0
        for k in ("eps_xx", "eps_yy", "eps_xy", "theta"):
            f.create_dataset(k, data=np.zeros((2, 3)))
        f.create_dataset("mask", data=np.zeros((2, 3), bool))
        f.create_dataset("reference", data=np.eye(2))
        f.create_dataset("ccstae/classes", data=np.zeros((2, 3), np.int16))
    from distill4d.bragg import BraggPeaks
    from distill4d.lattice import StrainMap

    sm = StrainMap.from_hdf5(tmp_path / "s.h5")
    assert sm.scan_shape == (2, 3) and sm.provenance is None and sm.calibration == Calibration()
    assert read_results(tmp_path / "s.h5")["ccstae/classes"].shape == (2, 3)
    with h5py.File(tmp_path / "p.h5", "w") as f:
        for k, v in (("qx", [1.0]), ("qy", [2.0]), ("intensity", [3.0]), ("offsets", [0, 1])):
            f.create_dataset(k, data=np.asarray(v))
        f.attrs.update({"format": "distill4d-braggpeaks-1", "scan_shape": [1, 1], "params": '{"method": "com"}'})
        f.create_group("calibration").attrs["q_pixel_inv_A"] = 0.02
    bp = BraggPeaks.from_hdf5(tmp_path / "p.h5")
    assert bp.calibration.q_pixel_inv_A == 0.02 and bp.provenance.method == "com"


def test_com_and_idpc_share_the_container(tmp_path):
    from distill4d.datacube import DataCube
    from distill4d.imaging import center_of_mass, idpc

    rng = np.random.default_rng(0)
    dc = DataCube(rng.random((6, 6, 16, 16)), CAL)
    com = center_of_mass(dc, origin=(8, 8), scheduler="inline", progress=False)
    r = com.to_result()
    assert r.units == {"com_qx": "px", "com_qy": "px"} and r.calibration == CAL
    assert r.provenance.parameters["origin_px"] == [8.0, 8.0]
    ph = idpc(com, rotation_rad=0.0, flip=False).to_result()
    assert ph.units["idpc_phase"] == "rad" and ph.units["dpc_x"] == "1/Å" and ph.calibration == CAL
    assert ph.provenance.method == "idpc" and ph.provenance.parameters["com"]["method"] == "center_of_mass"
    back = Results.from_h5(ph.to_h5(tmp_path / "idpc.h5"))
    np.testing.assert_array_equal(back["idpc_phase"], ph["idpc_phase"])
    assert back.provenance == ph.provenance


def test_one_writer_refuses_bad_groups_and_root_names(tmp_path):
    from distill4d.io.write import write_results_file

    with pytest.raises(ValueError, match="group"):
        write_results_file(tmp_path / "x.h5", {"a": np.ones(2)}, group="other")
    with pytest.raises(ValueError, match="calibration"):
        write_results_file(tmp_path / "x.h5", {"calibration": np.ones(2)}, group="")
    with pytest.raises(ValueError, match="parts between"):
        write_results_file(tmp_path / "x.h5", {"a//b": np.ones(2)})
    assert not any(tmp_path.iterdir())
