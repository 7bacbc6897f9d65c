"""Training a windowing autoencoder on the windows of the user's own image or series.

The templates start as the mean spectra of the windows' starting clusters (one per channel: by
default each window's strongest component of the ``peaks`` unmixing, or a seeded k-means), so
that every channel starts on something the data hold. With the ``peaks`` start, each window's
shares (its channels normalised to sum 1) are pulled through the whole training towards its
mixture in the unmixing (``anchor_coef``): the channels stay on the variants the unmixing found,
and a window cut by a wall keeps its mixture, while encoder, affine head and templates are learned
by the reconstruction. Otherwise, for the first ``warmup_steps`` the channels (the softmax latent:
their shares) are pulled towards the one-hot starting clusters, then the reconstruction loss
alone trains, with the softmax temperature annealed (the softmax latent) or the L1 sparsity penalty
on the ReLU channels ramped in from ``l1_start_step``. Every 10th window is held out; the stop
rule is :class:`~distill4d.ml._common.loop.StopRule` (max steps, patience, wall-time budget) and
the weights of the best held-out evaluation are kept.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ...errors import Distill4dError
from ..._validate import nonnegative_float, positive_float
from .._common.loop import StopRule, check_training_options

__all__ = ["WindowAETrainConfig", "channel_usage", "train_window_ae"]


@dataclasses.dataclass(frozen=True)
class WindowAETrainConfig:
    """Training settings.

    max_steps : at most this many Adam steps (mini-batches).
    eval_every : steps between evaluations of the held-out loss (every 10th window).
    patience : stop after this many evaluations without a 0.5 % lower held-out loss.
    batch_size, lr : Adam mini-batches and learning rate.
    l1_coef : weight of the L1 penalty on the ReLU channels, reached at ``l1_start_step + l1_ramp_steps``
        (not applied to the softmax latent, whose sparsity is the channels' competition).
    l1_start_step, l1_ramp_steps : the penalty's schedule (off, then linear ramp).
    warmup_steps, warmup_coef : steps during which the channels are also pulled (mean squared error,
        this weight) towards the one-hot k-means labels the templates started from, so that channel c
        starts on cluster c.
    tau_start, tau_end, tau_steps : the softmax temperature of a ``latent="softmax"`` model, annealed
        geometrically from ``tau_start`` to ``tau_end`` over the first ``tau_steps`` steps (ignored
        for ReLU channels); its warm-up pulls the channels' shares (the softmax weights) towards the
        one-hot labels.
    anchor_coef : weight of a term, through the whole training, that pulls each window's shares
        towards its mixture in the ``peaks`` unmixing (its activations normalised to sum 1; a window
        cut by a wall towards its mixture, not its majority), so that the channels stay on the
        variants the unmixing found while the reconstruction learns the templates and the affine
        head. It replaces the warm-up; used with ``init="peaks"`` (0: off, the warm-up instead).
    init : where the templates and the warm-up's labels start: "kmeans" (a k-means of the windows'
        log spectra) or "peaks" (each window's strongest component of the ``peaks`` method's
        unmixing, :func:`distill4d.segment.peaks.peak_unmixing`, with one component per channel;
        :func:`~distill4d.ml.window_ae.segment.run_window_ae` computes them).
    max_minutes : wall-clock budget (None: none).
    seed : the initial weights, the k-means start, the held-out split and the batch order.
    """

    max_steps: int = 1000
    eval_every: int = 100
    patience: int = 5
    batch_size: int = 64
    lr: float = 3e-3
    l1_coef: float = 1e-3
    l1_start_step: int = 100
    l1_ramp_steps: int = 200
    warmup_steps: int = 200
    warmup_coef: float = 0.01
    tau_start: float = 1.0
    tau_end: float = 0.1
    tau_steps: int = 600
    init: str = "peaks"
    anchor_coef: float = 0.01
    max_minutes: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_training_options(self, nonnegative_ints=("l1_start_step", "l1_ramp_steps", "warmup_steps", "tau_steps"))
        for name in ("l1_coef", "warmup_coef", "anchor_coef"):
            nonnegative_float(name, getattr(self, name))
        for name in ("tau_start", "tau_end"):
            positive_float(name, getattr(self, name))
        if self.init not in ("kmeans", "peaks"):
            raise Distill4dError(f"init must be 'kmeans' or 'peaks', got {self.init!r}")

    def tau_at(self, step: int) -> float:
        """The softmax temperature at ``step``."""
        if self.tau_steps == 0 or step >= self.tau_steps:
            return self.tau_end
        return self.tau_start * (self.tau_end / self.tau_start) ** (step / self.tau_steps)

    def l1_at(self, step: int) -> float:
        """The L1 weight at ``step``."""
        if step < self.l1_start_step:
            return 0.0
        if self.l1_ramp_steps == 0:
            return self.l1_coef
        return self.l1_coef * min(1.0, (step - self.l1_start_step) / self.l1_ramp_steps)


def _kmeans_means(x: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean spectra (k, F, F) and labels (n,) of a seeded k-means of ``x`` (n, F, F) on its first 16
    principal components."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    flat = x.reshape(len(x), -1)
    z = PCA(n_components=min(16, len(x) - 1, flat.shape[1]), random_state=seed).fit_transform(flat)
    lab = KMeans(n_clusters=k, n_init=2, random_state=seed).fit_predict(z).astype(np.int64)
    return _label_means(x, lab, k), lab


def _label_means(x: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Mean spectrum (k, F, F) of the windows of each label 0 .. k-1 (an empty label: the mean of all)."""
    return np.stack([x[labels == j].mean(0) if (labels == j).any() else x.mean(0) for j in range(k)])


def channel_usage(channels: np.ndarray) -> dict[str, Any]:
    """Diagnostics of channels (n, C): ``alive`` (channels non-zero on any window), ``wins`` (the
    fraction of windows where each channel is the strongest, 0 where all are 0), ``mean`` and
    ``active`` (fraction of windows where it is > 0) per channel."""
    ch = np.asarray(channels)
    win = np.where(ch.max(axis=1) > 0, ch.argmax(axis=1), -1)
    return {"alive": int((ch.max(axis=0) > 0).sum()),
            "wins": [float(np.mean(win == j)) for j in range(ch.shape[1])],
            "mean": [float(v) for v in ch.mean(axis=0)], "active": [float(v) for v in (ch > 0).mean(axis=0)]}


def train_window_ae(
    features: np.ndarray,
    config: Any = None,
    train: WindowAETrainConfig = WindowAETrainConfig(),
    *,
    device: Any = "cpu",
    callback: Callable[[dict[str, Any]], None] | None = None,
    init_labels: np.ndarray | None = None,
    init_shares: np.ndarray | None = None,
) -> tuple[Any, list[dict[str, Any]], dict[str, Any]]:
    """Train a :class:`~distill4d.ml.window_ae.model.WindowAE` on window spectra ``features`` (n, F, F)
    in [0, 1] (:func:`distill4d.segment.window_features`).

    Returns ``(model, history, info)``: the model at its best held-out evaluation (eval mode, on the
    CPU), one dict per evaluation (``step``, ``train``, ``held_out`` losses, ``l1_coef``,
    ``seconds``), and ``{"stopped", "best_step", "steps", "seconds", "n_windows"}``.
    ``callback(dict)`` is called after each evaluation. ``init_labels`` (n,) in 0 .. channels - 1:
    the windows' starting clusters instead of the k-means (the templates start as their mean spectra);
    ``init_shares`` (n, channels) >= 0: each window's starting mixture (normalised to sum 1; the
    labels are its argmax), which the anchor term (``train.anchor_coef`` > 0) pulls the shares towards.
    """
    import torch

    from .._common.device import torch_device
    from .model import WindowAE, WindowAEConfig, window_ae_loss

    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 3 or x.shape[1] != x.shape[2]:
        raise Distill4dError(f"features must have shape (n, F, F), got {x.shape}")
    cfg = config if config is not None else WindowAEConfig(size=x.shape[-1])
    if not isinstance(cfg, WindowAEConfig):
        raise TypeError(f"config must be a WindowAEConfig, got {type(cfg).__name__}")
    if not isinstance(train, WindowAETrainConfig):
        raise TypeError(f"train must be a WindowAETrainConfig, got {type(train).__name__}")
    if x.shape[1] != cfg.size:
        raise Distill4dError(f"features are {x.shape[1]} px wide but the model's size is {cfg.size} px")
    if len(x) < 4 * cfg.channels:
        raise Distill4dError(f"at least {4 * cfg.channels} windows are needed to train {cfg.channels} channels, "
                             f"got {len(x)}; use a smaller step_px or fewer channels")
    dev = torch_device(device)
    t0 = time.perf_counter()
    anchored = init_shares is not None and train.anchor_coef > 0
    # no evaluation counts before the pulls, the L1 ramp and (anchored) the temperature's annealing end
    start = max(train.l1_start_step + train.l1_ramp_steps, train.tau_steps if anchored else train.warmup_steps)
    rule = StopRule(train.max_steps, patience=train.patience, min_rel_improvement=5e-3, max_minutes=train.max_minutes,
                    start_after_step=start)
    rule.start(t0)
    rng = np.random.default_rng(train.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(train.seed)
        model = WindowAE(cfg)
    target_shares = None
    if init_shares is not None:
        target_shares = np.asarray(init_shares, dtype=np.float32)
        if target_shares.shape != (len(x), cfg.channels) or not np.isfinite(target_shares).all() or (target_shares < 0).any():
            raise Distill4dError(f"init_shares must be ({len(x)}, {cfg.channels}) finite values >= 0, "
                                 f"got shape {target_shares.shape}")
        target_shares = target_shares / np.clip(target_shares.sum(axis=1, keepdims=True), 1e-12, None)
        init_labels = target_shares.argmax(axis=1)
    if init_labels is None:
        means, km_labels = _kmeans_means(x, cfg.channels, train.seed)
    else:
        km_labels = np.asarray(init_labels, dtype=np.int64)
        if km_labels.shape != (len(x),) or km_labels.min() < 0 or km_labels.max() >= cfg.channels:
            raise Distill4dError(f"init_labels must be ({len(x)},) integers in 0 .. {cfg.channels - 1}, "
                                 f"got shape {km_labels.shape}")
        means = _label_means(x, km_labels, cfg.channels)
    with torch.no_grad():  # softplus^-1 of the cluster means, less a common background
        bg = np.clip(means.min(axis=0), 1e-3, None)
        model.background.copy_(torch.from_numpy(np.log(np.expm1(bg))))
        tmpl = np.clip(means - bg, 1e-3, None)
        model.templates.copy_(torch.from_numpy(np.log(np.expm1(tmpl)).astype(np.float32)))
    model.to(dev)
    held = np.zeros(len(x), bool)
    held[rng.permutation(len(x))[: len(x) // 10]] = True
    tr_idx, ho_idx = np.flatnonzero(~held), np.flatnonzero(held)
    X = torch.from_numpy(x).to(dev)
    L = torch.from_numpy(km_labels).to(dev)
    S = torch.from_numpy(target_shares).to(dev) if anchored else None
    opt = torch.optim.Adam(model.parameters(), lr=train.lr)
    gen = torch.Generator().manual_seed(train.seed)
    history: list[dict[str, Any]] = []
    best_state = None

    softmax = cfg.latent == "softmax"

    def pull(out: dict[str, Any], idx: Any) -> Any:
        """The anchor term (every step) or the warm-up's pull towards the one-hot labels."""
        target = S[idx] if anchored else torch.nn.functional.one_hot(L[idx], cfg.channels).to(out["channels"].dtype)
        pulled = out["channels"]
        if softmax or anchored:  # the shares: the amplitude is the window's contrast, not its variant
            pulled = pulled / pulled.sum(dim=1, keepdim=True).clamp_min(1e-12)
        coef = train.anchor_coef if anchored else train.warmup_coef
        return coef * torch.nn.functional.mse_loss(pulled, target)

    def held_out_loss(l1: float) -> tuple[float, dict[str, Any]]:
        """The held-out windows' loss: the reconstruction (with the L1 term), and the anchor term
        when anchored (the objective the training minimises)."""
        model.eval()
        idx = torch.from_numpy(ho_idx).to(dev)
        total, chans = 0.0, []
        with torch.no_grad():
            for i in range(0, len(idx), 512):
                ib = idx[i : i + 512]
                xb = X[ib]
                out = model(xb)
                loss = window_ae_loss(xb, out, l1_coef=l1)["total"]
                if anchored and cfg.channels > 1:
                    loss = loss + pull(out, ib)
                total += float(loss) * len(xb)
                chans.append(out["channels"].cpu().numpy())
        model.train()
        return total / max(len(idx), 1), channel_usage(np.concatenate(chans))

    step, running, n_run = 0, 0.0, 0
    perm = torch.empty(0, dtype=torch.long)
    model.train()
    while not rule.steps_done(step):
        if softmax:
            model.tau.fill_(train.tau_at(step))
        if len(perm) < train.batch_size:
            perm = torch.from_numpy(tr_idx)[torch.randperm(len(tr_idx), generator=gen)]
        idx, perm = perm[: train.batch_size].to(dev), perm[train.batch_size :]
        xb = X[idx]
        out = model(xb)
        loss = window_ae_loss(xb, out, l1_coef=0.0 if softmax else train.l1_at(step))["total"]
        if cfg.channels > 1 and (anchored or step < train.warmup_steps):
            loss = loss + pull(out, idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running += float(loss.detach())
        n_run += 1
        step += 1
        if step % train.eval_every and step != train.max_steps:
            continue
        l1 = 0.0 if softmax else train.l1_at(step)
        ho, usage = held_out_loss(0.0 if softmax else train.l1_coef)  # the full penalty: evaluations compare alike
        rec = {"step": step, "train": running / n_run, "held_out": ho, "l1_coef": l1,
               "seconds": time.perf_counter() - t0, "alive_channels": usage["alive"], "wins": usage["wins"]}
        running, n_run = 0.0, 0
        history.append(rec)
        if callback is not None:
            callback(rec)
        if rule.record(step, ho):
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if rule.stopped or rule.out_of_time():
            break
    if best_state is not None:  # else no evaluation came after the warm-up and the L1 ramp: the last weights
        model.load_state_dict(best_state)
    model.to("cpu").eval()
    info = {"stopped": rule.reason, "best_step": rule.best_step, "steps": step, "seconds": time.perf_counter() - t0,
            "n_windows": len(x)}
    return model, history, info
