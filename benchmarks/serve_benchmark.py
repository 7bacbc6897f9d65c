"""Inference server load benchmark: one-pattern ``disks`` requests over loopback.

A real ``distill4d serve --models disks`` runs in a subprocess; an asyncio + httpx client sends
one 256 x 256 pattern per request (binary tensor extension, a fixed probe and the detection
parameters fixed from the patterns once, as a streaming client would) at concurrency 1, 8 and
64, with dynamic batching on (the defaults, max batch 64 and the disks model's max wait of 0 ms,
batches in a worker process; the same with an httpx client, with batches in a thread of the server,
with a max wait of 10 ms, and with max batch 16) and off (max batch 1); the server's mean batch size
per point comes from its ``/metrics``. The reference is ``distill4d.bragg.detect_batch`` called
directly in Python on the same patterns, alternating with the load (``ROUNDS`` rounds per point of
``--seconds`` in all): on batches of the size the server can form.
The client and the server share the machine's cores. At concurrency 1 each request's
``Server-Timing`` header splits its latency into the server's stages. Writes the ``serve`` section
of benchmarks/RESULTS.md.

    python benchmarks/serve_benchmark.py [--seconds 5] [--no-results]
"""

from __future__ import annotations

import argparse
import dataclasses
import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import machine_info, machine_line, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
N_PATTERNS = 16
#: direct and load alternate this many times per point at concurrency > 1
ROUNDS = 3
SIZE = 256


def _patterns():
    from distill4d.bragg import detection_setup, kernel_ft
    from distill4d.simulate.kinematic import strained_scan, vacuum_probe

    dc, _ = strained_scan((4, 4), (SIZE, SIZE), kind="multilayer", strain=0.01, layer_width=1, dose=1e5, seed=0)
    data = np.asarray(dc.data, dtype=np.float32).reshape(-1, SIZE, SIZE)[:N_PATTERNS]
    probe = vacuum_probe((SIZE, SIZE), calibration=dc.calibration).astype(np.float32)
    pr, params = detection_setup(data, probe)
    return data, probe, pr, kernel_ft(pr), params


def _direct(data, kft, params, size: int, seconds: float) -> dict:
    """``detect_batch`` in this process on batches of ``size`` patterns for ``seconds``: patterns/s,
    and the median and p99 time of one call (ms)."""
    from distill4d.bragg import detect_batch

    batch = np.concatenate([data] * (size // len(data) + 1))[:size]
    detect_batch(batch[:1], kft, params)
    times = []
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop or len(times) < 2:
        t0 = time.perf_counter()
        detect_batch(batch, kft, params)
        times.append(time.perf_counter() - t0)
    t = 1000 * np.array(times)
    return {"rate": size * len(t) / (t.sum() / 1000), "p50": float(np.median(t)), "p99": float(np.percentile(t, 99)),
            "patterns": size * len(t), "s": float(t.sum() / 1000), "times_ms": t}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(wait_ms: float | None) -> str:
    return "0 (default)" if wait_ms is None else f"{wait_ms:g}"


def _start(batch: int, wait_ms: float | None, where: str = "process") -> tuple[subprocess.Popen, str]:
    import httpx

    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    env.pop("DISTILL4D_TOKEN", None)
    proc = subprocess.Popen([sys.executable, "-m", "distill4d.cli", "serve", "--models", "disks", "--port", str(port),
                             "--max-batch-size", str(batch), "--log-level", "warning"]
                            + ([] if wait_ms is None else ["--max-wait-ms", str(wait_ms)])
                            + (["--batch-in-server"] if where == "thread" else []),
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    while time.monotonic() - t0 < 60:
        try:
            if httpx.get(url + "/v2/health/ready", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the server did not become ready")


async def _load(url: str, bodies: list, concurrency: int, seconds: float, client: str = "raw") -> dict:
    """``concurrency`` closed-loop clients for ``seconds``: latency percentiles, rate and errors.

    ``client="raw"``: asyncio streams writing each request's prebuilt HTTP/1.1 bytes and reading the
    response by its Content-Length (a load generator that leaves the cores to the server, as wrk
    would); ``"httpx"``: an ``httpx.AsyncClient``."""
    lat, errors = [], 0
    stop = time.perf_counter() + seconds
    host = url.split("//", 1)[1]
    path = "/v2/models/disks/infer"
    if client == "raw":
        raw = [(f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-length: {len(body)}\r\n"
                + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n").encode() + body for body, h in bodies]

        async def worker(k: int) -> None:
            nonlocal errors
            i = k
            reader, writer = await asyncio.open_connection(*host.rsplit(":", 1))
            try:
                while time.perf_counter() < stop:
                    req = raw[i % len(raw)]
                    i += concurrency
                    t0 = time.perf_counter()
                    try:
                        writer.write(req)
                        head = await reader.readuntil(b"\r\n\r\n")
                        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                                      if line.lower().startswith(b"content-length:"))
                        await reader.readexactly(length)
                        ok = head[9:12] == b"200"
                    except (asyncio.IncompleteReadError, ConnectionError, StopIteration):
                        ok = False
                        writer.close()
                        reader, writer = await asyncio.open_connection(*host.rsplit(":", 1))
                    if ok:
                        lat.append(time.perf_counter() - t0)
                    else:
                        errors += 1
            finally:
                writer.close()

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        wall = time.perf_counter() - t0
    else:
        import httpx

        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(
                max_connections=concurrency, max_keepalive_connections=concurrency)) as hc:
            async def worker(k: int) -> None:
                nonlocal errors
                i = k
                while time.perf_counter() < stop:
                    body, h = bodies[i % len(bodies)]
                    i += concurrency
                    t0 = time.perf_counter()
                    try:
                        r = await hc.post(url + path, content=body, headers=h)
                        ok = r.status_code == 200
                    except httpx.TransportError:
                        ok = False
                    if ok:
                        lat.append(time.perf_counter() - t0)
                    else:
                        errors += 1

            t0 = time.perf_counter()
            await asyncio.gather(*(worker(k) for k in range(concurrency)))
            wall = time.perf_counter() - t0
    lat_ms = 1000 * np.array(lat)
    return {"n": len(lat), "errors": errors, "p50": float(np.percentile(lat_ms, 50)),
            "p99": float(np.percentile(lat_ms, 99)), "rate": len(lat) / wall, "wall": wall, "lat_ms": lat_ms}


def _paired(url: str, bodies: list, data, kft, params, conc: int, size: int, seconds: float, client: str,
            rounds: int = ROUNDS) -> tuple[dict, dict]:
    """``rounds`` times: the direct call on batches of ``size`` for ``seconds / rounds``, then the load for as
    long (at least three times the direct call on the batch: a shorter window measures mostly where it cut the
    last batch). Both sides summed over the rounds, so that a change of the shared machine's speed during the
    point falls on both: (load, direct)."""
    ds, rs, cpu, batches = [], [], 0.0, [0.0, 0.0]
    for _ in range(rounds):
        d = _direct(data, kft, params, size, seconds / rounds)
        dur = max(seconds / rounds, 3 * d["p50"] / 1000)
        s0, n0 = _batches(url)
        c0 = time.process_time()
        r = asyncio.run(_load(url, bodies, conc, dur, client))
        s1, n1 = _batches(url)
        cpu += time.process_time() - c0
        batches[0] += s1 - s0
        batches[1] += n1 - n0
        ds.append(d)
        rs.append(r)
    t = np.concatenate([d["times_ms"] for d in ds])
    lat = np.concatenate([r["lat_ms"] for r in rs])
    wall = sum(r["wall"] for r in rs)
    d = {"rate": sum(d["patterns"] for d in ds) / sum(d["s"] for d in ds), "p50": float(np.median(t)),
         "p99": float(np.percentile(t, 99)), "rounds": [d["rate"] for d in ds]}
    r = {"n": len(lat), "errors": sum(r["errors"] for r in rs), "p50": float(np.percentile(lat, 50)),
         "p99": float(np.percentile(lat, 99)), "rate": len(lat) / wall, "seconds": wall, "client_cpu": cpu / wall,
         "batch": batches[0] / max(batches[1], 1), "rounds": [r["rate"] for r in rs]}
    return r, d


def _batches(url: str) -> tuple[float, float]:
    """The server's ``distill4d_batch_size`` histogram: (sum of patterns, number of batches)."""
    import httpx

    got = {}
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(("distill4d_batch_size_sum", "distill4d_batch_size_count")):
            got[line.split("{")[0]] = float(line.rsplit(" ", 1)[1])
    return got.get("distill4d_batch_size_sum", 0.0), got.get("distill4d_batch_size_count", 0.0)


def _server_timing(header: str) -> dict[str, float]:
    """The server's ``Server-Timing`` header as {stage: ms}."""
    return {k.strip(): float(v) for k, v in (part.split(";dur=") for part in header.split(","))}


def _interleaved(url: str, bodies: list, data, kft, params, seconds: float) -> tuple[dict, dict, dict]:
    """Concurrency 1: one direct ``detect_batch`` call, one request with the standard library's
    ``http.client`` and one with ``httpx``, in turn, for ``seconds`` (so that all see the same load
    of the shared machine; each client keeps its connection). Per client: latency and the medians
    and p99 of the server's ``Server-Timing`` stages (ms), with ``http`` = latency minus the
    server's stages (both HTTP stacks, loopback and waiting for a core); the direct call's ``cpu``
    is its thread's CPU time."""
    import http.client
    from urllib.parse import urlsplit

    import httpx

    from distill4d.bragg import detect_batch

    host = urlsplit(url)
    conn = http.client.HTTPConnection(host.hostname, host.port, timeout=60)

    def stdlib_post(body: bytes, h: dict) -> tuple[int, str]:
        conn.request("POST", "/v2/models/disks/infer", body=body, headers=h)
        r = conn.getresponse()
        r.read()
        return r.status, r.getheader("server-timing", "")

    direct, cpu, i = [], [], 0
    got = {"http.client": ([], [], 0), "httpx": ([], [], 0)}
    over = {"http.client": [], "httpx": []}  # latency less the same pattern's direct call just before it
    stop = time.perf_counter() + seconds
    with httpx.Client(timeout=60) as client:
        def httpx_post(body: bytes, h: dict) -> tuple[int, str]:
            r = client.post(url + "/v2/models/disks/infer", content=body, headers=h)
            return r.status_code, r.headers.get("server-timing", "")

        while time.perf_counter() < stop:
            t0, c0 = time.perf_counter(), time.thread_time()
            detect_batch(data[i % len(data)][None], kft, params)
            direct.append(time.perf_counter() - t0)
            cpu.append(time.thread_time() - c0)
            body, h = bodies[i % len(bodies)]
            for name, post in (("http.client", stdlib_post), ("httpx", httpx_post)):
                lat, stages, errors = got[name]
                t1 = time.perf_counter()
                status, timing = post(body, h)
                t2 = time.perf_counter()
                if status == 200:
                    lat.append(t2 - t1)
                    over[name].append(t2 - t1 - direct[-1])
                    st = _server_timing(timing)
                    st["http"] = 1000 * (t2 - t1) - sum(v for k, v in st.items() if k != "model-cpu")
                    stages.append(st)
                else:
                    errors += 1
                got[name] = (lat, stages, errors)
            i += 1
    conn.close()
    out = []
    for name in ("http.client", "httpx"):
        lat, stages, errors = got[name]
        lat_ms = 1000 * np.array(lat)
        ov_ms = 1000 * np.array(over[name])
        out.append({"n": len(lat), "errors": errors, "p50": float(np.percentile(lat_ms, 50)),
                    "p99": float(np.percentile(lat_ms, 99)), "rate": len(lat) / lat_ms.sum() * 1000,
                    "over_p50": float(np.percentile(ov_ms, 50)), "over_p99": float(np.percentile(ov_ms, 99)),
                    "stages": {k: float(np.median([st[k] for st in stages])) for k in stages[0]},
                    "stages_p99": {k: float(np.percentile([st[k] for st in stages], 99)) for k in stages[0]}})
    d_ms = 1000 * np.array(direct)
    return out[0], out[1], {"rate": len(d_ms) / (d_ms.sum() / 1000), "p50": float(np.median(d_ms)),
                            "p99": float(np.percentile(d_ms, 99)), "cpu": float(1000 * np.median(cpu))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="load per point (default 5 s)")
    ap.add_argument("--no-results", action="store_true", help="print only; do not write RESULTS.md")
    a = ap.parse_args()
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")  # the direct calls in one thread, as the server runs them

    from distill4d.serve.protocol import encode_request

    import importlib.util

    parser = "httptools" if importlib.util.find_spec("httptools") else "h11 (pure Python; httptools not installed)"
    load_start = os.getloadavg()
    data, probe, pr, kft, params = _patterns()
    # all the detection parameters (those a first request's response gives in parameters.detection),
    # so that the server and the direct calls detect with the very same parameters
    fixed = dataclasses.asdict(params)
    bodies = [encode_request({"patterns": data[i:i + 1], "probe": probe}, fixed) for i in range(len(data))]
    # The cores are shared: every point is paired with a direct run of the same length just
    # before it, on batches of the size the server can form there (min(concurrency, max batch)).
    # (batching, max batch, max wait, where batches run, client at concurrency > 1, concurrencies)
    # (max wait None: the server's default for disks, 0 ms)
    configs = (("on", 64, None, "process", "raw", (1, 8, 64)), ("on", 64, None, "process", "httpx", (8, 64)),
               ("on", 64, None, "thread", "raw", (8, 64)), ("on", 64, 10.0, "process", "raw", (8, 64)),
               ("on", 16, None, "process", "raw", (8, 64)), ("off", 1, None, "process", "raw", (1, 8, 64)))
    rows = []
    for batching, batch, wait, where, client, concs in configs:
        proc, url = _start(batch, wait, where)
        try:
            asyncio.run(_load(url, bodies, 4, 1.0))  # warm the connections and caches
            for conc in concs:
                if conc == 1:
                    r, rx, d = _interleaved(url, bodies, data, kft, params, 4 * a.seconds)
                    r["seconds"] = rx["seconds"] = 4 * a.seconds
                    r["client"], rx["client"] = "http.client", "httpx"
                    rows.append((batching, batch, wait, where, conc, r, d))
                    r = rx
                else:
                    r, d = _paired(url, bodies, data, kft, params, conc, min(conc, batch), a.seconds, client)
                    r["client"] = {"raw": "asyncio streams", "httpx": "httpx (asyncio)"}[client]
                rows.append((batching, batch, wait, where, conc, r, d))
                rr = " / ".join(f"{x:.0f}" for x in r.get("rounds", []))
                dr = " / ".join(f"{x:.0f}" for x in d.get("rounds", []))
                print(f"batching {batching} (max batch {batch}, wait {_wait(wait)} ms, in a {where}), concurrency {conc}, "
                      f"{r['client']}: "
                      f"p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms, {r['rate']:.1f} patterns/s, "
                      f"{r['errors']} errors ({r['n']} requests); direct on {min(conc, batch)}: "
                      f"{d['rate']:.1f} patterns/s, {d['p50']:.1f} ms per call; mean batch {r.get('batch', 1):.1f}"
                      + (f"; rounds: server {rr}, direct {dr} patterns/s" if rr else ""), flush=True)
        finally:
            proc.terminate()
            proc.wait(20)

    info = machine_info()
    load_end = os.getloadavg()
    default = ("on", 64, None, "process")  # the server's defaults
    c1, d1 = next((r, d) for b, m, w, p, c, r, d in rows if (b, m, w, p) == default and c == 1)  # http.client
    c1x = next(r for b, m, w, p, c, r, d in rows if (b, m, w, p) == default and c == 1 and r["client"] == "httpx")
    goal_lat = d1["p50"] + 10
    L = ["## Inference server (`distill4d serve`, disks)", "",
         machine_line(info),
         f"- Run: {info['date']}; `python benchmarks/serve_benchmark.py --seconds {a.seconds:g}`; "
         f"at concurrency > 1 {ROUNDS} rounds per point of a direct run of {a.seconds / ROUNDS:g} s, then the load "
         "for as long (at least three times the direct call on the batch; column load: their sum), both sides summed "
         "over the rounds, so that a change of the shared machine's speed during a point falls on both; loopback, the clients (column client) on the same "
         f"{info['cores']} cores as the server (the server's batches run in one thread, of a worker process unless the row says thread; uvicorn's HTTP parser: "
         f"{parser}). The cores were shared with other work: load average (1 min) {load_start[0]:.1f} at the "
         f"start and {load_end[0]:.1f} at the end (at concurrency 1, direct calls and requests "
         f"alternate for {4 * a.seconds:g} s); the speed of one direct call changes by tens of percent from minute "
         "to minute on this machine, even when it is otherwise idle.",
         "- Clients: at concurrency 1 a request with the standard library's `http.client` and one with `httpx` "
         "follow each direct call (one keep-alive connection each); at 8 and 64 closed-loop asyncio clients, one "
         "keep-alive connection each: `asyncio streams` writes each request's prebuilt HTTP/1.1 bytes and reads the "
         "response by its Content-Length (a load generator that leaves the cores to the server, as wrk would), "
         "`httpx (asyncio)` an `httpx.AsyncClient`, which takes a large part of a core at these rates.",
         "- Batches in: `process` (the default), a worker process of the model (`distill4d.serve.worker`); `thread`, "
         "a thread of the server's process (`--batch-in-server`), which shares the GIL with the event loop. A lone "
         "request (concurrency 1) runs in the server's process either way.",
         f"- Requests: one {SIZE}x{SIZE} float32 pattern each (kinematic, 1e5 e-), binary tensor extension, "
         "a fixed probe and fixed detection parameters.",
         "- Direct: `distill4d.bragg.detect_batch` in one thread of the benchmark's process, on batches of "
         "min(concurrency, max batch) patterns (the batch the server can form; one pattern at "
         "concurrency 1).", "",
         "| batching | max batch | max wait (ms) | batches in | concurrency | client | load (s) | p50 (ms) | p99 (ms) | "
         "patterns/s | direct patterns/s | % of direct | direct ms per call | mean batch | client CPU (cores) | errors |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for b, m, w, p, c, r, d in rows:
        batch = f"{r['batch']:.1f} | {r['client_cpu']:.2f}" if "batch" in r else "1 | -"  # concurrency 1: one at a time
        L.append(f"| {b} | {m} | {_wait(w)} | {p} | {c} | {r['client']} | {r['seconds']:.0f} | {r['p50']:.1f} | {r['p99']:.1f} | "
                 f"{r['rate']:.1f} | {d['rate']:.1f} | {100 * r['rate'] / d['rate']:.0f} % | {d['p50']:.1f} | "
                 f"{batch} | {r['errors']} |")
    keys = ("route", "read", "prepare", "wait", "model", "model-cpu", "return", "encode", "http")
    L += ["", "Mean batch: patterns per batch the server ran during the point (its `/metrics`); client CPU: the "
          "asyncio client's CPU time per second of load, taken from the same cores as the server.",
          "", "Where a request's time goes at concurrency 1 (batching on, max batch 64; median and p99 over "
          f"{c1['n']} requests of each client, ms): the server's `Server-Timing` header (route: from the request's "
          "headers to the handler; wait and return: the hand-offs to and from a batch worker, none for a lone "
          "request), `http` = latency minus the server's stages (both HTTP stacks, loopback and the two "
          "processes waiting for a core); the direct call and its CPU time alternate with them:", "",
          "| client | | " + " | ".join(keys) + " | total | direct call | direct CPU |",
          "|---|---|" + "---|" * (len(keys) + 3)]
    for r in (c1, c1x):
        for q, st, cpu in (("p50", r["stages"], f"{d1['cpu']:.1f}"), ("p99", r["stages_p99"], "")):
            L.append(f"| {r['client']} | {q} | " + " | ".join(f"{st[k]:.1f}" for k in keys)
                     + f" | {r[q]:.1f} | {d1[q]:.1f} | {cpu} |")
    own = sum(c1["stages"][k] for k in ("route", "read", "prepare", "wait", "return", "encode"))
    L += ["", f"In short (http.client, medians): the model call used {c1['stages']['model-cpu']:.1f} ms of CPU in the "
          f"server against {d1['cpu']:.1f} ms for the direct call; the server's own stages (route, read, prepare, "
          f"wait, return, encode) took {own:.1f} ms; `http` {c1['stages']['http']:.1f} ms; the model call's wall time "
          f"was {c1['stages']['model'] / max(c1['stages']['model-cpu'], 1e-9):.1f}x its CPU time (the direct call's "
          f"{d1['p50'] / max(d1['cpu'], 1e-9):.1f}x)" + (": on this machine the wait for a core dominates every number."
                                                   if d1["p50"] > 1.5 * d1["cpu"] else "; the p99 of the model "
                                                   f"call's CPU time was {c1['stages_p99']['model-cpu']:.1f} ms, its "
                                                   "own variation, which the direct call shares.")]
    errors = sum(r["errors"] for *_, r, d in rows)
    thr = [100 * r["rate"] / d["rate"] for b, m, w, p, c, r, d in rows
           if (b, m, w, p) == default and c in (8, 64) and r["client"] == "asyncio streams"]
    L += ["", "Goals: "
          f"0 errors: **{'met' if errors == 0 else 'not met'}** ({errors}); "
          f"p99 at concurrency 1 (http.client) ≤ one pattern in Python (median) + 10 ms ({goal_lat:.1f} ms): "
          f"**{'met' if c1['p99'] <= goal_lat else 'not met'}** ({c1['p99']:.1f} ms; p50 {c1['p50']:.1f} ms "
          f"against {goal_lat:.1f} ms: {'met' if c1['p50'] <= goal_lat else 'not met'}; p99 against the direct "
          f"call's own p99 + 10 ms, {d1['p99'] + 10:.1f} ms: {'met' if c1['p99'] <= d1['p99'] + 10 else 'not met'}; "
          f"pattern by pattern, each request's latency less the in-process time of the same pattern just before "
          f"it: p50 {c1['over_p50']:.1f} ms, p99 {c1['over_p99']:.1f} ms, "
          f"{'met' if c1['over_p99'] <= 10 else 'not met'} against 10 ms; the 16 patterns differ in their peaks, "
          "so the in-process time varies from pattern to pattern); "
          f"batched throughput (the defaults: max batch 64, max wait 0 ms for disks, batches in a worker process; the asyncio "
          "streams client) at concurrency 8 and 64 ≥ 80 % of direct batched: "
          f"**{'met' if min(thr) >= 80 else 'not met'}** ({thr[0]:.1f} %, {thr[1]:.1f} %)."]
    text = "\n".join(L)
    print(text)
    if not a.no_results:
        write_section("serve", text)


if __name__ == "__main__":
    main()
