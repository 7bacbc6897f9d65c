#!/usr/bin/env python3
"""Lattice system of a structure from the consensus of its patterns' reconstructed 3D cells.

The structures, patterns and fits of ``identify_symmetry_study.py`` (held-out pyxtal crystals of the
library's default space groups, seeds ``(--seed, i)``; kinematic spots as the library's; layer
heights by maximum likelihood, :func:`~distill4d.identify.symmetry.fit_heights`, σ known), cases (b)
fitted ``g1, g2, t`` on noise-free spots, (c) the same on augmented spots (``augment_spots``, the
library's settings) and (c'') as (c) with ``g1, g2, t`` refined together (``refine_projected_basis``),
``--orientations`` orientations per structure; each pattern's 3D cell is kept. Per structure, the
first ``--aggregate`` patterns (and the first 4) are combined:

- per pattern (the study's rule): :func:`system_from_tolerances` at one tolerance;
- majority vote of the per-pattern systems;
- an order statistic (median, trimmed mean, second or third smallest) over the patterns of the
  tolerance each lattice system needs (:func:`system_tolerances`), then the same rule or
  :func:`system_by_gap`;
- the consensus cell (:func:`~distill4d.identify.symmetry.consensus_tolerances`): the patterns'
  reduced cells clustered by their metric, the largest cluster aligned and averaged, each holohedry
  tested on the mean, at a fixed tolerance or one scaled by the cluster's spread.

Per case, every rule's parameters are chosen on the ``--tune-seed`` structures, then reported once
on ``--seed`` (and ``--fresh-seed``); ``--cached`` also scores the symmetry study's own 4-orientation
fits (needed tolerances only). Per-structure fits are kept in ``--work`` (resumable; the k-th structure
of every group is fitted before the (k+1)-th, so that ``--budget-s`` cuts a set evenly). Writes the
``identify_consensus`` section of benchmarks/RESULTS.md unless ``--no-results``.

    PYTHONPATH=src python benchmarks/identify_consensus_study.py --work benchmarks/data/identify_consensus \
        --tune-seed 2001 --tune-per-group 3 --seed 1001 --per-group 6 --cached benchmarks/data/identify_symmetry
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
from identify_symmetry_study import SIGMA, augmented, classify, expected_system, one_fit, patterns3d, projected_fit  # noqa: E402

from distill4d.identify.metric import fit_lattice2d, fit_layers
from distill4d.identify.symmetry import (LATTICE_SYSTEMS, cell_distance, consensus_cell, consensus_tolerances,
                                         refine_projected_basis, system_by_gap, system_from_tolerances)
from distill4d.identify.train import DEFAULT_SPACE_GROUPS
from distill4d.simulate.crystals import _primitive, crystal_system, random_crystal
from distill4d.simulate.spots import random_rotations

CASES = {"b": "(b) fitted g1, g2, t; noise-free", "c": "(c) fitted, augmented",
         "cr": "(c'') as (c), g1, g2, t refined together"}


def fit_structure(i: int, sg: int, seed: int, n_or: int, refined: bool = True) -> dict:
    """Cases (b) and (c) of every orientation of structure ``i``: needed tolerances and the 3D cell (1/Å)."""
    rng = np.random.default_rng([seed, i])
    atoms = random_crystal(sg, rng=rng, max_atoms=24)
    recip = np.linalg.inv(np.asarray(_primitive(atoms).cell)).T
    rec = {"sg": sg, "expected": expected_system(sg), "true_counts": classify(recip), "patterns": [],
           "refined": refined}
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
        ax, ay, ai = augmented(x, y, w, rng)
        fit = projected_fit(ax, ay, ai)
        if fit is not None:
            r, dt = one_fit(ax, ay, ai / ai.max(), *fit, SIGMA)
            pr["c"] = {"counts": classify(r["basis3d"]), "cell": np.asarray(r["basis3d"]).tolist(), "s": dt}
            if refined:
                pr["cr"] = refined_fit(ax, ay, ai, *fit)
    return rec


def refined_fit(ax, ay, ai, B2, t2) -> dict:
    """Case (c''): ``g1, g2, t`` refined together (``refine_projected_basis``) before the height fit."""
    B, t = refine_projected_basis(ax, ay, B2, t2)
    r, dt = one_fit(ax, ay, ai / ai.max(), B, t, SIGMA)
    return {"counts": classify(r["basis3d"]), "cell": np.asarray(r["basis3d"]).tolist(), "s": dt}


def add_refined(rec: dict, i: int, seed: int, n_or: int) -> dict:
    """Case (c'') added to a structure fitted without it: the augmented spots of :func:`fit_structure` replayed."""
    rng = np.random.default_rng([seed, i])
    atoms = random_crystal(rec["sg"], rng=rng, max_atoms=24)
    for pr, (G3, w) in zip(rec["patterns"], patterns3d(atoms, random_rotations(n_or, rng))):
        x, y = G3[:, 0], G3[:, 1]
        keep = np.hypot(x, y) >= 0.05
        if keep.sum() < 3 or not np.isfinite(fit_lattice2d(x[keep], y[keep], np.sqrt(w[keep]))["basis"]).all():
            continue  # as in fit_structure: no augmentation drawn for this pattern
        ax, ay, ai = augmented(x, y, w, rng)
        fit = projected_fit(ax, ay, ai)
        if fit is not None:
            pr["cr"] = refined_fit(ax, ay, ai, *fit)
    rec["refined"] = True
    return rec


def fit_set(work: Path, seed: int, per_group: int, n_or: int, budget_s: float, refined: bool = True) -> list[dict]:
    """Every structure of one seed (cached per structure in ``work``); stops starting new ones after ``budget_s``."""
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    recs, skipped = [], 0
    jobs = [sg for sg in DEFAULT_SPACE_GROUPS for _ in range(per_group)]
    # the k-th structure of every group before the (k+1)-th: a set cut short by the budget keeps every group
    for i in sorted(range(len(jobs)), key=lambda i: (i % per_group, i)):
        sg = jobs[i]
        path = work / f"s{seed}_n{n_or}_{i:04d}.json"
        rec = json.loads(path.read_text()) if path.is_file() else None
        done = rec is not None and ("failed" in rec or rec.get("refined") or not refined)
        if not done and time.perf_counter() - t0 > budget_s:
            skipped += 1  # budget spent: only the structures already fitted
            continue
        if rec is None:
            try:
                rec = fit_structure(i, sg, seed, n_or, refined)
            except RuntimeError as e:  # pyxtal could not realise the group
                rec = {"sg": sg, "failed": str(e)}
            path.write_text(json.dumps(rec))
            print(f"seed {seed} {i} sg{sg} {time.perf_counter() - t0:.0f} s", flush=True)
        elif not done:
            rec = add_refined(rec, i, seed, n_or)
            path.write_text(json.dumps(rec))
            print(f"seed {seed} {i} sg{sg} refined added {time.perf_counter() - t0:.0f} s", flush=True)
        recs.append(dict(rec, key=path.stem))
    if skipped:
        print(f"seed {seed}: budget spent, {skipped} structures left out; rerun to go on", flush=True)
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
    if how in ("second", "third"):
        return s[min(1 if how == "second" else 2, len(s) - 1)]
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


def consensus_need(entries: list) -> list | None:
    """Per value of :data:`AGREE`, the needed tolerances (:func:`consensus_tolerances`, inf as 1e9)
    of the patterns' cells, the cluster's size and its spread (the median relative metric distance of
    its aligned members to their mean), or None."""
    from distill4d.identify.symmetry import _align, _cluster, _pairwise, _unit

    cells = [np.array(e["cell"]) for e in entries if e is not None and "cell" in e]
    if not cells:
        return None
    try:
        need = np.minimum(consensus_tolerances(cells, agree=AGREE), 1e9)
        pair = _pairwise(cells)
    except Exception:  # noqa: BLE001 (no usable cell)
        return None
    out = []
    for row, agree in zip(need, AGREE):
        _, aligned, members = _cluster(pair, agree)
        mean = _unit(aligned.mean(axis=0))
        spread = float(np.median([_align(mean, _unit(G))[0] for G in aligned]))
        out.append([*row.tolist(), len(members), spread])
    return out


AGREE = (0.03, 0.06, 0.1, 0.2)
TOLS = (0.003, 0.006, 0.01, 0.02, 0.03, 0.045, 0.06, 0.08, 0.1, 0.15)
FLOORS = (0.003, 0.01, 0.02, 0.04)
ADAPT_K = (0.5, 1.0, 2.0, 3.0, 5.0)
ADAPT_FLOOR = (0.005, 0.01, 0.02, 0.03)


def predictions(recs: list[dict], case: str, n_agg: int, cache: dict | None = None,
                with_cells: bool = True) -> dict[str, list]:
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
            for how in ("median", "trim", "second", "third"):
                out.setdefault(f"{how}@{tol}", []).append((e, rule_agg(entries, tol, how)))
        for f in FLOORS:
            for how in ("median", "second"):
                out.setdefault(f"{how}-gap@{f}", []).append((e, rule_agg(entries, f, how, gap=True)))
        if not with_cells:
            continue
        key = f"{r.get('key')}|{case}|{n_agg}"
        if key not in cache:
            need_all = consensus_need(entries)
            if need_all is None:
                need_all = [None] * len(AGREE)
            else:  # cached only where computed (a case added later is not read as absent)
                cache[key] = need_all
        else:
            need_all = cache[key]
        for ia, agree in enumerate(AGREE):
            need = None if need_all[ia] is None else need_all[ia][:7]
            if need is not None:  # a tolerance from the cluster's own noise: k x spread / sqrt(members), >= floor
                m, spread = need_all[ia][7:]
                for k in ADAPT_K:
                    for f in ADAPT_FLOOR:
                        out.setdefault(f"consensus{agree}-adaptive@{k},{f}", []).append(
                            (e, system_from_tolerances(need, max(f, k * spread / np.sqrt(m)))))
            else:
                for k in ADAPT_K:
                    for f in ADAPT_FLOOR:
                        out.setdefault(f"consensus{agree}-adaptive@{k},{f}", []).append((e, "none"))
            for tol in TOLS:
                out.setdefault(f"consensus{agree}@{tol}", []).append(
                    (e, "none" if need is None else system_from_tolerances(need, tol)))
            for f in FLOORS:
                out.setdefault(f"consensus{agree}-gap@{f}", []).append(
                    (e, "none" if need is None else system_by_gap(need, f)))
    return out


def truth_distances(recs: list[dict], seed: int, per_group: int, n_agg: int, agree: dict[str, float]) -> dict:
    """Per case, the relative metric distance (:func:`cell_distance`) of each pattern's cell and of the
    consensus cell (at that case's ``agree``) to the true primitive reciprocal cell."""
    jobs = [sg for sg in DEFAULT_SPACE_GROUPS for _ in range(per_group)]
    out = {c: {"pattern": [], "consensus": []} for c in CASES}
    for r in recs:
        i = int(r["key"].rsplit("_", 1)[1])
        atoms = random_crystal(jobs[i], rng=np.random.default_rng([seed, i]), max_atoms=24)
        recip = np.linalg.inv(np.asarray(_primitive(atoms).cell)).T
        for c in CASES:
            cells = [np.array(p[c]["cell"]) for p in r["patterns"][:n_agg] if c in p]
            cells = [x for x in cells if np.isfinite(x).all()]
            for x in cells:
                try:
                    out[c]["pattern"].append(cell_distance(x, recip))
                except Exception:  # noqa: BLE001 (a coplanar cell)
                    out[c]["pattern"].append(np.inf)
            try:
                out[c]["consensus"].append(cell_distance(consensus_cell(cells, agree[c])["basis"], recip))
            except Exception:  # noqa: BLE001 (no usable cell)
                out[c]["consensus"].append(np.inf)
    return out


def family(rule: str) -> str:
    """A rule's name without its parameters (``consensus0.06@0.045`` -> ``consensus``)."""
    return re.sub(r"[\d.]+", "", rule.split("@")[0]).replace("consensus-", "consensus-")


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


def choose(tune: dict[str, list]) -> dict[str, str]:
    """Per rule family, the rule (parameters) with the best accuracy on the tune set's predictions ``tune``."""
    best: dict[str, tuple[float, str]] = {}
    for rule, pairs in tune.items():
        a, fam = acc(pairs), family(rule)
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
    ap.add_argument("--budget-s", type=float, default=1e9,
                    help="seconds per seed set after which no structure is fitted (those fitted are scored)")
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
        preds4["cached"] = {c: predictions(cached, c, n4, with_cells=False) for c in CASES}
        recs4 = dict(recs, cached=cached)
    else:
        recs4 = recs
    lines = ["<!-- identify_consensus:start -->",
             "## Crystal identification: lattice system from the consensus of a structure's patterns", "",
             f"`benchmarks/identify_consensus_study.py --work WORK --orientations {args.orientations} --aggregate "
             f"{args.aggregate} --tune-seed {args.tune_seed} --tune-per-group {args.tune_per_group} --seed {args.seed} "
             f"--per-group {args.per_group}"
             + (f" --fresh-seed {args.fresh_seed} --fresh-per-group {args.fresh_per_group}" if "fresh" in sets else "")
             + (" --cached STUDY_WORK" if args.cached else "")
             + "` (the structures, spots and fits of `identify_symmetry_study.py`, σ known: (b) fitted g1, g2, t on "
             "noise-free spots, (c) on augmented spots (the library's augmentation), (c'') as (c) with g1, g2, t "
             "refined together; per case, every rule's parameters chosen on that case's seed-"
             f"{args.tune_seed} structures (tune), then applied once to the other sets).",
             f"{machine_line()} (shared, loaded)", ""]
    for k, v in recs4.items():
        n_or = n4 if k == "cached" else args.orientations
        lines.append(f"- {k} set: seed {sets.get(k, (args.seed,))[0]}, {len(v)} structures "
                     f"({len(set(r['sg'] for r in v))} space groups), {n_or} orientations each"
                     + (" (the symmetry study's cached fits of (b) and (c); no cells stored, so no consensus rule)"
                        if k == "cached" else "") + ".")
    lines.append("\nRules: `single` the study's per-pattern rule (fraction of PATTERNS right); `vote` the majority of "
                 "the per-pattern systems; `median` / `trim` (mean of the middle half) / `second` (second smallest) the "
                 "tolerance each system needs (`system_tolerances`), aggregated over the structure's patterns, then "
                 "`system_from_tolerances` at the tolerance after @ (`-gap`: `system_by_gap` at the floor after @); "
                 "`consensusA` the consensus cell (`consensus_tolerances`: the patterns' reduced cells within A of the "
                 "centre averaged, realigned per symmetric hypothesis), then the same (`-adaptive@k,f`: at the "
                 "tolerance max(f, k · spread / sqrt(members)), the cluster's own noise). Fraction of structures right: "
                 "lattice system; crystal system from the lattice system alone (rhombohedral read as trigonal, hexagonal "
                 "as hexagonal, so trigonal P groups count wrong) and with trigonal and hexagonal one class "
                 "(strict / merged).")
    best_rules = {}
    for n_pp, pr, rc in ((n10, preds, recs), (n4, preds4, recs4)):
        for c, cname in CASES.items():
            keys = [k for k in pr if c in pr[k] and (k != "cached" or c != "cr")]
            ch = choose(pr["tune"][c])
            lines.append(f"\n**{cname}, {n_pp} patterns per structure**"
                         + (f" (the first {n_pp} orientations; parameters chosen on the tune set's first {n_pp})"
                            if n_pp != n10 else "") + ":\n")
            lines.append("| rule (chosen on tune) | " + " | ".join(f"{k} lattice" for k in keys) + " | "
                         + " | ".join(f"{k} crystal" for k in keys if k != "tune") + " |")
            lines.append("|---" * (2 * len(keys)) + "|")
            for rule in ch.values():
                pp = n_pp if rule.startswith("single") else 0
                cells = [f"{acc(pr[k][c][rule]):.3f}" if rule in pr[k][c] else "-" for k in keys]
                cry = [f"{crystal_acc(rc[k], pr[k][c][rule], pp, False):.3f} / "
                       f"{crystal_acc(rc[k], pr[k][c][rule], pp, True):.3f}" if rule in pr[k][c] else "-"
                       for k in keys if k != "tune"]
                lines.append(f"| {rule} | " + " | ".join(cells + cry) + " |")
            if n_pp == n10:
                best_rules[c] = max((r for r in ch.values() if not r.startswith("single")),
                                    key=lambda r: acc(pr["tune"][c][r]))
    agree = {}
    for c in CASES:
        cons = choose(preds["tune"][c])["consensus"]  # the family of the fixed-tolerance consensus rule
        agree[c] = float(cons.split("@")[0][len("consensus"):])
    lines.append(f"\nHow far the cells are from the true primitive reciprocal cell (`cell_distance`, relative metric; "
                 f"{n10} patterns per structure): per pattern, the fraction within 0.03 / 0.06 and the median; the "
                 "consensus cell (at the chosen agreement), the same per structure:\n")
    lines.append("| set | case | patterns within 0.03 / 0.06 | median | consensus within 0.03 / 0.06 | median |")
    lines.append("|---|---|---|---|---|---|")
    for k, v in recs.items():
        td = truth_distances(v, sets[k][0], sets[k][1], n10, agree)
        for c in CASES:
            p, q = np.array(td[c]["pattern"]), np.array(td[c]["consensus"])
            lines.append(f"| {k} | {c} (agree {agree[c]}) | {np.mean(p <= 0.03):.2f} / {np.mean(p <= 0.06):.2f} | "
                         f"{np.median(p):.3f} | {np.mean(q <= 0.03):.2f} / {np.mean(q <= 0.06):.2f} | {np.median(q):.3f} |")
    lines.append(f"\nPer lattice system, {n10} patterns, each case's best rule on the tune set:\n")
    for c, rule in best_rules.items():
        for k in recs:
            pairs = preds[k][c][rule]
            per = {s: acc([p for p in pairs if p[0] == s]) for s in LATTICE_SYSTEMS}
            lines.append(f"- {k} {CASES[c]}, `{rule}`: " + ", ".join(f"{s} {a:.2f}" for s, a in per.items()) + ".")
    lines.append("<!-- identify_consensus:end -->")
    text = "\n".join(lines)
    print(text)
    if not args.no_results:
        write_section("identify_consensus", text)


if __name__ == "__main__":
    main()
