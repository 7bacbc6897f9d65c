"""Pieces shared by the models: ``layers`` (complex layers), ``model_files`` (weights + model
card, the one card loader), ``device``, ``resample`` (patterns onto a model's grid) and ``loop``
(the training stop rule). Torch-free to import."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_names(package: str, homes: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for a package whose public names live in its submodules:
    ``homes`` maps each name to its module (relative to ``package``), imported on first use."""

    def __getattr__(name: str) -> Any:
        module = homes.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    def __dir__() -> list[str]:
        return sorted(set(homes) | set(importlib.import_module(package).__dict__))

    return __getattr__, __dir__
