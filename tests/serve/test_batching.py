"""The dynamic batcher gathers concurrent requests of one key into one batch, up to its limits."""

import asyncio

import numpy as np

from distill4d.serve.batching import Batcher
from distill4d.serve.models import Prepared, ServedModel


class Recorder(ServedModel):
    name = "rec"

    def __init__(self):
        super().__init__("cpu")
        self.batches = []

    def run_batch(self, items):
        self.batches.append([it.n for it in items])
        return [({"x": np.full(it.n, it.payload["v"])}, {}) for it in items]


def _run(model, requests, **kw):
    async def main():
        b = Batcher(model, **kw)
        try:
            return await asyncio.gather(*(b.submit(Prepared(key, n, {"v": i})) for i, (key, n) in enumerate(requests)))
        finally:
            await b.close()
    return asyncio.run(main())


def test_concurrent_requests_share_a_batch_and_get_their_own_results():
    m = Recorder()
    res = _run(m, [("a", 1)] * 10, max_batch_size=64, max_wait_ms=20)
    assert [int(r[0]["x"][0]) for r in res] == list(range(10))
    assert sum(len(b) for b in m.batches) == 10 and max(len(b) for b in m.batches) > 1


def test_batching_off_runs_each_request_alone():
    m = Recorder()
    _run(m, [("a", 1)] * 6, max_batch_size=1, max_wait_ms=20)
    assert m.batches == [[1]] * 6


def test_batches_respect_the_size_limit_and_keys():
    m = Recorder()
    _run(m, [("a", 3)] * 5 + [("b", 1)] * 3, max_batch_size=7, max_wait_ms=20)
    assert all(sum(b) <= 7 for b in m.batches)
    assert sorted(n for b in m.batches for n in b) == [1, 1, 1, 3, 3, 3, 3, 3]
    # a request larger than the limit is run whole, never split
    m = Recorder()
    _run(m, [("a", 10)], max_batch_size=4, max_wait_ms=1)
    assert m.batches == [[10]]


def test_a_lone_request_does_not_wait():
    import time

    m = Recorder()
    t0 = time.perf_counter()
    _run(m, [("a", 1)], max_batch_size=64, max_wait_ms=500)
    assert time.perf_counter() - t0 < 0.4 and m.batches == [[1]]


class ThreadRecorder(Recorder):
    """Records the thread each batch ran in."""

    def run_batch(self, items):
        import threading

        self.threads = getattr(self, "threads", []) + [threading.get_ident()]
        return super().run_batch(items)


def test_a_lone_small_request_runs_in_the_event_loop_and_others_in_the_worker():
    import threading

    def item(i, side):
        return Prepared("a", 1, {"v": i, "patterns": np.zeros((1, side, side), np.float32)})

    async def main(items):
        b = Batcher(m, max_batch_size=64, max_wait_ms=5)
        b.open_requests = len(items)  # as the server counts them: all arrived together
        try:
            out = await asyncio.gather(*(b.submit(it) for it in items))
        finally:
            await b.close()
        return out, threading.get_ident()

    m = ThreadRecorder()
    out, loop_thread = asyncio.run(main([item(0, 256)]))
    assert m.threads == [loop_thread] and int(out[0][0]["x"][0]) == 0
    m = ThreadRecorder()  # too large to block the loop: a worker thread
    _, loop_thread = asyncio.run(main([item(0, 512)]))
    assert m.threads != [loop_thread]
    m = ThreadRecorder()  # concurrent requests: none in the loop, batched in the worker
    out, loop_thread = asyncio.run(main([item(i, 64) for i in range(6)]))
    assert [int(r[0]["x"][0]) for r in out] == list(range(6))
    assert sum(len(b) for b in m.batches) == 6 and max(len(b) for b in m.batches) > 1
    assert loop_thread not in m.threads


class Sleeper(Recorder):
    """A batch costs 10 ms plus 4 ms per request (in the worker thread)."""

    def run_batch(self, items):
        import time

        time.sleep(0.010 + 0.004 * len(items))
        return super().run_batch(items)


def _closed_loop(model, batcher_kw, clients, seconds, seed=0):
    """``clients`` closed-loop clients: each sends its next request 0-4 ms after its answer."""
    import random
    import time

    async def main():
        b = Batcher(model, **batcher_kw)
        rng, stop = random.Random(seed), time.perf_counter() + seconds

        async def client(i):
            while time.perf_counter() < stop:
                await asyncio.sleep(rng.uniform(0, 0.004))
                b.open_requests += 1  # as the server counts a request from its first byte
                try:
                    await b.submit(Prepared("a", 1, {"v": i}))
                finally:
                    b.open_requests -= 1

        try:
            await asyncio.gather(*(client(i) for i in range(clients)))
        finally:
            await b.close()
    asyncio.run(main())


def test_closed_loop_clients_keep_forming_full_batches():
    # 8 clients whose next requests trickle in after their answers: the batcher waits for the 8 the
    # last batches held instead of running whoever came first (which alternated ~1-4 and ~4-7)
    m = Sleeper()
    _closed_loop(m, dict(max_batch_size=64, max_wait_ms=50), clients=8, seconds=1.5)
    sizes = np.array([len(b) for b in m.batches])
    assert sizes.max() <= 8 and sizes.mean() >= 6.5, np.bincount(sizes)


def test_a_lone_client_after_a_busy_spell_stops_waiting():
    m = Sleeper()
    _closed_loop(m, dict(max_batch_size=64, max_wait_ms=50), clients=8, seconds=0.5)
    n_busy = len(m.batches)
    import time

    async def lone():
        b = Batcher(m, max_batch_size=64, max_wait_ms=50)
        b._recent = [8, 8]  # the busy spell's batches
        t = []
        for i in range(6):
            t0 = time.perf_counter()
            b.open_requests = 1
            await b.submit(Prepared("a", 1, {"v": i}))
            t.append(time.perf_counter() - t0)
        await b.close()
        return t
    t = asyncio.run(lone())
    # two waits of up to max_wait while the expectation decays, then none: 14 ms per call
    assert all(len(b) == 1 for b in m.batches[n_busy:]) and max(t[3:]) < 0.040, t
