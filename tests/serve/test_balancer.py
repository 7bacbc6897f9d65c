"""Two servers behind a load balancer, one killed during a bounded load run: no request is lost.

The balancer is the test's own (tests/_serve.py: round robin over TCP, skipping a backend that
refuses connections), as neither nginx nor HAProxy is installed here. The client retries a
request whose connection broke; only requests in flight at the kill may need that retry.
"""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import numpy as np
import pytest
from _serve import Balancer

from distill4d.serve.protocol import decode_response, encode_request

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

CONCURRENCY = 8
REQUESTS = 400


def test_killing_one_of_two_servers_loses_no_request(start_server, scan_files):
    a = start_server("--models", "disks", "--log-level", "warning")
    b = start_server("--models", "disks", "--log-level", "warning")
    a.wait_ready()
    b.wait_ready()
    lb = Balancer([a.port, b.port])
    data, probe = scan_files["data"].reshape(-1, 64, 64), scan_files["probe_array"]
    try:
        first = httpx.post(lb.url + "/v2/models/disks/infer", headers={**a.headers, **encode_request(
            {"patterns": data[:1], "probe": probe})[1]}, content=encode_request({"patterns": data[:1],
                                                                                 "probe": probe})[0])
        fixed = {k: decode_response(first.content, first.headers)[1]["detection"][k]
                 for k in ("radius_px", "min_spacing_px", "min_relative_intensity", "max_peaks")}
        bodies = [encode_request({"patterns": data[i:i + 1], "probe": probe}, fixed) for i in range(len(data))]
        ref = []
        for body, h in bodies:
            r = httpx.post(b.url + "/v2/models/disks/infer", content=body, headers={**h, **b.headers})
            ref.append(decode_response(r.content, r.headers)[0])

        stats = {"retried": 0, "in_flight_at_kill": 0, "done": 0}
        in_flight = [0]
        killed = threading.Event()

        async def run():
            sem = asyncio.Semaphore(CONCURRENCY)
            async with httpx.AsyncClient(headers=a.headers, timeout=30,
                                         limits=httpx.Limits(max_connections=CONCURRENCY)) as client:
                async def one(n):
                    i = n % len(bodies)
                    body, h = bodies[i]
                    async with sem:
                        for attempt in range(5):
                            in_flight[0] += 1
                            try:
                                r = await client.post(lb.url + "/v2/models/disks/infer", content=body, headers=h)
                                ok = r.status_code == 200
                            except httpx.TransportError:
                                ok = False
                            finally:
                                in_flight[0] -= 1
                            if ok:
                                break
                            stats["retried"] += 1
                        else:
                            raise AssertionError(f"request {n} failed 5 times")
                        out = decode_response(r.content, r.headers)[0]
                        assert np.array_equal(out["qx"], ref[i]["qx"], equal_nan=True)
                        stats["done"] += 1
                        if stats["done"] == REQUESTS // 4 and not killed.is_set():
                            stats["in_flight_at_kill"] = in_flight[0]
                            a.kill()  # SIGKILL during the load run
                            killed.set()
                await asyncio.gather(*(one(n) for n in range(REQUESTS)))

        t0 = time.monotonic()
        asyncio.run(run())
        seconds = time.monotonic() - t0
    finally:
        lb.close()
    assert killed.is_set() and a.proc.poll() is not None
    assert stats["done"] == REQUESTS, "every request must complete"
    assert stats["retried"] <= stats["in_flight_at_kill"], stats  # only those in flight at the kill
    assert lb.connections[1] > 0 and seconds < 120
    print(f"{REQUESTS} requests in {seconds:.1f} s, {stats['retried']} retried after the kill "
          f"({stats['in_flight_at_kill']} in flight at the kill)")
