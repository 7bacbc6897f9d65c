"""Study: do cheap cell variants of the training structures help the crystal-system classifier?

The learning curve of the shipped recipe rises by 4-5 points per doubling of the training
structures, and the errors are per structure, not per orientation; a pyxtal crystal costs
about 100x what its 40 kinematic patterns cost. `distill4d.simulate.crystals.cell_variant`
makes a new crystal of the same space group from a training structure without pyxtal: new
free cell parameters and new species, the fractional coordinates kept.

`--make DIR`: for every training structure of the shipped model's card (its split by
structure), the structure rebuilt (same generator as the library), then K variants with N
orientations each and, as the control with the same number of patterns, K x N more
orientations of the structure itself; augmented as the library is; one file per structure
(resumable). `--fit DIR --cache LIB`: the shipped recipe's MLP on the library's training
patterns alone, plus the control, plus the variants; scored on the held-out structures
(one pattern / 10 patterns, log aggregation); `--validation`: on a quarter of the training
structures instead, trained on the rest. Prints its rows; writes nothing else.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from identify_benchmark import _accuracy, _config  # noqa: E402

from distill4d.identify.apply import default_model_path  # noqa: E402
from distill4d.identify.encode import encode_ragged, shape_features  # noqa: E402
from distill4d.identify.models import SYSTEMS, _fit_mlp  # noqa: E402
from distill4d.identify.train import build_library, encode_library, split_by_structure  # noqa: E402
from distill4d.simulate.crystals import (  # noqa: E402
    cell_variant, crystal_system, list_prototypes, prototype, spacegroup_number)
from distill4d.simulate.spots import _job_crystal, _library_jobs, _structure_spots, _write_shard  # noqa: E402


def _structures(config):
    """The library's jobs (``spot_library``'s order) and each one's crystal-system index."""
    jobs = _library_jobs(config.space_groups, config.n_structures, list_prototypes() if config.prototypes else ())
    sgs = [what if kind == "sg" else spacegroup_number(prototype(what)) for kind, what in jobs]
    return jobs, np.array([SYSTEMS.index(crystal_system(g)) for g in sgs])


def _save(path, parts):
    """The ``(cat, counts)`` parts of ``_structure_spots``, one file (atomic)."""
    _write_shard(path, counts=np.concatenate([c for _, c in parts]) if parts else np.zeros(0, np.int64),
                 **{k: np.concatenate([p[c] for p, _ in parts]) if parts else np.zeros(0)
                    for c, k in enumerate(("qx", "qy", "intensity"))})


def make(args, config):
    out = Path(args.make)
    out.mkdir(parents=True, exist_ok=True)
    jobs, system = _structures(config)
    test = set(split_by_structure(system, config.holdout, config.seed).tolist())
    kw = {"excitation_error_inv_A": config.excitation_error_inv_A, "max_g_inv_A": config.max_g_inv_A}
    t0 = time.perf_counter()
    for i, job in enumerate(jobs):
        if i in test or (out / f"variants_{i:05d}.npz").is_file():
            continue
        atoms, sg, _ = _job_crystal(job, np.random.default_rng([config.seed, i]), config.max_atoms)
        vr = np.random.default_rng([config.seed, i, 7])
        control = [_structure_spots(atoms, args.variants * args.orientations, vr, True, 3, kw)]
        var = []
        for _ in range(args.variants):
            v = cell_variant(atoms, sg, rng=vr, length_spread=args.length_spread)
            if v is not None:
                var.append(_structure_spots(v, args.orientations, vr, True, 3, kw))
        _save(out / f"control_{i:05d}.npz", control)
        _save(out / f"variants_{i:05d}.npz", var)
        if i % 100 == 0:
            print(f"structure {i}: {time.perf_counter() - t0:.0f} s", flush=True)


def _read(folder, kind, ids):
    qx, qy, it, counts, struct = [], [], [], [], []
    for i in ids:
        f = Path(folder) / f"{kind}_{i:05d}.npz"
        with np.load(f) as z:
            qx.append(z["qx"]), qy.append(z["qy"]), it.append(z["intensity"]), counts.append(z["counts"])
        struct.append(np.full(counts[-1].size, i))
    return (np.concatenate(qx), np.concatenate(qy), np.concatenate(it), np.concatenate(counts),
            np.concatenate(struct))


def fit(args, config):
    lib = build_library(config, args.cache)
    X = encode_library(lib)
    st = lib.structure
    test = split_by_structure(lib.system, config.holdout, config.seed)
    train = np.setdiff1d(np.arange(len(lib.system)), test)
    if args.validation:  # choose on the training structures: a quarter of each system's held out from them
        sub = split_by_structure(lib.system[train], config.holdout, config.seed + 1)
        test, train = train[sub], np.setdiff1d(train, train[sub])
    te = np.isin(st, test)
    y = lib.system[st]
    extra = {}
    for kind in ("control", "variants"):
        qx, qy, it, counts, struct = _read(args.fit, kind, train)
        extra[kind] = (encode_ragged(qx, qy, it, counts), lib.system[struct])
        print(f"{kind}: {counts.size} patterns", flush=True)
    tr = np.isin(st, train)
    rows = {"library": (X[tr], y[tr])}
    rows["library + control"] = (np.concatenate([X[tr], extra["control"][0]]),
                                 np.concatenate([y[tr], extra["control"][1]]))
    rows["library + variants"] = (np.concatenate([X[tr], extra["variants"][0]]),
                                  np.concatenate([y[tr], extra["variants"][1]]))
    result = {}
    for name in args.rows:
        Xtr, ytr = rows[name]
        for seed in args.seeds:
            t0 = time.perf_counter()
            mlp = _fit_mlp(shape_features(Xtr), ytr, seed)
            p = np.zeros((int(te.sum()), len(SYSTEMS)))
            p[:, mlp.classes_] = mlp.predict_proba(shape_features(X[te]))
            acc = _accuracy(p, y[te], st[te], 10)
            per = [round(float(np.mean(p.argmax(1)[y[te] == c] == c)), 2) for c in range(len(SYSTEMS))]
            result[f"{name} seed {seed}"] = {"patterns": len(Xtr), "one / 10": acc, "per system": per,
                                             "fit_s": round(time.perf_counter() - t0, 1)}
            print(name, seed, json.dumps(result[f"{name} seed {seed}"]), flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--make", metavar="DIR")
    ap.add_argument("--fit", metavar="DIR")
    ap.add_argument("--cache", metavar="LIB", help="the card's library folder (built there if absent)")
    ap.add_argument("--variants", type=int, default=8)
    ap.add_argument("--orientations", type=int, default=10)
    ap.add_argument("--length-spread", type=float, default=0.25)
    ap.add_argument("--rows", nargs="+", default=["library", "library + control", "library + variants"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    ap.add_argument("--validation", action="store_true",
                    help="score on a quarter of the training structures (trained on the rest), not the held-out ones")
    args = ap.parse_args()
    card = json.loads(Path(str(default_model_path())).with_suffix(".json").read_text())
    config = _config(card)
    if args.make:
        make(args, config)
    if args.fit:
        fit(args, config)


if __name__ == "__main__":
    main()
