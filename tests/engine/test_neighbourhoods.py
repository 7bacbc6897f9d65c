"""Tests of distill4d.engine.map_neighbourhoods: tiles with a halo of neighbouring scan positions."""

from __future__ import annotations

import functools
import pickle

import numpy as np
import pytest

from distill4d import DataCube
from distill4d.engine import (
    map_neighbourhoods,
    map_patterns,
    plan_neighbourhood_tiles,
    plan_tiles,
)
from distill4d.engine.neighbourhoods import _halo_blocks, _map_halo_block

RX, RY, Q = 7, 9, 128
PATTERN_BYTES = Q * Q * 4  # float32: 64 KiB, so that a 1 MiB budget holds only 4 patterns per tile


@pytest.fixture(scope="module")
def cube() -> DataCube:
    rng = np.random.default_rng(11)
    data = rng.poisson(3.0, (RX, RY, Q, Q)).astype(np.float32)
    data[:, :, 0, 0] = np.arange(RX * RY).reshape(RX, RY)  # each pattern carries its position's id
    return DataCube(data)


def _features(block: np.ndarray, radius: int) -> dict[str, np.ndarray]:
    """Per position: a weighted sum over its (2r+1)^2 neighbourhood of two per-pattern features,
    and the ids of the neighbours (exact in float64: the data are integers)."""
    feats = np.stack([block[:, :, 0, 0].astype(np.float64), block.sum(axis=(2, 3), dtype=np.float64)], axis=-1)
    k = 2 * radius + 1
    nx, ny = block.shape[0] - 2 * radius, block.shape[1] - 2 * radius
    weighted = np.zeros((nx, ny, 2))
    window = np.empty((nx, ny, k * k))
    for dx in range(k):
        for dy in range(k):
            part = feats[dx : dx + nx, dy : dy + ny]
            weighted += (1 + dx + k * dy) * part
            window[..., dx * k + dy] = part[..., 0]
    return {"weighted": weighted.reshape(nx * ny, 2), "window": window.reshape(nx * ny, k * k)}


def _reference(data: np.ndarray, radius: int, pad: str) -> dict[str, np.ndarray]:
    padded = np.pad(data, ((radius, radius), (radius, radius), (0, 0), (0, 0)), mode=pad)
    out = _features(padded, radius)
    return {k: v.reshape(data.shape[:2] + v.shape[1:]) for k, v in out.items()}


def _row_budget(radius: int, rows: int) -> int:
    """A budget whose tiles are ``rows`` whole scan rows (halo included), for n_parallel=1."""
    return 4 * PATTERN_BYTES * (rows + 2 * radius) * (RY + 2 * radius)


def _split_budget(radius: int, cols: int) -> int:
    """A budget whose tiles are ``cols`` positions of one scan row (halo included), for n_parallel=1."""
    return 4 * PATTERN_BYTES * (1 + 2 * radius) * (cols + 2 * radius)


def _assert_equal(out: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> None:
    assert set(out) == set(ref)
    for k, expected in ref.items():
        assert out[k].shape == expected.shape
        np.testing.assert_array_equal(out[k], expected)


# ====================================================================== results equal np.pad
@pytest.mark.parametrize("pad", ["edge", "reflect", "wrap"])
@pytest.mark.parametrize("radius", [0, 1, 2])
def test_results_equal_fn_on_the_padded_array(cube: DataCube, pad: str, radius: int) -> None:
    ref = _reference(cube.data, radius, pad)
    fn = functools.partial(_features, radius=radius)
    rows, split = _row_budget(radius, 2), _split_budget(radius, 4)
    row_tiles = plan_neighbourhood_tiles(cube, radius, rows)
    split_tiles = plan_neighbourhood_tiles(cube, radius, split)
    if radius:
        assert len(row_tiles) == 4 and all(t.y0 == 0 and t.y1 == RY for t in row_tiles)
        assert {t.x1 - t.x0 for t in row_tiles} == {1, 2}
        assert len(split_tiles) == RX * 3 and all(t.x1 - t.x0 == 1 for t in split_tiles)
        assert max(t.n for t in split_tiles) == 4  # rows are split
    else:  # no halo: 7 rows are split for the 20 tiles wanted (engine.core.MIN_TILES)
        assert len(row_tiles) == len(split_tiles) == RX * 3 and max(t.n for t in split_tiles) == 3
    for budget in (None, rows, split):
        _assert_equal(map_neighbourhoods(cube, fn, radius, pad=pad, memory_budget=budget, scheduler="inline"), ref)


def test_tiles_cover_the_scan_once_and_blocks_fit_the_budget(cube: DataCube) -> None:
    for radius in (0, 1, 3):
        for budget in (1 << 20, 3 << 20, 8 << 20, 64 << 20):
            for n_parallel in (1, 2):
                tiles = plan_neighbourhood_tiles(cube, radius, budget, n_parallel)
                cover = np.zeros((RX, RY), dtype=np.int32)
                for t in tiles:
                    cover[t.slices] += 1
                    halo_patterns = (t.x1 - t.x0 + 2 * radius) * (t.y1 - t.y0 + 2 * radius)
                    assert halo_patterns * PATTERN_BYTES <= max(
                        budget // (4 * n_parallel), (1 + 2 * radius) ** 2 * PATTERN_BYTES
                    )
                assert np.all(cover == 1)
    # Radius 0 is the tiling of plan_tiles.
    for budget in (1 << 20, 3 << 20, 8 << 20, 64 << 20):
        assert plan_neighbourhood_tiles(cube, 0, budget) == plan_tiles(cube, budget)


def test_radius_zero_is_map_patterns_with_a_4d_block(cube: DataCube) -> None:
    def total(batch: np.ndarray) -> np.ndarray:
        return batch.sum(axis=(1, 2), dtype=np.float64)

    def total4d(block: np.ndarray) -> np.ndarray:
        assert block.ndim == 4 and block.dtype == np.float32
        return total(block.reshape((-1,) + block.shape[2:]))

    budget = _split_budget(0, 4)
    np.testing.assert_array_equal(
        map_neighbourhoods(cube, total4d, 0, memory_budget=budget, scheduler="inline"),
        map_patterns(cube, total, memory_budget=budget, scheduler="inline"),
    )


@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (4, 1), (3, 4)])
def test_small_scans_and_wrap_of_a_whole_period(shape: tuple[int, int]) -> None:
    data = np.arange(np.prod(shape) * 4, dtype=np.float32).reshape(shape + (2, 2))
    dc = DataCube(data)
    for pad in ("edge", "reflect", "wrap"):
        for radius in range(4):
            if (pad == "reflect" and radius >= min(shape)) or (pad == "wrap" and radius > min(shape)):
                continue
            out = map_neighbourhoods(dc, functools.partial(_features, radius=radius), radius, pad=pad,
                                     scheduler="inline")
            _assert_equal(out, _reference(data, radius, pad))


# ====================================================================== schedulers and sources
def test_threads_dask_and_reader_sources_give_the_same_result(cube: DataCube, tmp_path) -> None:
    pytest.importorskip("dask.array")
    from distill4d.io import read, write

    radius, pad = 2, "wrap"
    fn = functools.partial(_features, radius=radius)
    ref = _reference(cube.data, radius, pad)
    budget = _split_budget(radius, 4)
    inline = map_neighbourhoods(cube, fn, radius, pad=pad, memory_budget=budget, scheduler="inline")
    _assert_equal(inline, ref)
    threads = map_neighbourhoods(cube, fn, radius, pad=pad, memory_budget=2 * budget, scheduler="threads",
                                 n_workers=2)
    _assert_equal(threads, ref)
    lazy = DataCube(cube.to_dask(chunk_bytes=3 * PATTERN_BYTES))
    assert lazy.reader is None
    for b in (budget, _row_budget(radius, 2)):
        _assert_equal(map_neighbourhoods(lazy, fn, radius, pad=pad, memory_budget=b, scheduler="threads",
                                         n_workers=2), ref)
    path = write(tmp_path / "cube.h5", cube)
    on_disk = read(path, lazy=True)
    assert on_disk.reader is not None
    for b in (budget, _row_budget(radius, 2)):
        _assert_equal(map_neighbourhoods(on_disk, fn, radius, pad=pad, memory_budget=b, scheduler="threads",
                                         n_workers=2), ref)


def test_tasks_are_picklable(cube: DataCube) -> None:
    radius, pad = 1, "reflect"
    fn = functools.partial(_features, radius=radius)
    tile = plan_neighbourhood_tiles(cube, radius, _split_budget(radius, 4))[0]
    block = _halo_blocks(cube, radius, pad)(tile)
    again = pickle.loads(pickle.dumps(block))
    a, b = _map_halo_block(block, fn), _map_halo_block(again, fn)
    _assert_equal(a, b)
    ref = _reference(cube.data, radius, pad)
    np.testing.assert_array_equal(a["weighted"], ref["weighted"][tile.slices].reshape(tile.n, 2))


class _RecordingReader:
    """A reader that records what is read."""

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.shape, self.dtype = data, data.shape, data.dtype
        self.reads: list[tuple[slice, slice]] = []

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        self.reads.append(key)
        return self.data[key].copy()


@pytest.mark.parametrize("pad", ["edge", "reflect", "wrap"])
def test_tiles_read_only_their_window(cube: DataCube, pad: str) -> None:
    radius = 2
    reader = _RecordingReader(cube.data)
    dc = DataCube(cube.data, reader=reader)
    for budget in (_row_budget(radius, 2), _split_budget(radius, 4)):
        reader.reads.clear()
        out = map_neighbourhoods(dc, functools.partial(_features, radius=radius), radius, pad=pad,
                                 memory_budget=budget, scheduler="inline")
        _assert_equal(out, _reference(cube.data, radius, pad))
        needed = 0  # the distinct scan positions of every tile's window
        for t in plan_neighbourhood_tiles(dc, radius, budget):
            xs = np.pad(np.arange(RX), radius, mode=pad)[t.x0 : t.x1 + 2 * radius]
            ys = np.pad(np.arange(RY), radius, mode=pad)[t.y0 : t.y1 + 2 * radius]
            needed += len(np.unique(xs)) * len(np.unique(ys))
        read = 0
        for xs, ys in reader.reads:
            assert xs.step is None and ys.step is None
            assert 0 <= xs.start < xs.stop <= RX and 0 <= ys.start < ys.stop <= RY
            read += (xs.stop - xs.start) * (ys.stop - ys.start)
        assert read == needed


# ====================================================================== checkpoints
class _Boom(RuntimeError):
    pass


def _counting(block: np.ndarray, radius: int, calls: list, fail_after: int | None = None) -> dict[str, np.ndarray]:
    calls.append(block.shape)
    if fail_after is not None and len(calls) > fail_after:
        raise _Boom("simulated crash")
    return _features(block, radius)


def test_interrupted_job_resumes_and_other_radius_or_pad_is_refused(cube: DataCube, tmp_path) -> None:
    radius, pad = 1, "reflect"
    ckpt = tmp_path / "ckpt"
    budget = _row_budget(radius, 2)
    n_tiles = len(plan_neighbourhood_tiles(cube, radius, budget))
    assert n_tiles == 4
    calls: list = []
    with pytest.raises(_Boom):
        map_neighbourhoods(cube, functools.partial(_counting, radius=radius, calls=calls, fail_after=2), radius,
                           pad=pad, memory_budget=budget, scheduler="inline", checkpoint=ckpt, job_key="feat")
    assert len(list(ckpt.glob("tile_*.npz"))) == 2
    with pytest.raises(ValueError, match="belongs to another job"):
        map_neighbourhoods(cube, functools.partial(_features, radius=2), 2, pad=pad, memory_budget=budget,
                           checkpoint=ckpt, job_key="feat")
    with pytest.raises(ValueError, match="belongs to another job"):
        map_neighbourhoods(cube, functools.partial(_features, radius=radius), radius, pad="edge",
                           memory_budget=budget, checkpoint=ckpt, job_key="feat")
    with pytest.raises(ValueError, match="belongs to another job"):
        map_patterns(cube, lambda b: b.sum(axis=(1, 2)), memory_budget=budget, checkpoint=ckpt, job_key="feat")
    calls2: list = []
    resumed = map_neighbourhoods(cube, functools.partial(_counting, radius=radius, calls=calls2), radius, pad=pad,
                                 memory_budget=budget, scheduler="inline", checkpoint=ckpt, job_key="feat")
    assert len(calls2) == n_tiles - 2  # only the unfinished tiles ran again
    _assert_equal(resumed, _reference(cube.data, radius, pad))
    assert not ckpt.exists()  # removed once complete


# ====================================================================== errors
def test_bad_arguments_are_refused(cube: DataCube) -> None:
    fn = functools.partial(_features, radius=1)
    with pytest.raises(ValueError, match=r"radius must be an integer number of scan positions >= 0, got -1"):
        map_neighbourhoods(cube, fn, -1)
    with pytest.raises(TypeError, match=r"radius must be an integer .* got 1\.0 \(float\)"):
        map_neighbourhoods(cube, fn, 1.0)
    with pytest.raises(TypeError, match=r"radius must be an integer .* got True \(bool\)"):
        map_neighbourhoods(cube, fn, True)
    with pytest.raises(TypeError, match="radius"):
        plan_neighbourhood_tiles(cube, "1")
    with pytest.raises(ValueError, match=r"pad must be one of 'edge', 'reflect', 'wrap', got 'constant'"):
        map_neighbourhoods(cube, fn, 1, pad="constant")
    with pytest.raises(ValueError, match="pad must be one of"):
        map_neighbourhoods(cube, fn, 1, pad=None)
    with pytest.raises(ValueError, match=r"pad='reflect' .* smaller than both scan dimensions 7 x 9; got radius=7"):
        map_neighbourhoods(cube, fn, 7, pad="reflect")
    with pytest.raises(ValueError, match=r"pad='wrap' needs radius <= both scan dimensions 7 x 9 .*got radius=8"):
        map_neighbourhoods(cube, fn, 8, pad="wrap")
    with pytest.raises(TypeError, match="DataCube"):
        map_neighbourhoods(cube.data, fn, 1)
    with pytest.raises(TypeError, match="callable"):
        map_neighbourhoods(cube, 3, 1)
    with pytest.raises(ValueError, match="n_workers"):
        map_neighbourhoods(cube, fn, 1, n_workers=0)
    with pytest.raises(ValueError, match="memory_budget"):
        map_neighbourhoods(cube, fn, 1, memory_budget=10)


def test_wrong_first_axis_names_the_expected_length(cube: DataCube) -> None:
    budget = _split_budget(1, 4)  # tiles of 1 x 4 positions, blocks of 3 x 6 patterns

    def with_halo(block: np.ndarray) -> np.ndarray:
        return block[:, :, 0, 0].reshape(-1)  # one value per pattern of the block, halo included

    with pytest.raises(ValueError, match=r"shape \(18,\) for a tile of 1 x 4 positions .*first axis must have length 4"):
        map_neighbourhoods(cube, with_halo, 1, memory_budget=budget, scheduler="inline")
    with pytest.raises(ValueError, match=r"output 'x' .*first axis must have length 4"):
        map_neighbourhoods(cube, lambda b: {"x": with_halo(b)}, 1, memory_budget=budget, scheduler="inline")
    with pytest.raises(ValueError, match="first axis must have length"):
        map_neighbourhoods(cube, lambda b: b.sum(), 1, scheduler="inline")
