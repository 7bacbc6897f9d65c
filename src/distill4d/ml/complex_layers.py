"""Complex-valued layers on split real/imaginary tensors.

A complex feature map with ``C`` channels is one real tensor ``(N, 2C, H, W)``: channels
``[:C]`` are the real parts, ``[C:]`` the imaginary parts. Every layer keeps that layout, so
real parts stay with real parts through pooling, upsampling and skip concatenation.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "ComplexBatchNorm2d",
    "ComplexConv2d",
    "complex_cat",
    "complex_split",
    "crelu",
    "mc_dropout",
    "spectral_pool",
]


def complex_split(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, 2C, H, W)`` → real ``(N, C, H, W)``, imaginary ``(N, C, H, W)``."""
    c = z.shape[1] // 2
    return z[:, :c], z[:, c:]


def complex_cat(*zs: torch.Tensor) -> torch.Tensor:
    """Concatenate complex maps along channels, real parts first, then imaginary parts."""
    parts = [complex_split(z) for z in zs]
    return torch.cat([p[0] for p in parts] + [p[1] for p in parts], dim=1)


class ComplexConv2d(nn.Module):
    """Complex convolution ``W * z = (A*x − B*y) + i (B*x + A*y)`` for ``W = A + iB``, ``z = x + iy``.

    One real convolution with the block weight ``[[A, −B], [B, A]]`` computes both parts; the
    bias is complex (``b_re + i b_im``).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, bias: bool = True) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        k = kernel_size
        # complex Glorot-like init: Var|W| = 2 / (fan_in + fan_out)
        std = math.sqrt(1.0 / ((in_channels + out_channels) * k * k))
        self.weight_re = nn.Parameter(torch.randn(out_channels, in_channels, k, k) * std)
        self.weight_im = nn.Parameter(torch.randn(out_channels, in_channels, k, k) * std)
        if bias:
            self.bias_re = nn.Parameter(torch.zeros(out_channels))
            self.bias_im = nn.Parameter(torch.zeros(out_channels))
        else:
            self.register_parameter("bias_re", None)
            self.register_parameter("bias_im", None)

    def block_weight(self) -> torch.Tensor:
        A, B = self.weight_re, self.weight_im
        return torch.cat([torch.cat([A, -B], dim=1), torch.cat([B, A], dim=1)], dim=0)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.shape[1] != 2 * self.in_channels:
            raise ValueError(f"ComplexConv2d expects {2 * self.in_channels} real channels (re + im), got {z.shape[1]}")
        bias = None if self.bias_re is None else torch.cat([self.bias_re, self.bias_im])
        return F.conv2d(z, self.block_weight(), bias, padding=self.kernel_size // 2)


class ComplexBatchNorm2d(nn.BatchNorm2d):
    """Batch norm of the real and imaginary parts, each channel on its own (naive complex BN)."""

    def __init__(self, channels: int) -> None:
        super().__init__(2 * channels)


def crelu(z: torch.Tensor) -> torch.Tensor:
    """CReLU: ReLU on the real and on the imaginary part."""
    return F.relu(z)


def mc_dropout(z: torch.Tensor, p: float, active: bool) -> torch.Tensor:
    """Dropout that the same mask applies to the real and imaginary part of a complex value.

    ``active`` is independent of train/eval mode, so dropout can stay on at inference
    (Monte-Carlo dropout).
    """
    if not active or p <= 0:
        return z
    re, _ = complex_split(z)
    keep = torch.empty_like(re).bernoulli_(1.0 - p) / (1.0 - p)
    return z * torch.cat([keep, keep], dim=1)


def spectral_pool(z: torch.Tensor) -> torch.Tensor:
    """Halve H and W by keeping the central (lowest) half of each channel's 2D spectrum."""
    h, w = z.shape[-2:]
    Z = torch.fft.fftshift(torch.fft.fft2(z), dim=(-2, -1))
    h0, w0 = h // 4, w // 4
    Z = Z[..., h0 : h0 + h // 2, w0 : w0 + w // 2]
    return torch.fft.ifft2(torch.fft.ifftshift(Z, dim=(-2, -1))).real / 4.0
