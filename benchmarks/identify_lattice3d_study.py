#!/usr/bin/env python3
"""Each pattern's projected 3D lattice as features for the crystal-system classifier
(:mod:`distill4d.identify.lattice3d`): the 2D lattice, the Laue-layer vector modulo it and the
layers' stripe geometry.

Same protocol as ``identify_metric_study.py``: the shipped identifier's library and split by
structure (the card's command; read from ``--cache``, never written there), the shipped recipe's
MLP trained on the training structures, the same held-out structures, one pattern and 10 patterns
(log aggregation). Rows: the shipped features (and, where ``--metric-work`` holds them, the
earlier metric features: their cached columns and MLP results are reused, not recomputed),
shipped + 3D-lattice features, shipped + metric + 3D-lattice features. The 3D-lattice features are
computed in chunks kept in ``--work`` (a rerun goes on).

Writes the ``identify_lattice3d`` section of benchmarks/RESULTS.md unless ``--no-results``.

    PYTHONPATH=src python benchmarks/identify_lattice3d_study.py --cache benchmarks/data/idlib60 \
        --work benchmarks/data/identify_lattice3d_h --metric-work benchmarks/data/identify_metric --seeds 1 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import machine_line, write_section  # noqa: E402

from distill4d.identify.encode import shape_features
from distill4d.identify.lattice3d import LATTICE3D_NAMES, N_POSITION, lattice3d_features
from distill4d.identify.metric import N_METRIC
from distill4d.identify.models import SYSTEMS
from distill4d.identify.train import encode_library

from identify_metric_study import cached_score, chunked_features, mlp_table, shipped_library  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", required=True, help="the library folder of the shipped card's command (read only)")
    ap.add_argument("--work", required=True, help="folder for the 3D-lattice features and MLP results (resumable)")
    ap.add_argument("--metric-work", default=None, help="the --work folder of identify_metric_study.py (read only)")
    ap.add_argument("--budget-s", type=float, default=480.0, help="stop after this many seconds; rerun to go on")
    ap.add_argument("--no-results", action="store_true")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="MLP seeds (default: the card's)")
    ap.add_argument("--reuse", default=None, help="a --work folder of an earlier run whose position-only MLP results "
                    "(the first columns, unchanged) are reused")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    t_start = time.perf_counter()
    config, lib, st, test, te = shipped_library(args.cache)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    off = lib.offsets

    def compute(sl: slice, c0: int, c1: int) -> np.ndarray:
        return lattice3d_features(lib.spot_qx[sl], lib.spot_qy[sl], lib.spot_intensity[sl], lib.counts[c0:c1],
                                  excitation_error_inv_A=config.excitation_error_inv_A)

    L, _ = chunked_features(lib, work, "lattice3d", compute, t_start + args.budget_s)
    if L is None:
        return
    y = lib.system[st]
    res = {"patterns": len(lib), "held_out_patterns": int(te.sum()), "held_out_structures": int(test.size)}
    rate_f = work / "rate.json"
    if not rate_f.is_file():  # the rate of lattice3d_features, on 1000 patterns from the first held-out one
        first = int(np.flatnonzero(te)[0])
        rows = np.arange(first, min(first + 1000, len(lib)))
        sl = slice(off[rows[0]], off[rows[-1] + 1])
        t0 = time.perf_counter()
        lattice3d_features(lib.spot_qx[sl], lib.spot_qy[sl], lib.spot_intensity[sl], lib.counts[rows[0]: rows[-1] + 1],
                           excitation_error_inv_A=config.excitation_error_inv_A)
        rate_f.write_text(json.dumps(round(len(rows) / (time.perf_counter() - t0))))
    res["lattice3d_patterns_per_s"] = json.loads(rate_f.read_text())
    # what the features show on held-out patterns, per true system: the layer found, and the
    # fraction of patterns whose layer offset is within 0.05 of a half-integer in both u and v
    lt = L[te]
    yt = y[te]
    has_t = (lt[:, 11] < 1) & (lt[:, 14] < 1)
    res["layer_found_by_system"] = {SYSTEMS[c]: round(float(np.mean(has_t[yt == c])), 2) for c in range(7)}
    half = has_t & (lt[:, 4] < 0.05) & (lt[:, 5] < 0.05)
    res["offset_near_half_integers_by_system"] = {SYSTEMS[c]: round(float(np.mean(half[yt == c])), 2)
                                                 for c in range(7)}
    res["explained_median"] = round(float(np.median(1 - lt[:, 14])), 3)
    X = encode_library(lib)
    base = shape_features(X)
    M = None
    if args.metric_work:
        mparts = sorted(Path(args.metric_work).glob("metric_*.npy"))
        if mparts:
            M = np.concatenate([np.load(f) for f in mparts])[:, :N_METRIC]
            if len(M) != len(lib):
                raise SystemExit(f"--metric-work holds {len(M)} rows, the library {len(lib)}")
    variants = [("shipped features", "base", lambda: base)]
    if M is not None:
        variants.append(("shipped + metric features", "metric", lambda: np.concatenate([base, M], axis=1)))
    Lp = L[:, :N_POSITION]
    variants.append(("shipped + 3D-lattice features (positions)", "lat3d", lambda: np.concatenate([base, Lp], axis=1)))
    if M is not None:
        variants.append(("shipped + metric + 3D-lattice features (positions)", "metric_lat3d",
                         lambda: np.concatenate([base, M, Lp], axis=1)))
    if L.shape[1] > N_POSITION:
        variants.append(("shipped + 3D-lattice features with the layer height", "lat3dh",
                         lambda: np.concatenate([base, L], axis=1)))
        if M is not None:
            variants.append(("shipped + metric + 3D-lattice features with the layer height", "metric_lat3dh",
                             lambda: np.concatenate([base, M, L], axis=1)))
    tr = ~te
    out = {}
    for seed in args.seeds or [config.seed]:
        for name, tag, feats in variants:
            key = f"{name}, seed {seed}"
            f = work / f"mlp_{tag}_{seed}.json"
            reuse = Path(args.metric_work) / f"mlp_{tag}_{seed}.json" if args.metric_work else None
            if not f.is_file() and reuse is not None and tag in ("base", "metric") and reuse.is_file():
                f.write_text(reuse.read_text())  # the metric study's result on the same split and recipe
            if not f.is_file() and args.reuse and tag in ("lat3d", "metric_lat3d"):
                old = Path(args.reuse) / f"mlp_{tag}_{seed}.json"
                if old.is_file():
                    f.write_text(old.read_text())
            r = cached_score(f, key, feats, y, st, tr, te, seed, t_start + args.budget_s)
            if r is None:
                return
            out[key] = r
    res["mlp"] = out
    print(json.dumps(res, indent=1))
    (work / "identify_lattice3d.json").write_text(json.dumps(res, indent=1) + "\n")
    if args.no_results:
        return
    lines = [
        "## Crystal identification: each pattern's projected 3D lattice",
        "",
        "`benchmarks/identify_lattice3d_study.py --cache LIB --work WORK --metric-work METRIC_WORK --seeds 1 2 "
        "[--reuse EARLIER_WORK]` (the "
        "shipped identifier's library and split by structure; `distill4d.identify.lattice3d`: the reduced 2D cell, the "
        f"Laue-layer vector modulo it, the layers' populations and stripe geometry: {N_POSITION} columns from the positions; "
        f"then the layer height from the drop of the mean log intensity from layer 0 to layer 1, H = σ sqrt(2 Δ) with the "
        f"library's relrod width σ, and the reduced 3D cell of g1, g2, (t, H): {len(LATTICE3D_NAMES) - N_POSITION} more).",
        f"{machine_line()} (shared, loaded)",
        "",
        f"{res['held_out_patterns']} held-out patterns of {res['held_out_structures']} structures:",
        "",
        "| measure | value |",
        "|---|---|",
        f"| spots on the 2D lattice or one of its layers (up to 4), median | {res['explained_median']} |",
        "| patterns with a layer vector found, per system | "
        + ", ".join(f"{k} {v}" for k, v in res["layer_found_by_system"].items()) + " |",
        "| layer offset within 0.05 of half-integers in u and v (centring-like), per system | "
        + ", ".join(f"{k} {v}" for k, v in res["offset_near_half_integers_by_system"].items()) + " |",
        f"| `lattice3d_features` rate on 1000 library patterns, one thread | {res['lattice3d_patterns_per_s']} "
        "patterns/s |",
        "",
        "Crystal system, the shipped recipe's MLP on the training structures, same held-out structures (the shipped "
        "and metric rows are the `identify_metric` section's runs; with `--reuse`, the position rows are an earlier "
        "run's MLPs on the same position columns):",
        "",
    ] + mlp_table(out)
    write_section("identify_lattice3d", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
