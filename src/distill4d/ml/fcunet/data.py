"""PyTorch datasets over simulated pattern libraries."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ...errors import Distill4dError
from ..._validate import positive_int
from ...simulate.augment import AugmentConfig, random_augment
from ...simulate.library import Library

__all__ = ["LibraryDataset"]


class LibraryDataset(torch.utils.data.Dataset):
    """Entries of a :class:`~distill4d.simulate.library.Library` as tensors, read lazily.

    Each item is a dict of float32 tensors: ``pattern``, ``probe`` and ``target`` (Nx, Ny),
    the pattern and probe divided by the probe's maximum at the pattern's dose and gain (the
    FCU-Net input scaling);
    ``peaks`` (max_peaks, 3) — qx, qy (px), amplitude — padded with NaN, and ``n_peaks``.

    augment : an :class:`~distill4d.simulate.augment.AugmentConfig` for on-the-fly,
        seeded augmentation (geometry applied to pattern, target and peaks alike), or None.
    seed : item ``i`` of epoch ``e`` (:meth:`set_epoch`, or the key ``(e, i)``) is augmented with
        ``numpy.random.default_rng([seed, e, i])``: reproducible whatever the worker count.
    indices : a subset of library entries (e.g. a train or validation split).
    in_memory : read the subset's patterns, probes, targets and peaks into memory once
        (:meth:`Library.arrays`; 3 x 4 x Nx x Ny bytes an entry) instead of from the files
        item by item (each read opens several HDF5 datasets): for fast training on a GPU.
    """

    def __init__(
        self,
        library: Library | str | os.PathLike,
        *,
        indices: Sequence[int] | None = None,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        max_peaks: int = 512,
        in_memory: bool = False,
    ) -> None:
        self.library = library if isinstance(library, Library) else Library(library)
        n = len(self.library)
        self.indices = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64)
        if self.indices.ndim != 1 or (len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= n)):
            raise Distill4dError(f"indices must be entry numbers in [0, {n}), got {indices!r}")
        if augment is not None and not isinstance(augment, AugmentConfig):
            raise TypeError(f"augment must be an AugmentConfig or None, got {type(augment).__name__}")
        self.augment = augment
        self.seed = int(seed)
        self.max_peaks = positive_int("max_peaks", max_peaks)
        self.epoch = 0
        self._memory = self.library.arrays(self.indices) if in_memory else None

    def set_epoch(self, epoch: int) -> None:
        """Draw new augmentations for a new epoch."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int | tuple[int, int]) -> dict[str, Any]:
        """Item ``i`` of the current epoch, or ``(epoch, i)``: item ``i`` augmented as in that epoch."""
        epoch, i = i if isinstance(i, tuple) else (self.epoch, i)
        index = int(self.indices[i])
        e = self.library[index] if self._memory is None else {k: v[i] for k, v in self._memory.items()}
        pattern, target, peaks, probe = e["pattern"], e["target"], e["peaks"], e["probe"]
        gain = 1.0
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, int(epoch), index])
            pattern, target, peaks, params = random_augment(pattern, target, peaks, probe, rng=rng, config=self.augment)
            # the probe is recorded at the same dose and gain as the pattern
            gain = float(params["count_scale"]) * float(params["intensity_factor"])
        scale = float(np.max(probe))
        if not np.isfinite(scale) or scale <= 0:
            raise Distill4dError(f"library entry {index} has an empty or non-finite probe")
        padded = np.full((self.max_peaks, 3), np.nan, dtype=np.float32)
        n = min(len(peaks), self.max_peaks)
        padded[:n] = np.asarray(peaks, dtype=np.float32)[:n]
        return {
            "pattern": torch.from_numpy(np.asarray(pattern, dtype=np.float32) / np.float32(scale * gain)),
            "probe": torch.from_numpy(np.asarray(probe, dtype=np.float32) / scale),
            "target": torch.from_numpy(np.asarray(target, dtype=np.float32)),
            "peaks": torch.from_numpy(padded),
            "n_peaks": n,
            "index": index,
            "epoch": int(epoch),
        }
