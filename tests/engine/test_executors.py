"""The executors: argument checks before any worker starts, no data inside Dask graphs, Ctrl-C."""

import numpy as np
import pytest

from distill4d import DataCube
from distill4d.engine import map_neighbourhoods, map_patterns, reduce_patterns, run_tasks
from distill4d.engine.executors import Executor


def _total(batch):
    return batch.reshape(batch.shape[0], -1).sum(axis=1)


def _sum(batch):
    return batch.sum(axis=0)


def _centre(block):
    return block[1:-1, 1:-1].reshape(-1, *block.shape[2:]).sum(axis=(1, 2))


@pytest.mark.parametrize("scheduler", ["inline", "threads", "processes"])
@pytest.mark.parametrize("n_workers", [-2, -1, 0])
def test_every_entry_point_checks_n_workers_first(scheduler, n_workers):
    cube = DataCube(np.ones((3, 3, 4, 4), np.float32))
    calls = (
        lambda: map_patterns(cube, _total, scheduler=scheduler, n_workers=n_workers),
        lambda: reduce_patterns(cube, _sum, scheduler=scheduler, n_workers=n_workers),
        lambda: cube.mean_pattern(scheduler=scheduler, n_workers=n_workers),
        lambda: map_neighbourhoods(cube, _centre, 1, scheduler=scheduler, n_workers=n_workers),
        lambda: list(run_tasks(abs, [1, 2], scheduler=scheduler, n_workers=n_workers)),
        lambda: Executor(scheduler, n_workers),
    )
    for call in calls:
        with pytest.raises(ValueError, match=f"n_workers must be >= 1, got {n_workers}"):
            call()
    with pytest.raises(TypeError, match="n_workers must be an integer"):
        Executor(scheduler, "2")
