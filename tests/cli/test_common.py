"""Checks of the shared CLI options (`distill4d.cli._common`): bad counts are refused before any work."""

import pytest

from distill4d.cli import main


@pytest.mark.parametrize("scheduler", ["threads", "inline", "processes"])
@pytest.mark.parametrize("workers", ["-2", "-1", "0"])
def test_workers_are_checked_before_the_file_is_read(scheduler, workers, tmp_path, capsys):
    # The file does not exist: the flag is refused first (before a cluster of -2 workers could hang).
    argv = ["virtual", str(tmp_path / "missing.h5"), "-o", str(tmp_path / "v.h5"),
            "--scheduler", scheduler, "--workers", workers]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err == f"distill4d: error: --workers must be at least 1, got {workers}\n"
    assert not (tmp_path / "v.h5.partial").exists()


@pytest.mark.parametrize("threads", ["-1", "0"])
def test_train_threads_are_checked(threads, tmp_path, capsys):
    for argv in (["train", "phase", "--data", "a.h5", "--label", "l.npy", "--model", "linear",
                  "--out", str(tmp_path / "m.pt")],
                 ["train", "fcunet", "--library", str(tmp_path), "--out", str(tmp_path / "f.pt")]):
        assert main(argv + ["--threads", threads]) == 1
        err = capsys.readouterr().err
        assert err == f"distill4d: error: --threads must be at least 1, got {threads}\n"


def test_memory_budget_is_checked_before_the_file_is_read(tmp_path, capsys):
    assert main(["com", str(tmp_path / "missing.h5"), "-o", str(tmp_path / "c.h5"), "--memory-budget-MB", "0.5"]) == 1
    assert capsys.readouterr().err == "distill4d: error: --memory-budget-MB must be at least 1, got 0.5\n"
