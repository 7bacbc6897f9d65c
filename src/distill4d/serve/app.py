"""The FastAPI application: Open Inference Protocol (V2) routes, jobs, auth, limits, metrics, logs.

:func:`create_app` builds it from a :class:`ServeConfig`; ``distill4d serve`` runs it under
uvicorn. Models load in a background thread after start: ``/v2/health/live`` answers at
once, ``/v2/health/ready`` only once every model is loaded and warmed up.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import json
import logging
import os
import sys
import threading
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from .._version import __version__
from ..errors import Distill4dError
from .batching import Batcher
from .config import ServeConfig, keep_freed_memory, one_blas_thread
from .jobs import JobStore
from .metrics import Metrics
from .models import ServedModel, build_model
from .protocol import ProtocolError, decode_request, encode_response

__all__ = ["create_app", "keep_freed_memory"]

_LOG = logging.getLogger("distill4d.serve")
_OPEN = ("/v2/health/live", "/v2/health/ready")
#: Binary requests up to this size (JSON ones up to the second) are decoded and, when their setup is
#: cached, prepared on the event loop; larger ones in a worker thread.
_INLINE_BYTES = 4 * 2**20
_INLINE_JSON_BYTES = 256 * 2**10
#: sys.setswitchinterval of the server (s)
_SWITCH_INTERVAL_S = 0.0005


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _server_timing(t_gate: float, t_start: float, t_read: float, t_prep: float, run: dict[str, float],
                   t_back: float, t_end: float) -> str:
    """The ``Server-Timing`` header of an inference (ms): from the request's headers to the handler
    (auth, routing, the framework), reading the body, decoding and checking it,
    waiting for its batch (queue and hand-off to the worker), the model call (and the CPU time of its
    thread: less than the call's time when the machine's other work took the core meanwhile), the
    hand-back, encoding."""
    start, end = run.get("start", t_prep), run.get("end", t_back)
    parts = (("route", t_start - t_gate), ("read", t_read - t_start), ("prepare", t_prep - t_read),
             ("wait", start - t_prep), ("model", end - start), ("model-cpu", run.get("cpu", 0.0)),
             ("return", t_back - end), ("encode", t_end - t_back))
    return ", ".join(f"{k};dur={1000 * v:.2f}" for k, v in parts)


def _route_label(path: str) -> tuple[str, str]:
    parts = path.strip("/").split("/")
    if parts[:2] == ["v2", "models"] and len(parts) >= 3:
        return ("infer" if parts[-1] == "infer" else "model", parts[2])
    if parts[:2] == ["v2", "health"]:
        return "health", ""
    if parts[:2] == ["v1", "jobs"]:
        return "jobs", ""
    return (parts[0] if parts and parts[0] in ("metrics", "v2") else "other"), ""


class _Gate:
    """Pure ASGI middleware: bearer token, Content-Length limit, JSON access log and request metrics."""

    def __init__(self, app: Any, config: ServeConfig, metrics: Metrics) -> None:
        self.app = app
        self.config = config
        self.metrics = metrics
        self.token = config.token.encode() if config.token else None

    async def _reply(self, send: Any, status: int, message: str, extra: list | None = None) -> None:
        body = json.dumps({"error": message}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()), *(extra or [])]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        scope.setdefault("state", {})["distill4d_t0"] = t0  # for the Server-Timing of an inference
        path = scope["path"]
        status = [500]

        async def send_status(msg: dict) -> None:
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
            await send(msg)

        headers = dict(scope["headers"])
        try:
            if self.token is not None and path not in _OPEN:
                auth = headers.get(b"authorization", b"")
                if not (auth[:7].lower() == b"bearer " and hmac.compare_digest(auth[7:].strip(), self.token)):
                    return await self._reply(send_status, 401, "missing or wrong bearer token (Authorization: "
                                             "Bearer TOKEN)", [(b"www-authenticate", b"Bearer")])
            length = headers.get(b"content-length")
            if length is not None:
                try:
                    n = int(length)
                except ValueError:
                    return await self._reply(send_status, 400, "Content-Length is not an integer")
                if n > self.config.max_body_bytes:
                    return await self._reply(send_status, 413, f"request body of {n} bytes is larger than the "
                                             f"server's limit of {self.config.max_body_bytes} bytes")
            await self.app(scope, receive, send_status)
        finally:
            seconds = time.perf_counter() - t0
            route, model = _route_label(path)
            self.metrics.request(route, model, status[0], seconds)
            if _LOG.isEnabledFor(logging.INFO) and route != "health":
                client = scope.get("client") or ("", 0)
                _LOG.info("request", extra={"method": scope["method"], "path": path, "status": status[0],
                                            "ms": round(1000 * seconds, 2), "client": client[0]})


async def _read_body(request: Request, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ProtocolError(f"request body is larger than the server's limit of {limit} bytes", 413)
        chunks.append(chunk)
    return b"".join(chunks)


class _State:
    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.models: dict[str, ServedModel] = {}
        self.batchers: dict[str, Batcher] = {}
        self.ready = False
        self.error: str | None = None
        self.jobs: JobStore | None = None

    def load(self) -> None:
        """Load and warm up every model (in a thread), then resume the unfinished jobs."""
        try:
            for name in self.config.models:
                t0 = time.perf_counter()
                m = build_model(name, self.config.device)
                m.load()
                m.warmup()
                if self.config.batch_processes and m.process_safe and m.batchable:
                    from .worker import WorkerPool

                    m.pool = WorkerPool(name, self.config.device, workers=self.config.batch_workers)
                self.models[name] = m
                _LOG.info("model ready", extra={"model": name, "seconds": round(time.perf_counter() - t0, 3),
                                                "device": m.device})
            if self.config.state_dir is not None:
                self.jobs = JobStore(self.config.state_dir, roots=tuple(self.config.data_roots),
                                     device=self.config.device, workers=self.config.job_workers,
                                     models=self.models)
                resumed = self.jobs.resume_all()
                if resumed:
                    _LOG.info("jobs resumed", extra={"jobs": resumed})
            # what is loaded now lives as long as the server: out of the garbage collector's way, so that a
            # full collection during a request walks only that request's objects (a shorter tail)
            gc.collect()
            gc.freeze()
            blas = one_blas_thread()
            # the batch worker hands the GIL back and forth with the event loop around every BLAS and
            # FFT call; a waiting thread gets it after at most this many seconds (Python's default 5 ms)
            sys.setswitchinterval(_SWITCH_INTERVAL_S)
            self.ready = True
            torch = sys.modules.get("torch")  # the thread settings the models run with, for comparisons
            _LOG.info("ready", extra={"models": list(self.models), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                                      "blas_threads": blas,
                                      "torch_threads": torch.get_num_threads() if torch is not None else None})
        except Exception as err:  # noqa: BLE001 - the server stays up, not ready, and says why
            self.error = f"{type(err).__name__}: {err}"
            _LOG.exception("loading the models failed; the server will not become ready")


def create_app(config: ServeConfig | None = None) -> FastAPI:
    """The inference server's ASGI application for ``config`` (default: every model, no auth)."""
    config = config or ServeConfig()
    state = _State(config)

    async def lifespan(app: FastAPI):  # noqa: ANN202
        if config.keep_freed_memory:
            keep_freed_memory()
        loop = asyncio.get_running_loop()
        threading.Thread(target=state.load, name="load-models", daemon=True).start()
        app.state.loop = loop
        yield
        for b in state.batchers.values():
            await b.close()
        if state.jobs is not None:
            state.jobs.close()
        for m in state.models.values():
            if m.pool is not None:
                m.pool.close()

    app = FastAPI(title="distill4d inference server", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.serve = state

    @app.exception_handler(ProtocolError)
    async def _protocol_error(request: Request, err: ProtocolError) -> JSONResponse:
        return _error(err.status, str(err))

    @app.exception_handler(Distill4dError)
    async def _user_error(request: Request, err: Distill4dError) -> JSONResponse:
        return _error(422, str(err))

    def model_or_404(name: str) -> ServedModel | JSONResponse:
        if name in state.models:
            return state.models[name]
        if not state.ready and name in config.models:
            return _error(503, f"model {name!r} is loading; wait for /v2/health/ready")
        return _error(404, f"model {name!r} is not served here; served: {', '.join(config.models)}")

    # ------------------------------------------------------------------ health and metadata
    @app.get("/v2/health/live")
    async def live() -> dict:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        if state.ready:
            return JSONResponse({"ready": True})
        return JSONResponse({"ready": False, **({"error": state.error} if state.error else {})}, status_code=503)

    @app.get("/v2")
    async def server_metadata() -> dict:
        return {"name": "distill4d", "version": __version__,
                "extensions": ["binary_tensor_data", "npy_body", "model_cards", "jobs"]}

    @app.get("/v2/models")
    async def list_models() -> dict:
        return {"models": [{"name": n, "ready": n in state.models, "versions": ["1"], "platform": "distill4d",
                            "card": state.models[n].card if n in state.models else None} for n in config.models]}

    @app.get("/v2/models/{name}")
    async def model_metadata(name: str) -> Any:
        m = model_or_404(name)
        return m if isinstance(m, JSONResponse) else m.metadata()

    @app.get("/v2/models/{name}/ready")
    async def model_ready(name: str) -> Any:
        m = model_or_404(name)
        return m if isinstance(m, JSONResponse) else {"name": name, "ready": True}

    # ------------------------------------------------------------------ inference
    @app.post("/v2/models/{name}/infer")
    async def infer(name: str, request: Request) -> Response:
        m = model_or_404(name)
        if isinstance(m, JSONResponse):
            return m
        batcher = state.batchers.get(name)
        if batcher is None:
            batcher = state.batchers[name] = Batcher(
                m, max_batch_size=config.max_batch_size,
                max_wait_ms=m.default_max_wait_ms if config.max_wait_ms is None else config.max_wait_ms,
                # with worker processes, two batches per process may be outstanding: the next one waits in
                # its pipe while it runs one
                workers=config.batch_workers * (2 if m.pool is not None else 1), metrics=state.metrics)
        batcher.open_requests += 1  # before any await: the batcher sees requests still being read
        try:
            return await _infer(m, batcher, request)
        finally:
            batcher.open_requests -= 1

    async def _infer(m: ServedModel, batcher: Batcher, request: Request) -> Response:
        name = m.name
        t_start = time.perf_counter()
        t_gate = request.scope.get("state", {}).get("distill4d_t0", t_start)
        body = await _read_body(request, config.max_body_bytes)
        t_read = time.perf_counter()
        headers = {k.lower(): v for k, v in request.headers.items()}
        first = m.inputs[0].name

        query = dict(request.query_params)

        def prepare(req: Any = None) -> Any:
            try:
                req = req or decode_request(body, headers.get("content-type"), headers, query, first)
                return req, m.prepare(req)
            except ProtocolError:
                raise
            except Distill4dError as err:
                raise ProtocolError(str(err)) from None

        # a small request whose setup is cached is decoded and prepared here (no thread hand-offs, which
        # cost milliseconds on a busy machine); anything else in a worker thread
        timeout = f"the inference took longer than the server's timeout of {config.request_timeout_s:g} s"
        json_body = "inference-header-content-length" not in headers and "npy" not in headers.get("content-type", "") \
            and "npz" not in headers.get("content-type", "")
        item = None
        try:
            if len(body) <= (_INLINE_JSON_BYTES if json_body else _INLINE_BYTES):
                req = decode_request(body, headers.get("content-type"), headers, query, first)
                item = m.prepare_cached(req)
                if item is None:
                    req, item = await asyncio.wait_for(run_in_threadpool(prepare, req), config.request_timeout_s)
            else:
                req, item = await asyncio.wait_for(run_in_threadpool(prepare), config.request_timeout_s)
        except asyncio.TimeoutError:
            return _error(504, timeout)
        t_prep = time.perf_counter()
        try:
            outputs, params = await asyncio.wait_for(batcher.submit(item), config.request_timeout_s)
        except asyncio.TimeoutError:
            return _error(504, timeout)
        except Distill4dError as err:
            raise ProtocolError(str(err)) from None
        t_back = time.perf_counter()
        body_out, hdrs = encode_response(name, outputs, params, req.id, req.binary_outputs)
        t_end = time.perf_counter()
        hdrs["server-timing"] = _server_timing(t_gate, t_start, t_read, t_prep, item.timing, t_back, t_end)
        return Response(body_out, headers=hdrs)

    # ------------------------------------------------------------------ jobs
    def jobs_or_error() -> JobStore | JSONResponse:
        if state.jobs is not None:
            return state.jobs
        if config.state_dir is None:
            return _error(404, "this server runs no jobs: start it with --state-dir DIR")
        return _error(503, "the server is loading; wait for /v2/health/ready")

    @app.post("/v1/jobs", status_code=202)
    async def submit_job(request: Request) -> Response:
        store = jobs_or_error()
        if isinstance(store, JSONResponse):
            return store
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        body = await _read_body(request, config.max_body_bytes)
        if ctype in ("application/x-hdf5", "application/octet-stream"):
            if not body.startswith(b"\x89HDF\r\n\x1a\n"):
                raise ProtocolError("the uploaded body is not an HDF5 file")
            q = dict(request.query_params)
            try:
                params = json.loads(q.get("parameters", "{}"))
            except json.JSONDecodeError as err:
                raise ProtocolError(f"the query parameter 'parameters' is not JSON: {err}") from None
            job = await run_in_threadpool(store.submit, q.get("model", "disks"), upload=body,
                                          dataset=q.get("dataset"), parameters=params)
        else:
            try:
                doc = json.loads(body or b"{}")
            except json.JSONDecodeError as err:
                raise ProtocolError(f"the job request is not JSON: {err}", 400) from None
            if not isinstance(doc, dict):
                raise ProtocolError("the job request must be a JSON object", 400)
            unknown = sorted(set(doc) - {"model", "path", "probe", "dataset", "parameters"})
            if unknown:
                raise ProtocolError(f"unknown job field(s) {unknown}; a job takes model, path, probe, dataset, "
                                    "parameters")
            try:
                job = await run_in_threadpool(store.submit, doc.get("model", "disks"), path=doc.get("path"),
                                              probe=doc.get("probe"), dataset=doc.get("dataset"),
                                              parameters=doc.get("parameters"))
            except Distill4dError as err:
                status = 403 if "outside the server's data roots" in str(err) else 422
                return _error(status, str(err))
        return JSONResponse(job, status_code=202, headers={"location": f"/v1/jobs/{job['id']}"})

    @app.get("/v1/jobs/{job_id}")
    async def get_job(job_id: str) -> Response:
        store = jobs_or_error()
        if isinstance(store, JSONResponse):
            return store
        try:
            return JSONResponse(store.get(job_id))
        except KeyError:
            return _error(404, f"no job {job_id}")

    @app.get("/v1/jobs/{job_id}/result")
    async def job_result(job_id: str) -> Response:
        store = jobs_or_error()
        if isinstance(store, JSONResponse):
            return store
        try:
            path = store.result_path(job_id)
        except KeyError:
            return _error(404, f"no job {job_id}")
        except Distill4dError as err:
            return _error(409, str(err))
        return FileResponse(path, media_type="application/x-hdf5", filename=f"{job_id}.h5")

    @app.delete("/v1/jobs/{job_id}")
    async def delete_job(job_id: str) -> Response:
        store = jobs_or_error()
        if isinstance(store, JSONResponse):
            return store
        try:
            job = await run_in_threadpool(store.delete, job_id)
        except KeyError:
            return _error(404, f"no job {job_id}")
        # a running job stops within about one tile's time: 202 (cancelling), then GET says cancelled
        return JSONResponse(job, status_code=202 if job["status"] == "cancelling" else 200)

    # ------------------------------------------------------------------ metrics
    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(state.metrics.render(), media_type="text/plain; version=0.0.4")

    app.add_middleware(_Gate, config=config, metrics=state.metrics)
    return app
