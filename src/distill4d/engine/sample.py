"""Read a sample of scattered scan positions through the engine (for methods that learn from a
subset of the scan, such as a template built from a thousand patterns spread over it)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import Distill4dError
from .core import _blocks, _check_map_args, _load_block, run_tasks
from .tiles import Tile

__all__ = ["read_patterns"]

_GAP = 4  # positions: wanted columns closer than this in one row are read as one block


def _spans(positions: np.ndarray) -> list[tuple[Tile, np.ndarray]]:
    """Row blocks ``Tile(x, x + 1, y0, y1)`` covering the ``(x, y)`` positions,
    each with the columns (relative to ``y0``) to keep; columns closer than ``_GAP`` share a block."""
    out: list[tuple[Tile, np.ndarray]] = []
    for x in np.unique(positions[:, 0]):
        ys = np.unique(positions[positions[:, 0] == x, 1])
        breaks = np.flatnonzero(np.diff(ys) > _GAP) + 1
        for run in np.split(ys, breaks):
            out.append((Tile(int(x), int(x) + 1, int(run[0]), int(run[-1]) + 1), run - run[0]))
    return out


def read_patterns(datacube: Any, positions: Any, *, scheduler: str | Any = "threads",
                  n_workers: int | None = None, progress: bool | None = False) -> np.ndarray:
    """The patterns at ``positions`` ((n, 2) integer scan indices ``(rx, ry)``) as an
    ``(n, Qx, Qy)`` array in the stored dtype, in the order given.

    Positions are grouped into row blocks read through the DataCube's reader (or its Dask
    array) on the engine's executors, so that a lazy dataset is read in a few hundred
    requests rather than one per pattern.
    """
    _check_map_args(datacube, len, n_workers)
    pos = np.asarray(positions)
    if pos.ndim != 2 or pos.shape[1] != 2 or not np.issubdtype(pos.dtype, np.integer):
        raise Distill4dError(f"positions must be an (n, 2) integer array of (rx, ry), got shape {pos.shape} "
                             f"of {pos.dtype}")
    rx, ry = datacube.scan_shape
    if pos.size and ((pos.min(axis=0) < 0).any() or (pos.max(axis=0) >= (rx, ry)).any()):
        raise Distill4dError(f"positions must lie in the {rx} x {ry} scan")
    out = np.empty((len(pos),) + tuple(datacube.pattern_shape), dtype=datacube.dtype)
    if len(pos) == 0:
        return out
    block = _blocks(datacube)
    items = [(block(tile), tile, keep) for tile, keep in _spans(pos)]
    got: dict[tuple[int, int], np.ndarray] = {}
    for (_, tile, keep), pats in run_tasks(_read_span, items, scheduler=scheduler, n_workers=n_workers,
                                           progress=progress, desc="reading a sample", unit="block"):
        for y, p in zip(keep + tile.y0, pats):
            got[(tile.x0, int(y))] = p
    for i, (x, y) in enumerate(pos):
        out[i] = got[(int(x), int(y))]
    return out


def _read_span(item: tuple[Any, Tile, np.ndarray]) -> np.ndarray:
    block, _, keep = item
    return _load_block(block)[0, keep]
