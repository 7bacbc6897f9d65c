"""The served models: each wraps one of the package's batch functions, with its V2 metadata.

A request is checked and prepared (:meth:`ServedModel.prepare`: shapes, dtypes, NaN, the
probe template and detection parameters) into a :class:`Prepared` item whose ``key`` says
which items can share one batch; :meth:`ServedModel.run_batch` runs a list of items of one
key as one call of the package's function and splits the result per request. No method
logic lives here: ``disks`` calls :func:`distill4d.bragg.detect_batch` with the probe and
parameters of :func:`distill4d.bragg.detection_setup` (so its peaks are those of
``distill4d disks``), ``fcunet`` :meth:`FCUNetDetector.detect_batch`, ``phase``
:func:`distill4d.ml.phase.phase_image`, ``strain`` :func:`distill4d.lattice.strain_map`,
``segment`` :func:`distill4d.segment.segment` and ``identify``
:func:`distill4d.identify.predict_spots` with the shipped identifier. A model that can
(``disks``) also packs a batch for a worker process (:mod:`distill4d.serve.worker`) and runs it
there (:meth:`ServedModel.run`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import Distill4dError
from ._lru import LRU as _LRU
from .protocol import InferRequest, ProtocolError, datatype_of

__all__ = ["MODEL_NAMES", "Prepared", "ServedModel", "TensorSpec", "build_model"]

#: Models the server can serve.
MODEL_NAMES = ("disks", "fcunet", "phase", "strain", "segment", "identify")

#: Datatypes accepted for patterns (detector counts or floats).
PATTERN_DATATYPES = ("FP32", "FP64", "FP16", "UINT8", "UINT16", "UINT32", "INT16", "INT32")
_MAX_SIDE = 4096
#: Pattern pixels of a lone request that runs in the event loop's thread (two 256 x 256 patterns).
INLINE_MAX_PIXELS = 2 * 256 * 256


@dataclass(frozen=True)
class TensorSpec:
    """An input or output of a model: name, V2 datatype, shape (-1: any) and whether it is optional."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    optional: bool = False
    description: str = ""

    def to_json(self) -> dict[str, Any]:
        """The V2 metadata entry (``optional`` and ``description`` are extensions)."""
        d: dict[str, Any] = {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}
        if self.optional:
            d["optional"] = True
        if self.description:
            d["description"] = self.description
        return d


@dataclass
class Prepared:
    """A checked request: ``key`` (items of one key share a batch), ``n`` patterns and the model's payload."""

    key: Any
    n: int
    payload: dict[str, Any] = field(default_factory=dict)
    #: ``time.perf_counter()`` when its batch started and ended in the worker (set by the batcher)
    timing: dict[str, float] = field(default_factory=dict)


def _digest(a: np.ndarray) -> int:
    """A key of an array's content for the setup caches: Python's hash of its bytes (SipHash, keyed per
    process, so no client can forge a collision; a few times faster than blake2b, which cost
    milliseconds per request on a busy machine)."""
    return hash((a.dtype.str, a.shape, np.ascontiguousarray(a).tobytes()))


def _freeze(params: dict[str, Any]) -> tuple:
    """JSON request parameters as a hashable key; numeric lists (a few hundred ``sites_px``) by
    :func:`_digest` of their array: a recursive conversion, or JSON text, cost most of a
    millisecond per request. Lists of anything else (strings, booleans, ragged) as JSON text, so
    that ``["1"]`` or ``[true]`` never shares a key with ``[1]``."""
    def value(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            try:
                a = np.asarray(v)
            except ValueError:  # ragged
                a = None
            if a is not None and a.dtype.kind in "iuf":
                return _digest(a.astype(np.float64, copy=False))
            return json.dumps(v, sort_keys=True)
        return json.dumps(v, sort_keys=True) if isinstance(v, dict) else v
    return tuple(sorted((k, value(v)) for k, v in params.items()))


def _patterns(inputs: dict[str, np.ndarray], name: str = "patterns", ndim: int = 3) -> np.ndarray:
    if name not in inputs:
        raise ProtocolError(f"input {name!r} is missing; inputs given: {sorted(inputs) or 'none'}")
    a = inputs[name]
    what = "(N, Qx, Qy)" if ndim == 3 else "(Rx, Ry, Qx, Qy)"
    if a.ndim != ndim:
        raise ProtocolError(f"input {name!r} must have shape {what}, got {list(a.shape)}")
    if a.dtype.kind not in "uif" or datatype_of(a.dtype) not in PATTERN_DATATYPES:
        raise ProtocolError(f"input {name!r} has datatype {datatype_of(a.dtype)}; patterns are one of "
                            f"{', '.join(PATTERN_DATATYPES)}")
    if min(a.shape) < 1 or not 8 <= a.shape[-1] <= _MAX_SIDE or not 8 <= a.shape[-2] <= _MAX_SIDE:
        raise ProtocolError(f"input {name!r} of shape {list(a.shape)}: need at least one pattern, each "
                            f"between 8 and {_MAX_SIDE} pixels a side")
    if a.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(a)))
        if bad:
            raise ProtocolError(f"input {name!r} has {bad} NaN or infinite values; patterns must be finite")
    return a


def _probe(inputs: dict[str, np.ndarray], pattern_shape: tuple[int, int]) -> np.ndarray | None:
    p = inputs.get("probe")
    if p is None:
        return None
    if p.ndim != 2 or tuple(p.shape) != tuple(pattern_shape):
        raise ProtocolError(f"input 'probe' must be one pattern of shape {list(pattern_shape)} like the "
                            f"patterns, got {list(p.shape)}")
    if p.dtype.kind not in "uif":
        raise ProtocolError(f"input 'probe' has datatype {datatype_of(p.dtype)}; it must be numeric")
    p = p.astype(np.float64, copy=False)
    if not np.isfinite(p).all() or p.max() <= 0:
        raise ProtocolError("input 'probe' must be finite with a positive maximum (a vacuum probe image)")
    return p


def _unexpected(inputs: dict[str, np.ndarray], allowed: set[str]) -> None:
    extra = sorted(set(inputs) - allowed)
    if extra:
        raise ProtocolError(f"unknown input(s) {extra}; this model takes {sorted(allowed)}")


def _pad_peaks(out: dict[str, np.ndarray], rows: slice, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """One request's rows of padded peak arrays, trimmed to its own largest count."""
    count = out["count"][rows].astype(np.int64)
    k = int(count.max()) if count.size else 0
    res = {key: np.asarray(out[key][rows, :k], dtype=np.float64) for key in keys}
    res["count"] = count
    return res


#: probe kernels a worker process keeps (the parent remembers half as many as sent)
_WORKER_KERNELS = 64


def _batch(items: list[Prepared]) -> np.ndarray:
    """The items' patterns as one array (N, Qx, Qy)."""
    if len(items) == 1:
        return items[0].payload["patterns"]
    return np.concatenate([it.payload["patterns"] for it in items])


def _tuples(v: Any) -> Any:
    """JSON lists back to the tuples of a frozen dataclass field."""
    return tuple(_tuples(x) for x in v) if isinstance(v, list) else v


class ServedModel:
    """A model the server serves: metadata, loading, request preparation and batched execution."""

    name = ""
    batchable = True
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    parameters: dict[str, str] = {}

    def __init__(self, device: str = "auto") -> None:
        self.device = device
        self.card: dict[str, Any] = {}

    def load(self) -> None:
        """Load the weights (once, at start)."""

    def warmup(self) -> None:
        """Run the model once on a small synthetic request."""
        item = self.prepare(InferRequest(self.example_inputs(), self.example_parameters()))
        self.run_batch([item])

    def example_inputs(self) -> dict[str, np.ndarray]:
        return {"patterns": _example_patterns(1, 64), "probe": _example_probe(64)}

    def example_parameters(self) -> dict[str, Any]:
        return {}

    def metadata(self) -> dict[str, Any]:
        """The V2 model metadata (``GET /v2/models/{name}``)."""
        return {"name": self.name, "versions": ["1"], "platform": "distill4d",
                "inputs": [s.to_json() for s in self.inputs], "outputs": [s.to_json() for s in self.outputs],
                "parameters": dict(self.parameters), "batchable": self.batchable}

    def prepare(self, request: InferRequest) -> Prepared:
        """Check a request and prepare it for a batch (ProtocolError: 422 with the reason)."""
        raise NotImplementedError

    def prepare_cached(self, request: InferRequest) -> Prepared | None:
        """:meth:`prepare` when it is cheap (its setup is cached), else None: then the server runs
        :meth:`prepare` in a worker thread."""
        return None

    def run_batch(self, items: list[Prepared]) -> list[tuple[dict[str, np.ndarray], dict[str, Any]]]:
        """Run items of one key as one batch; per item its outputs and response parameters."""
        raise NotImplementedError

    #: how long the first request of a batch waits for others by default (ms): worth it where a larger
    #: batch costs less per pattern (a network on a GPU)
    default_max_wait_ms = 10.0
    #: its batches can run in a worker process (it implements :meth:`pack`, :meth:`run_packed` and :meth:`unpack`)
    process_safe = False
    #: the worker processes its batches run in (:class:`~distill4d.serve.worker.WorkerPool`; set by the server)
    pool: Any = None

    def run(self, items: list[Prepared], local: bool = False) -> list[tuple[dict[str, np.ndarray], dict[str, Any]]]:
        """:meth:`run_batch`, in a worker process when the model has a :attr:`pool` and ``local`` is false.

        A batch run in a worker sets each item's ``timing["cpu"]`` to the worker's CPU time (s)."""
        if self.pool is None or local:
            return self.run_batch(items)
        head, out = self.pool.run(lambda memo: self.pack(items, memo))
        for it in items:
            it.timing["cpu"] = float(head.get("cpu_s", 0.0))
        return self.unpack(items, head, out)

    def pack(self, items: list[Prepared], memo: dict[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """A batch as a JSON header and arrays for a worker; ``memo`` persists per worker (what it was sent)."""
        raise NotImplementedError

    def run_packed(self, header: dict[str, Any], arrays: dict[str, np.ndarray],
                   state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """In the worker: run a packed batch; ``state`` persists between batches."""
        raise NotImplementedError

    def unpack(self, items: list[Prepared], header: dict[str, Any],
               arrays: dict[str, np.ndarray]) -> list[tuple[dict[str, np.ndarray], dict[str, Any]]]:
        """The worker's answer to :meth:`pack`, per item as :meth:`run_batch` gives it."""
        raise NotImplementedError

    def runs_inline(self, item: Prepared) -> bool:
        """Whether a lone request may run in the server's event loop (small: at most
        :data:`INLINE_MAX_PIXELS` pattern pixels); else a worker thread runs it."""
        patterns = item.payload.get("patterns")
        return self.batchable and patterns is not None and patterns.size <= INLINE_MAX_PIXELS


def _example_probe(n: int) -> np.ndarray:
    q = np.indices((n, n)) - n // 2
    return (np.hypot(q[0], q[1]) <= n / 16).astype(np.float32) * 100


def _example_patterns(count: int, n: int) -> np.ndarray:
    q = np.indices((n, n)).astype(np.float64)
    out = np.zeros((count, n, n), dtype=np.float32)
    step = n / 5
    for i in range(-2, 3):
        for j in range(-2, 3):
            c = (n // 2 + i * step, n // 2 + j * step)
            out[:] += (np.hypot(q[0] - c[0], q[1] - c[1]) <= n / 16) * (100 if i == j == 0 else 20)
    return out


def _parameter_overrides(params: dict[str, Any], allowed: set[str]) -> dict[str, Any]:
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ProtocolError(f"unknown parameter(s) {unknown}; this model takes {sorted(allowed)}")
    return dict(params)


class DisksModel(ServedModel):
    """Bragg disks by correlation with the probe: the peaks of ``distill4d disks``."""

    name = "disks"
    inputs = (
        TensorSpec("patterns", "FP32", (-1, -1, -1), description="patterns (N, Qx, Qy); also FP64 or integer counts"),
        TensorSpec("probe", "FP32", (-1, -1), optional=True,
                   description="vacuum probe (Qx, Qy); default: the central disk of the patterns' mean"),
    )
    outputs = (
        TensorSpec("qx", "FP64", (-1, -1), description="peak positions along Qx (pixels), NaN-padded (N, K)"),
        TensorSpec("qy", "FP64", (-1, -1), description="peak positions along Qy (pixels), NaN-padded (N, K)"),
        TensorSpec("intensity", "FP64", (-1, -1), description="correlation intensity of each peak (N, K)"),
        TensorSpec("count", "INT64", (-1,), description="peaks per pattern (N)"),
    )
    parameters = {
        "kind": "probe kernel: disk (default) or edge",
        "DetectionParameters fields": "radius_px, min_spacing_px, min_relative_intensity, max_peaks, ...: as in "
                                      "distill4d.bragg.find_bragg_disks; those not given are chosen from the "
                                      "request's patterns. Send back the response's 'detection' (every field) "
                                      "to detect later patterns alike and skip that step.",
    }

    def __init__(self, device: str = "auto") -> None:
        super().__init__(device)
        self._probes = _LRU(32)
        self._setups = _LRU(64)
        self.device = "cpu"  # NumPy
        self.card = {"model": "disks", "method": "correlation with the probe template (distill4d.bragg)",
                     "weights": None, "equivalent_command": "distill4d disks FILE --probe PROBE"}

    def _checked(self, request: InferRequest) -> tuple:
        from ..bragg import DetectionParameters

        _unexpected(request.inputs, {"patterns", "probe"})
        fields = {f.name for f in dataclasses.fields(DetectionParameters)}
        overrides = _parameter_overrides(request.parameters, fields | {"kind"})
        kind = overrides.pop("kind", "disk")
        patterns = _patterns(request.inputs)
        probe = _probe(request.inputs, patterns.shape[1:])
        fixed = probe is not None and {"min_spacing_px", "min_relative_intensity", "max_peaks"} <= set(overrides)
        # nothing is chosen from the data when the probe and parameters are given: their setup is kept
        setup_key = (_digest(request.inputs["probe"]), kind, _freeze(overrides), patterns.shape[1:]) if fixed else None
        return overrides, kind, patterns, probe, setup_key

    def prepare_cached(self, request: InferRequest) -> Prepared | None:
        overrides, kind, patterns, probe, setup_key = self._checked(request)
        if setup_key is not None:
            with self._setups.lock:
                cached = self._setups.get(setup_key)
            if cached is not None:
                return self._prepared(patterns, *cached)
        return None

    def prepare(self, request: InferRequest) -> Prepared:
        from ..bragg import detection_setup, kernel_ft, probe_template

        overrides, kind, patterns, probe, setup_key = self._checked(request)
        fixed = setup_key is not None
        if "sites_px" in overrides:
            overrides["sites_px"] = tuple(tuple(p) for p in overrides["sites_px"])
        try:
            if probe is not None:  # the template of a probe is kept: the usual client sends the same one
                def make() -> Any:
                    pr = probe_template(probe, datacube=None, kind=kind)
                    return pr, kernel_ft(pr)

                pr, kft = self._probes.get_or((_digest(probe), kind), make)
                pr, params = detection_setup(patterns, pr, kind=kind, **overrides)
            else:
                pr, params = detection_setup(patterns, None, kind=kind, **overrides)
                kft = kernel_ft(pr)
        except TypeError as err:
            raise ProtocolError(str(err)) from None
        info = {"detection": dataclasses.asdict(params), "probe_kind": pr.kind, "probe_radius_px": pr.radius_px}
        if fixed:
            self._setups.get_or(setup_key, lambda: (kft, params, info))
        return self._prepared(patterns, kft, params, info)

    @staticmethod
    def _prepared(patterns: np.ndarray, kft: np.ndarray, params: Any, info: dict[str, Any]) -> Prepared:
        key = (patterns.dtype.str, patterns.shape[1:], id(kft), params)
        return Prepared(key, patterns.shape[0], {"patterns": patterns, "kernel_ft": kft, "params": params,
                                                 "info": info})

    def run_batch(self, items: list[Prepared]) -> list[tuple[dict[str, np.ndarray], dict[str, Any]]]:
        from ..bragg import detect_batch

        p0 = items[0].payload
        return self.unpack(items, {}, detect_batch(_batch(items), p0["kernel_ft"], p0["params"]))

    process_safe = True
    # its cost per pattern hardly falls with the batch (one thread: 12.7 ms for one 256² pattern, about 10 ms
    # each in a batch of 8): waiting for more requests would mostly idle the worker, so a batch takes what is
    # queued when the worker is free (the serve section of benchmarks/RESULTS.md has rows with a 10 ms wait)
    default_max_wait_ms = 0.0

    def pack(self, items: list[Prepared], memo: dict[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        p0 = items[0].payload
        kft = p0["kernel_ft"]
        # the worker keeps the kernels it was sent (by the id of the parent's cached array, which this memo keeps
        # alive, so the id is not reused while it is here; the worker keeps more than this memo does)
        sent = memo.setdefault("kernels", OrderedDict())
        key = str(id(kft))
        arrays = {"patterns": _batch(items)}
        if sent.get(key) is kft:
            sent.move_to_end(key)
        else:
            sent[key] = arrays["kernel_ft"] = kft
            while len(sent) > _WORKER_KERNELS // 2:
                sent.popitem(last=False)
        return {"kernel": key, "params": dataclasses.asdict(p0["params"])}, arrays

    def run_packed(self, header: dict[str, Any], arrays: dict[str, np.ndarray],
                   state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        from ..bragg import DetectionParameters, detect_batch

        kernels = state.setdefault("kernels", OrderedDict())
        key = header["kernel"]
        if "kernel_ft" in arrays:
            kernels[key] = arrays["kernel_ft"]
            while len(kernels) > _WORKER_KERNELS:
                kernels.popitem(last=False)
        kernels.move_to_end(key)
        params = DetectionParameters(**{k: _tuples(v) for k, v in header["params"].items()})
        return {}, detect_batch(arrays["patterns"], kernels[key], params)

    def unpack(self, items: list[Prepared], header: dict[str, Any],
               arrays: dict[str, np.ndarray]) -> list[tuple[dict[str, np.ndarray], dict[str, Any]]]:
        res, start = [], 0
        for it in items:
            res.append((_pad_peaks(arrays, slice(start, start + it.n), ("qx", "qy", "intensity")),
                        it.payload["info"]))
            start += it.n
        return res


class FCUNetModel(ServedModel):
    """Bragg disks with the shipped FCU-Net (:meth:`FCUNetDetector.detect_batch`)."""

    name = "fcunet"
    inputs = DisksModel.inputs
    outputs = DisksModel.outputs[:3] + (
        TensorSpec("sigma", "FP64", (-1, -1), description="Monte-Carlo spread of the predicted amplitude (N, K)"),
        DisksModel.outputs[3],
    )
    parameters = {
        "q_pixel_inv_A": "detector pixel size in 1/Å (required)",
        "origin_px": "direct beam (qx, qy) in pixels (default: the probe's centre)",
        "min_intensity": "prediction threshold relative to (000) (default: the model card's)",
    }

    def __init__(self, device: str = "auto") -> None:
        super().__init__(device)
        self._detectors = _LRU(16)
        self._loaded: Any = None

    def load(self) -> None:
        from ..ml import torch_device
        from ..ml.fcunet import DEFAULT_WEIGHTS
        from ..ml.fcunet.detect import load_fcunet

        dev = torch_device(self.device)
        self._loaded = load_fcunet(None, device=dev)
        self.device = str(dev)
        self.card = {"weights": DEFAULT_WEIGHTS.name, **dict(self._loaded[1])}

    def example_parameters(self) -> dict[str, Any]:
        return {"q_pixel_inv_A": float(self.card["input"]["q_pixel_inv_A"])}

    def prepare(self, request: InferRequest) -> Prepared:
        from ..ml.fcunet.detect import fcunet_detector

        _unexpected(request.inputs, {"patterns", "probe"})
        opts = _parameter_overrides(request.parameters, set(self.parameters))
        if "q_pixel_inv_A" not in opts:
            raise ProtocolError("fcunet needs the parameter q_pixel_inv_A (the detector pixel size in 1/Å)")
        patterns = _patterns(request.inputs)
        probe = _probe(request.inputs, patterns.shape[1:])
        origin = opts.get("origin_px")
        if origin is not None:
            try:
                origin = (float(origin[0]), float(origin[1]))
            except (TypeError, ValueError, IndexError):
                raise ProtocolError(f"origin_px must be [qx, qy] in pixels, got {origin!r}") from None
        try:
            q = float(opts["q_pixel_inv_A"])
            mi = None if opts.get("min_intensity") is None else float(opts["min_intensity"])
        except (TypeError, ValueError):
            raise ProtocolError("q_pixel_inv_A and min_intensity must be numbers") from None
        if probe is None:  # the template comes from the patterns: no reuse
            det = fcunet_detector(patterns, None, q_pixel_inv_A=q, origin_px=origin, min_intensity=mi,
                                  device=self.device, loaded=self._loaded)
        else:
            det = self._detectors.get_or((_digest(probe), q, origin, mi), lambda: fcunet_detector(
                patterns, probe, q_pixel_inv_A=q, origin_px=origin, min_intensity=mi, device=self.device,
                loaded=self._loaded))
        info = {"q_pixel_inv_A": q, "origin_px": list(det.origin), "min_intensity": det.min_intensity}
        return Prepared((patterns.shape[1:], id(det)), patterns.shape[0],
                        {"patterns": patterns, "detector": det, "info": info})

    def run_batch(self, items: list[Prepared]) -> list[tuple[dict[str, np.ndarray], dict[str, Any]]]:
        p0 = items[0].payload
        batch = np.concatenate([it.payload["patterns"].astype(np.float32, copy=False) for it in items])
        out = p0["detector"].detect_batch(batch)
        res, start = [], 0
        for it in items:
            res.append((_pad_peaks(out, slice(start, start + it.n), ("qx", "qy", "intensity", "sigma")),
                        it.payload["info"]))
            start += it.n
        return res


class PhaseModel(ServedModel):
    """A block of patterns → phase image with a shipped phase model (:func:`phase_image`)."""

    name = "phase"
    batchable = False
    inputs = (TensorSpec("patterns", "FP32", (-1, -1, -1, -1),
                         description="a block of the scan (Rx, Ry, Qx, Qy); also FP64 or integer counts"),)
    outputs = (TensorSpec("image", "FP64", (-1, -1), description="one value per position (Rx, Ry)"),)
    parameters = {
        "model": "a shipped model: conv4d-mixed (default), linear-mixed, conv4d-mos2, linear-mos2",
        "origin_px": "direct beam (qx, qy) in pixels (default: measured on the mean pattern)",
        "pad": "how neighbourhoods continue past the block's edge (default: the card's)",
    }
    DEFAULT = "conv4d-mixed"

    def __init__(self, device: str = "auto") -> None:
        super().__init__(device)
        self._nets: dict[str, Any] = {}

    def load(self) -> None:
        from ..ml import torch_device
        from ..ml.phase import SHIPPED_MODELS, load_phase_model, shipped_model_path

        dev = torch_device(self.device)
        self.device = str(dev)
        for name in SHIPPED_MODELS:
            if "-" in name:  # "conv4d" and "linear" are the -mos2 files again
                net, card = load_phase_model(shipped_model_path(name))
                self._nets[name] = (net.to(dev).eval(), card)
        self.card = {"default": self.DEFAULT, "models": {k: dict(v[1]) for k, v in self._nets.items()}}

    def example_inputs(self) -> dict[str, np.ndarray]:
        p = _example_patterns(25, 32) * np.random.default_rng(0).uniform(0.5, 1.5, (25, 1, 1)).astype(np.float32)
        return {"patterns": p.reshape(5, 5, 32, 32)}

    def prepare(self, request: InferRequest) -> Prepared:
        _unexpected(request.inputs, {"patterns"})
        opts = _parameter_overrides(request.parameters, set(self.parameters))
        name = opts.get("model", self.DEFAULT)
        name = {"conv4d": "conv4d-mos2", "linear": "linear-mos2"}.get(name, name)
        if name not in self._nets:
            raise ProtocolError(f"phase model {name!r} is not served; choose one of {sorted(self._nets)}")
        patterns = _patterns(request.inputs, ndim=4)
        origin = opts.get("origin_px")
        return Prepared(None, 1, {"patterns": patterns, "net": self._nets[name], "name": name,
                                  "origin_px": None if origin is None else tuple(float(v) for v in origin),
                                  "pad": opts.get("pad")})

    def run_batch(self, items: list[Prepared]) -> list[tuple[dict[str, np.ndarray], dict[str, Any]]]:
        from ..datacube import DataCube
        from ..ml.phase import phase_image

        res = []
        for it in items:
            p = it.payload
            img = phase_image(DataCube(p["patterns"]), p["net"], pad=p["pad"], origin_px=p["origin_px"],
                              device=self.device, scheduler="inline", progress=False)
            res.append(({"image": img.image}, {"model": p["name"], "units": img.units, "label": img.label_name}))
        return res


def _spot_lists(ins: dict[str, np.ndarray], model: ServedModel) -> tuple[np.ndarray, ...]:
    """The checked NaN-padded peak lists ``qx``, ``qy``, ``intensity`` (N, K) and ``count`` (N) of
    a request to ``model`` (whose inputs are those and perhaps more, all required)."""
    names = {s.name for s in model.inputs}
    _unexpected(ins, names)
    missing = sorted(names - set(ins))
    if missing:
        raise ProtocolError(f"input(s) {missing} missing; {model.name} takes {sorted(names)}")
    qx, qy, inten = (np.asarray(ins[k], dtype=np.float64) for k in ("qx", "qy", "intensity"))
    count = ins["count"]
    if qx.ndim != 2 or qy.shape != qx.shape or inten.shape != qx.shape:
        raise ProtocolError(f"qx, qy and intensity must have one shape (N, K), got {list(qx.shape)}, "
                            f"{list(qy.shape)}, {list(inten.shape)}")
    if count.dtype.kind not in "ui" or count.shape != (qx.shape[0],):
        raise ProtocolError(f"count must be integers of shape [{qx.shape[0]}], got {datatype_of(count.dtype)} "
                            f"{list(count.shape)}")
    if (count < 0).any() or (count > qx.shape[1]).any():
        raise ProtocolError(f"count must lie in [0, {qx.shape[1]}] (the padded width K)")
    take = np.arange(qx.shape[1]) < count[:, None]
    for name, a in (("qx", qx), ("qy", qy), ("intensity", inten)):
        if not np.isfinite(a[take]).all():
            raise ProtocolError(f"input {name!r} has NaN or infinite values among its first count peaks")
    return qx, qy, inten, count


class StrainModel(ServedModel):
    """Peaks → strain against a given reference lattice (:func:`distill4d.lattice.strain_map`)."""

    name = "strain"
    batchable = False
    inputs = (
        TensorSpec("qx", "FP64", (-1, -1), description="peak positions (pixels), NaN-padded (N, K)"),
        TensorSpec("qy", "FP64", (-1, -1), description="peak positions (pixels), NaN-padded (N, K)"),
        TensorSpec("intensity", "FP64", (-1, -1), description="peak intensities (N, K)"),
        TensorSpec("count", "INT64", (-1,), description="peaks per pattern (N)"),
        TensorSpec("reference", "FP64", (3, 2), description="reference lattice: rows origin, u, v (pixels)"),
    )
    outputs = tuple(TensorSpec(k, "FP64", (-1,), description=d) for k, d in (
        ("eps_xx", "strain (fraction)"), ("eps_yy", "strain (fraction)"), ("eps_xy", "strain (fraction)"),
        ("theta", "rotation (radians)"))) + (TensorSpec("mask", "BOOL", (-1,), description="True: no lattice fit"),)
    parameters = {"min_indexed_fraction": "fraction of a pattern's peaks that must lie on the lattice (default 0.25)",
                  "rotation_rad": "angle of the reporting frame's x axis (default 0)"}

    def __init__(self, device: str = "auto") -> None:
        super().__init__(device)
        self.device = "cpu"
        self.card = {"model": "strain", "method": "lattice fit of the peaks, strain against the reference "
                     "(distill4d.lattice.strain_map)", "weights": None}

    def example_inputs(self) -> dict[str, np.ndarray]:
        h, k = np.meshgrid(np.arange(-2, 3), np.arange(-2, 3), indexing="ij")
        qx = (32 + 10 * h).ravel()[None].astype(float)
        qy = (32 + 10 * k).ravel()[None].astype(float)
        return {"qx": qx, "qy": qy, "intensity": np.ones_like(qx), "count": np.array([qx.shape[1]]),
                "reference": np.array([[32.0, 32.0], [10.0, 0.0], [0.0, 10.0]])}

    def prepare(self, request: InferRequest) -> Prepared:
        qx, qy, inten, count = _spot_lists(request.inputs, self)
        opts = _parameter_overrides(request.parameters, set(self.parameters))
        ins = request.inputs
        ref = np.asarray(ins["reference"], dtype=np.float64)
        if ref.shape != (3, 2) or not np.isfinite(ref).all() or abs(np.linalg.det(ref[1:])) < 1e-9:
            raise ProtocolError(f"reference must be a finite (3, 2) array: rows origin, u, v (pixels) with u, v "
                                f"independent; got shape {list(ref.shape)}")
        return Prepared(None, qx.shape[0], {"qx": qx, "qy": qy, "intensity": inten, "count": count, "ref": ref,
                                            "opts": opts})

    def run_batch(self, items: list[Prepared]) -> list[tuple[dict[str, np.ndarray], dict[str, Any]]]:
        from ..bragg import BraggPeaks
        from ..lattice import Basis, strain_map

        res = []
        for it in items:
            p = it.payload
            peaks = BraggPeaks.from_padded(p["qx"][None], p["qy"][None], p["intensity"][None], p["count"][None])
            ref = p["ref"]
            smap = strain_map(peaks, Basis(ref[0], ref[1], ref[2]),
                              rotation_rad=float(p["opts"].get("rotation_rad", 0.0)),
                              min_indexed_fraction=float(p["opts"].get("min_indexed_fraction", 0.25)))
            res.append(({k: np.asarray(getattr(smap, k))[0] for k in ("eps_xx", "eps_yy", "eps_xy", "theta", "mask")},
                        {}))
        return res


class SegmentModel(ServedModel):
    """An image or a series → domain labels and fractions (:func:`distill4d.segment.segment`,
    the methods that need no training: peaks, nmf, kmeans, pca-gmm)."""

    name = "segment"
    batchable = False
    inputs = (TensorSpec("images", "FP32", (-1, -1, -1), description="an image (H, W) or a series (T, H, W)"),)
    outputs = (
        TensorSpec("labels", "INT32", (-1, -1, -1), description="variant of every pixel (T, H, W); -1 undecided"),
        TensorSpec("fractions", "FP64", (-1, -1), description="area fraction of every variant per frame (T, K)"),
        TensorSpec("variant_angles_deg", "FP64", (-1,), description="each variant's dominant orientation (degrees)"),
    )
    parameters = {"method": "peaks (default), nmf, kmeans or pca-gmm", "domains": "number of variants K (default: found)",
                  "window_px": "window width in pixels (default 128)", "step_px": "window step in pixels (default 32)",
                  "refine": "walls placed at pixel precision by fringe energy (default true)"}
    _methods = ("peaks", "nmf", "kmeans", "pca-gmm")

    def __init__(self, device: str = "auto") -> None:
        super().__init__(device)
        self.device = "cpu"
        self.card = {"model": "segment", "method": "windowed FFT features and an unsupervised factorisation "
                     "(distill4d.segment.segment)", "weights": None}

    def example_inputs(self) -> dict[str, np.ndarray]:
        y, x = np.mgrid[:96, :96]
        img = np.where(x < 48, np.sin(2 * np.pi * x / 8.0), np.sin(2 * np.pi * y / 8.0))
        return {"images": img.astype(np.float32)}

    def example_parameters(self) -> dict[str, Any]:
        return {"domains": 2, "window_px": 32, "step_px": 8}

    def prepare(self, request: InferRequest) -> Prepared:
        from ..segment.windows import check_images

        ins = request.inputs
        _unexpected(ins, {"images"})
        if "images" not in ins:
            raise ProtocolError("input 'images' missing: an image (H, W) or a series (T, H, W)")
        opts = _parameter_overrides(request.parameters, set(self.parameters))
        method = str(opts.get("method", "peaks"))
        if method not in self._methods:
            raise ProtocolError(f"method must be one of {list(self._methods)} (the autoencoder trains: use a job or "
                                f"distill4d segment), got {method!r}")
        try:
            images = check_images(np.asarray(ins["images"], dtype=np.float32))
            kw: dict[str, Any] = {k: int(opts[k]) for k in ("domains", "window_px", "step_px") if k in opts}
        except (Distill4dError, TypeError, ValueError) as err:
            raise ProtocolError(str(err)) from None
        if "refine" in opts:
            if not isinstance(opts["refine"], bool):
                raise ProtocolError(f"parameter refine must be true or false, got {opts['refine']!r}")
            kw["refine"] = opts["refine"]
        return Prepared(None, images.shape[0], {"images": images, "method": method, "kw": kw})

    def run_batch(self, items: list[Prepared]) -> list[tuple[dict[str, np.ndarray], dict[str, Any]]]:
        from ..segment import segment

        res = []
        for it in items:
            p = it.payload
            try:
                seg = segment(p["images"], p["method"], **p["kw"])
            except Distill4dError as err:
                raise ProtocolError(str(err)) from None
            labels = np.asarray(seg.labels, dtype=np.int32).reshape(p["images"].shape)
            res.append(({"labels": labels, "fractions": np.asarray(seg.fractions, dtype=np.float64),
                         "variant_angles_deg": np.asarray(seg.variant_angles_deg, dtype=np.float64)},
                        {"method": p["method"], **p["kw"]}))
        return res


class IdentifyModel(ServedModel):
    """Spot lists → crystal system, space groups and lattice parameters per pattern
    (:func:`distill4d.identify.predict_spots` with the shipped identifier)."""

    name = "identify"
    inputs = (
        TensorSpec("qx", "FP64", (-1, -1), description="spot positions (1/Å from the direct beam), NaN-padded (N, K)"),
        TensorSpec("qy", "FP64", (-1, -1), description="spot positions (1/Å from the direct beam), NaN-padded (N, K)"),
        TensorSpec("intensity", "FP64", (-1, -1), description="spot intensities (N, K)"),
        TensorSpec("count", "INT64", (-1,), description="spots per pattern (N)"),
    )
    outputs = (
        TensorSpec("valid", "BOOL", (-1,), description="whether the pattern had enough spots to be identified"),
        TensorSpec("system", "INT64", (-1,), description="crystal system (index into the card's systems; -1 not valid)"),
        TensorSpec("system_proba", "FP64", (-1, 7), description="probability of each crystal system"),
        TensorSpec("space_group", "INT64", (-1, -1), description="the top k space groups"),
        TensorSpec("space_group_proba", "FP64", (-1, -1), description="their probabilities"),
        TensorSpec("lattice", "FP64", (-1, 6), description="a, b, c (Å), alpha, beta, gamma (degrees)"),
        TensorSpec("lattice_std", "FP64", (-1, 6), description="the model's spread of the lattice parameters"),
    )
    parameters = {"k": "space groups to return (default 3)", "min_spots": "spots besides the direct beam a pattern "
                  "needs (default 3)", "direct_beam_inv_A": "spots nearer the origin are the direct beam (default 0.05)"}

    def __init__(self, device: str = "auto") -> None:
        super().__init__(device)
        self.device = "cpu"
        self.model: Any = None

    def load(self) -> None:
        from pathlib import Path

        from ..identify import load_default
        from ..identify.apply import default_model_path
        from ..ml import read_card
        from ..simulate.spots import SYSTEMS

        self.model = load_default()
        weights = Path(str(default_model_path()))
        self.card = {"weights": weights.name, **dict(read_card(weights, "identify")), "systems": list(SYSTEMS)}

    def example_inputs(self) -> dict[str, np.ndarray]:
        h, k = np.meshgrid(np.arange(-2, 3), np.arange(-2, 3), indexing="ij")
        qx = (0.25 * h + 0.125 * k).ravel()[None].astype(float)
        qy = (0.2165 * k).ravel()[None].astype(float)
        return {"qx": qx, "qy": qy, "intensity": np.exp(-np.hypot(qx, qy)), "count": np.array([qx.shape[1]])}

    def prepare(self, request: InferRequest) -> Prepared:
        qx, qy, inten, count = _spot_lists(request.inputs, self)
        opts = _parameter_overrides(request.parameters, set(self.parameters))
        try:
            kw = {"k": int(opts.get("k", 3)), "min_spots": int(opts.get("min_spots", 3)),
                  "direct_beam_inv_A": float(opts.get("direct_beam_inv_A", 0.05))}
        except (TypeError, ValueError) as err:
            raise ProtocolError(f"bad parameter: {err}") from None
        if kw["k"] < 1 or kw["min_spots"] < 1 or not (0 <= kw["direct_beam_inv_A"] < 10):
            raise ProtocolError(f"k and min_spots must be >= 1 and direct_beam_inv_A in [0, 10) 1/Å, got {kw}")
        return Prepared(tuple(sorted(kw.items())), qx.shape[0],
                        {"qx": qx, "qy": qy, "intensity": inten, "count": count, "kw": kw})

    def run_batch(self, items: list[Prepared]) -> list[tuple[dict[str, np.ndarray], dict[str, Any]]]:
        from ..identify import predict_spots

        width = max(it.payload["qx"].shape[1] for it in items)

        def padded(key: str) -> np.ndarray:
            return np.concatenate([np.pad(it.payload[key], ((0, 0), (0, width - it.payload[key].shape[1])),
                                          constant_values=np.nan) for it in items])

        count = np.concatenate([it.payload["count"] for it in items])
        try:
            pred = predict_spots(padded("qx"), padded("qy"), padded("intensity"), count, self.model,
                                 **items[0].payload["kw"])
        except Distill4dError as err:
            raise ProtocolError(str(err)) from None
        keys = [s.name for s in self.outputs]
        res, start = [], 0
        for it in items:
            rows = slice(start, start + it.n)
            res.append(({k: np.asarray(pred[k][rows]) for k in keys}, {}))
            start += it.n
        return res

    def runs_inline(self, item: Prepared) -> bool:
        return item.n <= 64


_MODELS: dict[str, type[ServedModel]] = {"disks": DisksModel, "fcunet": FCUNetModel, "phase": PhaseModel,
                                         "strain": StrainModel, "segment": SegmentModel, "identify": IdentifyModel}


def build_model(name: str, device: str = "auto") -> ServedModel:
    """The served model ``name`` (not loaded yet); Distill4dError for an unknown name."""
    if name not in _MODELS:
        raise Distill4dError(f"unknown model {name!r}; the server offers {', '.join(MODEL_NAMES)}")
    return _MODELS[name](device)
