"""Batched PyTorch versions of :mod:`distill4d.simulate.augment`.

Patterns and targets are ``(B, Qx, Qy)`` tensors (axis 1 is qx, axis 2 is qy, pixel index ``i``
centred at coordinate ``i``); ``peaks`` is None, a list of B tensors ``(n_i, 2 + k)`` (qx_px,
qy_px, extra columns carried unchanged) or None entries, or one padded ``(B, P, 2 + k)`` tensor
whose rows of NaN coordinates are padding (mapped in one call, returned padded). Parameters are scalars (shared) or
per-sample ``(B,)`` (``(B, 2)`` for pairs, ``(B, 2, 2)`` for matrices). Everything runs on the
tensors' device; randomness comes from an explicit ``torch.Generator`` on that device type.

The conventions are those of the NumPy module: geometry is ``p' = origin + M (p - origin) +
shift`` with bilinear resampling (one ``grid_sample`` call, ``align_corners=True``, zeros
outside), which matches ``augment.affine(order=1)`` to float32 round-off; the plasmon
background is the same linear FFT convolution. Geometry and background are computed in float64
internally where the device supports it (not MPS).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import Distill4dError
from .augment import AugmentConfig

__all__ = [
    "affine",
    "bad_pixels",
    "ellipse_matrix",
    "elliptic_distortion",
    "intensity_scale",
    "lorentzian_background",
    "map_points",
    "plasmon_background",
    "poisson_noise",
    "random_augment",
    "shift",
]

_DEFAULT_CONFIG = AugmentConfig()



def _wide(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def _batch(name: str, value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, Qx, Qy), got {type(value).__name__}")
    if value.ndim != 3:
        raise Distill4dError(f"{name} must have shape (B, Qx, Qy), got {tuple(value.shape)} (use x[None] for one)")
    if value.is_complex() or value.dtype == torch.bool:
        raise TypeError(f"{name} must hold real intensities, got dtype {value.dtype}")
    if value.numel() == 0:
        raise Distill4dError(f"{name} is empty (shape {tuple(value.shape)})")
    if not value.is_floating_point():
        value = value.to(torch.float32)
    if not bool(torch.isfinite(value).all()):
        raise Distill4dError(f"{name} contains NaN or Inf values")
    return value


def _targets(value: Any, patterns: torch.Tensor) -> torch.Tensor | None:
    if value is None:
        return None
    t = _batch("targets", value)
    if t.shape != patterns.shape:
        raise Distill4dError(f"targets must have the patterns' shape {tuple(patterns.shape)}, got {tuple(t.shape)}")
    if t.device != patterns.device:
        raise Distill4dError(f"targets must be on the patterns' device {patterns.device}, got {t.device}")
    return t


def _peak_list(value: Any, n: int) -> list[torch.Tensor | None] | torch.Tensor | None:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):  # padded (B, P, 2 + k): rows of NaN coordinates are padding
        if value.ndim != 3 or value.shape[0] != n or value.shape[2] < 2:
            raise Distill4dError(f"padded peaks must have shape ({n}, P, 2 + k), got {tuple(value.shape)}")
        xy = value[..., :2]
        if not bool((torch.isfinite(xy).all(-1) | torch.isnan(xy).all(-1)).all()):
            raise Distill4dError("padded peaks: each row needs finite qx, qy or NaN in both (padding); Inf is not allowed")
        return value if value.is_floating_point() else value.to(torch.get_default_dtype())
    if not isinstance(value, (list, tuple)) or len(value) != n:
        raise Distill4dError(f"peaks must be None, a list of {n} tensors (one per pattern) or a padded ({n}, P, 2 + k) "
                             f"tensor, got {type(value).__name__}"
                             + (f" of length {len(value)}" if isinstance(value, (list, tuple)) else ""))
    out = []
    for i, p in enumerate(value):
        if p is None:
            out.append(None)
            continue
        if not isinstance(p, torch.Tensor):
            p = torch.as_tensor(np.asarray(p))
        if p.ndim != 2 or p.shape[1] < 2:
            raise Distill4dError(f"peaks[{i}] must have shape (n, 2) or (n, 3) (qx_px, qy_px[, amplitude]), got {tuple(p.shape)}")
        if not bool(torch.isfinite(p[:, :2]).all()):
            raise Distill4dError(f"peaks[{i}] contains NaN or Inf coordinates; drop those rows first")
        out.append(p)
    return out


def _per_sample(
    name: str, value: Any, n: int, device: torch.device, *, tail: tuple[int, ...] = (), kind: str = "finite"
) -> torch.Tensor:
    """``value`` broadcast to ``(n, *tail)`` in the wide dtype on ``device``, checked."""
    dtype = _wide(device)
    try:
        t = value.to(device=device, dtype=dtype) if isinstance(value, torch.Tensor) else torch.as_tensor(
            np.asarray(value, dtype=np.float64), dtype=dtype, device=device
        )
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number or a tensor, got {value!r}") from None
    if t.shape == tail:
        t = t.expand(n, *tail)
    if t.shape != (n, *tail):
        want = " or ".join(str(s) for s in [tail, (n, *tail)])
        raise Distill4dError(f"{name} must have shape {want}, got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise Distill4dError(f"{name} must be finite, got {value!r}")
    if kind == "positive" and not bool((t > 0).all()):
        raise Distill4dError(f"{name} must be > 0, got {value!r}")
    if kind == "nonnegative" and not bool((t >= 0).all()):
        raise Distill4dError(f"{name} must be >= 0, got {value!r}")
    if kind == "fraction" and not bool(((t >= 0) & (t <= 1)).all()):
        raise Distill4dError(f"{name} must be a fraction in [0, 1], got {value!r}")
    return t


def _generator(generator: Any, device: torch.device) -> torch.Generator:
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if generator.device.type != device.type:
        raise Distill4dError(
            f"generator is on {generator.device} but the data are on {device}; "
            f"use torch.Generator(device={str(device)!r}).manual_seed(seed)"
        )
    return generator


def _origins(origin_px: Any, patterns: torch.Tensor) -> torch.Tensor:
    if origin_px is None:
        o = torch.tensor([patterns.shape[1] // 2, patterns.shape[2] // 2], dtype=_wide(patterns.device))
        return o.to(patterns.device).expand(patterns.shape[0], 2)
    return _per_sample("origin_px", origin_px, patterns.shape[0], patterns.device, tail=(2,))


def ellipse_matrix(ratio: Any, angle_rad: Any, *, n: int | None = None, device: Any = "cpu") -> torch.Tensor:
    """``(B, 2, 2)`` stretches ``R diag(ratio, 1) R^T`` (see :func:`distill4d.simulate.augment.ellipse_matrix`).

    ``ratio`` (> 0) and ``angle_rad`` are scalars or ``(B,)``; ``n`` is B when both are scalars.
    """
    device = torch.device(device)
    if n is None:
        sizes = [v.numel() for v in (ratio, angle_rad) if isinstance(v, torch.Tensor) and v.ndim == 1]
        sizes += [len(v) for v in (ratio, angle_rad) if isinstance(v, (list, tuple, np.ndarray))]
        n = sizes[0] if sizes else 1
    r = _per_sample("ratio", ratio, n, device, kind="positive")
    a = _per_sample("angle_rad", angle_rad, n, device)
    c, s = torch.cos(a), torch.sin(a)
    # R diag(r, 1) R^T = I + (r - 1) u u^T with u = (cos, sin)
    uu = torch.stack([torch.stack([c * c, c * s], -1), torch.stack([c * s, s * s], -1)], -2)
    return torch.eye(2, dtype=r.dtype, device=device) + (r - 1)[:, None, None] * uu


# --------------------------------------------------------------------------------------------
# geometry


def affine(
    patterns: torch.Tensor,
    targets: torch.Tensor | None = None,
    peaks: Any = None,
    *,
    matrix: Any = ((1.0, 0.0), (0.0, 1.0)),
    shift_px: Any = (0.0, 0.0),
    origin_px: Any = None,
) -> tuple[torch.Tensor, torch.Tensor | None, Any]:
    """Map ``p -> origin + matrix (p - origin) + shift_px`` per sample, by one bilinear ``grid_sample``.

    ``matrix`` is ``(2, 2)`` or ``(B, 2, 2)``; ``shift_px`` and ``origin_px`` (default
    ``(Qx // 2, Qy // 2)``) are ``(2,)`` or ``(B, 2)`` pixels. Images are zero outside the
    detector; peak coordinates are mapped exactly. Returns ``(patterns, targets, peaks)``.
    """
    pat = _batch("patterns", patterns)
    tgt = _targets(targets, pat)
    B, nx, ny = pat.shape
    if nx < 2 or ny < 2:
        raise Distill4dError(f"patterns must be at least 2x2 pixels, got {(nx, ny)}")
    pk = _peak_list(peaks, B)
    dev = pat.device
    M = _per_sample("matrix", matrix, B, dev, tail=(2, 2))
    det = torch.linalg.det(M)
    if not bool((det.abs() > 1e-9).all()):
        raise Distill4dError(f"matrix must be invertible, got determinants {det.tolist()}")
    s = _per_sample("shift_px", shift_px, B, dev, tail=(2,))
    o = _origins(origin_px, pat)
    Minv = torch.linalg.inv(M)
    # input coordinate of output pixel x: o + Minv (x - o - s)
    qx = torch.arange(nx, dtype=M.dtype, device=dev)
    qy = torch.arange(ny, dtype=M.dtype, device=dev)
    base = torch.stack(torch.meshgrid(qx, qy, indexing="ij"), -1)  # (nx, ny, 2)
    rel = base[None] - (o + s)[:, None, None, :]  # (B, nx, ny, 2)
    src = torch.einsum("bij,bxyj->bxyi", Minv, rel) + o[:, None, None, :]
    # align_corners=True: -1 / +1 are the centres of the first / last pixel; grid[..., 0] indexes
    # the last axis (qy), grid[..., 1] the second-to-last (qx).
    grid = torch.stack([src[..., 1] * (2.0 / (ny - 1)) - 1.0, src[..., 0] * (2.0 / (nx - 1)) - 1.0], -1)
    images = pat[:, None] if tgt is None else torch.stack([pat, tgt.to(pat.dtype)], 1)
    out = F.grid_sample(images, grid.to(images.dtype), mode="bilinear", padding_mode="zeros", align_corners=True)
    new_tgt = None if tgt is None else out[:, 1].to(tgt.dtype)
    new_pk = None
    if isinstance(pk, torch.Tensor):
        new_pk = map_points(pk, M, s, o)
    elif pk is not None:
        new_pk = []
        for i, p in enumerate(pk):
            if p is None:
                new_pk.append(None)
                continue
            q = p if p.is_floating_point() else p.to(torch.get_default_dtype())
            new_pk.append(map_points(q[None], M[i : i + 1], s[i : i + 1], o[i : i + 1])[0])
    return out[:, 0], new_tgt, new_pk


def map_points(points: torch.Tensor, matrix: torch.Tensor, shift_px: torch.Tensor, origin_px: torch.Tensor) -> torch.Tensor:
    """``(B, P, 2 + k)`` points (qx_px, qy_px, extra columns unchanged; NaN rows stay NaN) mapped
    by ``origin + matrix (p - origin) + shift`` with ``(B, 2, 2)``, ``(B, 2)``, ``(B, 2)`` tensors:
    the exact map :func:`affine` applies to peaks, for a padded batch at once. Returns a new tensor."""
    if points.ndim != 3 or points.shape[-1] < 2:
        raise Distill4dError(f"points must be (B, P, 2 + k) (qx_px, qy_px, ...), got {tuple(points.shape)}")
    b = points.shape[0]
    for name, t, tail in (("matrix", matrix, (2, 2)), ("shift_px", shift_px, (2,)), ("origin_px", origin_px, (2,))):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != (b, *tail):
            raise Distill4dError(f"{name} must be a tensor of shape {(b, *tail)}, got "
                                 f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    m = matrix.to(points.device)
    o, s = origin_px.to(device=points.device, dtype=m.dtype), shift_px.to(device=points.device, dtype=m.dtype)
    xy = points[..., :2].to(m.dtype) - o[:, None, :]
    moved = o[:, None, :] + torch.einsum("bij,bpj->bpi", m, xy) + s[:, None, :]
    return torch.cat([moved.to(points.dtype), points[..., 2:]], dim=-1)


def elliptic_distortion(
    patterns: torch.Tensor,
    targets: torch.Tensor | None = None,
    peaks: Any = None,
    *,
    ratio: Any,
    angle_rad: Any,
    origin_px: Any = None,
) -> tuple[torch.Tensor, torch.Tensor | None, Any]:
    """Per-sample stretch by ``ratio`` along ``angle_rad`` (from qx) about the origin (not area-preserving)."""
    pat = _batch("patterns", patterns)
    D = ellipse_matrix(ratio, angle_rad, n=pat.shape[0], device=pat.device)
    return affine(pat, targets, peaks, matrix=D, origin_px=origin_px)


def shift(
    patterns: torch.Tensor, targets: torch.Tensor | None = None, peaks: Any = None, *, shift_px: Any
) -> tuple[torch.Tensor, torch.Tensor | None, Any]:
    """Per-sample sub-pixel shift by ``shift_px`` (``(2,)`` or ``(B, 2)`` pixels), bilinear, zero filled."""
    return affine(patterns, targets, peaks, shift_px=shift_px)


# --------------------------------------------------------------------------------------------
# intensity


def lorentzian_background(probes: torch.Tensor, width_px: Any) -> torch.Tensor:
    """``probes`` ``(B, Qx, Qy)`` linearly convolved with ``1 / (q^2 + width_px^2)`` (per-sample
    widths), by FFT on a ``(2 Qx, 2 Qy)`` grid; unnormalised, in the wide dtype."""
    pr = _batch("probes", probes)
    B, nx, ny = pr.shape
    dtype = _wide(pr.device)
    w = _per_sample("width_px", width_px, B, pr.device, kind="positive")
    dx = torch.fft.fftfreq(2 * nx, 1.0 / (2 * nx), dtype=dtype, device=pr.device)[:, None]
    dy = torch.fft.fftfreq(2 * ny, 1.0 / (2 * ny), dtype=dtype, device=pr.device)[None, :]
    kernel = 1.0 / ((dx**2 + dy**2)[None] + (w**2)[:, None, None])
    size = (2 * nx, 2 * ny)
    spec = torch.fft.rfft2(pr.to(dtype), s=size) * torch.fft.rfft2(kernel)
    return torch.fft.irfft2(spec, s=size)[:, :nx, :ny].clamp_min(0)


def plasmon_background(patterns: torch.Tensor, probes: torch.Tensor, *, fraction: Any, width_px: Any) -> torch.Tensor:
    """Add ``fraction`` x total of a Lorentzian-convolved probe background to each pattern.

    ``probes`` is ``(B, Qx, Qy)`` or one ``(Qx, Qy)`` probe for all; see
    :func:`distill4d.simulate.augment.plasmon_background`.
    """
    pat = _batch("patterns", patterns)
    B = pat.shape[0]
    if isinstance(probes, torch.Tensor) and probes.ndim == 2:
        probes = probes[None].expand(B, *probes.shape)
    pr = _batch("probes", probes)
    if pr.shape != pat.shape:
        raise Distill4dError(f"probes must have the patterns' shape {tuple(pat.shape)}, got {tuple(pr.shape)}")
    pr = pr.to(pat.device)
    totals_pr = pr.sum(dim=(1, 2))
    if bool((pr < 0).any()) or not bool((totals_pr > 0).all()):
        raise Distill4dError("probes must be >= 0 with a positive total (vacuum probe images)")
    f = _per_sample("fraction", fraction, B, pat.device, kind="nonnegative")
    bg = lorentzian_background(pr, width_px)
    total = pat.to(bg.dtype).sum(dim=(1, 2))
    bg = bg * (f * total / bg.sum(dim=(1, 2)))[:, None, None]
    return (pat.to(bg.dtype) + bg).to(pat.dtype)


def poisson_noise(patterns: torch.Tensor, *, dose_e: Any, generator: torch.Generator) -> torch.Tensor:
    """Scale each pattern (>= 0) to a total of ``dose_e`` electrons (scalar or ``(B,)``) and draw
    Poisson counts with ``generator``; returns float counts in the patterns' dtype."""
    pat = _batch("patterns", patterns)
    gen = _generator(generator, pat.device)
    dose = _per_sample("dose_e", dose_e, pat.shape[0], pat.device, kind="positive")
    total = pat.to(dose.dtype).sum(dim=(1, 2))
    if not bool((torch.isfinite(total) & (total > 0)).all()):
        raise Distill4dError(f"patterns must each have a positive finite total to be scaled to dose_e, got totals {total.tolist()}")
    if bool((pat < 0).any()):
        raise Distill4dError(f"patterns must be >= 0 for Poisson noise, got minimum {float(pat.min())!r}")
    rate = pat.to(dose.dtype) * (dose / total)[:, None, None]
    return torch.poisson(rate, generator=gen).to(pat.dtype)


def bad_pixels(
    patterns: torch.Tensor,
    *,
    hot_fraction: Any,
    dead_fraction: Any,
    hot_value: Any = None,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample dead (0) and hot pixels; disjoint masks (see :func:`distill4d.simulate.augment.bad_pixels`).

    ``hot_value`` defaults to 10 x each pattern's maximum (1 where that is <= 0).
    Returns ``(patterns, hot_mask, dead_mask)``.
    """
    pat = _batch("patterns", patterns)
    gen = _generator(generator, pat.device)
    B = pat.shape[0]
    hot_f = _per_sample("hot_fraction", hot_fraction, B, pat.device, kind="fraction")
    dead_f = _per_sample("dead_fraction", dead_fraction, B, pat.device, kind="fraction")
    if bool((hot_f + dead_f > 1).any()):
        raise Distill4dError("hot_fraction + dead_fraction must be <= 1")
    if hot_value is None:
        peak = pat.amax(dim=(1, 2)).to(hot_f.dtype)
        hot = torch.where(peak > 0, 10.0 * peak, torch.ones_like(peak))
    else:
        hot = _per_sample("hot_value", hot_value, B, pat.device, kind="nonnegative")
    u = torch.rand(pat.shape, generator=gen, device=pat.device, dtype=hot_f.dtype)
    d, h = dead_f[:, None, None], hot_f[:, None, None]
    dead = u < d
    hot_mask = (u >= d) & (u < d + h)
    out = torch.where(dead, torch.zeros((), dtype=pat.dtype, device=pat.device), pat)
    out = torch.where(hot_mask, hot[:, None, None].to(pat.dtype).expand_as(pat), out)
    return out, hot_mask, dead


def intensity_scale(patterns: torch.Tensor, *, factor: Any) -> torch.Tensor:
    """``patterns * factor`` with ``factor`` > 0 a scalar or per-sample ``(B,)``."""
    pat = _batch("patterns", patterns)
    f = _per_sample("factor", factor, pat.shape[0], pat.device, kind="positive")
    return (pat.to(f.dtype) * f[:, None, None]).to(pat.dtype)


# --------------------------------------------------------------------------------------------
# random chain


def random_augment(
    patterns: torch.Tensor,
    targets: torch.Tensor | None,
    peaks: Any,
    probes: torch.Tensor | None,
    generator: torch.Generator,
    config: AugmentConfig = _DEFAULT_CONFIG,
    *,
    origin_px: Any = None,
) -> tuple[torch.Tensor, torch.Tensor | None, Any, dict[str, Any]]:
    """Batched :func:`distill4d.simulate.augment.random_augment` with per-sample parameters.

    Same chain and ranges (``config.order`` must be 1: bilinear); ``probes`` is ``(B, Qx, Qy)``,
    one ``(Qx, Qy)`` probe, or None (no plasmon background). Returns ``(patterns, targets,
    peaks, params)`` with ``params`` values ``(B,)`` tensors (``shift_px`` ``(B, 2)``; ``dose_e``
    NaN where no noise was applied; masks ``(B, Qx, Qy)``). The same generator state gives
    bit-identical output on the same device (the draws differ from the NumPy version's).
    """
    if not isinstance(config, AugmentConfig):
        raise TypeError(f"config must be an AugmentConfig, got {type(config).__name__}")
    if config.order != 1:
        raise Distill4dError(f"config.order must be 1 (bilinear) for the torch version, got {config.order}")
    pat = _batch("patterns", patterns)
    tgt = _targets(targets, pat)
    B, dev = pat.shape[0], pat.device
    pk = _peak_list(peaks, B)
    gen = _generator(generator, dev)
    c = config
    dtype = _wide(dev)

    u = torch.rand((B, 12), generator=gen, device=dev, dtype=dtype)
    ratio = 1.0 + c.ellipticity_max * u[:, 0]
    angle = math.pi * u[:, 1]
    shift_px = c.shift_max_px * (2 * u[:, 2:4] - 1)
    fraction = c.plasmon_fraction[0] + (c.plasmon_fraction[1] - c.plasmon_fraction[0]) * u[:, 4]
    width = c.plasmon_width_px[0] + (c.plasmon_width_px[1] - c.plasmon_width_px[0]) * u[:, 5]
    lf = [math.log(v) for v in c.intensity_factor]
    factor = torch.exp(lf[0] + (lf[1] - lf[0]) * u[:, 6])
    if c.dose_e is not None:
        ld = [math.log(v) for v in c.dose_e]
        noise_on = u[:, 7] < c.noise_probability
        dose = torch.where(noise_on, torch.exp(ld[0] + (ld[1] - ld[0]) * u[:, 8]), torch.nan)
    else:
        noise_on = torch.zeros(B, dtype=torch.bool, device=dev)
        dose = torch.full((B,), torch.nan, dtype=dtype, device=dev)
    bad = u[:, 9] < c.bad_pixel_probability
    hot_f = torch.where(bad, c.hot_fraction_max * u[:, 10], 0.0)
    dead_f = torch.where(bad, c.dead_fraction_max * u[:, 11], 0.0)
    seeds = torch.randint(0, 2**62, (2,), generator=gen, device=dev).tolist()

    if probes is None:
        fraction = torch.zeros_like(fraction)
    else:
        pat = plasmon_background(pat, probes, fraction=fraction, width_px=width)
    D = ellipse_matrix(ratio, angle, n=B, device=dev)
    pat, tgt, pk = affine(pat, tgt, pk, matrix=D, shift_px=shift_px, origin_px=origin_px)
    count_scale = torch.ones(B, dtype=dtype, device=dev)
    idx = torch.nonzero(noise_on).flatten()
    if idx.numel():
        sub = pat[idx]
        count_scale[idx] = dose[idx] / sub.to(dtype).sum(dim=(1, 2))
        noise_gen = torch.Generator(device=dev).manual_seed(seeds[0])
        pat = pat.index_copy(0, idx, poisson_noise(sub, dose_e=dose[idx], generator=noise_gen))
    pat = intensity_scale(pat, factor=factor)
    bad_gen = torch.Generator(device=dev).manual_seed(seeds[1])
    pat, hot_mask, dead_mask = bad_pixels(
        pat, hot_fraction=hot_f, dead_fraction=dead_f, hot_value=c.hot_value, generator=bad_gen
    )
    params = {
        "ratio": ratio,
        "angle_rad": angle,
        "shift_px": shift_px,
        "plasmon_fraction": fraction,
        "plasmon_width_px": width,
        "dose_e": dose,
        "count_scale": count_scale,
        "intensity_factor": factor,
        "hot_fraction": hot_f,
        "dead_fraction": dead_f,
        "hot_mask": hot_mask,
        "dead_mask": dead_mask,
    }
    return pat, tgt, pk, params
