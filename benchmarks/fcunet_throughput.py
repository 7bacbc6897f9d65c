#!/usr/bin/env python3
"""FCU-Net throughput: patterns per second of the network alone and of the whole detector.

For each device asked for (``cpu``, ``cuda``):

  network   the model's forward pass (eval mode, dropout off, ``torch.no_grad``) on batches
            of pattern + probe tensors already on the device, for each ``--batch``; CUDA is
            synchronised before and after the timed loop. Patterns per second = patterns
            pushed / wall time, after ``--warmup`` untimed batches.
  detector  ``find_bragg_disks_fcunet(dc, probe, device=..., n_passes=p)`` on a kinematic
            multilayer scan (``distill4d.simulate.kinematic.strained_scan``, 128 x 128 px
            patterns, 1e4 e-/pattern): the whole call (resampling to the model's pixel size,
            network passes, peak finding and sub-pixel refinement on the CPU), after an
            untimed call on two patterns. CPU: the first ``--cpu-patterns`` patterns; GPU:
            the whole ``--scan``.

Writes the section ``fcunet_throughput_<device>`` of benchmarks/RESULTS.md for each device
measured (so a CPU run and a GPU run on another machine do not overwrite each other) and the
raw numbers to benchmarks/data/fcunet_throughput_<device>.json.

Usage (repository root):
    .venv/bin/python benchmarks/fcunet_throughput.py --devices cpu --threads 2
    python3 benchmarks/fcunet_throughput.py --devices cuda --scan 64 64
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
sys.path.insert(0, str(HERE.parent / "src"))

from _results import machine_info, machine_line, write_section  # noqa: E402

from distill4d.datacube import DataCube  # noqa: E402
from distill4d.ml.fcunet.detect import find_bragg_disks_fcunet, load_fcunet  # noqa: E402
from distill4d.simulate.kinematic import strained_scan, vacuum_probe  # noqa: E402


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def network_rate(model, patterns: np.ndarray, probe: np.ndarray, *, device: str, batch: int, warmup: int,
                 min_patterns: int) -> dict:
    """Forward passes per second of ``model`` on batches of ``batch`` patterns (already on ``device``)."""
    import torch

    n = len(patterns)
    reps = np.resize(np.arange(n), batch)
    x = torch.from_numpy(np.ascontiguousarray(patterns[reps], dtype=np.float32)).to(device)
    p = torch.from_numpy(np.broadcast_to(probe.astype(np.float32), x.shape).copy()).to(device)
    with torch.no_grad():
        for _ in range(warmup):
            model(x, p)
        _sync(device)
        iters = max(1, -(-min_patterns // batch))
        t = time.perf_counter()
        for _ in range(iters):
            model(x, p)
        _sync(device)
        s = time.perf_counter() - t
    return {"batch": batch, "patterns": iters * batch, "seconds": s, "patterns_per_s": iters * batch / s}


def detector_rate(dc: DataCube, probe: np.ndarray, *, device: str, passes: int) -> dict:
    """Wall time of the whole FCU-Net detector on ``dc`` after an untimed call on two patterns."""
    warm = DataCube(np.asarray(dc.data[:1, :2]), dc.calibration)
    opts = dict(n_passes=passes, device=device, progress=False, seed=0)
    find_bragg_disks_fcunet(warm, probe, **opts)
    _sync(device)
    t = time.perf_counter()
    peaks = find_bragg_disks_fcunet(dc, probe, **opts)
    _sync(device)
    s = time.perf_counter() - t
    return {"passes": passes, "patterns": dc.n_patterns, "seconds": s, "patterns_per_s": dc.n_patterns / s,
            "peaks_per_pattern": peaks.n_peaks / dc.n_patterns}


def measure(device: str, a: argparse.Namespace) -> dict:
    import torch

    if device == "cpu" and a.threads:
        torch.set_num_threads(a.threads)
    model, card = load_fcunet(a.weights, device=device)
    model.eval()
    model.set_mc_dropout(False)
    dc, _ = strained_scan(tuple(a.scan), (128, 128), kind="multilayer", strain=0.01, layer_width=6, dose=1e4, seed=1)
    probe = vacuum_probe((128, 128), calibration=dc.calibration)
    pats = np.asarray(dc.data).reshape(-1, 128, 128)
    pats = pats / np.float32(probe.max())
    out: dict = {"device": device, "torch": torch.__version__, "architecture": card["architecture"],
                 "weights": a.weights or "shipped", "scan": list(a.scan), "network": [], "detector": []}
    if device == "cpu":
        out["cpu_threads"] = torch.get_num_threads()
    else:
        out["gpu_name"] = torch.cuda.get_device_name(0)
    for b in a.batch:
        r = network_rate(model, pats, probe / probe.max(), device=device, batch=b, warmup=a.warmup,
                         min_patterns=a.cpu_patterns if device == "cpu" else a.gpu_patterns)
        out["network"].append(r)
        log(f"{device} network, batch {b}: {r['patterns_per_s']:.1f} patterns/s")
    sub = dc
    if device == "cpu":
        rows = max(1, min(dc.scan_shape[0], -(-a.cpu_patterns // dc.scan_shape[1])))
        sub = DataCube(np.asarray(dc.data[:rows]), dc.calibration)
    for p in a.passes:
        r = detector_rate(sub, probe, device=device, passes=p)
        out["detector"].append(r)
        log(f"{device} detector, {p} pass(es): {r['patterns_per_s']:.1f} patterns/s on {r['patterns']} patterns")
    return out


def render(device: str, raw: dict, info: dict, command: str, seconds: float) -> str:
    name = f"fcunet_throughput_{device}"
    arch = raw["architecture"]
    where = (f"{raw['gpu_name']} (torch {raw['torch']})" if device != "cpu"
             else f"CPU, torch {raw['torch']} with {raw['cpu_threads']} threads")
    lines = [
        f"<!-- {name}:start -->",
        f"## FCU-Net throughput on {'the GPU' if device != 'cpu' else 'the CPU'}",
        "",
        f"Written by `benchmarks/fcunet_throughput.py` on {info['date']} (whole run {seconds:.0f} s).",
        "",
        machine_line(info),
        f"- Device: {where}",
        f"- Command: `{command}`",
        f"- Weights: {raw['weights']} (size={arch['size']}, filters={arch['filters']}, depth={arch['depth']}, "
        f"equivariant={arch.get('equivariant', False)}); data: a {raw['scan'][0]}x{raw['scan'][1]} kinematic "
        "multilayer scan, 128x128 px, 1e4 e-/pattern.",
        "",
        "| part | batch / passes | patterns | wall s | patterns/s |",
        "|---|---|---|---|---|",
    ]
    for r in raw["network"]:
        lines.append(f"| network forward (dropout off) | batch {r['batch']} | {r['patterns']} | {r['seconds']:.2f} | "
                     f"{r['patterns_per_s']:.1f} |")
    for r in raw["detector"]:
        lines.append(f"| `find_bragg_disks_fcunet` (whole call) | {r['passes']} pass(es) | {r['patterns']} | "
                     f"{r['seconds']:.2f} | {r['patterns_per_s']:.1f} |")
    lines += ["", "The whole call includes resampling and the peak finding and refinement, which run on the CPU even when "
              "the network runs on a GPU; the network row is the model alone.",
              f"Raw numbers: `benchmarks/data/{name}.json`.", f"<!-- {name}:end -->"]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--devices", default="auto", help="comma list of cpu, cuda; auto: cpu, and cuda when present")
    p.add_argument("--weights", default=None, help="weights file (default: the shipped model)")
    p.add_argument("--scan", type=int, nargs=2, default=(32, 32), help="scan of the detector timing (GPU: all of it)")
    p.add_argument("--batch", type=int, nargs="+", default=(16, 64, 256), help="network batch sizes")
    p.add_argument("--passes", type=int, nargs="+", default=(1, 2), help="Monte-Carlo passes of the detector timing")
    p.add_argument("--cpu-patterns", type=int, default=128, help="patterns timed on the CPU")
    p.add_argument("--gpu-patterns", type=int, default=8192, help="patterns per network timing on the GPU")
    p.add_argument("--warmup", type=int, default=2, help="untimed network batches")
    p.add_argument("--threads", type=int, default=0, help="PyTorch CPU threads (0: its default)")
    p.add_argument("--no-results", action="store_true", help="do not write RESULTS.md")
    a = p.parse_args(argv)
    if min(a.scan) < 1 or min(a.batch) < 1 or min(a.passes) < 1 or a.cpu_patterns < 1 or a.gpu_patterns < 1:
        p.error("--scan, --batch, --passes, --cpu-patterns and --gpu-patterns must be positive")
    import torch

    devices = [d.strip() for d in a.devices.split(",")] if a.devices != "auto" else (
        ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    for d in devices:
        if d not in ("cpu", "cuda"):
            p.error(f"unknown device {d!r} (cpu or cuda)")
        if d == "cuda" and not torch.cuda.is_available():
            p.error("--devices cuda was asked for but PyTorch sees no GPU")
    command = "python benchmarks/fcunet_throughput.py " + " ".join(sys.argv[1:] if argv is None else argv)
    info = machine_info()
    for d in devices:
        t = time.perf_counter()
        raw = measure(d, a)
        raw["machine"] = info
        seconds = time.perf_counter() - t
        data = HERE / "data"
        data.mkdir(exist_ok=True)
        (data / f"fcunet_throughput_{d}.json").write_text(json.dumps(raw, indent=1) + "\n")
        if not a.no_results:
            write_section(f"fcunet_throughput_{d}", render(d, raw, info, command, seconds))
            log(f"wrote section fcunet_throughput_{d} of benchmarks/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
