"""A trained model on disk: a plain PyTorch state_dict (``M.pt``) and its JSON model card (``M.json``)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._atomic import atomic_output

__all__ = ["load_state_and_card", "save_state_and_card"]


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


def load_state_and_card(path: str | os.PathLike, fmt: str, what: str,
                        build: Callable[[dict[str, Any]], Any]) -> tuple[Any, dict[str, Any]]:
    """``(model, card)``: the card (``path`` with ``.json``) must have ``format == fmt``; ``build(card)``
    makes the module, whose weights are loaded from ``path`` with ``weights_only=True``. Errors name
    the file and ``what`` (e.g. "CC-ST-AE model")."""
    import torch

    path = Path(path)
    card_path = path.with_suffix(".json")
    for p in (path, card_path):
        if not p.exists():
            raise FileNotFoundError(f"{what} file {p} does not exist")
    try:
        card = json.loads(card_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{card_path} is not a {what} card (bad JSON: {err})") from None
    if not isinstance(card, dict) or card.get("format") != fmt:
        raise ValueError(f"{card_path} is not a {what} card (format {fmt!r} expected)")
    model = build(card)
    try:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as err:  # noqa: BLE001 - any unreadable or mismatched file
        raise ValueError(f"{path} does not hold the weights its card describes ({what}): {err}") from None
    return model.eval(), card
