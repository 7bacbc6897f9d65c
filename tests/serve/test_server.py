"""A real uvicorn server on loopback: V2 routes, peaks equal to ``distill4d disks``, auth, limits, metrics."""

from __future__ import annotations

import asyncio
import io
import json
import os

import httpx
import numpy as np
import pytest
from _serve import TOKEN, Server

import distill4d
from distill4d.bragg import BraggPeaks
from distill4d.cli import main
from distill4d.serve.protocol import decode_response, encode_request


@pytest.fixture(scope="module")
def server(tmp_path_factory, scan_files):
    """disks and strain, a token, a 1 MiB body limit, a data root and a state directory."""
    tmp = tmp_path_factory.mktemp("server")
    s = Server(tmp, "--models", "disks,strain", "--max-body-mb", "1", "--data-root", str(scan_files["dir"]),
               "--state-dir", str(tmp / "state"))
    try:
        s.wait_ready()
        yield s
    finally:
        s.stop()


def _infer(server, model, inputs, parameters=None, binary=True, headers=None):
    body, h = encode_request(inputs, parameters, binary=binary)
    return httpx.post(f"{server.url}/v2/models/{model}/infer", content=body,
                      headers={**h, **server.headers, **(headers or {})}, timeout=60)


def _cli_peaks(tmp_path, data, probe_file):
    f = tmp_path / "patterns.h5"
    distill4d.write(f, distill4d.DataCube(data[None]), force=True)
    out = tmp_path / "peaks.h5"
    assert main(["disks", str(f), "--probe", str(probe_file), "-o", str(out), "--no-png", "--force",
                 "--no-progress"]) == 0
    return BraggPeaks.from_hdf5(out)


def test_health_metadata_and_listing(server):
    assert httpx.get(server.url + "/v2/health/live").json() == {"live": True}
    assert httpx.get(server.url + "/v2/health/ready").status_code == 200  # open without a token
    meta = httpx.get(server.url + "/v2/models/disks", headers=server.headers).json()
    assert [i["name"] for i in meta["inputs"]] == ["patterns", "probe"]
    assert [o["name"] for o in meta["outputs"]] == ["qx", "qy", "intensity", "count"]
    listing = httpx.get(server.url + "/v2/models", headers=server.headers).json()["models"]
    assert [m["name"] for m in listing] == ["disks", "strain"] and all(m["ready"] and m["card"] for m in listing)
    r = httpx.get(server.url + "/v2/models/fcunet", headers=server.headers)
    assert r.status_code == 404 and "not served here" in r.json()["error"]


@pytest.mark.parametrize("binary", [True, False])
def test_infer_peaks_equal_those_of_distill4d_disks(server, scan_files, tmp_path, binary):
    data = scan_files["data"][0, :3]  # three patterns of one scan row
    cli = _cli_peaks(tmp_path, data, scan_files["probe"])
    r = _infer(server, "disks", {"patterns": data, "probe": scan_files["probe_array"]}, binary=binary)
    assert r.status_code == 200, r.text
    out, params = decode_response(r.content, r.headers)
    assert np.array_equal(out["count"], cli.counts[0])
    for j in range(3):
        c = int(out["count"][j])
        got = np.stack([out["qx"][j, :c], out["qy"][j, :c], out["intensity"][j, :c]], axis=1)
        assert np.array_equal(got, cli[0, j]), "the server's peaks must equal distill4d disks' exactly"
    assert params["detection"]["max_peaks"] == cli.params["max_peaks"]
    # the Server-Timing header says where the time went (ms); the model call is most of it
    timing = {k.strip(): float(v) for k, v in (p.split(";dur=") for p in r.headers["server-timing"].split(","))}
    assert list(timing) == ["route", "read", "prepare", "wait", "model", "model-cpu", "return", "encode"]
    assert all(v >= 0 for v in timing.values()) and timing["model"] > 0


def test_npy_body_gives_the_same_peaks(server, scan_files):
    data = scan_files["data"][1, :1]
    buf = io.BytesIO()
    np.savez(buf, patterns=data, probe=scan_files["probe_array"])
    r = httpx.post(server.url + "/v2/models/disks/infer", content=buf.getvalue(),
                   headers={"content-type": "application/x-npz", **server.headers})
    assert r.status_code == 200, r.text
    ref = _infer(server, "disks", {"patterns": data, "probe": scan_files["probe_array"]})
    a, _ = decode_response(r.content, r.headers)
    b, _ = decode_response(ref.content, ref.headers)
    assert all(np.array_equal(a[k], b[k], equal_nan=True) for k in b)


def test_concurrent_requests_are_batched_without_changing_results(server, scan_files):
    probe = scan_files["probe_array"]
    data = scan_files["data"].reshape(-1, 64, 64)
    first = _infer(server, "disks", {"patterns": data[:1], "probe": probe})
    _, params = decode_response(first.content, first.headers)
    fixed = {k: params["detection"][k] for k in ("min_spacing_px", "min_relative_intensity", "max_peaks",
                                                   "radius_px")}

    async def run():
        async with httpx.AsyncClient(headers=server.headers, timeout=60) as client:
            async def one(i):
                body, h = encode_request({"patterns": data[i:i + 1], "probe": probe}, fixed)
                r = await client.post(f"{server.url}/v2/models/disks/infer", content=body, headers=h)
                return decode_response(r.content, r.headers)[0]
            return await asyncio.gather(*(one(i) for i in range(16)))

    together = asyncio.run(run())
    alone = _infer(server, "disks", {"patterns": data[:16], "probe": probe}, fixed)
    alone, _ = decode_response(alone.content, alone.headers)
    for i, out in enumerate(together):
        c = int(out["count"][0])
        assert c == alone["count"][i] and np.array_equal(out["qx"][0, :c], alone["qx"][i, :c])
    metrics = httpx.get(server.url + "/metrics", headers=server.headers).text
    assert 'distill4d_batch_size_bucket{model="disks",le="1.0"}' in metrics
    ones = int(metrics.split('distill4d_batch_size_bucket{model="disks",le="1.0"} ')[1].split()[0])
    total = int(metrics.split('distill4d_batch_size_count{model="disks"} ')[1].split()[0])
    assert total > ones, "some batch must hold more than one pattern"
    assert 'distill4d_requests_total{route="infer",model="disks",status="200"}' in metrics
    assert "distill4d_request_seconds_bucket" in metrics and "distill4d_queue_depth" in metrics


def test_strain_against_a_given_reference(server):
    h, k = (a.ravel() for a in np.meshgrid(np.arange(-2, 3), np.arange(-2, 3), indexing="ij"))
    u, v = np.array([10.0, 0.0]), np.array([0.0, 10.0])
    stretched = np.diag([1 / 1.02, 1.0])  # reciprocal: real space stretched by 2 % along x
    qx = 32 + h * (stretched @ u)[0] + k * (stretched @ v)[0]
    qy = 32 + h * (stretched @ u)[1] + k * (stretched @ v)[1]
    inputs = {"qx": qx[None], "qy": qy[None], "intensity": np.ones((1, h.size)), "count": np.array([h.size]),
              "reference": np.array([[32.0, 32.0], u, v])}
    r = _infer(server, "strain", inputs)
    assert r.status_code == 200, r.text
    out, _ = decode_response(r.content, r.headers)
    assert out["eps_xx"][0] == pytest.approx(0.02, abs=1e-9) and out["eps_yy"][0] == pytest.approx(0, abs=1e-9)
    assert not out["mask"][0]


def test_no_token_is_401_and_health_stays_open(server, scan_files):
    for headers in ({}, {"authorization": "Bearer wrong-token-but-long-enough"}, {"authorization": TOKEN}):
        r = httpx.get(server.url + "/v2/models", headers=headers)
        assert r.status_code == 401 and "bearer token" in r.json()["error"]
        assert r.headers["www-authenticate"] == "Bearer"
    r = httpx.post(server.url + "/v2/models/disks/infer", json={"inputs": []})
    assert r.status_code == 401
    assert httpx.get(server.url + "/metrics").status_code == 401
    assert httpx.get(server.url + "/v2/health/live").status_code == 200


def test_too_large_bodies_are_413(server):
    big = np.zeros((80, 64, 64), np.float32)  # 1.3 MB > 1 MiB
    r = _infer(server, "disks", {"patterns": big})
    assert r.status_code == 413 and "larger than the server's limit of 1048576 bytes" in r.json()["error"]

    def chunks():  # no Content-Length: the limit holds while reading
        for _ in range(20):
            yield b"x" * 100_000

    r = httpx.post(server.url + "/v2/models/disks/infer", content=chunks(),
                   headers={"content-type": "application/json", **server.headers})
    assert r.status_code == 413


@pytest.mark.parametrize("inputs, params, message", [
    ({"patterns": np.full((1, 64, 64), np.nan, np.float32)}, None, "4096 NaN or infinite values"),
    ({"patterns": np.zeros((64, 64), np.float32)}, None, "must have shape (N, Qx, Qy), got [64, 64]"),
    ({"patterns": np.zeros((1, 64, 64), np.float32), "probe": np.ones((32, 32))}, None,
     "input 'probe' must be one pattern of shape [64, 64]"),
    ({"patterns": np.zeros((1, 64, 64), bool)}, None, "has datatype BOOL"),
    ({"patterns": np.zeros((1, 64, 64), np.float32)}, {"radius": 3}, "unknown parameter(s) ['radius']"),
    ({"images": np.zeros((1, 64, 64), np.float32)}, None, "unknown input(s) ['images']"),
])
def test_bad_inputs_are_422_with_a_clear_message(server, inputs, params, message):
    r = _infer(server, "disks", inputs, params)
    assert r.status_code == 422
    assert message in r.json()["error"]


def test_paths_outside_the_data_roots_are_refused(server, scan_files, tmp_path):
    outside = tmp_path / "secret.h5"
    outside.write_bytes(b"x")
    link = scan_files["dir"] / "link.h5"
    if not link.exists():
        os.symlink(outside, link)
    for path in ("../../../../etc/passwd", "/etc/passwd", str(outside), "link.h5",
                 str(scan_files["dir"] / ".." / outside.parent.name / "secret.h5")):
        r = httpx.post(server.url + "/v1/jobs", json={"model": "disks", "path": path}, headers=server.headers)
        assert r.status_code == 403, (path, r.text)
        assert "outside the server's data roots" in r.json()["error"]
    r = httpx.post(server.url + "/v1/jobs", json={"model": "disks", "path": "scan.h5", "probe": "/etc/hostname"},
                   headers=server.headers)
    assert r.status_code == 403


def test_json_logs(server):
    lines = [json.loads(x) for x in server.log.read_text().splitlines() if x.strip()]  # every line is JSON
    assert lines and all({"time", "level", "msg"} <= set(d) for d in lines)
    requests = [d for d in lines if d["msg"] == "request"]
    assert requests and {"method", "path", "status", "ms"} <= set(requests[-1])
    assert any(d["msg"] == "model ready" and d["model"] == "disks" for d in lines)


@pytest.mark.slow
def test_a_request_longer_than_the_timeout_is_504(start_server, scan_files):
    s = start_server("--models", "disks", "--timeout-s", "0.01")
    s.wait_ready()
    data = np.tile(scan_files["data"].reshape(-1, 64, 64), (4, 1, 1))  # 64 patterns: the automatic setup alone
    r = _infer(s, "disks", {"patterns": data, "probe": scan_files["probe_array"]})  # takes longer than 10 ms
    assert r.status_code == 504 and "longer than the server's timeout of 0.01 s" in r.json()["error"]
    assert httpx.get(s.url + "/v2/health/live").status_code == 200


@pytest.mark.slow
@pytest.mark.e2e
def test_segment_returns_the_two_domains_of_a_stripe_image(start_server):
    """The served `segment` model (NMF by default) on a two-variant stripe image: labels on every
    pixel, the two orientations, and 422 for the autoencoder (it trains), for a 1D input and for a
    refine parameter that is not a boolean."""
    from distill4d.segment import mean_iou
    from distill4d.simulate.domains import simulate_domains

    s = start_server("--models", "segment")
    s.wait_ready()
    d = simulate_domains((256, 256), angles_deg=(20, 110), periods_px=9.0, dose=30.0, seed=3)
    r = _infer(s, "segment", {"images": d.images[0].astype(np.float32)},
               {"domains": 2, "window_px": 64, "step_px": 16})
    assert r.status_code == 200, r.text
    out, params = decode_response(r.content, r.headers)
    assert out["labels"].shape == (1, 256, 256) and out["fractions"].shape == (1, 2)
    assert mean_iou(out["labels"], d.labels) > 0.8
    assert sorted(np.round(out["variant_angles_deg"] / 10) * 10 % 180) == [20.0, 110.0]
    r = _infer(s, "segment", {"images": d.images[0].astype(np.float32)}, {"method": "autoencoder"})
    assert r.status_code == 422 and "autoencoder trains" in r.text
    r = _infer(s, "segment", {"images": np.ones(16, np.float32)})
    assert r.status_code == 422 and "image (H, W) or a series" in r.text
    r = _infer(s, "segment", {"images": d.images[0].astype(np.float32)}, {"refine": "yes"})
    assert r.status_code == 422 and "refine must be true or false" in r.text


@pytest.mark.slow
@pytest.mark.e2e
def test_identify_equals_the_python_api_and_refuses_bad_spots(start_server):
    """The served `identify` model (the shipped identifier) gives, for spot lists of Cu in random
    orientations, exactly the per-pattern predictions of :func:`distill4d.identify.identify`;
    inconsistent shapes and NaN spots get 422."""
    from distill4d.calibration import Calibration
    from distill4d.identify import identify
    from distill4d.simulate.crystals import prototype
    from distill4d.simulate.spots import spot_patterns

    pats = spot_patterns(prototype("Cu"), 6, rng=5, excitation_error_inv_A=0.03)
    K = max(len(p[0]) for p in pats)
    qx, qy, it = (np.full((6, K), np.nan) for _ in range(3))
    for i, (x, y, w) in enumerate(pats):
        qx[i, : len(x)], qy[i, : len(x)], it[i, : len(x)] = x, y, w
    count = np.array([len(p[0]) for p in pats], dtype=np.int64)
    pix, origin = 0.01, (100.0, 100.0)
    peaks = BraggPeaks.from_list([np.column_stack([x / pix + origin[0], y / pix + origin[1], w]) for x, y, w in pats],
                                 (2, 3), calibration=Calibration(q_pixel_inv_A=pix, origin_px=origin))
    ref = identify(peaks, aggregation="none")
    s = start_server("--models", "identify")
    s.wait_ready()
    r = _infer(s, "identify", {"qx": qx, "qy": qy, "intensity": it, "count": count}, {"k": 3})
    assert r.status_code == 200, r.text
    out, _ = decode_response(r.content, r.headers)
    np.testing.assert_array_equal(out["system"], ref.system.ravel())
    np.testing.assert_array_equal(out["space_group"], ref.space_group.reshape(6, -1))
    np.testing.assert_allclose(out["system_proba"], ref.system_proba.reshape(6, -1), rtol=1e-6)
    np.testing.assert_allclose(out["lattice"], ref.lattice.reshape(6, -1), rtol=1e-6)
    r = _infer(s, "identify", {"qx": qx, "qy": qy[:, :2], "intensity": it, "count": count})
    assert r.status_code == 422 and "one shape" in r.text
    bad = qx.copy()
    bad[0, 0] = np.nan
    r = _infer(s, "identify", {"qx": bad, "qy": qy, "intensity": it, "count": count})
    assert r.status_code == 422 and "NaN" in r.text
