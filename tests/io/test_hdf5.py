"""Tests of distill4d.io.hdf5: the hints of its errors, stacks of patterns read with a scan shape."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from distill4d.io import read


def test_hints_name_the_cli_flags_and_the_python_keywords(tmp_path: Path) -> None:
    flat = tmp_path / "flat.h5"
    with h5py.File(flat, "w") as f:
        f["image"] = np.ones((8, 8))
        f["g/stack"] = np.ones((6, 8, 8))
        f["g/other"] = np.ones((4, 8, 8))
    with pytest.raises(ValueError, match="no 4D dataset") as info:
        read(flat)
    msg = str(info.value)
    assert "--dataset PATH (dataset= in Python)" in msg
    assert "--scan-shape RX RY (scan_shape=(Rx, Ry) in Python)" in msg
    assert "dataset='" not in msg
    two = tmp_path / "two.h5"
    with h5py.File(two, "w") as f:
        f["a"] = np.ones((2, 2, 4, 4))
        f["b"] = np.ones((2, 2, 4, 4))
    with pytest.raises(ValueError, match="several 4D datasets") as info:
        read(two)
    assert "--dataset PATH (dataset= in Python)" in str(info.value) and "dataset='" not in str(info.value)
    with pytest.raises(ValueError, match=r"scan shape 4 x 4 \(--scan-shape / scan_shape=\) holds 16"):
        read(f"{flat}:/g/stack", scan_shape=(4, 4))


def test_scan_shape_chooses_the_only_stack_of_that_many_patterns(tmp_path: Path) -> None:
    path = tmp_path / "frames.h5"
    data = np.arange(6 * 4 * 4, dtype=np.uint16).reshape(6, 4, 4)
    with h5py.File(path, "w") as f:
        f["entry/data/data"] = data
        f["entry/other"] = np.ones((4, 4, 4))
    dc = read(path, scan_shape=(2, 3))
    assert dc.shape == (2, 3, 4, 4)
    np.testing.assert_array_equal(dc.data, data.reshape(2, 3, 4, 4))
    with pytest.raises(ValueError, match="no 4D dataset"):
        read(path)  # which stack, and what scan, is not guessed


def test_arina_data_file_reads_with_a_scan_shape(det: Path) -> None:
    path = det / "test_00_data_000001.h5"
    dc = read(path, scan_shape=(4, 4))
    with h5py.File(path, "r") as f:
        frames = f["entry/data/data"][()]
    np.testing.assert_array_equal(dc.data, frames.reshape(4, 4, 192, 192))
