"""Training a CC-ST-AE on prepared patterns (step 3 of :mod:`distill4d.ml.ccstae.strain`).

The bases start as the means of a seeded k-means clustering of the masked patterns; the
choice head is warmed up on those cluster labels, then everything is learned by the CC-ST-AE
loss alone. Every 10th pattern is held out; the stop rule is :class:`~distill4d.ml._common.loop.StopRule`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ...errors import Distill4dError
from ..._validate import nonnegative_float
from .._common.loop import StopRule, check_training_options

__all__ = ["CCSTAETrainConfig", "train_ccstae"]

@dataclasses.dataclass(frozen=True)
class CCSTAETrainConfig:
    """Training settings.

    max_steps : at most this many Adam steps (mini-batches).
    eval_every : steps between evaluations of the held-out loss (every 10th pattern).
    patience : stop after this many evaluations without a 0.1 % lower held-out loss.
    batch_size, lr : Adam mini-batches and learning rate.
    l1_coef, l1_start_step : L1 penalty on the bases (inside the mask), switched on at that step.
    hinge_coef : weight of the penalty keeping scale and shear pre-activations off tanh saturation.
    warmup_steps : steps during which the base choice is also fitted to the k-means labels.
    max_minutes : wall-clock budget (None: none); the best evaluation so far is kept.
    seed : the initial weights, k-means and batch order.
    """

    max_steps: int = 3000
    eval_every: int = 50
    patience: int = 10
    batch_size: int = 32
    lr: float = 3e-3
    l1_coef: float = 0.0
    l1_start_step: int = 0
    hinge_coef: float = 1.0
    warmup_steps: int = 100
    max_minutes: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_training_options(self, nonnegative_ints=("l1_start_step", "warmup_steps"))
        nonnegative_float("l1_coef", self.l1_coef)
        nonnegative_float("hinge_coef", self.hinge_coef)


def _kmeans(features: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Labels (int64) of a seeded k-means (scikit-learn, k-means++ start) of ``features`` (n, d);
    one cluster, or no more patterns than clusters, needs no clustering."""
    n = features.shape[0]
    if k == 1 or n <= k:
        return np.zeros(n, dtype=np.int64) if k == 1 else np.arange(n) % k
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, n_init=1, random_state=seed).fit_predict(features).astype(np.int64)


# ============================================================================ training
def _huber_delta(x: np.ndarray, mask: np.ndarray) -> float:
    """3 x the median (over the mask's pixels) of the per-pixel standard deviation over patterns."""
    sd = x[:, mask > 0].std(axis=0)
    return float(max(3.0 * np.median(sd), 1e-3))


def train_ccstae(
    patterns: np.ndarray,
    mask: np.ndarray,
    config: Any = None,
    train: CCSTAETrainConfig = CCSTAETrainConfig(),
    *,
    device: Any = "auto",
    callback: Callable[[dict[str, Any]], None] | None = None,
    reference_index: np.ndarray | None = None,
) -> tuple[Any, list[dict[str, Any]], dict[str, Any]]:
    """Train a CC-ST-AE on ``patterns`` (N, S, S) (prepared and scaled) with the loss ``mask`` (S, S).

    reference_index : indices of the patterns of the reference region: the base of their
        (majority) cluster starts as their mean, so that the base frame is the reference's.

    Returns ``(model, history, info)``: the model at its best held-out evaluation (eval mode,
    on the CPU), one dict per evaluation (``step``, ``train``, ``held_out`` losses,
    ``seconds``), and ``{"delta", "stopped", "best_step", "steps", "seconds"}``.
    ``callback(dict)`` is called after each evaluation.
    """
    import torch

    from .._common.device import torch_device
    from .model import CCSTAE, CCSTAEConfig, ccstae_loss

    cfg = config if config is not None else CCSTAEConfig(size=patterns.shape[-1])
    if not isinstance(cfg, CCSTAEConfig):
        raise TypeError(f"config must be a CCSTAEConfig, got {type(cfg).__name__}")
    if not isinstance(train, CCSTAETrainConfig):
        raise TypeError(f"train must be a CCSTAETrainConfig, got {type(train).__name__}")
    x = np.asarray(patterns, dtype=np.float32)
    if x.ndim != 3 or x.shape[1:] != (cfg.size, cfg.size):
        raise Distill4dError(f"patterns must have shape (N, {cfg.size}, {cfg.size}), got {x.shape}")
    if x.shape[0] < 2 * cfg.num_base:
        raise Distill4dError(f"at least {2 * cfg.num_base} patterns are needed to learn {cfg.num_base} bases, got {x.shape[0]}")
    dev = torch_device(device)
    t0 = time.perf_counter()
    rule = StopRule(train.max_steps, patience=train.patience, min_rel_improvement=1e-3, max_minutes=train.max_minutes,
                    start_after_step=train.warmup_steps)
    rule.start(t0)
    labels = _kmeans((x * mask).reshape(len(x), -1).astype(np.float64), cfg.num_base, train.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(train.seed)
        model = CCSTAE(cfg)
    with torch.no_grad():
        model.spot_mask.copy_(torch.from_numpy(np.asarray(mask, dtype=np.float32)))
        model.input_mean.copy_(torch.from_numpy(x.mean(0)))
        ref_label = -1
        if reference_index is not None and len(reference_index):
            ref_label = int(np.bincount(labels[reference_index], minlength=cfg.num_base).argmax())
        for j in range(cfg.num_base):
            if j == ref_label:
                sel = x[reference_index][labels[reference_index] == j]
            else:
                sel = x[labels == j] if (labels == j).any() else x
            model.bases[j].copy_(torch.from_numpy(sel.mean(0)))
    model.to(dev)
    delta = _huber_delta(x, mask)
    held = np.arange(len(x)) % 10 == 0 if len(x) >= 20 else np.zeros(len(x), bool)
    tr_idx, ho_idx = np.flatnonzero(~held), np.flatnonzero(held)
    X = torch.from_numpy(x).to(dev)
    L = torch.from_numpy(labels).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=train.lr)
    gen = torch.Generator().manual_seed(train.seed)
    history: list[dict[str, Any]] = []
    best_state = None

    def batch_loss(idx: torch.Tensor, step: int) -> torch.Tensor:
        out = model(X[idx])
        l1 = train.l1_coef if step >= train.l1_start_step else 0.0
        loss = ccstae_loss(model, X[idx], out, delta=delta, l1_coef=l1, hinge_coef=train.hinge_coef)["total"]
        if step < train.warmup_steps and cfg.num_base > 1:
            loss = loss + torch.nn.functional.cross_entropy(out["logits"], L[idx])
        return loss

    def held_out_loss() -> float:
        model.eval()
        idx = torch.from_numpy(ho_idx if len(ho_idx) else tr_idx).to(dev)
        with torch.no_grad():
            total = sum(float(batch_loss(idx[i : i + 256], train.max_steps)) * len(idx[i : i + 256])
                        for i in range(0, len(idx), 256))
        model.train()
        return total / len(idx)

    step, running, n_run = 0, 0.0, 0
    perm = torch.empty(0, dtype=torch.long)
    model.train()
    while not rule.steps_done(step):
        if len(perm) < train.batch_size:
            perm = torch.from_numpy(tr_idx)[torch.randperm(len(tr_idx), generator=gen)]
        idx, perm = perm[: train.batch_size].to(dev), perm[train.batch_size :]
        loss = batch_loss(idx, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running += float(loss.detach())
        n_run += 1
        step += 1
        if step % train.eval_every and step != train.max_steps:
            continue
        ho = held_out_loss()
        rec = {"step": step, "train": running / n_run, "held_out": ho, "seconds": time.perf_counter() - t0}
        running, n_run = 0.0, 0
        history.append(rec)
        if callback is not None:
            callback(rec)
        if rule.record(step, ho):
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if rule.stopped or rule.out_of_time():
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.to("cpu").eval()
    info = {"delta": delta, "stopped": rule.reason, "best_step": rule.best_step, "steps": step, "seconds": time.perf_counter() - t0,
            "held_out_fraction": float(held.mean())}
    return model, history, info
