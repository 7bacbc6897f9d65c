"""Domain segmentation benchmark: the windowing autoencoder against k-means, NMF and PCA-GMM on
held-out simulated images and series (``distill4d.simulate.domains``), plus windowing, training
and inference times on a 1400 x 1400 px image.

Held out: nothing was trained or tuned on these images. Development (the tests, the choice of the
training schedule and read-out) used seeds 0-21, stripe periods 6-10 px, lattice constant 8 px,
doses 20-50 counts/px, images of 128-512 px and windows of 32-64 px. Here: seeds 9000+,
stripe periods 10-16 px, lattice constants 9-12 px with c/a drawn in 1.005-1.05, doses 2.5-25,
gradients and blur, images of 512-1400 px with the default windows (128 px, step 32 px).

A second held-out draw, ``held_out_classes(11000)`` (seeds 11000+), was drawn after every tuning
and design choice up to and including the choice of the default method, and is used only here:
it confirms or revises that default with the number of variants *not* given (and is also run with
it given). The autoencoder's training options were validated on ``held_out_classes(5000)`` and ``(6000)``
(benchmarks/segment_ae_validation.py), never on either held-out draw.

Run: ``PYTHONPATH=src python benchmarks/segment_benchmark.py`` (about 25 minutes on 2 loaded CPU
cores; resumable: finished rows are kept in benchmarks/data/segment.partial.json and skipped when
the command is run again, so it can be run in parts, e.g. with ``--max-minutes 7``); writes the
``segment`` section of benchmarks/RESULTS.md and benchmarks/data/segment.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _results import add_output_arguments, machine_info, machine_line, write_section  # noqa: E402

METHODS = ("autoencoder", "kmeans", "nmf", "pca-gmm", "peaks")
#: (draw seed, whether K is given): the first draw with K given, the second (never used for tuning)
#: with K unknown (the default method's test) and given.
RUNS = ((9000, True), (11000, False), (11000, True))


def held_out_classes(seed: int = 9000) -> list[tuple[str, dict]]:
    """The held-out classes: (name, simulate_domains keyword arguments), drawn from ``seed``."""
    from distill4d.simulate.domains import ninety_degree_rotation_deg

    rng = np.random.default_rng(seed)
    out = []
    t = rng.uniform(35, 80)
    out.append(("stripes, 2 variants", dict(shape=(768, 768), angles_deg=(t, t + rng.uniform(70, 110)),
                                            periods_px=tuple(rng.uniform(11, 16, 2)), dose=15.0, gradient=0.3,
                                            blur_px=0.7, seed=seed + 1)))
    t = rng.uniform(0, 60)
    out.append(("stripes, 3 variants", dict(shape=(768, 768), angles_deg=(t, t + 60, t + 120),
                                            periods_px=float(rng.uniform(11, 15)), dose=25.0, seed=seed + 2)))
    ca = float(rng.uniform(1.005, 1.05))
    t = rng.uniform(20, 70)
    out.append((f"lattice a/c, c/a {ca:.3f}", dict(shape=(768, 768), kind="lattice", tetragonality=ca,
                                                   angles_deg=(t, t + ninety_degree_rotation_deg(ca)),
                                                   periods_px=float(rng.uniform(9, 12)), dose=12.0, read_noise=2.0,
                                                   gradient=0.4, blur_px=0.8, seed=seed + 3)))
    t = rng.uniform(40, 85)
    out.append(("series of 4, low dose", dict(shape=(512, 512), n_frames=4, angles_deg=(t, t + 90),
                                              periods_px=float(rng.uniform(10, 14)), dose=2.5, blur_px=1.0,
                                              fraction_range=(0.2, 0.8), seed=seed + 4)))
    return out


def fraction_error(pred: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean |fraction error| over frames and true variants after the best matching of labels."""
    from distill4d.segment import match_labels

    mapping = match_labels(pred, truth)
    err = []
    for j in range(k):
        src = [p for p, t in mapping.items() if t == j]
        for f in range(truth.shape[0]):
            fp = float(np.mean(pred[f] == src[0])) if src else 0.0
            err.append(abs(fp - float(np.mean(truth[f] == j))))
    return float(np.mean(err))


def _table(rows: list[dict]) -> list[str]:
    L = ["| class | method | mIoU | mIoU, window read-out | ARI | fraction error | variants found | train/fit (s) | "
         "orientations found (true) |",
         "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        found = ", ".join(f"{x:.1f}" for x in r["angles_found"])
        true = ", ".join(f"{x:.1f}" for x in r["angles_true"])
        win = f"{r['miou_window_readout']:.3f}" if "miou_window_readout" in r else "-"
        if "walls_applied" in r and not r["walls_applied"]:
            win += " (walls not refined)"
        L.append(f"| {r['class']} ({r['frames']} x {r['size'][0]}², {r['windows']} windows) | {r['method']} | "
                 f"{r['miou']:.3f} | {win} | {r['ari']:.3f} | {r['fraction_error']:.3f} | {r['variants_found']} | "
                 f"{r['train_s']:.1f} | {found} ({true}) |")
    return L


def _summary(rows: list[dict]) -> str:
    """Mean and worst mIoU of each method over the classes."""
    parts = []
    for m in METHODS:
        v = [r["miou"] for r in rows if r["method"] == m]
        if v:
            parts.append(f"{m} {np.mean(v):.3f} (worst {min(v):.3f})")
    return "Mean mIoU over the classes: " + "; ".join(parts) + "."


def render(rows: list[dict], speed: dict, threads: int, steps: int) -> str:
    """The RESULTS.md section of ``rows`` (one per draw, K mode, class and method) and ``speed``."""
    L = ["## Domain segmentation (windowing autoencoder vs k-means, NMF, PCA-GMM, peaks)", "",
         "`PYTHONPATH=src python benchmarks/segment_benchmark.py` "
         f"(`--threads {threads}`, autoencoder {steps} steps at most, seed 0).",
         machine_line(), "",
         "Held-out simulated images (`distill4d.simulate.domains`): stripe periods 10-16 px, lattice "
         "constants 9-12 px with c/a in 1.005-1.05, doses 2.5-25 counts/px, gradients and blur, 512-1400 px "
         "images; development used seeds 0-21, periods 6-10 px, a = 8 px, doses 20-50 and 128-512 px images, and the "
         "autoencoder's training options were chosen on validation draws (seeds 5000+ and 6000+). Windows 128 px, step 32 px "
         "(binned spectra 64 px). mIoU and fraction error after the best one-to-one matching of labels to the truth "
         "(-1, undecided, and variants beyond the true number count as wrong); ARI on the raw labels. Orientations: "
         "the strongest peak of each variant's mean spectrum, against the simulated stripe normals (for the lattice, "
         "the a axes: its strongest reflection is another row, so those columns differ by design). `peaks`: NMF of "
         "the linear window spectra at the mean spectrum's peaks (`distill4d.segment.peaks`; its train/fit time is "
         "its NMF fits, every K tried when K is not given); its options were set on the validation draw (seeds 5000+) and development seeds 0-1, "
         "never on these draws; with K not given it picks K itself (the largest drop of the residual). "
         "mIoU: the labels `segment` gives by default, every method alike: within half a window of a wall, each pixel "
         "takes the variant of the largest fringe energy at the variants' found orientations and periods "
         "(`distill4d.segment.walls`; skipped where the fringes do not tell the variants apart, as on the a/c lattices); "
         "its settings (0.8 periods, half a window) were chosen on the validation draws 5000 and 6000. "
         "'Window read-out': the labels before that step (the amplitude read-out for peaks and the autoencoder, the Otsu "
         "read-out for the baselines)."]
    for seed, given in RUNS:
        sub = [r for r in rows if r.get("draw", 9000) == seed and r.get("k_given", True) == given]
        if not sub:
            continue
        if seed == 9000:
            head = (f"### Draw 1 (seeds {seed}+), number of variants K given to every method")
        else:
            head = (f"### Draw 2 (seeds {seed}+, drawn after all tuning and never used for it), K "
                    + ("given" if given else "**not** given (the baselines fit 8 clusters, merged into variants by "
                       "orientation with a 10° tolerance; the autoencoder gets one channel per variant its `peaks` "
                       "start finds; peaks picks K)"))
        L += ["", head, ""] + _table(sub) + ["", _summary(sub)]
    t_w = speed["windowing_s_all"]
    L += ["", "### Speed", "",
          f"One 1400 x 1400 px frame ({speed['windows']} windows of 128 px, step 32 px): windowing "
          f"{speed['windowing_s_best']:.3f} s wall, best of {len(t_w)} (all: " + ", ".join(f"{x:.3f}" for x in t_w)
          + f" s), {speed['windowing_cpu_s_best']:.3f} s CPU time, one thread"
          + (f"; with {speed['workers_default']} FFT threads {speed['windowing_threads_s_best']:.3f} s wall"
             if "windowing_threads_s_best" in speed else "")
          + f"; autoencoder training {speed['train_s']:.0f} s ({speed['train_steps']} steps), mIoU "
          f"{speed['miou_1400']:.3f}"
          + (f" (walls placed by fringe energy in {speed['walls_s']:.2f} s)" if speed.get("walls_applied") else "")
          + f"; inference (encoder) {speed['inference_windows_per_s']:.0f} windows/s "
          f"({threads} PyTorch thread{'s' if threads > 1 else ''}). "
          + (f"Load average (1 min) {speed['load_start']:.1f} at the start of these timings and "
             f"{speed['load_end']:.1f} at their end (2 cores); " if "load_start" in speed else "")
          + "on a shared machine CPU time is the less disturbed number, and times are upper bounds.", "",
          "Raw numbers: `benchmarks/data/segment.json`."]
    return "\n".join(L)


def _rows_for(seed: int, given: bool, train, done: dict, deadline: float) -> list[dict] | None:
    """The rows of one draw and K mode (from ``done`` where measured); None when out of time."""
    from distill4d.segment import adjusted_rand_index, mean_iou, refine_segmentation, segment, window_features
    from distill4d.simulate.domains import simulate_domains

    rows = []
    for name, kw in held_out_classes(seed):
        k = len(kw["angles_deg"])
        keys = [f"{seed}|{given}|{name}|{m}" for m in METHODS]
        if all(key in done for key in keys):
            rows += [done[key] for key in keys]
            continue
        d = simulate_domains(**kw)
        t0 = time.perf_counter()
        feats = window_features(d.images)
        t_win = time.perf_counter() - t0
        for method, key in zip(METHODS, keys):
            if key in done:
                rows.append(done[key])
                continue
            if time.perf_counter() > deadline:
                return None
            t0 = time.perf_counter()
            if method == "peaks":  # its own (linear) window spectra; their time is in its total
                s0 = segment(d.images, method, domains=k if given else None, train=train, seed=0, refine=False)
            else:
                s0 = segment(None, method, domains=k if given else None, features=feats, train=train, seed=0)
            s = refine_segmentation(s0, d.images)  # what segment(d.images, ...) gives by default
            walls = s.parameters["walls"]
            rec = {"draw": seed, "k_given": given, "class": name, "method": method, "frames": int(d.images.shape[0]),
                   "size": list(d.images.shape[1:]), "windows": int(feats.flat().shape[0]),
                   "miou": mean_iou(s.labels, d.labels), "ari": adjusted_rand_index(s.labels, d.labels),
                   "miou_window_readout": mean_iou(s0.labels, d.labels), "walls_applied": walls["applied"],
                   "walls_reason": walls["reason"], "walls_s": s.timings_s["walls"],
                   "fraction_error": fraction_error(s.labels, d.labels, k), "variants_found": int(s.n_variants),
                   "windowing_s": t_win, "train_s": s.timings_s.get("train", 0.0),
                   "inference_s": s.timings_s.get("inference", 0.0), "total_s": time.perf_counter() - t0,
                   "angles_true": [a_ % 180 for a_ in kw["angles_deg"]],
                   "angles_found": [float(v) for v in s.variant_angles_deg]}
            done[key] = rec
            rows.append(rec)
            print(json.dumps(rec), flush=True)
            _save_partial(done)
    return rows


def _partial_path() -> Path:
    return HERE / "data" / "segment.partial.json"


def _save_partial(done: dict) -> None:
    (HERE / "data").mkdir(exist_ok=True)
    _partial_path().write_text(json.dumps(done, indent=1))


def measure_speed(train, threads: int) -> dict:
    """Windowing (wall best of 5 and CPU time, one thread; wall with the default threads), training
    and inference on a 1400 x 1400 px frame; the load average at the start and the end."""
    from distill4d.ml.window_ae.segment import encode_windows
    from distill4d.segment import mean_iou, segment, window_features
    from distill4d.segment.windows import _affinity
    from distill4d.simulate.domains import simulate_domains

    big = simulate_domains((1400, 1400), angles_deg=(33, 118), periods_px=12.5, dose=20, seed=9100)
    window_features(big.images, workers=1)  # warm caches and plans
    load_start = os.getloadavg()[0]
    t_w, t_c = [], []
    for _ in range(5):
        t0, c0 = time.perf_counter(), time.process_time()
        feats = window_features(big.images, workers=1)
        t_w.append(time.perf_counter() - t0)
        t_c.append(time.process_time() - c0)
    workers = len(_affinity()) or 1
    t_t = []
    for _ in range(5):
        t0 = time.perf_counter()
        window_features(big.images)
        t_t.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    s = segment(big.images, "autoencoder", domains=2, features=feats, train=train)
    t_total = time.perf_counter() - t0
    flat = np.concatenate([feats.flat()] * 4)  # 6,400 windows
    encode_windows(s.model, flat[:256])
    t_inf = []
    for _ in range(3):
        t0 = time.perf_counter()
        encode_windows(s.model, flat)
        t_inf.append(time.perf_counter() - t0)
    return {"load_start": load_start, "load_end": os.getloadavg()[0], "windowing_s_best": min(t_w), "windowing_s_all": t_w, "windowing_cpu_s_best": min(t_c),
            "windowing_cpu_s_all": t_c, "windowing_threads_s_best": min(t_t), "workers_default": workers,
            "windows": int(feats.flat().shape[0]),
            "train_s": s.timings_s["train"], "train_steps": s.history[-1]["step"] if s.history else 0,
            "segment_total_s": t_total, "walls_s": s.timings_s.get("walls", 0.0),
            "walls_applied": bool(s.parameters["walls"]["applied"]), "inference_windows_per_s": len(flat) / min(t_inf),
            "miou_1400": mean_iou(s.labels, big.labels), "torch_threads": threads}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_output_arguments(p, "segment")
    p.add_argument("--steps", type=int, default=1000, help="autoencoder training steps (default 1000)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop starting new rows after this many minutes (finished rows are kept; run again to go on)")
    p.add_argument("--rows-only", action="store_true",
                   help="measure the held-out rows and stop before the speed block (run again, on an idle machine, for it)")
    p.add_argument("--fresh", action="store_true", help="discard the finished rows of an earlier, interrupted run")
    p.add_argument("--render-only", action="store_true",
                   help="rewrite the RESULTS.md section from benchmarks/data/SECTION.json without measuring")
    a = p.parse_args()
    if a.render_only:
        data = json.loads((HERE / "data" / f"{a.section}.json").read_text())
        write_section(a.section, render(data["rows"], data["speed"], data["speed"]["torch_threads"], a.steps))
        return
    import torch

    torch.set_num_threads(a.threads)
    from distill4d.ml.window_ae.train import WindowAETrainConfig

    train = WindowAETrainConfig(max_steps=a.steps, seed=0)
    deadline = time.perf_counter() + (a.max_minutes * 60 if a.max_minutes else math.inf)
    done = {} if a.fresh or not _partial_path().exists() else json.loads(_partial_path().read_text())
    rows = []
    for seed, given in RUNS:
        part = _rows_for(seed, given, train, done, deadline)
        if part is None:
            print("out of time: run the command again to go on", flush=True)
            return
        rows += part
    if "speed" not in done:
        if a.rows_only:
            print("rows done; run the command again for the speed block", flush=True)
            return
        if time.perf_counter() > deadline:
            print("out of time: run the command again to go on", flush=True)
            return
        done["speed"] = measure_speed(train, a.threads)
        _save_partial(done)
    speed = done["speed"]
    print(json.dumps(speed), flush=True)
    (HERE / "data" / f"{a.section}.json").write_text(json.dumps({"rows": rows, "speed": speed, "machine": machine_info()},
                                                                indent=1))
    if not a.no_results:
        write_section(a.section, render(rows, speed, a.threads, a.steps))
    _partial_path().unlink()


if __name__ == "__main__":
    main()
