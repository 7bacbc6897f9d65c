"""FCU-Net Bragg disk detection: ``model`` (the complex U-Net), ``train`` (on a simulated
library; ``data``: the library as a PyTorch dataset) and ``detect`` (the engine batch function
and :func:`find_bragg_disks_fcunet`). Torch-free: the constants below are defined here and the
public names are imported from their modules on first use."""

from __future__ import annotations

from pathlib import Path

from .._common import lazy_names

#: FCU-Net test-time views (:class:`distill4d.ml.fcunet.model.FCUNetViews`): none, the pattern and
#: probe mirrored about the model grid's centre pixel ``N//2`` (``flips``) and, for ``dihedral``,
#: also transposed (qx <-> qy). Here, not in the model module, so that the CLI can offer them
#: without importing PyTorch.
FCUNET_VIEWS = ("none", "flips", "dihedral")

#: The shipped weights (a plain state_dict) and their model card (same name, .json).
DEFAULT_WEIGHTS = Path(__file__).resolve().parents[2] / "weights" / "fcunet.pt"

#: Network passes per pattern by default: one, with dropout off. On the shipped model's
#: validation split (116 entries, never trained on) Monte-Carlo dropout averages found no more
#: disks within 0.5 px (1 pass without dropout 0.224; 2, 4, 8, 16 dropout passes 0.218, 0.220,
#: 0.221, 0.221) at n times the cost; ask for n_passes > 1 for the per-peak uncertainty.
DEFAULT_PASSES = 1

#: Prediction maxima below this (relative to the (000) spot = 1) are not peaks, unless the
#: model card gives a threshold tuned on its validation split.
DEFAULT_MIN_INTENSITY = 0.02

_HOMES = {
    **dict.fromkeys(("FCUNet", "FCUNetConfig", "FCUNetViews", "cross_spectrum"), "model"),
    **dict.fromkeys(("FCUNetDetector", "fcunet_detector", "find_bragg_disks_fcunet", "load_fcunet", "peaks_from_prediction",
                     "true_peaks"), "detect"),
    **dict.fromkeys(("FCUNetTrainConfig", "train_fcunet", "evaluate_fcunet", "stretch_response",
                     "validation_entries", "position_loss", "augment_batch"), "train"),
    "LibraryDataset": "data",
}
__all__ = ["FCUNET_VIEWS", "DEFAULT_WEIGHTS", "DEFAULT_PASSES", "DEFAULT_MIN_INTENSITY", *_HOMES]
__getattr__, __dir__ = lazy_names(__name__, _HOMES)
