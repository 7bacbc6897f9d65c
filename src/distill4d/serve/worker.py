"""A model's batches in a child process of their own (``python -m distill4d.serve.worker MODEL``).

In one process, a batch worker thread and the event loop take turns on the GIL: the ``disks``
model holds it for about a quarter of its time, and the HTTP work beside it slows every batch
(see the serve section of benchmarks/RESULTS.md). A :class:`WorkerPool` runs each batch in a
child process instead, which has its own interpreter and its own core.

The parent and the child speak over the child's standard input and output, one message each
way per batch, with no pickle: an 8-byte little-endian length, a JSON header whose ``arrays``
entry lists ``[name, dtype, shape]``, then each array's raw bytes in that order. The child
builds and loads its model with :func:`distill4d.serve.models.build_model`, runs NumPy's BLAS
in one thread and keeps freed memory as the server does, and answers each message with :meth:`ServedModel.run_packed`; an error comes back
as ``{"error": ..., "kind": "user" | "internal"}``. It exits when its input closes (the parent
ended, however it ended).
"""

from __future__ import annotations

import collections
import gc
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from typing import IO, Any, Callable

import numpy as np

from ..errors import Distill4dError

__all__ = ["WorkerPool", "read_message", "write_message"]

_LEN = 8
#: largest JSON header accepted (bytes)
_MAX_HEADER = 1 << 20


def write_message(out: IO[bytes], header: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> None:
    """Write one message (header and arrays) to a binary stream and flush it."""
    arrays = {k: np.ascontiguousarray(v) for k, v in (arrays or {}).items()}
    head = dict(header)
    head["arrays"] = [[k, v.dtype.str, list(v.shape)] for k, v in arrays.items()]
    text = json.dumps(head).encode()
    _write_all(out, len(text).to_bytes(_LEN, "little") + text)
    for v in arrays.values():
        if v.nbytes:
            _write_all(out, memoryview(v).cast("B"))
    out.flush()


def _write_all(out: IO[bytes], data: bytes | memoryview) -> None:
    """Write all of ``data`` (a raw, unbuffered stream may take part of it per call)."""
    mv = memoryview(data)
    while len(mv):
        n = out.write(mv)
        if n is None or n >= len(mv):
            return
        mv = mv[n:]


def _read_into(stream: IO[bytes], buf: memoryview) -> None:
    got = 0
    while got < len(buf):
        n = stream.readinto(buf[got:])
        if not n:
            raise EOFError("the stream ended inside a message")
        got += n


def read_message(stream: IO[bytes]) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    """Read one message; None at a clean end of the stream (EOFError when it ends inside one)."""
    size = bytearray(_LEN)
    n = stream.readinto(size)
    if not n:
        return None
    if n < _LEN:
        _read_into(stream, memoryview(size)[n:])
    length = int.from_bytes(size, "little")
    if length > _MAX_HEADER:
        raise ValueError(f"message header of {length} bytes (at most {_MAX_HEADER})")
    text = bytearray(length)
    _read_into(stream, memoryview(text))
    header = json.loads(text)
    arrays = {}
    for name, dtype, shape in header.pop("arrays"):
        dt = np.dtype(dtype)
        if dt.hasobject:
            raise ValueError(f"array {name!r} has an object dtype")
        a = np.empty(shape, dtype=dt)
        if a.nbytes:
            _read_into(stream, memoryview(a).cast("B"))
        arrays[name] = a
    return header, arrays


def _widen(pipe: IO[bytes], size: int = 1 << 20) -> None:
    """Ask Linux for a pipe buffer of ``size`` bytes (F_SETPIPE_SZ); elsewhere nothing."""
    try:
        import fcntl

        fcntl.fcntl(pipe.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), size)
    except (ImportError, OSError):
        pass


class _Child:
    """One child process serving one model. Batches are written to it in order and may queue in its pipe
    (so that it starts the next one as soon as it finishes one); a reader thread hands the replies, which
    come back in the same order, to their callers."""

    def __init__(self, model: str, device: str) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        # the patterns go unbuffered into a pipe of 1 MiB where Linux allows it (the default 64 KiB pipe
        # and a buffered writer moved 256 x 256 float32 patterns at about 0.45 GB/s; this, 3x faster)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "distill4d.serve.worker", model, device],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, bufsize=0)
        _widen(self.proc.stdin)
        self._lock = threading.Lock()
        self._pending: collections.deque[Future] = collections.deque()
        self.dead: str | None = None
        #: state the child keeps between messages (see :meth:`ServedModel.pack`), kept in writing order
        self.memo: dict[str, Any] = {}
        ready = read_message(self.proc.stdout)
        if ready is None or "error" in ready[0]:
            self.proc.kill()
            why = ready[0]["error"] if ready else f"exit status {self.proc.wait()}"
            raise Distill4dError(f"the {model} worker process did not start: {why}")
        threading.Thread(target=self._read_replies, name=f"worker-{model}-replies", daemon=True).start()

    @property
    def pending(self) -> int:
        """Batches written and not answered yet."""
        return len(self._pending)

    def submit(self, pack: Callable[[dict[str, Any]], tuple[dict[str, Any], dict[str, np.ndarray]]]) -> Future:
        """Write the batch ``pack(memo)`` builds (header, arrays); a future of the reply."""
        fut: Future = Future()
        with self._lock:
            if self.dead:
                raise RuntimeError(f"the model's worker process ended ({self.dead})")
            header, arrays = pack(self.memo)
            self._pending.append(fut)
            try:
                write_message(self.proc.stdin, header, arrays)
            except (OSError, ValueError) as err:
                self._fail(f"writing to it failed: {err}")
        return fut

    def _read_replies(self) -> None:
        while True:
            try:
                reply = read_message(self.proc.stdout)
            except (OSError, EOFError, ValueError) as err:
                reply, why = None, f"reading from it failed: {err}"
            else:
                why = "it closed its output"
            if reply is None:
                with self._lock:
                    self._fail(why)
                return
            self._pending.popleft().set_result(reply)

    def _fail(self, why: str) -> None:
        """(Holding the lock.) Mark the child dead, end it and fail every batch it held."""
        if self.dead:
            return
        self.proc.kill()
        self.dead = f"{why}; exit status {self.proc.wait()}"
        while self._pending:
            self._pending.popleft().set_exception(RuntimeError(f"the model's worker process ended ({self.dead})"))

    def alive(self) -> bool:
        return self.dead is None and self.proc.poll() is None

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class WorkerPool:
    """``workers`` child processes of one model; :meth:`run` gives a batch to the one with the fewest
    batches outstanding (the server lets two per child be outstanding, so that a child never waits for
    the next batch to be formed and written). A child that died is replaced before the next batch (the
    batches it held fail)."""

    def __init__(self, model: str, device: str = "auto", workers: int = 1) -> None:
        self.model, self.device = model, device
        self._lock = threading.Lock()
        self._children: list[_Child] = [_Child(model, device) for _ in range(max(1, int(workers)))]

    def run(self, pack: Callable[[dict[str, Any]], tuple[dict[str, Any], dict[str, np.ndarray]]]
            ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Send one batch to a child and wait for its reply: ``pack(memo)`` builds its header and arrays from
        that child's memo. Distill4dError for a user error, RuntimeError otherwise."""
        with self._lock:
            for i, c in enumerate(self._children):
                if not c.alive():
                    c.close()
                    self._children[i] = _Child(self.model, self.device)
            child = min(self._children, key=lambda c: c.pending)
        head, out = child.submit(pack).result()
        if "error" in head:
            if head.get("kind") == "user":
                raise Distill4dError(head["error"])
            raise RuntimeError(f"the model's worker process failed: {head['error']}")
        return head, out

    @property
    def pids(self) -> list[int]:
        """The children's process ids."""
        return [c.proc.pid for c in self._children]

    def close(self) -> None:
        """End every child (each exits when its input closes)."""
        for c in self._children:
            c.close()
        self._children.clear()


def main(argv: list[str] | None = None) -> int:
    """The child: serve one model over standard input and output until the input closes."""
    args = sys.argv[1:] if argv is None else argv
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing else may write into the message stream
    try:
        from .config import keep_freed_memory, one_blas_thread
        from .models import build_model

        name, device = args[0], (args[1] if len(args) > 1 else "auto")
        keep_freed_memory()  # as the server does: without it a batch cost 1.45x the CPU (page faults)
        one_blas_thread()
        model = build_model(name, device)
        model.load()
        model.warmup()
        gc.collect()
        gc.freeze()
    except Exception as err:  # noqa: BLE001 - reported to the parent, which refuses to start
        write_message(stdout, {"error": f"{type(err).__name__}: {err}", "kind": "internal"})
        return 1
    write_message(stdout, {"ready": True, "model": name})
    state: dict[str, Any] = {}
    while True:
        try:
            msg = read_message(stdin)
        except (EOFError, ValueError):
            return 1
        if msg is None:
            return 0
        c0 = time.thread_time()
        try:
            head, out = model.run_packed(msg[0], msg[1], state)
        except Distill4dError as err:
            head, out = {"error": str(err), "kind": "user"}, {}
        except Exception as err:  # noqa: BLE001 - the batch fails, the worker lives on
            head, out = {"error": f"{type(err).__name__}: {err}", "kind": "internal"}, {}
        head["cpu_s"] = time.thread_time() - c0
        write_message(stdout, head, out)


if __name__ == "__main__":
    sys.exit(main())
