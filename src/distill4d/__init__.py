"""distill4d: 4D-STEM data to strain maps, images, domains and crystal identities.

The top-level namespace is light: heavy modules (Dask distributed, PyTorch, abTEM)
are imported only when a function that needs them is called.
"""

from __future__ import annotations

from typing import Any

from ._version import __version__

__all__ = [
    "Calibration", "DataCube", "Distill4dError", "Provenance", "Results", "read", "read_results", "write",
    "map_patterns", "__version__",
]


def __getattr__(name: str) -> Any:
    if name == "Calibration":
        from .calibration import Calibration

        return Calibration
    if name == "DataCube":
        from .datacube import DataCube

        return DataCube
    if name == "Distill4dError":
        from .errors import Distill4dError

        return Distill4dError
    if name in ("Results", "Provenance"):
        from . import results

        return getattr(results, name)
    if name in ("read", "write", "read_results"):
        from . import io

        return getattr(io, name)
    if name == "map_patterns":
        from .engine import map_patterns

        return map_patterns
    raise AttributeError(f"module 'distill4d' has no attribute {name!r}")
