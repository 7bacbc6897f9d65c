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
