"""engine.read_patterns: a sample of scattered positions, read in row blocks."""

import dask.array as da
import numpy as np
import pytest

from distill4d import DataCube, Distill4dError
from distill4d.engine import read_patterns


def _cube(lazy: bool) -> DataCube:
    data = np.arange(7 * 9 * 3 * 4, dtype=np.float32).reshape(7, 9, 3, 4)
    return DataCube(da.from_array(data, chunks=(2, 3, 3, 4)) if lazy else data)


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("scheduler", ["inline", "threads"])
def test_read_patterns_returns_the_patterns_in_the_order_given(lazy, scheduler):
    dc = _cube(lazy)
    pos = np.array([[6, 8], [0, 0], [3, 1], [3, 2], [3, 8], [0, 0], [5, 4]])
    got = read_patterns(dc, pos, scheduler=scheduler)
    full = np.asarray(dc.data)
    assert got.shape == (7, 3, 4) and got.dtype == np.float32
    np.testing.assert_array_equal(got, full[pos[:, 0], pos[:, 1]])


def test_read_patterns_rejects_positions_outside_the_scan():
    with pytest.raises(Distill4dError, match="lie in the 7 x 9 scan"):
        read_patterns(_cube(False), np.array([[7, 0]]))
    with pytest.raises(Distill4dError, match=r"\(n, 2\) integer"):
        read_patterns(_cube(False), np.array([[1.5, 0]]))
