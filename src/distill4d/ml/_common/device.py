"""Choosing the PyTorch device."""

from __future__ import annotations

from typing import Any

from ...errors import Distill4dError

__all__ = ["torch_device"]


def torch_device(device: Any = "auto") -> Any:
    """``"auto"`` (the GPU when PyTorch sees one), ``"cpu"``, ``"cuda"``/``"cuda:N"`` or a torch.device → torch.device."""
    import torch

    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, str) or (device != "cpu" and device != "cuda" and not device.startswith("cuda:")):
        raise Distill4dError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise Distill4dError("device='cuda' was asked for but PyTorch sees no GPU")
    return torch.device(device)
