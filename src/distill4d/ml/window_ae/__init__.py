"""The windowing autoencoder (O'Reilly, Zhang, Agar et al., Adv. Sci. 2023) for domain segmentation,
trained without labels on the user's own images. ``model`` (:class:`WindowAE`: encoder, affine
branch, template decoder, loss), ``train`` (:func:`train_window_ae`) and ``segment``
(:func:`run_window_ae`: training or a saved model applied to windows in batches; model files).
Torch-free: the public names are imported from their modules on first use."""

from __future__ import annotations

from .._common import lazy_names

#: The card format of a saved windowing autoencoder.
CARD_FORMAT = "distill4d-window-ae-1"

_HOMES = {
    **dict.fromkeys(("WindowAE", "WindowAEConfig", "window_ae_loss"), "model"),
    **dict.fromkeys(("WindowAETrainConfig", "train_window_ae"), "train"),
    **dict.fromkeys(("channel_descriptors", "encode_windows", "load_window_ae", "run_window_ae", "save_window_ae",
                     "window_ae_geometry"), "segment"),
}
__all__ = ["CARD_FORMAT", *_HOMES]
__getattr__, __dir__ = lazy_names(__name__, _HOMES)
