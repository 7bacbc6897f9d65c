"""Dynamic batching: concurrent requests for one model are run as one batch.

Requests whose prepared items share a key (same pattern shape and dtype, probe and detection
parameters) wait in one asyncio queue. A collector takes the first item, waits until a batch
worker is free, then gathers more items until ``max_batch_size`` patterns or ``max_wait_ms``
after the first, and runs the batch in a worker thread; results are handed back per request.
It stops waiting early when no other request is queued or being read and the batch holds as many
requests as the larger of the last two batches (with those queued behind them): closed-loop
clients, whose next requests trickle in after their answers, keep forming full batches instead
of alternating small and large ones.
A request with no other request of the model outstanding (queued or running) does not wait:
a lone client (concurrency 1) pays no batching delay; when no other request is being handled
(``open_requests``, kept by the server), the last two batches held one request each, and it is
also small (the model's
:meth:`~distill4d.serve.models.ServedModel.runs_inline`: a few patterns), it runs at once in the
event loop's thread, without the two thread hand-offs (each one costs milliseconds on a busy
machine; the loop is blocked for that one call, as long as a batch would occupy the worker).
A batch runs through :meth:`~distill4d.serve.models.ServedModel.run`: in a worker process of the
model when the server gave it one (:mod:`distill4d.serve.worker`), the worker thread then only
waiting on that process; a lone request run inline stays in the server's process.
``max_batch_size=1`` turns batching off (every request runs alone, in arrival order).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .metrics import Metrics
from .models import Prepared, ServedModel

__all__ = ["Batcher"]

_LOG = logging.getLogger("distill4d.serve")


class Batcher:
    """Batches the requests of one model (see the module docstring)."""

    def __init__(self, model: ServedModel, *, max_batch_size: int = 64, max_wait_ms: float = 5.0,
                 workers: int = 1, metrics: Metrics | None = None) -> None:
        self.model = model
        self.max_batch_size = max(1, int(max_batch_size)) if model.batchable else 1
        self.max_wait = max(0.0, float(max_wait_ms)) / 1000.0
        self.metrics = metrics or Metrics()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"batch-{model.name}")
        self._free = asyncio.Semaphore(workers)
        self._queues: dict[Any, asyncio.Queue] = {}
        self._collectors: dict[Any, asyncio.Task] = {}
        self._running: set[asyncio.Task] = set()
        self._outstanding = 0
        #: requests the last batches held (with those queued behind them): the concurrency the collector expects
        self._recent: list[int] = [1]
        #: requests of this model the server is handling (reading, checking or waiting): kept by the
        #: caller, counted from before the request's first ``await``; a request runs inline only when alone
        self.open_requests = 0

    async def submit(self, item: Prepared) -> tuple[dict, dict]:
        """Queue a prepared request; its outputs and response parameters once its batch ran."""
        if self._alone() and self.model.runs_inline(item):
            await asyncio.sleep(0)  # requests that arrived meanwhile start (and count in open_requests)
            if self._alone():
                return await self._inline(item)
        fut = asyncio.get_running_loop().create_future()
        key = item.key if self.max_batch_size > 1 else None
        q = self._queues.get(key)
        if q is None:
            q = self._queues[key] = asyncio.Queue()
            self._collectors[key] = asyncio.create_task(self._collect(q))
        self.metrics.queue_depth(self.model.name, +1)
        self._outstanding += 1
        await q.put((item, fut))
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:  # the request timed out or its client left: skip it if not started
            fut.cancel()
            raise
        finally:
            self._outstanding -= 1
            self.metrics.queue_depth(self.model.name, -1)

    def _alone(self) -> bool:
        return (self.open_requests <= 1 and self._outstanding == 0 and not self._free.locked()
                and max(self._recent) <= 1)

    async def _inline(self, item: Prepared) -> tuple[dict, dict]:
        """A lone small request, run here (see the module docstring)."""
        self.metrics.queue_depth(self.model.name, +1)
        self._outstanding += 1
        try:
            async with self._free:  # free now: taken without waiting, so batches formed meanwhile queue
                self.metrics.batch_size(self.model.name, item.n)
                return self._timed([item], local=True)[0]
        finally:
            self._outstanding -= 1
            self.metrics.queue_depth(self.model.name, -1)

    async def _collect(self, q: asyncio.Queue) -> None:
        loop = asyncio.get_running_loop()
        carry = None
        while True:
            first, carry = (carry if carry is not None else await q.get()), None
            await self._free.acquire()  # meanwhile, requests gather in the queue
            batch = [first]
            size = first[0].n
            deadline = loop.time() + self.max_wait
            expected = max(self._recent)
            while size < self.max_batch_size:
                if q.empty():
                    left = deadline - loop.time()
                    # expired; or nobody else to wait for (neither queued nor still being read or checked)
                    # and as many requests as the recent batches held
                    if left <= 0 or (max(self._outstanding, self.open_requests) <= len(batch)
                                     and len(batch) >= expected):
                        break
                    try:
                        nxt = await asyncio.wait_for(q.get(), left)
                    except asyncio.TimeoutError:
                        break
                else:
                    nxt = q.get_nowait()
                if size + nxt[0].n > self.max_batch_size:
                    carry = nxt  # too big for this batch: it starts the next one (a request is never split)
                    break
                batch.append(nxt)
                size += nxt[0].n
            self._recent = (self._recent + [len(batch) + q.qsize() + (carry is not None)])[-2:]
            task = asyncio.create_task(self._run(batch, size))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: list, size: int) -> None:
        try:
            live = [(it, f) for it, f in batch if not f.cancelled()]
            if not live:
                return
            self.metrics.batch_size(self.model.name, size)
            t0 = time.perf_counter()
            try:
                results = await asyncio.get_running_loop().run_in_executor(
                    self._pool, self._timed, [it for it, _ in live])
            except BaseException as err:  # noqa: BLE001 - handed to every waiting request
                for _, f in live:
                    if not f.done():
                        f.set_exception(err)
                return
            _LOG.debug("batch", extra={"model": self.model.name, "requests": len(live), "patterns": size,
                                       "ms": round(1000 * (time.perf_counter() - t0), 2)})
            for (_, f), r in zip(live, results):
                if not f.done():
                    f.set_result(r)
        finally:
            self._free.release()

    def _timed(self, items: list[Prepared], local: bool = False) -> list:
        """``model.run(items, local)``, with its start, end and CPU time (s) in each item's ``timing``
        (the CPU time of a worker process when the batch ran in one)."""
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            return self.model.run(items, local=local)
        finally:
            t1, c1 = time.perf_counter(), time.thread_time()
            for it in items:
                it.timing.update(start=t0, end=t1)
                it.timing.setdefault("cpu", c1 - c0)

    async def close(self) -> None:
        """Stop the collectors and the worker threads."""
        for t in self._collectors.values():
            t.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)
