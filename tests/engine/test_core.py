import functools
import json

import numpy as np
import pytest

from distill4d import DataCube
from distill4d.engine import map_patterns, plan_tiles
from distill4d.imaging import annulus_mask, center_of_mass, circle_mask, virtual_images


def test_dask_scheduler_without_a_client_says_how_to_get_one():
    # Runs before the module's cluster fixture exists (tests run in file order).
    cube = DataCube(np.ones((2, 2, 4, 4)))
    with pytest.raises(ValueError, match="distributed.Client"):
        map_patterns(cube, lambda b: b.sum(axis=(1, 2)), scheduler="dask")


def _moments(batch):
    b = batch.astype(np.float64)
    return {"total": b.sum(axis=(1, 2)), "rows": b.sum(axis=2)}


@pytest.fixture(scope="module")
def cube():
    rng = np.random.default_rng(7)
    return DataCube(rng.poisson(20.0, (9, 11, 24, 24)).astype(np.uint16))


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as lc, distributed.Client(lc) as client:
        yield lc, client


def _reference(cube):
    d = cube.data.astype(np.float64)
    return {"total": d.sum(axis=(2, 3)), "rows": d.sum(axis=3)}


def test_map_assembles_dict_outputs_inline_and_threads(cube):
    ref = _reference(cube)
    for kwargs in ({}, {"scheduler": "threads", "n_workers": 2}):
        out = map_patterns(cube, _moments, memory_budget=1 << 20, **kwargs)
        assert out["rows"].shape == (9, 11, 24)
        np.testing.assert_array_equal(out["total"], ref["total"])
        np.testing.assert_array_equal(out["rows"], ref["rows"])


def test_tiles_cover_the_scan_once_and_respect_the_budget():
    da = pytest.importorskip("dask.array")
    huge = DataCube(da.zeros((1000, 100, 256, 256), dtype=np.uint16, chunks=(8, 100, 256, 256)))
    budget = 1 << 30
    for n_parallel in (1, 2):
        tiles = plan_tiles(huge, budget, n_parallel=n_parallel)
        cover = np.zeros((1000, 100), dtype=np.int32)
        for t in tiles:
            cover[t.slices] += 1
            assert t.n * 256 * 256 * 2 <= budget // (4 * n_parallel)  # a quarter of each worker's share
            assert t.x0 % 8 == 0  # whole-row tiles follow the Dask chunks
        assert np.all(cover == 1)
    # Patterns so large that one scan row exceeds the budget: tiles split the row.
    wide = DataCube(da.zeros((2, 4096, 512, 512), dtype=np.float32, chunks=(1, 64, 512, 512)))
    t2 = plan_tiles(wide, 64 << 20)
    assert all(t.x1 - t.x0 == 1 for t in t2) and max(t.n for t in t2) == 16
    assert sum(t.n for t in t2) == 2 * 4096


def test_lazy_input_gives_the_same_result(cube):
    lazy = DataCube(cube.to_dask(chunk_bytes=5000))
    out = map_patterns(lazy, _moments, memory_budget=1 << 20, scheduler="threads")
    np.testing.assert_array_equal(out["total"], _reference(cube)["total"])


def test_inline_and_dask_distributed_results_are_identical(cube, cluster):
    lc, client = cluster
    masks = {"bf": circle_mask((24, 24), (12, 12), 5), "adf": annulus_mask((24, 24), (12, 12), 7)}
    inline = virtual_images(cube, masks, memory_budget=1 << 20)
    for scheduler in (client, lc.scheduler_address):
        dist = virtual_images(cube, masks, memory_budget=1 << 20, scheduler=scheduler)
        for k in masks:
            np.testing.assert_array_equal(dist[k], inline[k])
    lazy = DataCube(cube.to_dask(chunk_bytes=5000))
    com_inline = center_of_mass(cube, origin=(12, 12))
    com_dist = center_of_mass(lazy, origin=(12, 12), scheduler=client, memory_budget=1 << 20)
    np.testing.assert_array_equal(com_dist.com_qx_px, com_inline.com_qx_px)
    np.testing.assert_array_equal(com_dist.com_qy_px, com_inline.com_qy_px)


def test_processes_scheduler_matches_inline(cube):
    masks = {"bf": circle_mask((24, 24), (12, 12), 5)}
    a = virtual_images(cube, masks, memory_budget=1 << 20)["bf"]
    b = virtual_images(cube, masks, memory_budget=1 << 20, scheduler="processes", n_workers=2)["bf"]
    np.testing.assert_array_equal(a, b)


class _Boom(RuntimeError):
    pass


def _counting(batch, calls, fail_after=None):
    calls.append(batch.shape[0])
    if fail_after is not None and len(calls) > fail_after:
        raise _Boom("simulated crash")
    return _moments(batch)


def test_interrupted_job_resumes_to_the_same_result(tmp_path):
    cube = DataCube(np.random.default_rng(3).poisson(5.0, (9, 11, 64, 64)).astype(np.uint16))
    ckpt = tmp_path / "ckpt"
    full = map_patterns(cube, _moments, memory_budget=1 << 20)
    budget = 1 << 20  # 1 MiB -> 256 KiB tiles: several tiles for this 0.8 MB cube
    n_tiles = len(plan_tiles(cube, budget))
    assert n_tiles >= 3
    calls: list[int] = []
    with pytest.raises(_Boom):
        map_patterns(cube, functools.partial(_counting, calls=calls, fail_after=2), scheduler="inline",
                     memory_budget=budget, checkpoint=ckpt, job_key="moments")
    assert len(list(ckpt.glob("tile_*.npz"))) == 2
    # A different job may not reuse the directory.
    with pytest.raises(ValueError, match="belongs to another job"):
        map_patterns(cube, _moments, memory_budget=budget, checkpoint=ckpt, job_key="other")
    meta = json.loads((ckpt / "manifest.json").read_text())
    assert meta["job_key"] == "moments" and len(meta["tiles"]) == n_tiles
    calls2: list[int] = []
    resumed = map_patterns(cube, functools.partial(_counting, calls=calls2), scheduler="inline",
                           memory_budget=budget, checkpoint=ckpt, job_key="moments")
    assert len(calls2) == n_tiles - 2  # only the unfinished tiles ran again
    for k in full:
        np.testing.assert_array_equal(resumed[k], full[k])
    assert not ckpt.exists()  # the job is complete: nothing is left to resume


def test_interrupted_threaded_job_resumes_to_the_same_result(tmp_path):
    cube = DataCube(np.random.default_rng(8).poisson(5.0, (9, 11, 64, 64)).astype(np.uint16))
    full = map_patterns(cube, _moments, scheduler="inline")
    calls: list[int] = []
    with pytest.raises(_Boom):
        map_patterns(cube, functools.partial(_counting, calls=calls, fail_after=2), scheduler="threads",
                     n_workers=2, memory_budget=1 << 20, checkpoint=tmp_path / "c", job_key="m")
    saved = len(list((tmp_path / "c").glob("tile_*.npz")))
    n_tiles = len(plan_tiles(cube, 1 << 20, n_parallel=2))
    # The two calls that succeeded are kept although a sibling failed while they ran.
    assert saved == 2 and n_tiles > 3
    calls2: list[int] = []
    resumed = map_patterns(cube, functools.partial(_counting, calls=calls2), scheduler="threads",
                           n_workers=2, memory_budget=1 << 20, checkpoint=tmp_path / "c", job_key="m")
    assert len(calls2) == n_tiles - saved
    for k in full:
        np.testing.assert_array_equal(resumed[k], full[k])


def test_checkpoint_refuses_a_foreign_nonempty_directory(cube, tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not empty"):
        map_patterns(cube, _moments, checkpoint=tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_bad_batch_function_and_arguments(cube):
    with pytest.raises(ValueError, match="first axis must have length"):
        map_patterns(cube, lambda b: b.sum())
    with pytest.raises(ValueError, match="first axis must have length"):
        map_patterns(cube, lambda b: b[:1])
    with pytest.raises(TypeError, match="callable"):
        map_patterns(cube, 3)
    with pytest.raises(TypeError, match="DataCube"):
        map_patterns(np.zeros((2, 2, 2, 2)), _moments)
    with pytest.raises(ValueError, match="scheduler"):
        map_patterns(cube, _moments, scheduler="gpu-cluster")
    with pytest.raises(ValueError, match="memory_budget"):
        map_patterns(cube, _moments, memory_budget=10)
    with pytest.raises(ValueError, match="n_workers"):
        map_patterns(cube, _moments, scheduler="threads", n_workers=0)


def test_default_tiles_are_enough_for_progress_and_resume():
    da = pytest.importorskip("dask.array")
    from distill4d.engine.core import MIN_TILES

    # 64 x 64 x (128 x 128) float32, 256 MiB: 2 tiles of 128 MiB before, now >= 20 within the budget.
    scan = DataCube(da.zeros((64, 64, 128, 128), dtype=np.float32, chunks=(8, 64, 128, 128)))
    for n_parallel in (1, 2, 8, 16):
        tiles = plan_tiles(scan, n_parallel=n_parallel)
        assert len(tiles) >= max(MIN_TILES, 2 * n_parallel)
        assert all(t.y1 - t.y0 == 64 for t in tiles)  # whole rows
        assert max(t.n for t in tiles) * 128 * 128 * 4 <= (1 << 30) // (4 * n_parallel)
    # The budget still wins: 8 MiB -> 2 MiB blocks of 32 patterns.
    assert max(t.n for t in plan_tiles(scan, 8 << 20)) == 32
    # Fewer rows than tiles wanted: rows are split; a scan of 16 positions gives one tile each.
    small = DataCube(np.zeros((9, 11, 4, 4), np.uint16))
    tiles = plan_tiles(small)
    assert len(tiles) >= MIN_TILES and sum(t.n for t in tiles) == 99
    assert len(plan_tiles(DataCube(np.zeros((4, 4, 4, 4))))) == 16
    # With a halo, tiles keep at least 2 halo rows (thinner ones would read mostly halo).
    assert min(t.x1 - t.x0 for t in plan_tiles(scan, halo=2)[:-1]) >= 4


def test_single_tile_jobs_show_progress_on_a_terminal(monkeypatch):
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    one = DataCube(np.ones((1, 1, 4, 4)))
    assert len(plan_tiles(one)) == 1
    map_patterns(one, lambda b: b.sum(axis=(1, 2)), desc="one tile")
    assert "one tile:" in term.getvalue()
    term.truncate(0)
    map_patterns(one, lambda b: b.sum(axis=(1, 2)), desc="quiet", progress=False)
    assert "quiet" not in term.getvalue()


def test_checkpoint_is_removed_after_a_complete_run_unless_kept(cube, tmp_path):
    from distill4d.engine import KeepCheckpoint, map_neighbourhoods

    ckpt = tmp_path / "peak.partial"
    out = map_patterns(cube, _moments, checkpoint=ckpt, job_key="m")
    np.testing.assert_array_equal(out["total"], _reference(cube)["total"])
    assert not ckpt.exists()
    map_neighbourhoods(cube, lambda b: b[1:-1, 1:-1].sum(axis=(2, 3)).reshape(-1), 1, checkpoint=ckpt)
    assert not ckpt.exists()
    kept = KeepCheckpoint(ckpt)
    assert map_patterns(cube, _moments, checkpoint=kept, job_key="m")["total"].shape == (9, 11)
    n_tiles = len(json.loads((ckpt / "manifest.json").read_text())["tiles"])
    assert len(list(ckpt.glob("tile_*.npz"))) == n_tiles  # kept for the later steps of a pipeline
    # A file put into the directory by someone else stays, and so does the directory.
    (ckpt / "notes.txt").write_text("mine")
    map_patterns(cube, _moments, checkpoint=ckpt, job_key="m")
    assert sorted(p.name for p in ckpt.iterdir()) == ["notes.txt"]
