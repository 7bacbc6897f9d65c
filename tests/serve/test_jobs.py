"""Jobs for whole scans on a real server: submitted, polled, completed; resumed after a kill and restart."""

from __future__ import annotations


import httpx
import numpy as np
import pytest
from _serve import poll_job

import distill4d
from distill4d.bragg import BraggPeaks, find_bragg_disks

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture(scope="module")
def big_scan(long_scan):
    """The folder of ``long_scan`` and the peaks of ``distill4d disks`` on its scan."""
    d = long_scan
    expected = find_bragg_disks(distill4d.read(d / "scan.h5"), np.load(d / "probe.npy"), scheduler="inline",
                                progress=False)
    return d, expected




def _same(a: BraggPeaks, b: BraggPeaks) -> bool:
    return np.array_equal(a.counts, b.counts) and all(
        np.array_equal(a[i, j], b[i, j]) for i in range(a.counts.shape[0]) for j in range(a.counts.shape[1]))


def test_a_job_is_submitted_polled_completed_and_resumed_after_a_kill(start_server, big_scan, tmp_path):
    data, expected = big_scan
    state = tmp_path / "state"
    args = ("--models", "disks", "--data-root", str(data), "--state-dir", str(state))
    server = start_server(*args)
    server.wait_ready()
    body = {"model": "disks", "path": "scan.h5", "probe": "probe.npy"}

    # 1. submitted (202), polled, completed: the result equals find_bragg_disks on the file
    r = httpx.post(server.url + "/v1/jobs", json=body, headers=server.headers)
    assert r.status_code == 202 and r.headers["location"] == f"/v1/jobs/{r.json()['id']}"
    job = poll_job(server, r.json()["id"], lambda j: j["status"] == "done")
    res = httpx.get(f"{server.url}/v1/jobs/{job['id']}/result", headers=server.headers)
    assert res.status_code == 200
    (tmp_path / "r1.h5").write_bytes(res.content)
    assert _same(BraggPeaks.from_hdf5(tmp_path / "r1.h5"), expected)
    assert not (state / "jobs" / job["id"] / "checkpoint").exists()

    # 2. the same job again, the server killed (SIGKILL) part way, then restarted: it resumes
    r = httpx.post(server.url + "/v1/jobs", json=body, headers=server.headers)
    job_id = r.json()["id"]
    part = poll_job(server, job_id, lambda j: j["status"] == "running" and (j["progress"]["tiles_done"] or 0) >= 2,
                 timeout=60)
    server.kill()
    total = part["progress"]["tiles_total"]
    done_at_kill = len(list((state / "jobs" / job_id / "checkpoint").glob("tile_*.npz")))
    assert 2 <= done_at_kill < total, "the kill must come part way through the job"
    server = start_server(*args, port=server.port)
    server.wait_ready()
    job = poll_job(server, job_id, lambda j: j["status"] == "done")
    assert job["starts"] == 2 and job["resumed_tiles"] >= done_at_kill
    res = httpx.get(f"{server.url}/v1/jobs/{job_id}/result", headers=server.headers)
    (tmp_path / "r2.h5").write_bytes(res.content)
    assert _same(BraggPeaks.from_hdf5(tmp_path / "r2.h5"), expected)

    # 3. DELETE removes it; unknown ids are 404
    assert httpx.delete(f"{server.url}/v1/jobs/{job_id}", headers=server.headers).json()["status"] == "deleted"
    assert httpx.get(f"{server.url}/v1/jobs/{job_id}", headers=server.headers).status_code == 404
    assert httpx.get(f"{server.url}/v1/jobs/{'0' * 32}", headers=server.headers).status_code == 404
    assert httpx.get(f"{server.url}/v1/jobs/..%2F..", headers=server.headers).status_code == 404


def test_an_uploaded_hdf5_runs_as_a_job(start_server, scan_files):
    server = start_server("--models", "disks", "--state-dir", str(scan_files["dir"] / "state_upload"))
    server.wait_ready()
    r = httpx.post(server.url + "/v1/jobs?model=disks", content=scan_files["scan"].read_bytes(),
                   headers={"content-type": "application/x-hdf5", **server.headers})
    assert r.status_code == 202, r.text
    job = poll_job(server, r.json()["id"], lambda j: j["status"] == "done")
    assert job["result"]
    r = httpx.post(server.url + "/v1/jobs?model=disks", content=b"not hdf5",
                   headers={"content-type": "application/x-hdf5", **server.headers})
    assert r.status_code == 422 and "not an HDF5 file" in r.json()["error"]
    r = httpx.post(server.url + "/v1/jobs", json={"model": "disks", "path": "scan.h5"}, headers=server.headers)
    assert r.status_code == 422 and "--data-root" in r.json()["error"]
