"""A model's batches in a worker process: the same peaks as in the server's process, no pickle, and a
dead worker is replaced."""

import io
import os
import signal
import time

import numpy as np
import pytest

from distill4d.serve.models import _example_patterns, _example_probe, build_model
from distill4d.serve.protocol import InferRequest
from distill4d.serve.worker import WorkerPool, read_message, write_message


def test_messages_round_trip_and_a_cut_message_is_an_error():
    arrays = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "empty": np.zeros((0, 5)),
              "c": (np.arange(6) + 1j).astype(np.complex128)}
    buf = io.BytesIO()
    write_message(buf, {"x": [1, 2]}, arrays)
    first = len(buf.getvalue())
    write_message(buf, {"second": True})
    raw = buf.getvalue()
    stream = io.BufferedReader(io.BytesIO(raw))
    head, got = read_message(stream)
    assert head == {"x": [1, 2]}
    for k, v in arrays.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape
        np.testing.assert_array_equal(got[k], v)
    assert read_message(stream) == ({"second": True}, {})
    assert read_message(stream) is None  # a clean end
    with pytest.raises(EOFError):
        read_message(io.BufferedReader(io.BytesIO(raw[:first - 10])))  # inside the first one's arrays
    obj = io.BytesIO()
    text = b'{"arrays": [["o", "|O", [1]]]}'
    obj.write(len(text).to_bytes(8, "little") + text + b"\0" * 8)
    obj.seek(0)
    with pytest.raises(ValueError, match="object dtype"):
        read_message(obj)


@pytest.fixture(scope="module")
def disks():
    m = build_model("disks")
    m.load()
    rng = np.random.default_rng(0)
    patterns = rng.poisson(_example_patterns(5, 128) * 20).astype(np.float32)
    items = [m.prepare(InferRequest({"patterns": patterns[i:j], "probe": _example_probe(128)}, {}))
             for i, j in ((0, 2), (2, 3), (3, 5))]
    m.pool = WorkerPool("disks", "cpu")
    yield m, items
    m.pool.close()


def test_a_batch_in_the_worker_gives_the_peaks_of_the_server_process(disks):
    m, items = disks
    here = m.run(items, local=True)
    for _ in range(2):  # the second batch reuses the kernel the worker kept
        there = m.run(items)
        assert len(there) == len(here) == 3
        for (oh, ph), (ot, pt) in zip(here, there):
            assert ph == pt
            assert set(oh) == set(ot) == {"qx", "qy", "intensity", "count"}
            for k in oh:  # to rounding: this process may run BLAS in more threads than the worker's one
                np.testing.assert_allclose(oh[k], ot[k], rtol=1e-6, atol=1e-4 if k != "count" else 0)
        assert all(it.timing["cpu"] > 0 for it in items)  # the worker's CPU time
    assert sum(oh["count"].sum() for oh, _ in here) >= 5 * 20  # every pattern has its 25 disks found


def test_a_dead_worker_is_replaced_before_the_next_batch(disks):
    m, items = disks
    (pid,) = m.pool.pids
    os.kill(pid, signal.SIGKILL)
    t0 = time.monotonic()
    while m.pool._children[0].alive() and time.monotonic() - t0 < 10:
        time.sleep(0.05)
    out = m.run(items[:1])
    assert m.pool.pids != [pid]
    np.testing.assert_allclose(out[0][0]["qx"], m.run(items[:1], local=True)[0][0]["qx"], atol=1e-4)


def test_batches_queued_in_the_pipe_come_back_to_their_callers(disks):
    """Two batches outstanding on one worker (the server allows two per worker process): each caller gets
    its own batch's peaks, in the order the worker ran them."""
    from concurrent.futures import ThreadPoolExecutor

    m, items = disks
    jobs = [items[:1], items[1:], items[:2], items[2:]] * 3
    with ThreadPoolExecutor(4) as ex:
        got = list(ex.map(m.run, jobs))
    for job, out in zip(jobs, got):
        want = m.run(job, local=True)
        assert len(out) == len(job)
        for (ow, _), (og, _) in zip(want, out):
            np.testing.assert_allclose(ow["qx"], og["qx"], atol=1e-4)  # px, to rounding (BLAS threads)
            np.testing.assert_array_equal(ow["count"], og["count"])
