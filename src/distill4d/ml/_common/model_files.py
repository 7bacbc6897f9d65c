"""A trained model on disk: a plain PyTorch state_dict (``M.pt``) and its JSON model card
(``M.json``), written by :func:`save_state_and_card` and read back by the one loader
:func:`load_model` (the card alone: :func:`read_card`). No pickle code runs: the weights are
read with ``torch.load(weights_only=True)``.

Every card is read into a :class:`ModelCard`: the JSON as written (a dict) plus the fields all
models share (``model``, ``format``, ``config``, ``input``, ``command``, ``metrics``), taken
from each model's card format by a compatibility reader, so that the shipped cards are read as
they are (their files stay byte for byte what was shipped):

- ``distill4d-weights-1`` (FCU-Net, ``weights/fcunet.json``): ``architecture``, ``input``,
  ``training.command``, ``validation.best``;
- ``distill4d-phase-1`` (phase retrieval, ``weights/phase_*.json``): ``config``,
  ``geometry_trained`` / ``pad``, ``command``, ``metrics``;
- ``distill4d-ccstae-1`` (CC-ST-AE, written by :func:`distill4d.ml.ccstae.save_ccstae`):
  ``config``, ``geometry``, ``info``;
- ``distill4d-window-ae-1`` (windowing autoencoder, written by
  :func:`distill4d.ml.window_ae.save_window_ae`): ``config``, ``features`` (window geometry and
  clip level, the card's ``input``), ``info``;
- ``distill4d-identify-1`` (crystal identifier, ``weights/identify_forest.json``, written by
  ``distill4d train identify``; the weights are an ``.npz`` of forests, read by
  :meth:`distill4d.identify.CrystalIdentifier.load`): ``config``, ``input``, ``command``,
  ``metrics.held_out``.

Moved paths: the training recipes moved from ``src/distill4d/train/configs/`` to
``src/distill4d/ml/configs/`` (:data:`MOVED_PATHS`); the shipped FCU-Net card's commands name
the old folder. :attr:`ModelCard.command` gives the command with today's paths; the card's own
text (``card["training"]["command"]``) is left as recorded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...errors import Distill4dError
from ..._atomic import atomic_output

__all__ = ["CARD_FORMATS", "MOVED_PATHS", "ModelCard", "load_model", "read_card", "save_state_and_card"]

#: The card format each model writes.
CARD_FORMATS = {"fcunet": "distill4d-weights-1", "ccstae": "distill4d-ccstae-1", "phase": "distill4d-phase-1",
                "window_ae": "distill4d-window-ae-1", "identify": "distill4d-identify-1"}
#: How each model is named in error messages.
_WHAT = {"fcunet": "FCU-Net", "ccstae": "CC-ST-AE model", "phase": "phase model",
         "window_ae": "windowing autoencoder", "identify": "crystal identifier"}


def _a(what: str) -> str:
    return ("an " if what[:1] in "AEFHILMNORSX" else "a ") + what


#: Paths that training commands recorded in cards name, and where those files are now.
MOVED_PATHS = {"src/distill4d/train/configs/": "src/distill4d/ml/configs/"}


def _fcunet_fields(card: dict[str, Any]) -> dict[str, Any]:
    q_pixel = float(card["input"]["q_pixel_inv_A"])
    if not q_pixel > 0:
        raise Distill4dError(f"input.q_pixel_inv_A must be > 0, got {q_pixel}")
    return {"config": dict(card["architecture"]), "input": card["input"],
            "command": card.get("training", {}).get("command"),
            "metrics": card.get("validation", {}).get("best") or {}}


def _phase_fields(card: dict[str, Any]) -> dict[str, Any]:
    config = dict(card["config"])
    return {"config": config,
            "input": {"size_px": config.get("size"), "extent_semiangles": config.get("extent"),
                      "pad": card.get("pad", "edge"), "geometry_trained": card.get("geometry_trained")},
            "command": card.get("command"), "metrics": card.get("metrics", {})}


def _ccstae_fields(card: dict[str, Any]) -> dict[str, Any]:
    info = card.get("info", {})
    return {"config": dict(card["config"]), "input": card["geometry"], "command": card.get("command"),
            "metrics": {k: info[k] for k in ("best_step", "steps", "stopped") if k in info}}


def _window_ae_fields(card: dict[str, Any]) -> dict[str, Any]:
    info = card.get("info", {})
    return {"config": dict(card["config"]), "input": dict(card["features"]), "command": card.get("command") or None,
            "metrics": {k: info[k] for k in ("best_step", "steps", "stopped") if k in info}}


def _identify_fields(card: dict[str, Any]) -> dict[str, Any]:
    return {"config": dict(card["config"]), "input": dict(card["input"]), "command": card.get("command"),
            "metrics": dict(card["metrics"]["held_out"])}


_COMPAT: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "distill4d-weights-1": _fcunet_fields, "distill4d-phase-1": _phase_fields, "distill4d-ccstae-1": _ccstae_fields,
    "distill4d-window-ae-1": _window_ae_fields, "distill4d-identify-1": _identify_fields}


class ModelCard(dict):
    """A model card as written (a dict: ``card["config"]`` and every other key work) with the
    fields all models share as attributes: ``model`` ("fcunet", "ccstae", "phase", "window_ae"), ``format``,
    ``config`` (the architecture), ``input`` (input geometry), ``command`` (the training command,
    moved paths updated; None if not recorded), ``metrics`` and ``path`` (the card's file)."""

    def __init__(self, raw: dict[str, Any], model: str, fmt: str, fields: dict[str, Any],
                 path: Path | None = None) -> None:
        super().__init__(raw)
        self.model, self.format, self.path = model, fmt, path
        self.config: dict[str, Any] = fields["config"]
        self.input: dict[str, Any] = fields["input"]
        self.metrics: dict[str, Any] = fields["metrics"]
        command = fields["command"]
        for old, new in MOVED_PATHS.items():
            command = command.replace(old, new) if isinstance(command, str) else command
        self.command: str | None = command


def read_card(path: str | os.PathLike, model: str | None = None) -> ModelCard:
    """The model card of the weights ``path`` (the ``.json`` beside them; a ``.json`` path is the
    card itself) as a :class:`ModelCard`. ``model`` ("fcunet", "ccstae", "phase"): the card must
    be that model's. FileNotFoundError if the card is missing; ValueError naming the file if it
    is not JSON, not a known format, another model's, or lacks what its format holds."""
    path = Path(os.fspath(path))
    card_path = path.with_suffix(".json")
    what = _WHAT.get(model, "model") if model is not None else "model"
    if model is not None and model not in CARD_FORMATS:
        raise Distill4dError(f"model must be one of {tuple(CARD_FORMATS)}, got {model!r}")
    if not card_path.is_file():
        raise FileNotFoundError(f"the model card {card_path} of the weights {path.name} does not exist")
    try:
        raw = json.loads(card_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise Distill4dError(f"{card_path} is not {_a(what)} card (bad JSON: {err})") from None
    fmt = raw.get("format") if isinstance(raw, dict) else None
    if fmt is None and isinstance(raw, dict) and raw.get("model") == "fcunet":
        fmt = CARD_FORMATS["fcunet"]  # compat: FCU-Net cards were read by their model name alone
    found = next((m for m, f in CARD_FORMATS.items() if f == fmt), None)
    named = raw.get("model", found) if isinstance(raw, dict) else None
    if found is None or named != found or (model is not None and found != model):
        expected = repr(CARD_FORMATS[model]) if model is not None else f"one of {tuple(_COMPAT)}"
        raise Distill4dError(f"{card_path} is not {_a(what)} card (format {fmt!r}, model {named!r}; format {expected} "
                             "expected)")
    try:
        fields = _COMPAT[fmt](raw)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise Distill4dError(f"{card_path} is not {_a(_WHAT[found])} card: {err!r}") from None
    return ModelCard(raw, found, fmt, fields, card_path)


def load_model(path: str | os.PathLike, model: str, build: Callable[[ModelCard], Any], *,
               device: Any = "cpu") -> tuple[Any, ModelCard]:
    """``(module, card)``: the card (:func:`read_card`, must be ``model``'s), ``build(card)`` makes
    the module, whose weights are read from ``path`` with ``torch.load(weights_only=True)``; the
    module is returned on ``device`` in eval mode. Errors name the file and the model."""
    import torch

    path = Path(os.fspath(path))
    what = _WHAT.get(model, "model")
    if not path.is_file():
        raise FileNotFoundError(f"{what} weights file {path} does not exist")
    card = read_card(path, model)
    try:
        module = build(card)
    except (KeyError, TypeError, ValueError) as err:
        raise Distill4dError(f"{card.path} is not {_a(what)} card: {err}") from None
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises several types for corrupt or foreign files
        raise Distill4dError(f"cannot read {what} weights {path}: it does not hold the weights its card describes "
                             f"({err})") from None
    try:
        module.load_state_dict(state)
    except (RuntimeError, TypeError, KeyError) as err:
        raise Distill4dError(f"the weights {path.name} do not fit the architecture of {card.path.name} ({what}): "
                             f"{err}") from None
    return module.to(device).eval(), card


def save_state_and_card(path: str | os.PathLike, model: Any, card: dict[str, Any], *, force: bool = False) -> Path:
    """Write ``model.state_dict()`` to ``path`` and ``card`` to ``path`` with ``.json``, atomically.
    FileExistsError naming the file if either exists and ``force`` is False."""
    import torch

    path = Path(path)
    card_path = path.with_suffix(".json")
    for p in (path, card_path):
        if p.exists() and not force:
            raise FileExistsError(f"{p} exists; pass force=True (--force) to replace it")
    with atomic_output(path, force=force) as tmp:
        torch.save(model.state_dict(), tmp)
    with atomic_output(card_path, force=True) as tmp:
        Path(tmp).write_text(json.dumps(card, indent=1, default=float))
    return path
