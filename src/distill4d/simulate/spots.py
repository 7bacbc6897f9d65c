"""Kinematic Bragg-spot lists of 3D crystals in random orientations, and a labelled library.

For crystal identification the unit of data is a list of spots ``(qx, qy, intensity)`` in
1/Å (relative to the direct beam), not an image. :func:`spot_patterns` makes such lists:

- the reciprocal lattice ``G = (h, k, l) · inv(cell)^T`` (1/Å, no 2π) of the crystal's cell
  (rows of ``atoms.cell`` are the lattice vectors, Å), all points with ``0 < |G| <= g_max``;
- kinematic intensity ``|F(G)|²`` with ``F(G) = Σ_j f_j exp(2πi G·r_j)`` and a simple
  scattering factor ``f_j = Z_j^(2/3) exp(-B |G|² / 4)``, ``B = debye_waller_A2`` (Å²): an
  approximation good enough for relative spot intensities, not for quantitative work;
- per orientation a uniformly random rotation ``R`` of the crystal (``G -> R G``), a beam
  along +z with wave number ``k = 1/λ`` (λ from ``energy_eV``), the excitation error
  ``s = -(G_z + |G|² / (2k))`` (1/Å; distance of G from the Ewald sphere) and the spot
  weight ``exp(-s² / (2 σ²))`` with ``σ = excitation_error_inv_A`` (relrod width, from
  thickness and convergence), times ``sinc²(t s)`` if ``thickness_A = t`` is given;
- the spot sits at ``(G_x, G_y)`` (small-angle projection); spots with ``|g| > max_g_inv_A``
  or below ``min_relative_intensity`` of the strongest are dropped; intensities are scaled
  so that the strongest is 1. The direct beam is not in the list.

:func:`augment_spots` perturbs a spot list as an experiment would (position and intensity
noise, missing weak spots, a detector edge, a calibration error). :func:`spot_library`
builds a labelled library (crystal system, space group, conventional lattice parameters,
structure id for a split by structure) from pyxtal random crystals and ASE prototypes;
:func:`variant_library` adds cheap new crystals made from some of its structures (new cell
parameters and species, same space group), for training only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .._ragged import pad_rows
from .._validate import nonnegative_float, positive_float, positive_int
from ..errors import Distill4dError
from .crystals import _rng

if TYPE_CHECKING:  # pragma: no cover
    from ase import Atoms

__all__ = ["SYSTEMS", "spot_patterns", "random_rotations", "zone_rotations", "zone_sigmas", "augment_spots", "SpotLibrary",
           "spot_library", "variant_library"]

#: The seven crystal systems, in the order of their space-group numbers (class indices).
SYSTEMS = ("triclinic", "monoclinic", "orthorhombic", "tetragonal", "trigonal", "hexagonal", "cubic")


def random_rotations(n: int, rng: np.random.Generator | int) -> np.ndarray:
    """``n`` rotation matrices ``(n, 3, 3)`` uniformly distributed over SO(3) (unit quaternions)."""
    rng = _rng(rng)
    q = rng.standard_normal((positive_int("n", n), 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], axis=1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], axis=1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], axis=1),
        ],
        axis=1,
    )


#: Zone-axis orientations (:func:`zone_rotations`): ``[uvw]`` with indices up to this, the
#: ``ZONE_CHOICES`` shortest real-space directions, a tilt off the axis up to ``ZONE_TILT_MRAD``
#: (mrad), and a relrod width (excitation error, 1/Å) drawn log-uniformly in ``ZONE_SIGMA_INV_A``:
#: narrower than the random orientations' (a crystal of 20-60 nm tilted to a zone, small convergence).
ZONE_MAX_INDEX = 2
ZONE_CHOICES = 13
ZONE_TILT_MRAD = 15.0
ZONE_SIGMA_INV_A = (0.003, 0.03)
#: The weak tail of zone-axis patterns with ``zone_tail`` (:func:`spot_patterns` ``tail``): its
#: weight drawn log-uniformly in ``ZONE_TAIL`` per pattern, its width in the excitation error (1/Å).
ZONE_TAIL = (0.003, 0.05)
ZONE_TAIL_WIDTH_INV_A = 0.15
#: Spots of one pattern nearer each other than this (1/Å) are merged where a tail is added.
MERGE_INV_A = 0.004


def zone_rotations(atoms: "Atoms", n: int, rng: np.random.Generator | int) -> np.ndarray:
    """``n`` rotations ``(n, 3, 3)`` (``G -> R G`` as in :func:`spot_patterns`) that put a low-index
    zone axis of ``atoms`` near the beam (+z), as a microscopist tilts a crystal to a zone: the
    axis drawn among the :data:`ZONE_CHOICES` shortest directions ``u a1 + v a2 + w a3``
    (``|u|, |v|, |w| <= ZONE_MAX_INDEX``, no common factor, ``[uvw]`` and ``[-u-v-w]`` once),
    a uniform in-plane rotation and a tilt off the axis uniform in a disk of
    :data:`ZONE_TILT_MRAD`. Deterministic for a given ``rng``."""
    from .crystals import _check_atoms, _rotation_to_z

    _check_atoms("atoms", atoms)
    rng = _rng(rng)
    n = positive_int("n", n)
    cell = np.asarray(atoms.cell.array, dtype=np.float64)
    r = np.arange(-ZONE_MAX_INDEX, ZONE_MAX_INDEX + 1)
    uvw = np.stack(np.meshgrid(r, r, r, indexing="ij"), axis=-1).reshape(-1, 3)
    first = uvw[np.arange(len(uvw)), np.argmax(uvw != 0, axis=1)]
    uvw = uvw[(np.abs(uvw).sum(1) > 0) & (np.gcd.reduce(np.abs(uvw), axis=1) == 1) & (first > 0)]
    d = uvw @ cell
    d = d[np.argsort(np.linalg.norm(d, axis=1), kind="stable")[:ZONE_CHOICES]]
    out = np.empty((n, 3, 3))
    for i in range(n):
        z = d[rng.integers(len(d))]
        x = np.cross(z, [1.0, 0.0, 0.0] if abs(z[0]) < 0.9 * np.linalg.norm(z) else [0.0, 1.0, 0.0])
        R = _rotation_to_z(z, x)
        a = rng.uniform(0, 2 * np.pi)
        t = ZONE_TILT_MRAD * 1e-3 * math.sqrt(rng.uniform()) if ZONE_TILT_MRAD else 0.0
        phi = rng.uniform(0, 2 * np.pi)
        axis = np.array([math.cos(phi), math.sin(phi), 0.0])
        K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        tilt = np.eye(3) + math.sin(t) * K + (1 - math.cos(t)) * K @ K  # Rodrigues
        spin = np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])
        out[i] = tilt @ spin @ R
    return out


def zone_sigmas(n: int, rng: np.random.Generator | int) -> np.ndarray:
    """``n`` relrod widths (1/Å) drawn log-uniformly in :data:`ZONE_SIGMA_INV_A`."""
    return _log_uniform(ZONE_SIGMA_INV_A, n, rng)


def _log_uniform(span: tuple[float, float], n: int, rng: np.random.Generator | int) -> np.ndarray:
    """``n`` values drawn log-uniformly in ``span``."""
    lo, hi = np.log(span)
    return np.exp(_rng(rng).uniform(lo, hi, positive_int("n", n)))


def _reciprocal_points(atoms: "Atoms", g_max: float, debye_waller_A2: float) -> tuple[np.ndarray, np.ndarray]:
    """All ``G`` (m, 3) in 1/Å with ``0 < |G| <= g_max`` and their kinematic ``|F(G)|²``."""
    cell = np.asarray(atoms.cell.array, dtype=np.float64)
    if cell.shape != (3, 3) or abs(np.linalg.det(cell)) < 1e-9:
        raise Distill4dError("atoms must have a 3D periodic cell (non-zero volume) to have reflections")
    recip = np.linalg.inv(cell).T  # rows b_i
    n = [int(math.ceil(g_max * np.linalg.norm(a))) + 1 for a in cell]
    h, k, l = np.meshgrid(*(np.arange(-m, m + 1) for m in n), indexing="ij")
    hkl = np.stack([h.ravel(), k.ravel(), l.ravel()], axis=1)
    G = hkl @ recip
    gl = np.linalg.norm(G, axis=1)
    keep = (gl > 0) & (gl <= g_max)
    hkl, G, gl = hkl[keep], G[keep], gl[keep]
    frac = atoms.get_scaled_positions(wrap=True)
    f = np.asarray(atoms.numbers, dtype=np.float64) ** (2.0 / 3.0)
    F = np.exp(2j * np.pi * (hkl @ frac.T)) @ f
    intensity = np.abs(F) ** 2 * np.exp(-debye_waller_A2 * gl**2 / 2.0)  # |f|² carries exp(-B g²/2)
    return G, intensity


def spot_patterns(
    atoms: "Atoms",
    n_orientations: int,
    *,
    rng: np.random.Generator | int,
    energy_eV: float = 200e3,
    max_g_inv_A: float = 1.5,
    excitation_error_inv_A: float | np.ndarray = 0.01,
    thickness_A: float | None = None,
    min_relative_intensity: float = 1e-3,
    debye_waller_A2: float = 0.5,
    rotations: np.ndarray | None = None,
    tail: float | np.ndarray = 0.0,
    tail_width_inv_A: float = ZONE_TAIL_WIDTH_INV_A,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Kinematic spot lists ``(qx, qy, intensity)`` (1/Å, 1/Å, max 1) of ``atoms`` in random orientations.

    See the module docstring for the model. ``rotations`` (n, 3, 3) replaces the random
    orientations (then ``n_orientations`` must equal n); ``excitation_error_inv_A`` may be one
    width per orientation (n,). ``tail`` (one weight, or one per orientation) adds
    ``tail |F|² exp(-s² / (2 tail_width_inv_A²))`` to every spot's weight: the weak spots that
    multiple scattering carries in a thick crystal from reciprocal points far from the Ewald sphere
    (upper-Laue-zone reflections projected between the zero-order ones, 1-5 % of the strong
    spots in abTEM multislice at 20-50 nm); spots then nearer each other than
    :data:`MERGE_INV_A` are merged (weights summed). Deterministic for a given ``rng``.
    A pattern can have no spot (an orientation far from any zone axis with a small
    ``excitation_error_inv_A``); it is returned empty.
    """
    from ..calibration import electron_wavelength_A

    n_or = positive_int("n_orientations", n_orientations)
    g_max = positive_float("max_g_inv_A", max_g_inv_A, maximum=20.0)
    sigmas = _per_orientation("excitation_error_inv_A", excitation_error_inv_A, n_or)
    for sigma in np.unique(sigmas):
        positive_float("excitation_error_inv_A", sigma)
    tails = _per_orientation("tail", tail, n_or)
    for t in np.unique(tails):
        nonnegative_float("tail", t)
    tail_w = positive_float("tail_width_inv_A", tail_width_inv_A)
    thick = None if thickness_A is None else positive_float("thickness_A", thickness_A)
    rel = nonnegative_float("min_relative_intensity", min_relative_intensity)
    bw = nonnegative_float("debye_waller_A2", debye_waller_A2)
    k = 1.0 / electron_wavelength_A(positive_float("energy_eV", energy_eV))
    if rotations is None:
        rotations = random_rotations(n_or, _rng(rng))
    else:
        rotations = np.asarray(rotations, dtype=np.float64)
        if rotations.shape != (n_or, 3, 3):
            raise Distill4dError(f"rotations must have shape ({n_or}, 3, 3), got {rotations.shape}")
    G, F2 = _reciprocal_points(atoms, g_max, bw)
    out = []
    for R, sigma, t in zip(rotations, sigmas, tails):
        Gr = G @ R.T
        s = -(Gr[:, 2] + np.sum(Gr**2, axis=1) / (2 * k))
        w = F2 * np.exp(-(s**2) / (2 * sigma**2))
        if thick is not None:
            w = w * np.sinc(thick * s) ** 2
        if t > 0:
            w = w + t * F2 * np.exp(-(s**2) / (2 * tail_w**2))
        inside = np.hypot(Gr[:, 0], Gr[:, 1]) <= g_max
        top = w[inside].max(initial=0.0)
        keep = inside & (w > 0) & (w >= rel * top) if top > 0 else np.zeros(len(w), bool)
        qx, qy, wk = Gr[keep, 0], Gr[keep, 1], w[keep]
        if t > 0 and wk.size:  # projections of several points on one spot: one spot
            _, cell = np.unique(np.round(np.stack([qx, qy], 1) / MERGE_INV_A).astype(np.int64), axis=0,
                                return_inverse=True)
            cell = cell.ravel()
            total = np.bincount(cell, weights=wk)
            qx, qy, wk = np.bincount(cell, weights=qx * wk) / total, np.bincount(cell, weights=qy * wk) / total, total
        out.append((qx.copy(), qy.copy(), wk / top if top > 0 else wk))
    return out


def _per_orientation(name: str, value: Any, n: int) -> np.ndarray:
    """``value`` (one number or ``n``) as ``(n,)`` float64; a clear error otherwise."""
    v = np.asarray(value, dtype=np.float64)
    if v.ndim > 1 or v.size not in (1, n):
        raise Distill4dError(f"{name} must be one value or one per orientation ({n}), got shape {v.shape}")
    return np.broadcast_to(v.ravel(), (n,))


def augment_spots(
    qx_inv_A: np.ndarray,
    qy_inv_A: np.ndarray,
    intensity: np.ndarray,
    *,
    rng: np.random.Generator | int,
    position_sigma_inv_A: float = 0.003,
    intensity_noise: float = 0.1,
    drop_weak_fraction: float = 0.2,
    detector_edge_inv_A: float | None = None,
    calibration_error: float = 0.02,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A spot list perturbed as measured: ``(qx, qy, intensity)``.

    - positions: Gaussian noise of ``position_sigma_inv_A`` (1/Å) per coordinate;
    - intensities: multiplied by ``exp(N(0, intensity_noise))``;
    - weak spots missing: each spot is dropped with probability ``drop_weak_fraction ·
      (1 - I / I_max)^4`` (weak ones mostly), the strongest is always kept;
    - a detector edge: spots with ``|qx|`` or ``|qy|`` beyond ``detector_edge_inv_A`` (1/Å)
      are cut (a square detector centred on the beam); None: no edge;
    - a calibration error: all positions scaled by ``1 + U(-e, e)`` with ``e = calibration_error``.
    """
    rng = _rng(rng)
    qx, qy, it = (np.asarray(a, dtype=np.float64) for a in (qx_inv_A, qy_inv_A, intensity))
    if qx.size == 0:
        return qx, qy, it
    ps = nonnegative_float("position_sigma_inv_A", position_sigma_inv_A)
    noise = nonnegative_float("intensity_noise", intensity_noise)
    drop = nonnegative_float("drop_weak_fraction", drop_weak_fraction)
    err = nonnegative_float("calibration_error", calibration_error)
    scale = 1.0 + rng.uniform(-err, err)
    qx = (qx + rng.normal(0.0, ps, qx.size)) * scale if ps else qx * scale
    qy = (qy + rng.normal(0.0, ps, qy.size)) * scale if ps else qy * scale
    it = it * np.exp(rng.normal(0.0, noise, it.size)) if noise else it.copy()
    p_drop = drop * (1.0 - it / it.max()) ** 4
    keep = rng.random(it.size) >= p_drop
    keep[np.argmax(it)] = True
    if detector_edge_inv_A is not None:
        edge = positive_float("detector_edge_inv_A", detector_edge_inv_A)
        keep &= (np.abs(qx) <= edge) & (np.abs(qy) <= edge)
    return qx[keep], qy[keep], it[keep]


@dataclasses.dataclass
class SpotLibrary:
    """Labelled spot lists, stored ragged: the spots of all patterns one after another.

    ``spot_qx``, ``spot_qy`` (N,) in 1/Å and ``spot_intensity`` (N,): pattern ``p``'s spots
    are entries ``offsets[p]:offsets[p + 1]``, ``counts`` (P,) spots per pattern; per pattern:
    ``structure`` (P,) the index of its structure (split by this, never by pattern); per
    structure: ``space_group`` (S,), ``system`` (S,) index into :data:`SYSTEMS`, ``cellpar``
    (S, 6) conventional a, b, c (Å), alpha, beta, gamma (degrees), ``name`` (S,) a short
    description. Memory grows with the number of spots; :meth:`padded` gives NaN-padded
    ``(n, K)`` arrays of some patterns (``qx``, ``qy``, ``intensity``: of all of them, whose
    size grows with patterns times the longest list, for small libraries).
    """

    spot_qx: np.ndarray
    spot_qy: np.ndarray
    spot_intensity: np.ndarray
    counts: np.ndarray
    structure: np.ndarray
    space_group: np.ndarray
    system: np.ndarray
    cellpar: np.ndarray
    name: np.ndarray

    def __len__(self) -> int:
        return int(self.counts.size)

    @property
    def offsets(self) -> np.ndarray:
        """``(P + 1,)`` start of every pattern's spots in the ``spot_*`` arrays, and their total."""
        return np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)

    def padded(self, rows: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(qx, qy, intensity, counts)`` of the patterns ``rows`` (indices or a slice; default
        all): NaN-padded ``(n, K)`` arrays, ``K`` the longest of their lists, and counts ``(n,)``."""
        idx = np.arange(len(self))[slice(None) if rows is None else rows]
        counts = self.counts[idx]
        (qx, qy, it), _ = pad_rows((self.spot_qx, self.spot_qy, self.spot_intensity), self.offsets[idx], counts)
        return qx, qy, it, counts

    @property
    def qx(self) -> np.ndarray:
        """NaN-padded ``(P, K)`` ``qx`` (1/Å) of every pattern (see :meth:`padded`)."""
        return self.padded()[0]

    @property
    def qy(self) -> np.ndarray:
        """NaN-padded ``(P, K)`` ``qy`` (1/Å) of every pattern (see :meth:`padded`)."""
        return self.padded()[1]

    @property
    def intensity(self) -> np.ndarray:
        """NaN-padded ``(P, K)`` intensities of every pattern (see :meth:`padded`)."""
        return self.padded()[2]

    def subset(self, structures: Any) -> "SpotLibrary":
        """The patterns of the given structure indices (structure indices are renumbered 0..)."""
        structures = np.asarray(structures, dtype=np.int64)
        rows = np.isin(self.structure, structures)
        spots = np.repeat(rows, self.counts)
        renum = np.full(len(self.space_group), -1)
        renum[structures] = np.arange(structures.size)
        return SpotLibrary(
            self.spot_qx[spots], self.spot_qy[spots], self.spot_intensity[spots], self.counts[rows],
            renum[self.structure[rows]], self.space_group[structures], self.system[structures],
            self.cellpar[structures], self.name[structures],
        )

    def save(self, path: Any) -> None:
        """Write the library to an ``.npz`` file (no pickle)."""
        np.savez_compressed(path, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)})

    @classmethod
    def load(cls, path: Any) -> "SpotLibrary":
        """Read a library written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as z:
            missing = [f.name for f in dataclasses.fields(cls) if f.name not in z]
            if missing:
                raise Distill4dError(f"{path} is not a spot library: it lacks {missing}")
            return cls(**{f.name: z[f.name] for f in dataclasses.fields(cls)})


def _library_jobs(space_groups: Sequence[int], n_structures: int, prototypes: Sequence[str]) -> list[tuple[str, Any]]:
    """One ``(kind, what)`` per structure of a library, in its order: ``("sg", number)`` for each
    random crystal, ``("proto", name)`` for each prototype."""
    n_s = positive_int("n_structures", n_structures)
    jobs: list[tuple[str, Any]] = [("sg", int(sg)) for sg in space_groups for _ in range(n_s)]
    jobs += [("proto", str(p)) for p in prototypes]
    if not jobs:
        raise Distill4dError("spot_library needs at least one space group or prototype")
    return jobs


def _job_crystal(job: tuple[str, Any], rng: np.random.Generator, max_atoms: int) -> tuple["Atoms", int, str]:
    """``(atoms, space group, name)`` of a library job (a random crystal draws from ``rng``)."""
    from .crystals import prototype, random_crystal, spacegroup_number

    kind, what = job
    if kind == "sg":
        atoms = random_crystal(what, rng=rng, max_atoms=max_atoms)
        return atoms, int(what), f"sg{what}-{atoms.get_chemical_formula()}"
    atoms = prototype(what)
    return atoms, spacegroup_number(atoms), str(what)


def _structure_spots(atoms: "Atoms", n_or: int, rng: np.random.Generator, augment: bool, min_spots: int,
                     pattern_kwargs: dict[str, Any], n_zone: int = 0,
                     zone_tail: bool = False) -> tuple[list[np.ndarray], np.ndarray]:
    """The patterns of one crystal, as ``([qx, qy, intensity] concatenated, counts)``: ``n_or``
    random orientations by :func:`spot_patterns`, then ``n_zone`` near zone axes
    (:func:`zone_rotations`, relrod widths :func:`zone_sigmas`, with ``zone_tail`` a weak tail of
    weight drawn in :data:`ZONE_TAIL`), augmented if asked, lists under ``min_spots`` left out."""
    lists = spot_patterns(atoms, n_or, rng=rng, **pattern_kwargs) if n_or else []
    if n_zone:
        rot = zone_rotations(atoms, n_zone, rng)
        kw = {k: v for k, v in pattern_kwargs.items() if k != "excitation_error_inv_A"}
        sig = zone_sigmas(n_zone, rng)
        if zone_tail:
            kw["tail"] = _log_uniform(ZONE_TAIL, n_zone, rng)
        lists += spot_patterns(atoms, n_zone, rng=rng, rotations=rot, excitation_error_inv_A=sig, **kw)
    mine = []
    for qx, qy, it in lists:
        if augment:
            qx, qy, it = augment_spots(qx, qy, it, rng=rng)
        if qx.size >= min_spots:
            mine.append((qx, qy, it))
    cat = [np.asarray(np.concatenate([m[c] for m in mine]) if mine else np.zeros(0), dtype=np.float64)
           for c in range(3)]
    return cat, np.array([m[0].size for m in mine], dtype=np.int64)


class _Collected:
    """Spot lists and labels gathered structure by structure, then one :class:`SpotLibrary`."""

    def __init__(self) -> None:
        self.flat: list[list[np.ndarray]] = [[], [], []]  # qx, qy, intensity: one array per structure
        self.counts: list[np.ndarray] = []
        self.struct_of: list[np.ndarray] = []
        self.sgs: list[int] = []
        self.cellpars: list[np.ndarray] = []
        self.names: list[str] = []

    def add(self, cat: Sequence[np.ndarray], counts: np.ndarray, structure_of: np.ndarray, space_groups: Any,
            cellpars: Any, names: Any) -> None:
        """The patterns of one shard; ``structure_of`` (per pattern) counts from 0 within it."""
        for c in range(3):
            self.flat[c].append(np.asarray(cat[c], dtype=np.float64))
        self.counts.append(np.asarray(counts, dtype=np.int64))
        self.struct_of.append(np.asarray(structure_of, dtype=np.int64) + len(self.sgs))
        self.sgs += [int(g) for g in np.atleast_1d(space_groups)]
        self.cellpars += list(np.asarray(cellpars, dtype=np.float64).reshape(-1, 6))
        self.names += [str(n) for n in np.atleast_1d(names)]

    def library(self) -> SpotLibrary:
        from .crystals import crystal_system

        spots = []
        for c in range(3):  # concatenated one column at a time, freeing the pieces as it goes
            spots.append(np.concatenate(self.flat[c]) if self.flat[c] else np.zeros(0))
            self.flat[c] = []
        return SpotLibrary(
            spots[0], spots[1], spots[2], np.concatenate(self.counts) if self.counts else np.zeros(0, np.int64),
            np.concatenate(self.struct_of) if self.struct_of else np.zeros(0, np.int64),
            np.asarray(self.sgs, dtype=np.int64),
            np.asarray([SYSTEMS.index(crystal_system(g)) for g in self.sgs], dtype=np.int64),
            np.asarray(self.cellpars, dtype=np.float64).reshape(-1, 6), np.asarray(self.names, dtype=str),
        )


def _cache(cache_dir: Any) -> Any:
    from pathlib import Path

    if cache_dir is None:
        return None
    cache = Path(cache_dir)
    if not cache.is_dir():
        raise Distill4dError(f"cache_dir {cache} is not an existing folder")
    return cache


def _read_shard(shard: Any, key: str, cache: Any) -> dict[str, np.ndarray] | None:
    """The arrays of a cached shard written with ``key`` (None if there is none); another key raises."""
    if shard is None or not shard.is_file():
        return None
    with np.load(shard, allow_pickle=False) as z:
        if str(z["key"]) != key:
            raise Distill4dError(
                f"cache_dir {cache} holds a library built with other arguments ({shard.name}); "
                f"use another folder or empty it"
            )
        # each array read once: z[name] reads the whole array again at every access
        return {name: z[name] for name in z.files}


def _write_shard(shard: Any, **arrays: Any) -> None:
    from .._atomic import atomic_output

    with atomic_output(shard) as tmp, open(tmp, "xb") as fh:
        np.savez(fh, **arrays)


def spot_library(
    space_groups: Sequence[int],
    n_structures: int = 4,
    n_orientations: int = 20,
    *,
    seed: int = 0,
    prototypes: Sequence[str] = (),
    max_atoms: int = 24,
    augment: bool = False,
    min_spots: int = 3,
    cache_dir: Any = None,
    **pattern_kwargs: Any,
) -> SpotLibrary:
    """A labelled library: ``n_structures`` pyxtal random crystals per space group (and each
    of ``prototypes``, see :func:`~distill4d.simulate.crystals.list_prototypes`), each seen
    along ``n_orientations`` random orientations by :func:`spot_patterns` (keywords
    ``pattern_kwargs``), optionally perturbed by :func:`augment_spots`.

    Patterns with fewer than ``min_spots`` spots are left out. Deterministic for ``seed``:
    every structure has its own generator derived from ``(seed, structure index)``.

    Resumable: with ``cache_dir`` (an existing folder) every structure's patterns are written
    there (``structure_00000.npz`` ..., atomically, no pickle) as soon as they are made, and a
    later call with the same arguments reads them instead of simulating again; a folder
    written with other arguments raises :class:`Distill4dError`.
    """
    import json

    jobs = _library_jobs(space_groups, n_structures, prototypes)
    n_or = positive_int("n_orientations", n_orientations)
    min_spots = positive_int("min_spots", min_spots)
    cache = _cache(cache_dir)
    key = json.dumps(
        [list(map(str, jobs)), n_or, int(seed), max_atoms, bool(augment), min_spots,
         sorted((k, repr(v)) for k, v in pattern_kwargs.items())]
    )
    out = _Collected()
    for i, job in enumerate(jobs):
        shard = None if cache is None else cache / f"structure_{i:05d}.npz"
        z = _read_shard(shard, key, cache)
        if z is None:
            rng = np.random.default_rng([seed, i])
            atoms, sg, name = _job_crystal(job, rng, max_atoms)
            cat, counts = _structure_spots(atoms, n_or, rng, augment, min_spots, pattern_kwargs)
            z = {"space_group": np.array(sg), "cellpar": atoms.cell.cellpar(), "name": np.array(name),
                 "counts": counts, "qx": cat[0], "qy": cat[1], "intensity": cat[2]}
            if shard is not None:
                _write_shard(shard, key=np.array(key), **z)
        out.add((z["qx"], z["qy"], z["intensity"]), z["counts"], np.zeros(z["counts"].size, np.int64),
                z["space_group"], z["cellpar"], z["name"])
    return out.library()


def variant_library(
    space_groups: Sequence[int],
    n_structures: int,
    structures: Sequence[int],
    n_variants: int = 8,
    n_orientations: int = 10,
    *,
    seed: int = 0,
    prototypes: Sequence[str] = (),
    max_atoms: int = 24,
    augment: bool = False,
    min_spots: int = 3,
    length_spread: float = 0.25,
    angle_spread_deg: float = 10.0,
    n_zone_orientations: int = 0,
    zone_tail: bool = False,
    cache_dir: Any = None,
    **pattern_kwargs: Any,
) -> SpotLibrary:
    """Spot lists of cheap new crystals made from some structures of a :func:`spot_library`.

    For each index ``i`` of ``structures`` (indices of the library of ``space_groups``,
    ``n_structures``, ``seed``, ``prototypes`` and ``max_atoms``: give the training structures
    only, so that no variant of a held-out structure is trained on), the structure is rebuilt as
    that library builds it, and ``n_variants`` variants of it are made by
    :func:`~distill4d.simulate.crystals.cell_variant` (new free cell parameters within
    ``length_spread`` and ``angle_spread_deg``, new species; same space group), each seen along
    ``n_orientations`` random orientations as :func:`spot_library` sees a structure. Every
    variant is a structure of the result (its own lattice parameters; ``name`` ends in
    ``/v<k>``), in the order of ``structures``. Deterministic for ``seed``; resumable with
    ``cache_dir`` (``variants_00000.npz`` ..., one per parent structure).

    ``n_zone_orientations`` > 0: each variant is also seen near that many low-index zone axes
    (:func:`zone_rotations`, with the narrower relrods of :func:`zone_sigmas`), and
    ``n_orientations`` may be 0. Such a set is another draw of variants (its own random stream)
    in its own files (``zonevariants_00000.npz`` ...), so it can sit beside a plain one in one folder.
    ``zone_tail``: those zone-axis patterns carry the weak tail of a thick crystal (:func:`spot_patterns`
    ``tail``; drawn from the same random stream as without it, in files ``zonetailvariants_00000.npz`` ...).
    """
    import json

    from .crystals import cell_variant

    jobs = _library_jobs(space_groups, n_structures, prototypes)
    n_v = positive_int("n_variants", n_variants)
    n_zone = positive_int("n_zone_orientations", n_zone_orientations) if n_zone_orientations else 0
    n_or = positive_int("n_orientations", n_orientations) if n_orientations or not n_zone else 0
    min_spots = positive_int("min_spots", min_spots)
    idx = [int(i) for i in structures]
    if any(not 0 <= i < len(jobs) for i in idx):
        raise Distill4dError(f"structures must be indices in 0..{len(jobs) - 1} of the library's structures")
    cache = _cache(cache_dir)
    key = json.dumps(
        [list(map(str, jobs)), n_v, n_or, int(seed), max_atoms, bool(augment), min_spots, float(length_spread),
         float(angle_spread_deg), sorted((k, repr(v)) for k, v in pattern_kwargs.items())]
        + ([["zone", n_zone, ZONE_MAX_INDEX, ZONE_CHOICES, ZONE_TILT_MRAD, list(ZONE_SIGMA_INV_A)]] if n_zone else [])
        + ([["tail", list(ZONE_TAIL), ZONE_TAIL_WIDTH_INV_A, MERGE_INV_A]] if n_zone and zone_tail else [])
    )
    prefix, stream = (("zonetailvariants" if zone_tail else "zonevariants", 2) if n_zone else ("variants", 1))
    out = _Collected()
    for i in idx:
        shard = None if cache is None else cache / f"{prefix}_{i:05d}.npz"
        z = _read_shard(shard, key, cache)
        if z is None:
            atoms, sg, name = _job_crystal(jobs[i], np.random.default_rng([seed, i]), max_atoms)
            rng = np.random.default_rng([seed, i, stream])
            parts, counts, which, cellpars, names = [], [], [], [], []
            for k in range(n_v):
                v = cell_variant(atoms, sg, rng=rng, length_spread=length_spread, angle_spread_deg=angle_spread_deg)
                if v is None:
                    continue
                cat, c = _structure_spots(v, n_or, rng, augment, min_spots, pattern_kwargs, n_zone, zone_tail)
                parts.append(cat)
                counts.append(c)
                which.append(np.full(c.size, len(names), dtype=np.int64))
                cellpars.append(v.cell.cellpar())
                names.append(f"{name}/v{k}")
            z = {"space_group": np.full(len(names), sg, dtype=np.int64),
                 "cellpar": np.asarray(cellpars, dtype=np.float64).reshape(-1, 6), "name": np.asarray(names, dtype=str),
                 "counts": np.concatenate(counts) if counts else np.zeros(0, np.int64),
                 "variant": np.concatenate(which) if which else np.zeros(0, np.int64)}
            for c, col in enumerate(("qx", "qy", "intensity")):
                z[col] = np.concatenate([p[c] for p in parts]) if parts else np.zeros(0)
            if shard is not None:
                _write_shard(shard, key=np.array(key), **z)
        out.add((z["qx"], z["qy"], z["intensity"]), z["counts"], z["variant"], z["space_group"], z["cellpar"],
                z["name"])
    return out.library()
