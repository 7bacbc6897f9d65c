#!/usr/bin/env python3
"""FCU-Net weights compared on the training library's validation split (the selection data).

Every weights file is scored on the same validation entries (every 20th simulation of the
training library: never trained on, but from the training crystals' distribution), so the
candidates of a training change can be chosen here and then reported once on the held-out
test library and strain scans (``fcunet_benchmark.py``, ``fcunet_dose.py``):

- ``mse`` and disk ``accuracy`` (within 0.5 px) with the default augmentation
  (``AugmentConfig()``, one fixed seed for every candidate; a model card's own validation
  numbers used its training augmentation and seed, so they need not agree across cards);
- the stretch response (``distill4d.ml.fcunet.train.stretch_response``): how fully the predicted
  peaks follow a known +-2 % magnification of the un-augmented validation patterns along qx and
  along qy (1: fully; a strain map reports that fraction of a true strain);
- for models with the correlation skip, the same slope with one input of the real block held
  at the unstretched pattern's value (``stretch_response(hold=...)``): which input, the
  Fourier U-Net's fields or the probe cross-correlation, moves the peaks.

Writes the section ``fcunet_validation`` of benchmarks/data/experiments.md (selection data, not
RESULTS.md) and the raw numbers to
benchmarks/data/fcunet_validation.json.

Usage (repository root):
    .venv/bin/python benchmarks/fcunet_validation.py --library LIB
    .venv/bin/python benchmarks/fcunet_validation.py --library LIB --weights 'new=W.pt' --weights shipped
(LIB: the training library, ``distill4d simulate library --config
src/distill4d/ml/configs/fcunet_train.toml -o LIB``, as far as the shipped card says it was built.)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _results import add_output_arguments, machine_info, machine_line, write_section  # noqa: E402

from distill4d.ml.fcunet import FCUNET_VIEWS  # noqa: E402

SECTION = "fcunet_validation"


def _raw_path(section: str) -> Path:
    """Where a run's raw numbers go: ``benchmarks/data/<section>.json``."""
    return HERE / "data" / f"{section}.json"


AUGMENT_SEED = 100


def parse_weights(text: str) -> tuple[str, str | None]:
    """``LABEL=PATH``, a bare ``PATH`` (labelled by its name) or ``shipped`` (None: the package's weights)."""
    if text == "shipped":
        return "shipped", None
    label, sep, path = text.partition("=")
    if not sep:
        label, path = Path(text).stem, text
    if not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"no weights file {path!r}")
    return label, path


def score(path: str | None, library, entries: int, stretch: float, views: str = "none") -> dict:
    """Validation metrics and stretch response of one weights file (averaged over test-time
    ``views``: ``distill4d.ml.fcunet.model.FCUNetViews``)."""
    import torch

    from distill4d.ml.fcunet import DEFAULT_WEIGHTS
    from distill4d.ml.fcunet.data import LibraryDataset
    from distill4d.ml.fcunet.detect import load_fcunet
    from distill4d.ml.fcunet.model import FCUNetViews
    from distill4d.ml.fcunet.train import evaluate_fcunet, stretch_response, validation_entries
    from distill4d.simulate.augment import AugmentConfig

    model, card = load_fcunet(path, device="cpu")
    if views != "none":
        model = FCUNetViews(model, views)
    file = Path(path) if path else DEFAULT_WEIGHTS
    sel = validation_entries(library, entries)
    t = time.perf_counter()
    with torch.no_grad():
        metrics = evaluate_fcunet(model, LibraryDataset(library, indices=sel, augment=AugmentConfig(), seed=AUGMENT_SEED))
        plain = LibraryDataset(library, indices=sel[::2], augment=None)
        resp = stretch_response(model, plain, stretch=stretch)
        held = ({h: stretch_response(model, plain, stretch=stretch, hold=h) for h in ("correlation", "field")}
                if model.config.correlation_skip and views == "none" else {})
    tr = card.get("training", {})
    aug = (tr.get("config") or {}).get("augment") or {}
    return {"weights": str(file), "sha256": hashlib.sha256(file.read_bytes()).hexdigest()[:12],
            "steps": tr.get("steps"), "init": (tr.get("init") or {}).get("weights"),
            "ellipticity_max": aug.get("ellipticity_max"),
            "position_weight": (tr.get("config") or {}).get("position_weight"),
            "field_jitter_px": (tr.get("config") or {}).get("field_jitter_px", 0.0),
            "command": tr.get("command"), "views": views, "entries": len(sel), "stretch_entries": len(sel[::2]),
            **metrics, "stretch": resp, "stretch_held": held, "seconds": time.perf_counter() - t}


def render(raw: dict) -> str:
    m = raw["meta"]
    section = m.get("section", SECTION)
    title = "## FCU-Net weights on the validation split (selection data)"
    L = [title + ("" if section == SECTION else f": `{section}`"), "",
         f"Written by `benchmarks/fcunet_validation.py` on {raw['machine']['date']} (whole run {m['total_s']:.0f} s).", "",
         machine_line(raw["machine"]),
         f"- Command: `{m['command']}`",
         f"- Library: `{m['library']}` ({m['library_entries']} entries); validation split: every 20th simulation "
         f"(never trained on). MSE and accuracy (intensity-weighted, match within 0.5 px) on {raw['rows'][0]['entries']} "
         f"validation entries augmented by `AugmentConfig()` with seed {AUGMENT_SEED} (the same for every row); "
         f"stretch response on {raw['rows'][0]['stretch_entries']} of them un-augmented (noise-free), magnified by "
         f"1 +- {m['stretch'] * 100:.0f} % along qx, then qy: slope of the predicted peaks' displacement on the true one "
         "(1 = follows the lattice fully; a strain map reports that fraction of a true strain), and the RMS "
         "difference of the two displacements.", "",
         "| weights | steps | training ellipticity max | position weight | field jitter px | test-time views | val MSE | val accuracy 0.5 px | stretch slope qx | stretch slope qy | displacement RMS qx / qy px |",
         "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in raw["rows"]:
        s = r["stretch"]
        L.append(f"| {r['label']} (`{Path(r['weights']).name}`, sha256 {r['sha256']}) | {r['steps']} | "
                 f"{r['ellipticity_max']} | {r['position_weight']} | {r.get('field_jitter_px', 0.0)} | "
                 f"{r.get('views', 'none')} | {r['mse']:.3g} | "
                 f"{r['accuracy']:.3f} | "
                 f"{s['qx']['slope']:.3f} | {s['qy']['slope']:.3f} | {s['qx']['rms_px']:.3f} / {s['qy']['rms_px']:.3f} |")
    held = [r for r in raw["rows"] if r.get("stretch_held")]
    if held:
        L += ["", "Which input of the real block places the peaks: the stretch slope (qx / qy) with one input "
              "held at the unstretched pattern's value, so that only the other one sees the magnification.", "",
              "| weights | both inputs stretched | only the U-Net fields (correlation held) | only the correlation (fields held) |",
              "|---|---|---|---|"]
        for r in held:
            s, c, f = r["stretch"], r["stretch_held"]["correlation"], r["stretch_held"]["field"]
            L.append(f"| {r['label']} | {s['qx']['slope']:.3f} / {s['qy']['slope']:.3f} | "
                     f"{c['qx']['slope']:.3f} / {c['qy']['slope']:.3f} | {f['qx']['slope']:.3f} / {f['qy']['slope']:.3f} |")
        top = max(max(r["stretch_held"]["field"]["qx"]["slope"], r["stretch_held"]["field"]["qy"]["slope"])
                  for r in held)
        L += ["", f"With the correlation alone stretched the peaks follow at most {100 * top:.0f} % of the stretch "
              "(any row): "
              + ("the peaks move with the Fourier-space U-Net's fields; the probe cross-correlation, given to the "
                 "real block so that it could follow the disks in the detector plane, is hardly used for their "
                 "positions, even when training shifts the fields at random against it (`field_jitter_px`). "
                 "The under-response is the U-Net's." if top < 0.1 else
                 "the real block takes part of the positions from the correlation.")]
    L += ["", "Training commands (from each model card):", ""]
    L += [f"- {r['label']}: `{r['command']}`" + (f" (warm start from `{r['init']}`)" if r["init"] else "")
          for r in raw["rows"] if r.get("views", "none") == "none"]
    if any(r.get("views", "none") != "none" for r in raw["rows"]):
        L += ["", "Test-time views (`find_bragg_disks_fcunet(..., views=...)`): the prediction averaged over the "
              "pattern and probe mirrored along qx, qy and both (`flips`, 4 network passes) and also transposed "
              "(`dihedral`, 8), each mapped back; same weights."]
    L += ["", "A bilinear magnification of sharp spots alone gives a slope a little below 1 (a detector that "
          "returns the input's own spots: 0.96-0.97 in `tests/test_fcunet.py`).",
          f"Raw numbers: `{_raw_path(section).relative_to(HERE.parent)}`."]
    return "\n".join(L) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--library", required=True, help="the training library (its validation split is scored)")
    p.add_argument("--weights", action="append", type=parse_weights,
                   help="LABEL=PATH, PATH or 'shipped' (repeatable; default: shipped)")
    p.add_argument("--views", nargs="+", default=["none"], choices=FCUNET_VIEWS,
                   help="test-time views scored for the shipped weights; other weights files get one view (default: none)")
    p.add_argument("--entries", type=int, default=128, help="validation entries scored (default 128)")
    p.add_argument("--stretch", type=float, default=0.02, help="magnification step (default 0.02)")
    add_output_arguments(p, SECTION)
    a = p.parse_args(argv)
    if a.entries < 2:
        p.error("--entries must be at least 2")
    import torch

    from distill4d.simulate.library import Library

    torch.set_num_threads(a.threads)
    library = Library(a.library)
    t0 = time.perf_counter()
    rows = []
    for (label, path), views in [(w, v) for w in a.weights or [("shipped", None)] for v in a.views]:
        if views != "none" and path is not None and label != "shipped":
            continue  # views are scored on the shipped weights only (the others are training candidates)
        r = {"label": label if views == "none" else f"{label}, views {views}",
             **score(path, library, a.entries, a.stretch, views)}
        print(f"{r['label']}: val mse {r['mse']:.3g}, accuracy {r['accuracy']:.3f}, stretch slope qx "
              f"{r['stretch']['qx']['slope']:.3f} qy {r['stretch']['qy']['slope']:.3f} ({r['seconds']:.0f} s)", flush=True)
        rows.append(r)
    cmd = "python benchmarks/fcunet_validation.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    raw = {"machine": machine_info(), "rows": rows,
           "meta": {"command": cmd, "library": str(library.path), "library_entries": len(library),
                    "stretch": a.stretch, "total_s": time.perf_counter() - t0, "section": a.section}}
    out = _raw_path(a.section)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(raw, indent=1) + "\n")
    if not a.no_results:
        write_section(a.section, render(raw), Path(__file__).resolve().parent / "data" / "experiments.md")  # selection data: not RESULTS.md
    print(render(raw))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
