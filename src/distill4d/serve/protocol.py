"""Open Inference Protocol (KServe V2) tensors: decoding requests and encoding responses.

Three request bodies are accepted, none of them base64:

- JSON (``application/json``): ``{"inputs": [{"name", "shape", "datatype", "data"}], "parameters": {...}}``
  with ``data`` flat (row-major) or nested.
- The binary tensor extension: a JSON header of ``Inference-Header-Content-Length`` bytes,
  then the raw little-endian bytes of each input whose ``parameters.binary_data_size`` is set,
  in the order of ``inputs``.
- A raw ``.npy`` body (``application/x-npy``: the model's first input) or ``.npz`` body
  (``application/x-npz``: inputs by name), read with ``numpy.load(allow_pickle=False)``; the
  request's parameters are then the URL's query parameters (values parsed as JSON when they
  can be).

Responses are JSON, or the binary extension when the request asks for it (an output with
``parameters.binary_data`` true, or the request parameter ``binary_data_output``).
"""

from __future__ import annotations

import io
import json
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import Distill4dError
from ._lru import LRU

__all__ = [
    "DATATYPES",
    "InferRequest",
    "ProtocolError",
    "decode_request",
    "decode_response",
    "encode_request",
    "encode_response",
    "datatype_of",
]

#: V2 datatype names and their NumPy dtypes (little-endian on the wire).
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(bool),
    "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
_HEADER = "inference-header-content-length"


class ProtocolError(Distill4dError):
    """A request the server cannot use; ``status`` is the HTTP status to answer (400, 413 or 422)."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class InferRequest:
    """A decoded inference request: named input arrays, request parameters and output options."""

    inputs: dict[str, np.ndarray]
    parameters: dict[str, Any] = field(default_factory=dict)
    id: str | None = None
    binary_outputs: bool = False


def datatype_of(dtype: np.dtype) -> str:
    """The V2 datatype name of a NumPy dtype (ProtocolError for one without a V2 name)."""
    dt = np.dtype(dtype)
    for name, d in DATATYPES.items():
        if d.kind == dt.kind and d.itemsize == dt.itemsize:
            return name
    raise ProtocolError(f"arrays of dtype {dt} have no Open Inference Protocol datatype")


def _shape(value: Any, name: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                              for v in value):
        raise ProtocolError(f"input {name!r}: shape must be a list of non-negative integers, got {value!r}")
    return tuple(value)


def _dtype(value: Any, name: str) -> np.dtype:
    if value not in DATATYPES:
        raise ProtocolError(f"input {name!r}: datatype {value!r} is not supported; use one of {', '.join(DATATYPES)}")
    return DATATYPES[value]


def _from_json_data(spec: dict[str, Any], name: str) -> np.ndarray:
    shape = _shape(spec.get("shape"), name)
    dtype = _dtype(spec.get("datatype"), name)
    if "data" not in spec:
        raise ProtocolError(f"input {name!r} has no data (give 'data', or binary_data_size with the binary extension)")
    try:
        arr = np.asarray(spec["data"], dtype=dtype if dtype.kind != "f" else np.float64)
    except (TypeError, ValueError, OverflowError):
        raise ProtocolError(f"input {name!r}: data are not all numbers of datatype {spec['datatype']}") from None
    if arr.size != int(np.prod(shape)):
        raise ProtocolError(f"input {name!r}: {arr.size} values do not fill shape {list(shape)}")
    return arr.astype(dtype, copy=False).reshape(shape)


def _from_bytes(raw: bytes | memoryview, spec: dict[str, Any], name: str) -> np.ndarray:
    shape = _shape(spec.get("shape"), name)
    dtype = _dtype(spec.get("datatype"), name)
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise ProtocolError(f"input {name!r}: binary_data_size {len(raw)} bytes, but shape {list(shape)} of "
                            f"{spec['datatype']} needs {expected}")
    arr = np.frombuffer(raw, dtype=dtype).reshape(shape)
    return arr.astype(arr.dtype.newbyteorder("="), copy=True) if sys.byteorder == "big" else arr.copy()


def _header_json(raw: bytes | memoryview) -> dict[str, Any]:
    try:
        doc = json.loads(bytes(raw))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ProtocolError(f"the request's JSON is malformed: {err}", 400) from None
    if not isinstance(doc, dict):
        raise ProtocolError("the request's JSON must be an object with 'inputs'", 400)
    return doc


def _parse_query_value(v: str) -> Any:
    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


def decode_request(body: bytes, content_type: str | None, headers: dict[str, str],
                   query: dict[str, str], first_input: str) -> InferRequest:
    """An :class:`InferRequest` from a request body (JSON, binary extension, ``.npy`` or ``.npz``).

    ``headers`` are lower-cased; ``first_input`` is the input a raw ``.npy`` body becomes.
    """
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype in ("application/x-npy", "application/x-npz"):
        try:
            loaded = np.load(io.BytesIO(body), allow_pickle=False)
        except ValueError as err:
            raise ProtocolError(f"the {ctype} body is not a readable array file without pickled objects: {err}") from None
        except Exception as err:  # noqa: BLE001 - a corrupt file is the user's
            raise ProtocolError(f"the {ctype} body is not a readable array file: {err}", 400) from None
        if isinstance(loaded, np.ndarray):
            inputs = {first_input: loaded}
        else:
            with loaded as z:
                inputs = {k: z[k] for k in z.files}
        params = {k: _parse_query_value(v) for k, v in query.items()}
        return InferRequest(inputs, params, binary_outputs=bool(params.pop("binary_data_output", False)))
    if _HEADER in headers:
        try:
            n = int(headers[_HEADER])
        except ValueError:
            raise ProtocolError(f"Inference-Header-Content-Length must be an integer, got {headers[_HEADER]!r}", 400) from None
        if not 0 < n <= len(body):
            raise ProtocolError(f"Inference-Header-Content-Length {n} is outside the body of {len(body)} bytes", 400)
        doc = _header_json(memoryview(body)[:n])
        offset = n
        binary = memoryview(body)
    else:
        doc = _header_json(body)
        offset, binary = 0, None
    specs = doc.get("inputs")
    if not isinstance(specs, list) or not specs:
        raise ProtocolError("the request has no 'inputs' (a list of tensors)", 400)
    inputs: dict[str, np.ndarray] = {}
    for spec in specs:
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise ProtocolError("every input needs a 'name'", 400)
        name = spec["name"]
        size = (spec.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if binary is None:
                raise ProtocolError(f"input {name!r} has binary_data_size but the request has no "
                                    "Inference-Header-Content-Length header", 400)
            if not isinstance(size, int) or size < 0 or offset + size > len(body):
                raise ProtocolError(f"input {name!r}: binary_data_size {size!r} runs past the body's end", 400)
            inputs[name] = _from_bytes(binary[offset:offset + size], spec, name)
            offset += size
        else:
            inputs[name] = _from_json_data(spec, name)
    if binary is not None and offset != len(body):
        raise ProtocolError(f"{len(body) - offset} bytes of the body belong to no input", 400)
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError("'parameters' must be an object", 400)
    want_binary = bool(params.pop("binary_data_output", False)) or any(
        bool((o.get("parameters") or {}).get("binary_data")) for o in doc.get("outputs") or [] if isinstance(o, dict))
    rid = doc.get("id")
    return InferRequest(inputs, dict(params), id=str(rid) if rid is not None else None, binary_outputs=want_binary)


#: JSON text of recent response parameters by the dict's id, kept with the dict (so that, while kept, no other
#: dict can have its id)
_PARAMS_JSON = LRU(64)


def _parameters_json(parameters: dict[str, Any]) -> str:
    """``json.dumps(parameters)``, kept for the last 64 dicts: a model hands back the same dict for every
    request of one setup (the disks' detection parameters: about 400 floats, 0.4 ms to encode each time).
    The dicts are not changed after they are handed back."""
    return _PARAMS_JSON.get_or(id(parameters), lambda: (parameters, json.dumps(parameters, separators=(",", ":"))))[1]


def encode_response(model: str, outputs: dict[str, np.ndarray], parameters: dict[str, Any] | None = None,
                    request_id: str | None = None, binary: bool = False) -> tuple[bytes, dict[str, str]]:
    """The response body and headers: V2 JSON, or the binary extension when ``binary``."""
    doc: dict[str, Any] = {"model_name": model, "outputs": []}
    if request_id is not None:
        doc["id"] = request_id
    blobs = []
    for name, arr in outputs.items():
        a = np.ascontiguousarray(arr)
        spec: dict[str, Any] = {"name": name, "shape": list(a.shape), "datatype": datatype_of(a.dtype)}
        if binary:
            raw = a.astype(DATATYPES[spec["datatype"]], copy=False).tobytes()
            spec["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            flat = a.ravel()
            if a.dtype.kind == "f" and not np.isfinite(flat).all():
                # JSON has no NaN: non-finite values (peak padding) become null
                spec["data"] = [None if not np.isfinite(v) else v for v in flat.tolist()]
            else:
                spec["data"] = flat.tolist()
        doc["outputs"].append(spec)
    head = json.dumps(doc, separators=(",", ":"))
    if parameters:
        head = f'{head[:-1]},"parameters":{_parameters_json(parameters)}}}'
    head = head.encode()
    if not binary:
        return head, {"content-type": "application/json"}
    return head + b"".join(blobs), {"content-type": "application/octet-stream",
                                     "inference-header-content-length": str(len(head))}


def encode_request(inputs: dict[str, np.ndarray], parameters: dict[str, Any] | None = None, *,
                   binary: bool = True, binary_outputs: bool | None = None) -> tuple[bytes, dict[str, str]]:
    """A client's request body and headers for ``inputs`` (binary extension by default, else JSON);
    ``binary_outputs`` (default: as ``binary``) asks for the outputs in the binary extension."""
    specs, blobs = [], []
    for name, arr in inputs.items():
        a = np.ascontiguousarray(arr)
        dt = datatype_of(a.dtype)
        spec: dict[str, Any] = {"name": name, "shape": list(a.shape), "datatype": dt}
        if binary:
            raw = a.astype(DATATYPES[dt], copy=False).tobytes()
            spec["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            spec["data"] = a.ravel().tolist()
        specs.append(spec)
    doc: dict[str, Any] = {"inputs": specs, "parameters": {**(parameters or {})}}
    if binary if binary_outputs is None else binary_outputs:
        doc["parameters"]["binary_data_output"] = True
    head = json.dumps(doc).encode()
    if not binary:
        return head, {"content-type": "application/json"}
    return head + b"".join(blobs), {"content-type": "application/octet-stream",
                                     "inference-header-content-length": str(len(head))}


def decode_response(body: bytes, headers: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The output arrays and response parameters of a V2 response (JSON or binary extension)."""
    n = headers.get("inference-header-content-length")
    head = json.loads(body[: int(n)] if n is not None else body)
    if "error" in head and "outputs" not in head:
        raise Distill4dError(head["error"])
    offset = int(n) if n is not None else 0
    out = {}
    for spec in head["outputs"]:
        dtype = DATATYPES[spec["datatype"]]
        size = (spec.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            out[spec["name"]] = np.frombuffer(body[offset:offset + size], dtype=dtype).reshape(spec["shape"]).copy()
            offset += size
        else:
            data = [np.nan if v is None else v for v in spec["data"]] if dtype.kind == "f" else spec["data"]
            out[spec["name"]] = np.asarray(data, dtype=dtype).reshape(spec["shape"])
    return out, head.get("parameters") or {}
