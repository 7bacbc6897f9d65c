"""Training the phase-retrieval models (:mod:`~distill4d.ml.phase.model`) on 4D scans: :func:`train_phase`.

Training takes one scan and a label image on the same scan grid (a ptychographic
reconstruction, or for simulated data the projected potential / phase), or several such pairs
(materials, thicknesses) for a model that transfers. The patterns are prepared as at inference
(:mod:`~distill4d.ml.phase.prepare`). Each label is standardised on its own scan; a rectangle
of the scan (default: the last quarter of the rows) is held out for validation and early
stopping (the best held-out state is kept); the loss is the MSE over random ``patch x patch``
tiles of the training positions.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import Distill4dError
from ...datacube import DataCube
from ...engine.neighbourhoods import check_pad
from .._common.model_files import CARD_FORMATS
from .._common.loop import StopRule, check_training_options
from .prepare import _pass_options, _scan_norm, phase_geometry, prepare_phase_patterns

__all__ = ["PhaseTrainConfig", "save_phase_model", "train_phase"]

#: Largest prepared training array held in memory (bytes).
_MAX_PREPARED_BYTES = 4 << 30
_FITS = ("adam", "lstsq", "lbfgs")
#: The MLP's fit "lbfgs": L2 penalty on its weights (on standardised features and label; chosen on the
#: development scan mos2_large, benchmarks/pipeline_options.py) and the most L-BFGS iterations (300: with a
#: 3-iteration Poisson label, held-out SSIM 0.938 / 0.916 against 0.923 / 0.913 with 150 on a 27 x 31 block at
#: 2e4 / 2e3 e⁻, 0.958 / 0.929 against 0.958 / 0.930 on the 1/8 block; docs/experiments.md).
MLP_L2 = 1e-2
MLP_MAX_ITERATIONS = 300


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
    fit : "adam" (optimiser steps on random tiles, early stopping on the held-out region); for the
        linear model only, "lstsq" (:mod:`~distill4d.ml.phase.linear_fit`: least squares on every
        training position, the ridge chosen on the held-out region; no steps, milliseconds); for the
        MLP only, "lbfgs" (full-batch L-BFGS on every training position's features, L2 penalty
        :data:`MLP_L2`, at most ``min(max_steps, MLP_MAX_ITERATIONS)`` iterations; seconds).
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
    fit: str = "adam"

    def __post_init__(self) -> None:
        check_training_options(self, positive_ints=("max_steps", "batch_size", "patch", "eval_every", "patience"))
        if not 0 <= float(self.weight_decay) < 1:
            raise Distill4dError(f"weight_decay must be in [0, 1), got {self.weight_decay!r}")
        if not 0 < float(self.holdout_fraction) < 1:
            raise Distill4dError(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction!r}")
        if self.fit not in _FITS:
            raise Distill4dError(f"fit must be one of {_FITS}, got {self.fit!r}")



def _check_label(label: Any, scan_shape: tuple[int, int]) -> np.ndarray:
    lab = np.asarray(label, dtype=np.float64)
    if lab.shape != tuple(scan_shape):
        raise Distill4dError(f"label must be an image of the scan's shape {tuple(scan_shape)}, got shape {lab.shape}")
    if not np.all(np.isfinite(lab)):
        raise Distill4dError(f"label has {int(np.size(lab) - np.isfinite(lab).sum())} NaN/Inf values")
    if not np.ptp(lab) > 0:
        raise Distill4dError("label is constant: there is nothing to learn")
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
            raise Distill4dError(f"holdout must be ((x0, x1), (y0, y1)) scan indices, got {holdout!r}") from None
    mask = _region_mask(scan_shape, region)
    if not mask.any() or mask.all():
        raise Distill4dError(f"holdout {holdout!r} must keep some positions for training and some for validation")
    return mask, region


def _region_mask(shape: tuple[int, int], region: tuple[slice, slice]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[region] = True
    return mask


def feature_scale(std: Any) -> Any:
    """The MLP's feature scales from their standard deviations over the training positions: a feature
    that is zero by symmetry (e.g. harmonic 2 of the four pixels at the detector's centre), whose spread
    is rounding noise (below 1e-4 of the median spread), gets scale 1e30, so that it contributes nothing."""
    import torch

    return torch.where(std > 1e-4 * std.median(), std, torch.full_like(std, 1e30))


def _label_masks(label_mask: Any, items: list[Any]) -> list[np.ndarray]:
    """One checked boolean mask per scan of ``items`` (:func:`_as_scans`) from ``label_mask``."""
    if label_mask is None:
        return [np.ones(item[0].scan_shape, bool) for item in items]
    many = isinstance(label_mask, (list, tuple))
    masks = list(label_mask) if many else [label_mask]
    if len(masks) != len(items):
        raise Distill4dError(f"label_mask: give one mask per scan ({len(items)}), got {len(masks)}")
    out = []
    for (dc, _, hold, _), m in zip(items, masks):
        m = np.asarray(m)
        if m.shape != tuple(dc.scan_shape) or m.dtype != bool:
            raise Distill4dError(f"label_mask must be a boolean image of the scan's shape {tuple(dc.scan_shape)}, "
                                 f"got {m.dtype} of shape {m.shape}")
        if not (m & ~hold).any() or not (m & hold).any():
            raise Distill4dError(f"label_mask keeps {int((m & ~hold).sum())} training and {int((m & hold).sum())} "
                                 "held-out positions; it must keep some of each")
        out.append(m)
    return out


@dataclass
class _TrainScan:
    """One training scan, prepared: padded inputs, standardised label, training weights, tiles."""

    P: Any  # (rx + 2r, ry + 2r, N, N) torch tensor (linear model, fit "adam": (..., n_bins) radial-bin sums)
    Z: Any  # (rx, ry) standardised label
    W: Any  # (rx, ry) 1 on training positions, 0 held out
    starts: np.ndarray  # tile origins whose output holds a training position
    region: tuple[slice, slice]
    geometry: dict[str, Any]
    mean: float
    std: float
    shape: tuple[int, int]
    use: np.ndarray  # (rx, ry) bool: positions whose label is used (training and held out)


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
        raise Distill4dError("no training scans given")
    if many:
        labels = list(label) if isinstance(label, (list, tuple)) else None
        if labels is None or len(labels) != len(cubes):
            raise Distill4dError(f"give one label image per scan: {len(cubes)} scans, "
                                 f"{len(labels) if labels is not None else 'a single'} label(s)")
        per_scan = isinstance(holdout, (list, tuple)) and not _is_region(holdout)
        holds = list(holdout) if per_scan else [holdout] * len(cubes)
        if len(holds) != len(cubes):
            raise Distill4dError(f"holdout: give one region per scan ({len(cubes)}) or one for all, got {len(holds)}")
    else:
        labels, holds = [label], [holdout]
    out = []
    for i, (dc, lab, hold) in enumerate(zip(cubes, labels, holds)):
        try:
            lab = _check_label(lab, dc.scan_shape)
            check_pad(pad, radius, dc.scan_shape)
            mask, region = _holdout_mask(dc.scan_shape, hold, fraction)
        except ValueError as err:
            raise Distill4dError(f"scan {i}: {err}" if many else str(err)) from None
        out.append((dc, lab, mask, region))
    return out


def _prepare_scan(dc: DataCube, lab: np.ndarray, hold: np.ndarray, region: tuple[slice, slice], p: int,
                  config: Any, pad: str, origin_px: Any, dev: Any, engine: dict[str, Any],
                  use: np.ndarray | None = None) -> _TrainScan:
    """Prepare one checked training scan (:func:`_as_scans`); ``p``: the tile side of every scan; ``use``:
    the positions whose label is used (training and held-out), default all."""
    import torch

    from ...engine import map_patterns

    r = config.radius
    rx, ry = dc.scan_shape
    geometry = phase_geometry(dc, origin_px=origin_px, **_pass_options(engine))
    fn = functools.partial(prepare_phase_patterns, geometry=geometry, size=config.size, extent=config.extent)
    prepared = map_patterns(dc, fn, **engine)
    if config.input_norm == "scan":
        norm = _scan_norm(prepared.sum(axis=(0, 1), dtype=np.float64),
                          (prepared.astype(np.float64) ** 2).sum(axis=(0, 1)), rx * ry)
        prepared = (prepared - norm[0]) / norm[1]
    use = np.ones((rx, ry), bool) if use is None else use
    mu, sd = float(lab[~hold & use].mean()), float(lab[~hold & use].std())
    sd = sd if sd > 0 else 1.0
    return _TrainScan(
        P=torch.as_tensor(np.pad(prepared, ((r, r), (r, r), (0, 0), (0, 0)), mode=pad), device=dev),
        Z=torch.as_tensor((lab - mu) / sd, dtype=torch.float32, device=dev),
        W=torch.as_tensor(~hold & use, dtype=torch.float32, device=dev),
        starts=np.argwhere(np.lib.stride_tricks.sliding_window_view(~hold & use, (p, p)).any(axis=(2, 3))),
        region=region, geometry=geometry, mean=mu, std=sd, shape=(rx, ry), use=use)


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
    label_mask: np.ndarray | list[np.ndarray] | None = None,
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
    config : :class:`~distill4d.ml.phase.model.PhaseConfig` (default: the linear model).
    train : :class:`PhaseTrainConfig`.
    holdout : ``((x0, x1), (y0, y1))`` scan rectangle held out for validation (default: the
        last ``train.holdout_fraction`` of the rows); with several scans, one for all or a list.
    pad : how neighbourhoods continue past the scan edge: "edge", "reflect" or "wrap"
        (periodic simulations). Stored in the card and used again at inference by default.
    origin_px : beam centre (pixels), else from the calibration / the mean pattern.
    label_units, label_name : recorded in the card; predictions come out in these units.
    label_mask : boolean image of the scan's shape (with several scans, a list): True where the label
        is used; elsewhere (e.g. the poorly constrained edge of a ptychographic reconstruction) the
        label is neither trained on nor used for validation. Default: the whole label.
    device : "cpu", "cuda" or "auto".
    callback : called with each evaluation record.
    engine : options of :func:`~distill4d.engine.map_patterns` for the preparation pass.

    Returns
    -------
    ``(model, card)``; ``card["metrics"]`` holds the held-out MSE / Pearson r of the best state
    (with several scans: their means, and ``per_scan``).
    """
    import torch

    from .._common.adam import Adam  # torch.optim's update, without importing torch._dynamo
    from .._common.device import torch_device
    from .model import PhaseConfig, build_phase_model

    config = PhaseConfig() if config is None else config
    train = PhaseTrainConfig() if train is None else train
    if train.fit == "lstsq" and config.model != "linear":
        raise Distill4dError(f"fit 'lstsq' is for the linear model, got model {config.model!r}; use fit 'adam'")
    if train.fit == "lbfgs" and config.model != "mlp":
        raise Distill4dError(f"fit 'lbfgs' is for the MLP, got model {config.model!r}; use fit 'adam'")
    r = config.radius
    items = _as_scans(datacube, label, holdout, pad, r, train.holdout_fraction)
    need = sum(item[0].n_patterns for item in items) * config.size**2 * 4
    if need > _MAX_PREPARED_BYTES:
        raise Distill4dError(f"the prepared scans would take {need / 2**30:.1f} GiB; train on crops of the scans "
                             f"(DataCube slicing) of at most {_MAX_PREPARED_BYTES / 2**30:.0f} GiB prepared")
    dev = torch_device(device)
    t0 = time.perf_counter()
    p = min([train.patch] + [min(item[0].scan_shape) for item in items])
    uses = _label_masks(label_mask, items)
    scans = [_prepare_scan(*item, p, config, pad, origin_px, dev, engine, use) for item, use in zip(items, uses)]
    seconds_prepare = time.perf_counter() - t0

    torch.manual_seed(train.seed)
    model = build_phase_model(config).to(dev)
    forward = model
    if config.model == "linear" and train.fit == "adam":
        # the same model on each pattern's radial-bin sums: n_bins values instead of N² per pattern
        # (the masks are constant on each bin), so each step costs a fraction of the full forward
        for sc in scans:
            sc.P = model.bin_sums(sc.P)
        forward = model.forward_binned
    if config.model == "mlp":  # the features' mean and scale over the training positions of every scan
        with torch.no_grad():
            feats = [model.features(sc.P.unsqueeze(0))[0] for sc in scans]
            pooled = torch.cat([f[sc.W > 0] for f, sc in zip(feats, scans)])
            model.mean.copy_(pooled.mean(dim=0))
            model.scale.copy_(feature_scale(pooled.std(dim=0)))
    lr = train.lr if train.lr is not None else (1e-2 if config.model == "linear" else 2e-3)
    opt = Adam(model.parameters(), lr=lr, weight_decay=train.weight_decay)
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
            pred = forward(sc.P[vx.start : vx.stop + 2 * r, vy.start : vy.stop + 2 * r].unsqueeze(0))[0]
        keep = torch.as_tensor(sc.use[vx, vy], device=dev)
        pred, target = pred[keep], sc.Z[vx, vy][keep]
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
    step, running = 0, 0.0
    t1 = time.perf_counter()
    fit_info = None
    if train.fit == "lstsq":
        from .linear_fit import fit_linear

        rings = model.rings.cpu().numpy()
        w1, w2, bias, fit_info = fit_linear(
            [(sc.P.cpu().numpy(), sc.Z.cpu().numpy(), sc.W.cpu().numpy() > 0, _region_mask(sc.shape, sc.region) & sc.use)
             for sc in scans], model.bins.cpu().numpy(), config.bins, rings, int(rings.max()) + 1, config.n_masks)
        with torch.no_grad():
            model.w1.copy_(torch.as_tensor(w1, dtype=model.w1.dtype))
            model.w2.copy_(torch.as_tensor(w2, dtype=model.w2.dtype))
            model.bias.fill_(bias)
        mse, corr, per = evaluate()
        step = fit_info["sweeps"]
        best = (mse, corr, step, per)
        for rec in fit_info["fits"]:
            history.append({**rec, "seconds": time.perf_counter() - t1})
            if callback is not None:
                callback(history[-1])
        stopped = "least_squares"
    elif train.fit == "lbfgs":
        train_sets = [(f[sc.W > 0], sc.Z[sc.W > 0]) for f, sc in zip(feats, scans)]
        from .._common.lbfgs import lbfgs

        weights = [model.hidden.weight, model.out.weight]

        def loss_fn() -> Any:
            loss = sum(((model.head(f) - z) ** 2).mean() for f, z in train_sets) / len(train_sets)
            return loss + MLP_L2 * sum((w * w).sum() for w in weights)

        model.train()
        _, step = lbfgs(list(model.parameters()), loss_fn, max_iter=min(train.max_steps, MLP_MAX_ITERATIONS))
        mse, corr, per = evaluate()
        best = (mse, corr, step, per)
        history.append({"step": step, "held_out_mse": mse, "held_out_r": corr, "seconds": time.perf_counter() - t1})
        if callback is not None:
            callback(history[-1])
        stopped = "lbfgs"
    else:
        rule = StopRule(train.max_steps, patience=train.patience, max_minutes=train.max_minutes)
        rule.start(t1)
        model.train()
        for step in range(1, train.max_steps + 1):
            if len(scans) == 1:
                block, target, weight = tiles(scans[0], train.batch_size)
            else:
                counts = np.bincount(rng.integers(0, len(scans), size=train.batch_size), minlength=len(scans))
                parts = [tiles(sc, int(n)) for sc, n in zip(scans, counts) if n]
                block, target, weight = (torch.cat(x) for x in zip(*parts))
            loss = (weight * (forward(block) - target) ** 2).sum() / weight.sum().clamp_min(1.0)
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
                if rule.record(step, mse):
                    best = (mse, corr, step, per)
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                if rule.stopped or rule.out_of_time():
                    break
        # the phase cards name a patience stop "early_stopping"
        stopped = {None: "max_steps", "patience": "early_stopping"}.get(rule.reason, rule.reason)
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
        "format": CARD_FORMATS["phase"],
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
    if train.fit == "lbfgs":
        card["fit"] = {"method": "full-batch L-BFGS on every training position", "l2": MLP_L2,
                       "iterations": step}
    if fit_info is not None:
        card["fit"] = {"method": "least squares, rank and ridge chosen on the held-out region",
                       "rank": fit_info["rank"], "ridge_relative": fit_info["ridge"], "sweeps": fit_info["sweeps"]}
    return model, card


def save_phase_model(path: str | os.PathLike, model: Any, card: dict[str, Any], *, force: bool = False,
                     command: str | None = None) -> Path:
    """Write ``model``'s state_dict to ``path`` and ``card`` (+ ``command``) beside it (``.json``)."""
    from .._common.model_files import save_state_and_card

    card = dict(card) if command is None else {**card, "command": command}
    return save_state_and_card(path, model, card, force=force)
