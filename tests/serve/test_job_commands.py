"""Command jobs' command lines: parameters become the command's options, checked by its own parser.
A job's progress is read while its steps create and remove folders."""

import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from distill4d.errors import Distill4dError
from distill4d.serve.jobs import JobStore, command_argv


def _argv(command, params, tmp_path, **kw):
    return command_argv(command, "/data/scan.h5", Path("/state/jobs/x/result.h5"), params,
                        dataset=kw.get("dataset"), probe=kw.get("probe"), device="cpu", roots=(tmp_path,))


def test_parameters_become_the_commands_options(tmp_path):
    (tmp_path / "t.npy").write_bytes(b"")
    argv = _argv("strain", {"method": "auto", "reference": "0:2,0:2", "min_indexed_fraction": 0.5,
                            "prior": ["tv", 1.0], "template": "t.npy", "origin_px": [32, 31.5]}, tmp_path,
                 probe="/data/probe.npy", dataset="/entry/data")
    assert argv[:8] == ["strain", "/data/scan.h5", "-o", "/state/jobs/x/result.h5", "--no-png", "--no-progress",
                        "--scheduler", "inline"]
    text = " ".join(argv)
    for part in ("--dataset /entry/data", "--probe /data/probe.npy", "--device cpu", "--method auto",
                 "--reference 0:2,0:2", "--min-indexed-fraction 0.5", "--prior tv 1.0",
                 f"--template {tmp_path / 't.npy'}", "--origin-px 32 31.5"):
        assert part in text, part
    assert _argv("com", {"flip": False, "radius": 20}, tmp_path)[-3:] == ["--no-flip", "--radius", "20"]
    argv = _argv("virtual", {"annulus": [[5, 10], [10, 20]], "bf": []}, tmp_path)
    assert " ".join(argv).endswith("--annulus 5 10 --annulus 10 20 --bf")


@pytest.mark.parametrize("command, params, message", [
    ("strain", {"output": "/etc/x.h5"}, "unknown job parameter"),
    ("strain", {"save_model": "m.pt"}, "unknown job parameter"),
    ("phase", {"weights": "w.pt"}, "unknown job parameter"),
    ("strain", {"method": "nope"}, "invalid choice"),
    ("strain", {"smooth": "a lot"}, "invalid float value"),
    ("strain", {"template": "../outside.npy"}, "outside the server's data roots"),
    ("com", {"radius": {"r": 1}}, "must be a string, a number or a list"),
])
def test_bad_parameters_are_refused_with_the_reason(tmp_path, command, params, message):
    with pytest.raises(Distill4dError, match=message):
        _argv(command, params, tmp_path)


def test_a_command_without_a_probe_refuses_one(tmp_path):
    with pytest.raises(Distill4dError, match="com jobs take no probe"):
        _argv("com", {}, tmp_path, probe="/data/probe.npy")


def test_progress_is_read_while_the_job_removes_folders(tmp_path):
    """Folders vanishing under the read (a step's scratch removed) must not fail ``GET /v1/jobs/<id>``.
    Path.rglob raised FileNotFoundError on about one read in six here; a server answered 500."""
    store = JobStore(tmp_path / "state")
    job = store.dir / ("a" * 32)
    step = job / "checkpoint" / "strain"
    step.mkdir(parents=True)
    (step / "manifest.json").write_text(json.dumps({"tiles": [[0, 4], [4, 8], [8, 12]]}))
    for i in range(2):
        (step / f"tile_{i:05d}.npz").write_bytes(b"")
    stop = threading.Event()

    def churn():
        i = 0
        while not stop.is_set():
            scratch = job / f"scratch{i % 3}" / "part"
            scratch.mkdir(parents=True, exist_ok=True)
            (scratch / "manifest.json").write_text("{}")
            shutil.rmtree(scratch.parent, ignore_errors=True)
            i += 1

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        reads, end = 0, time.monotonic() + 1.0
        while time.monotonic() < end:
            progress = store._progress("a" * 32)
            reads += 1
            if progress["step"] == "strain":
                assert progress["tiles_done"] == 2 and progress["tiles_total"] == 3, progress
    finally:
        stop.set()
        thread.join()
        store.close()
    assert reads > 100
