"""Lattice finding, per-position lattice fitting and strain maps."""

from .find import Basis, find_lattice, reduce_basis
from .fit import Lattice, fit_lattice
from .precision import strain_crb
from .strain import StrainMap, reference_basis, strain_from_deformation, strain_map

__all__ = [
    "Basis",
    "Lattice",
    "StrainMap",
    "find_lattice",
    "fit_lattice",
    "reduce_basis",
    "reference_basis",
    "strain_from_deformation",
    "strain_crb",
    "strain_map",
]
