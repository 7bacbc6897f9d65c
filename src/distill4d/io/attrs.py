"""Calibration from the attributes of a plain HDF5 dataset (or of its parent group).

Many HDF5 files written by hand or by acquisition scripts keep the calibration as attributes
of the data. :func:`attribute_calibration` takes those whose name and unit are unambiguous
(names are compared without case; the dataset's attributes win over its group's):

=====================  ==============================================================================
field                  attribute names
=====================  ==============================================================================
``energy_eV``          ``energy_eV``, ``beam_energy_eV``, ``*_keV``, ``*_kV``, ``*_V`` of the names
                       ``energy``, ``beam_energy``, ``accelerating_voltage``, ``acceleration_voltage``,
                       ``high_tension``, ``voltage``; the bare names with a unit (see below), else a
                       value of 10-1500 is taken as kV and one of 10^4-1.5x10^6 as eV
``semiangle_mrad``     ``semiangle_mrad``, ``convergence_semiangle_mrad``, ``convergence_angle_mrad``,
                       ``probe_semiangle_mrad`` (or ``_rad``); the bare names with an angle unit,
                       else a value of 0.5-200 is taken as mrad
``q_pixel_inv_A``      ``q_pixel_inv_A``, ``q_pixel_size_invA``, ``q_pixel_size_inv_A``, ``*_inv_nm``,
                       ``*_mrad`` of ``q_pixel``, ``q_pixel_size``, ``reciprocal_pixel_size``,
                       ``diffraction_pixel_size``; these and ``pixel_size`` /
                       ``detector_pixel_size`` with a unit of 1/length (1/Å, 1/nm) or of angle
                       (mrad: converted with the beam energy)
``scan_step_A``        ``scan_step_A``, ``scan_step_nm``, ``real_pixel_size_A``, ``*_pm`` of
                       ``scan_step``, ``scan_step_size``, ``step_size``, ``probe_step``,
                       ``real_pixel_size``; the bare names with a length unit
=====================  ==============================================================================

A unit comes from the name's suffix, from an attribute ``<name>_units`` or ``<name>_unit``, or
from a text value such as ``"300 kV"``. ``pixel_size`` with a length unit is not taken (it may
be the detector's physical pixel as well as the scan step); values that are not positive and
finite, and bare values outside the ranges above, are ignored.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from ._common import angle_to_mrad, inv_length_to_inv_A, length_to_A, same_step

__all__ = ["attribute_calibration"]

_ENERGY = ("energy", "beam_energy", "accelerating_voltage", "acceleration_voltage", "high_tension", "voltage")
_SEMIANGLE = ("semiangle", "convergence_semiangle", "convergence_angle", "probe_semiangle")
_Q_PIXEL = ("q_pixel", "q_pixel_size", "reciprocal_pixel_size", "diffraction_pixel_size")
_Q_BY_UNIT = ("pixel_size", "detector_pixel_size")  # taken only with a reciprocal or angle unit
_SCAN_STEP = ("scan_step", "scan_step_size", "step_size", "probe_step", "real_pixel_size")

#: Unit suffixes of attribute names -> the unit they mean.
_SUFFIX_UNITS = {
    "ev": "eV", "kev": "keV", "v": "V", "kv": "kV",
    "mrad": "mrad", "rad": "rad",
    "a": "A", "ang": "A", "angstrom": "A", "nm": "nm", "pm": "pm",
    "inva": "1/A", "inv_a": "1/A", "per_a": "1/A", "invnm": "1/nm", "inv_nm": "1/nm", "per_nm": "1/nm",
}
_ENERGY_EV = {"ev": 1.0, "v": 1.0, "kev": 1e3, "kv": 1e3}
_NUMBER_UNIT = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(.*?)\s*$")


def attribute_calibration(dset: Any) -> tuple[dict[str, Any], float | None, list[tuple[str, str]]]:
    """Calibration fields from the attributes of the HDF5 dataset ``dset`` and of its parent group.

    Returns ``(fields, q_pixel_mrad, used)``: the :class:`~distill4d.Calibration` fields found,
    the detector pixel in mrad when it is given as an angle only, and ``(field, line)`` for each
    attribute taken (``"energy_eV = 300000 from /scan/data: beam_energy = 300 (kV)"``; the field
    ``"q_pixel_mrad"`` for a pixel in mrad).
    """
    fields: dict[str, Any] = {}
    q_mrad: float | None = None
    used: list[tuple[str, str]] = []
    for node in (dset, dset.parent):
        attrs = {str(k).lower(): (str(k), v) for k, v in node.attrs.items()}
        for lower, (name, value) in attrs.items():
            got = _interpret(lower, value, attrs)
            if got is None:
                continue
            field, number, note = got
            if field in fields or (field == "q_pixel_mrad" and ("q_pixel_inv_A" in fields or q_mrad is not None)):
                continue
            if field == "q_pixel_mrad":
                q_mrad = number
            else:
                fields[field] = number
            used.append((field, f"{field} = {number:.6g} from {node.name}: {name} = {_show(value)}{note}"))
    return fields, q_mrad, used


def _interpret(lower: str, value: Any, attrs: dict[str, tuple[str, Any]]) -> tuple[str, float, str] | None:
    """``(field, value in the field's unit, note)`` for one attribute, or None when it is not taken."""
    base, unit, how = _split_unit(lower, attrs, value)
    number = _number(value)
    if number is None or base is None:
        return None
    note = f" ({unit}{how})" if unit and how != " suffix" else ""
    u = (unit or "").lower()
    if base in _ENERGY:
        if u in _ENERGY_EV:
            ev = number * _ENERGY_EV[u]
        elif unit is None and 10 <= number <= 1500:
            ev, note = number * 1e3, " (taken as kV by its size)"
        elif unit is None and 1e4 <= number <= 1.5e6:
            ev, note = number, " (taken as eV by its size)"
        else:
            return None
        return "energy_eV", ev, note
    if base in _SEMIANGLE:
        if unit is None:
            return ("semiangle_mrad", number, " (taken as mrad by its size)") if 0.5 <= number <= 200 else None
        mrad = angle_to_mrad(number, unit)
        return None if mrad is None else ("semiangle_mrad", mrad, note)
    if base in _Q_PIXEL or base in _Q_BY_UNIT:
        if unit is None:
            return None
        inv_a = inv_length_to_inv_A(number, unit)
        if inv_a is not None:
            return "q_pixel_inv_A", inv_a, note
        mrad = angle_to_mrad(number, unit)
        return None if mrad is None else ("q_pixel_mrad", mrad, note)
    if base in _SCAN_STEP:
        step = None if unit is None else length_to_A(number, unit)
        return None if step is None else ("scan_step_A", step, note)
    return None


def _split_unit(lower: str, attrs: dict[str, tuple[str, Any]], value: Any) -> tuple[str | None, str | None, str]:
    """``(base name, unit or None, how the unit was found)`` of an attribute name."""
    known = _ENERGY + _SEMIANGLE + _Q_PIXEL + _Q_BY_UNIT + _SCAN_STEP
    if lower in known:
        for companion in (f"{lower}_units", f"{lower}_unit"):
            if companion in attrs:
                return lower, _text(attrs[companion][1]), f", from {attrs[companion][0]}"
        text = _text(value)
        m = _NUMBER_UNIT.match(text) if text is not None else None
        if m and m.group(2):
            return lower, m.group(2), ""
        return lower, None, ""
    for suffix, unit in _SUFFIX_UNITS.items():
        if lower.endswith("_" + suffix):
            base = lower[: -len(suffix) - 1]
            if base in known and base not in _Q_BY_UNIT:
                return base, unit, " suffix"
    return None, None, ""


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace").strip()
    if isinstance(value, np.ndarray) and value.size == 1 and value.dtype.kind in "OSU":
        return _text(value.reshape(-1)[0])
    return value.strip() if isinstance(value, str) else None


def _number(value: Any) -> float | None:
    """A positive finite number from a scalar, a pair of equal steps, or text such as ``"300 kV"``."""
    text = _text(value)
    if text is not None:
        m = _NUMBER_UNIT.match(text)
        value = m.group(1) if m else None
    try:
        arr = np.atleast_1d(np.asarray(value, dtype=np.float64)).reshape(-1)
    except (TypeError, ValueError):
        return None
    if arr.size == 2:
        v = same_step(float(arr[0]), float(arr[1]))
    elif arr.size == 1:
        v = float(arr[0])
    else:
        return None
    return v if v is not None and math.isfinite(v) and v > 0 else None


def _show(value: Any) -> str:
    text = _text(value)
    if text is not None:
        return repr(text)
    arr = np.asarray(value).reshape(-1)
    return " ".join(f"{float(v):g}" for v in arr[:2]) if arr.dtype.kind in "fiu" else repr(value)
