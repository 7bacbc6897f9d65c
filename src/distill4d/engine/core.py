"""Tiling, execution (inline / threads / processes / Dask distributed) and result assembly."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .._validate import is_dask, positive_int
from ..errors import Distill4dError
from .checkpoint import Checkpoint, KeepCheckpoint
from .executors import BatchFn, Cancelled, Executor, stop_when
from .tiles import Tile

if TYPE_CHECKING:  # pragma: no cover
    from ..datacube import DataCube

__all__ = ["Cancelled", "KeepCheckpoint", "map_patterns", "reduce_patterns", "run_tasks", "stop_when", "plan_tiles",
           "Tile", "DEFAULT_MEMORY_BUDGET"]

#: Working memory the engine aims to stay within, in bytes (override with
#: ``memory_budget=`` or the environment variable ``DISTILL4D_MEMORY_BUDGET``).
DEFAULT_MEMORY_BUDGET = 1 << 30

#: Tiles a job is cut into at least, where the scan has that many positions (see :func:`plan_tiles`).
MIN_TILES = 20

# A tile's raw bytes times this factor bounds what one task holds at once
# (the raw tile, its float copy and the method's temporaries).
_WORKING_FACTOR = 4

def _memory_budget(value: int | None) -> int:
    if value is None:
        value = int(os.environ.get("DISTILL4D_MEMORY_BUDGET", DEFAULT_MEMORY_BUDGET))
    return positive_int("memory_budget", value, minimum=1 << 20)


def plan_tiles(
    datacube: DataCube, memory_budget: int | None = None, n_parallel: int = 1, *, halo: int = 0
) -> list[Tile]:
    """Cut the scan into tiles of whole rows (or parts of a row): at least :data:`MIN_TILES`
    when the scan has that many positions, each within the memory budget.

    Each of the ``n_parallel`` tiles in flight gets ``memory_budget / n_parallel`` bytes,
    of which a quarter is the raw block. A tile of ``nx x ny`` positions reads a block of
    ``(nx + 2 halo) * (ny + 2 halo)`` patterns (``halo``: the neighbours read around it, see
    :func:`~distill4d.engine.map_neighbourhoods`). Within that budget, the scan is cut into
    at least ``max(MIN_TILES, 2 n_parallel)`` tiles where it has enough positions, so that
    the progress bar moves, an interrupt acts within a tile's time and a resume keeps the
    finished tiles (with a halo, tiles keep at least ``2 halo`` rows and whole rows, as
    thinner tiles would read mostly halo). Tiles are whole rows when at least one row and its
    halo fit and the count allows, and parts of one row otherwise (at least one position per
    tile, even if its block alone exceeds the budget). Tiles follow the Dask chunks of lazy
    data where they can, so that a chunk is read once.
    """
    budget = _memory_budget(memory_budget)
    rx, ry, qx, qy = datacube.shape
    pattern_bytes = qx * qy * datacube.dtype.itemsize
    tile_bytes = max(pattern_bytes, budget // (_WORKING_FACTOR * max(1, n_parallel)))
    per_tile = max(1, tile_bytes // pattern_bytes)  # patterns per block, halo included
    target = max(MIN_TILES, 2 * n_parallel)  # tiles wanted, when the scan has enough positions
    rows = per_tile // (ry + 2 * halo) - 2 * halo  # whole rows whose block fits
    if halo:
        rows = min(rows, max(2 * halo, rx // target))
    elif rows >= 1 and rx < target:
        rows = 0  # fewer rows than tiles wanted: parts of rows
    else:
        rows = min(rows, max(1, rx // target))
    tiles: list[Tile] = []
    if rows >= 1:
        rows = min(rx, rows)
        if is_dask(datacube.data):
            chunk = int(datacube.data.chunks[0][0])
            if rows >= chunk:
                rows = (rows // chunk) * chunk
        for x0 in range(0, rx, rows):
            tiles.append(Tile(x0, min(rx, x0 + rows), 0, ry))
    else:
        cols = max(1, per_tile // (1 + 2 * halo) - 2 * halo)
        if not halo:
            parts = -(-target // rx)  # parts per row for the target count
            cols = min(cols, max(1, -(-ry // parts)))
        for x0 in range(rx):
            for y0 in range(0, ry, cols):
                tiles.append(Tile(x0, x0 + 1, y0, min(ry, y0 + cols)))
    return tiles


def _is_datacube(obj: Any) -> bool:
    """A DataCube, told by what the engine uses of it (the engine does not import :mod:`distill4d.datacube`,
    which runs its reductions through the engine)."""
    return all(hasattr(obj, a) for a in ("data", "reader", "scan_shape", "pattern_shape", "n_patterns", "calibration"))


def _check_map_args(datacube: Any, fn: Any, n_workers: Any) -> int | None:
    """Type checks shared by the mapping functions; ``n_workers`` as an int (or None)."""
    if not _is_datacube(datacube):
        raise TypeError(f"datacube must be a distill4d.DataCube, got {type(datacube).__name__}")
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {fn!r}")
    return None if n_workers is None else positive_int("n_workers", n_workers)


@dataclass(frozen=True)
class _ReaderBlock:
    """A tile to be read through a DataCube's ``reader`` (picklable when the reader is)."""

    reader: Any
    slices: tuple[slice, slice]


def _load_block(block: Any) -> np.ndarray:
    """A scan block ``(nx, ny, Qx, Qy)`` (NumPy, lazy Dask or a reader tile) as a NumPy array."""
    if isinstance(block, _ReaderBlock):
        block = block.reader[block.slices]
    elif is_dask(block):
        block = block.compute(scheduler="sync")
    return np.asarray(block)


def _read_block(block: Any) -> np.ndarray:
    """A scan block ``(nx, ny, Qx, Qy)`` (NumPy, lazy Dask or a reader tile) as an ``(n, Qx, Qy)`` array."""
    block = _load_block(block)
    return block.reshape((-1,) + block.shape[2:])


def _as_dict(result: Any, n: int, fn: BatchFn, what: str | None = None) -> dict[str, np.ndarray]:
    """``fn``'s result as a dict of arrays, checking that each has first axis ``n``.

    ``what`` describes the input of ``fn`` in the error message (default: a batch of ``n`` patterns).
    """
    name = getattr(fn, "__name__", repr(fn))
    what = f"a batch of {n} patterns" if what is None else what
    out = result if isinstance(result, dict) else {"": result}
    checked: dict[str, np.ndarray] = {}
    for key, value in out.items():
        arr = np.asarray(value)
        if arr.ndim == 0 or arr.shape[0] != n:
            raise Distill4dError(
                f"batch function {name} returned {'output ' + repr(key) + ' ' if key else ''}with shape "
                f"{arr.shape} for {what}; its first axis must have length {n}"
            )
        checked[key] = arr
    return checked


def _blocks(datacube: DataCube) -> Callable[[Tile], Any]:
    """How to get the block of a tile: through the DataCube's reader when it has one."""
    if datacube.reader is not None:
        return lambda tile: _ReaderBlock(datacube.reader, tile.slices)
    return lambda tile: datacube.data[tile.slices]


def _map_block(block: Any, fn: BatchFn) -> dict[str, np.ndarray]:
    batch = _read_block(block)
    return _as_dict(fn(batch), batch.shape[0], fn)


def _reduce_block(block: Any, fn: BatchFn) -> np.ndarray:
    return np.asarray(fn(_read_block(block)))


# ---------------------------------------------------------------------- public API
def _progress_bar(progress: bool | None, total: int, desc: str, unit: str = "pattern"):
    from tqdm.auto import tqdm

    if progress is None:  # on a terminal, also for a single tile (a long one shows its elapsed time)
        progress = sys.stderr.isatty()
    return tqdm(total=total, unit=unit, desc=desc, disable=not progress, leave=False)


def _call(item: Any, fn: Callable[[Any], Any]) -> Any:
    return fn(item)


def _identity(item: Any) -> Any:
    return item


def run_tasks(
    fn: Callable[[Any], Any],
    items: list[Any],
    *,
    scheduler: str | Any = "threads",
    n_workers: int | None = None,
    progress: bool | None = None,
    desc: str = "",
    unit: str = "task",
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[tuple[Any, Any]]:
    """Run ``fn(item)`` for every item on the engine's executors; yield ``(item, result)`` as each finishes.

    For independent jobs that are not patterns of one DataCube (e.g. the shards of a
    simulation library). ``scheduler`` and ``n_workers`` are those of :func:`map_patterns`;
    ``fn`` and the items must be picklable for ``"processes"`` and Dask. On a failure the
    tasks in flight finish (and are yielded) before the error is raised. ``should_stop`` as in
    :func:`map_patterns`.
    """
    items = list(items)
    with Executor(scheduler, n_workers, should_stop) as ex, _progress_bar(progress, len(items), desc, unit) as bar:
        for item, result in ex.run(_call, _identity, items, fn):
            bar.update(1)
            yield item, result


def map_patterns(
    datacube: DataCube,
    fn: BatchFn,
    *,
    memory_budget: int | None = None,
    scheduler: str | Any = "threads",
    n_workers: int | None = None,
    progress: bool | None = None,
    checkpoint: str | os.PathLike | None = None,
    job_key: str = "",
    desc: str = "",
    should_stop: Callable[[], bool] | None = None,
) -> np.ndarray | dict[str, np.ndarray]:
    """Apply ``fn`` to every pattern of ``datacube`` and assemble per-position results.

    Parameters
    ----------
    datacube : the dataset.
    fn : ``fn(batch) -> array | dict[str, array]`` for ``batch`` of shape ``(n, Qx, Qy)``
        (the stored dtype); every returned array has first axis ``n``. It must be picklable
        for the process and Dask schedulers (a module-level function or ``functools.partial``).
    memory_budget : bytes of working memory to stay within (default 1 GiB, or the
        environment variable ``DISTILL4D_MEMORY_BUDGET``); it sets the tile size.
    scheduler : ``"threads"`` (default: local threads, one per core), ``"inline"`` (one at a time,
        in this thread: for debugging), ``"processes"`` (a local Dask cluster),
        ``"dask"`` (the current ``distributed.Client``), a scheduler address
        (``"tcp://host:8786"``) or a ``distributed.Client``.
    n_workers : parallel tiles for threads/processes (default: all cores).
    progress : show a progress bar (default: when stderr is a terminal).
    checkpoint : a directory; finished tiles are saved there and a rerun with the same
        directory resumes from them. It is removed when the job is complete, as the full result
        is then returned; pass ``KeepCheckpoint(dir)`` to keep it (a pipeline whose later steps
        should resume too, like the CLI's ``OUTPUT.partial/``, removes it itself).
    job_key : a string identifying the computation (method and parameters); a checkpoint
        written under another key is refused rather than silently mixed.
    desc : label of the progress bar.
    should_stop : a callable asked between tiles (every 50 ms on threads); once it returns True
        nothing more is started, the tiles running finish (and are checkpointed) and
        :class:`Cancelled` is raised, as on Ctrl-C. Default: that of an enclosing
        :func:`stop_when` (for runs inside a method), else never.

    Returns
    -------
    An array of shape ``(Rx, Ry, ...)``, or a dict of them if ``fn`` returns a dict.
    """
    n_workers = _check_map_args(datacube, fn, n_workers)
    with Executor(scheduler, n_workers, should_stop) as ex:
        tiles = plan_tiles(datacube, memory_budget, ex.n_parallel)
        outputs = _map_tiles(datacube, ex, tiles, _map_block, _blocks(datacube), fn,
                             checkpoint=checkpoint, job_key=job_key, progress=progress, desc=desc)
    return outputs[""] if set(outputs) == {""} else outputs


def _map_tiles(
    datacube: DataCube,
    ex: Executor,
    tiles: list[Tile],
    task: Callable[[Any, BatchFn], dict[str, np.ndarray]],
    blocks: Callable[[Tile], Any],
    fn: BatchFn,
    *,
    checkpoint: str | os.PathLike | None,
    job_key: str,
    progress: bool | None,
    desc: str,
) -> dict[str, np.ndarray]:
    """Run ``task(blocks(tile), fn)`` over ``tiles`` on ``ex`` and assemble the ``(Rx, Ry, ...)`` outputs.

    ``task`` returns a dict of arrays whose first axis is the tile's positions in row-major
    order. With ``checkpoint``, finished tiles are saved and those of an earlier run reused.
    """
    store = None
    done: dict[Tile, dict[str, np.ndarray]] = {}
    if checkpoint is not None:
        store = Checkpoint.open(checkpoint, datacube.shape, tiles, job_key)
        tiles = store.tiles  # the tiling of an earlier run wins, so that tiles line up
        done = store.load_done()
    todo = [t for t in tiles if t not in done]
    outputs: dict[str, np.ndarray] | None = None

    def place(tile: Tile, result: dict[str, np.ndarray]) -> None:
        nonlocal outputs
        if outputs is None:
            outputs = {
                k: np.empty(datacube.scan_shape + v.shape[1:], dtype=v.dtype) for k, v in result.items()
            }
        if set(result) != set(outputs):
            raise Distill4dError(f"batch function returned keys {sorted(result)} after {sorted(outputs)}")
        for k, v in result.items():
            outputs[k][tile.slices] = v.reshape((tile.x1 - tile.x0, tile.y1 - tile.y0) + v.shape[1:])

    for tile, result in done.items():
        place(tile, result)
    with _progress_bar(progress, datacube.n_patterns, desc) as bar:
        bar.update(sum(t.n for t in done))
        for tile, result in ex.run(task, blocks, todo, fn):
            if store is not None:
                store.save(tile, result)
            place(tile, result)
            bar.update(tile.n)
    assert outputs is not None  # at least one tile always exists
    if store is not None and not isinstance(checkpoint, KeepCheckpoint):
        store.remove()  # the job is complete: its result is returned, nothing is left to resume
    return outputs


def reduce_patterns(
    datacube: DataCube,
    fn: BatchFn,
    *,
    combine: str = "sum",
    memory_budget: int | None = None,
    scheduler: str | Any = "threads",
    n_workers: int | None = None,
    progress: bool | None = None,
    desc: str = "",
    should_stop: Callable[[], bool] | None = None,
) -> np.ndarray:
    """Reduce over all patterns: ``combine`` ("sum" or "max") of ``fn(batch)`` over tiles.

    ``fn(batch)`` returns one array per batch (e.g. ``batch.sum(axis=0)``), of the same
    shape for every batch. Options (``should_stop`` too) as in :func:`map_patterns`.
    """
    if combine not in ("sum", "max"):
        raise Distill4dError(f"combine must be 'sum' or 'max', got {combine!r}")
    op = np.add if combine == "sum" else np.maximum
    total = None
    with Executor(scheduler, n_workers, should_stop) as ex:
        tiles = plan_tiles(datacube, memory_budget, ex.n_parallel)
        with _progress_bar(progress, datacube.n_patterns, desc) as bar:
            for tile, part in ex.run(_reduce_block, _blocks(datacube), tiles, fn):
                total = part.copy() if total is None else op(total, part)
                bar.update(tile.n)
    return total
