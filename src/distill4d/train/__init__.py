"""Training entry points and datasets (PyTorch; the ``distill4d[ml]`` extra).

Modules import torch themselves; ``import distill4d.train`` alone does not.
"""
