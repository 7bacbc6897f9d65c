"""The engine: run a batch function over the patterns of a DataCube, wherever it runs.

A method is a function ``fn(batch) -> result`` on a batch of patterns of shape
``(n, Qx, Qy)`` that returns an array (or a dict of arrays) whose first axis is ``n``.
The engine cuts the scan into tiles sized from a memory budget, reads each tile,
calls ``fn``, and assembles the per-position results into arrays of shape
``(Rx, Ry, ...)``. It runs inline, on local threads, on local processes or on a Dask
distributed cluster, with the same results; with ``checkpoint=DIR`` finished tiles are
written to disk and an interrupted job resumes from them; the directory is removed once the
job is complete (``checkpoint=KeepCheckpoint(DIR)`` keeps it).

:func:`map_neighbourhoods` does the same for methods that need neighbouring scan
positions: ``fn`` receives a tile's patterns plus a halo of ``radius`` positions on every
side, as a ``(nx + 2r, ny + 2r, Qx, Qy)`` block (padded like :func:`numpy.pad` at the scan edges).
:func:`read_patterns` reads a sample of scattered positions in row blocks.

A run stops early when its ``should_stop()`` returns True (or that of an enclosing
:func:`stop_when`, for runs inside a method or command): the tiles running finish and are
checkpointed, then :class:`Cancelled` is raised.
"""

from .checkpoint import KeepCheckpoint
from .core import (
    DEFAULT_MEMORY_BUDGET,
    Cancelled,
    Tile,
    map_patterns,
    plan_tiles,
    reduce_patterns,
    run_tasks,
    stop_when,
)
from .neighbourhoods import map_neighbourhoods, plan_neighbourhood_tiles
from .sample import read_patterns

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "Cancelled",
    "KeepCheckpoint",
    "Tile",
    "map_neighbourhoods",
    "map_patterns",
    "plan_neighbourhood_tiles",
    "plan_tiles",
    "read_patterns",
    "reduce_patterns",
    "run_tasks",
    "stop_when",
]
