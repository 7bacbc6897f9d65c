"""Readiness: live at once, ready only after the models are loaded and warmed up; FCU-Net and phase round trips."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest

from distill4d.serve.protocol import decode_response, encode_request

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
pytest.importorskip("torch")


def test_ready_only_after_loading_then_fcunet_and_phase_answer(start_server, scan_files):
    server = start_server("--models", "disks,fcunet,phase", "--device", "cpu")
    server.wait_live()
    seen_not_ready = False
    t0 = time.monotonic()
    while time.monotonic() - t0 < 120:
        r = httpx.get(server.url + "/v2/health/ready")
        if r.status_code == 200:
            break
        assert r.status_code == 503 and r.json() == {"ready": False}, r.json()  # no loading error
        if not seen_not_ready:
            seen_not_ready = True
            body, h = encode_request({"patterns": scan_files["data"][0, :1]})
            early = httpx.post(server.url + "/v2/models/fcunet/infer", content=body, headers={**h, **server.headers})
            assert early.status_code == 503 and "loading" in early.json()["error"]
        time.sleep(0.05)
    assert seen_not_ready, "the server must answer not-ready while PyTorch and the weights load"
    assert r.status_code == 200
    listing = httpx.get(server.url + "/v2/models", headers=server.headers).json()["models"]
    card = {m["name"]: m["card"] for m in listing}["fcunet"]
    assert card["weights"] == "fcunet.pt" and "input" in card

    # FCU-Net: the peaks of find_bragg_disks_fcunet on the same patterns
    from distill4d.ml.fcunet import find_bragg_disks_fcunet

    data, probe, cal = scan_files["data"][0, :2], scan_files["probe_array"], scan_files["calibration"]
    body, h = encode_request({"patterns": data, "probe": probe}, {"q_pixel_inv_A": cal.q_pixel_inv_A})
    r = httpx.post(server.url + "/v2/models/fcunet/infer", content=body, headers={**h, **server.headers}, timeout=60)
    assert r.status_code == 200, r.text
    out, _ = decode_response(r.content, r.headers)
    ref = find_bragg_disks_fcunet(data[None], probe, q_pixel_inv_A=cal.q_pixel_inv_A, device="cpu", progress=False)
    assert np.array_equal(out["count"], ref.counts[0])
    for j in range(2):
        c = int(out["count"][j])
        np.testing.assert_allclose(out["qx"][j, :c], ref[0, j][:, 0], atol=1e-4)  # float32 network: round-off of another process's thread count
        np.testing.assert_allclose(out["qy"][j, :c], ref[0, j][:, 1], atol=1e-4)  # float32 network: round-off of another process's thread count

    # phase: a block of patterns gives an image of the block's shape (identical patterns are refused: 422)
    block = scan_files["data"] * np.random.default_rng(1).uniform(0.8, 1.2, (4, 4, 1, 1)).astype(np.float32)
    body, h = encode_request({"patterns": block})
    r = httpx.post(server.url + "/v2/models/phase/infer", content=body, headers={**h, **server.headers}, timeout=60)
    assert r.status_code == 200, r.text
    out, params = decode_response(r.content, r.headers)
    assert out["image"].shape == (4, 4) and np.isfinite(out["image"]).all() and params["model"] == "conv4d-mixed"
