"""Validation of the windowing autoencoder's training options (not a RESULTS.md section: tuning
numbers, not accuracy claims).

Each named variant of the training (options, channel count) is trained on a
validation draw of the benchmark's classes (``held_out_classes(seed=5000)`` of
segment_benchmark.py: the same kinds of image, other orientations, periods, c/a and noise) with K
given. Recorded per class: mIoU; per evaluation, the channels alive on the held-out windows (not
zero on some window); at the end, each channel's share of the windows it wins and the purity of
those windows (the fraction from its majority true variant, truth at the window centre), and how
many channels win windows of each true variant. The held-out draws (seeds 9000 and 11000) are
never used here.

Run: ``PYTHONPATH=src python benchmarks/segment_ae_validation.py [--variants NAME ...]``; appends to
benchmarks/data/segment_ae_validation.json (a variant already there is skipped).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

VALIDATION_SEED = 5000

#: name -> (WindowAETrainConfig overrides, channels: an int, "K" for the number of variants (8 when it is
#: not given) or "auto" (segment's default)[,
#: WindowAEConfig overrides]). The
#: other options measured once (divergence term, channel head fitted to the clusters, batch-normalised
#: channels, background after the warp, unit-maximum templates, dead channels re-pointed at their
#: clusters, the warm-up on the pre-activations, templates mixed as |FFT| amplitudes before the log) did not
#: help and were removed; see docs/experiments.md.
VARIANTS: dict[str, tuple] = {
    # the published design (ReLU channels + L1, k-means start), the default until the softmax latent
    "relu-8": ({"init": "kmeans"}, 8, {"latent": "relu"}),
    "relu-K": ({"init": "kmeans"}, "K", {"latent": "relu"}),
    # the rotation bounded (default 20 degrees) so that it cannot absorb the variant difference
    "relu-8-rot10": ({"init": "kmeans"}, 8, {"latent": "relu", "max_rotation_deg": 10.0}),
    "relu-8-rot0": ({"init": "kmeans"}, 8, {"latent": "relu", "max_rotation_deg": 0.0}),
    "relu-K-rot0": ({"init": "kmeans"}, "K", {"latent": "relu", "max_rotation_deg": 0.0}),
    # no L1 sparsity penalty (does the penalty kill the channels that carry a small variant difference?)
    "relu-K-rot0-l1off": ({"init": "kmeans", "l1_coef": 0.0}, "K", {"latent": "relu", "max_rotation_deg": 0.0}),
    "relu-8-l1off": ({"init": "kmeans", "l1_coef": 0.0}, 8, {"latent": "relu"}),
    # the competitive latent: amplitude x softmax(logits / tau), tau annealed 1 -> 0.1, no L1 penalty,
    # from k-means
    "softmax-8-kmeans": ({"init": "kmeans"}, 8, {"latent": "softmax"}),
    "softmax-K-kmeans": ({"init": "kmeans"}, "K", {"latent": "softmax"}),
    "softmax-K-kmeans-tau03": ({"init": "kmeans", "tau_end": 0.3}, "K", {"latent": "softmax"}),
    "softmax-K-kmeans-nowarm": ({"init": "kmeans", "warmup_steps": 0}, "K", {"latent": "softmax"}),
    # the templates and the warm-up's labels from the peaks method's unmixing instead of k-means
    "softmax-K-peaks": ({"init": "peaks", "anchor_coef": 0.0}, "K", {"latent": "softmax"}),  # the default (K given) before the anchor
    "softmax-8-peaks": ({"init": "peaks", "anchor_coef": 0.0}, 8, {"latent": "softmax"}),
    # before the anchor, the default: K channels when K is given, else as many as the unmixing finds variants
    "softmax-auto-peaks": ({"init": "peaks", "anchor_coef": 0.0}, "auto", {"latent": "softmax"}),
    "softmax-K-peaks-tau03": ({"init": "peaks", "anchor_coef": 0.0, "tau_end": 0.3}, "K", {"latent": "softmax"}),
    # the default: the shares anchored through the whole training to the peaks unmixing's mixtures
    # (anchor_coef 0.01); K channels, or as many as the unmixing finds variants
    "softmax-K-anchor": ({}, "K", {}),
    "softmax-auto-anchor": ({}, "auto", {}),
    "softmax-K-anchor-ho": ({}, "K", {}),  # the held-out loss with the anchor term (the shipped form)
    "softmax-K-anchor-c01": ({"anchor_coef": 0.1}, "K", {}),
    "relu-K-peaks": ({"init": "peaks", "anchor_coef": 0.0}, "K", {"latent": "relu"}),
    "relu-8-peaks": ({"init": "peaks", "anchor_coef": 0.0}, 8, {"latent": "relu"}),
}


def model_defaults(**over):
    """Patch the autoencoder's architecture defaults (``WindowAEConfig``) used by ``segment``;
    returns a function that undoes it."""
    import dataclasses

    from distill4d.ml.window_ae import model as mod

    original = mod.WindowAEConfig
    if not over:
        return lambda: None
    fields = [(k, type(v), dataclasses.field(default=v)) for k, v in over.items()]
    mod.WindowAEConfig = dataclasses.make_dataclass("WindowAEConfig", fields, bases=(original,), frozen=True)

    def undo() -> None:
        mod.WindowAEConfig = original

    return undo


def window_truth(labels: np.ndarray, feats) -> np.ndarray:
    """The true variant at each window centre, (T·ny·nx,)."""
    cy, cx = feats.centres_px()
    iy, ix = np.round(cy).astype(int), np.round(cx).astype(int)
    return labels[:, iy][:, :, ix].reshape(-1)


def diagnose(channels: np.ndarray, truth: np.ndarray, k: int) -> dict:
    """Per-channel win share and purity, and channels per true variant."""
    win = np.where(channels.max(axis=1) > 0, channels.argmax(axis=1), -1)
    c = channels.shape[1]
    share, purity, major = [], [], []
    for j in range(c):
        sel = win == j
        share.append(float(sel.mean()))
        if sel.any():
            counts = np.bincount(truth[sel], minlength=k)
            purity.append(float(counts.max() / counts.sum()))
            major.append(int(counts.argmax()))
        else:
            purity.append(float("nan"))
            major.append(-1)
    per_variant = [int(sum(1 for j in range(c) if major[j] == v and share[j] > 0.02)) for v in range(k)]
    return {"alive": int((channels.max(axis=0) > 0).sum()), "winning": int(sum(s > 0.02 for s in share)),
            "share": share, "purity": purity, "majority": major, "channels_per_variant": per_variant,
            "no_winner": float(np.mean(win < 0))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="*", default=list(VARIANTS))
    p.add_argument("--classes", nargs="*", type=int, default=None, help="class indices (default all)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--baselines", action="store_true", help="also the baselines on the validation draw")
    p.add_argument("--seed", type=int, default=VALIDATION_SEED,
                   help="the validation draw (default 5000; results of another draw are stored as NAME@SEED)")
    p.add_argument("--k-unknown", action="store_true",
                   help="the number of variants not given (8 channels or clusters; stored as NAME|K-unknown)")
    a = p.parse_args()
    import torch

    torch.set_num_threads(1)
    from segment_benchmark import held_out_classes

    from distill4d.ml.window_ae.train import WindowAETrainConfig
    from distill4d.segment import mean_iou, segment, window_features
    from distill4d.simulate.domains import simulate_domains

    out_path = HERE / "data" / "segment_ae_validation.json"
    out_path.parent.mkdir(exist_ok=True)
    done = json.loads(out_path.read_text()) if out_path.exists() else {}
    if a.seed in (9000, 11000):
        raise SystemExit("seeds 9000 and 11000 are the benchmark's held-out draws; pick another validation draw")
    classes = held_out_classes(a.seed)
    idx = a.classes if a.classes is not None else list(range(len(classes)))
    data = []
    for i in idx:
        name, kw = classes[i]
        d = simulate_domains(**kw)
        f = window_features(d.images)
        data.append((name, kw, d, f, window_truth(d.labels, f)))
    names = list(a.variants) + (["kmeans", "nmf", "pca-gmm"] if a.baselines else [])
    given = not a.k_unknown
    for v in names:
        key = (v if given else f"{v}|K-unknown") + ("" if a.seed == VALIDATION_SEED else f"@{a.seed}")
        have = {r["class"]: r for r in done.get(key, [])}
        if all(c[0] in have for c in data):
            print(v, "done", [round(have[c[0]]["miou"], 3) for c in data])
            continue
        rows = []
        for ci, (name, kw, d, f, truth) in zip(idx, data):
            if name in have:  # measured in an earlier run
                rows.append(have[name])
                continue
            k = len(kw["angles_deg"])
            t0 = time.perf_counter()
            if v in VARIANTS:
                over, ch, *arch = VARIANTS[v]
                train = WindowAETrainConfig(max_steps=a.steps, seed=0, **over)
                undo = model_defaults(**(arch[0] if arch else {}))
                try:
                    s = segment(d.images, "autoencoder", domains=k if given else None, features=f, train=train, seed=0,
                                channels=None if ch == "auto" else (k if given else 8) if ch == "K" else ch)
                finally:
                    undo()
                diag_rot = float(np.abs(s.rotation_deg).max())
                chf = s.channels.reshape(-1, s.channels.shape[-1])
                diag = diagnose(chf, truth, k)
                # the latent against the read-out, on the window grid: each window's strongest channel's
                # variant (no thresholds) and the read-out's labels
                argmax_lab = np.where(chf.max(axis=1) > 0, s.variant_of_channel[chf.argmax(axis=1)], -1)
                diag["miou_windows_argmax"] = mean_iou(argmax_lab, truth)
                diag["miou_windows_readout"] = mean_iou(s.labels_windows.reshape(-1), truth)
                diag["undecided_windows"] = float(np.mean(s.labels_windows < 0))
                # the latent, for read-out variants without retraining
                lat = HERE / "data" / "segment_ae_validation"
                lat.mkdir(exist_ok=True)
                np.savez_compressed(lat / f"{v}-{ci}{'' if a.seed == VALIDATION_SEED else f'@{a.seed}'}.npz", channels=s.channels,
                                    rotation_deg=s.rotation_deg, scale=s.scale)
                diag["alive_over_training"] = [(h["step"], h["alive_channels"]) for h in s.history]
                diag["max_abs_rotation_deg"] = diag_rot
            else:
                s = segment(d.images, v, domains=k if given else None, features=f, seed=0)
                diag = {}
            rec = {"class": name, "miou": mean_iou(s.labels, d.labels), "seconds": time.perf_counter() - t0, **diag}
            rows.append(rec)
            print(v, json.dumps({kk: (round(vv, 3) if isinstance(vv, float) else vv) for kk, vv in rec.items()
                                 if kk not in ("alive_over_training",)}), flush=True)
        done[key] = rows + [r for r in done.get(key, []) if r["class"] not in {x["class"] for x in rows}]
        out_path.write_text(json.dumps(done, indent=1))
        print(v, "mIoU", [round(r["miou"], 3) for r in rows], "mean", round(float(np.mean([r["miou"] for r in rows])), 3),
              flush=True)


if __name__ == "__main__":
    main()
