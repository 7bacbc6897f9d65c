"""Train a :class:`~distill4d.identify.models.CrystalIdentifier` on a library the package builds.

:class:`IdentifyTrainConfig` is the whole recipe: the library
(:func:`distill4d.simulate.spots.spot_library`: pyxtal random crystals of ``space_groups``,
``n_structures`` each, plus the ASE prototypes, ``n_orientations`` random orientations each,
kinematic spots with excitation errors, augmented), the split by structure (``holdout``: that
fraction of every crystal system's structures is held out, never trained on) and the forests.
:func:`train_identifier` builds the library (resumably, with ``cache_dir``), trains on the
training structures, measures on the held-out ones and returns the model and its card.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from ..errors import Distill4dError
from ..simulate.spots import SYSTEMS

__all__ = ["CARD_FORMAT", "DEFAULT_SPACE_GROUPS", "IdentifyTrainConfig", "build_variants", "encode_library", "evaluate",
           "split_by_structure", "train_identifier"]

#: The model-card format of a crystal identifier (``distill4d/weights/identify_forest.json``).
CARD_FORMAT = "distill4d-identify-1"

#: Space groups of the default library: several per crystal system, low and high symmetry.
DEFAULT_SPACE_GROUPS = (1, 2, 4, 11, 12, 14, 15, 19, 33, 36, 62, 63, 71, 88, 99, 123, 129, 139, 141, 146, 148,
                        160, 166, 167, 176, 186, 191, 194, 205, 216, 221, 225, 227, 229)


@dataclasses.dataclass(frozen=True)
class IdentifyTrainConfig:
    """The recipe of a crystal identifier: library, split and forests (all seeded).

    Library: ``space_groups``, ``n_structures`` random crystals each (at most ``max_atoms``
    atoms), plus the ASE prototypes when ``prototypes``; ``n_orientations`` patterns each;
    ``excitation_error_inv_A`` (1/Å) and ``max_g_inv_A`` (1/Å) of the kinematic spots;
    augmented (noise, missing weak spots, calibration error of 2 %). Training only: ``n_variants``
    cheap variants of every training structure (new cell parameters and species, same space
    group: :func:`~distill4d.simulate.spots.variant_library`), ``variant_orientations``
    patterns each, in random orientations; ``n_zone_variants`` more variants of each (another draw),
    each seen near ``zone_orientations`` low-index zone axes with the narrower relrods of a crystal
    tilted to a zone (:func:`~distill4d.simulate.spots.zone_rotations`), with ``zone_tail`` also the
    weak off-Ewald tail of a thick crystal (:func:`~distill4d.simulate.spots.spot_patterns`). Split: ``holdout`` of every
    system's structures held out. Forests:
    ``n_estimators`` trees, ``max_depth``, ``min_samples_leaf``; the crystal system by
    ``system_classifier`` ("mlp", a multilayer perceptron trained with PyTorch, or "forest").
    ``seed`` seeds the library, the split and the forests.
    """

    space_groups: tuple[int, ...] = DEFAULT_SPACE_GROUPS
    n_structures: int = 12
    n_orientations: int = 40
    prototypes: bool = True
    max_atoms: int = 24
    excitation_error_inv_A: float = 0.03
    max_g_inv_A: float = 1.5
    n_variants: int = 0
    variant_orientations: int = 10
    n_zone_variants: int = 0
    zone_orientations: int = 10
    zone_tail: bool = False
    holdout: float = 0.25
    n_estimators: int = 50
    max_depth: int | None = 14
    min_samples_leaf: int = 5
    system_classifier: str = "mlp"
    seed: int = 1

    def __post_init__(self) -> None:
        if not 0.0 < self.holdout < 1.0:
            raise Distill4dError(f"holdout must be a fraction in (0, 1), got {self.holdout}")
        if self.n_variants < 0 or self.variant_orientations < 1:
            raise Distill4dError(f"n_variants must be >= 0 and variant_orientations >= 1, got {self.n_variants} "
                                 f"and {self.variant_orientations}")
        if self.n_zone_variants < 0 or self.zone_orientations < 1:
            raise Distill4dError(f"n_zone_variants must be >= 0 and zone_orientations >= 1, got "
                                 f"{self.n_zone_variants} and {self.zone_orientations}")
        object.__setattr__(self, "space_groups", tuple(int(g) for g in self.space_groups))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def split_by_structure(system: np.ndarray, holdout: float, seed: int) -> np.ndarray:
    """The held-out structure indices: ``holdout`` of every crystal system's structures (at least one)."""
    rng = np.random.default_rng(seed)
    out = []
    for c in np.unique(system):
        ids = np.flatnonzero(system == c)
        out += list(rng.choice(ids, size=max(1, int(round(len(ids) * holdout))), replace=False))
    return np.sort(np.asarray(out, dtype=np.int64))


def evaluate(model: Any, X: np.ndarray, system: np.ndarray, space_group: np.ndarray, cellpar: np.ndarray,
             structure: np.ndarray, group: int = 10) -> dict[str, Any]:
    """Held-out metrics of ``model`` on patterns ``X`` with their true labels (per pattern) and
    ``structure`` ids: crystal-system accuracy from one pattern (top-1, top-2, per system, the
    confusion matrix, rows true, columns predicted) and over groups of ``group`` patterns of one
    structure (log and margin aggregation), space-group accuracy (one pattern and over
    ``group``, log), the median relative error of a, b, c with the true system given (all, and
    cubic), and the median absolute error of the angles."""
    from .models import aggregate, top_k

    proba = model.predict_proba(X)
    idx, _ = top_k(proba, 2)
    pred = idx[:, 0]
    sgp = model.predict_space_group_proba(X)
    groups = model.space_groups()
    agg: dict[str, list[bool]] = {"log": [], "margin": [], "sg_log": []}
    for j in np.unique(structure):
        rows = np.flatnonzero(structure == j)
        for g in range(len(rows) // group):
            block = rows[g * group : (g + 1) * group]
            for method in ("log", "margin"):
                agg[method].append(bool(aggregate(proba[block], method).argmax() == system[block[0]]))
            agg["sg_log"].append(bool(groups[aggregate(sgp[block], "log").argmax()] == space_group[block[0]]))
    lat = model.predict_lattice(X, system=system)
    rel = np.abs(lat[:, :3] / cellpar[:, :3] - 1)
    cubic = system == SYSTEMS.index("cubic")
    conf = np.zeros((len(SYSTEMS), len(SYSTEMS)), dtype=np.int64)
    np.add.at(conf, (system, pred), 1)
    mean = lambda v: round(float(np.mean(v)), 3) if len(v) else None  # noqa: E731
    return {
        "patterns": int(len(X)), "structures": int(np.unique(structure).size),
        "system_accuracy": mean(pred == system),
        "system_top2_accuracy": mean(np.any(idx == system[:, None], axis=1)),
        "system_accuracy_per_system": {SYSTEMS[c]: mean(pred[system == c] == c) for c in np.unique(system)},
        f"system_accuracy_{group}_patterns_log": mean(agg["log"]),
        f"system_accuracy_{group}_patterns_margin": mean(agg["margin"]),
        "space_group_accuracy": mean(groups[np.argmax(sgp, axis=1)] == space_group),
        f"space_group_accuracy_{group}_patterns_log": mean(agg["sg_log"]),
        "most_common_system_fraction": round(float(np.bincount(system).max() / system.size), 3),
        "lattice_abc_median_rel_error_true_system": round(float(np.nanmedian(rel)), 3),
        "cubic_a_median_abs_error_A": (round(float(np.nanmedian(np.abs(lat[cubic, 0] - cellpar[cubic, 0]))), 3)
                                       if cubic.any() else None),
        "angles_median_abs_error_deg": round(float(np.nanmedian(np.abs(lat[:, 3:] - cellpar[:, 3:]))), 2),
        "confusion_matrix": conf.tolist(),
    }


def build_library(config: IdentifyTrainConfig, cache_dir: Any = None) -> Any:
    """The library of ``config`` (:func:`~distill4d.simulate.spots.spot_library`, resumable with ``cache_dir``)."""
    from ..simulate.crystals import list_prototypes
    from ..simulate.spots import spot_library

    return spot_library(
        config.space_groups, config.n_structures, config.n_orientations, seed=config.seed,
        prototypes=list_prototypes() if config.prototypes else (), max_atoms=config.max_atoms, augment=True,
        cache_dir=cache_dir, excitation_error_inv_A=config.excitation_error_inv_A, max_g_inv_A=config.max_g_inv_A,
    )


def build_variants(config: IdentifyTrainConfig, structures: Any, cache_dir: Any = None, *, zone: bool = False) -> Any:
    """The variants of ``config`` of the library's ``structures`` (the training structures;
    :func:`~distill4d.simulate.spots.variant_library`, resumable with ``cache_dir``): the
    ``n_variants`` in random orientations, or with ``zone`` the ``n_zone_variants`` near zone axes."""
    from ..simulate.crystals import list_prototypes
    from ..simulate.spots import variant_library

    n, n_or, n_zone = ((config.n_zone_variants, 0, config.zone_orientations) if zone
                       else (config.n_variants, config.variant_orientations, 0))
    return variant_library(
        config.space_groups, config.n_structures, structures, n, n_or,
        seed=config.seed, prototypes=list_prototypes() if config.prototypes else (), max_atoms=config.max_atoms,
        augment=True, n_zone_orientations=n_zone, zone_tail=zone and config.zone_tail, cache_dir=cache_dir,
        excitation_error_inv_A=config.excitation_error_inv_A, max_g_inv_A=config.max_g_inv_A,
    )


def encode_library(library: Any) -> np.ndarray:
    """Features ``(P, N_FEATURES)`` of every pattern of a :class:`~distill4d.simulate.spots.SpotLibrary`
    (:func:`~distill4d.identify.encode.encode_ragged`: block by block, never the whole library padded)."""
    from .encode import encode_ragged

    return encode_ragged(library.spot_qx, library.spot_qy, library.spot_intensity, library.counts)


def _fit_checkpoint(config: IdentifyTrainConfig, cache_dir: Any, say: Any) -> tuple[dict[str, Any], Any]:
    """``(state, save)`` of a resumable fit in ``cache_dir`` (none without one): ``save(part)`` writes
    the fitted parts atomically, ``save(None)`` removes the file (the fit is complete)."""
    import hashlib
    import json
    from pathlib import Path

    from .._atomic import atomic_output

    t0 = time.perf_counter()
    if cache_dir is None:
        return {}, lambda part: None if part is None else say(f"fitted {part} ({time.perf_counter() - t0:.0f} s)")
    digest = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"fit_{digest}.npz"
    state: dict[str, Any] = {}
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            state = {k: z[k] for k in z.files}
        say(f"resuming the fit from {path.name} ({len({k.rsplit('/', 1)[0] for k in state})} parts done)")

    def save(part: str | None) -> None:
        if part is None:
            path.unlink(missing_ok=True)
            return
        with atomic_output(path, force=True) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **state)
        say(f"fitted {part} ({time.perf_counter() - t0:.0f} s; saved to {path.name})")

    return state, save


def train_identifier(config: IdentifyTrainConfig, *, cache_dir: Any = None, library: Any = None,
                     callback: Any = None) -> tuple[Any, dict[str, Any]]:
    """``(model, card)``: a :class:`CrystalIdentifier` trained on the training structures of the
    library of ``config`` and its model card (recipe, library size, held-out metrics, times).

    ``library``: a :class:`~distill4d.simulate.spots.SpotLibrary` to use instead of building
    one (it must be the library of ``config``); ``cache_dir``: build it resumably there, and
    keep the fit resumable too: every fitted part of the model is written to
    ``fit_<digest of config>.npz`` there, read back by a rerun with the same configuration, and
    removed when the fit is complete. ``callback(message)`` is told each step.
    """
    from .encode import N_FEATURES
    from .models import CrystalIdentifier

    say = callback or (lambda message: None)
    t0 = time.perf_counter()
    lib = build_library(config, cache_dir) if library is None else library
    build_s = time.perf_counter() - t0
    say(f"library: {len(lib)} patterns of {len(lib.space_group)} structures ({build_s:.0f} s)")
    t0 = time.perf_counter()
    X = encode_library(lib)
    st = lib.structure
    test = split_by_structure(lib.system, config.holdout, config.seed)
    te = np.isin(st, test)
    tr = ~te
    model = CrystalIdentifier(n_estimators=config.n_estimators, min_samples_leaf=config.min_samples_leaf,
                              seed=config.seed, max_depth=config.max_depth,
                              system_classifier=config.system_classifier)
    Xt, sys_t, sg_t, cell_t = X[tr], lib.system[st[tr]], lib.space_group[st[tr]], lib.cellpar[st[tr]]
    n_var = {False: 0, True: 0}
    for zone in (False, True):
        if not (config.n_zone_variants if zone else config.n_variants):
            continue
        t1 = time.perf_counter()
        vlib = build_variants(config, np.setdiff1d(np.arange(len(lib.space_group)), test), cache_dir, zone=zone)
        vs = vlib.structure
        n_var[zone] = len(vlib)
        Xt = np.concatenate([Xt, encode_library(vlib)])
        sys_t = np.concatenate([sys_t, vlib.system[vs]])
        sg_t = np.concatenate([sg_t, vlib.space_group[vs]])
        cell_t = np.concatenate([cell_t, vlib.cellpar[vs]])
        say(f"{'zone-axis variants' if zone else 'variants'}: {n_var[zone]} patterns of {len(vlib.space_group)} "
            f"variants ({time.perf_counter() - t1:.0f} s)")
    state, save = _fit_checkpoint(config, cache_dir, say)
    model.fit(Xt, sys_t, sg_t, cell_t, state=state, callback=save)
    fit_s = time.perf_counter() - t0
    say(f"trained on {len(Xt)} patterns of {len(lib.space_group) - test.size} structures"
        f"{' and their variants' if any(n_var.values()) else ''} ({fit_s:.0f} s)")
    metrics = evaluate(model, X[te], lib.system[st[te]], lib.space_group[st[te]], lib.cellpar[st[te]], st[te])
    save(None)
    card = {
        "model": "identify", "format": CARD_FORMAT, "config": config.to_dict(),
        "input": {"features": N_FEATURES, "encoding": "distill4d.identify.encode (spots in 1/Å, direct beam "
                  "dropped below 0.05 1/Å)", "systems": list(SYSTEMS)},
        "library": {"patterns": len(lib), "structures": int(len(lib.space_group)),
                    "train_structures": int(len(lib.space_group) - test.size), "test_structures": int(test.size),
                    "train_patterns": int(tr.sum()), "test_patterns": int(te.sum()), "variant_patterns": n_var[False],
                    "zone_variant_patterns": n_var[True],
                    "space_groups_trained": [int(g) for g in model.space_groups()]},
        "metrics": {"held_out": metrics, "note": "held-out structures (split by structure, never by pattern); "
                    "kinematic, augmented spot lists in random orientations"},
        "seconds": {"library": round(build_s, 1), "fit": round(fit_s, 1)},
    }
    return model, card
