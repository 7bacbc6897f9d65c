"""The PyTorch models (the ``distill4d[ml]`` extra), one package each:

- :mod:`distill4d.ml.fcunet`: FCU-Net Bragg disk detection (``model``, ``train`` on a simulated
  library, ``detect`` through the engine, ``data``: the library as a PyTorch dataset);
- :mod:`distill4d.ml.ccstae`: the CC-ST-AE strain autoencoder trained on the user's scan
  (``model``, ``train``, ``strain``: the whole scan-to-strain-map job);
- :mod:`distill4d.ml.phase`: ML phase retrieval (``model``, ``prepare``, ``train``, ``infer``).

Shared pieces live in :mod:`distill4d.ml._common` (complex layers, model files and the one
model-card loader, device choice, resampling, the training stop rule, Adam without
``torch.optim``); the training recipes of the shipped weights in ``distill4d/ml/configs/``.
Each package's ``__init__`` is torch-free (constants, and its public names imported on first
use), so ``import distill4d.ml.fcunet``
does not import PyTorch.
"""

from ._common import lazy_names
from ._common.device import torch_device  # torch-free until called
from ._common.model_files import ModelCard, read_card  # torch-free

__all__ = ["Adam", "ModelCard", "read_card", "torch_device"]

# Adam (torch.optim's update without importing torch._dynamo) imports PyTorch: on first use
__getattr__, __dir__ = lazy_names(__name__, {"Adam": "_common.adam"})
