"""CC-ST-AE: the cycle-consistent spatial-transforming autoencoder (Qin, Agar & Tran 2023).

Geometry. Patterns live on an ``S x S`` grid whose pixel ``c = (S//2, S//2)`` is the direct
beam. An affine ``(A, t)`` maps a base-frame offset ``u`` (pixels from ``c``, ``(qx, qy)``
order) to the input offset ``A u + t``: :func:`warp` gives ``out(c + u) = img(c + A u + t)``.
A pattern that is its base with every Bragg vector moved as ``g = D g0`` is mapped back onto
the base by ``A = D``; for a real-space deformation ``F`` (DESIGN: ``A_real = F A_ref``)
``D = F^-T``, so ``F = A^-T``.

Model. An encoder (convolutions, residual blocks with a layer norm over channels and space,
max pooling) gives a latent vector; a hard top-1 choice among ``num_base`` learned base
patterns (straight-through gradient); and the affine parameters, each bounded, from the
choice and either the latent (the paper) or, by default, a second encoder fed with the
residual against the chosen base (``CCSTAEConfig.residual_features``): scales ``1 ± scale_limit·tanh``, a symmetric shear
``shear_limit·tanh``, a rotation ``rotation_limit·tanh`` and optionally a translation
``translation_limit_px·tanh``: ``A = R(φ) [[sx, sh], [sh, sy]]``. The decoder is the chosen
base (a free image per base). The loss (:func:`ccstae_loss`) compares, inside a mask around
the Bragg spots, the input warped onto the base with the base, and the base warped back by
the inverse affine with the input (cycle consistency).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as nnf

from ...errors import Distill4dError
from ..._validate import check_keys, nonnegative_float, positive_float, positive_int
from .._common.layers import ResBlock

__all__ = ["CCSTAE", "CCSTAEConfig", "ccstae_loss", "inverse_affine", "warp"]

#: Pre-activations of the bounded parameters beyond this are penalised (tanh(2.5) = 0.987),
#: so that they stay where tanh still has a gradient.
HINGE_AT = 2.5


@dataclasses.dataclass(frozen=True)
class CCSTAEConfig:
    """Architecture of a CC-ST-AE.

    size : the pattern grid (pixels, even, >= 16).
    num_base : number of base patterns (phases, sample / vacuum, ...).
    channels : encoder channels per level (each level halves the grid).
    latent : latent vector length.
    scale_limit, shear_limit : bounds of ``|s - 1|`` and ``|shear|`` (fractions).
    rotation_limit_deg : bound of the rotation (degrees).
    translation_limit_px : bound of the translation (grid pixels); 0 = no translation.
    coord_channels : also feed the encoder the image times each grid coordinate (CoordConv-like
        first moments), which makes sub-pixel spot displacements linear features.
    residual_features : the affine parameters come from a second encoder that sees the
        residual ``r = (x − base)·mask`` against the chosen base times the base's gradient and
        the coordinates (the terms of a Gauss-Newton step of image registration), instead of
        the shared latent. An addition to the published design (see :class:`CCSTAE`).
    """

    size: int = 64
    num_base: int = 2
    channels: tuple[int, ...] = (16, 32, 32)
    latent: int = 32
    scale_limit: float = 0.05
    shear_limit: float = 0.05
    rotation_limit_deg: float = 5.0
    translation_limit_px: float = 0.0
    coord_channels: bool = True
    residual_features: bool = True

    def __post_init__(self) -> None:
        size = positive_int("size", self.size)
        if size < 16 or size % 2:
            raise Distill4dError(f"size must be an even number of pixels >= 16, got {self.size!r}")
        if positive_int("num_base", self.num_base) > 16:
            raise Distill4dError(f"num_base must be at most 16, got {self.num_base!r}")
        ch = tuple(self.channels)
        if not ch or len(ch) > int(math.log2(size)) - 2:
            raise Distill4dError(f"channels must list 1 to {int(math.log2(size)) - 2} levels for size {size}, got {ch!r}")
        for c in ch:
            if positive_int("channels", c) > 1024:
                raise Distill4dError(f"channels must be at most 1024 per level, got {ch!r}")
        object.__setattr__(self, "channels", ch)
        if positive_int("latent", self.latent) > 4096:
            raise Distill4dError(f"latent must be at most 4096, got {self.latent!r}")
        positive_float("scale_limit", self.scale_limit, maximum=0.5)
        positive_float("shear_limit", self.shear_limit, maximum=0.5)
        positive_float("rotation_limit_deg", self.rotation_limit_deg, maximum=180.0)
        nonnegative_float("translation_limit_px", self.translation_limit_px)

    @property
    def n_params(self) -> int:
        return 6 if self.translation_limit_px > 0 else 4

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CCSTAEConfig:
        check_keys(cls, d, "CC-ST-AE config")
        return cls(**{**d, "channels": tuple(d.get("channels", cls.channels))})


def _encoder(cfg: CCSTAEConfig, c0: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c0, cfg.channels[0], 3, padding=1), nn.GroupNorm(1, cfg.channels[0]), nn.ReLU()]
    c_in = cfg.channels[0]
    for c in cfg.channels:
        if c != c_in:
            layers += [nn.Conv2d(c_in, c, 1), nn.GroupNorm(1, c), nn.ReLU()]
        layers += [ResBlock(c), nn.MaxPool2d(2)]
        c_in = c
    # a leaky latent: a ReLU bottleneck can die (all units off) and freeze every transform
    layers += [nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(c_in * 16, cfg.latent), nn.LeakyReLU(0.1)]
    return nn.Sequential(*layers)


class CCSTAE(nn.Module):
    """The autoencoder; ``forward(x)`` with ``x`` ``(N, S, S)`` returns a dict:
    ``logits`` (N, K), ``choice`` (N, K; one-hot values, straight-through gradient),
    ``params`` (N, P) pre-activations, ``A`` (N, 2, 2), ``t`` (N, 2; grid pixels) and
    ``base`` (N, S, S), the chosen base.

    Buffers: ``spot_mask`` (S, S), the loss mask, and ``input_mean`` (S, S), the scan's mean
    pattern. The encoder sees ``(x − input_mean) · spot_mask``: the deviation from the mean is
    where a sub-pixel displacement shows (a derivative image), not buried under the spots.
    """

    def __init__(self, config: CCSTAEConfig = CCSTAEConfig()) -> None:
        super().__init__()
        if not isinstance(config, CCSTAEConfig):
            raise TypeError(f"config must be a CCSTAEConfig, got {type(config).__name__}")
        self.config = config
        s, k = config.size, config.num_base
        self.encoder = _encoder(config, 3 if config.coord_channels else 1)
        self.class_head = nn.Linear(config.latent, k)
        self.affine_encoder = _encoder(config, 7) if config.residual_features else None
        self.affine_head = nn.Linear(config.latent + k, config.n_params)
        # start near the identity transform, with gradients reaching the encoder from step one
        nn.init.normal_(self.affine_head.weight, std=1e-3)
        nn.init.zeros_(self.affine_head.bias)
        self.bases = nn.Parameter(torch.zeros(k, s, s))
        self.register_buffer("spot_mask", torch.ones(s, s))
        self.register_buffer("input_mean", torch.zeros(s, s))

    def affine(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, t)`` of the pre-activations ``params`` (N, P)."""
        c = self.config
        th = torch.tanh(params)
        sx = 1 + c.scale_limit * th[:, 0]
        sy = 1 + c.scale_limit * th[:, 1]
        sh = c.shear_limit * th[:, 2]
        phi = math.radians(c.rotation_limit_deg) * th[:, 3]
        cos, sin = torch.cos(phi), torch.sin(phi)
        R = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
        S = torch.stack([torch.stack([sx, sh], -1), torch.stack([sh, sy], -1)], -2)
        if c.translation_limit_px > 0:
            t = c.translation_limit_px * th[:, 4:6]
        else:
            t = params.new_zeros(params.shape[0], 2)
        return R @ S, t

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.ndim != 3 or x.shape[1:] != self.spot_mask.shape:
            raise Distill4dError(f"x must have shape (N, {self.config.size}, {self.config.size}), got {tuple(x.shape)}")
        xm = ((x - self.input_mean) * self.spot_mask)[:, None]
        if self.config.coord_channels:
            u = (torch.arange(x.shape[-1], dtype=x.dtype, device=x.device) - x.shape[-1] // 2) / (x.shape[-1] // 2)
            xm = torch.cat([xm, xm * u[:, None], xm * u[None, :]], dim=1)
        h = self.encoder(xm)
        logits = self.class_head(h)
        soft = torch.softmax(logits, dim=1)
        hard = nnf.one_hot(soft.argmax(dim=1), self.config.num_base).to(soft.dtype)
        choice = hard + soft - soft.detach()
        base = torch.einsum("nk,khw->nhw", choice, self.bases)
        if self.affine_encoder is not None:
            h = self.affine_encoder(self._residual_features(x, base.detach()))
        params = self.affine_head(torch.cat([h, choice], dim=1))
        A, t = self.affine(params)
        return {"logits": logits, "choice": choice, "params": params, "A": A, "t": t, "base": base}


    def _residual_features(self, x: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """(N, 7, S, S): r, r·∂b/∂qx, r·∂b/∂qy and the latter two times each coordinate (r = (x − b)·mask)."""
        s = x.shape[-1]
        u = (torch.arange(s, dtype=x.dtype, device=x.device) - s // 2) / (s // 2)
        gx = 0.5 * (torch.roll(base, -1, 1) - torch.roll(base, 1, 1))
        gy = 0.5 * (torch.roll(base, -1, 2) - torch.roll(base, 1, 2))
        r = (x - base) * self.spot_mask
        ux, uy = u[:, None], u[None, :]
        f = [r, r * gx, r * gy, r * gx * ux, r * gx * uy, r * gy * ux, r * gy * uy]
        return torch.stack(f, dim=1)


def inverse_affine(A: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse transform: ``warp(warp(img, A, t), *inverse_affine(A, t)) ≈ img``."""
    Ai = torch.linalg.inv(A)
    return Ai, -(Ai @ t[..., None])[..., 0]


def warp(images: torch.Tensor, A: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``out(c + u) = images(c + A u + t)`` (bilinear, zero outside) for images ``(N, S, S)``,
    ``A`` (N, 2, 2), ``t`` (N, 2) in pixels, ``c = (S//2, S//2)``; ``(qx, qy)`` = (rows, columns)."""
    _, sx, sy = images.shape
    if sx != sy:
        raise Distill4dError(f"images must be square, got {tuple(images.shape)}")
    s = sx
    u = torch.arange(s, dtype=images.dtype, device=images.device) - s // 2
    U = torch.stack(torch.meshgrid(u, u, indexing="ij"), -1)  # (S, S, 2) offsets (qx, qy)
    pos = torch.einsum("nij,hwj->nhwi", A.to(images.dtype), U) + t.to(images.dtype)[:, None, None, :] + s // 2
    grid = torch.stack([pos[..., 1], pos[..., 0]], -1) * (2.0 / (s - 1)) - 1.0  # grid_sample wants (col, row)
    return nnf.grid_sample(images[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)[:, 0]


def _huber(r: torch.Tensor, delta: float) -> torch.Tensor:
    a = r.abs()
    return torch.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def ccstae_loss(
    model: CCSTAE,
    x: torch.Tensor,
    out: dict[str, torch.Tensor],
    *,
    delta: float,
    l1_coef: float = 0.0,
    hinge_coef: float = 1.0,
) -> dict[str, torch.Tensor]:
    """The training loss of a batch ``x`` (N, S, S) and the model's output on it.

    ``forward``: Huber(mask · (warp(x, A, t) − base)); ``cycle``: Huber(mask · (warp(base, A⁻¹) − x)),
    each a mean over the mask's pixels (quadratic below ``delta``, L1 above: robust to hot
    pixels and outliers); ``l1``: ``l1_coef`` × mean |bases| inside the mask; ``hinge``:
    ``hinge_coef`` × mean of relu(|pre-activation| − 2.5)² of the scale and shear parameters.
    ``total`` is their sum.
    """
    mask = model.spot_mask
    norm = mask.sum() * x.shape[0]
    A, t, base = out["A"], out["t"], out["base"]
    fwd = _huber(mask * (warp(x, A, t) - base), delta).sum() / norm
    Ai, ti = inverse_affine(A, t)
    cyc = _huber(mask * (warp(base, Ai, ti) - x), delta).sum() / norm
    l1 = l1_coef * (model.bases.abs() * mask).sum() / (mask.sum() * model.config.num_base)
    hinge = hinge_coef * torch.relu(out["params"][:, :3].abs() - HINGE_AT).pow(2).mean()
    return {"forward": fwd, "cycle": cyc, "l1": l1, "hinge": hinge, "total": fwd + cyc + l1 + hinge}
