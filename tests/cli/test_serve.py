"""`distill4d serve`: bad options and a missing extra are one clear line, before anything starts."""

import builtins

import pytest

from distill4d.cli import main


@pytest.mark.parametrize("args, message", [
    (["--models", "disks,nope"], "--models: unknown or none ['nope']; choose from disks, fcunet, phase, strain"),
    (["--models", "disks", "--max-batch-size", "0"], "max_batch_size must be at least 1, got 0"),
    (["--models", "disks", "--data-root", "/no/such/dir"], "data root /no/such/dir is not a directory"),
    (["--models", "disks", "--token-file", "/no/such/token"], "--token-file /no/such/token"),
])
def test_bad_options_are_one_line(args, message, capsys):
    pytest.importorskip("fastapi")
    assert main(["serve", *args]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_a_short_token_is_refused(tmp_path, capsys, monkeypatch):
    pytest.importorskip("fastapi")
    monkeypatch.setenv("DISTILL4D_TOKEN", "short")
    assert main(["serve", "--models", "disks"]) == 1
    assert "the token must be at least 16 characters long" in capsys.readouterr().err


def test_without_the_serve_extra_the_error_says_what_to_install(monkeypatch, capsys):
    real = builtins.__import__

    def no_fastapi(name, *a, **kw):
        if name in ("fastapi", "uvicorn"):
            raise ImportError(name)
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_fastapi)
    assert main(["serve"]) == 1
    assert capsys.readouterr().err.strip() == (
        "distill4d: error: distill4d serve needs FastAPI and uvicorn: pip install 'distill4d[serve]'")
