"""ML phase retrieval: ``model`` (the linear and 4D-CNN models), ``prepare`` (the detector
grid shared by training and inference), ``train`` (:func:`train_phase`) and ``infer``
(:func:`phase_image`, the shipped weights). Torch-free: the constants below are defined here
and the public names are imported from their modules on first use."""

from __future__ import annotations

from .._common import lazy_names

#: Training sets of the shipped weights (``benchmarks/phase_benchmark.py``): "mos2", one
#: simulated MoS2 monolayer field (label in V·Å); "mixed", that field plus five thick crystals
#: of other structures (MgO, GaAs, CeO2, Cu, Si; 40-200 Å; standardised label).
SHIPPED_TRAINING_SETS = ("mos2", "mixed")
#: Names of the shipped models accepted by :func:`phase_image` and ``distill4d phase --model``.
SHIPPED_MODELS = ("conv4d", "linear", "conv4d-mos2", "linear-mos2", "conv4d-mixed", "linear-mixed")

_HOMES = {
    **dict.fromkeys(("Conv4d", "Conv4dNet", "PhaseConfig", "RadialLinear", "build_phase_model", "radial_index"),
                    "model"),
    **dict.fromkeys(("phase_geometry", "prepare_phase_patterns"), "prepare"),
    **dict.fromkeys(("PhaseTrainConfig", "save_phase_model", "train_phase"), "train"),
    **dict.fromkeys(("PhaseImage", "load_phase_model", "phase_image", "shipped_model_path", "shipped_phase_weights"),
                    "infer"),
}
__all__ = ["SHIPPED_MODELS", "SHIPPED_TRAINING_SETS", *_HOMES]
__getattr__, __dir__ = lazy_names(__name__, _HOMES)
