"""Tests of distill4d.io: readers on real detector files, writers, laziness, bad input."""

from __future__ import annotations

import importlib
import json
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import h5py
import numpy as np
import pytest

from distill4d import Calibration, DataCube
from distill4d.calibration import electron_wavelength_A
from distill4d.io import (
    CorruptFileError,
    H5Source,
    NpySource,
    Results,
    list_datasets,
    read,
    read_results,
    split_dataset_path,
    write,
)


def _is_dask(a) -> bool:
    return type(a).__module__.startswith("dask.")


def _cube(shape=(5, 6, 16, 18), dtype=np.uint16, seed=0, **cal) -> DataCube:
    data = np.random.default_rng(seed).integers(0, 1000, shape).astype(dtype)
    return DataCube(data, Calibration(**cal), name="synthetic")


FULL_CAL = dict(
    scan_step_A=2.5,
    q_pixel_inv_A=0.02,
    energy_eV=300e3,
    semiangle_mrad=21.4,
    origin_px=(7.5, 8.25),
    scan_rotation_rad=0.1,
    scan_flip=True,
)


# ====================================================================== real files
def test_py4dstem_emd_file(det: Path) -> None:
    path = det / "py4DSTEM_size2x3x4x5.h5"
    dc = read(path)
    with h5py.File(path, "r") as f:
        expected = f["datacube_root/datacube/data"][()]
    assert dc.shape == (2, 3, 4, 5) and dc.dtype == np.float32 and not dc.is_lazy
    np.testing.assert_array_equal(dc.data, expected)
    # the calibration group says R 0.126796875 nm and Q 0.04425... A^-1
    assert dc.calibration.scan_step_A == pytest.approx(1.26796875)
    assert dc.calibration.q_pixel_inv_A == pytest.approx(0.044251566616087125)
    assert dc.calibration.energy_eV is None and dc.calibration.origin_px is None
    assert list_datasets(path) == [("/datacube_root/datacube/data", (2, 3, 4, 5), "float32")]


def test_blockfile_matches_rosettasciio(det: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = det / "test1.blo"
    dc = read(path)
    assert dc.shape == (3, 2, 144, 144) and dc.dtype == np.uint8
    # rsciio's blockfile module imports scikit-image (for writing only): stand it in to compare
    monkeypatch.setitem(sys.modules, "skimage", types.ModuleType("skimage"))
    monkeypatch.delitem(sys.modules, "rsciio.blockfile._api", raising=False)
    monkeypatch.delitem(sys.modules, "rsciio.blockfile", raising=False)
    ref = importlib.import_module("rsciio.blockfile").file_reader(str(path))[0]
    np.testing.assert_array_equal(dc.data, ref["data"])
    assert dc.data.sum() > 0
    nm = ref["axes"][0]["scale"]
    assert ref["axes"][0]["units"] == "nm" and ref["axes"][1]["scale"] == nm
    assert dc.calibration.scan_step_A == pytest.approx(10 * nm)
    assert dc.calibration.energy_eV == pytest.approx(
        ref["original_metadata"]["blockfile_header"]["Beam_energy"]
    )
    assert dc.calibration.q_pixel_inv_A is None  # the file's detector scale is in cm on the screen
    lazy = read(path, lazy=True)
    assert _is_dask(lazy.data)
    np.testing.assert_array_equal(lazy.data.compute(), ref["data"])


def test_arina_master_file(det: Path) -> None:
    path = det / "test_00_master.h5"
    dc = read(path)
    with h5py.File(det / "test_00_data_000001.h5", "r") as f:
        frames = f["entry/data/data"][()]
    assert frames.shape == (16, 192, 192)
    assert dc.shape == (4, 4, 192, 192)
    assert dc.dtype == np.uint32  # kept as stored (rsciio would convert to uint16)
    np.testing.assert_array_equal(dc.data, frames.reshape(4, 4, 192, 192))
    assert dc.calibration.energy_eV == pytest.approx(300e3)
    lazy = read(path, lazy=True)
    assert _is_dask(lazy.data)
    block = pickle.loads(pickle.dumps(lazy.data[1:3, 2:]))
    np.testing.assert_array_equal(block.compute(), frames.reshape(4, 4, 192, 192)[1:3, 2:])
    with pytest.raises(ValueError, match="scan_shape"):
        read(path, scan_shape=(3, 5))
    assert read(path, scan_shape=(2, 8)).shape == (2, 8, 192, 192)


def test_arina_master_without_data_file(det: Path, tmp_path: Path) -> None:
    lonely = tmp_path / "scan_master.h5"
    lonely.write_bytes((det / "test_00_master.h5").read_bytes())
    with pytest.raises(FileNotFoundError, match="test_00_data_000001.h5"):
        read(lonely)


def test_prismatic_emd(det: Path) -> None:
    path = det / "Si100_4D.emd"
    with pytest.raises(ValueError, match="several 4D datasets") as info:
        read(path)
    assert "CBED_array_depth0000/datacube (11, 11, 8, 8)" in str(info.value)
    assert "CBED_array_depth0001/datacube (11, 11, 8, 8)" in str(info.value)
    name = "/4DSTEM_simulation/data/datacubes/CBED_array_depth0001/datacube"
    dc = read(f"{path}:{name}")
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(dc.data, f[name][()])
    assert dc.shape == (11, 11, 8, 8) and dc.dtype == np.float32
    cal = dc.calibration
    # Prismatic labels its dims "[n_m]" but writes Å: the probe step is 0.5 Å and the
    # detector pixel 1/(5.43 Å cell) = 0.18416 1/Å
    assert cal.scan_step_A == pytest.approx(0.5)
    assert cal.q_pixel_inv_A == pytest.approx(1 / 5.43, rel=1e-5)
    assert cal.energy_eV == pytest.approx(100e3) and cal.semiangle_mrad == pytest.approx(30.0)
    assert cal.origin_px == pytest.approx((4.0, 4.0), abs=1e-4)
    other = read(path, dataset=name.replace("0001", "0000"))
    assert not np.array_equal(other.data, dc.data)


MIB_FILES = {
    "Merlin_navigation4x2_ROI/001_4x2_6bit.mib": ((2, 4, 256, 256), np.uint8),
    "Merlin_navigation4x2_ROI/002_4x2_6bit_roi128.mib": ((2, 4, 128, 256), np.uint8),
    "Merlin_navigation4x2_signalNx256_ROI/002_merlin_test_roi_sig256x128_nav4x2_hot_pixel_52x_39y.mib": (
        (2, 4, 128, 256),
        np.uint16,
    ),
    "Merlin_navigation4x2_signalNx256_ROI/003_merlin_test_roi_sig256x64_nav4x2_hot_pixel_52x_39y.mib": (
        (2, 4, 64, 256),
        np.uint16,
    ),
}


@pytest.mark.parametrize("name", sorted(MIB_FILES))
def test_merlin_mib_matches_rosettasciio(merlin: Path, name: str) -> None:
    from rsciio import quantumdetector

    shape, dtype = MIB_FILES[name]
    dc = read(merlin / name)
    ref = np.asarray(quantumdetector.file_reader(str(merlin / name))[0]["data"])
    assert dc.shape == shape and dc.dtype == dtype and dc.dtype.isnative
    assert not dc.is_lazy
    np.testing.assert_array_equal(dc.data, ref)
    assert dc.data.sum() > 0
    lazy = read(merlin / name, lazy=True)
    assert _is_dask(lazy.data)
    part = pickle.loads(pickle.dumps(lazy.data[1:, 1:3]))
    np.testing.assert_array_equal(part.compute(), ref[1:, 1:3])


@pytest.mark.parametrize("height", [128, 64])
def test_merlin_hot_pixel(merlin: Path, height: int) -> None:
    name = next(n for n, (s, _) in MIB_FILES.items() if "hot_pixel" in n and s[2] == height)
    dc = read(merlin / name)
    data = dc.data.astype(np.int64)
    # x=52 is the column (Qy); y=39 is the raw row, flipped upside down like rsciio/pyxem/py4DSTEM
    qx, qy = height - 1 - 39, 52
    hot = data[:, :, qx, qy]
    around = data[:, :, qx - 1 : qx + 2, qy - 1 : qy + 2].copy()
    around[:, :, 1, 1] = 0
    assert np.all(hot >= 3) and np.all(hot > 2 * around.max(axis=(2, 3)) + 2)
    total = data.sum(axis=(0, 1))
    assert np.unravel_index(total.argmax(), total.shape) == (qx, qy)
    # against the raw bytes: frame 0 starts after a 384-byte header, big-endian 16-bit
    raw = np.fromfile(merlin / name, dtype=np.uint8, count=384 + height * 256 * 2)[384:].view(">u2")
    raw = raw.reshape(height, 256)
    assert raw[39, 52] == hot[0, 0] and raw[39, 52] > 0
    np.testing.assert_array_equal(dc.data[0, 0], raw[::-1])


def test_merlin_hdr_path_reads_mib(merlin: Path) -> None:
    name = "Merlin_navigation4x2_ROI/001_4x2_6bit"
    np.testing.assert_array_equal(read(merlin / f"{name}.hdr").data, read(merlin / f"{name}.mib").data)


# ====================================================================== round trips
@pytest.mark.parametrize("lazy", [False, True])
def test_datacube_round_trip(tmp_path: Path, lazy: bool) -> None:
    dc = _cube(**FULL_CAL)
    out = write(tmp_path / "cube.h5", dc)
    assert out == tmp_path / "cube.h5" and out.exists()
    back = read(out, lazy=lazy)
    assert back.calibration == dc.calibration
    assert back.dtype == dc.dtype and back.shape == dc.shape
    assert _is_dask(back.data) == lazy
    np.testing.assert_array_equal(np.asarray(back.data.compute() if lazy else back.data), dc.data)
    with h5py.File(out, "r") as f:
        assert f.attrs["distill4d_format"] == "datacube"
        assert f.attrs["emd_group_type"] == "file" and f.attrs["version_major"] == 1
        d = f["datacube_root/datacube/data"]
        assert d.chunks is not None and d.chunks[2:] == (16, 18)  # whole patterns per chunk
        assert f["datacube_root/datacube"].attrs["scan_step_A"] == 2.5


def test_datacube_round_trip_uncalibrated_and_compressed(tmp_path: Path) -> None:
    dc = _cube(dtype=np.float32)
    for comp in ("gzip", "lz4"):
        back = read(write(tmp_path / f"{comp}.h5", dc, compression=comp))
        np.testing.assert_array_equal(back.data, dc.data)
        assert back.calibration == Calibration()
    with pytest.raises(ValueError, match="compression"):
        write(tmp_path / "x.h5", dc, compression="zip")


def test_written_file_is_py4dstem_emd(tmp_path: Path, det: Path) -> None:
    """The layout mirrors py4DSTEM's own file, and RosettaSciIO's EMD reader understands it."""
    from rsciio import emd

    out = write(tmp_path / "cube.emd", _cube(**FULL_CAL))
    ref = det / "py4DSTEM_size2x3x4x5.h5"

    def groups(path):
        with h5py.File(path, "r") as f:
            found = {}
            f.visititems(lambda n, o: found.update({n: o.attrs.get("emd_group_type")}))
            return {n: t for n, t in found.items() if t is not None}

    assert groups(ref).items() <= groups(out).items()
    sig = emd.file_reader(str(out))[0]
    assert sig["data"].shape == (5, 6, 16, 18)
    assert [a["scale"] for a in sig["axes"]] == pytest.approx([2.5, 2.5, 0.02, 0.02])
    with h5py.File(out, "r") as f:
        c = f["datacube_root/metadatabundle/calibration"]
        assert c["R_pixel_units"][()] == b"A" and c["Q_pixel_size"][()] == 0.02
        assert c["qx0_mean"][()] == 7.5 and bool(c["QR_flip"][()]) is True
    # and our reader of py4DSTEM files reads the same calibration back from that group alone
    with h5py.File(out, "a") as f:
        for k in FULL_CAL:
            del f["datacube_root/datacube"].attrs[k]
    cal = read(out).calibration
    assert cal.scan_step_A == 2.5 and cal.q_pixel_inv_A == 0.02 and cal.origin_px == (7.5, 8.25)
    assert cal.scan_rotation_rad == pytest.approx(0.1) and cal.scan_flip and cal.semiangle_mrad == 21.4


class _Recording:
    """An array-like that records the largest block read from it."""

    def __init__(self, array: np.ndarray) -> None:
        self.array, self.shape, self.dtype, self.ndim, self.largest = (
            array,
            array.shape,
            array.dtype,
            array.ndim,
            0,
        )

    def __getitem__(self, key):
        out = self.array[key]
        self.largest = max(self.largest, out.nbytes)
        return out


def test_lazy_datacube_is_streamed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dask.array as da

    src = _Recording(_cube(shape=(8, 4, 16, 16)).data)
    row = 4 * 16 * 16 * 2
    monkeypatch.setattr(sys.modules["distill4d.io.write"], "_WRITE_BLOCK_BYTES", 2 * row)
    dc = DataCube(da.from_array(src, chunks=(1, 4, 16, 16)), Calibration(scan_step_A=3.0))
    out = write(tmp_path / "streamed.h5", dc)
    assert 0 < src.largest <= row  # never more than one chunk at a time
    np.testing.assert_array_equal(read(out).data, src.array)


def test_results_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    arrays = {
        "bf": rng.random((5, 6)),
        "com": rng.random((5, 6, 2)).astype(np.float32),
        "mask": np.eye(3, dtype=bool),
    }
    attrs = {"command": "distill4d virtual scan.h5 --bf 5", "calibration": {"q_pixel_inv_A": 0.02}, "n": 3}
    out = write(tmp_path / "res.h5", arrays, units={"bf": "counts", "com": "px"}, attrs=attrs)
    res = read_results(out)
    assert isinstance(res, Results) and set(res) == {"bf", "com", "mask"} and len(res) == 3
    for k, v in arrays.items():
        np.testing.assert_array_equal(res[k], v)
        assert res[k].dtype == v.dtype
    assert res.units == {"bf": "counts", "com": "px", "mask": ""}
    assert res.attrs["command"] == attrs["command"] and res.attrs["n"] == 3
    assert json.loads(res.attrs["calibration"]) == {"q_pixel_inv_A": 0.02}
    with pytest.raises(KeyError, match="available"):
        res["nope"]
    with pytest.raises(ValueError, match="results file"):
        read(out)
    with pytest.raises(ValueError, match="DataCube file"):
        read_results(write(tmp_path / "cube.h5", _cube()))


def test_results_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not among the results"):
        write(tmp_path / "r.h5", {"bf": np.ones(3)}, units={"adf": "counts"})
    with pytest.raises(ValueError, match="empty"):
        write(tmp_path / "r.h5", {})
    with pytest.raises(ValueError, match="'/'"):
        write(tmp_path / "r.h5", {"a/b": np.ones(3)})
    with pytest.raises(TypeError, match="DataCube or a dict"):
        write(tmp_path / "r.h5", np.ones((2, 2, 2, 2)))
    assert not any(tmp_path.iterdir())


# ====================================================================== atomic writes
def test_no_overwrite_without_force(tmp_path: Path) -> None:
    out = write(tmp_path / "a.h5", {"x": np.ones(3)})
    before = out.read_bytes()
    with pytest.raises(FileExistsError, match="force=True") as info:
        write(out, {"x": np.zeros(3)})
    assert str(out) in str(info.value) and "--force" in str(info.value)
    assert out.read_bytes() == before
    write(out, {"x": np.zeros(3)}, force=True)
    np.testing.assert_array_equal(read_results(out)["x"], np.zeros(3))


def test_failed_write_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    import dask.array as da

    out = write(tmp_path / "cube.h5", _cube())
    before = out.read_bytes()

    def explode(block, block_info=None):
        if block_info[0]["chunk-location"][0] == 3:
            raise RuntimeError("disk on fire")
        return block

    bad = da.from_array(_cube(shape=(6, 4, 8, 8)).data, chunks=(1, 4, 8, 8)).map_blocks(
        explode, dtype=np.uint16
    )
    with pytest.raises(RuntimeError, match="disk on fire"):
        write(out, DataCube(bad), force=True)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cube.h5"]


def test_refuses_to_overwrite_its_input(tmp_path: Path) -> None:
    out = write(tmp_path / "cube.h5", _cube())
    with pytest.raises(ValueError, match="being read from"):
        write(out, read(out, lazy=True), force=True)
    np.save(tmp_path / "cube.npy", _cube().data)
    with pytest.raises(ValueError, match="being read from"):
        write(tmp_path / "cube.npy", read(tmp_path / "cube.npy", lazy=True), force=True)


def test_write_to_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write(tmp_path / "nope" / "a.h5", _cube())


# ====================================================================== laziness
def test_lazy_h5_chunks_follow_storage_and_pickle(tmp_path: Path) -> None:
    data = np.arange(24 * 10 * 64 * 64, dtype=np.uint16).reshape(24, 10, 64, 64)
    path = tmp_path / "chunked.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("scan/data", data=data, chunks=(2, 10, 64, 64), compression="gzip")
    dc = read(path, lazy=True, memory_budget=1 << 20)  # chunks of about budget/4 = 256 KiB = 3.2 rows
    chunks = dc.data.chunks
    assert chunks[0] == (2,) * 12  # whole storage chunks, as many as fit
    assert chunks[1] == (10,) and chunks[2] == (64,) and chunks[3] == (64,)
    sources = [v for v in dict(dc.data.__dask_graph__()).values() if isinstance(v, H5Source)]
    assert len(sources) == 1 and sources[0].dataset == "/scan/data"
    blob = pickle.dumps(dc.data[4:7, 2:5])
    assert len(blob) < 20_000  # the graph carries the file name, not the data
    np.testing.assert_array_equal(pickle.loads(blob).compute(), data[4:7, 2:5])
    src = pickle.loads(pickle.dumps(sources[0]))
    assert src._handle is None
    np.testing.assert_array_equal(src[1, 2], data[1, 2])


def test_lazy_by_memory_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = np.ones((8, 16, 64, 64), np.float32)
    np.save(tmp_path / "a.npy", data)
    assert data.nbytes == 2 << 20
    assert not read(tmp_path / "a.npy", memory_budget=4 << 20).is_lazy
    small = read(tmp_path / "a.npy", memory_budget=1 << 20)
    assert _is_dask(small.data)
    monkeypatch.setenv("DISTILL4D_MEMORY_BUDGET", str(1 << 20))
    assert _is_dask(read(tmp_path / "a.npy").data)
    monkeypatch.setenv("DISTILL4D_MEMORY_BUDGET", str(64 << 20))
    assert isinstance(read(tmp_path / "a.npy").data, np.ndarray)
    assert isinstance(read(tmp_path / "a.npy", lazy=False, memory_budget=1 << 20).data, np.ndarray)
    with pytest.raises(TypeError, match="lazy"):
        read(tmp_path / "a.npy", lazy="yes")


def test_npy_lazy_is_memory_mapped_and_picklable(tmp_path: Path) -> None:
    data = np.random.default_rng(2).random((6, 5, 8, 8)).astype(np.float32)
    np.save(tmp_path / "a.npy", data)
    dc = read(tmp_path / "a.npy", lazy=True)
    assert _is_dask(dc.data)
    assert any(isinstance(v, NpySource) for v in dict(dc.data.__dask_graph__()).values())
    part = pickle.loads(pickle.dumps(dc.data[2:4, 1:]))
    np.testing.assert_array_equal(part.compute(), data[2:4, 1:])
    np.save(tmp_path / "f.npy", np.asfortranarray(data))
    np.testing.assert_array_equal(read(tmp_path / "f.npy", lazy=True).data.compute(), data)


def test_stacks_become_line_scans_or_scan_shape(tmp_path: Path) -> None:
    stack = np.arange(12 * 4 * 4, dtype=np.int32).reshape(12, 4, 4)
    np.save(tmp_path / "s.npy", stack)
    line = read(tmp_path / "s.npy")
    assert line.shape == (1, 12, 4, 4)
    np.testing.assert_array_equal(line.data[0], stack)
    grid = read(tmp_path / "s.npy", scan_shape=(3, 4), lazy=True)
    assert grid.shape == (3, 4, 4, 4)
    np.testing.assert_array_equal(grid.data.compute(), stack.reshape(3, 4, 4, 4))
    with pytest.raises(ValueError, match="12"):
        read(tmp_path / "s.npy", scan_shape=(5, 5))
    np.save(tmp_path / "img.npy", np.ones((4, 4)))
    with pytest.raises(ValueError, match="not 4D-STEM"):
        read(tmp_path / "img.npy")


# ====================================================================== HDF5 selection
@pytest.fixture
def two_cubes(tmp_path: Path) -> Path:
    path = tmp_path / "two.h5"
    with h5py.File(path, "w") as f:
        f["a/data"] = np.full((2, 3, 4, 4), 1.0)
        f["b/data"] = np.full((1, 3, 2, 4, 4), 2.0, dtype=np.float32)  # squeezable 5D
        f["img"] = np.ones((4, 4))
        f["stack"] = np.arange(6 * 4 * 4).reshape(6, 4, 4)
    return path


def test_ambiguous_file_lists_candidates(two_cubes: Path) -> None:
    with pytest.raises(ValueError, match="several 4D datasets") as info:
        read(two_cubes)
    assert "/a/data (2, 3, 4, 4) float64" in str(info.value)
    assert "/b/data (1, 3, 2, 4, 4) float32" in str(info.value)
    assert list_datasets(two_cubes) == [
        ("/a/data", (2, 3, 4, 4), "float64"),
        ("/b/data", (1, 3, 2, 4, 4), "float32"),
    ]


def test_dataset_selection(two_cubes: Path) -> None:
    a = read(f"{two_cubes}:/a/data")
    assert a.shape == (2, 3, 4, 4) and float(a.data.mean()) == 1.0
    b = read(two_cubes, dataset="b/data")
    assert b.shape == (3, 2, 4, 4) and float(b.data.mean()) == 2.0
    b_lazy = read(two_cubes, dataset="/b", lazy=True)  # a group: its one array
    assert b_lazy.shape == (3, 2, 4, 4) and float(b_lazy.data.mean().compute()) == 2.0
    s = read(f"{two_cubes}:/stack", scan_shape=(2, 3))
    np.testing.assert_array_equal(s.data, np.arange(96).reshape(2, 3, 4, 4))
    with pytest.raises(KeyError, match="4D datasets available: /a/data") as info:
        read(two_cubes, dataset="/nope")
    assert "/nope" in str(info.value)
    with pytest.raises(ValueError, match="given twice"):
        read(f"{two_cubes}:/a/data", dataset="/b/data")
    with pytest.raises(ValueError, match="not 4D-STEM"):
        read(two_cubes, dataset="/img")


def test_split_dataset_path(tmp_path: Path) -> None:
    f = tmp_path / "x.h5"
    f.write_bytes(b"")
    assert split_dataset_path(f"{f}:/g/data") == (str(f), "/g/data")
    assert split_dataset_path(str(f)) == (str(f), None)
    odd = tmp_path / "with:colon.h5"
    odd.write_bytes(b"")
    assert split_dataset_path(str(odd)) == (str(odd), None)
    assert split_dataset_path(str(tmp_path / "missing.h5:/a")) == (str(tmp_path / "missing.h5:/a"), None)


def test_no_4d_dataset(tmp_path: Path) -> None:
    path = tmp_path / "flat.h5"
    with h5py.File(path, "w") as f:
        f["image"] = np.ones((8, 8))
        f["g/stack"] = np.ones((3, 8, 8))
    with pytest.raises(ValueError, match="no 4D dataset found") as info:
        read(path)
    text = str(info.value)
    assert str(path) in text and "/image (8, 8)" in text and "/g/stack (3, 8, 8)" in text


def test_hyperspy_file_with_mrad_axes(tmp_path: Path) -> None:
    from rsciio import hspy

    data = np.arange(2 * 3 * 8 * 8, dtype=np.float32).reshape(2, 3, 8, 8)
    axes = [
        dict(name="y", size=2, scale=0.5, offset=0.0, units="nm", navigate=True),
        dict(name="x", size=3, scale=0.5, offset=0.0, units="nm", navigate=True),
        dict(name="ky", size=8, scale=0.25, offset=-1.0, units="mrad", navigate=False),
        dict(name="kx", size=8, scale=0.25, offset=-1.0, units="mrad", navigate=False),
    ]
    meta = {"General": {"title": "t"}, "Signal": {"signal_type": ""}}
    sig = dict(
        data=data,
        axes=axes,
        metadata=meta,
        original_metadata={},
        attributes={"_lazy": False},
        tmp_parameters={},
        package_info={"name": "hyperspy", "version": "2.0"},
        learning_results={},
        models={},
    )
    hspy.file_writer(str(tmp_path / "no_energy.hspy"), sig)
    meta["Acquisition_instrument"] = {"TEM": {"beam_energy": 200.0, "convergence_angle": 1.5}}
    hspy.file_writer(str(tmp_path / "t.hspy"), sig)
    dc = read(tmp_path / "t.hspy")
    np.testing.assert_array_equal(dc.data, data)
    q = 0.25e-3 / electron_wavelength_A(200e3)
    assert dc.calibration.q_pixel_inv_A == pytest.approx(q) and dc.calibration.energy_eV == 200e3
    assert dc.calibration.scan_step_A == pytest.approx(5.0) and dc.calibration.semiangle_mrad == 1.5
    assert dc.calibration.origin_px == pytest.approx((4.0, 4.0))
    # without a beam energy the mrad pixel stays unconverted until the caller gives one
    bare = read(tmp_path / "no_energy.hspy")
    assert bare.calibration.q_pixel_inv_A is None and bare.calibration.energy_eV is None
    given = read(tmp_path / "no_energy.hspy", energy_eV=200e3)
    assert given.calibration.q_pixel_inv_A == pytest.approx(q)


def test_rsciio_axes_to_calibration() -> None:
    from distill4d.io.rsciio import calibration_from_axes

    def ax(scale, units, offset=0.0):
        return {"scale": scale, "units": units, "offset": offset}

    axes = [ax(2.0, "nm"), ax(2.0, "nm"), ax(0.1, "1 / nm", -3.2), ax(0.1, "1 / nm", -3.2)]
    md = {"Acquisition_instrument": {"TEM": {"beam_energy": 300.0, "convergence_angle": 2.0}}}
    cal, q_mrad = calibration_from_axes(axes, md, 4, "f")
    assert cal.scan_step_A == pytest.approx(20.0) and cal.q_pixel_inv_A == pytest.approx(0.01)
    assert (
        cal.energy_eV == 300e3 and cal.semiangle_mrad == 2.0 and cal.origin_px == pytest.approx((32.0, 32.0))
    )
    assert q_mrad is None
    cal, q_mrad = calibration_from_axes(
        [ax(1.0, "µm"), ax(2.0, "µm"), ax(0.5, "mrad"), ax(0.5, "mrad")], {}, 4, "f"
    )
    assert cal.scan_step_A is None  # the two scan steps differ: not guessed
    assert cal.q_pixel_inv_A is None and q_mrad == 0.5
    cal, _ = calibration_from_axes([ax(1.0, ""), ax(1.0, ""), ax(1.0, ""), ax(1.0, "")], {}, 4, "f")
    assert cal == Calibration()
    cal, _ = calibration_from_axes([ax(3.0, "Å"), ax(0.02, "1/Å"), ax(0.02, "1/Å")], {}, 3, "f")
    assert cal.scan_step_A == 3.0 and cal.q_pixel_inv_A == 0.02


# ====================================================================== calibration overrides
def test_calibration_overrides(tmp_path: Path, det: Path) -> None:
    dc = read(det / "py4DSTEM_size2x3x4x5.h5", q_pixel_inv_A=0.02, energy_eV=300e3, scan_step_A=None)
    assert dc.calibration.q_pixel_inv_A == 0.02 and dc.calibration.energy_eV == 300e3
    assert dc.calibration.scan_step_A == pytest.approx(1.26796875)  # None keeps the file's value
    with pytest.raises(TypeError, match="unknown keyword"):
        read(det / "py4DSTEM_size2x3x4x5.h5", q_pixel=0.02)
    with pytest.raises(ValueError, match="energy_eV"):
        read(det / "py4DSTEM_size2x3x4x5.h5", energy_eV=-1)


# ====================================================================== bad input
def _truncate(src: Path, dst: Path, fraction: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def test_missing_file(tmp_path: Path) -> None:
    for name in ("nope.h5", "nope.npy", "nope.mib", "nope.blo", "nope.h5:/a"):
        with pytest.raises(FileNotFoundError, match="nope"):
            read(tmp_path / name)


def test_unknown_extension(tmp_path: Path) -> None:
    (tmp_path / "data.xyz").write_text("hello")
    with pytest.raises(ValueError, match="unknown file extension '.xyz'") as info:
        read(tmp_path / "data.xyz")
    assert ".mib" in str(info.value) and ".h5" in str(info.value) and ".npy" in str(info.value)


def _assert_corrupt(path: Path) -> None:
    for lazy in (False, True):
        with pytest.raises(ValueError, match="truncated or corrupt") as info:
            dc = read(path, lazy=lazy)
            dc.compute()
        assert isinstance(info.value, CorruptFileError)
        assert path.name in str(info.value)


def test_truncated_and_corrupt_files(tmp_path: Path) -> None:
    cube = write(tmp_path / "good.h5", _cube())
    np.save(tmp_path / "good.npy", _cube().data)
    _assert_corrupt(_truncate(cube, tmp_path / "cut.h5"))
    _assert_corrupt(_truncate(tmp_path / "good.npy", tmp_path / "cut.npy"))
    for ext in (".h5", ".npy", ".mib", ".blo", ".emd"):
        junk = tmp_path / f"junk{ext}"
        junk.write_bytes(np.random.default_rng(3).integers(0, 256, 5000, dtype=np.uint8).tobytes())
        _assert_corrupt(junk)


def test_truncated_detector_files(tmp_path: Path, det: Path, merlin: Path) -> None:
    mib = merlin / "Merlin_navigation4x2_ROI" / "001_4x2_6bit"
    (tmp_path / "cut.hdr").write_bytes(Path(f"{mib}.hdr").read_bytes())
    _assert_corrupt(_truncate(Path(f"{mib}.mib"), tmp_path / "cut.mib", 0.55))
    (tmp_path / "short.hdr").write_bytes(Path(f"{mib}.hdr").read_bytes())
    _assert_corrupt(_truncate(Path(f"{mib}.mib"), tmp_path / "short.mib", 0.5))  # 4 whole frames of 8
    _assert_corrupt(_truncate(det / "test1.blo", tmp_path / "cut.blo"))


def test_corrupt_chunk_found_when_read(tmp_path: Path) -> None:
    path = tmp_path / "chunks.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset(
            "data", data=np.ones((8, 4, 16, 16), np.float32), chunks=(1, 4, 16, 16), compression="gzip"
        )
        offset = f["data"].id.get_chunk_info(5).byte_offset
    with open(path, "r+b") as fh:  # scribble over one compressed chunk
        fh.seek(offset)
        fh.write(b"\xff" * 64)
    dc = read(path, lazy=True)
    np.testing.assert_array_equal(dc.data[:4].compute(), 1.0)
    with pytest.raises(CorruptFileError, match="chunks.h5.*truncated or corrupt"):
        dc.data[4:6].compute()
    with pytest.raises(CorruptFileError, match="truncated or corrupt"):
        read(path, lazy=False)


@pytest.mark.parametrize("dtype", [np.complex64, bool, "S3"])
def test_wrong_dtype(tmp_path: Path, dtype) -> None:
    arr = np.zeros((2, 2, 4, 4), dtype=dtype)
    with h5py.File(tmp_path / "bad.h5", "w") as f:
        f["data"] = arr
    with pytest.raises(TypeError, match="bad.h5.*real detector intensities"):
        read(tmp_path / "bad.h5")
    np.save(tmp_path / "bad.npy", arr)
    with pytest.raises(TypeError, match="bad.npy"):
        read(tmp_path / "bad.npy")


def test_object_npy_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "obj.npy", np.empty((2, 2, 2, 2), dtype=object), allow_pickle=True)
    with pytest.raises(TypeError, match="obj.npy"):
        read(tmp_path / "obj.npy")


def test_big_endian_becomes_native(tmp_path: Path) -> None:
    data = np.arange(2 * 2 * 4 * 4, dtype=">u2").reshape(2, 2, 4, 4)
    np.save(tmp_path / "be.npy", data)
    for lazy in (False, True):
        dc = read(tmp_path / "be.npy", lazy=lazy)
        assert dc.dtype.isnative and dc.dtype == np.uint16
        np.testing.assert_array_equal(np.asarray(dc.compute().data), data)


def test_import_distill4d_does_not_import_io() -> None:
    code = (
        "import sys, distill4d; "
        "print(sorted(m for m in ('distill4d.io', 'h5py', 'dask', 'rsciio') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert out.stdout.strip() == "[]"
