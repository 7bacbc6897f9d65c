#!/usr/bin/env python3
"""Metric indexing of single patterns: how much 3D information one pattern holds, and whether
metric features (:mod:`distill4d.identify.metric`) help the crystal-system classifier.

On the shipped identifier's library and its split by structure (the card's command; read from
``--cache``, never written there):

1. per held-out pattern, the 2D lattice of its spots (:func:`~distill4d.identify.metric.fit_lattice2d`,
   tolerance 0.012 1/Å; the library's position noise is 0.003 1/Å per coordinate): the fraction
   of spots it indexes, so the fraction off one plane (higher-order Laue zones, or spots of no zone);
2. the metric features of every pattern (computed in chunks, kept in ``--work``; a rerun goes on);
   the cubic ``a`` of the cubic form's best fit on held-out cubic patterns;
3. the shipped recipe's MLP (crystal system) trained on the training structures with and without
   the metric features, on the same held-out structures: one pattern and 10 patterns (log).

Writes the ``identify_metric`` section of benchmarks/RESULTS.md unless ``--no-results``.

    PYTHONPATH=src python benchmarks/identify_metric_study.py --cache benchmarks/data/idlib60 --seeds 1 2 \
        --work benchmarks/data/identify_metric
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

from distill4d.identify.apply import default_model_path
from distill4d.identify.encode import shape_features
from distill4d.identify.metric import METRIC_NAMES, fit_lattice2d, fit_layers, metric_features
from distill4d.identify.models import SYSTEMS, _fit_mlp, aggregate
from distill4d.identify.train import IdentifyTrainConfig, build_library, encode_library, split_by_structure

CHUNK = 8000


def _accuracy(proba, y, structure, group=10):
    agg = []
    for j in np.unique(structure):
        rows = np.flatnonzero(structure == j)
        for g in range(len(rows) // group):
            agg.append(aggregate(proba[rows[g * group : (g + 1) * group]], "log").argmax() == y[rows[0]])
    per = {SYSTEMS[c]: round(float(np.mean(proba.argmax(1)[y == c] == c)), 2) for c in np.unique(y)}
    return round(float(np.mean(proba.argmax(1) == y)), 3), round(float(np.mean(agg)), 3), per


def shipped_library(cache: str, every: int = 1) -> tuple:
    """``(config, lib, structure, test, held_out)``: the shipped identifier's card config, its library
    read from ``cache`` (every ``every``-th pattern), each pattern's structure, the held-out structures
    of the card's split and the held-out pattern mask."""
    card = json.loads(Path(str(default_model_path())).with_suffix(".json").read_text())
    config = IdentifyTrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in card["config"].items()})
    lib = build_library(config, cache)
    if every > 1:
        lib = lib.subset(np.arange(0, len(lib.space_group), every))
    test = split_by_structure(lib.system, config.holdout, config.seed)
    return config, lib, lib.structure, test, np.isin(lib.structure, test)


def chunked_features(lib, work: Path, prefix: str, compute, deadline: float) -> tuple:
    """``(features, computed)``: ``compute(spot_slice, c0, c1)`` of the library in chunks of
    :data:`CHUNK` patterns, each saved as ``work/PREFIX_C0.npy`` and read back on a rerun; ``(None,
    True)`` when ``time.perf_counter()`` passed ``deadline`` before the end (rerun to go on)."""
    off = lib.offsets
    parts, computed = [], False
    for c0 in range(0, len(lib), CHUNK):
        f = work / f"{prefix}_{c0:06d}.npy"
        if not f.is_file():
            if time.perf_counter() > deadline:
                print(f"features: stopped at pattern {c0} (budget); rerun to go on", file=sys.stderr)
                return None, True
            c1 = min(c0 + CHUNK, len(lib))
            t0 = time.perf_counter()
            np.save(f, compute(slice(off[c0], off[c1]), c0, c1))
            print(f"features {c0}-{c1}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            computed = True
        parts.append(np.load(f))
    return np.concatenate(parts), computed


def cached_score(path: Path, key: str, make_features, y, structure, tr, te, seed: int, deadline: float):
    """:func:`score_mlp` of ``make_features()``, kept in ``path`` (read back when there); None when
    ``time.perf_counter()`` passed ``deadline`` first (rerun to go on)."""
    if path.is_file():
        return tuple(json.loads(path.read_text()))
    if time.perf_counter() > deadline:
        print("MLPs: stopped (budget); rerun to go on", file=sys.stderr)
        return None
    r = score_mlp(make_features(), y, structure, tr, te, seed)
    path.write_text(json.dumps(r))
    print(key, r, file=sys.stderr)
    return r


def mlp_table(out: dict) -> list[str]:
    """The Markdown table of :func:`score_mlp` results by name."""
    lines = ["| features, MLP seed | one pattern | 10 patterns (log) | per system, one pattern | fit s |",
             "|---|---|---|---|---|"]
    for name, (a1, a10, per, s) in out.items():
        lines.append(f"| {name} | {a1} | {a10} | " + ", ".join(f"{k} {v}" for k, v in per.items()) + f" | {s} |")
    return lines


def score_mlp(feats, y, structure, tr, te, seed: int) -> tuple:
    """The shipped recipe's MLP fitted on rows ``tr`` and scored on rows ``te``: one pattern, 10 patterns
    (log), per system (:func:`_accuracy`) and the fit's seconds."""
    t0 = time.perf_counter()
    mlp = _fit_mlp(feats[tr], y[tr], seed)
    p = np.zeros((int(te.sum()), len(SYSTEMS)))
    p[:, mlp.classes_] = mlp.predict_proba(feats[te])
    return _accuracy(p, y[te], structure[te]) + (round(time.perf_counter() - t0, 1),)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", required=True, help="the library folder of the shipped card's command (read only)")
    ap.add_argument("--work", required=True, help="folder for the metric features (resumable)")
    ap.add_argument("--budget-s", type=float, default=480.0, help="stop computing features after this many seconds")
    ap.add_argument("--no-results", action="store_true")
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="MLP seeds (default: the card's); each result is kept in --work, a rerun goes on")
    ap.add_argument("--every", type=int, default=1, help="keep every this-many-th structure (a smoke test; "
                    "use its own --work folder)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    t_start = time.perf_counter()
    config, lib, st, test, te = shipped_library(args.cache, args.every)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    off = lib.offsets

    def compute(sl: slice, c0: int, c1: int) -> np.ndarray:
        M, G = metric_features(lib.spot_qx[sl], lib.spot_qy[sl], lib.spot_intensity[sl], lib.counts[c0:c1],
                               return_gram=True)
        return np.concatenate([M, G], axis=1)

    M, computed = chunked_features(lib, work, "metric", compute, t_start + args.budget_s)
    if M is None:
        return
    if computed:
        print("features: all done; rerun for the report", file=sys.stderr)
        return
    M, Gm = M[:, :len(METRIC_NAMES)], M[:, len(METRIC_NAMES):]
    y = lib.system[st]
    a_true = lib.cellpar[st, 0]
    res = {"patterns": len(lib), "held_out_patterns": int(te.sum()), "held_out_structures": int(test.size)}
    # 1. the 2D lattice: fraction of spots off it, held-out patterns
    frac = M[te, 0]
    res["off_plane_fraction_median"] = round(float(np.median(1 - frac)), 3)
    res["off_plane_fraction_mean"] = round(float(np.mean(1 - frac)), 3)
    res["patterns_with_any_off_plane"] = round(float(np.mean(frac < 1)), 3)
    res["patterns_over_10pct_off_plane"] = round(float(np.mean(frac < 0.9)), 3)
    res["patterns_over_50pct_off_plane"] = round(float(np.mean(frac < 0.5)), 3)
    res["off_plane_weight_median"] = round(float(np.median(1 - M[te, 1])), 3)
    # a 2D lattice plus its Laue layers (fit_layers) on a sample of held-out patterns, beside the
    # same counts of random points (uniform in the pattern's disc) against the pattern's own 2D
    # lattice: the chance level of both fits
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(np.flatnonzero(te), size=min(1000, int(te.sum())), replace=False))
    lay = np.empty((len(sample), 4))
    for r, p in enumerate(sample):
        sl = slice(off[p], off[p + 1])
        x, yy, it = lib.spot_qx[sl], lib.spot_qy[sl], lib.spot_intensity[sl]
        k = np.hypot(x, yy) >= 0.05
        x, yy, it = x[k], yy[k], it[k]
        f2 = fit_lattice2d(x, yy, it ** 0.5)
        lay[r, 0] = f2["indexed"].mean()
        lay[r, 1] = (fit_layers(x, yy, f2["basis"])["layer"] <= 4).mean() if np.isfinite(f2["basis"]).all() else 0
        rad = np.hypot(x, yy).max() * np.sqrt(rng.random(x.size))
        ph = rng.random(x.size) * 2 * np.pi
        rx, ry = rad * np.cos(ph), rad * np.sin(ph)
        if np.isfinite(f2["basis"]).all():  # random points against this pattern's own 2D lattice
            layer0 = fit_layers(rx, ry, f2["basis"])["layer"]
            lay[r, 2], lay[r, 3] = (layer0 == 0).mean(), (layer0 <= 4).mean()
        else:
            lay[r, 2] = lay[r, 3] = 0
    t0 = time.perf_counter()  # the rate of metric_features, on 1000 patterns from the first held-out one
    first = int(np.flatnonzero(te)[0])
    rows = np.arange(first, min(first + 1000, len(lib)))
    sl = slice(off[rows[0]], off[rows[-1] + 1])
    metric_features(lib.spot_qx[sl], lib.spot_qy[sl], lib.spot_intensity[sl], lib.counts[rows[0] : rows[-1] + 1])
    res["metric_features_patterns_per_s"] = round((rows[-1] + 1 - rows[0]) / (time.perf_counter() - t0))
    res["sample_patterns"] = len(sample)
    res["sample_2d_indexed_median"] = round(float(np.median(lay[:, 0])), 3)
    res["sample_2d_plus_layers_explained_median"] = round(float(np.median(lay[:, 1])), 3)
    res["sample_2d_plus_layers_explained_over_95pct"] = round(float(np.mean(lay[:, 1] > 0.95)), 3)
    res["random_points_2d_indexed_median"] = round(float(np.median(lay[:, 2])), 3)
    res["random_points_2d_plus_layers_explained_median"] = round(float(np.median(lay[:, 3])), 3)
    # the ceiling of one pattern if the systems cannot be told apart on patterns whose spots lie on
    # one plane (at least 90 % of them on the 2D lattice): A, triclinic, monoclinic and orthorhombic
    # merged there (a 3-parameter 2D form cannot separate them); B, all seven merged there (a general
    # section of any lattice is an oblique 2D lattice; commensurability is all that is left)
    yt = y[te]
    planar = frac >= 0.9
    low = np.isin(yt, [0, 1, 2])
    err_a = (planar & low).sum() - np.bincount(yt[planar & low], minlength=7).max(initial=0)
    err_b = planar.sum() - np.bincount(yt[planar], minlength=7).max(initial=0)
    res["planar_patterns"] = round(float(planar.mean()), 3)
    res["ceiling_low_three_merged_on_planar"] = round(1 - float(err_a) / len(yt), 3)
    res["ceiling_all_merged_on_planar"] = round(1 - float(err_b) / len(yt), 3)
    res["held_out_class_mix"] = {SYSTEMS[c]: round(float(np.mean(y[te] == c)), 3) for c in range(7)}
    res["off_plane_by_system"] = {SYSTEMS[c]: round(float(np.median(1 - frac[y[te] == c])), 2) for c in range(7)}
    # residuals of the forms on held-out patterns, median log10 per true system
    for j, name in ((5, "cubic"), (7, "tetragonal"), (9, "hexagonal")):
        res[f"{name}_log_residual_median_by_system"] = {
            SYSTEMS[c]: round(float(np.median(M[te][y[te] == c, j])), 2) for c in range(7)}
    # 2. the cubic a of the cubic form's best fit (a * |g1| / |g1|), held-out cubic patterns
    cub = te & (y == SYSTEMS.index("cubic")) & (M[:, 0] > 0)
    X = encode_library(lib)
    g1 = np.sqrt(Gm[:, 0])
    a_fit = M[cub, 6] / g1[cub]
    err = np.abs(a_fit - a_true[cub])
    res["cubic_a_one_pattern_median_abs_error_A"] = round(float(np.nanmedian(err)), 3)
    res["cubic_a_one_pattern_within_2pct"] = round(float(np.nanmean(err / a_true[cub] < 0.02)), 3)
    best10 = []
    stc = st[cub]
    for j in np.unique(stc):
        rows = np.flatnonzero(stc == j)
        for g in range(len(rows) // 10):
            blk = rows[g * 10 : (g + 1) * 10]
            v = a_fit[blk]
            agree = (np.abs(v[:, None] / v[None, :] - 1) < 0.02).sum(axis=1)  # the most common value
            best10.append(abs(v[np.lexsort((v, agree))[-1]] - a_true[cub][blk[0]]))
    res["cubic_a_10_patterns_mode_median_abs_error_A"] = round(float(np.median(best10)), 3)
    # 3. the MLP with and without the metric features
    tr = ~te
    out = {}
    for seed in args.seeds or [config.seed]:
        for name, feats in (("shipped features", shape_features(X)),
                            ("shipped + metric features", np.concatenate([shape_features(X), M], axis=1))):
            key = f"{name}, seed {seed}"
            f = work / f"mlp_{'metric' if 'metric' in name else 'base'}_{seed}.json"
            r = cached_score(f, key, lambda feats=feats: feats, y, st, tr, te, seed, t_start + args.budget_s)
            if r is None:
                return
            out[key] = r
    res["mlp"] = out
    print(json.dumps(res, indent=1))
    (work / "identify_metric.json").write_text(json.dumps(res, indent=1) + "\n")
    if args.no_results:
        return
    lines = [
        "## Crystal identification: metric indexing of single patterns",
        "",
        "`benchmarks/identify_metric_study.py --cache LIB --work WORK --seeds 1 2` (the shipped identifier's library and "
        "split by structure; `distill4d.identify.metric`).",
        f"{machine_line()} (shared, loaded)",
        "",
        f"2D lattice of each held-out pattern's spots (the pair of short spots that indexes the most, refined; "
        f"tolerance 0.012 1/Å, position noise 0.003 1/Å per coordinate), {res['held_out_patterns']} patterns of "
        f"{res['held_out_structures']} structures:",
        "",
        "| measure | value |",
        "|---|---|",
        f"| spots off the 2D lattice, median / mean fraction | {res['off_plane_fraction_median']} / "
        f"{res['off_plane_fraction_mean']} |",
        f"| patterns with any spot off it / over 10 % / over 50 % | {res['patterns_with_any_off_plane']} / "
        f"{res['patterns_over_10pct_off_plane']} / {res['patterns_over_50pct_off_plane']} |",
        f"| intensity (power 0.5) off it, median fraction | {res['off_plane_weight_median']} |",
        f"| {res['sample_patterns']} held-out patterns: spots on the 2D lattice / on it or one of its Laue layers "
        f"(`fit_layers`, up to 4), medians | {res['sample_2d_indexed_median']} / "
        f"{res['sample_2d_plus_layers_explained_median']} (patterns over 95 % explained: "
        f"{res['sample_2d_plus_layers_explained_over_95pct']}) |",
        f"| the same counts of random points against each pattern's 2D lattice (chance level), medians | {res['random_points_2d_indexed_median']} / "
        f"{res['random_points_2d_plus_layers_explained_median']} |",
        f"| patterns with at least 90 % of their spots on one 2D lattice (planar) | {res['planar_patterns']} |",
        f"| one-pattern ceiling if planar patterns cannot separate triclinic, monoclinic and orthorhombic (the "
        f"majority of the three chosen there; everything else right) | {res['ceiling_low_three_merged_on_planar']} |",
        f"| the same if planar patterns cannot separate any system (the majority chosen there) | "
        f"{res['ceiling_all_merged_on_planar']} |",
        "| held-out class mix | " + ", ".join(f"{k} {v}" for k, v in res["held_out_class_mix"].items()) + " |",
        "| median fraction off it, per system | " + ", ".join(f"{k} {v}" for k, v in res["off_plane_by_system"].items())
        + " |",
        "| cubic form, median log10 relative residual of the 2D Gram matrix, per true system | "
        + ", ".join(f"{k} {v}" for k, v in res["cubic_log_residual_median_by_system"].items()) + " |",
        "| tetragonal form, same | " + ", ".join(f"{k} {v}" for k, v in
                                                res["tetragonal_log_residual_median_by_system"].items()) + " |",
        "| hexagonal form, same | " + ", ".join(f"{k} {v}" for k, v in
                                               res["hexagonal_log_residual_median_by_system"].items()) + " |",
        f"| cubic a of the cubic form's fit, one pattern: median abs. error / within 2 % | "
        f"{res['cubic_a_one_pattern_median_abs_error_A']} Å / {res['cubic_a_one_pattern_within_2pct']} |",
        f"| cubic a, most common of 10 patterns' fits (the one most others agree with to 2 %): median abs. error | "
        f"{res['cubic_a_10_patterns_mode_median_abs_error_A']} Å |",
        "",
        f"| metric features (`metric_features`), rate on 1000 library patterns, one thread | "
        f"{res['metric_features_patterns_per_s']} patterns/s |",
        "",
        "Crystal system, the shipped recipe's MLP on the training structures, same held-out structures:",
        "",
    ] + mlp_table(out)
    write_section("identify_metric", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
