"""The executors: argument checks before any worker starts, no data inside Dask graphs, Ctrl-C."""

import numpy as np
import pytest

from distill4d import DataCube
from distill4d.engine import map_neighbourhoods, map_patterns, reduce_patterns, run_tasks
from distill4d.engine.executors import Executor


def _total(batch):
    return batch.reshape(batch.shape[0], -1).sum(axis=1)


def _sum(batch):
    return batch.sum(axis=0)


def _centre(block):
    return block[1:-1, 1:-1].reshape(-1, *block.shape[2:]).sum(axis=(1, 2))


@pytest.mark.parametrize("scheduler", ["inline", "threads", "processes"])
@pytest.mark.parametrize("n_workers", [-2, -1, 0])
def test_every_entry_point_checks_n_workers_first(scheduler, n_workers):
    cube = DataCube(np.ones((3, 3, 4, 4), np.float32))
    calls = (
        lambda: map_patterns(cube, _total, scheduler=scheduler, n_workers=n_workers),
        lambda: reduce_patterns(cube, _sum, scheduler=scheduler, n_workers=n_workers),
        lambda: cube.mean_pattern(scheduler=scheduler, n_workers=n_workers),
        lambda: map_neighbourhoods(cube, _centre, 1, scheduler=scheduler, n_workers=n_workers),
        lambda: list(run_tasks(abs, [1, 2], scheduler=scheduler, n_workers=n_workers)),
        lambda: Executor(scheduler, n_workers),
    )
    for call in calls:
        with pytest.raises(ValueError, match=f"n_workers must be >= 1, got {n_workers}"):
            call()
    with pytest.raises(TypeError, match="n_workers must be an integer"):
        Executor(scheduler, "2")


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as lc, distributed.Client(lc) as c:
        yield c


def test_no_dask_graph_carries_the_data(client, tmp_path):
    import warnings

    import distill4d

    # 16 MiB in memory (as an eager read of a file gives): one tile, far above Dask's 10 MB warning.
    data = np.random.default_rng(0).poisson(2.0, (16, 16, 128, 128)).astype(np.float32)
    distill4d.write(tmp_path / "scan.h5", DataCube(data))
    cube = distill4d.io.read(tmp_path / "scan.h5", lazy=False)
    assert cube.reader is None and isinstance(cube.data, np.ndarray)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        total = map_patterns(cube, _total, scheduler=client)
        mean = cube.mean_pattern(scheduler=client)
        halo = map_neighbourhoods(cube, _centre, 1, scheduler=client)
    assert not [w for w in caught if "large graph" in str(w.message)]
    np.testing.assert_array_equal(total, data.reshape(256, -1).sum(axis=1).reshape(16, 16))
    np.testing.assert_allclose(mean, data.mean(axis=(0, 1)), rtol=1e-6)
    np.testing.assert_array_equal(halo, map_neighbourhoods(cube, _centre, 1, scheduler="inline"))


def _slow_total(batch, seconds, calls):
    import time

    calls.append(batch.shape[0])
    time.sleep(seconds)
    return _total(batch)


def test_ctrl_c_acts_within_a_tile_and_keeps_the_finished_tiles(tmp_path):
    import functools
    import signal
    import threading
    import time

    cube = DataCube(np.random.default_rng(1).poisson(2.0, (40, 4, 8, 8)).astype(np.uint16))
    calls: list[int] = []
    fn = functools.partial(_slow_total, seconds=0.25, calls=calls)
    kw = dict(scheduler="threads", n_workers=2, checkpoint=tmp_path / "ck", job_key="slow", progress=False)
    sent = []

    def interrupt():
        sent.append(time.perf_counter())
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    timer = threading.Timer(0.6, interrupt)
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        map_patterns(cube, fn, **kw)
    latency = time.perf_counter() - sent[0]
    timer.join()
    assert latency < 0.5  # the two running tiles finish (0.25 s each); the queued ones are cancelled
    saved = len(list((tmp_path / "ck").glob("tile_*.npz")))
    assert saved == len(calls) and 2 <= saved < 20  # every tile that ran was kept, those in flight too
    resumed = map_patterns(cube, fn, **kw)
    np.testing.assert_array_equal(resumed, map_patterns(cube, _total, scheduler="inline"))


def _sleepy_total(batch, seconds):
    import time

    time.sleep(seconds)
    return _total(batch)


def test_ctrl_c_on_a_dask_client_keeps_the_tiles_in_flight(tmp_path):
    import functools
    import signal
    import threading
    import time

    distributed = pytest.importorskip("distributed")
    cube = DataCube(np.random.default_rng(2).poisson(2.0, (40, 4, 8, 8)).astype(np.uint16))
    fn = functools.partial(_sleepy_total, seconds=0.25)
    sent = []

    def interrupt():
        sent.append((time.perf_counter(), len(list((tmp_path / "ck").glob("tile_*.npz")))))
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as lc, distributed.Client(lc) as c:
        kw = dict(scheduler=c, checkpoint=tmp_path / "ck", job_key="slow", progress=False)
        timer = threading.Timer(0.8, interrupt)
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            map_patterns(cube, fn, **kw)
        latency = time.perf_counter() - sent[0][0]
        timer.join()
        saved = len(list((tmp_path / "ck").glob("tile_*.npz")))
        # nothing more is submitted; the tiles in flight (2 running, up to 2 queued) finish and are kept
        assert latency < 1.5
        assert sent[0][1] + 2 <= saved <= sent[0][1] + 4 and saved < 20
        resumed = map_patterns(cube, fn, **kw)
    np.testing.assert_array_equal(resumed, map_patterns(cube, _total, scheduler="inline"))


_INTERRUPTED_SCRIPT = '''
import signal, sys, time
import numpy as np

def slow(batch):
    time.sleep(0.3)
    return batch.reshape(len(batch), -1).sum(axis=1)

if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)  # a background shell ignores SIGINT
    from distill4d import DataCube
    from distill4d.engine import map_patterns
    cube = DataCube(np.ones((40, 4, 8, 8), np.float32))
    try:
        map_patterns(cube, slow, scheduler="processes", n_workers=2, checkpoint=sys.argv[1], job_key="k",
                     progress=False)
    except KeyboardInterrupt:
        sys.exit(3)
'''


@pytest.mark.slow
def test_ctrl_c_at_a_terminal_stops_a_processes_job_cleanly(tmp_path):
    """A terminal's Ctrl-C reaches the whole process group: the workers ignore it, the tiles in
    flight finish and are kept, and the job ends with KeyboardInterrupt (no worker tracebacks)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    pytest.importorskip("distributed")
    script = tmp_path / "job.py"
    script.write_text(_INTERRUPTED_SCRIPT)
    ck = tmp_path / "ck"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, str(script), str(ck)], start_new_session=True, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(list(ck.glob("tile_*.npz"))) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    at_kill = len(list(ck.glob("tile_*.npz")))
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    saved = len(list(ck.glob("tile_*.npz")))
    assert proc.returncode == 3, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    assert at_kill >= 2 and at_kill < saved < 20  # the tiles in flight were kept


def _timed_total(batch, started, delay):
    started.append(batch.shape[0])
    import time

    time.sleep(delay)
    return _total(batch)


@pytest.mark.parametrize("scheduler", ["inline", "threads"])
def test_should_stop_ends_a_run_early_and_keeps_the_finished_tiles(scheduler, tmp_path):
    """A run whose should_stop() turns True starts no more tiles; those running finish and are checkpointed;
    Cancelled is raised within one tile's time (+ the 50 ms poll); a rerun resumes to the full result."""
    import functools
    import threading
    import time

    from distill4d.engine import Cancelled, plan_tiles, stop_when

    cube = DataCube(np.random.default_rng(1).poisson(3.0, (20, 4, 16, 16)).astype(np.float32))
    n_tiles = len(plan_tiles(cube, 1 << 20, 2))
    assert n_tiles == 20
    started: list[int] = []
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    t0 = time.perf_counter()
    with pytest.raises(Cancelled):
        map_patterns(cube, functools.partial(_timed_total, started=started, delay=0.1), scheduler=scheduler,
                     n_workers=2, memory_budget=1 << 20, checkpoint=tmp_path / "c", should_stop=stop.is_set)
    waited = time.perf_counter() - t0 - 0.5
    assert waited < 0.1 + 0.05 + 0.2, waited  # one tile + the poll + slack for a loaded machine
    saved = len(list((tmp_path / "c").glob("tile_*.npz")))
    assert saved == len(started) and 2 <= saved < n_tiles  # every started tile finished and was kept
    # the same stop through the context (as a server job running a method) stops at once
    with stop_when(stop.is_set), pytest.raises(Cancelled):
        map_patterns(cube, _total, scheduler=scheduler, memory_budget=1 << 20)
    rest: list[int] = []
    full = map_patterns(cube, functools.partial(_timed_total, started=rest, delay=0), scheduler=scheduler,
                        n_workers=2, memory_budget=1 << 20, checkpoint=tmp_path / "c")
    assert len(rest) == n_tiles - saved
    np.testing.assert_array_equal(full, _total(cube.data.reshape(-1, 16, 16)).reshape(20, 4))
