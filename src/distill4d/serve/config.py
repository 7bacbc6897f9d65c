"""The server's configuration (no web framework imported here)."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..errors import Distill4dError

__all__ = ["ServeConfig", "TOKEN_ENV", "keep_freed_memory", "one_blas_thread", "read_token", "setup_json_logging"]

#: Environment variable holding the bearer token (``--token-file`` wins when both are given).
TOKEN_ENV = "DISTILL4D_TOKEN"


@dataclass(frozen=True)
class ServeConfig:
    """What :func:`distill4d.serve.create_app` serves and how.

    Attributes
    ----------
    models : served models (of :data:`distill4d.serve.MODEL_NAMES`).
    device : ``"auto"``, ``"cpu"`` or ``"cuda[:N]"`` for the neural networks.
    token : bearer token every route but ``/v2/health/*`` requires (None: no authentication).
    data_roots : directories whose files jobs may read (none: jobs take uploads only).
    state_dir : where jobs, their checkpoints and results live (None: no jobs).
    max_body_bytes : larger request bodies are refused (413).
    max_batch_size : patterns per batch (1: batching off).
    max_wait_ms : how long the first request of a batch waits for others (ms); None: each model's
        ``default_max_wait_ms`` (0 for ``disks``, 10 for the networks).
    batch_workers : batches of one model run at once.
    request_timeout_s : an inference taking longer is answered 504.
    job_workers : jobs run at once.
    batch_processes : run the batches of the models that can (``disks``) in worker processes
        (``batch_workers`` of them, :mod:`distill4d.serve.worker`) instead of threads of the server.
    keep_freed_memory : ask glibc's malloc to keep freed memory (see
        :func:`distill4d.serve.config.keep_freed_memory`; saves thousands of page faults per inference).
    """

    models: tuple[str, ...] = ("disks", "fcunet", "phase", "strain")
    device: str = "auto"
    token: str | None = None
    data_roots: tuple[Path, ...] = ()
    state_dir: Path | None = None
    max_body_bytes: int = 256 * 2**20
    max_batch_size: int = 64
    max_wait_ms: float | None = None
    batch_workers: int = 1
    request_timeout_s: float = 60.0
    job_workers: int = 1
    batch_processes: bool = True
    keep_freed_memory: bool = True

    def __post_init__(self) -> None:
        from .models import MODEL_NAMES

        unknown = [m for m in self.models if m not in MODEL_NAMES]
        if unknown or not self.models:
            raise Distill4dError(f"--models: unknown or none {unknown}; choose from {', '.join(MODEL_NAMES)}")
        for name in ("max_body_bytes", "max_batch_size", "batch_workers", "job_workers"):
            if int(getattr(self, name)) < 1:
                raise Distill4dError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_wait_ms is not None and not 0 <= self.max_wait_ms <= 1000:
            raise Distill4dError(f"max_wait_ms must be between 0 and 1000, got {self.max_wait_ms}")
        if not self.request_timeout_s > 0:
            raise Distill4dError(f"request_timeout_s must be > 0, got {self.request_timeout_s}")
        for root in self.data_roots:
            if not Path(root).is_dir():
                raise Distill4dError(f"data root {root} is not a directory")
        if self.token is not None and len(self.token) < 16:
            raise Distill4dError("the token must be at least 16 characters long")


def one_blas_thread() -> int | None:
    """Run NumPy's BLAS in one thread (threadpoolctl); the thread count now, None without threadpoolctl.

    A request is a handful of small matrix products (the disks' DFT refinement); BLAS threads
    split each across the cores and spin between them, taking the cores from the HTTP stack and
    the clients (see the serve section of benchmarks/RESULTS.md)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    threadpool_limits(1, user_api="blas")
    return 1


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse (Linux; True if it agreed).

    By default glibc gives the freed top of the heap back to the system and maps each large
    block afresh, so every inference paid for thousands of page faults on its temporaries
    (about 2900 for one 256 x 256 pattern, measured: a third more CPU than the same call in a
    process that kept its memory). The server keeps up to 256 MiB of freed memory and maps only
    blocks over 32 MiB on their own. Process-wide, so called by the server (and its worker processes), never on import.
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 32 * 2**20)) and bool(mallopt(m_trim_threshold, 256 * 2**20))


def read_token(token_file: str | None) -> str | None:
    """The bearer token: the first line of ``token_file``, else ``$DISTILL4D_TOKEN``, else None."""
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as err:
            raise Distill4dError(f"--token-file {token_file}: {err.strerror or err}") from None
        if not token:
            raise Distill4dError(f"--token-file {token_file} is empty")
        return token
    return os.environ.get(TOKEN_ENV) or None


_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class _JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                       + f".{int(record.msecs):03d}Z",
               "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        doc.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD and k != "color_message"})
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def setup_json_logging(level: str = "info") -> None:
    """One JSON object per line on stderr for the server's and uvicorn's loggers."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JSONFormatter())
    for name in ("distill4d.serve", "uvicorn", "uvicorn.error"):
        log = logging.getLogger(name)
        log.handlers[:] = [handler]
        log.setLevel(level.upper())
        log.propagate = False

    def show(message: Warning | str, category: type, filename: str, lineno: int, file=None, line=None) -> None:
        logging.getLogger("distill4d.serve").warning(str(message), extra={"category": category.__name__})

    warnings.showwarning = show
