"""A small hyperparameter search for FCU-Net on a library's validation split.

Each candidate architecture is trained for the same number of steps (same data order,
augmentation and schedule) and scored on the validation split (every 20th simulation,
never trained on): MSE to the structure-factor target and intensity-weighted disk accuracy.
Writes the table into benchmarks/data/experiments.md (section ``fcunet_search``; an experiment,
not a RESULTS.md benchmark).

    python benchmarks/fcunet_search.py --library LIB --steps 80
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import machine_line, write_section  # noqa: E402

from distill4d.ml.fcunet.model import FCUNet, FCUNetConfig  # noqa: E402
from distill4d.simulate.library import Library  # noqa: E402
from distill4d.ml.fcunet.train import FCUNetTrainConfig, train_fcunet  # noqa: E402

CANDIDATES = {  # name -> (architecture, training overrides)
    "f8-d3-max-mse": (FCUNetConfig(filters=8, depth=3, pool="max", dropout=0.1), {}),
    "f8-d3-max-spot20": (FCUNetConfig(filters=8, depth=3, pool="max", dropout=0.1), {"spot_weight": 20.0}),
    "f8-d3-spectral-spot20": (FCUNetConfig(filters=8, depth=3, pool="spectral", dropout=0.1), {"spot_weight": 20.0}),
    "f8-d3-max-spot20-corrskip-r3": (FCUNetConfig(filters=8, depth=3, pool="max", dropout=0.1, correlation_skip=True,
                                                  real_layers=3), {"spot_weight": 20.0}),
    "f16-d3-max-spot20": (FCUNetConfig(filters=16, depth=3, pool="max", dropout=0.1), {"spot_weight": 20.0}),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--library", required=True)
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--val-entries", type=int, default=64)
    ap.add_argument("--only", nargs="*", help="candidate names (default: all)")
    ap.add_argument("--render", action="store_true", help="only rewrite the section from the stored runs")
    args = ap.parse_args()
    lib = Library(args.library)
    rows = []
    names = [] if args.render else args.only or list(CANDIDATES)
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            cfg = FCUNetTrainConfig(
                model=CANDIDATES[name][0], **CANDIDATES[name][1], batch_size=args.batch_size, max_steps=args.steps,
                warmup_steps=max(1, args.steps // 10), val_entries=args.val_entries, val_every_steps=10**9,
                num_workers=0, seed=0,
            )
            t0 = time.perf_counter()
            card = train_fcunet(lib, Path(tmp) / f"{name}.pt", cfg, device="cpu", log=lambda m: None)
            best = card["validation"]["history"][-1]
            n_params = sum(p.numel() for p in FCUNet(CANDIDATES[name][0]).parameters())
            rows.append((name, n_params, best["mse"], best["accuracy"], time.perf_counter() - t0))
            print(name, rows[-1], flush=True)
    # merge with earlier runs of other candidates (same protocol), kept in a JSON file
    store = Path(__file__).resolve().parent / "data" / "fcunet_search.json"
    old = json.loads(store.read_text()) if store.exists() else {}
    key = f"steps={args.steps},batch={args.batch_size},val={args.val_entries}"
    merged = {r[0]: r for r in old.get(key, {}).get("rows", [])}
    merged.update({r[0]: list(r) + [len(lib)] for r in rows})
    old[key] = {"rows": list(merged.values())}
    store.parent.mkdir(parents=True, exist_ok=True)
    store.write_text(json.dumps(old, indent=1))
    rows = [tuple(r) for r in merged.values()]
    lines = [
        "## FCU-Net hyperparameter search (validation split)",
        "",
        machine_line(),
        f"- Command: `python benchmarks/fcunet_search.py --library LIB --steps {args.steps}` "
        "(LIB: the `fcunet_train.toml` library, as far as it was built when each candidate ran: entries in the table)",
        f"- Each candidate: {args.steps} AdamW steps of {args.batch_size} augmented patterns (same order, "
        f"same warm-up/cosine schedule), then scored on {args.val_entries} validation entries "
        "(simulations never trained on), dropout off.",
        "",
        "| candidate | parameters | val MSE | val disk accuracy | wall s | library entries |",
        "|---|---|---|---|---|---|",
    ]
    for name, n, mse, acc, sec, *entries in rows:
        lines.append(f"| {name} | {n:,} | {mse:.4g} | {acc:.3f} | {sec:.0f} | {entries[0] if entries and entries[0] else '?'} |")
    lines += ["", "A short budget: this ranks early convergence, not final quality. Wall times differ with the load "
              "of the machine (the rows with an unknown library size ran while the library was still being built "
              "on the same 2 cores, over a partial library)."]
    write_section("fcunet_search", "\n".join(lines), Path(__file__).resolve().parent / "data" / "experiments.md")  # an experiment: not RESULTS.md
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
