"""CC-ST-AE: strain maps from an autoencoder trained without labels on the user's own scan.
``model`` (the network, warp and loss), ``train`` (:func:`train_ccstae`) and ``strain``
(:func:`strain_map_ccstae`: preparation, training, read-out; model files). Torch-free: the
public names are imported from their modules on first use."""

from __future__ import annotations

from .._common import lazy_names

_HOMES = {
    **dict.fromkeys(("CCSTAE", "CCSTAEConfig", "ccstae_loss", "inverse_affine", "warp"), "model"),
    **dict.fromkeys(("CCSTAETrainConfig", "train_ccstae"), "train"),
    **dict.fromkeys(("CCSTAEResult", "encode_patterns", "load_ccstae", "prepare_patterns", "refine_transforms",
                     "save_ccstae", "spot_mask", "strain_map_ccstae"), "strain"),
}
__all__ = list(_HOMES)
__getattr__, __dir__ = lazy_names(__name__, _HOMES)
