"""Tests of distill4d.io.attrs: calibration of plain HDF5 files from their attributes."""

from __future__ import annotations

import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

from distill4d.calibration import electron_wavelength_A
from distill4d.io import calibration_attributes, read


def _plain(path: Path, data_attrs: dict, group_attrs: dict | None = None) -> Path:
    with h5py.File(path, "w") as f:
        g = f.create_group("scan")
        g.attrs.update(group_attrs or {})
        d = g.create_dataset("data", data=np.ones((3, 4, 8, 8), np.float32))
        d.attrs.update(data_attrs)
    return path


def test_common_attribute_names_calibrate_a_plain_file(tmp_path: Path) -> None:
    path = _plain(
        tmp_path / "a.h5",
        {"energy_eV": 300e3, "semiangle_mrad": 21.4, "q_pixel_size_invA": 0.02, "units": "counts"},
        {"scan_step_A": 2.5},
    )
    cal = read(path).calibration
    assert cal.energy_eV == 300e3 and cal.semiangle_mrad == 21.4
    assert cal.q_pixel_inv_A == 0.02 and cal.scan_step_A == 2.5
    used = calibration_attributes(path)
    assert len(used) == 4
    assert any(line.startswith("energy_eV = 300000 from /scan/data: energy_eV") for line in used)
    assert any(line.startswith("scan_step_A = 2.5 from /scan: scan_step_A") for line in used)
    # the flags (keywords of read) still override the file
    assert read(path, energy_eV=200e3).calibration.energy_eV == 200e3


@pytest.mark.parametrize(
    ("attrs", "field", "expected"),
    [
        ({"beam_energy": 300.0}, "energy_eV", 300e3),  # kV by its size
        ({"beam_energy": 200e3}, "energy_eV", 200e3),  # eV by its size
        ({"beam_energy": 80.0, "beam_energy_units": "kV"}, "energy_eV", 80e3),
        ({"accelerating_voltage": b"300 kV"}, "energy_eV", 300e3),
        ({"high_tension_kV": 120}, "energy_eV", 120e3),
        ({"convergence_semiangle": 25.0}, "semiangle_mrad", 25.0),
        ({"convergence_semiangle": 0.025, "convergence_semiangle_units": "rad"}, "semiangle_mrad", 25.0),
        ({"q_pixel_inv_A": 0.015}, "q_pixel_inv_A", 0.015),
        ({"pixel_size": 0.2, "pixel_size_units": "1/nm"}, "q_pixel_inv_A", 0.02),
        ({"pixel_size": np.array([0.03, 0.03]), "pixel_size_units": "A^-1"}, "q_pixel_inv_A", 0.03),
        ({"scan_step": "0.5 nm"}, "scan_step_A", 5.0),
        ({"real_pixel_size": 1.5, "real_pixel_size_units": "Å"}, "scan_step_A", 1.5),
    ],
)
def test_names_units_and_heuristics(tmp_path: Path, attrs: dict, field: str, expected: float) -> None:
    cal = read(_plain(tmp_path / "a.h5", attrs)).calibration
    assert getattr(cal, field) == pytest.approx(expected)


@pytest.mark.parametrize(
    "attrs",
    [
        {"pixel_size": 55.0, "pixel_size_units": "um"},  # the detector's physical pixel, or the scan step?
        {"pixel_size": 0.02},  # no unit
        {"q_pixel_size": 0.02},  # no unit
        {"scan_step": 0.5},  # no unit
        {"beam_energy": 5000.0},  # 5 kV or 5 keV... or 5000 kV: neither range
        {"energy_eV": -3.0},
        {"semiangle": 0.02},  # too small for mrad, no unit
        {"exposure_ms": 1.0, "temperature_K": 300.0},
    ],
)
def test_ambiguous_attributes_are_not_taken(tmp_path: Path, attrs: dict) -> None:
    path = _plain(tmp_path / "a.h5", attrs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cal = read(path).calibration
    assert cal.describe() == "(no calibration)"
    assert calibration_attributes(path) == []


def test_q_pixel_in_mrad_becomes_inv_A_with_the_energy(tmp_path: Path) -> None:
    path = _plain(tmp_path / "a.h5", {"q_pixel_size_mrad": 0.5, "beam_energy_keV": 300})
    cal = read(path).calibration
    assert cal.q_pixel_inv_A == pytest.approx(0.5e-3 / electron_wavelength_A(300e3))
    assert cal.mrad_per_px == pytest.approx(0.5)


def test_the_dataset_wins_over_its_group(tmp_path: Path) -> None:
    path = _plain(tmp_path / "a.h5", {"energy_eV": 300e3}, {"energy_eV": 200e3})
    assert read(path).calibration.energy_eV == 300e3
    assert calibration_attributes(f"{path}:/scan/data") == [
        "energy_eV = 300000 from /scan/data: energy_eV = 300000"
    ]


def test_files_with_their_own_metadata_keep_it(det: Path) -> None:
    # py4DSTEM's calibration group: no attribute lines, the values as before
    path = det / "py4DSTEM_size2x3x4x5.h5"
    assert calibration_attributes(path) == []
    assert read(path).calibration.energy_eV is None
    assert calibration_attributes(det / "test1.blo") == []  # not HDF5
