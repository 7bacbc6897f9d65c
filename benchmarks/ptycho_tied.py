#!/usr/bin/env python3
"""Multislice ptychography of a thick crystal with tied slices (one transmission function for every
slice, ``reconstruct(..., tied_slices=True)``): the crystal repeats along the beam, so the depth is no
longer an unknown.

Scans of ``phase_data.py`` (80 kV, 25 mrad, focused probe, 0.25 Å steps, 48 x 48 detector to 75 mrad),
Poisson noise as the phase and ptychography benchmarks apply it (``ptycho_benchmark.dosed``):

- validation crystals, on which the object step and the iteration count are chosen: ``ceo2_train`` (CeO2
  fluorite [001], 97.4 Å, 28 rad), ``mgo_train`` (MgO rocksalt [001], 80 Å, 14 rad), ``mo_val`` (Mo bcc
  [001], 119.6 Å, 45 rad), ``bto_val`` (BaTiO3 perovskite [001], 120 Å, 45 rad), each in 2 Å of vacuum
  each side;
- ``sto_thick`` (SrTiO3 [001], 121 Å, 62 x 62 positions): the test, run with the chosen settings.

Slices: about one period along the beam each (``SLICING``: 32 x 3.908 Å for SrTiO3, a = 3.905 Å; 19 x
5.337 Å for CeO2, a = 5.411 Å; 20 x 4.2 Å for MgO, a = 4.212 Å; 39 x 3.169 Å for Mo, a = 3.147 Å; 30 x 4.133 Å
for BaTiO3, a = 4.00 Å). Scored by ``ptycho_benchmark``'s ``score_phase`` (SSIM and Pearson r
with the projected potential, and the phase benchmark's whole-scan metric) after every ``--score-every``
iterations; CPU time of the reconstruction alone (one thread; scoring excluded). With ``sto_thick`` the
section ``ptycho_tied`` of RESULTS.md is written, with the phase benchmark's best method on that scan as
the bar of issue 34's goal (multislice beats every method of the phase benchmark).

Usage: ``OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/ptycho_tied.py --scan ceo2_train --object-step 4``
(validation; also ``mgo_train``, ``mo_val``); ``... --scan sto_thick --doses 2e4 2e3 --iterations 30`` (the test,
which writes the section); ``... --scan sto_thick --doses 2e4 2e3 --pipeline --iterations 30`` (the pipeline with a tied-slice
label against whole-scan tied ptychography on the positions outside its block; with ``sto_thick`` added to
the section); ``... --next-scan`` (each dose's pipeline model applied to the other dose's scan).
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
from _results import add_output_arguments, machine_line, write_section  # noqa: E402
from ptycho_benchmark import DATA, LABEL, Scorer, dosed, object_frame, phase_section_best, score_phase  # noqa: E402

#: Cell depth along the beam (Å) and the slices of about one period each.
SLICING = {"sto_thick": (125.06, 32), "mo_val": (119.586 + 4.0, 39), "ceo2_train": (97.4 + 4.0, 19),
           "mgo_train": (80.0 + 4.0, 20), "bto_val": (120.0 + 4.0, 30)}


def run(name: str, dose: float, a: argparse.Namespace) -> dict:
    import torch

    from distill4d.phase.ptycho import reconstruct

    torch.set_num_threads(1)
    dc, labels = dosed(name, dose)
    scorer = Scorer(labels[LABEL], tuple(labels["metadata"]["scan_step_xy_A"]))
    depth, slices = SLICING[name]
    slices = a.slices or slices
    n = a.pattern_size
    sampling, origin = object_frame(n, dc.calibration.q_pixel_inv_A)
    ckpt = DATA / f"{name}_{dose:g}_tied_{os.getpid()}.ckpt.pt"  # runs side by side keep their own
    ckpt.unlink(missing_ok=True)
    curve, spent = [], [0.0]
    c0 = time.process_time()

    def callback(it: int, error: float) -> None:
        c = time.process_time()
        if (it + 1) % a.score_every == 0 or it + 1 == a.iterations:
            st = torch.load(ckpt, weights_only=True, map_location="cpu")["state"]
            ph = (st["phase"].sum(dim=0) * slices).numpy().astype(np.float32)
            sc = score_phase(scorer, ph, sampling, origin)
            curve[:] = [c for c in curve if c["iteration"] < it + 1]  # a restart (divergence guard) redoes iterations
            curve.append({"iteration": it + 1, "error": float(error), "cpu_s": c - c0 - spent[0],
                          "ssim": sc["ssim"], "pearson": sc["pearson"], "ssim_whole": sc["ssim_whole"],
                          "pearson_whole": sc["pearson_whole"]})
            print(f"   {name} {dose:g} iteration {it + 1}: error {error:.5f} SSIM {sc['ssim']:.4f} "
                  f"r {sc['pearson']:.4f} ({c - c0 - spent[0]:.0f} CPU s)", flush=True)
        spent[0] += time.process_time() - c

    try:
        res = reconstruct(dc, defocus_A=0.0, iterations=a.iterations, device="cpu", seed=0, checkpoint=ckpt,
                          progress=False, scan_rotation_rad=0.0, scan_flip=False, slices=slices,
                          slice_thickness_A=depth / slices, tied_slices=True,
                          learning_rates={} if a.object_step is None else {"object_step": a.object_step},
                          callback=callback, pattern_size=n, **extra_keywords(a))
    finally:  # the checkpoint is this process's own: nothing resumes it
        ckpt.unlink(missing_ok=True)
    cpu = time.process_time() - c0 - spent[0]
    assert tuple(res.sampling_A) == sampling and np.allclose(res.positions_A[0], origin)  # the frame scored
    return {"scan": name, "dose": dose, "slices": slices, "slice_thickness_A": depth / slices,
            "iterations": a.iterations, "object_step": res.provenance.parameters["learning_rates"]["object_step"],
            "cpu_s": cpu, "curve": curve, "keywords": a.set,
            "object_step_halvings": res.provenance.parameters["object_step_halvings"],
            "final": curve[-1]}


def extra_keywords(a: argparse.Namespace) -> dict:
    """``--set KEY=VALUE ...`` as keywords of reconstruct (values read as Python literals)."""
    import ast

    kw = {k: ast.literal_eval(v) for k, v in (kv.split("=", 1) for kv in a.set)}
    taken = {"slices", "slice_thickness_A", "tied_slices", "learning_rates", "pattern_size", "callback", "checkpoint"}
    if taken & set(kw):
        raise SystemExit(f"--set cannot change {sorted(taken & set(kw))}: use the script's own options")
    return kw


def pipeline(name: str, dose: float, a: argparse.Namespace) -> dict:
    """``distill4d phase SCAN --train-on-ptycho BLOCK --tied-slices`` (the ptycho benchmark's corner block of
    1/8 of the positions, the MLP) against ``distill4d ptycho SCAN --tied-slices`` on the whole scan, both run
    and timed alike (a subprocess each, one thread: start-up, import, reading and writing counted) and scored
    on the positions outside the block; the record is saved as ``<scan>_<dose>_tied_pipeline.json``."""
    import torch

    from distill4d.io import read_results, write
    from ptycho_benchmark import _run_stages, distill4d_source, pipeline_region

    torch.set_num_threads(1)
    dc, labels = dosed(name, dose)
    depth, slices = SLICING[name]
    region = pipeline_region(dc.scan_shape)
    spec = f"{region[0].start}:{region[0].stop},{region[1].start}:{region[1].stop}"
    step = tuple(labels["metadata"]["scan_step_xy_A"])
    held = Scorer(labels[LABEL], step, exclude=region)
    scan = DATA / f"{name}_{dose:g}.h5"
    if not scan.exists():
        write(scan, dc, force=True)
    block_iterations = a.block_iterations or a.iterations
    tied = ["--scan-rotation-deg", "0", "--device", "cpu", "--slices", str(slices), "--slice-thickness-A",
            str(depth / slices), "--tied-slices"]
    out = DATA / f"{name}_{dose:g}_tied_pipeline_image.h5"
    cmd = [sys.executable, str(HERE / "_pipeline_stages.py"), str(out.with_suffix(".stages.json")), "phase", str(scan),
           "--train-on-ptycho", spec, "-o", str(out), "--force", "--no-png", "--no-progress", "--scheduler", "inline",
           "--iterations", str(block_iterations), "--train-model", "mlp", "--train-border-A", str(a.train_border_a),
           *tied, *a.pipeline_args]
    print(f"== {name} {dose:g} pipeline: {' '.join(cmd[3:])}", flush=True)
    cpu_pipe, wall_pipe, stages_pipe = _run_stages(cmd, 3600)
    s_pipe = held.score(np.asarray(read_results(out)["ptychographic_phase"], np.float64), step, (0.0, 0.0))
    # the whole scan, run as the pipeline is; kept for the validation runs that vary only the pipeline
    whole = DATA / f"{name}_{dose:g}_tied_whole_it{a.iterations}.h5"
    whole_rec = whole.with_suffix(".json")
    if a.reuse_whole and whole_rec.exists():
        w = json.loads(whole_rec.read_text())
    else:
        wcmd = [sys.executable, str(HERE / "_pipeline_stages.py"), str(whole.with_suffix(".stages.json")), "ptycho",
                str(scan), "-o", str(whole), "--force", "--no-png", "--no-progress", "--iterations", str(a.iterations),
                *tied]
        print(f"== {name} {dose:g} whole-scan ptychography: {' '.join(wcmd[3:])}", flush=True)
        cpu, wall, stages = _run_stages(wcmd, 3600)
        w = {"command": " ".join(["distill4d", *wcmd[3:]]), "cpu_s": cpu, "wall_s": wall, "stages_cpu_s": stages}
        whole_rec.write_text(json.dumps(w, indent=1))
    res = read_results(whole)
    pos = np.asarray(res["positions_A"])
    s_whole = held.score(np.asarray(res["object_phase"], np.float64), tuple(np.asarray(res["sampling_A"])),
                         (float(pos[0, 0]), float(pos[0, 1])))
    rec = {"scan": name, "dose": dose, "block": spec, "n_block": int((region[0].stop - region[0].start)
                                                                        * (region[1].stop - region[1].start)),
           "n_scan": int(np.prod(dc.scan_shape)), "block_iterations": block_iterations, "iterations": a.iterations,
           "train_border_A": a.train_border_a, "extra": a.pipeline_args,
           "command": " ".join(["distill4d", *cmd[3:]]), "cpu_s": cpu_pipe, "wall_s": wall_pipe,
           "stages_cpu_s": stages_pipe, "pipeline": s_pipe, "whole": s_whole, "whole_command": w,
           "quality_ratio": s_pipe["ssim"] / s_whole["ssim"], "time_ratio": cpu_pipe / w["cpu_s"],
           "distill4d_commit": distill4d_source()}
    print(f"{name} {dose:g}, block {spec}, {block_iterations} block iterations, border {a.train_border_a:g} Å "
          f"{' '.join(a.pipeline_args)}: pipeline held-out SSIM {s_pipe['ssim']:.3f} r {s_pipe['pearson']:.3f}, "
          f"{cpu_pipe:.0f} CPU s; whole-scan tied ptychography ({a.iterations} iterations) on the same positions SSIM "
          f"{s_whole['ssim']:.3f} r {s_whole['pearson']:.3f}, {w['cpu_s']:.0f} CPU s; quality ratio "
          f"{rec['quality_ratio']:.3f}, time ratio {rec['time_ratio']:.3f}", flush=True)
    return rec


def next_scan(name: str, train_dose: float, apply_dose: float, a: argparse.Namespace) -> dict:
    """The model the pipeline trained on the scan at ``train_dose`` applied (``distill4d phase SCAN --weights``)
    to the scan of the same sample at ``apply_dose``, which it never saw: scored on every position (less the
    edge band) against the whole-scan tied ptychography of that scan (the saved command's image)."""
    from distill4d.io import read_results
    from ptycho_benchmark import _run_stages, distill4d_source

    _, labels = dosed(name, apply_dose)
    step = tuple(labels["metadata"]["scan_step_xy_A"])
    every = Scorer(labels[LABEL], step)
    weights = DATA / f"{name}_{train_dose:g}_tied_pipeline_image_model.pt"
    scan, out = DATA / f"{name}_{apply_dose:g}.h5", DATA / f"{name}_{apply_dose:g}_next_scan_image.h5"
    cmd = [sys.executable, str(HERE / "_pipeline_stages.py"), str(out.with_suffix(".stages.json")), "phase", str(scan),
           "--weights", str(weights), "-o", str(out), "--force", "--no-png", "--no-progress", "--scheduler", "inline",
           "--device", "cpu"]
    cpu, wall, stages = _run_stages(cmd, 3600)
    s_model = every.score(np.asarray(read_results(out)["ptychographic_phase"], np.float64), step, (0.0, 0.0))
    whole = read_results(DATA / f"{name}_{apply_dose:g}_tied_whole_it{a.iterations}.h5")
    pos = np.asarray(whole["positions_A"])
    s_whole = every.score(np.asarray(whole["object_phase"], np.float64), tuple(np.asarray(whole["sampling_A"])),
                          (float(pos[0, 0]), float(pos[0, 1])))
    w = json.loads((DATA / f"{name}_{apply_dose:g}_tied_whole_it{a.iterations}.json").read_text())
    rec = {"scan": name, "train_dose": train_dose, "apply_dose": apply_dose, "command": " ".join(["distill4d", *cmd[3:]]),
           "cpu_s": cpu, "stages_cpu_s": stages, "model": s_model, "whole": s_whole, "whole_cpu_s": w["cpu_s"],
           "distill4d_commit": distill4d_source()}
    print(f"{name}: the {train_dose:g} model on the {apply_dose:g} scan: SSIM {s_model['ssim']:.3f} r "
          f"{s_model['pearson']:.3f} in {cpu:.1f} CPU s; whole-scan tied ptychography {s_whole['ssim']:.3f} / "
          f"{s_whole['pearson']:.3f} in {w['cpu_s']:.0f} CPU s", flush=True)
    return rec


#: The validation crystals' 2e3 pipeline runs (border 0 / 1 Å), as measured before the SrTiO3 run.
VALIDATION_2E3 = "CeO2 0.840 / 0.787, MgO 0.948 / 0.779 (border 0 is the command's default)"


#: The rows of the default before the growing mini-batch (a fixed 128 positions), run blind to this scan.
PREVIOUS_DEFAULT = ("Before the coarse start (the growing mini-batch alone, `--coarse-iterations 0`; those runs were blind "
                    "to this scan): SSIM 0.956 / 0.953 at 2e4 / 2e3 after 30 iterations, 163 / 168 CPU s; 0.93 first "
                    "after 5 iterations (27-28 CPU s); py4DSTEM's single-slice SSIM after 11.8 / 11.4 CPU s. With a "
                    "fixed mini-batch of 128 positions (the default before the growing one): SSIM 0.963 / 0.963, 187 / "
                    "171 CPU s; 0.95 first after 13 / 11 iterations (74 / 62 CPU s); py4DSTEM's single-slice SSIM after "
                    "22.8 / 22.3 CPU s.")


def section(recs: list[dict], command: str, pipes: list[dict] | None = None) -> str:
    L = ["## Ptychography of a thick crystal with tied slices (SrTiO3 121 Å)", "",
         "; ".join(f"`{c}`" for c in dict.fromkeys(r.get("command", command) for r in recs)), "", machine_line(),
         "- `distill4d.phase.reconstruct(..., slices=32, slice_thickness_A=125.06/32, tied_slices=True)`: one "
         "transmission function for the 32 slices of about one SrTiO3 period (3.905 Å) each, defaults otherwise "
         "(the automatic loss, which chose amplitude here: its single-slice trial left 5-25x the shot noise; Gauss-Newton "
         "object steps with the divergence guard, probe refined, object step "
         f"{recs[0]['object_step']:g} (`TIED_OBJECT_STEP`, the default with tied slices); the step and the iteration count "
         "were chosen on validation crystals (CeO2 97 Å: SSIM 0.915 at step 4 against 0.838 at 2 after 20 iterations, "
         "0.929 at 2e3 after 30; MgO 80 Å: 0.954 after 30 iterations, after a restart by the guard (without it the "
         "step diverged after iteration 5); Mo 120 Å, 45 rad: no step converges, 2 and 4 stall at SSIM 0.14-0.15, 8 "
         "and 16 diverged). The mini-batch grows from 32 to 128 positions over the iterations (`TIED_BATCH_START`, "
         "the default with tied slices), chosen on the validation crystals against the fixed default (128; 115 on "
         "CeO2's 1849 positions) (CeO2 2e3: SSIM 0.90 "
         "after 6 CPU s instead of 20, final 0.934 instead of 0.929; MgO 2e4: 0.948 after 14 CPU s instead of about "
         "40, final 0.958 instead of 0.954; BaTiO3 120 Å, `bto_val`: 0.50 after 71 CPU s instead of 177, final 0.492 instead of 0.503). This scan had been run once with a "
         "fixed 32 (docs/experiments.md), so these rows are its second look at a mini-batch setting. The first "
         "iterations (at most 6, until one lowers the error by less than 2 %; `coarse_iterations`, the default with "
         "8 or more tied slices) model the same depth with 8 slices of 15.6 Å, each the transmission function to "
         "the 4th power (4x fewer FFTs per position), chosen on the validation crystals (30 iterations: CeO2 2e3 "
         "0.933, MgO 2e4 0.957, unchanged; BaTiO3 0.511 instead of 0.492, and after 12 iterations 0.530 instead of "
         "0.417); this scan saw it once, for these rows. Before those, while the method was being found, steps 0.5, 4 and 8 were tried on this "
         "scan at 2e4 (0.5 stalled at SSIM 0.14, 8 diverged, 4 reached 0.73 after 10 iterations): the step of these "
         "rows is not blind to this scan, the iteration count is. Data and metric: those of "
         "the `ptycho` section (the 2e4 data are the phase benchmark's). CPU seconds of the reconstruction, one "
         "thread, scoring excluded.", "",
         "| scan | dose e-/pattern | iterations | SSIM | Pearson r | phase-benchmark metric SSIM / r | CPU s |",
         "|---|---|---|---|---|---|---|"]
    for r in recs:
        f = r["final"]
        L.append(f"| {r['scan']} | {r['dose']:g} | {r['iterations']} | {f['ssim']:.3f} | {f['pearson']:.3f} | "
                 f"{f['ssim_whole']:.3f} / {f['pearson_whole']:.3f} | {r['cpu_s']:.0f} |")
    L += ["", PREVIOUS_DEFAULT]
    L += ["", "SSIM by iteration (error, CPU s):", ""]
    for r in recs:
        pts = ", ".join(f"{c['iteration']}: {c['ssim']:.3f} ({c['error']:.4f}, {c['cpu_s']:.0f} s)" for c in r["curve"])
        L.append(f"- {r['scan']} {r['dose']:g}: {pts}")
    best = phase_section_best("sto_thick")
    ms = next((r for r in recs if r["scan"] == "sto_thick" and r["dose"] == 2e4), None)
    L.append("")
    if best and ms:
        f = ms["final"]
        ok = f["ssim_whole"] > best["ssim"] and f["pearson_whole"] > best["pearson"]
        L.append(f"Goal (issue 34): multislice on thick SrTiO3 beats every method of the phase benchmark (2e4 e-, its "
                 f"metric): {'PASS' if ok else 'FAIL'} (tied slices, {ms['iterations']} iterations: SSIM "
                 f"{f['ssim_whole']:.3f} vs {best['ssim']:.3f} of {best['ssim_method']}; r {f['pearson_whole']:.3f} "
                 f"vs {best['pearson']:.3f} of {best['pearson_method']})")
    p4 = py4dstem_rows("sto_thick")
    if p4:
        L += ["", "Against py4DSTEM's rows of the `ptycho` section (same data and metric; its numbers read from that "
              "section: final SSIM / r, its whole run's CPU s), read as that section reads the goal: final SSIM and r "
              ">= py4DSTEM's, and py4DSTEM's final SSIM reached within 1/3 of its CPU time (tied slices' CPU s at the "
              "first scored iteration that reaches it):", ""]
        for r in recs:
            for row in p4:
                if row["dose"] != r["dose"]:
                    continue
                f = r["final"]
                t = next((c["cpu_s"] for c in r["curve"] if c["ssim"] >= row["ssim"]), None)
                ok = f["ssim"] >= row["ssim"] and f["pearson"] >= row["pearson"] and t is not None and t <= row["cpu_s"] / 3
                L.append(f"- Goal (issue 34): quality >= py4DSTEM's at <= 1/3 of its CPU time, tied slices vs {row['method']}, "
                         f"{r['scan']} {r['dose']:g}: {'PASS' if ok else 'FAIL'} (final SSIM {f['ssim']:.3f} vs "
                         f"{row['ssim']:.3f}, r {f['pearson']:.3f} vs {row['pearson']:.3f}; its final SSIM reached after "
                         f"{'never' if t is None else f'{t:.1f} CPU s'} against {row['cpu_s']:.1f} / 3 = "
                         f"{row['cpu_s'] / 3:.1f})")
    if pipes:
        L += ["", "### The pipeline with a tied-slice label (`phase --train-on-ptycho ... --tied-slices`)", "",
              "; ".join(f"`{c}`" for c in dict.fromkeys(p["benchmark_command"] for p in pipes)), "",
              "The ptycho benchmark's block (a corner block of 1/8 of the positions), reconstructed with the settings "
              "above, the MLP trained on its phase and applied to the whole scan, against `distill4d ptycho` with the "
              "same settings on the whole scan; both run and timed alike (a subprocess each, one thread, process CPU "
              "seconds with start-up, import, reading and writing), both scored on the positions outside the block "
              "(less the edge band). The label border (`--train-border-A`) was chosen on the validation crystals "
              "before this run: held-out quality ratio at 2e4 with border 0 / 1 Å: CeO2 (block 15 x 15) 0.880 / "
              "0.813, MgO (18 x 18) 0.969 / 0.967; at 2e3: " + VALIDATION_2E3 + ". With 1 Å this scan had given 0.945 "
              "(block and whole scan at 30 iterations, printed by an earlier version of this script): the border "
              "was then changed on the validation crystals' evidence, so this scan's number is not blind to that.",
              "", "| scan | dose | block (positions) | block iterations | label border Å | held-out SSIM / r: pipeline | "
              "held-out SSIM / r: whole-scan | quality ratio | CPU s: pipeline / whole-scan | time ratio |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for p in pipes:
            L.append(f"| {p['scan']} | {p['dose']:g} | {p['block']} ({p['n_block']} of {p['n_scan']}) | "
                     f"{p['block_iterations']} | {p['train_border_A']:g} | {p['pipeline']['ssim']:.3f} / "
                     f"{p['pipeline']['pearson']:.3f} | {p['whole']['ssim']:.3f} / {p['whole']['pearson']:.3f} | "
                     f"{p['quality_ratio']:.3f} | {p['cpu_s']:.0f} / {p['whole_command']['cpu_s']:.0f} | "
                     f"{p['time_ratio']:.3f} |")
        L.append("")
        for p in pipes:
            # truncated towards failing, as the ptycho benchmark reads the goal
            q, t = math.floor(p["quality_ratio"] * 1000) / 1000, math.ceil(p["time_ratio"] * 1000) / 1000
            ok = q >= 0.95 and t <= 0.2
            L.append(f"- Goal (issue 34): the pipeline gives >= 0.95 of the ptychographic image quality on the "
                     f"unreconstructed area in <= 1/5 of the time of whole-scan ptychography, {p['scan']} {p['dose']:g}: "
                     f"{'PASS' if ok else 'FAIL'} (quality ratio {q:.3f}, time ratio {t:.3f})")
        nxt = DATA / f"{pipes[0]['scan']}_tied_next_scan.json"
        if nxt.exists():
            L += ["", "The next scan of the same sample (the lab's step 3): each dose's pipeline model applied with "
                  "`distill4d phase SCAN --weights MODEL` to the scan of the other dose, which it never saw (same "
                  "sample and positions, other shot noise), scored on every position (less the edge band) against "
                  "whole-scan tied ptychography of that scan:", "",
                  "| model trained at | applied to | SSIM / r: model | SSIM / r: whole-scan ptychography | quality ratio | "
                  "CPU s: model / ptychography |", "|---|---|---|---|---|---|"]
            for n in json.loads(nxt.read_text()):
                L.append(f"| {n['train_dose']:g} | {n['apply_dose']:g} | {n['model']['ssim']:.3f} / "
                         f"{n['model']['pearson']:.3f} | {n['whole']['ssim']:.3f} / {n['whole']['pearson']:.3f} | "
                         f"{n['model']['ssim'] / n['whole']['ssim']:.3f} | {n['cpu_s']:.1f} / {n['whole_cpu_s']:.0f} |")
    return "\n".join(L) + "\n"


def py4dstem_rows(scan: str) -> list[dict]:
    """py4DSTEM's rows of ``scan`` in the ``ptycho`` section of RESULTS.md: method, dose, final SSIM and
    Pearson r, CPU s of the whole run (empty when the section is absent)."""
    from _results import RESULTS_MD

    text = RESULTS_MD.read_text() if RESULTS_MD.exists() else ""
    if "<!-- ptycho:start -->" not in text:
        return []
    body = text.split("<!-- ptycho:start -->", 1)[1].split("<!-- ptycho:end -->", 1)[0]
    rows = []
    for line in body.splitlines():
        c = [x.strip() for x in line.strip().strip("|").split("|")]
        if len(c) >= 11 and c[0] == scan and c[2].startswith("py4DSTEM"):
            rows.append({"method": c[2], "dose": float(c[1]), "ssim": float(c[4]), "pearson": float(c[5]),
                         "cpu_s": float(c[8])})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scan", default="mo_val", choices=sorted(SLICING))
    ap.add_argument("--doses", nargs="+", type=float, default=[2e4])
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--object-step", type=float, default=None,
                    help="learning_rates['object_step'] (default: the package's for tied slices, TIED_OBJECT_STEP)")
    ap.add_argument("--slices", type=int, default=None, help="default: about one period each (SLICING)")
    ap.add_argument("--score-every", type=int, default=5)
    ap.add_argument("--pipeline", action="store_true",
                    help="the phase --train-on-ptycho pipeline with tied slices against whole-scan tied ptychography "
                         "(printed only)")
    ap.add_argument("--block-iterations", type=int, default=None,
                    help="with --pipeline: iterations of the block's ptychography (default: --iterations)")
    ap.add_argument("--train-border-a", "--train-border-A", dest="train_border_a", type=float, default=0.0,
                    help="with --pipeline: label border left out (Å; default 0, chosen on CeO2 and MgO)")
    ap.add_argument("--reuse-whole", action="store_true",
                    help="with --pipeline: reuse the saved whole-scan command's image and time (validation runs)")
    ap.add_argument("--pipeline-args", nargs=argparse.REMAINDER, default=[],
                    help="with --pipeline: more options of `distill4d phase` (last on the line)")
    ap.add_argument("--next-scan", action="store_true",
                    help="with two doses: each dose's saved pipeline model (of --pipeline) applied to the other dose's "
                         "scan")
    ap.add_argument("--from-saved", action="store_true",
                    help="write the section from the runs saved in benchmarks/data/ptycho (no reconstruction)")
    ap.add_argument("--pattern-size", type=int, default=48, help="the window (pixels; the detector is 48)")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="more keywords of reconstruct (validation runs), e.g. probe_start=3 batch_size=32")
    add_output_arguments(ap, "ptycho_tied")
    a = ap.parse_args(argv)
    command = "benchmarks/ptycho_tied.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if a.pipeline or a.next_scan:
        for dose in a.doses if a.pipeline else []:
            rec = pipeline(a.scan, dose, a)
            rec["benchmark_command"] = command
            (DATA / f"{a.scan}_{dose:g}_tied_pipeline.json").write_text(json.dumps(rec, indent=1))
        if a.next_scan and len(a.doses) == 2:
            nexts = [next_scan(a.scan, d1, d2, a) for d1, d2 in (a.doses, a.doses[::-1])]
            (DATA / f"{a.scan}_tied_next_scan.json").write_text(json.dumps(nexts, indent=1))
        if a.scan == "sto_thick" and not a.no_results:
            recs = saved_runs(a.scan, a)
            write_section(a.section, section(recs, recs[0]["command"], saved_pipelines(a.scan)))
        return
    recs = []
    for dose in a.doses:
        if a.from_saved:
            rec = json.loads(run_path(a.scan, dose, a).read_text())
            command = rec.get("command", command)
        else:
            print(f"== {a.scan} {dose:g}", flush=True)
            rec = run(a.scan, dose, a)
            rec["command"] = command
            path = run_path(a.scan, dose, a)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(rec, indent=1))
        recs.append(rec)
    default = not variant_tag(a) and a.object_step is None
    if a.scan == "sto_thick" and not a.no_results and default:  # the section shows the default settings only
        write_section(a.section, section(recs, command, saved_pipelines(a.scan)))


def variant_tag(a: argparse.Namespace) -> str:
    """The record name's mark of settings other than the scan's default slicing: ``_s<slices>`` and ``--set``."""
    return ("" if a.slices in (None, SLICING[a.scan][1]) else f"_s{a.slices}") + "".join(
        f"_{kv.replace('=', '')}" for kv in a.set)


def run_path(name: str, dose: float, a: argparse.Namespace) -> Path:
    """The saved whole-scan run of ``name`` at ``dose`` with the settings of ``a`` (the package's tied step
    unless ``--object-step``)."""
    from distill4d.phase.ptycho import TIED_OBJECT_STEP

    step = TIED_OBJECT_STEP if a.object_step is None else a.object_step
    return DATA / f"{name}_{dose:g}_tied_step{step:g}_n{a.pattern_size}_it{a.iterations}{variant_tag(a)}.json"


def saved_runs(name: str, a: argparse.Namespace) -> list[dict]:
    """The saved whole-scan test runs of ``name`` (both doses, where saved) with the settings of ``a``."""
    paths = [run_path(name, dose, a) for dose in (2e4, 2e3)]
    return [json.loads(p.read_text()) for p in paths if p.exists()]


def saved_pipelines(name: str) -> list[dict]:
    """The saved pipeline records of ``name`` (both doses, where saved)."""
    paths = [DATA / f"{name}_{dose:g}_tied_pipeline.json" for dose in (2e4, 2e3)]
    return [json.loads(p.read_text()) for p in paths if p.exists()]


if __name__ == "__main__":
    main()
