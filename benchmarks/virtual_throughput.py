#!/usr/bin/env python3
"""Virtual-image throughput benchmark: distill4d vs plain NumPy vs py4DSTEM, on disk.

Every contender runs in a FRESH subprocess that reads the same file lazily (memory
map / HDF5), so its peak memory is its own:

  numpy      the machine's plain NumPy sum over all detector pixels of every pattern
             (``np.load(mmap_mode='r')`` and a chunked ``.sum()``; for HDF5, h5py
             ``read_direct`` of whole-chunk blocks and the same sum). The bandwidth
             baseline.
  py4dstem   ``py4DSTEM.DataCube(memmap or h5py dataset).get_virtual_image(mode='circle',
             geometry=((Qx//2, Qy//2), 30))``, run with the py4DSTEM virtualenv's python
             (benchmarks/envs/py4dstem, made by benchmarks/setup_py4dstem_env.sh).
  distill4d  ``distill4d.read(path, lazy=True)`` then
             ``distill4d.imaging.virtual_image(dc, mask, scheduler=..., progress=False)``
             with a boolean circular mask (centre (Qx//2, Qy//2), radius 30 px: the same
             pixels as py4DSTEM's circle), for each scheduler in --schedulers.

Throughput is the array's bytes (Rx*Ry*Qx*Qy*2) divided by the wall time of the
computation (opening the file included, interpreter start-up and imports not). Peak
RSS is the subprocess's ``ru_maxrss``; the parent also samples /proc/PID/status to split
it into anonymous memory (RssAnon: the process's own buffers) and file-backed pages
(RssFile: pages of a memory-mapped file that the process has touched, which the kernel
can drop under memory pressure but which do count in RSS).

Cache modes: 'cold' (page cache dropped with ``sync; echo 3 > /proc/sys/vm/drop_caches``
before the subprocess starts; needs root, skipped if it fails) and 'warm' (the parent
reads the whole file once first; the subprocess runs --repeat times, best and median
are reported).

Usage (from the repository root):
    .venv/bin/python benchmarks/virtual_throughput.py              # full run (>= 4 GB file)
    .venv/bin/python benchmarks/virtual_throughput.py --quick      # 0.54 GB smoke test
    .venv/bin/python benchmarks/virtual_throughput.py --contenders numpy,distill4d \\
        --formats npy --schedulers threads --cache warm

The data files are made (by make_benchmark_data.py) if missing. A full run writes its
section of benchmarks/RESULTS.md (between <!-- virtual_throughput:start/end --> markers,
the rest of the file is kept); --quick does not unless --results is given.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import make_benchmark_data as mbd  # noqa: E402
from _results import machine_info, write_section  # noqa: E402

DEFAULT_PY4DSTEM_PYTHON = HERE / "envs" / "py4dstem" / "bin" / "python"
RESULTS_MD = HERE / "RESULTS.md"
MARK_START = "<!-- virtual_throughput:start -->"
MARK_END = "<!-- virtual_throughput:end -->"
DETECTOR_RADIUS = 30
BLOCK_BYTES = 64 << 20  # block size of the NumPy baseline's chunked sum
MB = 1e6
GB = 1e9


# =============================================================================== worker side
# Runs inside the fresh subprocess; must work with the py4DSTEM venv (NumPy 1.26) too, so it
# only needs NumPy (+ h5py for .h5, + the contender's package).


def circle_mask(qx: int, qy: int, radius: float = DETECTOR_RADIUS) -> np.ndarray:
    """Boolean BF detector: ``(qx - Qx//2)**2 + (qy - Qy//2)**2 < radius**2`` (py4DSTEM's rule)."""
    xa, ya = np.indices((qx, qy))
    return (xa - qx // 2) ** 2 + (ya - qy // 2) ** 2 < radius**2


def _proc_status() -> dict[str, int]:
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS", "VmHWM", "RssAnon", "RssFile")):
                    k, v = line.split(":", 1)
                    out[k] = int(v.split()[0]) * 1024
    except OSError:
        pass
    return out


def _open_h5(path: str):
    import h5py

    f = h5py.File(path, "r")
    return f, f[mbd.H5_DATASET]


def _rows_per_block(shape: tuple[int, ...], itemsize: int, h5_chunk_rows: int = 1) -> int:
    row = int(np.prod(shape[1:])) * itemsize
    rows = max(1, BLOCK_BYTES // row)
    return max(h5_chunk_rows, (rows // h5_chunk_rows) * h5_chunk_rows)


def _run_numpy(path: str, fmt: str, **_: object) -> np.ndarray:
    if fmt == "npy":
        a = np.load(path, mmap_mode="r")
        rx, ry = a.shape[:2]
        out = np.empty((rx, ry), dtype=np.uint64)
        step = _rows_per_block(a.shape, a.dtype.itemsize)
        for x0 in range(0, rx, step):
            b = a[x0 : x0 + step]
            out[x0 : x0 + b.shape[0]] = b.reshape(b.shape[0], ry, -1).sum(axis=-1)
        del a, b
        return out
    f, d = _open_h5(path)
    try:
        rx, ry = d.shape[:2]
        step = _rows_per_block(d.shape, d.dtype.itemsize, (d.chunks or (1,))[0])
        buf = np.empty((step,) + d.shape[1:], dtype=d.dtype)
        out = np.empty((rx, ry), dtype=np.uint64)
        for x0 in range(0, rx, step):
            n = min(step, rx - x0)
            d.read_direct(buf, np.s_[x0 : x0 + n], np.s_[0:n])
            out[x0 : x0 + n] = buf[:n].reshape(n, ry, -1).sum(axis=-1)
        return out
    finally:
        f.close()


def _run_py4dstem(path: str, fmt: str, **_: object) -> np.ndarray:
    import py4DSTEM

    f = None
    if fmt == "npy":
        data = np.load(path, mmap_mode="r")
    else:
        f, data = _open_h5(path)
    try:
        dc = py4DSTEM.DataCube(data=data)
        qx, qy = data.shape[2:]
        im = dc.get_virtual_image(
            mode="circle", geometry=((qx // 2, qy // 2), DETECTOR_RADIUS), verbose=False, name="bf"
        )
        return np.asarray(im.data)
    finally:
        if f is not None:
            f.close()


def _to_numpy(img: object) -> np.ndarray:
    for attr in ("compute",):
        if hasattr(img, attr) and not isinstance(img, np.ndarray):
            img = img.compute()
    if not isinstance(img, np.ndarray):
        for attr in ("data", "array", "image", "values"):
            if hasattr(img, attr):
                img = getattr(img, attr)
                break
        if hasattr(img, "compute") and not isinstance(img, np.ndarray):
            img = img.compute()
    return np.asarray(img)


def _run_distill4d(path: str, fmt: str, scheduler: str = "inline", memory_budget: int | None = None, **_: object):
    import distill4d
    from distill4d.imaging import virtual_image

    dc = distill4d.read(path, lazy=True)
    mask = circle_mask(*dc.shape[2:])
    kwargs: dict = {"scheduler": scheduler, "progress": False}
    if memory_budget:
        kwargs["memory_budget"] = memory_budget
    img = virtual_image(dc, mask, **kwargs)
    return _to_numpy(img)


RUNNERS = {"numpy": _run_numpy, "py4dstem": _run_py4dstem, "distill4d": _run_distill4d}


def worker_main(spec_path: str) -> int:
    """Run one contender as described by the JSON spec; write the result JSON and image."""
    import resource

    spec = json.loads(Path(spec_path).read_text())
    res: dict = {"ok": False}
    t_import = time.perf_counter()
    try:
        # Import the contender's package before timing (not part of the throughput).
        if spec["contender"] == "py4dstem":
            import py4DSTEM

            res["version"] = py4DSTEM.__version__
        elif spec["contender"] == "distill4d":
            import distill4d
            from distill4d.imaging import virtual_image  # noqa: F401
            from distill4d.io import read  # noqa: F401

            res["version"] = distill4d.__version__
        else:
            res["version"] = np.__version__
        if spec["format"] == "h5":
            import h5py  # noqa: F401
        res["import_s"] = time.perf_counter() - t_import
        res["numpy_version"] = np.__version__
        res["rss_after_import"] = _proc_status().get("VmRSS")
        run = RUNNERS[spec["contender"]]
        times = []
        img = None
        for _ in range(int(spec["repeat"])):
            img = None
            gc.collect()  # unmap the previous run's memory map before the next one
            t0 = time.perf_counter()
            img = run(spec["path"], spec["format"], scheduler=spec.get("scheduler"),
                      memory_budget=spec.get("memory_budget"))
            times.append(time.perf_counter() - t0)
        np.save(spec["image_path"], np.asarray(img, dtype=np.float64))
        res.update(ok=True, times=times)
    except BaseException as exc:  # noqa: BLE001 - report any failure to the parent
        import traceback

        res["error"] = f"{type(exc).__name__}: {exc}"
        res["traceback"] = traceback.format_exc()
    ru_self = resource.getrusage(resource.RUSAGE_SELF)
    ru_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    res["maxrss_self"] = ru_self.ru_maxrss * 1024  # kB on Linux
    res["maxrss_children"] = ru_children.ru_maxrss * 1024
    res["status_end"] = _proc_status()
    Path(spec["result_path"]).write_text(json.dumps(res))
    return 0 if res["ok"] else 1


# =============================================================================== parent side


class _MemSampler(threading.Thread):
    """Samples /proc/PID/status (RSS, RssAnon, RssFile) of a child every ``interval`` s."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak: dict[str, int] = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0, "VmHWM": 0}
        self._stop_evt = threading.Event()

    def run(self) -> None:
        path = f"/proc/{self.pid}/status"
        while not self._stop_evt.is_set():
            try:
                with open(path) as f:
                    for line in f:
                        k = line.split(":", 1)[0]
                        if k in self.peak:
                            self.peak[k] = max(self.peak[k], int(line.split()[1]) * 1024)
            except (OSError, ValueError, IndexError):
                pass
            self._stop_evt.wait(self.interval)

    def stop(self) -> None:
        self._stop_evt.set()
        self.join()


def drop_caches() -> bool:
    """``sync; echo 3 > /proc/sys/vm/drop_caches``; False when not allowed."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def warm_cache(path: Path) -> float:
    """Read the whole file once (bounded buffer) so it sits in the page cache; returns GB/s."""
    buf = bytearray(64 << 20)
    mv = memoryview(buf)
    n = 0
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while True:
            k = f.readinto(mv)
            if not k:
                break
            n += k
    return n / (time.perf_counter() - t0) / GB


def run_job(job: dict, tmpdir: Path, timeout: float) -> dict:
    """Run one contender in a fresh subprocess; returns the job with its measurements."""
    tag = f"{job['contender']}_{job['format']}_{job.get('scheduler') or 'na'}_{job['cache']}"
    spec = dict(job, result_path=str(tmpdir / f"{tag}.json"), image_path=str(tmpdir / f"{tag}.npy"),
                path=str(job["path"]))
    spec_path = tmpdir / f"{tag}.spec.json"
    spec_path.write_text(json.dumps(spec))
    out = dict(job, path=str(job["path"]), tag=tag, image_path=spec["image_path"])
    if job["cache"] == "cold":
        out["cache_dropped"] = drop_caches()
    else:
        out["warm_read_gbps"] = warm_cache(Path(job["path"]))
    env = dict(os.environ)
    cmd = [job["python"], str(Path(__file__).resolve()), "--worker", str(spec_path)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=str(REPO), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = _MemSampler(proc.pid)
    sampler.start()
    try:
        log, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        log, _ = proc.communicate()
        out["error"] = f"timed out after {timeout:.0f} s"
    sampler.stop()
    out["wall_subprocess_s"] = time.perf_counter() - t0
    out["log_tail"] = (log or "")[-3000:]
    out["sampled_peak"] = sampler.peak
    rp = Path(spec["result_path"])
    if rp.exists():
        res = json.loads(rp.read_text())
        out.update({k: v for k, v in res.items() if k != "ok"})
        out["ok"] = bool(res.get("ok"))
    else:
        out["ok"] = False
        out.setdefault("error", f"no result (exit code {proc.returncode})")
    if out["ok"]:
        t = out["times"]
        out["best_s"] = min(t)
        out["median_s"] = statistics.median(t)
        out["gbps_best"] = job["nbytes"] / out["best_s"] / GB
        out["gbps_median"] = job["nbytes"] / out["median_s"] / GB
    out["peak_rss"] = max(out.get("maxrss_self") or 0, sampler.peak.get("VmHWM", 0), sampler.peak.get("VmRSS", 0))
    return out


def reference_image(path: Path, fmt: str, mask: np.ndarray) -> np.ndarray:
    """The BF image by brute force, read block by block (bounded memory), float64."""
    x0m, x1m = np.nonzero(mask.any(axis=1))[0][[0, -1]]
    y0m, y1m = np.nonzero(mask.any(axis=0))[0][[0, -1]]
    m = mask[x0m : x1m + 1, y0m : y1m + 1].astype(np.float64)
    if fmt == "npy":
        a = np.load(path, mmap_mode="r")
        src, close = a, None
    else:
        f, a = _open_h5(str(path))
        src, close = a, f
    rx, ry = a.shape[:2]
    out = np.empty((rx, ry))
    step = max(1, _rows_per_block(a.shape, 2) // 2)
    for x0 in range(0, rx, step):
        b = np.asarray(src[x0 : x0 + step, :, x0m : x1m + 1, y0m : y1m + 1], dtype=np.float64)
        out[x0 : x0 + b.shape[0]] = np.einsum("abij,ij->ab", b, m)
    if close is not None:
        close.close()
    return out


def max_rel_diff(img: np.ndarray, ref: np.ndarray) -> float:
    img = np.asarray(img, dtype=np.float64)
    if img.shape != ref.shape:
        return float("nan")
    denom = np.maximum(np.abs(ref), 1e-12)
    return float(np.max(np.abs(img - ref) / denom))


# ----------------------------------------------------------------------------- reporting


def _label(r: dict) -> str:
    s = r["contender"]
    if r.get("scheduler"):
        s += f" ({r['scheduler']})"
    return s


def _fmt_mb(x: float | None) -> str:
    return "-" if not x else f"{x / MB:,.0f}"


def results_table(results: list[dict]) -> list[str]:
    base = {(r["format"], r["cache"]): r for r in results if r["contender"] == "numpy" and r.get("ok")}
    p4 = {(r["format"], r["cache"]): r for r in results if r["contender"] == "py4dstem" and r.get("ok")}
    lines = [
        "| contender | file | cache | runs | best s | median s | GB/s (best) | % of NumPy | x py4DSTEM "
        "| peak RSS MB | peak anon MB | peak file-backed MB | RSS after import MB | max rel. diff vs reference |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        key = (r["format"], r["cache"])
        if not r.get("ok"):
            err = (r.get("error") or "failed").replace("|", "/").splitlines()[0][:160]
            lines.append(f"| {_label(r)} | {r['format']} | {r['cache']} | - | - | - | - | - | - | - | - | - | - | "
                         f"FAILED: {err} |")
            continue
        pct = f"{100 * r['gbps_best'] / base[key]['gbps_best']:.0f} %" if key in base else "-"
        spd = f"{p4[key]['best_s'] / r['best_s']:.1f}x" if key in p4 else "-"
        sp = r.get("sampled_peak", {})
        diff = r.get("max_rel_diff")
        diff_s = "n/a (full sum)" if r["contender"] == "numpy" else ("-" if diff is None else f"{diff:.1e}")
        lines.append(
            f"| {_label(r)} | {r['format']} | {r['cache']} | {len(r['times'])} | {r['best_s']:.2f} | "
            f"{r['median_s']:.2f} | {r['gbps_best']:.2f} | {pct} | {spd} | {_fmt_mb(r['peak_rss'])} | "
            f"{_fmt_mb(sp.get('RssAnon'))} | {_fmt_mb(sp.get('RssFile'))} | {_fmt_mb(r.get('rss_after_import'))} | "
            f"{diff_s} |"
        )
    return lines


def goal_lines(results: list[dict]) -> list[str]:
    out = []
    base = {(r["format"], r["cache"]): r for r in results if r["contender"] == "numpy" and r.get("ok")}
    p4 = {(r["format"], r["cache"]): r for r in results if r["contender"] == "py4dstem" and r.get("ok")}
    for r in results:
        if r["contender"] != "distill4d" or not r.get("ok"):
            continue
        key = (r["format"], r["cache"])
        checks = []
        if key in base:
            pct = 100 * r["gbps_best"] / base[key]["gbps_best"]
            checks.append(f"{pct:.0f} % of NumPy ({'PASS' if pct >= 70 else 'FAIL'} >= 70 %)")
        if key in p4:
            checks.append(f"{'PASS' if r['best_s'] < p4[key]['best_s'] else 'FAIL'} faster than py4DSTEM")
        rss = r["peak_rss"]
        anon = r.get("sampled_peak", {}).get("RssAnon", 0)
        checks.append(f"peak RSS {rss / GB:.2f} GB ({'PASS' if rss < 2 * GB else 'FAIL'} < 2 GB; "
                      f"of which anonymous {anon / GB:.2f} GB)")
        out.append(f"- distill4d ({r.get('scheduler')}), {r['format']}, {r['cache']}: " + "; ".join(checks))
    return out


def render_section(results: list[dict], info: dict, meta: dict) -> str:
    lines = [
        MARK_START,
        "## Virtual-image throughput (on disk, lazy)",
        "",
        f"Written by `benchmarks/virtual_throughput.py` on {info['date']}.",
        "",
        f"- Machine: {info['cpu_model']}, {info['cores']} cores"
        + (f" ({info['affinity_cores']} usable)" if info.get("affinity_cores") not in (None, info["cores"]) else "")
        + f", {info['ram_gb']:.1f} GB ({info['ram_gb'] * GB / 2**30:.1f} GiB) RAM, Linux {info['kernel']}, "
        f"Python {info['python']}",
        f"- Data: {meta['shape_str']} uint16, {meta['nbytes'] / GB:.2f} GB per file "
        f"({', '.join(meta['files'])}); HDF5 chunks {meta.get('h5_chunks') or '-'}, no compression",
        f"- Detector: circular BF, centre (Qx//2, Qy//2), radius {DETECTOR_RADIUS} px "
        f"({meta['mask_pixels']} of {meta['pattern_pixels']} pixels); NumPy row = sum over all pixels",
        f"- Versions: {meta['versions']}",
        f"- Cache: {meta['cache_note']}",
        "- GB/s = array bytes / wall time of the computation (file opening included; interpreter start-up and "
        "imports not). Peak RSS = the subprocess's ru_maxrss; anon / file-backed = peaks of RssAnon / RssFile "
        "sampled every 20 ms (memory-mapped file pages count in RSS).",
        "",
    ]
    lines += results_table(results)
    goals = goal_lines(results)
    if goals:
        lines += ["", "Goals (distill4d >= 70 % of NumPy bandwidth, faster than py4DSTEM, peak RSS < 2 GB):", ""]
        lines += goals
    notes = [r for r in results if not r.get("ok")]
    if notes:
        lines += ["", "Failures:", ""]
        for r in notes:
            lines.append(f"- {_label(r)} {r['format']} {r['cache']}: {(r.get('error') or '').splitlines()[0][:300]}")
    rerun = "`.venv/bin/python benchmarks/virtual_throughput.py" + (f" {meta['argv']}" if meta["argv"] else "") + "`"
    lines += ["", f"Rerun: {rerun} (see benchmarks/README.md).", MARK_END]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=mbd.DEFAULT_OUT, help="data folder (default benchmarks/data)")
    p.add_argument("--contenders", default="numpy,py4dstem,distill4d", help="comma-separated subset of "
                   "numpy,py4dstem,distill4d")
    p.add_argument("--quick", action="store_true", help="small 0.54 GB dataset (smoke test); no RESULTS.md unless "
                   "--results is given")
    p.add_argument("--shape", type=int, nargs=4, metavar=("RX", "RY", "QX", "QY"), help="explicit dataset shape")
    p.add_argument("--formats", default="npy,h5", help="comma-separated: npy,h5")
    p.add_argument("--schedulers", default="inline,threads", help="distill4d schedulers (comma-separated)")
    p.add_argument("--memory-budget", type=int, default=None, help="distill4d memory_budget in bytes (default: "
                   "the library's)")
    p.add_argument("--cache", default="cold,warm", help="comma-separated: cold,warm")
    p.add_argument("--repeat", type=int, default=3, help="runs per warm measurement (best and median reported)")
    p.add_argument("--py4dstem-python", type=Path, default=DEFAULT_PY4DSTEM_PYTHON,
                   help="python of the py4DSTEM virtualenv")
    p.add_argument("--python", type=Path, default=Path(sys.executable), help="python for numpy and distill4d")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per subprocess")
    p.add_argument("--results", type=Path, default=None, help="Markdown file to update (default benchmarks/RESULTS.md "
                   "for a full run, none for --quick)")
    p.add_argument("--no-results", action="store_true", help="do not write any RESULTS.md")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    raw_argv = list(sys.argv[1:] if argv is None else argv)
    a = parse_args(argv)
    if a.worker:
        return worker_main(a.worker)

    contenders = [c.strip() for c in a.contenders.split(",") if c.strip()]
    formats = [f.strip() for f in a.formats.split(",") if f.strip()]
    schedulers = [s.strip() for s in a.schedulers.split(",") if s.strip()]
    caches = [c.strip() for c in a.cache.split(",") if c.strip()]
    for c in contenders:
        if c not in RUNNERS:
            sys.exit(f"unknown contender {c!r}; choose from {sorted(RUNNERS)}")
    shape = tuple(a.shape) if a.shape else (mbd.QUICK_SHAPE if a.quick else mbd.FULL_SHAPE)
    files = mbd.make_dataset(a.data, shape, tuple(formats))
    nbytes = int(np.prod(shape)) * 2
    info = machine_info()
    print(f"[virtual_throughput] {info['cpu_model']}, {info['cores']} cores, {info['ram_gb']:.1f} GB RAM, "
          f"{info['date']}")

    if "cold" in caches and not drop_caches():
        print("[virtual_throughput] cannot drop the page cache (needs root): 'cold' skipped")
        caches = [c for c in caches if c != "cold"]
        cache_note = "dropping the page cache is not permitted here: warm only"
    else:
        cache_note = ("cold = `sync; echo 3 > /proc/sys/vm/drop_caches` before the subprocess (1 run; a VM's host "
                      "may still cache the disk); warm = file read once by the parent first, then "
                      f"{a.repeat} runs in the subprocess")
    if "cold" not in caches:
        cache_note = cache_note if "not permitted" in cache_note else f"warm only ({a.repeat} runs per subprocess)"

    jobs = []
    versions = {"numpy (bench venv)": np.__version__}
    for fmt in formats:
        for c in contenders:
            python = str(a.python)
            if c == "py4dstem":
                python = str(a.py4dstem_python)
                if not Path(python).exists():
                    print(f"[virtual_throughput] {python} missing: run benchmarks/setup_py4dstem_env.sh; "
                          "py4dstem skipped")
                    continue
            for sched in (schedulers if c == "distill4d" else [None]):
                for cache in caches:
                    jobs.append(dict(contender=c, format=fmt, scheduler=sched, cache=cache, python=python,
                                     path=files[fmt], nbytes=nbytes, repeat=1 if cache == "cold" else a.repeat,
                                     memory_budget=a.memory_budget))
    # Group by cache mode so that all cold runs come first (each drops the cache itself anyway).
    results = []
    with tempfile.TemporaryDirectory(prefix="vt_", dir=a.data) as td:
        tmpdir = Path(td)
        for i, job in enumerate(jobs, 1):
            label = f"{job['contender']}{'/' + job['scheduler'] if job['scheduler'] else ''} {job['format']} {job['cache']}"
            print(f"[{i}/{len(jobs)}] {label} ...", flush=True)
            r = run_job(job, tmpdir, a.timeout)
            if r.get("ok"):
                print(f"    best {r['best_s']:.2f} s ({r['gbps_best']:.2f} GB/s), median {r['median_s']:.2f} s, "
                      f"peak RSS {r['peak_rss'] / MB:,.0f} MB (anon {r['sampled_peak']['RssAnon'] / MB:,.0f}, "
                      f"file {r['sampled_peak']['RssFile'] / MB:,.0f})", flush=True)
                if r.get("version") and job["contender"] != "numpy":
                    versions[job["contender"]] = r["version"]
                    if job["contender"] == "py4dstem":
                        versions["numpy (py4DSTEM venv)"] = r.get("numpy_version")
            else:
                print(f"    FAILED: {r.get('error')}\n{r.get('log_tail', '')[-1500:]}"
                      f"{r.get('traceback', '')[-1500:]}", flush=True)
            results.append(r)

        # Agreement of the images with a brute-force reference (per file).
        mask = circle_mask(*shape[2:])
        refs = {}
        for r in results:
            if not r.get("ok") or r["contender"] == "numpy":
                continue
            if r["format"] not in refs:
                refs[r["format"]] = reference_image(Path(r["path"]), r["format"], mask)
            r["max_rel_diff"] = max_rel_diff(np.load(r["image_path"]), refs[r["format"]])
        num = [r for r in results if r.get("ok") and r["contender"] == "numpy"]
        for r in num:  # the baseline's full sums must agree between formats
            r["max_rel_diff"] = None
        if len(num) > 1:
            imgs = [np.load(r["image_path"]) for r in num]
            d = max(max_rel_diff(im, imgs[0]) for im in imgs[1:])
            print(f"[virtual_throughput] NumPy full sums, npy vs h5: max rel. diff {d:.1e}")
        if len(refs) > 1:
            print(f"[virtual_throughput] reference BF images npy vs h5: max rel. diff "
                  f"{max_rel_diff(refs['h5'], refs['npy']):.1e}")
        for r in results:
            if r.get("max_rel_diff") is not None:
                print(f"[virtual_throughput] {_label(r)} {r['format']} {r['cache']}: image max rel. diff vs "
                      f"reference {r['max_rel_diff']:.1e}")

    meta = {
        "shape_str": "x".join(map(str, shape)),
        "nbytes": nbytes,
        "files": [Path(files[f]).name for f in formats],
        "mask_pixels": int(circle_mask(*shape[2:]).sum()),
        "pattern_pixels": shape[2] * shape[3],
        "versions": ", ".join(f"{k} {v}" for k, v in versions.items()),
        "cache_note": cache_note,
        "argv": " ".join(x for x in raw_argv),
    }
    if "h5" in formats:
        import h5py

        with h5py.File(files["h5"], "r") as f:
            meta["h5_chunks"] = str(f[mbd.H5_DATASET].chunks)
    print()
    print("\n".join(results_table(results)))
    for g in goal_lines(results):
        print(g)
    raw = Path(a.data) / ("virtual_throughput_quick.json" if a.quick else "virtual_throughput_last.json")
    raw.write_text(json.dumps({"machine": info, "meta": meta, "results": results}, indent=1, default=str))
    print(f"[virtual_throughput] raw results: {raw}")
    target = a.results if a.results is not None else (None if a.quick else RESULTS_MD)
    if target is not None and not a.no_results:
        write_section("virtual_throughput", render_section(results, info, meta), Path(target))
        print(f"[virtual_throughput] wrote section to {target}")
    return 0 if all(r.get("ok") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
