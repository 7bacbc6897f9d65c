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
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"),
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



class Balancer:
    """A small round-robin TCP load balancer on loopback (asyncio, in a thread of its own).

    Each client connection is piped to the next backend; a backend that refuses the connection
    is skipped (passive health check), so a killed server stops receiving new connections.
    """

    def __init__(self, backends: list[int]) -> None:
        import asyncio
        import threading

        self.backends = backends
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.connections = [0] * len(backends)
        self._next = 0
        self._loop = asyncio.new_event_loop()
        started = threading.Event()

        async def serve() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
            started.set()

        self._thread = threading.Thread(target=lambda: (self._loop.run_until_complete(serve()),
                                                        self._loop.run_forever()), daemon=True)
        self._thread.start()
        started.wait(10)

    async def _handle(self, reader, writer) -> None:
        import asyncio

        for _ in range(len(self.backends)):
            i = self._next % len(self.backends)
            self._next += 1
            try:
                up_r, up_w = await asyncio.open_connection("127.0.0.1", self.backends[i])
            except OSError:
                continue
            self.connections[i] += 1
            break
        else:
            writer.close()
            return

        async def pipe(src, dst) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                try:
                    dst.close()
                except Exception:  # noqa: BLE001
                    pass

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))

    def close(self) -> None:
        import asyncio

        async def shutdown() -> None:
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def poll_job(server, job_id, until, timeout=120):
    """GET the job until ``until(job)`` holds (it must stay queued, running or cancelling meanwhile)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        job = httpx.get(f"{server.url}/v1/jobs/{job_id}", headers=server.headers, timeout=10).json()
        if until(job):
            return job
        assert job["status"] in ("queued", "running", "cancelling"), job
        time.sleep(0.02)
    raise TimeoutError(job)
