"""The benchmarks' per-pattern Cramér–Rao bound (``benchmarks/ccstae_benchmark.crb``) is the yardstick
of the low-dose and CC-ST-AE benchmarks: it must not depend on what lies beyond the detector."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
crb = pytest.importorskip("ccstae_benchmark").crb

from distill4d.simulate.kinematic import strained_scan  # noqa: E402


def test_bound_does_not_read_the_detector_edge():
    dc, _ = strained_scan((1, 1), kind="uniform", strain=0.0, edge_px=2.0, background=0.02)
    p = np.asarray(dc.data[0, 0], np.float64)
    qx, qy = np.indices(p.shape)
    probe = (np.hypot(qx - 64, qy - 64) < 6).astype(np.float64)
    nearest = crb(p, probe, 1e3)
    mirror = crb(p, probe, 1e3, mode="mirror")
    zeros = crb(p, probe, 1e3, mode="constant")
    for k in nearest:
        # continuing the pattern by its edge values or by its mirror image: the same bound within 1 %
        assert nearest[k] == pytest.approx(mirror[k], rel=0.01), k
    # zeros beyond the detector fake information at its edge (the old bound): the check can tell
    assert min(zeros[k] / nearest[k] for k in nearest) < 0.9
