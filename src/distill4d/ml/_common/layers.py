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

from ...errors import Distill4dError

__all__ = [
    "ResBlock",
    "ComplexBatchNorm2d",
    "ComplexConv2d",
    "complex_cat",
    "ComplexMagnitudeNorm2d",
    "ModReLU",
    "complex_split",
    "crelu",
    "magnitude_max_pool",
    "mc_dropout",
    "spectral_pool",
]


def _check_channels(layer: str, z: torch.Tensor, channels: int) -> None:
    if z.shape[1] != 2 * channels:
        raise Distill4dError(f"{layer} expects {2 * channels} real channels (re + im), got {z.shape[1]}")


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
        _check_channels("ComplexConv2d", z, self.in_channels)
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


# ----------------------------------------------------------------------------- phase-equivariant variants
# A shift of the pattern by s pixels multiplies the cross-spectrum by the phase ramp
# exp(-2 pi i k.s / N). CReLU, max pooling of real and imaginary parts, batch norm of each part
# and a complex bias all depend on the absolute phase, so a network built from them can tie its
# output to absolute detector positions. The layers below commute with multiplying a map by a
# unit phase factor (exactly for a constant one, approximately for a slowly varying ramp).


class ComplexMagnitudeNorm2d(nn.Module):
    """``z / sqrt(mean |z|² + eps) * gamma`` per channel (no centring, real gain ``gamma``).

    Statistics over the batch and pixels in training (running averages used in eval mode, as
    batch norm), so the layer commutes with multiplying ``z`` by a unit phase factor.
    """

    def __init__(self, channels: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.channels, self.momentum, self.eps = channels, momentum, eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.register_buffer("running_power", torch.ones(channels))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        _check_channels("ComplexMagnitudeNorm2d", z, self.channels)
        re, im = complex_split(z)
        if self.training:
            power = (re * re + im * im).mean(dim=(0, 2, 3))
            with torch.no_grad():
                self.running_power.lerp_(power.detach(), self.momentum)
        else:
            power = self.running_power
        g = (self.weight / torch.sqrt(power + self.eps))[None, :, None, None]
        return torch.cat([re * g, im * g], dim=1)


class ModReLU(nn.Module):
    """modReLU: ``z · relu(|z| + b) / |z|`` with a learnt real bias ``b`` per channel (init ``bias``).

    Keeps each value's phase and thresholds its magnitude (Arjovsky et al. 2016).
    """

    def __init__(self, channels: int, bias: float = -0.3) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.full((channels,), float(bias)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        _check_channels("ModReLU", z, self.bias.numel())
        re, im = complex_split(z)
        mag = torch.sqrt(re * re + im * im + 1e-12)
        scale = F.relu(mag + self.bias[None, :, None, None]) / mag
        return torch.cat([re * scale, im * scale], dim=1)


def magnitude_max_pool(z: torch.Tensor) -> torch.Tensor:
    """2 x 2 max pooling by magnitude: the complex value of largest ``|z|`` in each block."""
    re, im = complex_split(z)
    _, idx = F.max_pool2d(re * re + im * im, 2, return_indices=True)
    where = idx.flatten(2)  # indices into each channel's flattened H x W map
    re_max = torch.gather(re.flatten(2), 2, where).view_as(idx)
    im_max = torch.gather(im.flatten(2), 2, where).view_as(idx)
    return torch.cat([re_max, im_max], dim=1)


class ResBlock(nn.Module):
    """conv-LN-ReLU-conv-LN plus the input, then ReLU (3x3 convolutions keeping ``c`` channels;
    LN = GroupNorm(1): over channels and space). Shared by the CC-ST-AE and window-AE encoders."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.norm1 = nn.GroupNorm(1, c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.norm2 = nn.GroupNorm(1, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        return F.relu(x + self.norm2(self.conv2(y)))
