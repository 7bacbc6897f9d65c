"""Virtual images: the sum of each pattern over a detector mask.

Binary masks are summed exactly (integer accumulation for integer data, float64 otherwise)
over the mask's bounding box; when the mask's complement has the smaller bounding box
(e.g. an ADF annulus that runs to the detector edge) the image is the pattern total
minus the complement. Weighted masks use float64 weights.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .._validate import pattern_array
from ..errors import Distill4dError

if TYPE_CHECKING:  # pragma: no cover
    from ..datacube import DataCube

__all__ = ["virtual_image", "virtual_images"]

# Patterns summed together per inner step: small enough to stay in the CPU cache.
_SUB_BATCH = 32


@dataclass(frozen=True)
class _MaskPlan:
    """How to sum one mask: over a box of ``weights``, optionally as total minus that box."""

    box: tuple[slice, slice]
    weights: np.ndarray
    complement: bool


def _bbox(mask: np.ndarray) -> tuple[slice, slice]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return slice(0, 0), slice(0, 0)
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _plan(mask: np.ndarray, integer_data: bool) -> _MaskPlan:
    binary = mask.dtype == bool or bool(np.all((mask == 0) | (mask == 1)))
    if not binary:
        box = _bbox(mask != 0)
        return _MaskPlan(box, mask[box].astype(np.float64), complement=False)
    mask = mask.astype(bool)
    box, cbox = _bbox(mask), _bbox(~mask)
    area = (box[0].stop - box[0].start) * (box[1].stop - box[1].start)
    carea = (cbox[0].stop - cbox[0].start) * (cbox[1].stop - cbox[1].start)
    complement = carea < area
    if complement:
        box, mask = cbox, ~mask
    wtype = np.int64 if integer_data else np.float64
    return _MaskPlan(box, mask[box].astype(wtype), complement)


def _virtual_batch(batch: np.ndarray, plans: tuple[_MaskPlan, ...]) -> np.ndarray:
    """Sum every pattern of ``batch`` (n, Qx, Qy) over each planned mask -> (n, n_masks) float64."""
    n = batch.shape[0]
    out = np.empty((n, len(plans)), dtype=np.float64)
    integer = batch.dtype.kind in "ui"
    acc = np.int64 if integer else np.float64
    need_total = any(p.complement for p in plans)
    for i in range(0, n, _SUB_BATCH):
        sub = batch[i : i + _SUB_BATCH]
        total = sub.sum(axis=(1, 2), dtype=acc) if need_total else None
        for j, p in enumerate(plans):
            if p.weights.size == 0:
                part = np.zeros(sub.shape[0])
            elif p.weights.dtype == np.int64 and integer:
                part = np.einsum("nij,ij->n", sub[:, p.box[0], p.box[1]], p.weights, dtype=np.int64)
            else:
                part = np.einsum("nij,ij->n", sub[:, p.box[0], p.box[1]], p.weights, dtype=np.float64)
            out[i : i + sub.shape[0], j] = total - part if p.complement else part
    return out


def _check_mask(name: str, mask: Any, pattern_shape: tuple[int, int]) -> np.ndarray:
    mask = pattern_array(name, mask)
    if mask.shape != tuple(pattern_shape):
        raise Distill4dError(f"{name} has shape {mask.shape}, but the patterns are {tuple(pattern_shape)}")
    if not np.any(mask):
        raise Distill4dError(f"{name} is all zero: the virtual image would be zero everywhere")
    return mask


def virtual_images(datacube: "DataCube", masks: dict[str, Any], **engine_options: Any) -> dict[str, np.ndarray]:
    """Several virtual images in one pass over the data.

    Parameters
    ----------
    datacube : the dataset.
    masks : ``{name: mask}``, each mask of the pattern shape ``(Qx, Qy)``: boolean, or real
        weights (a weighted detector). Build masks with :func:`detector_mask`.
    **engine_options : passed to :func:`distill4d.engine.map_patterns` (scheduler, memory_budget,
        progress, checkpoint, ...).

    Returns
    -------
    ``{name: image}``, each of shape ``(Rx, Ry)`` in detector counts (float64). A pattern that
    contains NaN or Inf gives NaN or Inf at its position.
    """
    from ..engine import map_patterns

    if not isinstance(masks, dict) or not masks:
        raise Distill4dError("masks must be a non-empty dict {name: mask}")
    checked = {k: _check_mask(f"mask {k!r}", m, datacube.pattern_shape) for k, m in masks.items()}
    integer = datacube.dtype.kind in "ui"
    plans = tuple(_plan(m, integer) for m in checked.values())
    fn = functools.partial(_virtual_batch, plans=plans)
    engine_options.setdefault("desc", "virtual image")
    engine_options.setdefault("job_key", "virtual:" + _mask_key(checked))
    stacked = map_patterns(datacube, fn, **engine_options)
    return {name: stacked[..., j] for j, name in enumerate(checked)}


def virtual_image(datacube: "DataCube", mask: Any, **engine_options: Any) -> np.ndarray:
    """The virtual image of ``datacube`` for one detector ``mask`` (shape ``(Qx, Qy)``).

    Returns an ``(Rx, Ry)`` float64 image in detector counts; see :func:`virtual_images`.

    Examples
    --------
    >>> from distill4d.imaging import detector_mask, virtual_image
    >>> bf = virtual_image(dc, detector_mask(dc, "bf"))  # doctest: +SKIP
    """
    return virtual_images(datacube, {"image": mask}, **engine_options)["image"]


def _mask_key(masks: dict[str, np.ndarray]) -> str:
    import hashlib

    h = hashlib.sha1()
    for name, m in masks.items():
        h.update(name.encode())
        h.update(np.ascontiguousarray(m, dtype=np.float64).tobytes())
    return h.hexdigest()[:16]
