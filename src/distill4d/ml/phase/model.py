"""ML phase retrieval (Cao et al., Microsc. Microanal. 2020): 4D scan → one value per probe position.

Both models read a *block* of prepared patterns ``(B, X + 2r, Y + 2r, N, N)`` (a tile of the
scan plus a halo of ``r`` positions on each side; ``N x N`` detector grid in units of the
convergence angle, centre at ``(N - 1) / 2``) and return ``(B, X, Y)``: the value at each
position of the tile from the ``c x c`` cluster of patterns around it (``c = 2 r + 1``).
Computed on whole blocks (fully convolutional in the scan), not cluster by cluster, so a
64 x 64 scan costs one pass.

- :class:`RadialLinear`: layer 1 weights every pattern with ``n_masks`` radially symmetric
  masks (a weight per radial bin of ``|k|``: learned virtual detectors); layer 2 combines the
  cluster's ``n_masks x c²`` values with weights that depend only on the distance of the
  cluster position from the centre (radially symmetric in the scan). Linear in the data, and
  exactly invariant to 90° rotations and transposition of patterns and scan together.
- :class:`RingMLP`: a small MLP (one hidden layer) on features of the cluster that are invariant
  to rotating patterns and scan together: for each distance ring of the cluster, radial bin of
  ``|k|`` and angular harmonic ``h = 0 .. harmonics``, the sum over the ring's positions ``p`` and
  the bin's pixels ``k`` of ``cos(h (φ_p − φ_k)) · I_p(k)`` (``h = 1`` is the centre-of-mass
  shift towards ``p``, what iDPC integrates). Trained in seconds by L-BFGS on one scan region.
- :class:`Conv4dNet`: two 4D convolutions over (scan x, scan y, kx, ky) (3 x 3 x 3 x 3, valid
  in the scan, 'same' on the detector), each followed by ReLU and 2 x 2 max pooling over the
  detector, then dropout and a dense head per position.
- :class:`Conv4d`: the 4D convolution as a sum of 3D convolutions over the first scan axis
  (``out[x] = Σ_i conv3d(in[x + i], W[:, :, i])``), checked against a direct loop in the tests.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ...errors import Distill4dError
from ..._validate import check_keys, positive_float, positive_int
from .linear_fit import bin_onehot

__all__ = ["Conv4d", "Conv4dNet", "PhaseConfig", "RadialLinear", "RingMLP", "build_phase_model", "radial_index"]

_MODELS = ("linear", "conv4d", "mlp")


@dataclass(frozen=True)
class PhaseConfig:
    """Architecture and detector preparation of a phase-retrieval model.

    model : ``"linear"`` (:class:`RadialLinear`), ``"mlp"`` (:class:`RingMLP`) or ``"conv4d"`` (:class:`Conv4dNet`).
    size : prepared detector grid N (N x N pixels; even, >= 8).
    extent : the grid spans ``± extent`` convergence semiangles from the beam centre.
    cluster : c, the cluster of c x c neighbouring patterns per output pixel (3 or 5; the
        4D CNN with two 3 x 3 scan kernels needs 5).
    n_bins : radial bins of ``|k|`` (linear model), default ``size // 2`` (one per pixel ring).
    n_masks : radially symmetric masks of layer 1 (linear model).
    harmonics : angular harmonics 0 .. harmonics of the MLP's features (``"mlp"``).
    channels : output channels of the two 4D convolutions (4D CNN).
    hidden : width of the dense head (4D CNN) or of the hidden layer (MLP).
    dropout : dropout before the dense head (4D CNN; off at inference).
    input_norm : "scan" (default) or "pattern". Each pattern is divided by its mean; with "scan", the
        scan's mean prepared pattern is then subtracted and the result divided by its RMS over the
        scan: the model sees how each pattern differs from the scan's average, which removes what
        a material or thickness does to every pattern alike (measured: the 4D CNN's r on the thick
        SrTiO3 test 0.09 → 0.38, on the unseen MoS2 field 0.992 → 0.997).
    """

    model: str = "linear"
    size: int = 16
    extent: float = 2.0
    cluster: int = 5
    n_bins: int | None = None
    n_masks: int = 4
    harmonics: int = 2
    channels: tuple[int, int] = (8, 16)
    hidden: int = 32
    dropout: float = 0.1
    input_norm: str = "scan"

    def __post_init__(self) -> None:
        if self.model not in _MODELS:
            raise Distill4dError(f"model must be one of {_MODELS}, got {self.model!r}")
        size = positive_int("size", self.size, minimum=8)
        if size % 4:
            raise Distill4dError(f"size must be a multiple of 4 (pooled twice by 2), got {self.size!r}")
        positive_float("extent", self.extent, maximum=20.0)
        if self.cluster not in (3, 5):
            raise Distill4dError(f"cluster must be 3 or 5, got {self.cluster!r}")
        if self.model == "conv4d" and self.cluster != 5:
            raise Distill4dError("the 4D CNN (two 3 x 3 scan kernels, valid) needs cluster = 5")
        if self.n_bins is not None:
            positive_int("n_bins", self.n_bins, minimum=2)
        positive_int("n_masks", self.n_masks)
        if not isinstance(self.harmonics, int) or isinstance(self.harmonics, bool) or not 0 <= self.harmonics <= 4:
            raise Distill4dError(f"harmonics must be an integer 0 to 4, got {self.harmonics!r}")
        if len(tuple(self.channels)) != 2:
            raise Distill4dError(f"channels must be two integers, got {self.channels!r}")
        for c in self.channels:
            positive_int("channels", c)
        positive_int("hidden", self.hidden)
        if self.input_norm not in ("pattern", "scan"):
            raise Distill4dError(f"input_norm must be 'pattern' or 'scan', got {self.input_norm!r}")
        if not 0 <= float(self.dropout) < 1:
            raise Distill4dError(f"dropout must be in [0, 1), got {self.dropout!r}")

    @property
    def radius(self) -> int:
        """Halo r = (c - 1) / 2 scan positions."""
        return (self.cluster - 1) // 2

    @property
    def bins(self) -> int:
        return self.n_bins if self.n_bins is not None else self.size // 2

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PhaseConfig:
        check_keys(cls, d, "phase model config")
        return cls(**{**d, "channels": tuple(d.get("channels", cls.channels))})


def radial_index(size: int, n_bins: int) -> np.ndarray:
    """Radial bin (0 .. n_bins-1) of every pixel of a ``size x size`` grid centred at
    ``(size - 1) / 2``: bins of equal width in |k| up to the edge midpoint (``size / 2``); the
    corners beyond share the last bin. Invariant under ``np.rot90`` and transposition."""
    c = (size - 1) / 2
    u = np.arange(size) - c
    r = np.hypot(u[:, None], u[None, :])
    return np.minimum((r / (size / 2) * n_bins).astype(np.int64), n_bins - 1)


def _cluster_rings(cluster: int) -> tuple[np.ndarray, int]:
    """Index of the distinct distance |(dx, dy)| of each cluster position (c x c) and their count."""
    r = (cluster - 1) // 2
    d2 = (np.arange(-r, r + 1)[:, None] ** 2 + np.arange(-r, r + 1)[None, :] ** 2).ravel()
    values, ring = np.unique(d2, return_inverse=True)
    return ring.reshape(cluster, cluster), len(values)


class RadialLinear(nn.Module):
    """Linear model: ``out = b + Σ_m Σ_p w2[m, ring(p)] · Σ_k w1[m, bin(k)] · I_p(k)``."""

    def __init__(self, config: PhaseConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("bins", torch.as_tensor(radial_index(config.size, config.bins)).reshape(-1))
        ring, n_rings = _cluster_rings(config.cluster)
        self.register_buffer("rings", torch.as_tensor(ring))
        m = config.n_masks
        g = torch.Generator().manual_seed(0)
        self.w1 = nn.Parameter(0.1 * torch.randn(m, config.bins, generator=g))
        self.w2 = nn.Parameter(0.1 * torch.randn(m, n_rings, generator=g))
        self.bias = nn.Parameter(torch.zeros(()))

    def masks(self) -> torch.Tensor:
        """Layer-1 masks on the detector grid ``(n_masks, N, N)`` (the learned virtual detectors)."""
        n = self.config.size
        return self.w1[:, self.bins].reshape(-1, n, n)

    def cluster_weights(self) -> torch.Tensor:
        """Layer-2 weights over the cluster ``(n_masks, c, c)``."""
        return self.w2[:, self.rings]

    def forward(self, block: torch.Tensor) -> torch.Tensor:
        b, xh, yh, n, _ = block.shape
        feats = block.reshape(b * xh * yh, n * n) @ self.masks().reshape(-1, n * n).T  # (B·Xh·Yh, M)
        feats = feats.reshape(b, xh, yh, -1).permute(0, 3, 1, 2)  # (B, M, Xh, Yh)
        out = F.conv2d(feats, self.cluster_weights().unsqueeze(0))  # valid: (B, 1, X, Y)
        return out[:, 0] + self.bias

    def bin_sums(self, patterns: torch.Tensor) -> torch.Tensor:
        """``(..., N, N)`` prepared patterns → ``(..., n_bins)``: the sum of each radial bin."""
        n = self.config.size
        onehot = torch.zeros(n * n, self.config.bins, dtype=patterns.dtype, device=patterns.device)
        onehot[torch.arange(n * n, device=patterns.device), self.bins] = 1
        return (patterns.reshape(-1, n * n) @ onehot).reshape(patterns.shape[:-2] + (self.config.bins,))

    def forward_binned(self, sums: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` of a block of :meth:`bin_sums` ``(B, X + 2r, Y + 2r, n_bins)``: the same
        function (the masks are constant on each bin), n_bins instead of N² values per pattern."""
        b, xh, yh, nb = sums.shape
        feats = (sums.reshape(-1, nb) @ self.w1.T).reshape(b, xh, yh, -1).permute(0, 3, 1, 2)
        out = F.conv2d(feats, self.cluster_weights().unsqueeze(0))
        return out[:, 0] + self.bias


def _pixel_angles(size: int) -> np.ndarray:
    """Azimuth ``atan2(ky, kx)`` of every pixel of a ``size x size`` grid centred at ``(size - 1) / 2``
    (``kx`` along the first axis)."""
    u = np.arange(size) - (size - 1) / 2
    return np.arctan2(u[None, :] + 0 * u[:, None], u[:, None] + 0 * u[None, :])


class RingMLP(nn.Module):
    """MLP on rotation-invariant cluster features: ``out = net((f − mean) / scale)`` with
    ``f[h, ring, bin] = Σ_{p ∈ ring} Σ_{k ∈ bin} cos(h (φ_p − φ_k)) I_p(k)`` (``h = 0 .. harmonics``; the
    centre position, with no direction, only in ``h = 0``); ``mean`` and ``scale`` are set from the
    training features."""

    def __init__(self, config: PhaseConfig) -> None:
        super().__init__()
        self.config = config
        n, nb, H = config.size, config.bins, config.harmonics
        bins = radial_index(n, nb).reshape(-1)
        phi_k = _pixel_angles(n).reshape(-1)
        onehot = bin_onehot(bins, nb)
        # detector basis: the bin sums, then for each harmonic the bin sums weighted by cos(h φ_k), sin(h φ_k)
        basis = [onehot] + [onehot * f(h * phi_k)[:, None] for h in range(1, H + 1) for f in (np.cos, np.sin)]
        ring, n_rings = _cluster_rings(config.cluster)
        c = config.cluster
        phi_p = _pixel_angles(c)  # azimuth of each cluster position about the centre one
        n_in = nb * (2 * H + 1)
        n_feat = n_rings * nb + H * (n_rings - 1) * nb
        kernel = np.zeros((n_feat, n_in, c, c))
        o = 0
        for h in range(H + 1):
            for rg in range(0 if h == 0 else 1, n_rings):
                on = ring == rg
                for b in range(nb):
                    if h == 0:
                        kernel[o, b][on] = 1.0
                    else:
                        kernel[o, nb * (2 * h - 1) + b][on] = np.cos(h * phi_p[on])
                        kernel[o, nb * (2 * h) + b][on] = np.sin(h * phi_p[on])
                    o += 1
        self.register_buffer("basis", torch.as_tensor(np.concatenate(basis, 1), dtype=torch.float32), persistent=False)
        self.register_buffer("kernel", torch.as_tensor(kernel, dtype=torch.float32), persistent=False)
        self.register_buffer("mean", torch.zeros(n_feat))
        self.register_buffer("scale", torch.ones(n_feat))
        g = torch.Generator().manual_seed(0)
        self.hidden = nn.Linear(n_feat, config.hidden)
        self.out = nn.Linear(config.hidden, 1)
        with torch.no_grad():
            for layer in (self.hidden, self.out):
                bound = 1 / math.sqrt(layer.in_features)
                layer.weight.uniform_(-bound, bound, generator=g)
                layer.bias.zero_()

    def features(self, block: torch.Tensor) -> torch.Tensor:
        """``(B, X + 2r, Y + 2r, N, N)`` → the raw invariant features ``(B, X, Y, n_features)``."""
        b, xh, yh, n, _ = block.shape
        g = (block.reshape(-1, n * n) @ self.basis).reshape(b, xh, yh, -1).permute(0, 3, 1, 2)
        return F.conv2d(g, self.kernel).permute(0, 2, 3, 1)

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        """The MLP on raw features ``(..., n_features)`` → ``(...)``."""
        return self.out(torch.tanh(self.hidden((feats - self.mean) / self.scale)))[..., 0]

    def forward(self, block: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(block))


class Conv4d(nn.Module):
    """4D convolution of ``(B, C, X, Y, Qx, Qy)``: kernel ``k`` on every axis, valid on the two
    scan axes, zero 'same' padding on the two detector axes; out ``(B, O, X-k+1, Y-k+1, Qx, Qy)``."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3) -> None:
        super().__init__()
        self.kernel = kernel
        fan_in = c_in * kernel**4
        bound = 1 / math.sqrt(fan_in)
        self.weight = nn.Parameter(torch.empty(c_out, c_in, kernel, kernel, kernel, kernel).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(c_out).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, X, Y, qx, qy = x.shape
        k = self.kernel
        xo = X - k + 1
        if xo < 1 or Y - k + 1 < 1:
            raise Distill4dError(f"Conv4d needs at least {k} scan positions per axis, got {X} x {Y}")
        xp = x.permute(0, 2, 1, 3, 4, 5)  # (B, X, C, Y, Qx, Qy)
        out = None
        for i in range(k):
            part = xp[:, i : i + xo].reshape(b * xo, c, Y, qx, qy)
            y = F.conv3d(part, self.weight[:, :, i], padding=(0, k // 2, k // 2))
            out = y if out is None else out + y
        out = out + self.bias.view(1, -1, 1, 1, 1)
        o = out.shape[1]
        return out.reshape(b, xo, o, *out.shape[2:]).permute(0, 2, 1, 3, 4, 5)


def _pool_q(x: torch.Tensor) -> torch.Tensor:
    """2 x 2 max pooling over the two detector axes of ``(B, C, X, Y, Qx, Qy)``."""
    b, c, X, Y, qx, qy = x.shape
    y = F.max_pool2d(x.reshape(b * c * X * Y, 1, qx, qy), 2)
    return y.reshape(b, c, X, Y, qx // 2, qy // 2)


class Conv4dNet(nn.Module):
    """Conv4d → ReLU → pool → Conv4d → ReLU → pool → dropout → dense (hidden) → ReLU → dense (1)."""

    def __init__(self, config: PhaseConfig) -> None:
        super().__init__()
        self.config = config
        c1, c2 = config.channels
        self.conv1 = Conv4d(1, c1)
        self.conv2 = Conv4d(c1, c2)
        self.dropout = nn.Dropout(config.dropout)
        n = config.size // 4
        self.head = nn.Sequential(nn.Linear(c2 * n * n, config.hidden), nn.ReLU(), nn.Linear(config.hidden, 1))

    def forward(self, block: torch.Tensor) -> torch.Tensor:
        x = block.unsqueeze(1)  # (B, 1, Xh, Yh, N, N)
        x = _pool_q(F.relu(self.conv1(x)))
        x = _pool_q(F.relu(self.conv2(x)))
        b, c, X, Y, qx, qy = x.shape
        x = x.permute(0, 2, 3, 1, 4, 5).reshape(b, X, Y, c * qx * qy)
        return self.head(self.dropout(x))[..., 0]


def build_phase_model(config: PhaseConfig) -> nn.Module:
    """The model named by ``config.model``."""
    return {"linear": RadialLinear, "conv4d": Conv4dNet, "mlp": RingMLP}[config.model](config)
