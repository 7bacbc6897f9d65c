"""Fixtures of the server tests: real servers (``tests/_serve.py``) and small test data."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("httpx")

from _serve import Server  # noqa: E402


@pytest.fixture
def start_server(tmp_path):
    """A factory of servers (``start_server(*cli_args, token=...)``), all stopped after the test."""
    servers: list[Server] = []

    def start(*args: str, **kw) -> Server:
        s = Server(tmp_path, *args, **kw)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


@pytest.fixture(scope="module")
def scan_files(tmp_path_factory):
    """A small kinematic scan (4 x 4 positions of 64 x 64) as HDF5, its vacuum probe (.npy) and arrays."""
    import distill4d
    from distill4d.simulate.kinematic import strained_scan, vacuum_probe

    d = tmp_path_factory.mktemp("data")
    dc, _ = strained_scan((4, 4), (64, 64), kind="uniform", strain=0.01, dose=None)
    data = np.asarray(dc.data, dtype=np.float32)
    probe = vacuum_probe((64, 64), calibration=dc.calibration).astype(np.float32)
    scan = d / "scan.h5"
    distill4d.write(scan, distill4d.DataCube(data, dc.calibration))
    np.save(d / "probe.npy", probe)
    return {"dir": d, "scan": scan, "probe": d / "probe.npy", "data": data, "probe_array": probe,
            "calibration": dc.calibration}


@pytest.fixture(scope="module")
def long_scan(tmp_path_factory):
    """A folder with ``scan.h5`` (32 x 32 patterns of 96 x 96, uniform 1 % strain, no noise) and
    its ``probe.npy``: about 2 s of disk detection in one thread, ~160 tiles with memory_budget_MB 1."""
    import distill4d
    from distill4d.simulate.kinematic import strained_scan, vacuum_probe

    data = tmp_path_factory.mktemp("longjob")
    dc, _ = strained_scan((32, 32), (96, 96), kind="uniform", strain=0.01, dose=None)
    distill4d.write(data / "scan.h5", dc)
    np.save(data / "probe.npy", vacuum_probe((96, 96), calibration=dc.calibration))
    return data
