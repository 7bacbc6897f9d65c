"""Training FCU-Net on a simulated library (``distill4d train fcunet --library DIR --out WEIGHTS``).

- Split: entries of every 20th simulation (``sample_index % 20 == 0``: all thicknesses of
  that simulation) form the validation split; the rest train. Validation patterns are
  augmented once (fixed seed), training patterns anew every epoch.
- Loss: mean squared error to the structure-factor target; AdamW (decoupled weight decay)
  with a linear warm-up and a cosine decay over ``max_steps``.
- Resumable: ``WEIGHTS.partial/checkpoint.pt`` (model, optimiser, RNG, position in the epoch,
  best validation) is written atomically every ``checkpoint_minutes`` and when a time limit
  stops the run; the same command resumes where it stopped, to the same weights as an
  uninterrupted run (a different configuration is refused). The folder (with its
  ``log.jsonl``) is removed once the weights are written; the card keeps the validation history.
- Output: ``WEIGHTS`` (a plain ``state_dict`` of the best validation loss, loadable with
  ``torch.load(weights_only=True)``) and ``WEIGHTS`` with ``.json``: the model card
  (architecture, input size and pixel size, library configuration, command, metrics, and the
  best weights' :func:`stretch_response` on un-augmented validation patterns).
- Warm start (``init=``, ``--init``): the model starts from earlier weights of the same
  architecture (their card's training record is kept in the new card, under ``init``) with a
  fresh optimiser and schedule: a longer or further training of shipped weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import pathlib
import platform
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from ...errors import Distill4dError
from ..._atomic import atomic_output, atomic_write_bytes
from ..._validate import check_keys, positive_float, positive_int
from ...simulate.augment import AugmentConfig
from ...simulate.library import Library
from .._common.device import torch_device
from .._common.loop import StopRule
from .data import LibraryDataset
from .model import FCUNet, FCUNetConfig

__all__ = ["FCUNetTrainConfig", "train_fcunet", "evaluate_fcunet", "stretch_response", "validation_entries", "position_loss", "augment_batch"]

_VAL_EVERY = 20


@dataclasses.dataclass(frozen=True)
class FCUNetTrainConfig:
    """Training settings (the architecture is ``model``).

    batch_size, lr, weight_decay : AdamW settings (lr: peak learning rate).
    warmup_steps : linear warm-up of the learning rate; then cosine decay to 0 at max_steps.
    max_steps : optimiser steps in total (the schedule's length).
    max_minutes : stop (with a checkpoint; rerun to go on) after this wall time; 0: no limit.
    val_entries : at most this many validation entries are evaluated.
    val_every_steps : validate every this many steps (and at the end).
    checkpoint_minutes : checkpoint at least this often.
    augment : on-the-fly augmentation (None: off).
    augment_on : ``"loader"``: each item is augmented with NumPy in the DataLoader's workers
        (the CPU, pattern by pattern, which can limit a GPU's rate); ``"device"``: each batch is
        augmented on the training device by :func:`distill4d.simulate.augment_torch.random_augment`
        (same chain and ranges, bilinear only, other draws). Validation is augmented by the
        loader either way, so the two are scored alike.
    spot_weight : the squared error of pixels where the target exceeds 1e-3 of (000) (the
        Bragg spots, ~2 % of the pixels) counts ``1 + spot_weight`` times (0: plain MSE). The
        target is sparse; weighting its spots speeds up learning them (docs/experiments.md,
        FCU-Net).
    position_weight : adds ``position_weight`` x the amplitude-weighted mean squared distance
        (px²) between the centroids of prediction and target in a 5 x 5 window around each
        true peak of amplitude >= 0.01 of (000) (0: off). The plain MSE lets a predicted spot
        lag a strained lattice (benchmarks/RESULTS.md, FCU-Net ``stretch response``); this term
        pulls each spot's centre of mass onto its true position.
    field_jitter_px : each training pattern's U-Net fields are shifted by a uniform random
        offset in ``[-field_jitter_px, field_jitter_px]`` px along qx and qy, the probe
        cross-correlation and the target are not, so that the final real block learns to place
        the disks from the correlation, which follows the detector plane exactly (needs
        ``model.correlation_skip``; 0: off). With the CPU-sized real block (3 layers of 3x3)
        0.5 px raised the correlation's share of the positions only from 1 % to 2 %
        (docs/experiments.md, FCU-Net).
    seed : shuffling, augmentation and initialisation seed.
    num_workers : DataLoader worker processes (0: load in the training process).
    in_memory : hold the training split in memory (``LibraryDataset(in_memory=True)``) rather
        than reading each item from the files.
    """

    model: FCUNetConfig = dataclasses.field(default_factory=FCUNetConfig)
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 200
    max_steps: int = 4000
    max_minutes: float = 0.0
    val_entries: int = 256
    val_every_steps: int = 500
    checkpoint_minutes: float = 5.0
    augment: AugmentConfig | None = dataclasses.field(default_factory=AugmentConfig)
    augment_on: str = "loader"
    spot_weight: float = 0.0
    position_weight: float = 0.0
    field_jitter_px: float = 0.0
    seed: int = 0
    num_workers: int = 1
    in_memory: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.model, FCUNetConfig):
            raise TypeError(f"model must be an FCUNetConfig, got {type(self.model).__name__}")
        for name in ("batch_size", "max_steps", "val_entries", "val_every_steps"):
            positive_int(name, getattr(self, name))
        positive_int("warmup_steps", self.warmup_steps, minimum=0)
        positive_int("num_workers", self.num_workers, minimum=0)
        positive_float("lr", self.lr, maximum=1.0)
        if not 0 <= self.weight_decay < 1:
            raise Distill4dError(f"weight_decay must be in [0, 1), got {self.weight_decay!r}")
        if not self.max_minutes >= 0:
            raise Distill4dError(f"max_minutes must be >= 0 (0: no limit), got {self.max_minutes!r}")
        positive_float("checkpoint_minutes", self.checkpoint_minutes)
        if not isinstance(self.in_memory, bool):
            raise TypeError(f"in_memory must be true or false, got {self.in_memory!r}")
        if self.augment_on not in ("loader", "device"):
            raise Distill4dError(f"augment_on must be 'loader' or 'device', got {self.augment_on!r}")
        if self.augment_on == "device" and self.augment is not None and self.augment.order != 1:
            raise Distill4dError(f"augment_on='device' needs bilinear augmentation (augment.order 1), got {self.augment.order}")
        for name in ("spot_weight", "position_weight", "field_jitter_px"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise Distill4dError(f"{name} must be >= 0, got {value!r}")
        if self.field_jitter_px and not self.model.correlation_skip:
            raise Distill4dError("field_jitter_px needs model.correlation_skip (the correlation the real block must use)")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model"] = self.model.to_dict()
        return d

    def schedule_dict(self) -> dict[str, Any]:
        """What must match for a checkpoint to be resumed (everything but the time limits)."""
        d = self.to_dict()
        for k in ("max_minutes", "checkpoint_minutes", "num_workers", "in_memory"):
            d.pop(k)
        for key in ("position_weight", "field_jitter_px"):  # checkpoints written before these existed still resume
            if not d[key]:
                d.pop(key)
        if d["augment_on"] == "loader":  # likewise
            d.pop("augment_on")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FCUNetTrainConfig:
        d = dict(d)
        check_keys(cls, d, "training configuration")
        if isinstance(d.get("model"), dict):
            d["model"] = FCUNetConfig.from_dict(d["model"])
        if isinstance(d.get("augment"), dict):
            d["augment"] = AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d["augment"].items()})
        return cls(**d)


def _splits(library: Library) -> tuple[np.ndarray, np.ndarray]:
    sample = library.metadata(("sample_index",))["sample_index"].astype(np.int64)
    val = sample % _VAL_EVERY == 0
    return np.nonzero(~val)[0], np.nonzero(val)[0]


def validation_entries(library: Library, n: int) -> np.ndarray:
    """The validation entries training scores: at most ``n`` evenly spread over the validation split."""
    _, val_idx = _splits(library)
    return np.unique(val_idx[np.linspace(0, len(val_idx) - 1, min(n, len(val_idx))).round().astype(int)])


def _lr(step: int, cfg: FCUNetTrainConfig) -> float:
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * t))


def _batches(n: int, cfg: FCUNetTrainConfig, epoch: int) -> list[np.ndarray]:
    perm = np.random.default_rng([cfg.seed, epoch]).permutation(n)
    nb = n // cfg.batch_size  # drop the last partial batch (batch norm)
    return [perm[b * cfg.batch_size : (b + 1) * cfg.batch_size] for b in range(nb)]


def _batch_keys(n: int, cfg: FCUNetTrainConfig, epoch: int, batch: int) -> Iterator[list[tuple[int, int]]]:
    """Batches of ``(epoch, item)`` keys from batch ``batch`` of ``epoch`` on, epoch after epoch
    (endless): one DataLoader, and its worker processes, serve the whole run."""
    while True:
        for idx in _batches(n, cfg, epoch)[batch:]:
            yield [(epoch, int(i)) for i in idx]
        epoch, batch = epoch + 1, 0


def _loss(pred: torch.Tensor, target: torch.Tensor, spot_weight: float) -> torch.Tensor:
    se = (pred - target) ** 2
    if spot_weight:
        se = se * (1.0 + spot_weight * (target > 1e-3).to(se.dtype))
    return se.mean()


def position_loss(
    pred: torch.Tensor, target: torch.Tensor, peaks: torch.Tensor, *, radius: int = 2, min_amplitude: float = 0.01
) -> torch.Tensor:
    """Amplitude-weighted mean squared distance (px²) between the centroids of ``pred`` and
    ``target`` (both ``(B, Nx, Ny)``, clipped at 0) in a ``2 radius + 1`` square window around
    each peak of ``peaks`` (``(B, P, 3)``: qx, qy in px, amplitude; NaN rows are padding).

    Only peaks of amplitude >= ``min_amplitude`` whose window lies inside the image and whose
    predicted window sum is at least 0.3 x the target's count: a missed spot is the MSE's
    business, not a position to pull on. Returns 0 (with a gradient) when no peak qualifies.
    """
    if pred.ndim != 3 or tuple(target.shape) != tuple(pred.shape):
        raise Distill4dError(f"pred and target must both be (B, Nx, Ny), got {tuple(pred.shape)} and {tuple(target.shape)}")
    if peaks.ndim != 3 or peaks.shape[0] != pred.shape[0] or peaks.shape[2] != 3:
        raise Distill4dError(f"peaks must be (B, P, 3) with B = {pred.shape[0]}, got {tuple(peaks.shape)}")
    _, nx, ny = pred.shape
    pk = peaks.to(pred.device)
    amp = torch.nan_to_num(pk[..., 2], nan=0.0)
    cx = torch.round(torch.nan_to_num(pk[..., 0], nan=-1e6))
    cy = torch.round(torch.nan_to_num(pk[..., 1], nan=-1e6))
    ok = (amp >= min_amplitude) & (cx >= radius) & (cx <= nx - 1 - radius) & (cy >= radius) & (cy <= ny - 1 - radius)
    b, j = torch.nonzero(ok, as_tuple=True)
    if b.numel() == 0:
        return pred.sum() * 0.0
    d = torch.arange(-radius, radius + 1, device=pred.device)
    ix = (cx[b, j].long()[:, None, None] + d[None, :, None]).expand(-1, len(d), len(d))
    iy = (cy[b, j].long()[:, None, None] + d[None, None, :]).expand(-1, len(d), len(d))
    flat = (b[:, None, None] * nx + ix) * ny + iy
    dx = d.to(pred.dtype)[:, None].expand(len(d), len(d))
    dy = d.to(pred.dtype)[None, :].expand(len(d), len(d))

    def centroid(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        w = img.reshape(-1)[flat].clamp(min=0)
        s = w.sum(dim=(1, 2))
        return (w * dx).sum(dim=(1, 2)) / s.clamp(min=1e-12), (w * dy).sum(dim=(1, 2)) / s.clamp(min=1e-12), s

    px, py, ps = centroid(pred)
    with torch.no_grad():
        tx, ty, ts = centroid(target.to(pred.dtype))
        use = (ts > 0) & (ps >= 0.3 * ts)
        weight = amp[b, j].to(pred.dtype) * use
    if not bool(use.any()):
        return pred.sum() * 0.0
    return (weight * ((px - tx) ** 2 + (py - ty) ** 2)).sum() / weight.sum()


@torch.no_grad()
@contextlib.contextmanager
def _eval_mode(model: FCUNet) -> Iterator[None]:
    """Eval mode with dropout off inside; the model's training flag and MC dropout restored after."""
    was_training = model.training
    model.eval()
    model.set_mc_dropout(False)
    try:
        yield
    finally:
        model.train(was_training)
        model.set_mc_dropout(True)


def _predict(
    model: FCUNet, dataset: LibraryDataset, device: str | torch.device, batch_size: int
) -> tuple[np.ndarray, list[np.ndarray], float]:
    """Predicted images (eval mode, no dropout), the scorable true peaks, and the MSE to the targets."""
    from .detect import true_peaks

    dev = torch.device(device)
    # its own generator: evaluating leaves the global RNG (dropout masks of training) untouched
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                         generator=torch.Generator().manual_seed(0))
    images, truths, se = [], [], 0.0
    with _eval_mode(model):
        for batch in loader:
            out = model(batch["pattern"].to(dev), batch["probe"].to(dev)).cpu()
            se += float(((out - batch["target"]) ** 2).mean(dim=(1, 2)).sum())
            images.append(out.numpy())
            for j in range(out.shape[0]):
                truths.append(true_peaks(batch["peaks"][j, : int(batch["n_peaks"][j])].numpy(), out.shape[-2:]))
    return np.concatenate(images), truths, se / max(len(truths), 1)


#: Candidate prediction thresholds (relative to (000)) tried by :func:`tune_detection`.
THRESHOLDS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.1)


@torch.no_grad()
def tune_detection(
    model: FCUNet, dataset: LibraryDataset, *, device: str | torch.device = "cpu", batch_size: int = 16,
    thresholds: tuple[float, ...] = THRESHOLDS,
) -> dict[str, Any]:
    """The prediction threshold of highest disk accuracy (match within 0.5 px) on ``dataset``.

    Returns ``{"min_intensity": best, "accuracy": {threshold: accuracy}}``; use the validation
    split (never the test data).
    """
    from ...bragg.score import disk_detection_accuracy
    from .detect import peaks_from_prediction

    pred, truths, _ = _predict(model, dataset, device, batch_size)
    acc = {}
    for t in thresholds:
        found = peaks_from_prediction(pred, min_intensity=t)
        acc[float(t)] = float(disk_detection_accuracy(found, truths, threshold_inv_A=0.5, q_pixel_inv_A=1.0).accuracy)
    best = max(acc, key=lambda t: acc[t])
    return {"min_intensity": best, "accuracy": acc, "match_px": 0.5, "entries": len(truths)}


@torch.no_grad()
def stretch_response(
    model: FCUNet, dataset: LibraryDataset, *, stretch: float = 0.02, device: str | torch.device = "cpu",
    batch_size: int = 16, match_px: float = 1.0, hold: str | None = None,
) -> dict[str, Any]:
    """How fully the predicted peaks follow a known magnification of the patterns (eval mode, no dropout).

    Each item's pattern is magnified about the detector centre by ``1 - stretch`` and
    ``1 + stretch`` along qx, then along qy (bilinear :func:`distill4d.simulate.augment.affine`;
    the probe is unchanged). Each true peak (amplitude ≥ 0.01 of (000), ≥ 4 px inside the
    detector), mapped exactly, is matched to a predicted peak within ``match_px`` (px;
    :func:`distill4d.bragg.score.match_peaks`) in the unstretched and the stretched pattern. The slope (through 0) of the matched peaks'
    predicted displacement along the stretched axis on their true displacement is 1 for a
    detector that follows the lattice fully; a strain map from it reports that fraction of a
    true strain. Use an un-augmented dataset (``augment=None``) of simulations never trained on.

    hold : ``"field"`` or ``"correlation"``: that part of the real block's input
        (:meth:`FCUNet.head_inputs`) is kept from the unstretched pattern, so only the other
        part sees the stretch: which part places the peaks (needs ``correlation_skip``).

    Returns ``{"stretch": stretch, "qx": {"slope", "peaks", "rms_px"}, "qy": {...}}``; ``rms_px``:
    the RMS difference (px) between predicted and true displacements; slope and rms_px are
    None where no peak was matched.
    """
    from ...bragg.score import match_peaks
    from .detect import peaks_from_prediction, true_peaks
    from ...simulate.augment import affine

    if not 0 < stretch < 0.5:
        raise Distill4dError(f"stretch must be in (0, 0.5), got {stretch!r}")
    if hold not in (None, "field", "correlation"):
        raise Distill4dError(f"hold must be None, 'field' or 'correlation', got {hold!r}")
    if hold is not None and not model.config.correlation_skip:
        raise Distill4dError("hold needs a model with correlation_skip (its real block has no correlation input)")
    dev = torch.device(device)
    scales = (0.0, -stretch, stretch)
    moved: dict[int, tuple[list[float], list[float]]] = {0: ([], []), 1: ([], [])}
    with _eval_mode(model):
        for start in range(0, len(dataset), batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            for axis in (0, 1):
                pats, probes, truths = [], [], []
                for it in items:
                    pat = it["pattern"].numpy()
                    centre = np.array([pat.shape[0] // 2, pat.shape[1] // 2], dtype=np.float64)
                    pk = it["peaks"][: int(it["n_peaks"])].numpy()
                    t0 = true_peaks(pk, pat.shape, min_amplitude=0.01, edge_px=4.0)[:, :2]
                    for e in scales:
                        m = np.eye(2)
                        m[axis, axis] = 1 + e
                        pats.append(affine(pat, matrix=m, origin_px=centre)[0])
                        probes.append(it["probe"].numpy())
                        truths.append(centre + (t0 - centre) @ m.T)
                x = torch.from_numpy(np.stack(pats).astype(np.float32)).to(dev)
                p = torch.from_numpy(np.stack(probes).astype(np.float32)).to(dev)
                if hold is None:
                    pred = model(x, p)
                else:
                    h = model.head_inputs(x, p)
                    h = h.reshape(-1, len(scales), *h.shape[1:])
                    held = slice(0, -1) if hold == "field" else slice(-1, None)
                    h[:, 1:, held] = h[:, :1, held]
                    pred = model.real(h.flatten(0, 1))[:, 0]
                found = peaks_from_prediction(pred.float().cpu().numpy())
                for k in range(0, len(found), len(scales)):
                    pos = []
                    for f, t in zip(found[k : k + len(scales)], truths[k : k + len(scales)]):
                        q = np.full(t.shape, np.nan)
                        i_pred, i_true = match_peaks(f[:, :2], t, match_px)
                        q[i_true] = f[i_pred, :2]
                        pos.append(q)
                    for s in range(1, len(scales)):
                        t_d = truths[k + s][:, axis] - truths[k][:, axis]
                        p_d = pos[s][:, axis] - pos[0][:, axis]
                        good = np.isfinite(p_d) & (np.abs(t_d) > 0.05)
                        moved[axis][0].extend(t_d[good])
                        moved[axis][1].extend(p_d[good])
    out: dict[str, Any] = {"stretch": stretch}
    for axis, name in ((0, "qx"), (1, "qy")):
        t_d, p_d = (np.asarray(v, dtype=np.float64) for v in moved[axis])
        ok = t_d.size > 0
        out[name] = {"slope": float(np.sum(t_d * p_d) / np.sum(t_d * t_d)) if ok else None,
                     "peaks": int(t_d.size), "rms_px": float(np.sqrt(np.mean((p_d - t_d) ** 2))) if ok else None}
    return out


@torch.no_grad()
def evaluate_fcunet(
    model: FCUNet, dataset: LibraryDataset, *, device: str | torch.device = "cpu", batch_size: int = 16
) -> dict[str, float]:
    """Validation metrics of ``model`` (eval mode, no dropout): ``mse`` and disk ``accuracy``.

    ``accuracy``: intensity-weighted disk-detection accuracy (within 0.5 px) of the peaks found
    in the predicted images by :func:`distill4d.ml.fcunet.detect.peaks_from_prediction`
    against the kinematic peaks (amplitude ≥ 0.01 of (000)), over all entries.
    """
    from ...bragg.score import disk_detection_accuracy
    from .detect import peaks_from_prediction

    pred, truths, mse = _predict(model, dataset, device, batch_size)
    score = disk_detection_accuracy(peaks_from_prediction(pred), truths, threshold_inv_A=0.5, q_pixel_inv_A=1.0)
    return {"mse": mse, "accuracy": score.accuracy, "mean_error_px": score.mean_error_px}



def augment_batch(
    batch: dict[str, torch.Tensor], config: AugmentConfig, generator: torch.Generator, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch of un-augmented :class:`LibraryDataset` items augmented on ``device``.

    Returns ``(pattern, probe, target, peaks)`` on ``device``: the pattern in the FCU-Net input
    scaling (divided by the probe maximum at the pattern's dose and gain, as the loader's
    augmentation gives it), the target and the padded peaks (NaN rows stay NaN) moved by the
    same distortion and shift.
    """
    from ...simulate import augment_torch

    pattern, probe = batch["pattern"].to(device), batch["probe"].to(device)
    target, peaks = batch["target"].to(device), batch["peaks"].to(device)
    pattern, target, peaks, params = augment_torch.random_augment(pattern, target, peaks, probe, generator, config)
    gain = (params["count_scale"] * params["intensity_factor"]).to(pattern.dtype)
    return pattern / gain[:, None, None], probe, target, peaks


def _save_checkpoint(path: pathlib.Path, state: dict[str, Any]) -> None:
    with atomic_output(path, force=True) as tmp:
        torch.save(state, tmp)


def _init_weights(init: str | os.PathLike, model_cfg: FCUNetConfig) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state_dict of earlier weights to start from, and what the new card records of them."""
    import hashlib

    from .detect import load_fcunet

    path = pathlib.Path(os.fspath(init))
    model, card = load_fcunet(path, device="cpu")  # names a missing, corrupt or mismatched file
    if FCUNetConfig.from_dict(card["architecture"]) != model_cfg:
        raise Distill4dError(
            f"the initial weights {path.name} have the architecture {card['architecture']}, but the training "
            f"configuration asks for {model_cfg.to_dict()}; a warm start needs the same architecture"
        )
    prior = card.get("training", {})
    record = {
        "weights": path.name,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "training": {k: prior.get(k) for k in ("command", "steps", "seconds", "device", "library", "entries_train")},
        "init": prior.get("init"),
    }
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, record


def train_fcunet(
    library: str | os.PathLike | Library,
    out: str | os.PathLike,
    config: FCUNetTrainConfig | None = None,
    *,
    init: str | os.PathLike | None = None,
    device: str = "auto",
    force: bool = False,
    command: str | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train (or resume training) an FCU-Net; write ``out`` (weights) and its model card.

    Returns the model card (dict). Training stops at ``config.max_steps`` or after
    ``config.max_minutes``; in the latter case no weights are written yet (``"complete":
    False`` in the returned dict) and the same call resumes.
    init : weights (with their model card) of the same architecture to start from instead of
        a random initialisation; the optimiser and schedule start afresh.
    """
    cfg = config or FCUNetTrainConfig()
    if not isinstance(cfg, FCUNetTrainConfig):
        raise TypeError(f"config must be an FCUNetTrainConfig, got {type(cfg).__name__}")
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    lib = library if isinstance(library, Library) else Library(library)
    n = cfg.model.size
    if tuple(lib.config.shape) != (n, n):
        raise Distill4dError(f"the library's patterns are {tuple(lib.config.shape)} px but the model takes {n} x {n}")
    out = pathlib.Path(os.fspath(out))
    card_path = out.with_suffix(".json")
    if out.suffix.lower() not in (".pt", ".pth"):
        raise Distill4dError(f"the weights file must end in .pt or .pth, got {out.name}")
    if (out.exists() or card_path.exists()) and not force:
        raise FileExistsError(f"{out} or {card_path.name} exists; choose another name or pass force=True (--force)")
    train_idx, val_idx = _splits(lib)
    if len(train_idx) < cfg.batch_size or len(val_idx) == 0:
        raise Distill4dError(
            f"the library has {len(train_idx)} training and {len(val_idx)} validation entries; it needs at "
            f"least a batch ({cfg.batch_size}) and one validation simulation (sample_index % {_VAL_EVERY} == 0)"
        )
    init_state, init_record = _init_weights(init, cfg.model) if init is not None else (None, None)
    work = pathlib.Path(str(out) + ".partial")
    work.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = work / "checkpoint.pt", work / "log.jsonl"
    dev = torch_device(device)
    torch.manual_seed(cfg.seed)
    model = FCUNet(cfg.model)
    if init_state is not None:
        model.load_state_dict(init_state)
    model = model.to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    state = {"step": 0, "epoch": 0, "batch": 0, "best": None, "best_state": None, "seconds": 0.0, "history": []}
    rule = StopRule(cfg.max_steps, max_minutes=cfg.max_minutes)  # the best: lowest validation MSE
    key = json.dumps({"train": cfg.schedule_dict(), "library": lib.config.to_dict(), "entries": len(lib),
                      "init": init_record and init_record["sha256"]}, sort_keys=True)
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location=dev, weights_only=True)
        if ck.get("key") != key:
            raise Distill4dError(
                f"{work} holds a checkpoint of another training configuration or library; "
                "remove it or choose another output name (nothing was changed)"
            )
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        state = json.loads(ck["state"])
        state["best_state"] = ck.get("best_state")
        rule.load_state_dict(state.pop("stop", None) or {"best": state["best"] and state["best"]["mse"]})
        torch.set_rng_state(ck["torch_rng"])  # the dropout masks go on as if never stopped
        say(f"resuming at step {state['step']} (epoch {state['epoch']}, batch {state['batch']})")
    on_device = cfg.augment_on == "device" and cfg.augment is not None
    train_ds = LibraryDataset(lib, indices=train_idx, augment=None if on_device else cfg.augment, seed=cfg.seed,
                              in_memory=cfg.in_memory)
    val_sel = validation_entries(lib, cfg.val_entries)
    val_ds = LibraryDataset(lib, indices=val_sel, augment=cfg.augment, seed=cfg.seed + 1)

    def checkpoint() -> None:
        body = dict(state)
        best_state = body.pop("best_state")
        body["stop"] = rule.state_dict()
        _save_checkpoint(
            ckpt_path,
            {"key": key, "model": model.state_dict(), "optimizer": opt.state_dict(), "state": json.dumps(body),
             "best_state": best_state, "torch_rng": torch.get_rng_state()},
        )

    def validate() -> None:
        metrics = evaluate_fcunet(model, val_ds, device=dev, batch_size=cfg.batch_size)
        metrics.update(step=state["step"], epoch=state["epoch"], seconds=round(state["seconds"], 1))
        state["history"].append(metrics)
        with open(log_path, "a") as fh:
            fh.write(json.dumps({"kind": "val", **metrics}) + "\n")
        say(f"step {state['step']}: val mse {metrics['mse']:.3g}, accuracy {metrics['accuracy']:.3f}")
        if rule.record(state["step"], metrics["mse"]):
            state["best"] = metrics
            state["best_state"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    model.train()
    model.set_mc_dropout(True)
    t_start = time.perf_counter()
    rule.start(t_start)
    seconds0 = state["seconds"]
    last_ckpt = t_start
    running = []
    loader = torch.utils.data.DataLoader(
        train_ds, batch_sampler=_batch_keys(len(train_ds), cfg, state["epoch"], state["batch"]),
        num_workers=cfg.num_workers, generator=torch.Generator().manual_seed(cfg.seed + state["epoch"]),
    )
    for batch in loader if not rule.steps_done(state["step"]) else ():
        epoch = int(batch["epoch"][0])
        state["batch"] = state["batch"] + 1 if epoch == state["epoch"] else 1
        state["epoch"] = epoch
        for group in opt.param_groups:
            group["lr"] = _lr(state["step"], cfg)
        if on_device:  # draws seeded by the step: a resumed run augments as an uninterrupted one
            gen = torch.Generator(device=dev).manual_seed(cfg.seed * 1_000_003 + state["step"])
            pattern, probe, target, peaks = augment_batch(batch, cfg.augment, gen, dev)
        else:
            pattern, probe, target, peaks = (batch[k].to(dev) for k in ("pattern", "probe", "target", "peaks"))
        shift = None
        if cfg.field_jitter_px:  # drawn from the step, so a resumed run shifts as an uninterrupted one
            gen_j = torch.Generator().manual_seed(cfg.seed * 1_000_033 + state["step"])
            shift = ((2 * torch.rand(pattern.shape[0], 2, generator=gen_j) - 1) * cfg.field_jitter_px).to(dev)
        pred = model(pattern, probe, field_shift_px=shift)
        loss = _loss(pred, target, cfg.spot_weight)
        if cfg.position_weight:
            loss = loss + cfg.position_weight * position_loss(pred, target, peaks)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the training loss became {float(loss)} at step {state['step']}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running.append(float(loss.detach()))
        state["step"] += 1
        state["seconds"] = seconds0 + time.perf_counter() - t_start
        if state["step"] % 50 == 0:
            with open(log_path, "a") as fh:
                fh.write(json.dumps({"kind": "train", "step": state["step"], "loss": float(np.mean(running)),
                                     "lr": _lr(state["step"], cfg), "seconds": round(state["seconds"], 1)}) + "\n")
            say(f"step {state['step']}/{cfg.max_steps}: loss {np.mean(running):.3g} ({state['seconds'] / 60:.1f} min)")
            running = []
        if state["step"] % cfg.val_every_steps == 0 and state["step"] < cfg.max_steps:
            validate()
        now = time.perf_counter()
        if rule.steps_done(state["step"]) or rule.out_of_time():
            break
        if now - last_ckpt > 60 * cfg.checkpoint_minutes:
            checkpoint()
            last_ckpt = now
    del loader  # stops its worker processes
    if rule.reason == "max_minutes":
        checkpoint()
        say(f"stopped after {cfg.max_minutes} min at step {state['step']}; run the same command to go on")
        return {"complete": False, "step": state["step"]}
    validate()
    best = state["best_state"]
    model.load_state_dict(best)
    detection = tune_detection(model, val_ds, device=dev, batch_size=cfg.batch_size)
    detection["chosen_on"] = "the validation split (every 20th simulation of the training library)"
    say(f"detection threshold {detection['min_intensity']} (validation accuracy {detection['accuracy']})")
    plain_val = LibraryDataset(lib, indices=val_sel[::2], augment=None)
    stretch = stretch_response(model, plain_val, device=dev, batch_size=cfg.batch_size)
    stretch["entries"] = len(plain_val)
    say(f"stretch response on validation: qx {stretch['qx']['slope']}, qy {stretch['qy']['slope']} (slopes; 1: full)")
    card = {
        "model": "fcunet",
        "format": "distill4d-weights-1",
        "architecture": cfg.model.to_dict(),
        "input": {
            "size_px": n,
            "q_pixel_inv_A": float(lib.config.q_pixel_inv_A),
            "origin_px": [n // 2, n // 2],
            "scaling": "pattern and probe divided by the probe maximum",
            "output": "structure-factor image, (000) = 1",
        },
        "training": {
            "config": cfg.to_dict(),
            "library": str(lib.path),
            "library_config": lib.config.to_dict(),
            "entries_train": int(len(train_idx)),
            "entries_val": int(len(val_ds)),
            "steps": state["step"],
            "epochs_seen": round(state["step"] * cfg.batch_size / len(train_idx), 2),
            "seconds": round(state["seconds"], 1),
            "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "torch": torch.__version__,
            "command": command,
            "init": init_record,
        },
        "validation": {"best": state["best"], "history": state["history"], "stretch_response": stretch},
        "detection": detection,
        "complete": True,
    }
    with atomic_output(out, force=force) as tmp:
        torch.save(best, tmp)
    atomic_write_bytes(card_path, (json.dumps(card, indent=2) + "\n").encode())
    shutil.rmtree(work, ignore_errors=True)
    say(f"wrote {out} and {card_path.name} (best val mse {state['best']['mse']:.3g}, accuracy {state['best']['accuracy']:.3f})")
    return card
