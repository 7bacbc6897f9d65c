"""abTEM with deterministic, local settings (shared by the multislice simulators)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from ..errors import Distill4dError


def resolve_device(device: str) -> str:
    """``"auto"`` → ``"gpu"`` when CuPy imports and sees a CUDA device, else ``"cpu"``."""
    if device == "auto":
        try:
            import cupy

            return "gpu" if cupy.cuda.runtime.getDeviceCount() > 0 else "cpu"
        except Exception:  # no CuPy, no driver, no device
            return "cpu"
    if device not in ("cpu", "gpu"):
        raise Distill4dError(f"device must be 'auto', 'cpu' or 'gpu', got {device!r}")
    return device


@contextlib.contextmanager
def abtem_session(device: str = "cpu", *, lazy: bool = False) -> Iterator[Any]:
    """Yield the abTEM module with settings restored on exit (``abtem.config.set`` is process-wide).

    ``device``: ``"cpu"``, ``"gpu"`` (CuPy) or ``"auto"`` (see :func:`resolve_device`).

    FFTW_ESTIMATE plans are deterministic (bit-reproducible results) and cheap to make for the
    new grid size nearly every simulation has; one FFTW thread (parallelism comes from running
    simulations side by side); float32; ``lazy=False`` computes eagerly (no Dask graphs nested
    inside library workers).
    """
    import abtem

    device = resolve_device(device)
    try:
        import pyfftw  # noqa: F401

        fft = "fftw"
    except ImportError:  # pragma: no cover - abTEM falls back to NumPy's FFT
        fft = "numpy"
    settings = {
        "device": device,
        "precision": "float32",
        "fft": fft,
        "fftw.planning_effort": "FFTW_ESTIMATE",
        "fftw.threads": 1,
        "antialias.cutoff": 2.0 / 3.0,
        "antialias.taper": 0.01,
        "dask.lazy": bool(lazy),
        "diagnostics.progress_bar": False,
    }
    with abtem.config.set(settings):
        yield abtem
