"""Calibration of a 4D-STEM dataset: the numbers that turn pixels into physics.

Units are fixed and named in every field: real space in Å, reciprocal space in 1/Å,
beam energy in eV, angles in mrad (convergence) or radians (scan rotation).
A field that is not known is ``None``; functions that need it raise a clear error.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from .errors import Distill4dError

__all__ = [
    "Calibration",
    "electron_wavelength_A",
    "ELECTRON_MASS_KG",
    "ELEMENTARY_CHARGE_C",
    "PLANCK_J_S",
    "SPEED_OF_LIGHT_M_S",
]

# Physical constants (CODATA 2018), SI units as named.
#: Planck constant in J s.
PLANCK_J_S = 6.62607015e-34
#: Electron rest mass in kg.
ELECTRON_MASS_KG = 9.1093837015e-31
#: Elementary charge in C.
ELEMENTARY_CHARGE_C = 1.602176634e-19
#: Speed of light in m/s.
SPEED_OF_LIGHT_M_S = 299792458.0


def electron_wavelength_A(energy_eV: float) -> float:
    """Relativistic electron wavelength in Å for a beam energy in eV (300 kV -> 0.01969 Å)."""
    energy_eV = _positive("energy_eV", energy_eV)
    m0, e = ELECTRON_MASS_KG, ELEMENTARY_CHARGE_C
    p = math.sqrt(2 * m0 * e * energy_eV * (1 + e * energy_eV / (2 * m0 * SPEED_OF_LIGHT_M_S**2)))
    return PLANCK_J_S / p * 1e10


def _positive(name: str, value: Any, *, low: float = 0.0, high: float = math.inf) -> float:
    """Return ``value`` as a float after checking it is finite and inside (low, high]."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or not (low < v <= high):
        raise Distill4dError(f"{name} must be a finite number in ({low:g}, {high:g}], got {value!r}")
    return v


#: The command-line flag that sets each calibration field (the energy flag takes kV).
_FLAGS = {"energy_eV": "--energy-kV", "scan_step_A": "--scan-step-A", "q_pixel_inv_A": "--q-pixel-inv-A",
          "semiangle_mrad": "--semiangle-mrad", "origin_px": "--origin-px QX QY"}


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Physical calibration of a 4D-STEM dataset with axes ``(Rx, Ry, Qx, Qy)``.

    Attributes
    ----------
    scan_step_A : real-space step between probe positions, in Å (same along Rx and Ry).
    q_pixel_inv_A : size of one detector pixel in reciprocal space, in 1/Å.
    energy_eV : beam energy in eV (e.g. 300e3 for 300 kV).
    semiangle_mrad : probe convergence semiangle in mrad.
    origin_px : diffraction origin (centre of the unscattered beam) as ``(qx, qy)``
        in detector pixels, or ``None`` when not known.
    scan_rotation_rad : rotation from the scan axes to the detector axes, in radians
        (used by centre-of-mass / DPC imaging), or ``None`` when not known.
    scan_flip : whether the detector axes are transposed with respect to the scan axes.
    """

    scan_step_A: float | None = None
    q_pixel_inv_A: float | None = None
    energy_eV: float | None = None
    semiangle_mrad: float | None = None
    origin_px: tuple[float, float] | None = None
    scan_rotation_rad: float | None = None
    scan_flip: bool = False

    def __post_init__(self) -> None:
        checks = {
            "scan_step_A": (0.0, 1e9),
            "q_pixel_inv_A": (0.0, 1e3),
            "energy_eV": (1e2, 1e7),
            "semiangle_mrad": (0.0, 1e3),
        }
        for name, (low, high) in checks.items():
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _positive(name, value, low=low, high=high))
        if self.origin_px is not None:
            try:
                qx, qy = (float(v) for v in self.origin_px)
            except (TypeError, ValueError):
                raise TypeError(
                    f"origin_px must be a pair (qx, qy) of pixel coordinates, got {self.origin_px!r}"
                ) from None
            if not (math.isfinite(qx) and math.isfinite(qy)):
                raise Distill4dError(f"origin_px must be finite, got {self.origin_px!r}")
            object.__setattr__(self, "origin_px", (qx, qy))
        if self.scan_rotation_rad is not None:
            r = float(self.scan_rotation_rad)
            if not math.isfinite(r):
                raise Distill4dError(f"scan_rotation_rad must be finite, got {self.scan_rotation_rad!r}")
            object.__setattr__(self, "scan_rotation_rad", r)
        object.__setattr__(self, "scan_flip", bool(self.scan_flip))

    # ---------------------------------------------------------------- derived values
    @property
    def wavelength_A(self) -> float:
        """Electron wavelength in Å (needs ``energy_eV``)."""
        return electron_wavelength_A(self.require("energy_eV"))

    @property
    def mrad_per_px(self) -> float:
        """Scattering angle of one detector pixel in mrad (needs ``q_pixel_inv_A`` and ``energy_eV``)."""
        return self.require("q_pixel_inv_A") * self.wavelength_A * 1e3

    def require(self, name: str) -> Any:
        """Return the calibration field ``name`` or raise a ValueError saying how to set it."""
        value = getattr(self, name)
        if value is None:
            flag = _FLAGS.get(name, f"--{name.replace('_', '-')}")
            raise Distill4dError(
                f"this needs the calibration '{name}', which is not set: pass it when reading "
                f"(e.g. read(path, {name}=...)), with DataCube.with_calibration({name}=...), "
                f"or on the command line ({flag})"
            )
        return value

    def length_to_px(self, value: float, unit: str) -> float:
        """Convert a detector-plane length (e.g. a radius) from ``unit`` to pixels.

        ``unit`` is ``"px"``, ``"mrad"`` (needs q pixel size and energy) or ``"inv_A"``.
        """
        if unit == "px":
            return float(value)
        if unit == "mrad":
            return float(value) / self.mrad_per_px
        if unit in ("inv_A", "1/A"):
            return float(value) / self.require("q_pixel_inv_A")
        raise Distill4dError(f"unit must be 'px', 'mrad' or 'inv_A', got {unit!r}")

    # ---------------------------------------------------------------- transformations
    def replace(self, **changes: Any) -> "Calibration":
        """A copy with the given fields changed (validated)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"unknown calibration field(s) {sorted(unknown)}; known: {self.field_names()}")
        return dataclasses.replace(self, **changes)

    def binned(self, q_factor: int = 1, r_factor: int = 1) -> "Calibration":
        """Calibration after summing ``q_factor`` detector pixels and ``r_factor`` scan steps per side."""
        origin = self.origin_px
        if origin is not None and q_factor != 1:
            origin = tuple((o - (q_factor - 1) / 2) / q_factor for o in origin)
        return dataclasses.replace(
            self,
            q_pixel_inv_A=None if self.q_pixel_inv_A is None else self.q_pixel_inv_A * q_factor,
            scan_step_A=None if self.scan_step_A is None else self.scan_step_A * r_factor,
            origin_px=origin,
        )

    def cropped(self, qx_start: int = 0, qy_start: int = 0) -> "Calibration":
        """Calibration after cropping the detector so that pixel (qx_start, qy_start) becomes (0, 0)."""
        if self.origin_px is None:
            return self
        return dataclasses.replace(
            self, origin_px=(self.origin_px[0] - qx_start, self.origin_px[1] - qy_start)
        )

    # ---------------------------------------------------------------- (de)serialisation
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def to_attrs(self) -> dict[str, Any]:
        """Flat ``{name: value}`` of the known fields (for HDF5 attributes); names carry units."""
        out: dict[str, Any] = {}
        for name in self.field_names():
            value = getattr(self, name)
            if value is None:
                continue
            out[name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_attrs(cls, attrs: Any) -> "Calibration":
        """Inverse of :meth:`to_attrs`; unknown keys are ignored."""
        kwargs: dict[str, Any] = {}
        for name in cls.field_names():
            if name in attrs:
                value = attrs[name]
                if name == "origin_px":
                    value = tuple(float(v) for v in value)
                elif name == "scan_flip":
                    value = bool(value)
                else:
                    value = float(value)
                kwargs[name] = value
        return cls(**kwargs)

    def describe(self) -> str:
        """One line per known field, with units, for `distill4d info`."""
        lines = []
        if self.scan_step_A is not None:
            lines.append(f"scan step        {self.scan_step_A:.6g} Å")
        if self.q_pixel_inv_A is not None:
            lines.append(f"q pixel size     {self.q_pixel_inv_A:.6g} 1/Å")
        if self.energy_eV is not None:
            lines.append(f"beam energy      {self.energy_eV / 1e3:.6g} kV (λ = {self.wavelength_A:.5f} Å)")
            if self.q_pixel_inv_A is not None:
                lines.append(f"angle per pixel  {self.mrad_per_px:.6g} mrad")
        if self.semiangle_mrad is not None:
            lines.append(f"semiangle        {self.semiangle_mrad:.6g} mrad")
        if self.origin_px is not None:
            lines.append(f"origin           ({self.origin_px[0]:.3f}, {self.origin_px[1]:.3f}) px")
        if self.scan_rotation_rad is not None:
            lines.append(
                f"scan rotation    {math.degrees(self.scan_rotation_rad):.3f}°"
                + (" (flipped)" if self.scan_flip else "")
            )
        return "\n".join(lines) if lines else "(no calibration)"
