"""The inference server (extra ``[serve]``): Open Inference Protocol (KServe V2) routes for the
package's models, dynamic batching, jobs for whole scans, bearer-token auth, limits, Prometheus
metrics and JSON logs.

``config`` (:class:`ServeConfig`), ``protocol`` (V2 tensors: JSON, the binary extension, ``.npy``),
``models`` (the served models, each wrapping a batch function of the package), ``batching``,
``jobs``, ``metrics`` and ``app`` (:func:`create_app`, FastAPI). Only ``app`` imports FastAPI;
run it with ``distill4d serve``.
"""

from __future__ import annotations

from typing import Any

from .config import ServeConfig, read_token
from .models import MODEL_NAMES

__all__ = ["MODEL_NAMES", "ServeConfig", "create_app", "read_token"]


def create_app(config: ServeConfig | None = None) -> Any:
    """The FastAPI application of the server for ``config`` (see :mod:`distill4d.serve.app`)."""
    from .app import create_app as _create

    return _create(config)
