"""Applying the windowing autoencoder: training on (or loading a model for) the windows of
:func:`distill4d.segment.segment`, encoding them in batches, the channels' learned orientation,
and model files (a state_dict ``M.pt`` and its card ``M.json``, read without pickle)."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import Distill4dError
from ...segment.readout import spectrum_orientation
from .._common.model_files import load_model, read_card, save_state_and_card
from . import CARD_FORMAT

__all__ = ["channel_descriptors", "encode_windows", "load_window_ae", "run_window_ae", "save_window_ae",
           "window_ae_geometry"]


def window_ae_geometry(path: str | os.PathLike) -> dict[str, Any]:
    """The window geometry a saved model was trained on, from its card alone (no PyTorch):
    ``{"window_px", "step_px", "feature_px", "taper", "clip"}``."""
    return dict(read_card(path, "window_ae").input)


def encode_windows(model: Any, features: np.ndarray, *, batch_size: int = 4096, device: Any = "cpu") -> dict[str, np.ndarray]:
    """The latent of window spectra (n, F, F): ``{"channels" (n, C), "rotation_deg" (n,), "scale" (n,),
    "shift" (n, 2)}`` (float32), in batches of ``batch_size`` without gradients."""
    import torch

    from .._common.device import torch_device

    dev = torch_device(device)
    model = model.to(dev).eval()
    x = np.asarray(features, dtype=np.float32)
    outs: dict[str, list[np.ndarray]] = {"channels": [], "rotation_deg": [], "scale": [], "shift": []}
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            z = model.encode(torch.from_numpy(x[i : i + batch_size]).to(dev))
            for k in outs:
                outs[k].append(z[k].float().cpu().numpy())
    return {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in outs.items()}


def channel_descriptors(model: Any, latent: dict[str, np.ndarray], zero_frequency_px: float) -> tuple[np.ndarray, np.ndarray]:
    """``(angle_deg, radius_px)`` of each channel: the strongest peak of its template decoded at the
    circular-mean rotation and the mean scale of the windows it dominates (its learned rotation
    and scale; the identity for a channel that dominates none)."""
    import torch

    ch = latent["channels"]
    c = ch.shape[1]
    win = ch.argmax(axis=1)
    angles, radii = np.zeros(c), np.ones(c)
    for j in range(c):
        sel = (win == j) & (ch[:, j] > 0)
        rot = latent["rotation_deg"][sel]
        # the rotation's circular mean (rotations are small: a plain mean of the angle's sine/cosine)
        r = float(np.degrees(np.arctan2(np.sin(np.radians(rot)).mean(), np.cos(np.radians(rot)).mean()))) if sel.any() else 0.0
        s = float(latent["scale"][sel].mean()) if sel.any() else 1.0
        onehot = torch.zeros(1, c)
        onehot[0, j] = 1.0
        with torch.no_grad():
            spec = model.decode(onehot, torch.tensor([s]), torch.tensor([r]), torch.zeros(1, 2))[0]
            spec = spec - model.decode(torch.zeros(1, c), torch.tensor([s]), torch.tensor([r]), torch.zeros(1, 2))[0]
        angles[j], radii[j] = spectrum_orientation(spec.numpy(), zero_frequency_px)
    return angles, radii


#: trainings again with the next seed when a variant of the ``peaks`` start lost its channel
MAX_RESTARTS = 2


def _lost_channels(channels: np.ndarray, shares: np.ndarray) -> list[int]:
    """Channels that are the strongest in >= 5 % of the windows of the ``peaks`` start ``shares``
    (n, C) but in < 0.5 % of the trained model's ``channels`` (n, C): the latent collapsed onto fewer
    variants."""
    c = shares.shape[1]
    start = np.bincount(shares.argmax(axis=1), minlength=c) / len(shares)
    now = np.bincount(channels.argmax(axis=1), minlength=c) / max(len(channels), 1)
    return [int(j) for j in np.flatnonzero((start >= 0.05) & (now < 0.005))]


def _peaks_start(features: Any, channels: int | None, seed: int) -> np.ndarray | None:
    """Each window's activations (n, K) of the ``peaks`` unmixing into ``channels`` components
    (None: the number it picks itself, 2-6), on the linear spectra recovered from the log features
    (``expm1(feature x clip)``; the 0.1 % of bins clipped stay at the clip level); None (the k-means
    start) where the windows show no peak."""
    from ...segment.peaks import peak_unmixing
    from ...segment.windows import WindowFeatures

    lin = np.expm1(features.features * np.float32(features.clip)).astype(np.float32)
    wf = WindowFeatures(lin, features.window_px, features.step_px, features.image_shape, 1.0, features.taper, "linear")
    try:
        act = peak_unmixing(wf, channels, max_variants=6, seed=seed)["activations"]
    except Distill4dError:  # no periodic contrast
        return None
    return act.reshape(-1, act.shape[-1]).astype(np.float32)


def save_window_ae(path: str | os.PathLike, model: Any, features: Any, info: dict[str, Any] | None = None, *,
                   command: str = "", force: bool = False) -> Path:
    """Save ``model`` (its state_dict to ``path``, the card to ``path`` with ``.json``): the
    architecture, the window geometry and clip level of the training ``features``
    (:class:`~distill4d.segment.windows.WindowFeatures`) and the training summary ``info``."""
    card = {"format": CARD_FORMAT, "model": "window_ae", "config": dataclasses.asdict(model.config),
            "features": {"window_px": features.window_px, "step_px": features.step_px,
                         "feature_px": features.feature_px, "taper": features.taper, "clip": features.clip},
            "info": dict(info or {}), "command": command}
    return save_state_and_card(path, model, card, force=force)


def load_window_ae(path: str | os.PathLike, *, device: Any = "cpu") -> tuple[Any, Any]:
    """``(model, card)`` of a saved windowing autoencoder (:func:`save_window_ae`); the model's
    ``feature_clip`` is the training features' clip level."""
    from .model import WindowAE, WindowAEConfig

    # a card without "latent" is of a model saved before the softmax latent: ReLU channels
    model, card = load_model(path, "window_ae", lambda c: WindowAE(WindowAEConfig(**{"latent": "relu", **c.config})),
                             device=device)
    model.feature_clip = card.input.get("clip")
    return model, card


def run_window_ae(
    features: Any,
    *,
    channels: int | None = 8,
    model: Any = None,
    train: Any = None,
    save_model: str | os.PathLike | None = None,
    force: bool = False,
    seed: int = 0,
    device: Any = "cpu",
    callback: Callable[[dict[str, Any]], None] | None = None,
    command: str = "",
) -> dict[str, Any]:
    """The autoencoder's latent of ``features`` (:class:`~distill4d.segment.windows.WindowFeatures`):
    a saved model (path) or a module ``model`` is applied as it is; otherwise one is trained on
    these windows (``train``: a :class:`WindowAETrainConfig`, default with ``seed``) and saved to
    ``save_model`` if given (the training's ``init="peaks"`` start is computed here; ``channels``
    None: as many channels as the ``peaks`` unmixing finds variants, else 8). Returns ``{"channels"
    (n, C), "rotation_deg" (n,), "scale" (n,), "descriptors" (angle_deg, radius) per channel,
    "n_variants" (the number the unmixing found, or None), "model", "model_path", "history", "info",
    "timings_s"}``."""
    from .model import WindowAE, WindowAEConfig
    from .train import WindowAETrainConfig, train_window_ae

    flat = features.flat()
    timings: dict[str, float] = {}
    history: list[dict[str, Any]] = []
    info: dict[str, Any] = {}
    model_path = None
    n_variants = None
    latent: dict[str, np.ndarray] | None = None
    if save_model is not None and model is not None:
        raise Distill4dError("save_model saves a trained model; a given model is not trained again")
    if save_model is not None and not force:
        for p in (Path(save_model), Path(save_model).with_suffix(".json")):
            if p.exists():
                raise Distill4dError(f"{p} exists; pass force=True (--force) to overwrite it")
    if isinstance(model, (str, os.PathLike)):
        model_path = os.fspath(model)
        module, card = load_window_ae(model)
        geo = card.input
        if int(geo.get("feature_px", -1)) != features.feature_px or int(geo.get("window_px", -1)) != features.window_px:
            raise Distill4dError(f"the model {model_path} was trained on windows of {geo.get('window_px')} px binned to "
                                 f"{geo.get('feature_px')} px; got windows of {features.window_px} px binned to "
                                 f"{features.feature_px} px (pass window_px={geo.get('window_px')})")
        info = dict(card.get("info", {}))
    elif model is not None:
        if not isinstance(model, WindowAE):
            raise Distill4dError(f"model must be a path to a saved model or a WindowAE, got {type(model).__name__}")
        module = model
        if module.config.size != features.feature_px:
            raise Distill4dError(f"the model takes spectra of {module.config.size} px, got {features.feature_px} px")
    else:
        tcfg = train if train is not None else WindowAETrainConfig(seed=seed)
        t0 = time.perf_counter()
        labels = shares = None
        if tcfg.init == "peaks" and len(flat) >= 4 * (channels or 2):
            act = _peaks_start(features, channels, tcfg.seed)
            if act is not None:
                labels = act.argmax(axis=1).astype(np.int64)
                if channels is None:  # the number of variants the unmixing found
                    channels = n_variants = act.shape[1]
                if tcfg.anchor_coef > 0 and act.shape[1] == (channels or 8):
                    shares = act + 1e-6  # a window without any activation: an even mixture
        cfg = WindowAEConfig(size=features.feature_px, channels=channels or 8)
        restarts: list[dict[str, Any]] = []
        for attempt in range(MAX_RESTARTS + 1):
            run_cfg = dataclasses.replace(tcfg, seed=tcfg.seed + attempt)
            module, history, info = train_window_ae(flat, cfg, run_cfg, device=device, callback=callback,
                                                   init_labels=None if shares is not None else labels,
                                                   init_shares=shares)
            if shares is None:
                break
            t1 = time.perf_counter()
            latent = encode_windows(module, flat, device=device)  # the kept model's latent, if kept
            timings["inference"] = time.perf_counter() - t1
            lost = _lost_channels(latent["channels"], shares)
            if not lost or attempt == MAX_RESTARTS:
                break
            restarts.append({"seed": run_cfg.seed, "lost_channels": lost})
        info = {**info, "seed": run_cfg.seed, "restarts": restarts}
        timings["train"] = time.perf_counter() - t0 - timings.get("inference", 0.0)
        module.feature_clip = features.clip
        if save_model is not None:
            model_path = os.fspath(save_window_ae(save_model, module, features, info, command=command, force=force))
    if latent is None:
        t1 = time.perf_counter()
        latent = encode_windows(module, flat, device=device)
        timings["inference"] = time.perf_counter() - t1
    timings.setdefault("train", 0.0)
    descriptors = channel_descriptors(module.to("cpu"), latent, features.zero_frequency_px)
    return {"channels": latent["channels"], "rotation_deg": latent["rotation_deg"], "scale": latent["scale"],
            "descriptors": descriptors, "n_variants": n_variants, "model": module, "model_path": model_path, "history": history, "info": info,
            "timings_s": timings}
