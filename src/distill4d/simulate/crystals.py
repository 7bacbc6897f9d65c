"""Crystal structures for multislice training data: prototypes, random crystals, zone axes, strain.

Conventions
-----------
- Lengths in Å. A structure is an ``ase.Atoms`` with a periodic cell whose *rows* are the
  lattice vectors a1, a2, a3.
- For multislice (abTEM) the cell must be orthogonal (a diagonal 3x3 cell); the beam travels
  along +z and the detector axes are x (first) and y. :func:`orient` builds such a cell.
- A zone axis ``[uvw]`` is the real-space direction ``u a1 + v a2 + w a3`` in the basis of the
  cell it is given for (for hexagonal cells the four-index ``[uvtw]`` form is also accepted).
- Strain is a deformation gradient ``F`` (3x3): positions ``r' = F r``, lattice vectors
  ``a' = F a`` (cell rows: ``cell @ F.T``), reciprocal vectors ``g' = F^-T g``.

ase, abTEM, pyxtal and spglib are imported only inside the functions that need them
(the optional extra ``distill4d[sim]``).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .._validate import nonnegative_float, positive_float, positive_int
from ..errors import Distill4dError

if TYPE_CHECKING:  # pragma: no cover
    from ase import Atoms

__all__ = [
    "COMMON_ELEMENTS",
    "PROTOTYPES",
    "crystal_system",
    "deformation_gradient",
    "list_prototypes",
    "orient",
    "prototype",
    "random_crystal",
    "repeat_to_extent",
    "spacegroup_number",
    "strain",
    "zone_axes",
]


# --------------------------------------------------------------------------------------------
# Prototypes
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Spec:
    kind: str
    elements: tuple[str, ...]
    a: float
    c: float | None = None
    extra: tuple[tuple[str, float], ...] = ()
    description: str = ""


# Lattice constants at room temperature (Å), rounded literature values.
_SPECS: dict[str, _Spec] = {
    "Si": _Spec("diamond", ("Si",), 5.431, description="diamond (Fd-3m), 8 atoms, a=5.431"),
    "Ge": _Spec("diamond", ("Ge",), 5.658, description="diamond (Fd-3m), 8 atoms, a=5.658"),
    "C": _Spec("diamond", ("C",), 3.567, description="diamond (Fd-3m), 8 atoms, a=3.567"),
    "Cu": _Spec("fcc", ("Cu",), 3.615, description="fcc (Fm-3m), 4 atoms, a=3.615"),
    "Au": _Spec("fcc", ("Au",), 4.078, description="fcc (Fm-3m), 4 atoms, a=4.078"),
    "Al": _Spec("fcc", ("Al",), 4.05, description="fcc (Fm-3m), 4 atoms, a=4.05"),
    "Fe": _Spec("bcc", ("Fe",), 2.8665, description="bcc (Im-3m), 2 atoms, a=2.8665"),
    "W": _Spec("bcc", ("W",), 3.165, description="bcc (Im-3m), 2 atoms, a=3.165"),
    "Mg": _Spec("hcp", ("Mg",), 3.209, 5.211, description="hcp (P6_3/mmc), 2 atoms, a=3.209 c=5.211"),
    "Ti": _Spec("hcp", ("Ti",), 2.951, 4.686, description="hcp (P6_3/mmc), 2 atoms, a=2.951 c=4.686"),
    "Zn": _Spec("hcp", ("Zn",), 2.665, 4.947, description="hcp (P6_3/mmc), 2 atoms, a=2.665 c=4.947"),
    "NaCl": _Spec("rocksalt", ("Na", "Cl"), 5.64, description="rocksalt (Fm-3m), 8 atoms, a=5.64"),
    "MgO": _Spec("rocksalt", ("Mg", "O"), 4.212, description="rocksalt (Fm-3m), 8 atoms, a=4.212"),
    "GaAs": _Spec("zincblende", ("Ga", "As"), 5.653, description="zincblende (F-43m), 8 atoms, a=5.653"),
    "GaN": _Spec(
        "wurtzite",
        ("Ga", "N"),
        3.189,
        5.185,
        extra=(("u", 0.377),),
        description="wurtzite (P6_3mc), 4 atoms, a=3.189 c=5.185 u=0.377",
    ),
    "CeO2": _Spec("fluorite", ("Ce", "O"), 5.411, description="fluorite (Fm-3m), 12 atoms, a=5.411"),
    "SrTiO3": _Spec(
        "perovskite", ("Sr", "Ti", "O"), 3.905, description="cubic perovskite (Pm-3m), 5 atoms, a=3.905"
    ),
    "BaTiO3": _Spec(
        "perovskite_tetragonal",
        ("Ba", "Ti", "O"),
        3.994,
        4.034,
        # fractional shifts along c relative to Ba (approximate room-temperature values)
        extra=(("dz_b", 0.0135), ("dz_x_apical", -0.025), ("dz_x_equatorial", -0.015)),
        description=(
            "tetragonal ferroelectric perovskite (P4mm), 5 atoms, a=3.994 c=4.034, Ti/O shifted "
            "along c by +0.0135/-0.025 (apical)/-0.015 (equatorial) of c (approximate)"
        ),
    ),
    "MoS2": _Spec(
        "mx2_2h",
        ("Mo", "S"),
        3.16,
        12.29,
        extra=(("z", 0.621),),
        description="2H-MoS2 (P6_3/mmc), 6 atoms, a=3.16 c=12.29, S z=0.621 (Mo-S 2.417)",
    ),
    "hBN": _Spec(
        "hbn",
        ("B", "N"),
        2.504,
        6.66,
        description="hexagonal BN (P6_3/mmc, AA' stacking), 4 atoms, a=2.504 c=6.66",
    ),
}

#: Prototype name -> description (structure type, space group, atoms in the conventional cell, Å).
PROTOTYPES: dict[str, str] = {name: spec.description for name, spec in _SPECS.items()}


def list_prototypes() -> list[str]:
    """Names accepted by :func:`prototype`."""
    return list(_SPECS)


def _spec(name: str) -> tuple[str, _Spec]:
    if not isinstance(name, str):
        raise TypeError(f"name must be a prototype name (str), got {name!r}")
    for key, spec in _SPECS.items():
        if key.lower() == name.lower():
            return key, spec
    raise Distill4dError(f"unknown prototype {name!r}; valid names: {', '.join(_SPECS)}")


def prototype(name: str, **overrides: Any) -> Atoms:
    """The conventional cell of a named prototype (see :data:`PROTOTYPES`), as ``ase.Atoms``.

    ``overrides``: ``a`` (Å), ``c`` (Å, hexagonal/tetragonal prototypes), ``elements`` (one
    symbol per species, in the prototype's order, e.g. ``prototype("Cu", elements=["Ni"],
    a=3.524)``), and the internal parameters listed in the description (``u`` of wurtzite,
    ``z`` of the chalcogen in 2H-MX2, ``dz_*`` of tetragonal perovskite).
    """
    from ase import Atoms
    from ase.build import bulk
    from ase.data import atomic_numbers
    from ase.spacegroup import crystal

    key, spec = _spec(name)
    extra = dict(spec.extra)
    allowed = {"a", "elements"} | ({"c"} if spec.c is not None else set()) | set(extra)
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise Distill4dError(
            f"prototype {key!r} does not take override(s) {unknown}; allowed: {sorted(allowed)}"
        )
    a = positive_float("a", overrides.get("a", spec.a))
    c = positive_float("c", overrides["c"]) if "c" in overrides else spec.c
    for k in extra:
        if k in overrides:
            v = float(overrides[k])
            if not math.isfinite(v):
                raise Distill4dError(f"{k} must be finite, got {overrides[k]!r}")
            extra[k] = v
    els = overrides.get("elements", spec.elements)
    if isinstance(els, str):
        els = (els,)
    els = tuple(els)
    if len(els) != len(spec.elements) or not all(isinstance(e, str) and e in atomic_numbers for e in els):
        raise Distill4dError(
            f"elements for prototype {key!r} must be {len(spec.elements)} chemical symbol(s) "
            f"(default {list(spec.elements)}), got {list(els)!r}"
        )

    k = spec.kind
    if k in ("diamond", "fcc", "bcc"):
        atoms = bulk(els[0], k, a=a, cubic=True)
    elif k == "hcp":
        atoms = bulk(els[0], "hcp", a=a, c=c)
    elif k in ("rocksalt", "zincblende"):
        atoms = bulk(els[0] + els[1], k, a=a, cubic=True)
    elif k == "fluorite":
        atoms = bulk(f"{els[0]}{els[1]}2", "fluorite", a=a, cubic=True)
    elif k == "wurtzite":
        atoms = bulk(els[0] + els[1], "wurtzite", a=a, c=c, u=extra["u"])
    elif k == "perovskite":
        atoms = crystal(
            list(els),
            basis=[(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0)],
            spacegroup=221,
            cellpar=[a, a, a, 90, 90, 90],
        )
    elif k == "perovskite_tetragonal":
        zb, za, ze = extra["dz_b"], extra["dz_x_apical"], extra["dz_x_equatorial"]
        atoms = Atoms(
            symbols=[els[0], els[1], els[2], els[2], els[2]],
            scaled_positions=[
                (0, 0, 0),
                (0.5, 0.5, 0.5 + zb),
                (0.5, 0.5, za % 1.0),
                (0.5, 0, 0.5 + ze),
                (0, 0.5, 0.5 + ze),
            ],
            cell=np.diag([a, a, c]),
            pbc=True,
        )
    elif k == "mx2_2h":
        atoms = crystal(
            list(els),
            basis=[(1 / 3, 2 / 3, 0.25), (1 / 3, 2 / 3, extra["z"])],
            spacegroup=194,
            cellpar=[a, a, c, 90, 90, 120],
        )
    elif k == "hbn":
        atoms = crystal(
            list(els),
            basis=[(1 / 3, 2 / 3, 0.25), (1 / 3, 2 / 3, 0.75)],
            spacegroup=194,
            cellpar=[a, a, c, 90, 90, 120],
        )
    else:  # pragma: no cover - _SPECS is static
        raise AssertionError(k)
    atoms.pbc = True
    return atoms


# --------------------------------------------------------------------------------------------
# Random crystals (pyxtal)
# --------------------------------------------------------------------------------------------

#: Elements used for random compositions: common, stable, Z 3..83, no noble gases.
COMMON_ELEMENTS: tuple[str, ...] = (
    "Li", "Be", "B", "C", "N", "O", "F", "Na", "Mg", "Al", "Si", "P", "S", "Cl", "K", "Ca",
    "Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Ga", "Ge", "As", "Se", "Br",
    "Rb", "Sr", "Y", "Zr", "Nb", "Mo", "Ru", "Rh", "Pd", "Ag", "Cd", "In", "Sn", "Sb", "Te",
    "I", "Cs", "Ba", "La", "Ce", "Nd", "Sm", "Gd", "Hf", "Ta", "W", "Re", "Os", "Ir", "Pt",
    "Au", "Hg", "Tl", "Pb", "Bi",
)  # fmt: skip

_SYSTEMS = (
    (2, "triclinic"),
    (15, "monoclinic"),
    (74, "orthorhombic"),
    (142, "tetragonal"),
    (167, "trigonal"),
    (194, "hexagonal"),
    (230, "cubic"),
)


def _space_group(value: Any) -> int:
    sg = positive_int("space_group", value)
    if sg > 230:
        raise Distill4dError(f"space_group must be an integer in 1..230, got {value!r}")
    return sg


def crystal_system(space_group: int) -> str:
    """Crystal system of a space group number 1..230 (``"triclinic"`` ... ``"cubic"``)."""
    sg = _space_group(space_group)
    return next(name for last, name in _SYSTEMS if sg <= last)


def spacegroup_number(atoms: Atoms, symprec: float = 1e-3) -> int:
    """Space group number found by spglib with tolerance ``symprec`` (Å)."""
    import spglib

    cell = (np.asarray(atoms.cell), atoms.get_scaled_positions(), atoms.numbers)
    with warnings.catch_warnings():  # spglib 2.x warns about its legacy error handling
        warnings.simplefilter("ignore", DeprecationWarning)
        data = spglib.get_symmetry_dataset(cell, symprec=positive_float("symprec", symprec))
    if data is None:
        raise Distill4dError(f"spglib could not determine the symmetry (symprec={symprec})")
    return int(data.number if hasattr(data, "number") else data["number"])


def _elements(value: Any) -> list[str]:
    from ase.data import atomic_numbers, chemical_symbols

    if isinstance(value, (str, int, np.integer)):
        value = [value]
    out = []
    for e in value:
        if isinstance(e, (int, np.integer)) and 1 <= int(e) < len(chemical_symbols):
            out.append(chemical_symbols[int(e)])
        elif isinstance(e, str) and e in atomic_numbers and e != "X":
            out.append(e)
        else:
            raise Distill4dError(f"elements must be chemical symbols or atomic numbers, got {e!r}")
    if not out or len(set(out)) != len(out):
        raise Distill4dError(f"elements must be a non-empty list of distinct elements, got {list(value)!r}")
    return out


def _rng(rng: Any) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be a numpy.random.Generator or an int seed, got {rng!r}")


def random_crystal(
    space_group: int,
    *,
    elements: Sequence[str | int] | None = None,
    rng: np.random.Generator | int,
    max_atoms: int = 40,
    max_tries: int = 50,
    min_distance_factor: float = 0.7,
    min_distance_A: float = 1.0,
    symprec: float = 1e-3,
) -> Atoms:
    """A random crystal of the given space group (conventional cell), generated by pyxtal.

    ``elements``: the species (symbols or atomic numbers); if None, 1-3 distinct elements are
    drawn from :data:`COMMON_ELEMENTS`. Each species occupies one or two Wyckoff positions of
    the group drawn at random (a position without free parameters at most once), at most
    ``max_atoms`` atoms in total. The volume is pyxtal's default (volume factor 1.1 on its
    elemental volumes). Every interatomic distance is at least ``min_distance_A`` and at least
    ``min_distance_factor`` times the sum of the two covalent radii (ase's radii; pyxtal's own
    default factor, 0.5, allows e.g. O-O at 0.7 Å; 0.7 keeps Al-O >= 1.31 Å). The result is
    checked with spglib (``symprec`` in Å): its space group is exactly ``space_group`` (a
    structure with accidentally higher symmetry is rejected). Failed draws are redrawn, up to
    ``max_tries`` times, then RuntimeError. Some groups cannot be realised with few atoms
    (e.g. F23, 196, whose special positions always form a more symmetric arrangement, needs
    its 48-fold general position): raise ``max_atoms`` for those.

    Deterministic for a given ``rng`` state: pyxtal gets its own Generator seeded from ``rng``.
    """
    from pyxtal import pyxtal
    from pyxtal.msg import Error as pyxtal_error
    from pyxtal.symmetry import Group

    sg = _space_group(space_group)
    rng = _rng(rng)
    max_atoms = positive_int("max_atoms", max_atoms)
    max_tries = positive_int("max_tries", max_tries)
    dist_factor = positive_float("min_distance_factor", min_distance_factor, maximum=1.5)
    dist_floor = nonnegative_float("min_distance_A", min_distance_A)
    fixed = None if elements is None else _elements(elements)
    group = Group(sg)
    wyckoffs = [
        (int(wp.multiplicity), f"{wp.multiplicity}{wp.letter}", int(wp.get_dof()))
        for wp in group.Wyckoff_positions
    ]
    mults = sorted({m for m, _, _ in wyckoffs})
    n_min = len(fixed) if fixed is not None else 1
    if n_min * mults[0] > max_atoms:
        raise Distill4dError(
            f"max_atoms={max_atoms} is too small for space group {sg} with {n_min} species: its "
            f"smallest Wyckoff multiplicity is {mults[0]}"
        )
    last_error = "no compatible composition drawn"
    for _ in range(max_tries):
        if fixed is None:
            k_max = max(1, min(3, max_atoms // mults[0]))
            k = int(rng.integers(1, k_max + 1))
            species = [str(s) for s in rng.choice(COMMON_ELEMENTS, size=k, replace=False)]
        else:
            species = list(fixed)
        sites, counts, used_fixed = [], [], set()
        budget = max_atoms
        for i in range(len(species)):
            reserve = mults[0] * (len(species) - i - 1)
            chosen: list[str] = []
            n = 0
            for _site in range(int(rng.integers(1, 3))):
                options = [
                    (m, label, dof)
                    for m, label, dof in wyckoffs
                    if n + m <= budget - reserve and (dof > 0 or label not in used_fixed)
                ]
                if not options:
                    break
                m, label, dof = options[int(rng.integers(len(options)))]
                chosen.append(label)
                n += m
                if dof == 0:
                    used_fixed.add(label)
            if n == 0:
                break
            sites.append(chosen)
            counts.append(n)
            budget -= n
        if len(counts) != len(species):
            last_error = f"could not place {len(species)} species in at most {max_atoms} atoms"
            continue
        seed = int(rng.integers(0, 2**63 - 1))
        try:
            xtal = pyxtal()
            xtal.from_random(
                3,
                sg,
                species,
                counts,
                sites=sites,
                t_factor=dist_factor / 0.5,  # pyxtal's atomic tolerance is 0.5 (r1 + r2) x t_factor
                max_count=1,  # a hard composition can take pyxtal seconds per attempt: redraw instead
                random_state=np.random.default_rng(seed),
            )
            atoms = xtal.to_ase(resort=True)
        except (RuntimeError, ValueError, pyxtal_error) as exc:
            last_error = f"pyxtal failed for {dict(zip(species, sites))}: {exc}"
            continue
        short = _too_close(atoms, dist_factor, dist_floor)
        if short:
            last_error = f"atoms too close: {short}"
            continue
        found = spacegroup_number(atoms, symprec)
        if found != sg:
            last_error = f"generated structure has space group {found}, not {sg}"
            continue
        atoms.pbc = True
        return atoms
    raise RuntimeError(
        f"random_crystal could not build a crystal in space group {sg} "
        f"(elements={fixed}, max_atoms={max_atoms}) in {max_tries} tries (a larger max_atoms "
        f"allows more Wyckoff positions); last error: {last_error}"
    )


def _too_close(atoms: Atoms, factor: float, floor: float) -> str:
    """The closest pair nearer than ``max(floor, factor (r_cov1 + r_cov2))``, described, or ''."""
    from ase.data import covalent_radii
    from ase.neighborlist import neighbor_list

    r = covalent_radii[atoms.numbers]
    i, j, d = neighbor_list("ijd", atoms, max(float(2 * factor * r.max()), floor) + 1e-6)
    bad = d < np.maximum(floor, factor * (r[i] + r[j])) * (1 - 1e-9)
    if not np.any(bad):
        return ""
    k = np.flatnonzero(bad)[np.argmin(d[bad])]
    s = atoms.get_chemical_symbols()
    return f"{s[i[k]]}-{s[j[k]]} at {d[k]:.3f} Å"


def cell_variant(
    atoms: Atoms,
    space_group: int,
    *,
    rng: np.random.Generator | int,
    length_spread: float = 0.25,
    angle_spread_deg: float = 10.0,
    substitute: bool = True,
    max_tries: int = 10,
    symprec: float = 1e-3,
) -> Atoms | None:
    """A cheap new crystal of the same space group: ``atoms`` with a new cell and new species.

    The fractional coordinates are kept; the conventional cell's free parameters (those its
    crystal system leaves free: every length and angle for triclinic; a, b, c and the
    monoclinic angle; a, b, c; a = b and c; a alone for cubic) are redrawn: each free length
    times ``exp(U(-ln(1 + length_spread), ln(1 + length_spread)))``, each free angle plus
    ``U(-angle_spread_deg, angle_spread_deg)`` degrees. With ``substitute`` every species is
    replaced by another of :data:`COMMON_ELEMENTS` (distinct species stay distinct). The
    space group is checked with spglib; a draw that changes it is redrawn, up to
    ``max_tries`` times, then None. No pyxtal call: about 1/100 of the cost of
    :func:`random_crystal`. Interatomic distances are not checked (kinematic spot patterns
    depend only on the cell, the fractional coordinates and the species).
    """
    from ase.geometry import cellpar_to_cell

    _check_atoms("atoms", atoms)
    sg = _space_group(space_group)
    rng = _rng(rng)
    spread = nonnegative_float("length_spread", length_spread)
    dangle = nonnegative_float("angle_spread_deg", angle_spread_deg, maximum=30.0)
    system = crystal_system(sg)
    par0 = np.asarray(atoms.cell.cellpar(), dtype=np.float64)
    free_angles = {"triclinic": [3, 4, 5]}.get(system, [])
    if system == "monoclinic":
        off = [k for k in (3, 4, 5) if abs(par0[k] - 90.0) > 1e-3]
        free_angles = off[:1] or [4]
    if system == "cubic":
        groups = [[0, 1, 2]]
    elif system in ("tetragonal", "trigonal", "hexagonal"):
        same = [(i, j) for i, j in ((0, 1), (0, 2), (1, 2)) if abs(par0[i] - par0[j]) < 1e-6 * par0[i]]
        i, j = same[0] if same else (0, 1)
        groups = [[i, j], [3 - i - j]]
    else:
        groups = [[0], [1], [2]]
    log_spread = math.log1p(spread)
    species = sorted(set(atoms.get_chemical_symbols()))
    for _ in range(positive_int("max_tries", max_tries)):
        par = par0.copy()
        for g in groups:
            par[g] = par0[g] * math.exp(rng.uniform(-log_spread, log_spread))
        for k in free_angles:
            par[k] = par0[k] + rng.uniform(-dangle, dangle)
        try:
            cell = cellpar_to_cell(par)
        except (ValueError, AssertionError):  # ase asserts that the angles make a cell
            continue
        if not np.all(np.isfinite(cell)) or abs(np.linalg.det(cell)) < 1e-3 * abs(np.linalg.det(atoms.cell)):
            continue
        out = atoms.copy()
        out.set_cell(cell, scale_atoms=True)
        if substitute:
            new = [str(s) for s in rng.choice(COMMON_ELEMENTS, size=len(species), replace=False)]
            mapping = dict(zip(species, new))
            out.set_chemical_symbols([mapping[s] for s in atoms.get_chemical_symbols()])
        try:
            if spacegroup_number(out, symprec) == sg:
                return out
        except Distill4dError:
            continue
    return None


# --------------------------------------------------------------------------------------------
# Lattice helpers
# --------------------------------------------------------------------------------------------


def _check_atoms(name: str, atoms: Any) -> None:
    cell = getattr(atoms, "cell", None)
    if cell is None or not hasattr(atoms, "positions"):
        raise TypeError(f"{name} must be an ase.Atoms, got {type(atoms).__name__}")
    if len(atoms) == 0:
        raise Distill4dError(f"{name} has no atoms")
    if abs(np.linalg.det(np.asarray(cell))) < 1e-9:
        raise Distill4dError(
            f"{name} must have a 3D periodic cell of non-zero volume, got cell {np.asarray(cell).tolist()}"
        )


def _pure_translations(atoms: Atoms, tol: float) -> np.ndarray:
    """Fractional translations t != 0 (mod 1) that map the crystal onto itself."""
    cell = np.asarray(atoms.cell)
    s = atoms.get_scaled_positions(wrap=True)
    z = atoms.numbers
    species, counts = np.unique(z, return_counts=True)
    ref = species[np.argmin(counts)]
    idx = np.flatnonzero(z == ref)
    same = z[:, None] == z[None, :]
    out = []
    probe = np.arange(min(len(s), 8))  # cheap rejection on a few atoms first
    for j in idx[1:]:
        t = s[j] - s[idx[0]]
        t -= np.floor(t)
        for rows in (probe, slice(None)):
            d = (s[rows] + t)[:, None, :] - s[None, :, :]
            d -= np.round(d)
            dist = np.linalg.norm(d @ cell, axis=-1)
            if not np.all(np.any((dist < tol) & same[rows], axis=1)):
                break
        else:
            out.append(t)
    return np.array(out).reshape(-1, 3)


def _primitive(atoms: Atoms, tol: float = 1e-3) -> Atoms:
    """A primitive cell of ``atoms`` in the same Cartesian frame (no rotation)."""
    trans = _pure_translations(atoms, tol)
    if len(trans) == 0:
        prim = atoms.copy()
        if np.linalg.det(np.asarray(prim.cell)) < 0:  # same lattice, right-handed basis
            prim.set_cell(np.asarray(prim.cell) * np.array([[1.0], [1.0], [-1.0]]), scale_atoms=False)
        return prim
    cell = np.asarray(atoms.cell)
    order = len(trans) + 1
    vol_p = abs(np.linalg.det(cell)) / order
    shifts = np.array(list(itertools.product(range(-2, 3), repeat=3)), dtype=float)
    frac = (np.concatenate([np.zeros((1, 3)), trans])[:, None, :] + shifts[None]).reshape(-1, 3)
    vecs = frac @ cell
    lengths = np.linalg.norm(vecs, axis=1)
    keep = lengths > 1e-6
    vecs, lengths = vecs[keep], lengths[keep]
    vecs = vecs[np.argsort(lengths, kind="stable")]
    basis = [vecs[0]]
    for v in vecs[1:]:
        if len(basis) == 1 and np.linalg.norm(np.cross(basis[0], v)) > 1e-6 * np.linalg.norm(v):
            basis.append(v)
        elif len(basis) == 2 and abs(np.linalg.det(np.array([*basis, v]))) > 1e-6 * vol_p:
            basis.append(v)
            break
    P = np.array(basis)
    if len(P) != 3 or not np.isclose(abs(np.linalg.det(P)), vol_p, rtol=1e-6):
        raise RuntimeError("could not find a primitive cell (please report this structure)")
    if np.linalg.det(P) < 0:
        P[2] *= -1
    prim = atoms.copy()
    prim.set_cell(P, scale_atoms=False)
    prim.wrap()
    sp = prim.get_scaled_positions()
    keep_idx: list[int] = []
    for i in range(len(prim)):
        ok = True
        for j in keep_idx:
            if prim.numbers[j] == prim.numbers[i]:
                d = sp[i] - sp[j]
                d -= np.round(d)
                if np.linalg.norm(d @ P) < tol:
                    ok = False
                    break
        if ok:
            keep_idx.append(i)
    prim = prim[keep_idx]
    if len(prim) * order != len(atoms):
        raise RuntimeError("primitive cell reduction lost atoms (please report this structure)")
    return prim


def _int_vector(name: str, value: Any) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != 1 or arr.shape[0] not in (3, 4):
        raise Distill4dError(f"{name} must be 3 (or 4 Miller-Bravais) integers, got {value!r}")
    if arr.dtype.kind == "b" or arr.dtype.kind not in "iuf":
        raise Distill4dError(f"{name} must be integers, got {value!r}")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr) & (arr == np.round(arr))):
        raise Distill4dError(f"{name} must be integers, got {value!r}")
    return np.round(arr).astype(np.int64)


def _direction(name: str, value: Any, cell: np.ndarray) -> np.ndarray:
    """``[uvw]`` (or hexagonal ``[uvtw]``) as three reduced integers in the basis of ``cell``."""
    v = _int_vector(name, value)
    if len(v) == 4:
        a1, a2 = cell[0], cell[1]
        la, lb = np.linalg.norm(a1), np.linalg.norm(a2)
        gamma = math.degrees(math.acos(np.clip(a1 @ a2 / (la * lb), -1, 1)))
        if not (abs(la - lb) < 1e-6 * la and abs(gamma - 120) < 1e-4 and abs(a1 @ cell[2]) < 1e-6 * la):
            raise Distill4dError(
                f"{name}={v.tolist()} is a four-index (Miller-Bravais) direction, which needs a hexagonal "
                f"cell (|a1| = |a2|, gamma = 120 deg, c normal to them); got cell lengths "
                f"{np.round(np.linalg.norm(cell, axis=1), 4).tolist()} and gamma={gamma:.3f}"
            )
        if v[0] + v[1] + v[2] != 0:
            raise Distill4dError(f"{name}={v.tolist()} must satisfy u + v + t = 0 for [uvtw]")
        v = np.array([v[0] - v[2], v[1] - v[2], v[3]])
    if not np.any(v):
        raise Distill4dError(f"{name} must be a non-zero direction, got {np.asarray(value).tolist()}")
    return v // math.gcd(*(int(x) for x in v))


def _coefficients(n: int) -> np.ndarray:
    """All non-zero integer triples in [-n, n]^3, shape (m, 3)."""
    r = np.arange(-n, n + 1)
    coeff = np.array(np.meshgrid(r, r, r, indexing="ij")).reshape(3, -1).T
    return coeff[np.any(coeff != 0, axis=1)]


def _shortest(vecs: np.ndarray) -> np.ndarray:
    """Shortest vector; ties go to the largest x, then y, then z component (deterministic)."""
    key = np.round(vecs, 6)
    order = np.lexsort((-key[:, 2], -key[:, 1], -key[:, 0], np.round(np.linalg.norm(vecs, axis=1), 6)))
    return vecs[order[0]]


def _best_orthogonal_supercell(P: np.ndarray, n: int) -> np.ndarray | None:
    """Integer rows M: for each axis i the combination of ``P``'s rows (coefficients in
    [-n, n]) best aligned with axis i, the shortest among equally aligned ones, pointing to +i
    (abTEM's ``best_orthogonal_cell`` rule). None if they are not independent."""
    coeff = _coefficients(n)
    vecs = coeff @ P
    norms = np.linalg.norm(vecs, axis=1)
    rows = []
    for i in range(3):
        align = np.abs(vecs[:, i]) / norms
        cand = np.flatnonzero(align >= align.max() - 1e-12)
        k = cand[np.lexsort((np.arange(len(cand)), np.round(norms[cand], 9)))[0]]
        rows.append(coeff[k] * (1 if vecs[k, i] > 0 else -1))
    M = np.array(rows)
    if abs(round(np.linalg.det(M))) < 1:
        return None
    return M


def _in_plane_x(vecs: np.ndarray) -> np.ndarray:
    """x of the smallest rectangle ``x, y`` of lattice vectors in a plane (``vecs``: all of them).

    Among pairs of perpendicular vectors the one of least area ``|x| |y|``, then shortest
    ``x``; without any perpendicular pair simply the shortest vector. Ties: :func:`_shortest`.
    """
    norms = np.linalg.norm(vecs, axis=1)
    cos = (vecs @ vecs.T) / np.outer(norms, norms)
    i, j = np.nonzero(np.abs(cos) < 1e-8)
    if len(i) == 0:
        return _shortest(vecs)
    area = np.round(norms[i] * norms[j], 6)
    best = area == area.min()
    return _shortest(vecs[np.unique(i[best])])


def _rotation_to_z(d: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Rotation matrix R with R d ∥ +z and R x in the +x half of the x-z plane."""
    ez = d / np.linalg.norm(d)
    ex = x - (x @ ez) * ez
    ex /= np.linalg.norm(ex)
    ey = np.cross(ez, ex)
    return np.array([ex, ey, ez])


# --------------------------------------------------------------------------------------------
# Orientation
# --------------------------------------------------------------------------------------------


def orient(
    atoms: Atoms,
    zone_axis: Sequence[int],
    *,
    max_repetitions: int = 5,
    tolerance: float = 0.01,
    in_plane_rotation_rad: float = 0.0,
    x_axis: Sequence[int] | None = None,
) -> tuple[Atoms, dict[str, Any]]:
    """An orthogonal periodic cell of ``atoms`` with the zone axis ``[uvw]`` along +z.

    ``zone_axis`` is the real-space direction ``u a1 + v a2 + w a3`` in the basis of
    ``atoms.cell`` (or ``[uvtw]`` for a hexagonal cell). The crystal is reduced to a primitive
    cell, rotated (``R``) so that the zone axis points along +z and a lattice vector normal to
    it along +x (``x_axis``, a direction like ``zone_axis``; by default the shorter edge of the
    smallest rectangle of lattice vectors normal to the zone axis, or the shortest lattice
    vector normal to it if there is no such rectangle), then rotated about z by
    ``in_plane_rotation_rad``. Then, as in abTEM's ``orthogonalize_cell``, for each of x, y, z
    the lattice vector best aligned with that axis is picked (the shortest among equally
    aligned ones; combinations of at most ``max_repetitions`` of each primitive vector); that
    supercell is built with ``ase.build.make_supercell`` (which, unlike abTEM's cut, never
    loses atoms on the cell boundary) and mapped onto the orthogonal box with the same edge
    lengths by an affine ``F``. ``F`` is the identity when
    lattice vectors exactly along x, y and z exist (e.g. any zone axis of a cubic crystal, or
    ``[0001]``, ``[2-1-10]``, ``[01-10]`` of a hexagonal one, at zero in-plane rotation); the
    z length is then the lattice repeat along the zone axis.

    Raises ValueError (naming the zone axis) when ``|F - I|`` (spectral norm: the largest
    relative displacement, including any tilt off the zone axis) exceeds ``tolerance``.

    Returns ``(oriented, info)``; ``info`` has ``zone_axis`` (3 ints), ``rotation`` (3x3 R,
    ``r_lab = R r_crystal``), ``orthogonalization_F`` (3x3, applied after R, so that
    ``r_lab = F R r_crystal + t``), ``orthogonalization_strain`` (``|F - I|``),
    ``cell_lengths`` (x, y, z in Å), ``cell_uvw`` (rows: the x, y, z cell vectors before F as
    directions in the basis of ``atoms.cell``; may be fractional for centred cells) and
    ``in_plane_rotation_rad``.
    """
    from ase.build import make_supercell

    _check_atoms("atoms", atoms)
    n_rep = positive_int("max_repetitions", max_repetitions)
    tol = positive_float("tolerance", tolerance)
    theta = float(in_plane_rotation_rad)
    if not math.isfinite(theta):
        raise Distill4dError(f"in_plane_rotation_rad must be finite, got {in_plane_rotation_rad!r}")
    cell = np.asarray(atoms.cell, dtype=float)
    uvw = _direction("zone_axis", zone_axis, cell)
    d = uvw @ cell
    d_hat = d / np.linalg.norm(d)

    prim = _primitive(atoms)
    P = np.asarray(prim.cell, dtype=float)
    vecs = _coefficients(n_rep) @ P
    if x_axis is not None:
        xv = _direction("x_axis", x_axis, cell) @ cell
        if abs(xv @ d_hat) > 1e-6 * np.linalg.norm(xv):
            raise Distill4dError(
                f"x_axis={list(np.asarray(x_axis).tolist())} must be perpendicular to "
                f"zone_axis={uvw.tolist()}"
            )
    else:
        lengths = np.linalg.norm(vecs, axis=1)
        normal = np.abs(vecs @ d_hat) <= 1e-8 * lengths
        if np.any(normal):
            xv = _in_plane_x(vecs[normal])
        else:  # no lattice vector normal to the zone axis: project the shortest other one
            parallel = np.linalg.norm(np.cross(vecs, d_hat), axis=1) <= 1e-8 * lengths
            xv = _shortest(vecs[~parallel])
    R = _rotation_to_z(d, xv)
    c, s = math.cos(theta), math.sin(theta)
    R = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ R

    Pr = P @ R.T  # primitive cell vectors (rows) in the lab frame
    zone = tuple(int(x) for x in uvw)
    M = _best_orthogonal_supercell(Pr, n_rep)
    if M is None:
        raise Distill4dError(
            f"zone_axis {list(zone)}: no three independent lattice vectors close to x, y and z "
            f"within max_repetitions={n_rep}; increase max_repetitions"
        )
    cut_cell = M @ Pr  # rows, lab frame, before F
    box = np.linalg.norm(cut_cell, axis=1)
    A = np.linalg.solve(cut_cell, np.diag(box))  # cut_cell @ A = diag(box); rows map r @ A
    F = A.T
    strain_norm = float(np.linalg.norm(F - np.eye(3), 2))
    if strain_norm > tol:
        raise Distill4dError(
            f"zone_axis {list(zone)}: the best orthogonal cell within max_repetitions={n_rep} "
            f"needs a strain of {strain_norm:.3g} (> tolerance={tol:g}); increase "
            f"max_repetitions or tolerance"
            + (", or use in_plane_rotation_rad=0" if theta % (math.pi / 2) else "")
        )
    rotated = prim.copy()
    rotated.positions[:] = prim.positions @ R.T
    rotated.set_cell(Pr, scale_atoms=False)
    rotated.pbc = True
    out = make_supercell(rotated, M, wrap=False)  # checks the number of atoms
    out.positions[:] = out.positions @ A
    out.set_cell(np.diag(box), scale_atoms=False)
    out.pbc = True
    out.wrap(eps=1e-9)
    cell_uvw = (cut_cell @ R) @ np.linalg.inv(cell)
    info = {
        "zone_axis": zone,
        "rotation": R,
        "orthogonalization_F": F,
        "orthogonalization_strain": strain_norm,
        "cell_lengths": box.copy(),
        "cell_uvw": np.where(np.abs(cell_uvw) < 1e-9, 0.0, cell_uvw),
        "in_plane_rotation_rad": theta,
    }
    return out, info


def zone_axes(
    atoms: Atoms, max_index: int = 1, *, symmetry_reduce: bool = True, symprec: float = 1e-3
) -> list[tuple[int, int, int]]:
    """Low-index zone axes ``[uvw]`` (``|u|, |v|, |w| <= max_index``, no common factor).

    ``[uvw]`` and ``[-u-v-w]`` count once. With ``symmetry_reduce`` (needs spglib), axes that
    are equivalent under the crystal's point group are listed once (the representative with
    the fewest negative, then non-zero indices, then the lexicographically largest, within
    the index range: ``[100]``, ``[110]``, ``[111]`` for a cubic crystal). Sorted by the
    length of ``u a1 + v a2 + w a3`` (shortest first).
    """
    _check_atoms("atoms", atoms)
    m = positive_int("max_index", max_index)
    cell = np.asarray(atoms.cell, dtype=float)
    r = range(-m, m + 1)
    cands = []
    for v in itertools.product(r, r, r):
        if any(v) and math.gcd(*v) == 1:
            first = next(x for x in v if x)
            if first > 0:
                cands.append(v)
    ops = [np.eye(3, dtype=int)]
    if symmetry_reduce:
        import spglib

        with warnings.catch_warnings():  # spglib 2.x warns about its legacy error handling
            warnings.simplefilter("ignore", DeprecationWarning)
            sym = spglib.get_symmetry(
                (cell, atoms.get_scaled_positions(), atoms.numbers),
                symprec=positive_float("symprec", symprec),
            )
        if sym is not None:
            ops = [np.asarray(w, dtype=int) for w in sym["rotations"]]
    seen: set[tuple[int, int, int]] = set()
    out = []
    for v in cands:
        if v in seen:
            continue
        orbit = set()
        for w in ops:
            for sign in (1, -1):
                orbit.add(tuple(int(x) for x in sign * (w @ np.array(v))))
        seen |= orbit
        inside = [t for t in orbit if max(abs(x) for x in t) <= m]
        rep = min(inside, key=lambda t: (sum(x < 0 for x in t), sum(x != 0 for x in t), [-x for x in t]))
        out.append(rep)
    def length(t: tuple[int, int, int]) -> float:
        return round(float(np.linalg.norm(np.array(t) @ cell)), 6)

    out.sort(key=lambda t: (length(t), sum(x < 0 for x in t), [-x for x in t]))
    return out


# --------------------------------------------------------------------------------------------
# Strain and tiling
# --------------------------------------------------------------------------------------------


def deformation_gradient(
    exx: float = 0.0, eyy: float = 0.0, exy: float = 0.0, theta_rad: float = 0.0
) -> np.ndarray:
    """In-plane deformation gradient ``F = R(theta) (I + eps)`` (3x3; z untouched).

    ``eps = [[exx, exy], [exy, eyy]]`` is the symmetric strain (``exy`` is the tensor shear,
    half the engineering shear) and ``R(theta)`` a counter-clockwise rotation about z. So
    ``I + eps`` is exactly the right stretch tensor ``U`` of the polar decomposition ``F = R U``
    (``F^T F = (I + eps)^2``) as long as ``I + eps`` is positive definite; for ``theta = 0``,
    ``eps = (F + F^T)/2 - I`` exactly.
    """
    vals = {"exx": exx, "eyy": eyy, "exy": exy, "theta_rad": theta_rad}
    for k, v in vals.items():
        number = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
        if not number or not math.isfinite(v):
            raise Distill4dError(f"{k} must be a finite number, got {v!r}")
    U = np.array([[1.0 + exx, exy], [exy, 1.0 + eyy]])
    if np.linalg.eigvalsh(U).min() <= 0:
        raise Distill4dError(
            f"I + eps must be positive definite (a physical stretch), got exx={exx}, eyy={eyy}, exy={exy}"
        )
    c, s = math.cos(theta_rad), math.sin(theta_rad)
    F = np.eye(3)
    F[:2, :2] = np.array([[c, -s], [s, c]]) @ U
    return F


def strain(atoms: Atoms, F: Any, *, allow_nonorthogonal: bool = False) -> Atoms:
    """``atoms`` deformed by ``F`` (3x3): positions ``F r``, cell vectors ``F a``.

    ``F`` may not couple z with x, y (``F[2, :2] == F[:2, 2] == 0``; ``F[2, 2]`` may stretch
    z). Only a diagonal ``F`` (pure stretches along x, y, z) keeps an orthogonal cell
    orthogonal; any other in-plane ``F`` (shear, rotation) raises ValueError unless
    ``allow_nonorthogonal=True``, in which case the cell becomes ``F a`` (non-orthogonal).
    Multislice of such a cell needs an orthogonal supercell approximation (e.g.
    ``abtem.orthogonalize_cell``), which the caller handles. Returns a new Atoms.
    """
    _check_atoms("atoms", atoms)
    F = np.asarray(F, dtype=float)
    if F.shape != (3, 3) or not np.all(np.isfinite(F)):
        raise Distill4dError(f"F must be a finite 3x3 array, got shape {F.shape}")
    if np.linalg.det(F) <= 0:
        raise Distill4dError(f"F must have a positive determinant, got det(F)={np.linalg.det(F):.4g}")
    coupling = np.abs(np.array([F[2, 0], F[2, 1], F[0, 2], F[1, 2]])).max()
    if coupling > 1e-12:
        raise Distill4dError(
            f"F must not couple z with x, y (F[2, :2] and F[:2, 2] must be 0), got {F.tolist()}; "
            "tilt the beam in the multislice propagator instead"
        )
    if not allow_nonorthogonal and abs(F[0, 1]) + abs(F[1, 0]) > 1e-12:
        raise Distill4dError(
            f"F has in-plane shear/rotation (F[0, 1]={F[0, 1]:.3g}, F[1, 0]={F[1, 0]:.3g}), which makes "
            "the cell non-orthogonal; pass allow_nonorthogonal=True to get the sheared cell "
            "(multislice then needs an orthogonal supercell approximation)"
        )
    out = atoms.copy()
    out.positions[:] = atoms.positions @ F.T
    out.set_cell(np.asarray(atoms.cell) @ F.T, scale_atoms=False)
    return out


def repeat_to_extent(
    atoms: Atoms, extent_A: tuple[float, float], thickness_A: float | None = None
) -> tuple[Atoms, tuple[int, int, int]]:
    """Tile an orthogonal cell so that x, y lengths are >= ``extent_A`` and z >= ``thickness_A``.

    Returns ``(tiled, (nx, ny, nz))``; ``nz = 1`` when ``thickness_A`` is None.
    """
    _check_atoms("atoms", atoms)
    cell = np.asarray(atoms.cell, dtype=float)
    lengths = np.abs(np.diag(cell))
    if np.abs(cell[~np.eye(3, dtype=bool)]).max() > 1e-8 * lengths.max():
        raise Distill4dError(
            f"atoms must have an orthogonal (diagonal) cell, got {np.round(cell, 6).tolist()}; "
            "use distill4d.simulate.crystals.orient"
        )
    ext = np.asarray(extent_A, dtype=float).ravel()
    if ext.shape != (2,):
        raise Distill4dError(f"extent_A must be (x, y) in Å, got {extent_A!r}")
    targets = [positive_float("extent_A", ext[0]), positive_float("extent_A", ext[1])]
    targets.append(lengths[2] if thickness_A is None else positive_float("thickness_A", thickness_A))
    reps = tuple(max(1, math.ceil(t / L * (1 - 1e-9))) for t, L in zip(targets, lengths))
    return atoms.repeat(reps), reps
