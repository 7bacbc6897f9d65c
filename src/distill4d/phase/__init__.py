"""Ptychography (PyTorch, automatic differentiation) and its probe.

``distill4d.phase`` itself is torch-free: :func:`reconstruct` imports PyTorch when called.
"""

from __future__ import annotations

from typing import Any

from .probe import aberration_phase, probe_from_calibration

__all__ = ["PtychoResult", "aberration_phase", "probe_from_calibration", "reconstruct"]


def __getattr__(name: str) -> Any:
    if name in ("PtychoResult", "reconstruct"):
        from . import ptycho

        return getattr(ptycho, name)
    raise AttributeError(f"module 'distill4d.phase' has no attribute {name!r}")
