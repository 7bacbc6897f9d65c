"""Jobs for whole scans: a job store on disk, run through the engine, resumable after a restart.

Layout of the state directory::

    jobs/<id>/job.json       the job: model, input, parameters, status, progress, result, error
    jobs/<id>/checkpoint/    the engine's finished tiles (``KeepCheckpoint``), removed when done
    jobs/<id>/result.h5      the result (BraggPeaks HDF5, as ``distill4d disks`` writes)
    uploads/<id>.h5          an uploaded HDF5 input

A job runs ``find_bragg_disks`` (``disks``) or ``find_bragg_disks_fcunet`` (``fcunet``) with
``checkpoint=KeepCheckpoint(jobs/<id>/checkpoint)``; the job key the engine checks is the
method's own. When the server starts, every job that was queued or running is queued again,
and its finished tiles are reused. Progress is the fraction of the checkpoint's tiles written.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .._atomic import atomic_write_bytes
from ..errors import Distill4dError

__all__ = ["JOB_MODELS", "JobStore", "resolve_data_path"]

#: Models a job can run over a whole scan.
JOB_MODELS = ("disks", "fcunet")
_LOG = logging.getLogger("distill4d.serve")
_ID_CHARS = set("0123456789abcdef")


def resolve_data_path(path: str, roots: tuple[Path, ...]) -> Path:
    """``path`` (absolute, or relative to the first root) resolved, if it lies inside one of ``roots``.

    Symbolic links are followed before the check, so no link or ``..`` leads outside;
    Distill4dError otherwise (and when no root is configured).
    """
    if not roots:
        raise Distill4dError("this server reads no files: start it with --data-root DIR to allow paths")
    if not isinstance(path, str) or not path or "\x00" in path:
        raise Distill4dError(f"path must be a non-empty string, got {path!r}")
    p = Path(path)
    p = (p if p.is_absolute() else roots[0] / p).resolve()
    for root in roots:
        if p.is_relative_to(root.resolve()):
            if not p.is_file():
                raise Distill4dError(f"{path} is not a file under the data roots")
            return p
    raise Distill4dError(f"{path} is outside the server's data roots; paths must lie under a --data-root")


class JobStore:
    """Jobs on disk under ``state_dir``, run one at a time (``workers``) in threads."""

    def __init__(self, state_dir: Path, *, roots: tuple[Path, ...] = (), device: str = "auto",
                 workers: int = 1, models: dict[str, Any] | None = None) -> None:
        self.dir = Path(state_dir) / "jobs"
        self.uploads = Path(state_dir) / "uploads"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.uploads.mkdir(parents=True, exist_ok=True)
        self.roots = roots
        self.device = device
        self.models = models or {}
        self._lock = threading.Lock()
        self._cancelled: set[str] = set()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="job")

    # ------------------------------------------------------------------ records
    def _file(self, job_id: str) -> Path:
        if not isinstance(job_id, str) or len(job_id) != 32 or not set(job_id) <= _ID_CHARS:
            raise KeyError(job_id)
        return self.dir / job_id / "job.json"

    def _write(self, job: dict[str, Any]) -> None:
        job["updated"] = time.time()
        with self._lock:
            f = self._file(job["id"])
            if f.parent.exists():
                atomic_write_bytes(f, json.dumps(job, indent=1).encode())

    def get(self, job_id: str) -> dict[str, Any]:
        """The job record with its current progress (KeyError when there is no such job)."""
        f = self._file(job_id)
        try:
            job = json.loads(f.read_text())
        except FileNotFoundError:
            raise KeyError(job_id) from None
        if job["status"] in ("queued", "running"):
            job["progress"] = self._progress(job_id)
        return job

    def _progress(self, job_id: str) -> dict[str, Any]:
        ck = self.dir / job_id / "checkpoint"
        try:
            total = len(json.loads((ck / "manifest.json").read_text())["tiles"])
        except (OSError, ValueError, KeyError):
            return {"tiles_done": 0, "tiles_total": None, "fraction": 0.0}
        done = len(list(ck.glob("tile_*.npz")))
        return {"tiles_done": done, "tiles_total": total, "fraction": done / total if total else 0.0}

    # ------------------------------------------------------------------ submit / resume
    def submit(self, model: str, *, path: str | None = None, upload: bytes | None = None,
               probe: str | None = None, dataset: str | None = None,
               parameters: dict[str, Any] | None = None) -> dict[str, Any]:
        """Create a job (Distill4dError for a bad model, path or parameter) and queue it."""
        if model not in JOB_MODELS:
            raise Distill4dError(f"jobs run {', '.join(JOB_MODELS)}; got model {model!r}")
        if model not in self.models:
            raise Distill4dError(f"model {model!r} is not loaded on this server (see --models)")
        params = dict(parameters or {})
        allowed = {"kind", "radius_px", "min_spacing_px", "min_relative_intensity", "max_peaks", "subpixel"} \
            if model == "disks" else {"q_pixel_inv_A", "min_intensity"}
        unknown = sorted(set(params) - allowed)
        if unknown:
            raise Distill4dError(f"unknown job parameter(s) {unknown}; {model} jobs take {sorted(allowed)}")
        job_id = uuid.uuid4().hex
        if upload is not None:
            src = self.uploads / f"{job_id}.h5"
            atomic_write_bytes(src, upload)
            input_path = str(src)
        elif path is not None:
            input_path = str(resolve_data_path(path, self.roots))
        else:
            raise Distill4dError("a job needs a 'path' on a data root or an uploaded HDF5 body")
        probe_path = str(resolve_data_path(probe, self.roots)) if probe else None
        (self.dir / job_id).mkdir(parents=True)
        job = {"id": job_id, "model": model, "input": input_path, "dataset": dataset, "probe": probe_path,
               "parameters": params, "status": "queued", "created": time.time(), "result": None,
               "error": None, "starts": 0}
        self._write(job)
        self._pool.submit(self._run, job_id)
        return self.get(job_id)

    def resume_all(self) -> list[str]:
        """Queue again every job that was queued or running when the server stopped."""
        ids = []
        for f in sorted(self.dir.glob("*/job.json"), key=lambda p: p.stat().st_mtime):
            try:
                job = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            if job.get("status") in ("queued", "running"):
                job["status"] = "queued"
                self._write(job)
                self._pool.submit(self._run, job["id"])
                ids.append(job["id"])
        return ids

    def delete(self, job_id: str) -> dict[str, Any]:
        """Cancel a job and delete its files (a running job's tile in progress finishes first)."""
        job = self.get(job_id)
        self._cancelled.add(job_id)
        shutil.rmtree(self.dir / job_id, ignore_errors=True)
        (self.uploads / f"{job_id}.h5").unlink(missing_ok=True)
        job["status"] = "deleted"
        return job

    # ------------------------------------------------------------------ running
    def _run(self, job_id: str) -> None:
        if job_id in self._cancelled:
            return
        try:
            job = self.get(job_id)
        except KeyError:
            return
        job.pop("progress", None)
        job["status"] = "running"
        job["starts"] = int(job.get("starts", 0)) + 1
        if job["starts"] > 1:
            job["resumed_tiles"] = self._progress(job_id)["tiles_done"]
        self._write(job)
        _LOG.info("job started", extra={"job": job_id, "model": job["model"], "starts": job["starts"]})
        try:
            result = self._compute(job)
            if job_id in self._cancelled:
                return
            job["status"] = "done"
            job["result"] = str(result)
            job["progress"] = {"fraction": 1.0}
            shutil.rmtree(self.dir / job_id / "checkpoint", ignore_errors=True)
        except (Distill4dError, OSError, TypeError) as err:
            job["status"] = "failed"
            job["error"] = str(err)
        except Exception as err:  # noqa: BLE001 - a bug: recorded, logged with its traceback
            _LOG.exception("job failed", extra={"job": job_id})
            job["status"] = "failed"
            job["error"] = f"internal error: {type(err).__name__}: {err}"
        if job_id not in self._cancelled:
            self._write(job)
            _LOG.info("job finished", extra={"job": job_id, "status": job["status"]})

    def _compute(self, job: dict[str, Any]) -> Path:
        from ..engine import KeepCheckpoint
        from ..io import read, read_probe

        d = self.dir / job["id"]
        dc = read(job["input"], dataset=job.get("dataset"))
        probe = read_probe(job["probe"]) if job.get("probe") else None
        ck = KeepCheckpoint(d / "checkpoint")
        params = dict(job["parameters"])
        if job["model"] == "disks":
            from ..bragg import find_bragg_disks

            peaks = find_bragg_disks(dc, probe, checkpoint=ck, scheduler="inline", progress=False, **params)
        else:
            from ..ml.fcunet.detect import find_bragg_disks_fcunet

            peaks = find_bragg_disks_fcunet(dc, probe, checkpoint=ck, scheduler="inline", progress=False,
                                            device=self.device, **params)
        out = d / "result.h5"
        peaks.to_hdf5(out, force=True)
        return out

    def result_path(self, job_id: str) -> Path:
        """The result file of a finished job (KeyError / Distill4dError when there is none yet)."""
        job = self.get(job_id)
        if job["status"] != "done":
            raise Distill4dError(f"job {job_id} is {job['status']}; its result is there once it is done")
        return Path(job["result"])

    def close(self) -> None:
        """Stop taking jobs (a running job finishes its tile; the rest resume at the next start)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
