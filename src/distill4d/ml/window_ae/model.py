"""The windowing autoencoder: an encoder to a few ReLU "domain" channels and an affine
transform, and a decoder that rebuilds the window's spectrum.

- Encoder: a 4x4 stride-4 convolution and 2x2 pooling, then residual blocks (two 3x3 convolutions, LayerNorm over
  channels and pixels, i.e. ``GroupNorm(1, C)``) each followed by 2x2 average pooling, down to a
  4x4 map; a linear layer to a hidden vector.
- Latent: the domain channels, by default (``latent="softmax"``) competitive: one amplitude per
  window (softplus, >= 0) times a softmax of the channel logits at temperature ``tau`` (annealed
  by the trainer), so that every channel gets a gradient at every step and none is dead from
  initialisation; or (``latent="relu"``, the published design) independent ReLU values; and an
  affine transform from a spatial-transformer head: scale ``1 + 0.1 tanh``, rotation ``max_rotation_deg · tanh`` and a
  translation ``max_shift · tanh`` (fraction of the half width).
- Decoder: one learned non-negative template spectrum per channel (softplus); the channels weigh
  the templates, a learned background is added, and the sum is resampled on the affine grid
  (``affine_grid`` + ``grid_sample``): a window is "this much of variant c, rotated and scaled
  so". The bounded rotation keeps variants more than ``2 max_rotation_deg`` apart in different
  channels.
- Loss: mean squared error, plus for ReLU channels an L1 penalty (sparsity) switched on by the
  trainer's schedule (the softmax latent's sparsity is the competition).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ...errors import Distill4dError
from ..._validate import nonnegative_float, positive_float, positive_int
from .._common.layers import ResBlock

__all__ = ["WindowAE", "WindowAEConfig", "window_ae_loss"]


@dataclasses.dataclass(frozen=True)
class WindowAEConfig:
    """Architecture.

    size : side of the input spectra (px): 32, 64, 128 or 256.
    channels : latent domain channels.
    width : convolution channels of the encoder.
    hidden : width of the encoder's last linear layer.
    max_rotation_deg : bound of the learned rotation (degrees); 0 switches the rotation off.
    max_scale : bound of the learned scale change (1 ± max_scale).
    max_shift : bound of the learned translation (fraction of the half width).
    latent : "relu" (independent ReLU channels) or "softmax" (amplitude x softmax(logits / tau)).
    """

    size: int = 64
    channels: int = 8
    width: int = 16
    hidden: int = 64
    max_rotation_deg: float = 20.0
    max_scale: float = 0.1
    max_shift: float = 0.05
    latent: str = "softmax"

    def __post_init__(self) -> None:
        if self.size not in (32, 64, 128, 256):
            raise Distill4dError(f"size (the feature side) must be 32, 64, 128 or 256 px, got {self.size!r}")
        positive_int("channels", self.channels)
        positive_int("width", self.width)
        positive_int("hidden", self.hidden)
        nonnegative_float("max_rotation_deg", self.max_rotation_deg, maximum=90.0)
        positive_float("max_scale", self.max_scale, maximum=0.5)
        positive_float("max_shift", self.max_shift, maximum=1.0)
        if self.latent not in ("relu", "softmax"):
            raise Distill4dError(f"latent must be 'relu' or 'softmax', got {self.latent!r}")


class WindowAE(nn.Module):
    """The windowing autoencoder on spectra (N, size, size) or (N, 1, size, size) in [0, 1]."""

    def __init__(self, config: WindowAEConfig = WindowAEConfig()) -> None:
        super().__init__()
        if not isinstance(config, WindowAEConfig):
            raise TypeError(f"config must be a WindowAEConfig, got {type(config).__name__}")
        self.config = c = config
        # a 4x4 stride-4 convolution (a learned binning) and 2x2 pooling, then residual blocks and
        # pooling down to 4x4: cheap enough for > 5,000 windows/s on two CPU cores
        layers: list[nn.Module] = [nn.Conv2d(1, c.width, 4, stride=4), nn.ReLU(), nn.AvgPool2d(2)]
        side = c.size // 8
        while True:
            layers.append(ResBlock(c.width))
            if side <= 4:
                break
            layers.append(nn.AvgPool2d(2))
            side //= 2
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c.width * 16, c.hidden)
        self.to_channels = nn.Linear(c.hidden, c.channels)
        if c.latent == "softmax":
            self.to_amplitude = nn.Linear(c.hidden, 1)
            #: the softmax temperature (set by the trainer's schedule; saved with the weights)
            self.register_buffer("tau", torch.tensor(1.0))
        self.to_affine = nn.Linear(c.hidden, 4)
        nn.init.zeros_(self.to_affine.weight)
        nn.init.zeros_(self.to_affine.bias)
        self.templates = nn.Parameter(torch.full((c.channels, c.size, c.size), -2.0))
        self.background = nn.Parameter(torch.full((c.size, c.size), -4.0))
        self.activation = F.relu
        #: the clip level of the features the model was trained on (recorded in its card)
        self.feature_clip: float | None = None

    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"channels" (N, C) >= 0, "scale" (N,), "rotation_deg" (N,), "shift" (N, 2)}``."""
        if x.ndim == 3:
            x = x[:, None]
        h = F.relu(self.fc(self.features(x).flatten(1)))
        a = torch.tanh(self.to_affine(h))
        c = self.config
        if c.latent == "softmax":
            logits = self.to_channels(h)
            channels = F.softplus(self.to_amplitude(h)) * torch.softmax(logits / self.tau, dim=1)
        else:
            channels = self.activation(self.to_channels(h))
        return {"channels": channels, "scale": 1 + c.max_scale * a[:, 0],
                "rotation_deg": c.max_rotation_deg * a[:, 1], "shift": c.max_shift * a[:, 2:]}

    def decode(self, channels: torch.Tensor, scale: torch.Tensor, rotation_deg: torch.Tensor,
               shift: torch.Tensor) -> torch.Tensor:
        """The spectra (N, size, size) of the channels' templates on the affine grids."""
        base = torch.einsum("nc,chw->nhw", channels, F.softplus(self.templates)) + F.softplus(self.background)
        t = rotation_deg * (math.pi / 180)
        cos, sin = torch.cos(t) / scale, torch.sin(t) / scale
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta, (len(base), 1, *base.shape[1:]), align_corners=False)
        return F.grid_sample(base[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """:meth:`encode` plus ``"reconstruction"`` (N, size, size)."""
        z = self.encode(x)
        z["reconstruction"] = self.decode(z["channels"], z["scale"], z["rotation_deg"], z["shift"])
        return z


def window_ae_loss(x: torch.Tensor, out: dict[str, torch.Tensor], *, l1_coef: float = 0.0) -> dict[str, torch.Tensor]:
    """``{"mse", "l1", "total"}``: MSE of the reconstruction and ``l1_coef`` x the mean channel value."""
    if x.ndim == 4:
        x = x[:, 0]
    mse = F.mse_loss(out["reconstruction"], x)
    l1 = out["channels"].mean()
    return {"mse": mse, "l1": l1, "total": mse + l1_coef * l1}


def _check(config: Any) -> WindowAEConfig:
    if isinstance(config, dict):
        return WindowAEConfig(**config)
    return config
