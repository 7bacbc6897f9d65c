#!/usr/bin/env python3
"""Lattice system of a structure from the consensus of its patterns' reconstructed 3D cells.

The structures, patterns and fits of ``identify_symmetry_study.py`` (held-out pyxtal crystals of the
library's default space groups, seeds ``(--seed, i)``; kinematic spots as the library's; layer
heights by maximum likelihood, :func:`~distill4d.identify.symmetry.fit_heights`), cases (b) fitted
``g1, g2, t``, noise-free and (c) the same on augmented spots (``augment_spots``, the library's
settings), with ``--orientations`` orientations per structure; each pattern's 3D cell is kept. Per
structure, the first ``--aggregate`` patterns are combined:

- per pattern (the study's rule): :func:`system_from_tolerances` at one tolerance;
- majority vote of the per-pattern systems;
- an aggregate (median, trimmed mean, second smallest) over the patterns of the tolerance each
  lattice system needs (:func:`system_tolerances`), then the same rule;
- the consensus cell (:func:`~distill4d.identify.symmetry.consensus_cell`): the patterns' reduced
  cells clustered by their metric, the aligned metrics of the largest cluster averaged, that one
  cell classified.

Every rule and tolerance is chosen on the ``--tune-seed`` structures (best mean of cases (b) and (c)
unless ``--choose-on c``), then reported on ``--seed`` (and ``--fresh-seed``) once. Per-structure
fits are kept in ``--work`` (resumable). Writes the ``identify_consensus`` section of
benchmarks/RESULTS.md unless ``--no-results``.

    PYTHONPATH=src python benchmarks/identify_consensus_study.py --work benchmarks/data/identify_consensus \
        --tune-seed 2001 --tune-per-group 3 --seed 1001 --per-group 6 --fresh-seed 3001 --fresh-per-group 2
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import machine_line, write_section  # noqa: E402
from identify_symmetry_study import SIGMA, classify, expected_system, one_fit, patterns3d  # noqa: E402

from distill4d.identify.metric import fit_lattice2d, fit_layers
from distill4d.identify.symmetry import LATTICE_SYSTEMS, consensus_tolerances, system_by_gap, system_from_tolerances
from distill4d.identify.train import DEFAULT_SPACE_GROUPS
from distill4d.simulate.crystals import _primitive, crystal_system, random_crystal
from distill4d.simulate.spots import augment_spots, random_rotations

CASES = {"b": "(b) fitted g1, g2, t; noise-free", "c": "(c) fitted, augmented"}


def fit_structure(i: int, sg: int, seed: int, n_or: int) -> dict:
    """Cases (b) and (c) of every orientation of structure ``i``: needed tolerances and the 3D cell (1/Å)."""
    rng = np.random.default_rng([seed, i])
    atoms = random_crystal(sg, rng=rng, max_atoms=24)
    recip = np.linalg.inv(np.asarray(_primitive(atoms).cell)).T
    rec = {"sg": sg, "expected": expected_system(sg), "true_counts": classify(recip), "patterns": []}
    for G3, w in patterns3d(atoms, random_rotations(n_or, rng)):
        x, y = G3[:, 0], G3[:, 1]
        keep = np.hypot(x, y) >= 0.05
        pr: dict = {"spots": int(keep.sum())}
        rec["patterns"].append(pr)
        if keep.sum() < 3:
            continue
        B2 = fit_lattice2d(x[keep], y[keep], np.sqrt(w[keep]))["basis"]
        if not np.isfinite(B2).all():
            continue
        t = fit_layers(x[keep], y[keep], B2)["t"]
        if np.isfinite(t).all():
            r, dt = one_fit(x, y, w, B2, t, SIGMA)
            pr["b"] = {"counts": classify(r["basis3d"]), "cell": np.asarray(r["basis3d"]).tolist(), "s": dt}
        ax, ay, ai = augment_spots(x, y, w, rng=rng)
        k2 = np.hypot(ax, ay) >= 0.05
        ax, ay, ai = ax[k2], ay[k2], ai[k2]
        if ax.size >= 3:
            f2 = fit_lattice2d(ax, ay, np.sqrt(ai))
            if np.isfinite(f2["basis"]).all():
                t2 = fit_layers(ax, ay, f2["basis"])["t"]
                if np.isfinite(t2).all():
                    r, dt = one_fit(ax, ay, ai / ai.max(), f2["basis"], t2, SIGMA)
                    pr["c"] = {"counts": classify(r["basis3d"]), "cell": np.asarray(r["basis3d"]).tolist(), "s": dt}
    return rec


def fit_set(work: Path, seed: int, per_group: int, n_or: int, budget_s: float) -> list[dict]:
    """Every structure of one seed (cached per structure in ``work``); stops starting new ones after ``budget_s``."""
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    recs = []
    for i, sg in enumerate(sg for sg in DEFAULT_SPACE_GROUPS for _ in range(per_group)):
        path = work / f"s{seed}_n{n_or}_{i:04d}.json"
        if path.is_file():
            recs.append(dict(json.loads(path.read_text()), key=path.stem))
            continue
        if time.perf_counter() - t0 > budget_s:
            print(f"seed {seed}: budget spent after {len(recs)} structures; rerun to go on", flush=True)
            break
        try:
            rec = fit_structure(i, sg, seed, n_or)
        except RuntimeError as e:  # pyxtal could not realise the group
            rec = {"sg": sg, "failed": str(e)}
        path.write_text(json.dumps(rec))
        recs.append(dict(rec, key=path.stem))
        print(f"seed {seed} {i} sg{sg} {time.perf_counter() - t0:.0f} s", flush=True)
    return [r for r in recs if "failed" not in r]


# ---- rules: each maps (list of per-pattern entries of one case, parameter) -> lattice system ----

def _counts(entries: list) -> np.ndarray:
    c = [e["counts"] for e in entries if e is not None and e.get("counts") is not None]
    return np.array(c, dtype=np.float64).reshape(-1, len(LATTICE_SYSTEMS))


def rule_single(entries: list, tol: float) -> list[str]:
    """Per pattern: ``system_from_tolerances`` (no cell: "none")."""
    return ["none" if e is None or e.get("counts") is None else system_from_tolerances(e["counts"], tol)
            for e in entries]


def rule_vote(entries: list, tol: float) -> str:
    """Majority of the per-pattern systems (ties: the lower-order system)."""
    votes = [s for s in rule_single(entries, tol) if s != "none"]
    if not votes:
        return "none"
    return max(LATTICE_SYSTEMS, key=lambda s: (votes.count(s), -LATTICE_SYSTEMS.index(s)))


def _aggregate(c: np.ndarray, how: str) -> np.ndarray:
    if how == "median":
        return np.median(c, axis=0)
    s = np.sort(c, axis=0)
    if how == "second":
        return s[min(1, len(s) - 1)]
    if how == "trim":  # mean of the middle half (inf counts as 1e9)
        lo, hi = len(s) // 4, len(s) - len(s) // 4
        return s[lo:hi].mean(axis=0)
    raise ValueError(how)


def rule_agg(entries: list, tol: float, how: str, gap: bool = False) -> str:
    c = _counts(entries)
    if not len(c):
        return "none"
    need = _aggregate(c, how)
    return system_by_gap(need, tol) if gap else system_from_tolerances(need, tol)


def consensus_need(entries: list, agree: float) -> np.ndarray | None:
    """The needed tolerances (:func:`consensus_tolerances`, inf as 1e9) of the patterns' cells, or None."""
    cells = [np.array(e["cell"]) for e in entries if e is not None and "cell" in e]
    if not cells:
        return None
    try:
        return np.minimum(consensus_tolerances(cells, agree=agree), 1e9)
    except Exception:  # noqa: BLE001 (no usable cell)
        return None


AGREE = (0.03, 0.06, 0.1, 0.2)
TOLS = (0.003, 0.006, 0.01, 0.02, 0.03, 0.045, 0.06, 0.08, 0.1, 0.15)
FLOORS = (0.003, 0.01, 0.02, 0.04)


def predictions(recs: list[dict], case: str, n_agg: int, cache: dict | None = None) -> dict[str, list]:
    """``{rule name: [(expected, found) per structure (per pattern for the single rule)]}`` for every
    rule and parameter, on the first ``n_agg`` patterns of each structure; the consensus rules only
    where the cells are stored. ``cache``: consensus results by ``(structure key, case, agree, n_agg)``."""
    out: dict[str, list] = {}
    cache = {} if cache is None else cache
    for r in recs:
        entries = [p.get(case) for p in r["patterns"][:n_agg]]
        e = r["expected"]
        for tol in TOLS:
            out.setdefault(f"single@{tol}", []).extend((e, s) for s in rule_single(entries, tol))
            out.setdefault(f"vote@{tol}", []).append((e, rule_vote(entries, tol)))
            for how in ("median", "trim", "second"):
                out.setdefault(f"{how}@{tol}", []).append((e, rule_agg(entries, tol, how)))
        for f in FLOORS:
            for how in ("median", "second"):
                out.setdefault(f"{how}-gap@{f}", []).append((e, rule_agg(entries, f, how, gap=True)))
        if not any(x is not None and "cell" in x for x in entries):
            continue
        for agree in AGREE:
            key = f"{r.get('key')}|{case}|{agree}|{n_agg}"
            if key not in cache:
                need = consensus_need(entries, agree)
                cache[key] = None if need is None else need.tolist()
            need = cache[key]
            for tol in TOLS:
                out.setdefault(f"consensus{agree}@{tol}", []).append(
                    (e, "none" if need is None else system_from_tolerances(need, tol)))
            for f in FLOORS:
                out.setdefault(f"consensus{agree}-gap@{f}", []).append(
                    (e, "none" if need is None else system_by_gap(need, f)))
    return out


def family(rule: str) -> str:
    """A rule's name without its parameters (``consensus0.06@0.045`` -> ``consensus``)."""
    return re.sub(r"[\d.]+", "", rule.split("@")[0])


def acc(pairs: list) -> float:
    return float(np.mean([e == f for e, f in pairs])) if pairs else float("nan")


# crystal system from the lattice system alone: a hexagonal lattice is read as hexagonal (trigonal P
# groups then count wrong), a rhombohedral one as trigonal; "family": trigonal and hexagonal one class
TO_CRYSTAL = {"rhombohedral": "trigonal"}


def crystal_acc(recs: list[dict], pairs: list, per_pattern: int, merged: bool) -> float:
    """Fraction right as crystal systems (``per_pattern``: patterns per structure in ``pairs``, 0: one
    pair per structure)."""
    truth = []
    for r in recs:
        cs = crystal_system(r["sg"])
        truth.extend([cs] * (len(r["patterns"][:per_pattern]) if per_pattern else 1))
    assert len(truth) == len(pairs)
    ok = []
    for cs, (_, f) in zip(truth, pairs):
        g = TO_CRYSTAL.get(f, f)
        if merged:
            cs = "hex-family" if cs in ("trigonal", "hexagonal") else cs
            g = "hex-family" if g in ("trigonal", "hexagonal") else g
        ok.append(g == cs)
    return float(np.mean(ok))


def choose(tune: dict[str, dict[str, list]], choose_on: str) -> dict[str, str]:
    """Per rule family, the parameter with the best tuning accuracy (on case ``choose_on``, or the mean of b and c)."""
    best: dict[str, tuple[float, str]] = {}
    for rule in tune["b"]:
        a = acc(tune["c"][rule]) if choose_on == "c" else 0.5 * (acc(tune["b"][rule]) + acc(tune["c"][rule]))
        fam = family(rule)
        if fam not in best or a > best[fam][0]:
            best[fam] = (a, rule)
    return {fam: rule for fam, (a, rule) in best.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True)
    ap.add_argument("--orientations", type=int, default=10)
    ap.add_argument("--aggregate", type=int, default=10, help="patterns combined per structure")
    ap.add_argument("--tune-seed", type=int, default=2001)
    ap.add_argument("--tune-per-group", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1001)
    ap.add_argument("--per-group", type=int, default=6)
    ap.add_argument("--fresh-seed", type=int, default=None)
    ap.add_argument("--fresh-per-group", type=int, default=2)
    ap.add_argument("--choose-on", choices=("bc", "c"), default="c")
    ap.add_argument("--budget-s", type=float, default=1e9, help="per seed set")
    ap.add_argument("--fit-only", action="store_true")
    ap.add_argument("--cached", default=None, help="the symmetry study's --work folder: its seed-SEED fits (4 "
                    "orientations, counts only) scored too")
    ap.add_argument("--no-results", action="store_true")
    args = ap.parse_args()
    work = Path(args.work)
    sets = {"tune": (args.tune_seed, args.tune_per_group), "report": (args.seed, args.per_group)}
    if args.fresh_seed is not None:
        sets["fresh"] = (args.fresh_seed, args.fresh_per_group)
    recs = {k: fit_set(work, s, n, args.orientations, args.budget_s) for k, (s, n) in sets.items()}
    if args.fit_only:
        return
    cache_path = work / "consensus_cache.json"
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    n10, n4 = args.aggregate, 4
    preds = {k: {c: predictions(v, c, n10, cache) for c in CASES} for k, v in recs.items()}
    preds4 = {k: {c: predictions(v, c, n4, cache) for c in CASES} for k, v in recs.items()}
    cache_path.write_text(json.dumps(cache))
    cached = []
    if args.cached:
        for path in sorted(Path(args.cached).glob(f"s{args.seed}_*.json")):
            r = json.loads(path.read_text())
            if "failed" not in r:
                cached.append(dict(r, key=path.stem))
        preds4["cached"] = {c: predictions(cached, c, n4) for c in CASES}
        recs4 = dict(recs, cached=cached)
    else:
        recs4 = recs
    chosen = choose(preds["tune"], args.choose_on)
    chosen4 = choose(preds4["tune"], args.choose_on)
    lines = ["<!-- identify_consensus:start -->",
             "## Crystal identification: lattice system from the consensus of a structure's patterns", "",
             f"`benchmarks/identify_consensus_study.py --work WORK --orientations {args.orientations} --aggregate "
             f"{args.aggregate} --tune-seed {args.tune_seed} --tune-per-group {args.tune_per_group} --seed {args.seed} "
             f"--per-group {args.per_group}"
             + (f" --fresh-seed {args.fresh_seed} --fresh-per-group {args.fresh_per_group}" if "fresh" in sets else "")
             + (" --cached STUDY_WORK" if args.cached else "")
             + f" --choose-on {args.choose_on}` (the structures, spots and fits of `identify_symmetry_study.py`, "
             "cases (b) fitted g1, g2, t on noise-free spots and (c) on augmented spots (the library's augmentation), "
             "σ known; every rule's parameter chosen on the seed-"
             f"{args.tune_seed} structures ({'case (c)' if args.choose_on == 'c' else 'the mean of (b) and (c)'}), "
             "then applied once to the other sets).", f"{machine_line()} (shared, loaded)", ""]
    for k, v in recs4.items():
        n_or = n4 if k == "cached" else args.orientations
        lines.append(f"- {k} set: seed {sets.get(k, (args.seed,))[0]}, {len(v)} structures "
                     f"({len(set(r['sg'] for r in v))} space groups), {n_or} orientations each"
                     + (" (the study's cached fits; no cells stored, so no consensus rule)" if k == "cached" else "")
                     + ".")
    lines.append("\nRules: `single` the study's per-pattern rule (fraction of PATTERNS right); `vote` the majority of "
                 "the per-pattern systems; `median` / `trim` (mean of the middle half) / `second` (second smallest) the "
                 "tolerance each system needs (`system_tolerances`), aggregated over the structure's patterns, then "
                 "`system_from_tolerances` at the tolerance after @ (`-gap`: `system_by_gap` at the floor after @); "
                 "`consensusA` the consensus cell (`consensus_tolerances`: the patterns' reduced cells within A of the "
                 "centre averaged, realigned per symmetric hypothesis), then the same. Fraction of structures right.\n")

    def table(title, ch, pr, rc, n_pp):
        keys = list(pr)
        lines.append(title + "\n")
        lines.append("| rule (chosen on tune) | " + " | ".join(f"{k} {c}" for k in keys for c in CASES)
                     + " | " + " | ".join(f"{k} {c} crystal (strict / merged)" for k in keys if k != "tune"
                                           for c in CASES) + " |")
        ncol = 1 + 2 * len(keys) * len(CASES) - len(CASES)
        lines.append("|---" * ncol + "|")
        for rule in ch.values():
            cells = [f"{acc(pr[k][c][rule]):.3f}" if rule in pr[k][c] else "-" for k in keys for c in CASES]
            cry = [f"{crystal_acc(rc[k], pr[k][c][rule], n_pp if rule.startswith('single') else 0, False):.3f} / "
                   f"{crystal_acc(rc[k], pr[k][c][rule], n_pp if rule.startswith('single') else 0, True):.3f}"
                   if rule in pr[k][c] else "-" for k in keys if k != "tune" for c in CASES]
            lines.append(f"| {rule} | " + " | ".join(cells + cry) + " |")

    table(f"**{n10} patterns per structure** (lattice system; then crystal system from the lattice system alone: "
          "rhombohedral read as trigonal, hexagonal as hexagonal, so trigonal P groups count wrong; merged: trigonal "
          "and hexagonal one class):", chosen, preds, recs, n10)
    table(f"\n**{n4} patterns per structure** (the first {n4} orientations; parameters chosen on the tune set's "
          f"first {n4}):", chosen4, preds4, recs4, n4)
    best = max((r for r in chosen.values() if not r.startswith("single")), key=lambda r: acc(preds["tune"]["c"][r]))
    lines.append(f"\nBest rule on the tune set, case (c), {n10} patterns: `{best}`; per lattice system:\n")
    for k in recs:
        for c in CASES:
            pairs = preds[k][c][best]
            per = {s: acc([p for p in pairs if p[0] == s]) for s in LATTICE_SYSTEMS}
            lines.append(f"- {k} {CASES[c]}: " + ", ".join(f"{s} {a:.2f}" for s, a in per.items()) + ".")
    lines.append("<!-- identify_consensus:end -->")
    text = "\n".join(lines)
    print(text)
    if not args.no_results:
        write_section("identify_consensus", text)


if __name__ == "__main__":
    main()
