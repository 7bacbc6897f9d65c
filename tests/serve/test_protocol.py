"""V2 tensors: JSON, the binary extension and .npy bodies decode alike; bad requests say why (422/400)."""

import io
import json

import numpy as np
import pytest

from distill4d.serve.protocol import ProtocolError, decode_request, decode_response, encode_request, encode_response


def _decode(body, headers, ctype=None, query=None):
    h = {k.lower(): v for k, v in headers.items()}
    return decode_request(body, ctype or h.get("content-type"), h, query or {}, "patterns")


@pytest.mark.parametrize("binary", [True, False])
def test_request_round_trip(binary):
    x = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    c = np.array([1, 2], dtype=np.int64)
    body, headers = encode_request({"patterns": x, "count": c}, {"radius_px": 3.0}, binary=binary)
    req = _decode(body, headers)
    assert req.inputs["patterns"].dtype == np.float32 and np.array_equal(req.inputs["patterns"], x)
    assert np.array_equal(req.inputs["count"], c)
    assert req.parameters == {"radius_px": 3.0}
    assert req.binary_outputs is binary


def test_npy_and_npz_bodies_are_read_without_pickle():
    x = np.random.default_rng(0).random((1, 8, 8))
    buf = io.BytesIO()
    np.save(buf, x)
    req = _decode(buf.getvalue(), {}, "application/x-npy", {"max_peaks": "5", "kind": "edge"})
    assert np.array_equal(req.inputs["patterns"], x) and req.parameters == {"max_peaks": 5, "kind": "edge"}
    buf = io.BytesIO()
    np.savez(buf, patterns=x, probe=x[0])
    req = _decode(buf.getvalue(), {}, "application/x-npz")
    assert set(req.inputs) == {"patterns", "probe"}
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ProtocolError, match="without pickled objects") as err:
        _decode(buf.getvalue(), {}, "application/x-npy")
    assert err.value.status == 422


@pytest.mark.parametrize("spec, message", [
    ({"name": "patterns", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3]}, "3 values do not fill shape [2, 2]"),
    ({"name": "patterns", "shape": [1], "datatype": "BYTES", "data": ["a"]}, "datatype 'BYTES' is not supported"),
    ({"name": "patterns", "shape": [-1], "datatype": "FP32", "data": [1]}, "shape must be a list of non-negative"),
    ({"name": "patterns", "shape": [1], "datatype": "INT32", "data": ["x"]}, "data are not all numbers"),
])
def test_bad_tensors_are_422_with_the_reason(spec, message):
    with pytest.raises(ProtocolError, match=message.replace("[", r"\[").replace("]", r"\]")) as err:
        _decode(json.dumps({"inputs": [spec]}).encode(), {"content-type": "application/json"})
    assert err.value.status == 422


def test_binary_sizes_are_checked():
    x = np.zeros((2, 2), np.float32)
    body, headers = encode_request({"patterns": x})
    with pytest.raises(ProtocolError, match="runs past the body's end"):
        _decode(body[:-4], headers)
    with pytest.raises(ProtocolError, match="belong to no input"):
        _decode(body + b"xx", headers)
    with pytest.raises(ProtocolError, match="malformed") as err:
        _decode(b"{not json", {"content-type": "application/json"})
    assert err.value.status == 400


@pytest.mark.parametrize("binary", [True, False])
def test_response_round_trip_keeps_nan_padding(binary):
    out = {"qx": np.array([[1.5, np.nan]]), "count": np.array([1], dtype=np.int64), "mask": np.array([True])}
    body, headers = encode_response("disks", out, {"a": 1}, "r1", binary)
    back, params = decode_response(body, headers)
    assert params == {"a": 1}
    for k, v in out.items():
        assert back[k].dtype == v.dtype and np.array_equal(back[k], v, equal_nan=v.dtype.kind == "f")


def test_response_parameters_are_encoded_as_json_and_each_dict_answers_its_own():
    import json as _json

    from distill4d.serve.protocol import encode_response

    out = {"count": np.array([2])}
    p1 = {"detection": {"sites_px": [[1.5, 2.25]] * 3, "radius_px": 4.0}}
    first = _json.loads(encode_response("disks", out, p1)[0])
    again = _json.loads(encode_response("disks", out, p1, request_id="r")[0])  # from the kept text
    assert first["parameters"] == again["parameters"] == p1 and again["id"] == "r"
    p2 = {"detection": {"radius_px": 5.0}}
    assert _json.loads(encode_response("disks", out, p2)[0])["parameters"] == p2
    for _ in range(100):  # many fresh dicts: each answers its own, whatever the kept texts hold
        p = {"n": _}
        assert _json.loads(encode_response("disks", out, p)[0])["parameters"] == p
