"""Tests of distill4d.imaging.origin: the bright-field disk of sparse (counting) patterns."""

from __future__ import annotations

import numpy as np
import pytest
from _synth import soft_disk

from distill4d import Distill4dError
from distill4d.imaging import find_bf_disk


@pytest.mark.parametrize(("radius", "fill"), [(10.0, 0.1), (10.0, 0.3), (20.0, 0.2)])
def test_sparse_counting_pattern_finds_the_disk_and_not_the_hot_pixel(radius: float, fill: float) -> None:
    # a mean pattern that is mostly zeros: a 3x3 median filter leaves (almost) nothing of the disk
    rng = np.random.default_rng(1)
    disk = soft_disk((64, 64), (30.3, 35.7), radius)
    p = (rng.random((64, 64)) < fill * disk) * rng.integers(1, 4, (64, 64)).astype(float)
    p[5, 60] = 1e4  # a hot pixel far brighter than everything else
    p[50, 8], p[10, 10] = 3, 5  # stray counts
    cx, cy, r = find_bf_disk(p)
    assert abs(cx - 30.3) < 1.5 and abs(cy - 35.7) < 1.5
    assert abs(r - radius) < 0.15 * radius


def test_scattered_counts_are_no_disk_and_the_error_names_the_flags() -> None:
    p = np.zeros((128, 256))
    p[88, 52] = 7.75  # a hot pixel and a few stray counts, like the Merlin hot-pixel test files
    p[21, 111] = p[23, 53] = p[76, 7] = 0.5
    with pytest.raises(Distill4dError, match="no bright-field disk found") as info:
        find_bf_disk(p)
    msg = str(info.value)
    assert "only 4 of its 32768 pixels" in msg and "88, 52" in msg
    assert "--origin-px QX QY" in msg and "--bf R" in msg and "origin=(qx, qy)" in msg
    assert "\n" not in msg
    with pytest.raises(Distill4dError, match="no positive intensity.*--origin-px"):
        find_bf_disk(np.zeros((8, 8)))
