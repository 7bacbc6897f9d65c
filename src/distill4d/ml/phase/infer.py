"""Running the phase-retrieval models (:mod:`~distill4d.ml.phase.model`) on 4D scans: :func:`phase_image`.

The detector is prepared exactly as in training (:mod:`~distill4d.ml.phase.prepare`);
inference runs through :func:`~distill4d.engine.map_neighbourhoods`, so neighbourhoods
across tile borders are those of the whole scan. The shipped weights live in
``distill4d/weights/phase_*.pt`` with their cards.
"""

from __future__ import annotations

import functools
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import Distill4dError
from ...results import Provenance, Results
from ...datacube import DataCube
from ...engine.neighbourhoods import check_pad
from . import SHIPPED_MODELS, SHIPPED_TRAINING_SETS
from .prepare import _pass_options, _prepared_moments, _scan_norm, phase_geometry, prepare_phase_patterns

__all__ = [
    "PhaseImage",
    "load_phase_model",
    "phase_image",
    "shipped_model_path",
    "shipped_phase_weights",
]

_WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "weights"


@dataclass
class PhaseImage:
    """A phase-retrieval result: ``image`` ``(Rx, Ry)`` in ``units`` (those of the training label)."""

    image: np.ndarray
    units: str
    label_name: str
    model: str
    calibration: Any
    info: dict[str, Any] = field(default_factory=dict)
    provenance: Provenance | None = None

    def to_result(self) -> Results:
        """The common result container: ``<label_name>`` in ``units``, the calibration and provenance."""
        prov = self.provenance or Provenance("phase_image", {"model": self.model, **self.info})
        return Results({self.label_name: self.image}, {self.label_name: self.units},
                       {"model": self.model, "info": json.dumps(self.info, default=str)}, self.calibration, prov)

    def to_hdf5(self, path: str | os.PathLike, force: bool = False) -> Path:
        """Write ``/results/<label_name>`` (with its units), ``/calibration`` and the provenance."""
        return self.to_result().to_h5(path, force=force)

    def plot(self, path: str | os.PathLike, *, force: bool = False, title: str = "") -> Path:
        from ...plot import save_images_png

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
        raise Distill4dError(f"model must be 'linear' or 'conv4d', got {model!r}")
    if trained_on not in SHIPPED_TRAINING_SETS:
        raise Distill4dError(f"trained_on must be one of {SHIPPED_TRAINING_SETS}, got {trained_on!r}")
    return _WEIGHTS_DIR / f"phase_{model}_{trained_on}.pt"


def shipped_model_path(name: str) -> Path:
    """Weights path of a shipped model named as in :data:`SHIPPED_MODELS` ("conv4d" and "linear"
    without a suffix are the MoS2 models)."""
    if name not in SHIPPED_MODELS:
        raise Distill4dError(f"unknown shipped model {name!r}; choose one of {SHIPPED_MODELS}")
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
    from ...engine import map_neighbourhoods
    from .._common.device import torch_device
    from .model import PhaseConfig

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
    check_pad(pad, config.radius, datacube.scan_shape)
    dev = torch_device(device)
    net = net.to(dev).eval()
    t0 = time.perf_counter()
    pass_options = _pass_options(engine)
    geometry = phase_geometry(datacube, origin_px=origin_px, **pass_options)
    _warn_if_grid_leaves_detector(geometry, config, datacube.pattern_shape)
    lab = card["label"]
    norm = None
    if config.input_norm == "scan":
        from ...engine import reduce_patterns

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
                      config.model, datacube.calibration, info,
                      Provenance("phase_image", {"model": config.model, "weights": name, "pad": pad}))


def load_phase_model(path: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
    """``(model, card)`` from :func:`save_phase_model` (weights loaded with ``weights_only=True``)."""
    from .._common.model_files import load_model
    from .model import PhaseConfig, build_phase_model

    return load_model(path, "phase", lambda card: build_phase_model(PhaseConfig.from_dict(card.config)))
