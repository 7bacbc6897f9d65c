"""FCU-Net: a complex-valued Fourier-space U-Net from a CBED pattern to its structure-factor image.

After Munshi et al., npj Comput. Mater. 8, 254 (2022). Inputs are the pattern and the centred
vacuum probe (N x N, each divided by the probe's maximum). The network

1. forms the cross-spectrum ``C = FFT(ifftshift(pattern)) · conj(FFT(ifftshift(probe)))``,
   divided by ``max |C|`` per sample, as one complex channel;
2. runs a complex U-Net on it (complex convolutions, batch norm, CReLU, Monte-Carlo dropout;
   max or spectral pooling; skips concatenated real-with-real, imaginary-with-imaginary);
3. takes the inverse FFT of its complex output channels back to the detector plane
   (``fftshift``: the direct beam at pixel ``(N//2, N//2)``), and maps their real and
   imaginary parts through a real convolution block to a linear 1-channel output: the
   structure-factor image (the (000) spot = 1, see
   :func:`distill4d.simulate.structure_factor.structure_factor_image`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ...errors import Distill4dError
from ..._validate import check_keys
from . import FCUNET_VIEWS
from .._common.layers import (
    ComplexBatchNorm2d,
    ComplexConv2d,
    ComplexMagnitudeNorm2d,
    ModReLU,
    complex_cat,
    crelu,
    magnitude_max_pool,
    mc_dropout,
    spectral_pool,
)

__all__ = ["FCUNet", "FCUNetConfig", "FCUNetViews", "cross_spectrum"]

_POOLS = ("max", "spectral")


@dataclasses.dataclass(frozen=True)
class FCUNetConfig:
    """Architecture of an :class:`FCUNet`.

    size : input side N in pixels (a power of two, ≥ 2**depth · 4).
    filters : complex filters of the first level (doubled at each deeper level).
    depth : number of pooling steps.
    dropout : Monte-Carlo dropout probability in every complex block.
    pool : ``"max"`` (max-pooling of real and imaginary channels) or ``"spectral"``.
    out_channels : complex channels transformed back to the detector plane.
    real_filters : channels of the final real convolution block.
    real_layers : 3x3 convolutions of that block, dilated 1, 2, 4, ... (receptive field
        ``2**(real_layers + 1) - 1`` px).
    correlation_skip : also give the real block the probe cross-correlation
        ``IFFT(C)`` (divided by its maximum): the classical detector's map, which the
        network then only has to sharpen and clean (an addition to the published model;
        docs/experiments.md, FCU-Net).
    equivariant : phase-equivariant complex layers instead of the published ones: magnitude
        normalisation (no centring), modReLU, no complex biases, and max pooling by magnitude
        (with ``pool="max"``). A pattern shift is a phase ramp on the cross-spectrum; CReLU and
        part-wise pooling see the absolute phase, so the published network can tie its peaks to
        absolute detector positions (an addition to the published model).
    """

    size: int = 128
    filters: int = 16
    depth: int = 3
    dropout: float = 0.1
    pool: str = "max"
    out_channels: int = 4
    real_filters: int = 16
    real_layers: int = 2
    correlation_skip: bool = False
    equivariant: bool = False

    def __post_init__(self) -> None:
        for name in ("correlation_skip", "equivariant"):
            if not isinstance(getattr(self, name), bool):
                raise Distill4dError(f"FCUNetConfig.{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("size", "filters", "depth", "out_channels", "real_filters", "real_layers"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise Distill4dError(f"FCUNetConfig.{name} must be a whole number >= 1, got {v!r}")
        if self.size & (self.size - 1) or self.size < 4 * 2**self.depth:
            raise Distill4dError(
                f"FCUNetConfig.size must be a power of two >= 4 * 2**depth = {4 * 2**self.depth}, got {self.size}"
            )
        if not 0 <= self.dropout < 1:
            raise Distill4dError(f"FCUNetConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.pool not in _POOLS:
            raise Distill4dError(f"FCUNetConfig.pool must be one of {_POOLS}, got {self.pool!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FCUNetConfig:
        check_keys(cls, d, "FCUNetConfig")
        return cls(**d)


def cross_spectrum(pattern: torch.Tensor, probe: torch.Tensor) -> torch.Tensor:
    """The normalised cross-spectrum as a complex map ``(N, 2, H, W)`` (real, imaginary).

    ``C = FFT(ifftshift(pattern)) · conj(FFT(ifftshift(probe)))`` / ``max |C|`` per sample;
    ``pattern`` and ``probe`` are ``(N, H, W)`` with the direct beam at ``(H//2, W//2)``.
    """
    P = torch.fft.fft2(torch.fft.ifftshift(pattern, dim=(-2, -1)))
    Q = torch.fft.fft2(torch.fft.ifftshift(probe, dim=(-2, -1)))
    C = P * torch.conj(Q)
    scale = C.abs().flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]
    C = C / scale
    return torch.stack([C.real, C.imag], dim=1)


class _ComplexBlock(nn.Module):
    """Two (complex conv → complex BN → CReLU) steps, then Monte-Carlo dropout.

    ``equivariant``: convolutions without bias, magnitude norm and modReLU instead.
    """

    def __init__(self, cin: int, cout: int, dropout: float, equivariant: bool = False) -> None:
        super().__init__()
        norm = ComplexMagnitudeNorm2d if equivariant else ComplexBatchNorm2d
        self.conv1, self.bn1 = ComplexConv2d(cin, cout, bias=not equivariant), norm(cout)
        self.conv2, self.bn2 = ComplexConv2d(cout, cout, bias=not equivariant), norm(cout)
        self.act1, self.act2 = (ModReLU(cout), ModReLU(cout)) if equivariant else (crelu, crelu)
        self.dropout = dropout
        self.mc = True

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = self.act1(self.bn1(self.conv1(z)))
        z = self.act2(self.bn2(self.conv2(z)))
        return mc_dropout(z, self.dropout, self.mc)


class FCUNet(nn.Module):
    """The FCU-Net; ``forward(pattern, probe)`` with ``(N, H, W)`` tensors → ``(N, H, W)`` image."""

    def __init__(self, config: FCUNetConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or FCUNetConfig()
        f = [cfg.filters * 2**k for k in range(cfg.depth + 1)]
        self.down = nn.ModuleList()
        cin = 1
        for k in range(cfg.depth):
            self.down.append(_ComplexBlock(cin, f[k], cfg.dropout, cfg.equivariant))
            cin = f[k]
        self.bottom = _ComplexBlock(f[cfg.depth - 1], f[cfg.depth], cfg.dropout, cfg.equivariant)
        self.up_conv = nn.ModuleList()
        self.up = nn.ModuleList()
        for k in reversed(range(cfg.depth)):
            self.up_conv.append(ComplexConv2d(f[k + 1], f[k], kernel_size=3, bias=not cfg.equivariant))
            self.up.append(_ComplexBlock(2 * f[k], f[k], cfg.dropout, cfg.equivariant))
        self.to_out = ComplexConv2d(f[0], cfg.out_channels, kernel_size=1, bias=not cfg.equivariant)
        r = cfg.real_filters
        layers: list[nn.Module] = []
        cin = 2 * cfg.out_channels + (1 if cfg.correlation_skip else 0)
        for k in range(cfg.real_layers):
            d = 2**k
            layers += [nn.Conv2d(cin, r, 3, padding=d, dilation=d), nn.ReLU()]
            cin = r
        layers.append(nn.Conv2d(cin, 1, 1))
        self.real = nn.Sequential(*layers)

    def set_mc_dropout(self, active: bool) -> None:
        """Keep dropout on (Monte-Carlo) or off, independently of train/eval mode."""
        for m in self.modules():
            if isinstance(m, _ComplexBlock):
                m.mc = bool(active)

    def _pool(self, z: torch.Tensor) -> torch.Tensor:
        if self.config.pool == "spectral":
            return spectral_pool(z)
        return magnitude_max_pool(z) if self.config.equivariant else F.max_pool2d(z, 2)

    def head_inputs(
        self, pattern: torch.Tensor, probe: torch.Tensor, field_shift_px: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The real block's input ``(N, 2 out_channels [+ 1], H, W)``: the real and imaginary parts
        of the U-Net's output fields in the detector plane, then (``correlation_skip``) the probe
        cross-correlation. ``forward`` is ``real(head_inputs)``; swapping one part between two
        patterns shows which part places the peaks (benchmarks/fcunet_validation.py).

        ``field_shift_px`` ``(N, 2)``: shift the fields (not the correlation) by this many pixels
        along (qx, qy), a Fourier shift (training with ``field_jitter_px``)."""
        n = self.config.size
        if pattern.ndim != 3 or pattern.shape[-2:] != (n, n) or probe.shape != pattern.shape:
            raise Distill4dError(
                f"FCUNet expects pattern and probe of shape (batch, {n}, {n}), got {tuple(pattern.shape)} "
                f"and {tuple(probe.shape)}"
            )
        z = cross_spectrum(pattern, probe)
        z0 = z
        skips = []
        for block in self.down:
            z = block(z)
            skips.append(z)
            z = self._pool(z)
        z = self.bottom(z)
        for conv, block, skip in zip(self.up_conv, self.up, reversed(skips)):
            z = conv(F.interpolate(z, scale_factor=2, mode="nearest"))
            z = block(complex_cat(z, skip))
        z = self.to_out(z)
        c = self.config.out_channels
        spectrum = torch.complex(z[:, :c], z[:, c:])
        if field_shift_px is not None:
            if field_shift_px.shape != (pattern.shape[0], 2):
                raise Distill4dError(f"field_shift_px must have shape ({pattern.shape[0]}, 2), got {tuple(field_shift_px.shape)}")
            k = torch.fft.fftfreq(n, device=spectrum.device)
            s = field_shift_px.to(device=spectrum.device, dtype=k.dtype)
            phase = s[:, 0, None, None] * k[None, :, None] + s[:, 1, None, None] * k[None, None, :]
            spectrum = spectrum * torch.exp(-2j * math.pi * phase)[:, None]
        field = torch.fft.fftshift(torch.fft.ifft2(spectrum), dim=(-2, -1))
        # the inverse FFT divides by N²; bring the real-space map back to order one
        field = field * float(n)
        maps = [field.real, field.imag]
        if self.config.correlation_skip:
            corr = torch.fft.fftshift(torch.fft.ifft2(torch.complex(z0[:, 0], z0[:, 1])).real, dim=(-2, -1))
            corr = corr / corr.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]
            maps.append(corr[:, None])
        return torch.cat(maps, dim=1)

    def forward(
        self, pattern: torch.Tensor, probe: torch.Tensor, field_shift_px: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.real(self.head_inputs(pattern, probe, field_shift_px))[:, 0]


def _mirror(t: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Mirror ``t`` about pixel ``N//2`` along ``dims`` (index i -> N - i, modulo N): the direct
    beam stays where it is. Its own inverse."""
    for d in dims:
        t = torch.roll(torch.flip(t, (d,)), 1, d)
    return t


class FCUNetViews(nn.Module):
    """An FCU-Net averaged over symmetric views of its input (test-time augmentation).

    ``forward(pattern, probe)`` is the mean, over the views, of the model's prediction for the
    mirrored (and, for ``dihedral``, transposed) pattern and probe, mapped back: a prediction
    that mirrors exactly with its input, whatever the weights learned. ``flips``: 4 views
    (none, qx, qy, both); ``dihedral``: those and their transposes (8). Costs that many passes.
    """

    def __init__(self, model: FCUNet, views: str = "flips") -> None:
        super().__init__()
        if views not in FCUNET_VIEWS:
            raise Distill4dError(f"views must be one of {FCUNET_VIEWS}, got {views!r}")
        self.model = model
        self.views = views
        mirrors: list[tuple[int, ...]] = [(), (-2,), (-1,), (-2, -1)] if views != "none" else [()]
        self._ops = [(m, t) for m in mirrors for t in ((False, True) if views == "dihedral" else (False,))]

    @property
    def config(self) -> FCUNetConfig:
        return self.model.config

    def set_mc_dropout(self, active: bool) -> None:
        self.model.set_mc_dropout(active)

    def forward(self, pattern: torch.Tensor, probe: torch.Tensor) -> torch.Tensor:
        out = None
        for dims, transpose in self._ops:
            x, p = _mirror(pattern, dims), _mirror(probe, dims)
            if transpose:
                x, p = x.transpose(-1, -2).contiguous(), p.transpose(-1, -2).contiguous()
            y = self.model(x, p)
            if transpose:
                y = y.transpose(-1, -2)
            y = _mirror(y, dims)
            out = y if out is None else out + y
        return out / len(self._ops)
