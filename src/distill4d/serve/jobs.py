"""Jobs for whole scans: a job store on disk, run through the engine, resumable after a restart.

Layout of the state directory::

    jobs/<id>/job.json              the job: model, input, parameters, status, progress, result, error
    jobs/<id>/checkpoint/           the engine's finished tiles of a disks / fcunet job (``KeepCheckpoint``)
    jobs/<id>/result.h5.partial/    the same for a command job (the command's ``OUTPUT.partial/``)
    jobs/<id>/result.h5             the result
    jobs/<id>/log.txt               what a command job printed
    uploads/<id>.h5                 an uploaded HDF5 input

Two kinds of job, both on the engine with a checkpoint:

- ``disks`` and ``fcunet`` call :func:`~distill4d.bragg.find_bragg_disks` or
  :func:`~distill4d.ml.fcunet.detect.find_bragg_disks_fcunet`; their parameters are the method's
  keywords; the result is a BraggPeaks HDF5.
- ``strain``, ``virtual``, ``com``, ``phase`` and ``segment`` run the ``distill4d`` command of that
  name in this process (its parser and its function: the very code path of the command line), on
  the input, with ``-o result.h5 --no-png --no-progress --scheduler inline``; their parameters are
  the command's options (``{"method": "auto", "reference": "0:4,0:4"}`` is ``--method auto
  --reference 0:4,0:4``), from a list per command (no option that names an output or a file to
  load code from); the result is the command's HDF5. ``probe`` and ``template`` are paths under a
  data root.

Status: ``queued`` → ``running`` → ``done`` | ``failed``; ``DELETE`` makes a queued job
``cancelled`` at once and a running one ``cancelling``, then ``cancelled`` once the engine has
stopped (it starts no more tiles; the tiles running finish, as on Ctrl-C: about one tile's time).
A cancelled job's files are removed except ``job.json``, so that ``GET`` reports it (with
``stopped_after_s``, the time from the request to the engine's stop); a ``DELETE`` of a job that
is no longer running removes it (404 after). When the server stops, a running job stops the same
way and stays ``running`` on disk; at the next start every job that was queued or running is
queued again and resumes from its finished tiles. Progress is the fraction of tiles written of
the step running (``step``: the checkpoint's name).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .._atomic import atomic_write_bytes
from ..errors import Distill4dError

__all__ = ["COMMAND_JOBS", "JOB_MODELS", "JobStore", "resolve_data_path"]

_CALIBRATION = ("scan_step_A", "q_pixel_inv_A", "energy_kV", "semiangle_mrad", "origin_px", "scan_shape",
                "memory_budget_MB")
#: Jobs that run a ``distill4d`` command: the options (argparse ``dest``) a job may set.
COMMAND_JOBS: dict[str, tuple[str, ...]] = {
    "strain": ("method", "reference", "min_indexed_fraction", "smooth", "prior", "passes", "views", "template",
               "bases", "steps", "minutes", "seed", "refine_steps") + _CALIBRATION,
    "virtual": ("bf", "adf", "annulus", "unit") + _CALIBRATION,
    "com": ("radius", "unit", "rotation_deg", "flip") + _CALIBRATION,
    "phase": ("model", "pad") + _CALIBRATION,
    "segment": ("method", "domains", "window", "step", "route", "detector", "channels", "steps", "minutes",
                "seed") + _CALIBRATION,
}
#: Options of a command job that name a file: resolved under the data roots like the input.
_PATH_OPTIONS = ("template",)
#: Models a job can run over a whole scan.
JOB_MODELS = ("disks", "fcunet") + tuple(COMMAND_JOBS)
_ACTIVE = ("queued", "running", "cancelling")
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


# ---------------------------------------------------------------------- command jobs
class _ParseError(Exception):
    pass


def _raise(message: str) -> None:
    raise _ParseError(message)


def _command_parser(command: str) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The ``distill4d`` parser and the subparser of ``command``, both raising instead of exiting."""
    from ..cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    parser.error = sub.error = _raise  # type: ignore[method-assign]
    return parser, sub


def command_argv(command: str, input_path: str, output: Path, params: dict[str, Any], *, dataset: str | None,
                 probe: str | None, device: str, roots: tuple[Path, ...]) -> list[str]:
    """The ``distill4d`` command line of a command job (Distill4dError naming a bad parameter)."""
    parser, sub = _command_parser(command)
    actions = {a.dest: a for a in sub._actions if a.option_strings}
    argv = [command, input_path, "-o", str(output), "--no-png", "--no-progress", "--scheduler", "inline"]
    if dataset:
        argv += ["--dataset", str(dataset)]
    if probe:
        if "probe" not in actions:
            raise Distill4dError(f"{command} jobs take no probe")
        argv += ["--probe", probe]
    if "device" in actions:
        argv += ["--device", device]
    allowed = COMMAND_JOBS[command]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise Distill4dError(f"unknown job parameter(s) {unknown}; {command} jobs take {sorted(allowed)} "
                             f"(the options of distill4d {command}, with _ for -)")
    for key, value in params.items():
        action = actions[key]
        flag = action.option_strings[0]
        if key in _PATH_OPTIONS and value is not None:
            value = str(resolve_data_path(value, roots))
        if value is None:
            continue
        if isinstance(action, argparse.BooleanOptionalAction):
            argv.append(action.option_strings[0 if value else 1])
        elif action.nargs == 0:
            if value is not True and value is not False:
                raise Distill4dError(f"job parameter {key!r} is a switch: true or false, got {value!r}")
            if value:
                argv.append(flag)
        elif isinstance(action, argparse._AppendAction):
            for item in value if isinstance(value, list) else [value]:
                argv += [flag, *(str(v) for v in (item if isinstance(item, list) else [item]))]
        elif isinstance(value, list):
            argv += [flag, *(str(v) for v in value)]
        elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
            argv += [flag, str(value)]
        else:
            raise Distill4dError(f"job parameter {key!r} must be a string, a number or a list, got {value!r}")
    try:
        parser.parse_args(argv)
    except _ParseError as err:
        raise Distill4dError(f"bad job parameters for {command}: {err}") from None
    return argv


class _ThreadStreams:
    """``sys.stdout`` / ``sys.stderr`` that send what a job's thread prints to its log, the rest on."""

    _lock = threading.Lock()

    def __init__(self, default: Any) -> None:
        self.default = default
        self.targets: dict[int, Any] = {}

    def write(self, text: str) -> int:
        return self.targets.get(threading.get_ident(), self.default).write(text)

    def flush(self) -> None:
        self.targets.get(threading.get_ident(), self.default).flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.default, name)

    @classmethod
    def install(cls) -> tuple[_ThreadStreams, _ThreadStreams]:
        with cls._lock:
            if not isinstance(sys.stdout, cls):
                sys.stdout = cls(sys.stdout)
            if not isinstance(sys.stderr, cls):
                sys.stderr = cls(sys.stderr)
        return sys.stdout, sys.stderr  # type: ignore[return-value]


def run_command_job(argv: list[str], log: Path) -> None:
    """Run ``distill4d ARGV`` in this thread, what it prints going to ``log``; its errors propagate."""
    from ..cli import execute

    parser, _ = _command_parser(argv[0])
    try:
        args = parser.parse_args(argv)
    except _ParseError as err:
        raise Distill4dError(f"bad job parameters: {err}") from None
    out, err = _ThreadStreams.install()
    me = threading.get_ident()
    with open(log, "a", encoding="utf-8") as f:
        out.targets[me] = err.targets[me] = f
        try:
            execute(args)
        finally:
            out.targets.pop(me, None)
            err.targets.pop(me, None)


# ---------------------------------------------------------------------- the store
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
        self._lock = threading.RLock()
        self._stops: dict[str, threading.Event] = {}  # the jobs running in this process
        self._closing = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="job")

    # ------------------------------------------------------------------ records
    def _file(self, job_id: str) -> Path:
        if not isinstance(job_id, str) or len(job_id) != 32 or not set(job_id) <= _ID_CHARS:
            raise KeyError(job_id)
        return self.dir / job_id / "job.json"

    def _read(self, job_id: str) -> dict[str, Any]:
        try:
            return json.loads(self._file(job_id).read_text())
        except FileNotFoundError:
            raise KeyError(job_id) from None

    def _write(self, job: dict[str, Any]) -> None:
        job["updated"] = time.time()
        with self._lock:
            f = self._file(job["id"])
            if f.parent.exists():
                atomic_write_bytes(f, json.dumps(job, indent=1).encode())

    def get(self, job_id: str) -> dict[str, Any]:
        """The job record with its current progress (KeyError when there is no such job)."""
        job = self._read(job_id)
        if job["status"] in _ACTIVE:
            job["progress"] = self._progress(job_id)
        return job

    def _progress(self, job_id: str) -> dict[str, Any]:
        """Tiles written of the step running (its checkpoint's manifest is the newest)."""
        # os.walk, not Path.rglob: the job's steps create and remove folders while this reads, and
        # rglob raises when a folder it listed is gone (os.walk skips it)
        manifests = [Path(root) / "manifest.json" for root, _, names in os.walk(self.dir / job_id)
                     if "manifest.json" in names]
        for manifest in sorted(manifests, key=_mtime, reverse=True):
            try:
                total = len(json.loads(manifest.read_text())["tiles"])
                done = sum(1 for name in os.listdir(manifest.parent)
                           if name.startswith("tile_") and name.endswith(".npz"))
            except (OSError, ValueError, KeyError, TypeError):
                continue
            return {"step": manifest.parent.name, "tiles_done": done, "tiles_total": total,
                    "fraction": done / total if total else 0.0}
        return {"step": None, "tiles_done": 0, "tiles_total": None, "fraction": 0.0}

    # ------------------------------------------------------------------ submit / resume
    def submit(self, model: str, *, path: str | None = None, upload: bytes | None = None,
               probe: str | None = None, dataset: str | None = None,
               parameters: dict[str, Any] | None = None) -> dict[str, Any]:
        """Create a job (Distill4dError for a bad model, path or parameter) and queue it."""
        if model not in JOB_MODELS:
            raise Distill4dError(f"jobs run {', '.join(JOB_MODELS)}; got model {model!r}")
        if model not in COMMAND_JOBS and model not in self.models:
            raise Distill4dError(f"model {model!r} is not loaded on this server (see --models)")
        if parameters is not None and not isinstance(parameters, dict):
            raise Distill4dError(f"parameters must be a JSON object, got {parameters!r}")
        params = dict(parameters or {})
        if model in ("disks", "fcunet"):
            allowed = {"kind", "radius_px", "min_spacing_px", "min_relative_intensity", "max_peaks", "subpixel"} \
                if model == "disks" else {"q_pixel_inv_A", "min_intensity"}
            unknown = sorted(set(params) - allowed)
            if unknown:
                raise Distill4dError(f"unknown job parameter(s) {unknown}; {model} jobs take {sorted(allowed)}")
        job_id = uuid.uuid4().hex
        if upload is None and path is None:
            raise Distill4dError("a job needs a 'path' on a data root or an uploaded HDF5 body")
        input_path = str(self.uploads / f"{job_id}.h5") if upload is not None \
            else str(resolve_data_path(path, self.roots))
        probe_path = str(resolve_data_path(probe, self.roots)) if probe else None
        job = {"id": job_id, "model": model, "input": input_path, "dataset": dataset, "probe": probe_path,
               "parameters": params, "status": "queued", "created": time.time(), "result": None,
               "error": None, "starts": 0}
        if model in COMMAND_JOBS:  # checked now (a bad option is a 422 of the request), run as written
            job["command"] = command_argv(model, input_path, self.dir / job_id / "result.h5", params,
                                          dataset=dataset, probe=probe_path, device=self.device, roots=self.roots)
        if upload is not None:
            atomic_write_bytes(Path(input_path), upload)
        (self.dir / job_id).mkdir(parents=True)
        self._write(job)
        self._pool.submit(self._run, job_id)
        return self.get(job_id)

    def resume_all(self) -> list[str]:
        """Queue again every job that was queued or running when the server stopped (and finish the
        cancellation of one that was being cancelled)."""
        ids = []
        for f in sorted(self.dir.glob("*/job.json"), key=_mtime):
            try:
                job = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            if job.get("status") == "cancelling":
                self._cancelled(job)
            elif job.get("status") in ("queued", "running"):
                job["status"] = "queued"
                self._write(job)
                self._pool.submit(self._run, job["id"])
                ids.append(job["id"])
        return ids

    def delete(self, job_id: str) -> dict[str, Any]:
        """Cancel a queued or running job (see the module docstring), or remove a finished one."""
        with self._lock:
            job = self._read(job_id)
            if job["status"] in _ACTIVE:
                job["cancel_requested"] = time.time()
                stop = self._stops.get(job_id)
                if stop is None:  # not started (queued here), or left by a server that stopped
                    return self._cancelled(job)
                stop.set()
                job["status"] = "cancelling"
                self._write(job)
                job["progress"] = self._progress(job_id)
                return job
        shutil.rmtree(self.dir / job_id, ignore_errors=True)
        (self.uploads / f"{job_id}.h5").unlink(missing_ok=True)
        job["status"] = "deleted"
        return job

    def _cancelled(self, job: dict[str, Any]) -> dict[str, Any]:
        """Record a job as cancelled and remove its files but ``job.json`` (the caller holds the lock
        or owns the job)."""
        d = self.dir / job["id"]
        job["progress"] = self._progress(job["id"])  # what was done when it stopped
        for p in d.iterdir() if d.exists() else ():
            if p.name != "job.json":
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        (self.uploads / f"{job['id']}.h5").unlink(missing_ok=True)
        job["status"] = "cancelled"
        job["result"] = None
        if job.get("cancel_requested"):
            job["stopped_after_s"] = round(time.time() - job["cancel_requested"], 3)
        self._write(job)
        _LOG.info("job cancelled", extra={"job": job["id"]})
        return job

    # ------------------------------------------------------------------ running
    def _run(self, job_id: str) -> None:
        from ..engine import Cancelled, stop_when

        stop = threading.Event()
        with self._lock:
            try:
                job = self._read(job_id)
            except KeyError:
                return
            if job["status"] != "queued" or self._closing.is_set():
                return  # cancelled meanwhile, or the server is stopping (it resumes at the next start)
            self._stops[job_id] = stop
            job["status"] = "running"
            job["starts"] = int(job.get("starts", 0)) + 1
            if job["starts"] > 1:
                job["resumed_tiles"] = self._progress(job_id)["tiles_done"]
            self._write(job)
        _LOG.info("job started", extra={"job": job_id, "model": job["model"], "starts": job["starts"]})
        status, result, error = "failed", None, None
        try:
            with stop_when(lambda: stop.is_set() or self._closing.is_set()):
                result = self._compute(job)
            status = "done"
        except Cancelled:
            status = "stopped"
        except (Distill4dError, OSError, TypeError) as err:
            error = str(err)
        except Exception as err:  # noqa: BLE001 - a bug: recorded, logged with its traceback
            _LOG.exception("job failed", extra={"job": job_id})
            error = f"internal error: {type(err).__name__}: {err}"
        with self._lock:
            self._stops.pop(job_id, None)
            try:
                job = self._read(job_id)  # DELETE may have changed it meanwhile
            except KeyError:
                return
            if stop.is_set():
                self._cancelled(job)
                return
            if status == "stopped":  # the server is stopping: the job stays running on disk, and resumes
                _LOG.info("job stopped with the server", extra={"job": job_id})
                return
            job["status"], job["error"] = status, error
            if status == "done":
                job["result"] = str(result)
                job["progress"] = {"fraction": 1.0}
                shutil.rmtree(self.dir / job_id / "checkpoint", ignore_errors=True)
            self._write(job)
        _LOG.info("job finished", extra={"job": job_id, "status": status})

    def _compute(self, job: dict[str, Any]) -> Path:
        d = self.dir / job["id"]
        out = d / "result.h5"
        if "command" in job:
            if not out.exists():  # else it was written just before the server stopped
                run_command_job(job["command"], d / "log.txt")
            return out
        from ..engine import KeepCheckpoint
        from ..io import read, read_probe

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
        peaks.to_hdf5(out, force=True)
        return out

    def result_path(self, job_id: str) -> Path:
        """The result file of a finished job (KeyError / Distill4dError when there is none yet)."""
        job = self.get(job_id)
        if job["status"] != "done":
            raise Distill4dError(f"job {job_id} is {job['status']}; its result is there once it is done")
        return Path(job["result"])

    def close(self) -> None:
        """Stop taking jobs; a running job stops like a cancelled one (its tiles in flight finish and
        are kept) but stays ``running`` on disk, so that it resumes at the next start."""
        self._closing.set()
        self._pool.shutdown(wait=False, cancel_futures=True)


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0
