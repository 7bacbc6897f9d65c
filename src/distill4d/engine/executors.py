"""Executors of the engine: where the tasks run (inline, threads, local processes, Dask).

:class:`Executor` runs ``task(block, fn)`` over tiles and yields each result as it finishes,
with a bounded number of tasks in flight; on a failure the tasks in flight finish first.
``"processes"`` starts a local Dask cluster, ``"dask"`` uses the current ``distributed``
client, an address ``tcp://host:port`` connects to a scheduler, and a ``distributed.Client``
may be given directly. Dask is imported only when one of those is used.

A run stops early, as on Ctrl-C, when its ``should_stop()`` (a callable; default: the one of
an enclosing :func:`stop_when`) returns True: nothing more is submitted, the tiles in flight
finish and are yielded (so they are checkpointed), then :class:`Cancelled` is raised.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any

import numpy as np

from .._validate import positive_int
from ..errors import Distill4dError
from .tiles import Tile

__all__ = ["BatchFn", "Cancelled", "Executor", "stop_when"]

#: A method of the engine: a batch of patterns ``(n, Qx, Qy)`` -> an array or a dict of arrays of first axis ``n``.
BatchFn = Callable[[np.ndarray], Any]

#: How often (seconds) a run on threads asks ``should_stop()`` while tiles are running.
STOP_POLL_S = 0.05

_SHOULD_STOP: contextvars.ContextVar[Callable[[], bool] | None] = contextvars.ContextVar("should_stop", default=None)


class Cancelled(Exception):
    """A run of the engine stopped because its ``should_stop()`` returned True (the finished tiles
    were yielded, and so checkpointed, first)."""


@contextlib.contextmanager
def stop_when(should_stop: Callable[[], bool]) -> Iterator[None]:
    """Every engine run started in this context (this thread) stops early once ``should_stop()`` is True.

    For callers that run the engine through a method or a command (e.g. a server's job,
    cancelled from another thread with a :class:`threading.Event`'s ``is_set``); the run
    then raises :class:`Cancelled`.
    """
    if not callable(should_stop):
        raise TypeError(f"should_stop must be callable, got {should_stop!r}")
    token = _SHOULD_STOP.set(should_stop)
    try:
        yield
    finally:
        _SHOULD_STOP.reset(token)


def _carries_array(block: Any) -> bool:
    """True if a task's block holds NumPy data (an array, or one inside a tuple or dataclass)."""
    if isinstance(block, np.ndarray):
        return True
    if isinstance(block, (tuple, list)):
        return any(_carries_array(b) for b in block)
    if dataclasses.is_dataclass(block) and not isinstance(block, type):
        return any(_carries_array(getattr(block, f.name)) for f in dataclasses.fields(block))
    return False


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored while child processes start (in the main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class Executor:
    """Runs ``task(block, fn)`` over the tiles of ``data`` and yields ``(tile, result)`` as they finish."""

    def __init__(self, scheduler: str | Any, n_workers: int | None,
                 should_stop: Callable[[], bool] | None = None) -> None:
        self.scheduler = scheduler
        if should_stop is not None and not callable(should_stop):
            raise TypeError(f"should_stop must be callable or None, got {should_stop!r}")
        self.should_stop = should_stop if should_stop is not None else _SHOULD_STOP.get()
        # Checked before any worker starts (a LocalCluster of -2 workers waits forever).
        self.n_workers = None if n_workers is None else positive_int("n_workers", n_workers)
        self._client = None
        self._cluster = None
        self._owns_client = False

    @property
    def n_parallel(self) -> int:
        if self.scheduler == "inline":
            return 1
        return self.n_workers or os.cpu_count() or 1

    def __enter__(self) -> "Executor":
        s = self.scheduler
        if s in ("inline", "threads"):
            return self
        from distributed import Client, LocalCluster  # lazy: heavy import

        if s == "processes":
            # The workers ignore Ctrl-C (they inherit SIG_IGN): a terminal's SIGINT reaches the
            # whole process group, and only this process should act on it (the tiles in flight
            # finish and are checkpointed); the workers stop when the cluster is closed.
            with _sigint_ignored():
                self._cluster = LocalCluster(
                    n_workers=self.n_parallel, threads_per_worker=1, processes=True, dashboard_address=":0"
                )
            self._client = Client(self._cluster, set_as_default=False)
            self._owns_client = True
        elif s == "dask":
            from distributed import get_client

            try:
                self._client = get_client()
            except ValueError:
                raise Distill4dError(
                    "scheduler='dask' needs a running distributed.Client; create one first or pass "
                    "the scheduler address (scheduler='tcp://host:8786')"
                ) from None
        elif isinstance(s, str) and "://" in s:
            try:
                self._client = Client(s, timeout="20s", set_as_default=False)
                self._owns_client = True
            except OSError as err:
                raise ConnectionError(f"could not connect to the Dask scheduler at {s}: {err}") from None
        elif hasattr(s, "submit") and hasattr(s, "gather"):
            self._client = s  # a distributed.Client given directly
        else:
            raise Distill4dError(
                "scheduler must be 'inline', 'threads', 'processes', 'dask', a Dask scheduler "
                f"address like 'tcp://host:8786', or a distributed.Client; got {s!r}"
            )
        if self.n_workers is None and self._client is not None:
            self.n_workers = max(1, sum(self._client.nthreads().values()))
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._owns_client:
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()

    def run(self, task: Callable, data: Callable[[Tile], Any], tiles: list[Tile], fn: BatchFn) -> Iterator[tuple[Tile, Any]]:
        if not tiles:
            return
        if self.scheduler == "inline":
            for tile in tiles:
                if self._stopping():
                    raise Cancelled("stopped: should_stop() returned True")
                yield tile, task(data(tile), fn)
            return
        in_flight = 2 * self.n_parallel
        if self._client is None:
            yield from self._run_threads(task, data, tiles, fn, in_flight)
        else:
            yield from self._run_distributed(task, data, tiles, fn, in_flight)

    def _stopping(self) -> bool:
        return self.should_stop is not None and bool(self.should_stop())

    def _run_threads(self, task: Callable, data: Callable[[Tile], Any], tiles: list[Tile], fn: BatchFn,
                     in_flight: int) -> Iterator[tuple[Tile, Any]]:
        """Local threads. After a failure nothing more is submitted and the tiles in flight finish
        (and are yielded, so they are checkpointed). On Ctrl-C the queued tiles are cancelled and
        only those already running finish (a thread cannot be stopped); a second Ctrl-C leaves at once.
        ``should_stop()`` returning True (asked every :data:`STOP_POLL_S` s) acts like the first Ctrl-C."""
        todo = iter(tiles)
        pool = ThreadPoolExecutor(max_workers=self.n_parallel)
        pending: dict[Any, Tile] = {}
        failure: BaseException | None = None

        def fill() -> None:
            while failure is None and len(pending) < in_flight:
                tile = next(todo, None)
                if tile is None:
                    return
                pending[pool.submit(task, data(tile), fn)] = tile

        def stop(reason: BaseException) -> None:
            """Submit nothing more and drop the queued tiles; those running finish."""
            nonlocal failure
            failure = reason
            for fut in [f for f in pending if f.cancel()]:
                del pending[fut]

        poll = STOP_POLL_S if self.should_stop is not None else None
        try:
            if self._stopping():
                raise Cancelled("stopped: should_stop() returned True")
            fill()
            while pending:
                try:
                    done, _ = wait(pending, timeout=poll, return_when=FIRST_COMPLETED)
                except KeyboardInterrupt as interrupt:
                    if isinstance(failure, KeyboardInterrupt):
                        raise  # the second Ctrl-C
                    stop(interrupt)
                    continue
                if failure is None and self._stopping():
                    stop(Cancelled("stopped: should_stop() returned True"))
                # Finished results first, so that a failure elsewhere loses none of them.
                for fut in sorted(done, key=lambda f: f.cancelled() or f.exception() is not None):
                    tile = pending.pop(fut)
                    if fut.cancelled():
                        continue
                    if fut.exception() is not None:
                        failure = failure or fut.exception()
                        continue
                    yield tile, fut.result()
                fill()
            if failure is not None:
                raise failure  # after the tiles in flight were drained (and checkpointed)
        finally:
            for fut in pending:
                fut.cancel()
            # Wait for the threads only when none is still busy (a second Ctrl-C, or the caller stopped).
            pool.shutdown(wait=not pending, cancel_futures=True)

    def _run_distributed(self, task: Callable, data: Callable[[Tile], Any], tiles: list[Tile], fn: BatchFn, in_flight: int):
        from distributed import as_completed

        client = self._client

        def submit(tile: Tile):
            block = data(tile)
            if _carries_array(block):
                # In-memory data goes to a worker by itself (scatter), never inside the task graph
                # (Dask warned "Sending large graph"); blocks of a file reader carry only the
                # picklable reader, and the workers read the file themselves.
                if isinstance(block, np.ndarray):
                    block = np.ascontiguousarray(block)
                block = client.scatter(block, hash=False)
            return client.submit(task, block, fn, pure=False)

        todo = iter(tiles)
        futures = {}
        for tile in todo:
            futures[submit(tile)] = tile
            if len(futures) >= in_flight:
                break
        ac = as_completed(list(futures), loop=client.loop)
        failure: BaseException | None = None
        try:
            # As with threads: after a failure, a Ctrl-C or should_stop() nothing more is submitted and
            # the tiles in flight (at most 2 per worker) finish and are yielded, so they are
            # checkpointed (should_stop() is asked as each tile finishes); a second Ctrl-C leaves at once.
            while futures:
                try:
                    if failure is None and self._stopping():
                        failure = Cancelled("stopped: should_stop() returned True")
                    if failure is None and len(futures) < in_flight:
                        nxt = next(todo, None)
                        if nxt is not None:
                            f = submit(nxt)
                            futures[f] = nxt
                            ac.add(f)
                    fut = next(ac)
                    tile = futures.pop(fut)
                    if fut.status != "finished":
                        if failure is None:
                            failure = fut.exception() if fut.status == "error" else RuntimeError(f"tile {fut.status}")
                        continue
                    result = fut.result()
                    fut.release()
                except KeyboardInterrupt as interrupt:
                    if isinstance(failure, KeyboardInterrupt):
                        raise
                    failure = interrupt
                    continue
                yield tile, result
            if failure is not None:
                raise failure
        finally:
            for fut in futures:
                fut.cancel()
