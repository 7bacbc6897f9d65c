import math

import pytest

from distill4d import Calibration
from distill4d.calibration import electron_wavelength_A


def test_wavelength_matches_tabulated_values():
    # Tabulated relativistic wavelengths: 300 kV 0.01969 Å, 200 kV 0.02508 Å, 80 kV 0.04176 Å.
    assert electron_wavelength_A(300e3) == pytest.approx(0.019687, abs=2e-6)
    assert electron_wavelength_A(200e3) == pytest.approx(0.025079, abs=2e-6)
    assert electron_wavelength_A(80e3) == pytest.approx(0.041757, abs=2e-6)


def test_mrad_per_pixel_and_length_conversion():
    cal = Calibration(q_pixel_inv_A=0.01, energy_eV=300e3)
    assert cal.mrad_per_px == pytest.approx(0.01 * 0.019687 * 1e3, rel=1e-4)
    assert cal.length_to_px(cal.mrad_per_px * 12.5, "mrad") == pytest.approx(12.5)
    assert cal.length_to_px(0.25, "inv_A") == pytest.approx(25.0)
    assert cal.length_to_px(7, "px") == 7.0
    with pytest.raises(ValueError, match="unit"):
        cal.length_to_px(1, "nm")


def test_missing_field_error_names_the_field_and_the_fix():
    with pytest.raises(ValueError, match="energy_eV.*not set"):
        Calibration(q_pixel_inv_A=0.01).mrad_per_px
    # the flag it names exists: the energy is given in kV on the command line
    with pytest.raises(ValueError, match=r"\(--energy-kV\)"):
        Calibration().require("energy_eV")


@pytest.mark.parametrize(
    "field,value",
    [("scan_step_A", -1.0), ("q_pixel_inv_A", 0.0), ("energy_eV", 5.0), ("energy_eV", math.nan),
     ("semiangle_mrad", 1e6), ("origin_px", (1.0, math.inf))],
)
def test_absurd_values_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        Calibration(**{field: value})


def test_type_errors():
    with pytest.raises(TypeError, match="scan_step_A"):
        Calibration(scan_step_A="big")
    with pytest.raises(TypeError, match="unknown calibration field"):
        Calibration().replace(pixel=1)


def test_binning_and_cropping_move_the_origin_exactly():
    cal = Calibration(q_pixel_inv_A=0.01, scan_step_A=2.0, origin_px=(64.0, 63.0))
    b = cal.binned(q_factor=2, r_factor=4)
    # pixels 64 and 65 become pixel 32: old coordinate 64 -> (64 - 0.5) / 2
    assert b.origin_px == pytest.approx((31.75, 31.25))
    assert b.q_pixel_inv_A == pytest.approx(0.02)
    assert b.scan_step_A == pytest.approx(8.0)
    assert cal.cropped(10, 20).origin_px == (54.0, 43.0)


def test_attrs_round_trip():
    cal = Calibration(1.5, 0.02, 200e3, 21.4, (10.0, 11.5), 0.3, True)
    again = Calibration.from_attrs(cal.to_attrs())
    assert again == cal
    assert "semiangle" in cal.describe() and "200 kV" in cal.describe()
    assert Calibration.from_attrs({}) == Calibration()
    assert Calibration().to_attrs() == {"scan_flip": False}
