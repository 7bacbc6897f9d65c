"""abTEM with deterministic, local settings (shared by the multislice simulators)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def abtem_session(device: str = "cpu", *, lazy: bool = False) -> Iterator[Any]:
    """Yield the abTEM module with settings restored on exit (``abtem.config.set`` is process-wide).

    FFTW_ESTIMATE plans are deterministic (bit-reproducible results) and cheap to make for the
    new grid size nearly every simulation has; one FFTW thread (parallelism comes from running
    simulations side by side); float32; ``lazy=False`` computes eagerly (no Dask graphs nested
    inside library workers).
    """
    import abtem

    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
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
