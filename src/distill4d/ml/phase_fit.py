"""Train and run the phase-retrieval models (:mod:`~distill4d.ml.phase_models`) on 4D scans.

Preparation (what makes a model transfer between datasets): every pattern is resampled onto
an ``N x N`` grid spanning ``± extent`` convergence semiangles around the beam centre (the
bright-field radius in pixels comes from the calibration: semiangle / mrad per pixel, or is
measured on the mean pattern), box-filtered first when that bins the detector, and divided by
its mean over the grid (total-count normalisation: the prepared pattern has mean 1).

Training (:func:`train_phase`) takes one scan and a label image on the same scan grid (a
ptychographic reconstruction, or for simulated data the projected potential / phase), or
several such pairs (materials, thicknesses) for a model that transfers. Each label is
standardised on its own scan; a rectangle of the scan (default: the last quarter of the rows) is held
out for validation and early stopping (the best held-out state is kept); the loss is the MSE
over random ``patch x patch`` tiles of the training positions. Inference
(:func:`phase_image`) runs through :func:`~distill4d.engine.map_neighbourhoods`, so
neighbourhoods across tile borders are those of the whole scan.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._validate import positive_float, positive_int
from ..datacube import DataCube
from ..engine.neighbourhoods import _check_pad
from .resample import resample_patterns

__all__ = [
    "SHIPPED_MODELS",
    "SHIPPED_TRAINING_SETS",
    "PhaseImage",
    "PhaseTrainConfig",
    "load_phase_model",
    "phase_geometry",
    "phase_image",
    "prepare_phase_patterns",
    "save_phase_model",
    "shipped_model_path",
    "shipped_phase_weights",
    "train_phase",
]

_FORMAT = "distill4d-phase-1"
#: Largest prepared training array held in memory (bytes).
_MAX_PREPARED_BYTES = 4 << 30
_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


@dataclass(frozen=True)
class PhaseTrainConfig:
    """Training of a phase-retrieval model.

    max_steps, batch_size, patch : optimiser steps, tiles per step, tile side (scan positions).
    lr : Adam learning rate (default 1e-2 for the linear model, 2e-3 for the 4D CNN).
    weight_decay : Adam weight decay.
    eval_every, patience : held-out evaluation interval (steps) and early-stopping patience
        (evaluations without improvement).
    holdout_fraction : the last fraction of the rows held out when no ``holdout`` region is given.
    max_minutes : stop after this wall time (the best state so far is kept).
    seed : seeds the initialisation and the tile sampling.
    """

    max_steps: int = 2000
    batch_size: int = 16
    patch: int = 8
    lr: float | None = None
    weight_decay: float = 1e-5
    eval_every: int = 50
    patience: int = 8
    holdout_fraction: float = 0.25
    max_minutes: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "patch", "eval_every", "patience"):
            positive_int(name, getattr(self, name))
        if self.lr is not None:
            positive_float("lr", self.lr, maximum=1.0)
        if not 0 <= float(self.weight_decay) < 1:
            raise ValueError(f"weight_decay must be in [0, 1), got {self.weight_decay!r}")
        if not 0 < float(self.holdout_fraction) < 1:
            raise ValueError(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction!r}")
        if self.max_minutes is not None:
            positive_float("max_minutes", self.max_minutes)
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")


# ---------------------------------------------------------------------- preparation
def phase_geometry(datacube: DataCube, *, origin_px: tuple[float, float] | None = None,
                   bf_radius_px: float | None = None, **engine: Any) -> dict[str, float]:
    """Beam centre and bright-field radius (detector pixels) used to prepare the patterns.

    ``origin_px``: given, else the calibration's, else measured on the mean pattern.
    ``bf_radius_px``: given, else semiangle / (mrad per pixel) from the calibration, else
    measured on the mean pattern.
    """
    from ..imaging.origin import find_bf_disk

    cal = datacube.calibration
    origin = origin_px if origin_px is not None else cal.origin_px
    radius = bf_radius_px
    if radius is None and cal.semiangle_mrad is not None and cal.q_pixel_inv_A is not None \
            and cal.energy_eV is not None:
        radius = cal.semiangle_mrad / cal.mrad_per_px
    if origin is None or radius is None:
        cx, cy, r = find_bf_disk(datacube.mean_pattern(**engine))
        origin = (cx, cy) if origin is None else origin
        radius = r if radius is None else radius
    ox, oy = (float(v) for v in origin)
    radius = positive_float("bf_radius_px", radius)
    if not (math.isfinite(ox) and math.isfinite(oy)):
        raise ValueError(f"origin_px must be finite, got {origin!r}")
    return {"origin_px": (ox, oy), "bf_radius_px": radius}


def prepare_phase_patterns(patterns: np.ndarray, geometry: dict[str, Any], size: int, extent: float) -> np.ndarray:
    """Patterns ``(..., Qx, Qy)`` → ``(..., size, size)`` float32 on the model grid (module notes).

    Model pixel ``u`` (centre ``(size - 1) / 2``) ↔ detector ``origin + (u - (size - 1)/2) · s``
    with ``s = extent · bf_radius_px / (size / 2)`` detector pixels per model pixel. Each pattern
    is divided by its mean over the grid. ValueError for NaN/Inf or a pattern with no counts.
    """
    arr = np.asarray(patterns)
    lead = arr.shape[:-2]
    flat = arr.reshape((-1,) + arr.shape[-2:])
    scale = extent * geometry["bf_radius_px"] / (size / 2)
    ox, oy = geometry["origin_px"]
    shift = (size // 2 - (size - 1) / 2) * scale  # resample_patterns centres model pixel size//2
    out = resample_patterns(flat, (ox + shift, oy + shift), scale, size)
    mean = out.mean(axis=(1, 2), dtype=np.float64)
    bad = ~np.isfinite(mean) | (mean <= 0)
    if bad.any():
        what = "NaN/Inf values" if not np.all(np.isfinite(mean)) else "no counts inside the model's detector grid"
        raise ValueError(f"{int(bad.sum())} of {len(mean)} patterns have {what}; crop the scan to valid "
                         "positions or repair the data")
    out /= mean[:, None, None].astype(np.float32)
    return out.reshape(lead + (size, size))


def _prepared_moments(batch: np.ndarray, geometry: dict[str, Any], size: int, extent: float) -> np.ndarray:
    """``(2, size, size)``: sum and sum of squares of the prepared patterns of ``batch``."""
    p = prepare_phase_patterns(batch, geometry, size, extent).astype(np.float64)
    return np.stack([p.sum(axis=0), (p * p).sum(axis=0)])


def _scan_norm(total: np.ndarray, total_sq: np.ndarray, n: int) -> tuple[np.ndarray, np.float32]:
    """The scan's mean prepared pattern and the RMS of the deviations from it (input_norm "scan")."""
    mean = total / n
    rms = math.sqrt(max(float(np.mean(total_sq / n - mean**2)), 0.0))
    if not rms > 0:
        raise ValueError("every prepared pattern of the scan is the same: input_norm='scan' has nothing to scale")
    return mean.astype(np.float32), np.float32(rms)


def _check_label(label: Any, scan_shape: tuple[int, int]) -> np.ndarray:
    lab = np.asarray(label, dtype=np.float64)
    if lab.shape != tuple(scan_shape):
        raise ValueError(f"label must be an image of the scan's shape {tuple(scan_shape)}, got shape {lab.shape}")
    if not np.all(np.isfinite(lab)):
        raise ValueError(f"label has {int(np.size(lab) - np.isfinite(lab).sum())} NaN/Inf values")
    if not np.ptp(lab) > 0:
        raise ValueError("label is constant: there is nothing to learn")
    return lab


def _holdout_mask(scan_shape: tuple[int, int], holdout: Any, fraction: float) -> tuple[np.ndarray, tuple[slice, slice]]:
    rx, ry = scan_shape
    if holdout is None:
        n = max(1, round(fraction * rx))
        region = (slice(rx - n, rx), slice(0, ry))
    else:
        try:
            region = tuple(slice(*(int(v) for v in pair)) if not isinstance(pair, slice) else pair for pair in holdout)
            if len(region) != 2:
                raise ValueError
        except (TypeError, ValueError):
            raise ValueError(f"holdout must be ((x0, x1), (y0, y1)) scan indices, got {holdout!r}") from None
    mask = np.zeros(scan_shape, dtype=bool)
    mask[region] = True
    if not mask.any() or mask.all():
        raise ValueError(f"holdout {holdout!r} must keep some positions for training and some for validation")
    return mask, region


# ---------------------------------------------------------------------- training
def _pass_options(engine: dict[str, Any]) -> dict[str, Any]:
    """The engine options that a reduction pass (mean pattern, scan statistics) accepts."""
    return {k: v for k, v in engine.items() if k not in ("checkpoint", "job_key", "desc")}


@dataclass
class _TrainScan:
    """One training scan, prepared: padded inputs, standardised label, training weights, tiles."""

    P: Any  # (rx + 2r, ry + 2r, N, N) torch tensor
    Z: Any  # (rx, ry) standardised label
    W: Any  # (rx, ry) 1 on training positions, 0 held out
    starts: np.ndarray  # tile origins whose output holds a training position
    region: tuple[slice, slice]
    geometry: dict[str, Any]
    mean: float
    std: float
    shape: tuple[int, int]


def _is_region(value: Any) -> bool:
    """``((x0, x1), (y0, y1))`` (pairs or slices), as opposed to a list of such regions."""
    try:
        return len(value) == 2 and all(isinstance(v, slice) or len(v) == 2 for v in value) and \
            not any(_is_region(v) for v in value if not isinstance(v, slice))
    except TypeError:
        return False


def _as_scans(datacube: Any, label: Any, holdout: Any, pad: str, radius: int,
              fraction: float) -> list[tuple[DataCube, np.ndarray, np.ndarray, tuple[slice, slice]]]:
    """``[(datacube, label, held-out mask, held-out region), ...]``, checked, from one scan or from
    sequences of scans and labels (errors then name the scan's index)."""
    many = not isinstance(datacube, DataCube)
    cubes = list(datacube) if many and isinstance(datacube, (list, tuple)) else [datacube]
    for dc in cubes:
        if not isinstance(dc, DataCube):
            raise TypeError(f"datacube must be a distill4d.DataCube or a list of them, got {type(dc).__name__}")
    if not cubes:
        raise ValueError("no training scans given")
    if many:
        labels = list(label) if isinstance(label, (list, tuple)) else None
        if labels is None or len(labels) != len(cubes):
            raise ValueError(f"give one label image per scan: {len(cubes)} scans, "
                             f"{len(labels) if labels is not None else 'a single'} label(s)")
        per_scan = isinstance(holdout, (list, tuple)) and not _is_region(holdout)
        holds = list(holdout) if per_scan else [holdout] * len(cubes)
        if len(holds) != len(cubes):
            raise ValueError(f"holdout: give one region per scan ({len(cubes)}) or one for all, got {len(holds)}")
    else:
        labels, holds = [label], [holdout]
    out = []
    for i, (dc, lab, hold) in enumerate(zip(cubes, labels, holds)):
        try:
            lab = _check_label(lab, dc.scan_shape)
            _check_pad(pad, radius, dc.scan_shape)
            mask, region = _holdout_mask(dc.scan_shape, hold, fraction)
        except ValueError as err:
            raise ValueError(f"scan {i}: {err}" if many else str(err)) from None
        out.append((dc, lab, mask, region))
    return out


def _prepare_scan(dc: DataCube, lab: np.ndarray, hold: np.ndarray, region: tuple[slice, slice], p: int,
                  config: Any, pad: str, origin_px: Any, dev: Any, engine: dict[str, Any]) -> _TrainScan:
    """Prepare one checked training scan (:func:`_as_scans`); ``p``: the tile side of every scan."""
    import torch

    from ..engine import map_patterns

    r = config.radius
    rx, ry = dc.scan_shape
    geometry = phase_geometry(dc, origin_px=origin_px, **_pass_options(engine))
    fn = functools.partial(prepare_phase_patterns, geometry=geometry, size=config.size, extent=config.extent)
    prepared = map_patterns(dc, fn, **engine)
    if config.input_norm == "scan":
        norm = _scan_norm(prepared.sum(axis=(0, 1), dtype=np.float64),
                          (prepared.astype(np.float64) ** 2).sum(axis=(0, 1)), rx * ry)
        prepared = (prepared - norm[0]) / norm[1]
    mu, sd = float(lab[~hold].mean()), float(lab[~hold].std())
    sd = sd if sd > 0 else 1.0
    return _TrainScan(
        P=torch.as_tensor(np.pad(prepared, ((r, r), (r, r), (0, 0), (0, 0)), mode=pad), device=dev),
        Z=torch.as_tensor((lab - mu) / sd, dtype=torch.float32, device=dev),
        W=torch.as_tensor(~hold, dtype=torch.float32, device=dev),
        starts=np.argwhere(np.lib.stride_tricks.sliding_window_view(~hold, (p, p)).any(axis=(2, 3))),
        region=region, geometry=geometry, mean=mu, std=sd, shape=(rx, ry))


def train_phase(
    datacube: DataCube | list[DataCube],
    label: np.ndarray | list[np.ndarray],
    *,
    config: Any = None,
    train: PhaseTrainConfig | None = None,
    holdout: Any = None,
    pad: str = "edge",
    origin_px: tuple[float, float] | None = None,
    label_units: str = "",
    label_name: str = "label",
    device: Any = "cpu",
    callback: Callable[[dict[str, Any]], None] | None = None,
    **engine: Any,
) -> tuple[Any, dict[str, Any]]:
    """Train a phase-retrieval model on ``datacube`` against ``label`` (same scan shape).

    Parameters
    ----------
    datacube, label : one scan and its label image, or lists of scans and their labels (one
        model for several materials / thicknesses: every label is standardised on its own scan,
        each batch draws its tiles from the scans with equal probability, and the model then
        predicts a standardised image, units "standardised").
    config : :class:`~distill4d.ml.phase_models.PhaseConfig` (default: the linear model).
    train : :class:`PhaseTrainConfig`.
    holdout : ``((x0, x1), (y0, y1))`` scan rectangle held out for validation (default: the
        last ``train.holdout_fraction`` of the rows); with several scans, one for all or a list.
    pad : how neighbourhoods continue past the scan edge: "edge", "reflect" or "wrap"
        (periodic simulations). Stored in the card and used again at inference by default.
    origin_px : beam centre (pixels), else from the calibration / the mean pattern.
    label_units, label_name : recorded in the card; predictions come out in these units.
    device : "cpu", "cuda" or "auto".
    callback : called with each evaluation record.
    engine : options of :func:`~distill4d.engine.map_patterns` for the preparation pass.

    Returns
    -------
    ``(model, card)``; ``card["metrics"]`` holds the held-out MSE / Pearson r of the best state
    (with several scans: their means, and ``per_scan``).
    """
    import torch

    from .device import torch_device
    from .phase_models import PhaseConfig, build_phase_model

    config = PhaseConfig() if config is None else config
    train = PhaseTrainConfig() if train is None else train
    r = config.radius
    items = _as_scans(datacube, label, holdout, pad, r, train.holdout_fraction)
    need = sum(item[0].n_patterns for item in items) * config.size**2 * 4
    if need > _MAX_PREPARED_BYTES:
        raise ValueError(f"the prepared scans would take {need / 2**30:.1f} GiB; train on crops of the scans "
                         f"(DataCube slicing) of at most {_MAX_PREPARED_BYTES / 2**30:.0f} GiB prepared")
    dev = torch_device(device)
    t0 = time.perf_counter()
    p = min([train.patch] + [min(item[0].scan_shape) for item in items])
    scans = [_prepare_scan(*item, p, config, pad, origin_px, dev, engine) for item in items]
    seconds_prepare = time.perf_counter() - t0

    torch.manual_seed(train.seed)
    model = build_phase_model(config).to(dev)
    lr = train.lr if train.lr is not None else (1e-2 if config.model == "linear" else 2e-3)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=train.weight_decay)
    rng = np.random.default_rng(train.seed)
    span = torch.arange(p + 2 * r, device=dev)

    def tiles(sc: _TrainScan, n: int) -> tuple[Any, Any, Any]:
        pick = sc.starts[rng.integers(0, len(sc.starts), size=n)]
        ix = torch.as_tensor(pick[:, 0], device=dev)[:, None] + span
        iy = torch.as_tensor(pick[:, 1], device=dev)[:, None] + span
        ox, oy = ix[:, :p, None], iy[:, None, :p]
        return sc.P[ix[:, :, None], iy[:, None, :]], sc.Z[ox, oy], sc.W[ox, oy]

    def evaluate_one(sc: _TrainScan) -> tuple[float, float]:
        vx, vy = sc.region
        with torch.no_grad():
            pred = model(sc.P[vx.start : vx.stop + 2 * r, vy.start : vy.stop + 2 * r].unsqueeze(0))[0]
        target = sc.Z[vx, vy]
        mse = float(((pred - target) ** 2).mean())
        a, b = pred.flatten().double(), target.flatten().double()
        a, b = a - a.mean(), b - b.mean()
        corr = float((a * b).sum() / torch.sqrt((a * a).sum() * (b * b).sum()).clamp_min(1e-30))
        return mse, corr

    def evaluate() -> tuple[float, float, list[tuple[float, float]]]:
        model.eval()
        per = [evaluate_one(sc) for sc in scans]
        model.train()
        return float(np.mean([m for m, _ in per])), float(np.mean([c for _, c in per])), per

    history: list[dict[str, Any]] = []
    best: tuple[float, float, int, list[tuple[float, float]]] = (math.inf, 0.0, 0, [])
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    stale, stopped, step = 0, "max_steps", 0
    running = 0.0
    t1 = time.perf_counter()
    model.train()
    for step in range(1, train.max_steps + 1):
        if len(scans) == 1:
            block, target, weight = tiles(scans[0], train.batch_size)
        else:
            counts = np.bincount(rng.integers(0, len(scans), size=train.batch_size), minlength=len(scans))
            parts = [tiles(sc, int(n)) for sc, n in zip(scans, counts) if n]
            block, target, weight = (torch.cat(x) for x in zip(*parts))
        loss = (weight * (model(block) - target) ** 2).sum() / weight.sum().clamp_min(1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running += float(loss.detach())
        if step % train.eval_every == 0 or step == train.max_steps:
            mse, corr, per = evaluate()
            rec = {"step": step, "train_mse": running / train.eval_every, "held_out_mse": mse,
                   "held_out_r": corr, "seconds": time.perf_counter() - t1}
            if len(scans) > 1:
                rec["held_out_r_per_scan"] = [c for _, c in per]
            running = 0.0
            history.append(rec)
            if callback is not None:
                callback(rec)
            if mse < best[0]:
                best, stale = (mse, corr, step, per), 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
                if stale >= train.patience:
                    stopped = "early_stopping"
                    break
            if train.max_minutes is not None and time.perf_counter() - t1 > 60 * train.max_minutes:
                stopped = "max_minutes"
                break
    model.load_state_dict(best_state)
    model.eval()
    model.cpu()

    def per_scan(fn: Callable[[_TrainScan], Any]) -> Any:
        values = [fn(sc) for sc in scans]
        return values[0] if len(scans) == 1 else values

    def box(sc: _TrainScan) -> list[list[int]]:
        return [[sc.region[0].start, sc.region[0].stop], [sc.region[1].start, sc.region[1].stop]]

    if len(scans) == 1:
        lab_card = {"name": label_name, "units": label_units, "mean": scans[0].mean, "std": scans[0].std}
    else:
        lab_card = {"name": label_name, "units": "standardised", "mean": 0.0, "std": 1.0,
                    "trained_units": label_units, "per_scan": [{"mean": sc.mean, "std": sc.std} for sc in scans]}
    metrics = {"held_out_mse_standardised": best[0], "held_out_pearson_r": best[1], "best_step": best[2]}
    if len(scans) > 1:
        metrics["per_scan"] = [{"held_out_mse_standardised": m, "held_out_pearson_r": c} for m, c in best[3]]
    card = {
        "format": _FORMAT,
        "config": config.to_dict(),
        "label": lab_card,
        "pad": pad,
        "geometry_trained": per_scan(lambda sc: {"origin_px": list(sc.geometry["origin_px"]),
                                                 "bf_radius_px": sc.geometry["bf_radius_px"]}),
        "train": {**dataclasses.asdict(train), "lr": lr},
        "holdout": per_scan(box),
        "scan_shape": per_scan(lambda sc: list(sc.shape)),
        "metrics": metrics,
        "stopped": stopped,
        "steps": step,
        "seconds_prepare": seconds_prepare,
        "seconds_train": time.perf_counter() - t1,
        "history": history,
    }
    return model, card


# ---------------------------------------------------------------------- inference
@dataclass
class PhaseImage:
    """A phase-retrieval result: ``image`` ``(Rx, Ry)`` in ``units`` (those of the training label)."""

    image: np.ndarray
    units: str
    label_name: str
    model: str
    calibration: Any
    info: dict[str, Any] = field(default_factory=dict)

    def to_hdf5(self, path: str | os.PathLike, force: bool = False) -> Path:
        """Write ``/results/<label_name>`` (with its units) and the calibration and model as attributes."""
        from ..io import write

        attrs = {"model": self.model, "info": json.dumps(self.info, default=str),
                 **{f"calibration_{k}": v for k, v in self.calibration.to_attrs().items()}}
        return write(path, {self.label_name: self.image}, force=force, units={self.label_name: self.units},
                     attrs=attrs)

    def plot(self, path: str | os.PathLike, *, force: bool = False, title: str = "") -> Path:
        from ..plot import save_images_png

        return save_images_png(path, {self.label_name: self.image}, units={self.label_name: self.units},
                               title=title or f"ML phase retrieval ({self.model})",
                               scan_step_A=self.calibration.scan_step_A, force=force)


def _phase_block(block: np.ndarray, model: Any, geometry: dict[str, Any], size: int, extent: float,
                 mean: float, std: float, device: Any, norm: tuple[np.ndarray, Any] | None = None) -> np.ndarray:
    import torch

    prepared = prepare_phase_patterns(block, geometry, size, extent)
    if norm is not None:
        prepared = (prepared - norm[0]) / norm[1]
    with torch.no_grad():
        out = model(torch.as_tensor(prepared, device=device).unsqueeze(0))[0]
    return (out.double().cpu().numpy() * std + mean).reshape(-1)


#: Training sets of the shipped weights (``benchmarks/phase_benchmark.py``): "mos2", one
#: simulated MoS2 monolayer field (label in V·Å); "mixed", that field plus five thick crystals
#: of other structures (MgO, GaAs, CeO2, Cu, Si; 40-200 Å; standardised label).
SHIPPED_TRAINING_SETS = ("mos2", "mixed")
#: Names of the shipped models accepted by :func:`phase_image` and ``distill4d phase --model``.
SHIPPED_MODELS = ("conv4d", "linear", "conv4d-mos2", "linear-mos2", "conv4d-mixed", "linear-mixed")


def _warn_if_grid_leaves_detector(geometry: dict[str, Any], config: Any, shape: tuple[int, int]) -> None:
    """Warn when the model's detector grid reaches past the detector (the model then sees zeros there)."""
    reach = config.extent * geometry["bf_radius_px"] * (config.size - 1) / config.size
    ox, oy = geometry["origin_px"]
    room = min(ox, oy, shape[0] - 1 - ox, shape[1] - 1 - oy)
    if reach > room + 0.5:
        warnings.warn(f"the model reads ±{config.extent:g} convergence semiangles ({reach:.1f} detector px) from "
                      f"the beam centre but the detector reaches only {room:.1f} px: it sees zeros beyond, and "
                      "its image may be off unless it was trained on such a detector; a model with a smaller "
                      "extent (distill4d train phase --extent) avoids this", stacklevel=3)


def shipped_phase_weights(model: str = "conv4d", trained_on: str = "mixed") -> Path:
    """Path of the shipped weights of ``model`` ("linear" or "conv4d") trained on ``trained_on``
    (:data:`SHIPPED_TRAINING_SETS`)."""
    if model not in ("linear", "conv4d"):
        raise ValueError(f"model must be 'linear' or 'conv4d', got {model!r}")
    if trained_on not in SHIPPED_TRAINING_SETS:
        raise ValueError(f"trained_on must be one of {SHIPPED_TRAINING_SETS}, got {trained_on!r}")
    return _WEIGHTS_DIR / f"phase_{model}_{trained_on}.pt"


def shipped_model_path(name: str) -> Path:
    """Weights path of a shipped model named as in :data:`SHIPPED_MODELS` ("conv4d" and "linear"
    without a suffix are the MoS2 models)."""
    if name not in SHIPPED_MODELS:
        raise ValueError(f"unknown shipped model {name!r}; choose one of {SHIPPED_MODELS}")
    kind, _, trained_on = name.partition("-")
    return shipped_phase_weights(kind, trained_on or "mos2")


def phase_image(
    datacube: DataCube,
    model: Any = "conv4d-mixed",
    *,
    pad: str | None = None,
    origin_px: tuple[float, float] | None = None,
    device: Any = "cpu",
    **engine: Any,
) -> PhaseImage:
    """The model's image of ``datacube``: one value per scan position, in the label's units.

    ``model``: a weights path (card beside it), ``(module, card)`` from :func:`train_phase` /
    :func:`load_phase_model`, or a shipped model (:data:`SHIPPED_MODELS`: "conv4d" and "linear"
    trained on MoS2, "conv4d-mixed" and "linear-mixed" also on thick crystals). ``pad``:
    how neighbourhoods continue past the scan edge (default: the card's). The detector is
    prepared exactly as in training (module notes); ``engine`` options go to
    :func:`~distill4d.engine.map_neighbourhoods` (tiles, scheduler, checkpoint, progress).
    """
    from ..engine import map_neighbourhoods
    from .device import torch_device
    from .phase_models import PhaseConfig

    if not isinstance(datacube, DataCube):
        raise TypeError(f"datacube must be a distill4d.DataCube, got {type(datacube).__name__}")
    if isinstance(model, str) and model in SHIPPED_MODELS:
        model = shipped_model_path(model)
    if isinstance(model, (str, os.PathLike)):
        net, card = load_phase_model(model)
        name = str(model)
    else:
        try:
            net, card = model
        except (TypeError, ValueError):
            raise TypeError(f"model must be a weights path, one of {SHIPPED_MODELS}, or a (module, card) "
                            "pair") from None
        name = "in-memory model"
    config = PhaseConfig.from_dict(card["config"])
    pad = card.get("pad", "edge") if pad is None else pad
    _check_pad(pad, config.radius, datacube.scan_shape)
    dev = torch_device(device)
    net = net.to(dev).eval()
    t0 = time.perf_counter()
    pass_options = _pass_options(engine)
    geometry = phase_geometry(datacube, origin_px=origin_px, **pass_options)
    _warn_if_grid_leaves_detector(geometry, config, datacube.pattern_shape)
    lab = card["label"]
    norm = None
    if config.input_norm == "scan":
        from ..engine import reduce_patterns

        moments = reduce_patterns(datacube, functools.partial(_prepared_moments, geometry=geometry, size=config.size,
                                                              extent=config.extent), **pass_options)
        norm = _scan_norm(moments[0], moments[1], datacube.n_patterns)
    fn = functools.partial(_phase_block, model=net, geometry=geometry, size=config.size, extent=config.extent,
                           mean=float(lab["mean"]), std=float(lab["std"]), device=dev, norm=norm)
    engine.setdefault("desc", "phase")
    engine["job_key"] = f"phase:{engine.get('job_key', '')}:{name}:{json.dumps(geometry)}"
    image = map_neighbourhoods(datacube, fn, config.radius, pad=pad, **engine)
    info = {"seconds": time.perf_counter() - t0, "geometry": geometry, "pad": pad, "weights": name,
            "device": str(dev)}
    return PhaseImage(np.asarray(image, dtype=np.float64), lab.get("units", ""), lab.get("name", "phase"),
                      config.model, datacube.calibration, info)


# ---------------------------------------------------------------------- files
def save_phase_model(path: str | os.PathLike, model: Any, card: dict[str, Any], *, force: bool = False,
                     command: str | None = None) -> Path:
    """Write ``model``'s state_dict to ``path`` and ``card`` (+ ``command``) beside it (``.json``)."""
    from .model_files import save_state_and_card

    card = dict(card) if command is None else {**card, "command": command}
    return save_state_and_card(path, model, card, force=force)


def load_phase_model(path: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
    """``(model, card)`` from :func:`save_phase_model` (weights loaded with ``weights_only=True``)."""
    from .model_files import load_state_and_card
    from .phase_models import PhaseConfig, build_phase_model

    return load_state_and_card(path, _FORMAT, "phase model",
                               lambda card: build_phase_model(PhaseConfig.from_dict(card["config"])))
