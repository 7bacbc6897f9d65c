"""Map a function over tiles of scan positions together with a halo of neighbouring positions.

:func:`map_neighbourhoods` is :func:`~distill4d.engine.map_patterns` for methods that need
the patterns around each scan position (real-space filters, local averages, drift or
strain from neighbours): ``fn`` receives a 4D block ``(nx + 2r, ny + 2r, Qx, Qy)`` holding a
tile of ``nx x ny`` positions plus ``r`` positions on every side. Halo positions inside the
scan are read from the data (also across tile borders); those outside it are filled as
:func:`numpy.pad` would (``"edge"``, ``"reflect"`` or ``"wrap"``). Each tile reads only the
rows and columns its window needs, as at most a few contiguous rectangles (two per axis
for ``"wrap"``), and assembles the block by index.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import Distill4dError
from .core import _as_dict, _check_map_args, _load_block, _map_tiles, _ReaderBlock, plan_tiles
from .executors import BatchFn, Executor
from .tiles import Tile

if TYPE_CHECKING:  # pragma: no cover
    from ..datacube import DataCube

__all__ = ["PAD_MODES", "check_pad", "map_neighbourhoods", "plan_neighbourhood_tiles"]

#: How halo positions outside the scan are filled (the :func:`numpy.pad` mode of that name).
PAD_MODES = ("edge", "reflect", "wrap")


# ---------------------------------------------------------------------- validation
def _check_radius(radius: Any) -> int:
    """``radius`` as an int >= 0 (bools and floats are refused)."""
    if isinstance(radius, (bool, np.bool_)) or not isinstance(radius, (int, np.integer)):
        raise TypeError(
            f"radius must be an integer number of scan positions >= 0, got {radius!r} "
            f"({type(radius).__name__})"
        )
    if radius < 0:
        raise Distill4dError(f"radius must be an integer number of scan positions >= 0, got {radius}")
    return int(radius)


def check_pad(pad: Any, radius: int, scan_shape: tuple[int, int]) -> str:
    """``pad`` checked against :data:`PAD_MODES` and, for reflect and wrap, against the scan size
    (a halo of ``radius`` positions around a scan of ``scan_shape``); Distill4dError if it does not fit."""
    if not isinstance(pad, str) or pad not in PAD_MODES:
        raise Distill4dError(f"pad must be one of {', '.join(map(repr, PAD_MODES))}, got {pad!r}")
    rx, ry = scan_shape
    if pad == "reflect" and radius >= min(rx, ry):
        raise Distill4dError(
            f"pad='reflect' mirrors the scan without repeating its edge, so radius must be smaller "
            f"than both scan dimensions {rx} x {ry}; got radius={radius}. Use pad='edge' or a smaller radius"
        )
    if pad == "wrap" and radius > min(rx, ry):
        raise Distill4dError(
            f"pad='wrap' needs radius <= both scan dimensions {rx} x {ry} (one period); got radius={radius}. "
            "Use pad='edge' or a smaller radius"
        )
    return pad


# ---------------------------------------------------------------------- tiling
def plan_neighbourhood_tiles(
    datacube: DataCube, radius: int, memory_budget: int | None = None, n_parallel: int = 1
) -> list[Tile]:
    """Cut the scan into tiles whose blocks, halo included, fit the memory budget.

    :func:`~distill4d.engine.plan_tiles` with ``halo=radius``: a tile of ``nx x ny`` positions
    holds ``(nx + 2r) * (ny + 2r)`` patterns. With ``radius=0`` this is the tiling of
    :func:`~distill4d.engine.plan_tiles`.

    Parameters
    ----------
    datacube : the dataset.
    radius : the halo width in scan positions (>= 0).
    memory_budget : bytes of working memory (default as in :func:`~distill4d.engine.map_patterns`).
    n_parallel : tiles in flight at once; each gets ``memory_budget / n_parallel``.

    Returns
    -------
    The tiles, in row-major order, covering every scan position once.
    """
    return plan_tiles(datacube, memory_budget, n_parallel, halo=_check_radius(radius))


def _source_index(lo: int, hi: int, n: int, pad: str) -> np.ndarray:
    """The scan index read for padded positions ``lo .. hi - 1`` of an axis of length ``n``."""
    i = np.arange(lo, hi)
    if pad == "edge":
        return np.clip(i, 0, n - 1)
    if pad == "reflect":  # one reflection suffices: radius < n
        i = np.abs(i)
        return np.where(i > n - 1, 2 * (n - 1) - i, i)
    return np.mod(i, n)  # wrap


def _runs(index: np.ndarray) -> tuple[tuple[tuple[int, int], ...], tuple[int, ...] | None]:
    """The contiguous runs ``(start, stop)`` of the distinct indices in ``index``, and where each
    entry of ``index`` lies in their concatenation (None when that is simply ``0, 1, 2, ...``)."""
    unique = np.unique(index)
    breaks = np.flatnonzero(np.diff(unique) != 1) + 1
    runs = tuple((int(g[0]), int(g[-1]) + 1) for g in np.split(unique, breaks))
    pos = np.searchsorted(unique, index)
    if len(unique) == len(index) and np.array_equal(pos, np.arange(len(index))):
        return runs, None
    return runs, tuple(int(p) for p in pos)


@dataclass(frozen=True)
class _HaloBlock:
    """What a task reads for one tile (picklable when the reader is).

    ``pieces[i][j]`` holds the scan rows of the i-th run and the columns of the j-th run
    (a NumPy view, a lazy Dask array or a :class:`~distill4d.engine.core._ReaderBlock`);
    ``index_x`` / ``index_y`` pick the block's rows / columns from their concatenation.
    """

    pieces: tuple[tuple[Any, ...], ...]
    index_x: tuple[int, ...] | None
    index_y: tuple[int, ...] | None
    tile_shape: tuple[int, int]


def _halo_blocks(datacube: DataCube, radius: int, pad: str) -> Callable[[Tile], _HaloBlock]:
    """How to get the halo block of a tile: through the DataCube's reader when it has one."""
    rx, ry = datacube.scan_shape

    def piece(xs: slice, ys: slice) -> Any:
        if datacube.reader is not None:
            return _ReaderBlock(datacube.reader, (xs, ys))
        return datacube.data[xs, ys]

    def block(tile: Tile) -> _HaloBlock:
        x_runs, index_x = _runs(_source_index(tile.x0 - radius, tile.x1 + radius, rx, pad))
        y_runs, index_y = _runs(_source_index(tile.y0 - radius, tile.y1 + radius, ry, pad))
        pieces = tuple(tuple(piece(slice(*xr), slice(*yr)) for yr in y_runs) for xr in x_runs)
        return _HaloBlock(pieces, index_x, index_y, (tile.x1 - tile.x0, tile.y1 - tile.y0))

    return block


def _load_halo(block: _HaloBlock) -> np.ndarray:
    """The ``(nx + 2r, ny + 2r, Qx, Qy)`` block of a tile, read and assembled."""
    rows = [np.concatenate([_load_block(p) for p in row], axis=1) if len(row) > 1 else _load_block(row[0])
            for row in block.pieces]
    data = np.concatenate(rows, axis=0) if len(rows) > 1 else rows[0]
    if block.index_x is not None:
        data = np.take(data, block.index_x, axis=0)
    if block.index_y is not None:
        data = np.take(data, block.index_y, axis=1)
    return data


def _map_halo_block(block: _HaloBlock, fn: BatchFn) -> dict[str, np.ndarray]:
    data = _load_halo(block)
    nx, ny = block.tile_shape
    what = f"a tile of {nx} x {ny} positions (block of shape {data.shape}, halo included)"
    return _as_dict(fn(data), nx * ny, fn, what)


# ---------------------------------------------------------------------- public API
def map_neighbourhoods(
    datacube: DataCube,
    fn: BatchFn,
    radius: int,
    *,
    pad: str = "edge",
    memory_budget: int | None = None,
    scheduler: str | Any = "threads",
    n_workers: int | None = None,
    progress: bool | None = None,
    checkpoint: str | os.PathLike | None = None,
    job_key: str = "",
    desc: str = "",
    should_stop: Callable[[], bool] | None = None,
) -> np.ndarray | dict[str, np.ndarray]:
    """Apply ``fn`` to tiles of scan positions with a halo of ``radius`` neighbours; assemble per-position results.

    For each tile of positions ``[x0:x1, y0:y1]`` (``nx = x1 - x0``, ``ny = y1 - y0``),
    ``fn`` receives ``block``, a NumPy array of shape ``(nx + 2r, ny + 2r, Qx, Qy)`` in the
    stored dtype: ``block[r + i, r + j]`` is the pattern at position ``(x0 + i, y0 + j)``,
    and the ``r`` positions on every side are its neighbours. Halo positions inside the scan
    are read from the data (across tile borders); those outside it are filled as
    :func:`numpy.pad` with mode ``pad`` fills them. The result is therefore exactly that of
    ``fn`` on ``np.pad(full, ((r, r), (r, r), (0, 0), (0, 0)), mode=pad)`` cropped to each
    tile's window ``[x0:x1 + 2r, y0:y1 + 2r]`` (in padded coordinates), whatever the tiling.

    Parameters
    ----------
    datacube : the dataset (in memory, lazy Dask, or with a file ``reader``).
    fn : ``fn(block) -> array | dict[str, array]``; every returned array has first axis
        ``nx * ny``: the tile's positions in row-major order (the halo is input only). It must
        be picklable for the process and Dask schedulers (a module-level function or
        ``functools.partial``).
    radius : halo width ``r`` in scan positions, an integer >= 0; 0 gives the blocks of
        :func:`~distill4d.engine.map_patterns` as ``(nx, ny, Qx, Qy)`` arrays.
    pad : how halo positions outside the scan are filled: ``"edge"`` (the nearest scan
        position), ``"reflect"`` (mirrored without repeating the edge; needs ``r`` smaller
        than both scan dimensions) or ``"wrap"`` (periodic, e.g. for simulated periodic
        cells; needs ``r`` at most both scan dimensions).
    memory_budget : bytes of working memory to stay within (default 1 GiB, or the
        environment variable ``DISTILL4D_MEMORY_BUDGET``); it sets the tile size, counting
        the halo (see :func:`plan_neighbourhood_tiles`).
    scheduler, n_workers, progress, desc, should_stop : as in :func:`~distill4d.engine.map_patterns`.
    checkpoint : a directory; finished tiles are saved there and a rerun with the same
        directory (and the same ``radius``, ``pad`` and ``job_key``) resumes from them. Removed
        when the job is complete, unless given as ``KeepCheckpoint(dir)`` (as in
        :func:`~distill4d.engine.map_patterns`).
    job_key : a string identifying the computation (method and parameters); ``radius`` and
        ``pad`` are added to it, so a checkpoint written with others is refused.

    Returns
    -------
    An array of shape ``(Rx, Ry, ...)``, or a dict of them if ``fn`` returns a dict.

    Raises
    ------
    TypeError
        If ``datacube`` is not a DataCube, ``fn`` is not callable or ``radius`` is not an integer.
    ValueError
        If ``radius`` is negative, ``pad`` is unknown or too small a scan for it, or ``fn``
        returns arrays whose first axis is not ``nx * ny``.
    """
    n_workers = _check_map_args(datacube, fn, n_workers)
    radius = _check_radius(radius)
    pad = check_pad(pad, radius, datacube.scan_shape)
    key = f"{job_key}|map_neighbourhoods(radius={radius}, pad={pad})"
    with Executor(scheduler, n_workers, should_stop) as ex:
        tiles = plan_neighbourhood_tiles(datacube, radius, memory_budget, ex.n_parallel)
        outputs = _map_tiles(datacube, ex, tiles, _map_halo_block, _halo_blocks(datacube, radius, pad), fn,
                             checkpoint=checkpoint, job_key=key, progress=progress, desc=desc)
    return outputs[""] if set(outputs) == {""} else outputs
