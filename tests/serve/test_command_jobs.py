"""Command jobs (strain, com, ...) on a real server: the same result file as the command line; DELETE of
a running job stops the engine early, writes no more tiles and reports ``cancelled``."""

from __future__ import annotations

import json
import time

import h5py
import httpx
import numpy as np
import pytest
from _serve import poll_job

import distill4d
from distill4d.cli import main as cli_main

pytestmark = [pytest.mark.slow, pytest.mark.e2e]




def _datasets(path) -> dict[str, np.ndarray]:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def _same_arrays(a, b) -> None:
    """The same datasets; integers and booleans equal, floats to float32 rounding (the server's
    and this process's thread counts may order a sum differently)."""
    da, db = _datasets(a), _datasets(b)
    assert sorted(da) == sorted(db)
    for k in da:
        if isinstance(da[k], np.ndarray) and da[k].dtype.kind in "iub":
            np.testing.assert_array_equal(da[k], db[k], err_msg=k)
        elif isinstance(da[k], np.ndarray) and da[k].dtype.kind == "f":
            np.testing.assert_allclose(da[k], db[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_strain_com_segment_virtual_and_phase_jobs_equal_the_command_line(start_server, scan_files, tmp_path):
    server = start_server("--models", "strain", "--data-root", str(scan_files["dir"]),
                          "--state-dir", str(tmp_path / "state"))
    server.wait_ready()
    cases = (  # (job, the same as a command line)
        ({"model": "strain", "path": "scan.h5", "probe": "probe.npy", "parameters": {"reference": "0:2,0:2"}},
         ["strain", str(scan_files["scan"]), "--probe", str(scan_files["probe"]), "--reference", "0:2,0:2"]),
        ({"model": "com", "path": "scan.h5", "parameters": {"radius": 20}},
         ["com", str(scan_files["scan"]), "--radius", "20"]),
        ({"model": "segment", "path": "stripes.npy", "parameters": {"domains": 2, "window": 32, "step": 8}},
         ["segment", str(scan_files["dir"] / "stripes.npy"), "--domains", "2", "--window", "32", "--step", "8"]),
        ({"model": "virtual", "path": "scan.h5", "parameters": {"bf": [6], "adf": [10, 30]}},
         ["virtual", str(scan_files["scan"]), "--bf", "6", "--adf", "10", "30"]),
        ({"model": "phase", "path": "noisy.h5", "parameters": {"model": "linear"}},
         ["phase", str(scan_files["dir"] / "noisy.h5"), "--model", "linear"]),
    )
    # phase needs patterns that differ (the uniform scan's are all the same)
    from distill4d.simulate.kinematic import strained_scan

    noisy, _ = strained_scan((4, 4), (64, 64), kind="multilayer", strain=0.01, layer_width=1, dose=1e4, seed=1)
    distill4d.write(scan_files["dir"] / "noisy.h5", noisy)
    y, x = np.mgrid[:96, :96]
    np.save(scan_files["dir"] / "stripes.npy", np.where(x < 48, np.sin(x), np.sin(y)).astype(np.float32))
    ids = []
    for body, _ in cases:
        r = httpx.post(server.url + "/v1/jobs", json=body, headers=server.headers)
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    for (body, argv), job_id in zip(cases, ids):
        job = poll_job(server, job_id, lambda j: j["status"] in ("done", "failed"))
        assert job["status"] == "done", job
        got = tmp_path / f"{body['model']}_server.h5"
        got.write_bytes(httpx.get(f"{server.url}/v1/jobs/{job_id}/result", headers=server.headers).content)
        want = tmp_path / f"{body['model']}_cli.h5"
        assert cli_main([*argv, "-o", str(want), "--no-png", "--no-progress", "--scheduler", "inline"]) == 0
        _same_arrays(got, want)
    # the strain job ran --method auto (the command's default) and found the applied 1 % strain
    with h5py.File(tmp_path / "strain_server.h5", "r") as f:
        exx = f["eps_xx"][()] if "eps_xx" in f else next(f[k]["eps_xx"][()] for k in f if "eps_xx" in f[k])
    assert np.nanmax(np.abs(exx)) < 0.02 and np.isfinite(exx).all()

    # bad options are refused at submission, with the reason (422); no option names an output
    for params, words in (({"method": "nope"}, "invalid choice"), ({"output": "/tmp/x.h5"}, "unknown job parameter"),
                          ({"template": "../../etc/passwd"}, "outside the server's data roots")):
        r = httpx.post(server.url + "/v1/jobs", json={"model": "strain", "path": "scan.h5", "parameters": params},
                       headers=server.headers)
        assert r.status_code in (403, 422) and words in r.json()["error"], r.text


_LONG_JOB = {"model": "strain", "path": "scan.h5", "probe": "probe.npy",
             "parameters": {"method": "correlation", "memory_budget_MB": 1}}


def test_delete_stops_a_running_job(start_server, long_scan, tmp_path):
    """A strain job of ~160 small tiles is deleted part way: the engine stops within 2 s (one tile, about
    30 ms here, plus the time to see the request), no tile is written after, the job reports cancelled
    and its partial files are gone (job.json stays; a second DELETE removes it)."""
    data = long_scan
    state = tmp_path / "state"
    server = start_server("--models", "strain", "--data-root", str(data), "--state-dir", str(state))
    server.wait_ready()
    job_id = httpx.post(server.url + "/v1/jobs", json=_LONG_JOB, headers=server.headers).json()["id"]
    part = poll_job(server, job_id, lambda j: (j.get("progress") or {}).get("tiles_done", 0) >= 3, timeout=60)
    total = part["progress"]["tiles_total"]
    assert total >= 50
    t0 = time.monotonic()
    r = httpx.delete(f"{server.url}/v1/jobs/{job_id}", headers=server.headers)
    assert r.status_code == 202 and r.json()["status"] == "cancelling", r.text
    job = poll_job(server, job_id, lambda j: j["status"] == "cancelled", timeout=30)
    waited = time.monotonic() - t0
    assert waited < 2.0 and job["stopped_after_s"] < 2.0, (waited, job)
    assert 3 <= job["progress"]["tiles_done"] < total, job  # stopped early, not after the whole scan
    assert sorted(p.name for p in (state / "jobs" / job_id).iterdir()) == ["job.json"]
    time.sleep(0.5)  # nothing is written after the stop
    assert sorted(p.name for p in (state / "jobs" / job_id).iterdir()) == ["job.json"]
    assert httpx.get(f"{server.url}/v1/jobs/{job_id}", headers=server.headers).json()["status"] == "cancelled"
    assert httpx.get(f"{server.url}/v1/jobs/{job_id}/result", headers=server.headers).status_code == 409
    # the server is not busy with it any more: a small job runs at once
    r = httpx.post(server.url + "/v1/jobs", json={"model": "com", "path": "scan.h5"}, headers=server.headers)
    assert poll_job(server, r.json()["id"], lambda j: j["status"] == "done")["status"] == "done"
    assert httpx.delete(f"{server.url}/v1/jobs/{job_id}", headers=server.headers).status_code == 200
    assert httpx.get(f"{server.url}/v1/jobs/{job_id}", headers=server.headers).status_code == 404


def test_a_stopped_server_keeps_the_running_job_which_resumes(start_server, long_scan, tmp_path):
    """SIGTERM while a command job runs: the engine stops at a tile (the server exits within seconds), the
    job stays running on disk with its finished tiles, and the next server resumes and completes it."""
    state = tmp_path / "state"
    args = ("--models", "strain", "--data-root", str(long_scan), "--state-dir", str(state))
    server = start_server(*args)
    server.wait_ready()
    job_id = httpx.post(server.url + "/v1/jobs", json=_LONG_JOB, headers=server.headers).json()["id"]
    part = poll_job(server, job_id, lambda j: (j.get("progress") or {}).get("tiles_done", 0) >= 3, timeout=60)
    t0 = time.monotonic()
    server.stop()  # SIGTERM
    assert server.proc.returncode is not None and time.monotonic() - t0 < 10
    job = json.loads((state / "jobs" / job_id / "job.json").read_text())
    kept = len(list((state / "jobs" / job_id).rglob("tile_*.npz")))
    assert job["status"] == "running" and part["progress"]["tiles_done"] <= kept < part["progress"]["tiles_total"]
    server = start_server(*args, port=server.port)
    server.wait_ready()
    job = poll_job(server, job_id, lambda j: j["status"] in ("done", "failed"))
    assert job["status"] == "done" and job["starts"] == 2 and job["resumed_tiles"] >= kept, job
