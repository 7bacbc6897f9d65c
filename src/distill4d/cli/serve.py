"""``distill4d serve``: the inference server (Open Inference Protocol) under uvicorn."""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path
from typing import Any

from ..errors import Distill4dError

__all__ = ["add_parser", "cmd_serve"]


def require_serve(what: str) -> None:
    """A :class:`Distill4dError` saying that ``what`` needs the ``serve`` extra, unless it is installed."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise Distill4dError(f"{what} needs FastAPI and uvicorn: pip install 'distill4d[serve]'") from None


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_serve(args: argparse.Namespace) -> int:
    require_serve("distill4d serve")
    import uvicorn

    from ..serve import ServeConfig, create_app, read_token
    from ..serve.config import setup_json_logging

    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    if any(m in ("fcunet", "phase") for m in models):
        from ._common import require_torch

        require_torch(f"--models {args.models}")
    config = ServeConfig(
        models=models, device=args.device, token=read_token(args.token_file),
        data_roots=tuple(Path(p) for p in args.data_root), state_dir=Path(args.state_dir) if args.state_dir else None,
        max_body_bytes=int(args.max_body_mb * 2**20), max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms, batch_workers=args.batch_workers, request_timeout_s=args.timeout_s,
        batch_processes=not args.batch_in_server,
    )
    if not (1 <= args.port <= 65535):
        raise Distill4dError(f"--port must be between 1 and 65535, got {args.port}")
    if not _loopback(args.host) and config.token is None:
        print(f"distill4d: warning: serving on {args.host} without a token: anyone who reaches this port can use "
              "it (give --token-file or DISTILL4D_TOKEN)", file=sys.stderr)
    setup_json_logging(args.log_level)
    uvicorn.run(create_app(config), host=args.host, port=args.port, log_config=None, access_log=False,
                timeout_graceful_shutdown=10, log_level=args.log_level)
    return 0


def add_parser(sub: Any) -> None:
    """Add ``serve`` to the subcommands ``sub``."""
    p = sub.add_parser("serve", help="inference server: Open Inference Protocol (KServe V2) over HTTP, jobs, metrics")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--models", default="disks,fcunet,phase,strain",
                   help="comma-separated models to serve (default disks,fcunet,phase,strain; also segment and "
                        "identify; fcunet and phase need PyTorch, segment scikit-learn: the ml extra)")
    p.add_argument("--device", default="auto", help="auto (default: GPU if PyTorch sees one), cpu or cuda[:N]")
    p.add_argument("--token-file", metavar="FILE",
                   help="file holding the bearer token every route but /v2/health/* requires (default: the "
                        "DISTILL4D_TOKEN environment variable; neither: no authentication)")
    p.add_argument("--data-root", action="append", default=[], metavar="DIR",
                   help="directory whose files jobs may read (repeatable; default: none, uploads only)")
    p.add_argument("--state-dir", metavar="DIR",
                   help="where jobs, their checkpoints and results are kept (default: none, no jobs)")
    p.add_argument("--max-batch-size", type=int, default=64,
                   help="patterns per batch of concurrent requests (default 64; 1: batching off)")
    p.add_argument("--max-wait-ms", type=float, default=None,
                   help="how long a request waits for others to share its batch (default: 0 ms for disks, whose "
                        "cost per pattern hardly falls with the batch; 10 ms for the networks)")
    p.add_argument("--batch-workers", type=int, default=1, help="batches of one model run at once (default 1)")
    p.add_argument("--batch-in-server", action="store_true",
                   help="run the disks model's batches in a thread of the server's process (default: in a worker "
                        "process of their own, which does not share the server's GIL)")
    p.add_argument("--max-body-mb", type=float, default=256.0, help="largest request body in MiB (default 256)")
    p.add_argument("--timeout-s", type=float, default=60.0, help="inference timeout in seconds (default 60)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                   help="log level of the JSON logs on stderr (default info)")
    p.set_defaults(func=cmd_serve)
