"""A real uvicorn server on loopback (``distill4d serve`` in a subprocess) for the server tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

TOKEN = "test-token-0123456789abcdef"


def free_port() -> int:
    """A TCP port that is free on loopback now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``distill4d serve`` in a subprocess on a free loopback port."""

    def __init__(self, tmp: Path, *args: str, token: str | None = TOKEN, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = token
        self.args = args
        self.log = tmp / f"server_{self.port}_{time.monotonic_ns()}.log"
        env = dict(os.environ)
        env.pop("DISTILL4D_TOKEN", None)
        if token:
            env["DISTILL4D_TOKEN"] = token
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2] / "src"),
                                             env.get("PYTHONPATH", "")])
        self.fh = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "distill4d.cli", "serve", "--port", str(self.port), *args],
            stdout=self.fh, stderr=subprocess.STDOUT, env=env)

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"} if self.token else {}

    def wait_live(self, timeout: float = 60) -> None:
        self._wait("/v2/health/live", timeout)

    def wait_ready(self, timeout: float = 120) -> None:
        self._wait("/v2/health/ready", timeout)

    def _wait(self, path: str, timeout: float) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"{path} not 200 after {timeout} s:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs (a crash)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        self.fh.close()

