"""The mean pattern of the patterns without NaN/Inf: what the probe estimate and the detection thresholds start from."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..datacube import DataCube
from ..errors import Distill4dError

__all__ = ["finite_mean_pattern"]


def _finite_sum_batch(batch: np.ndarray) -> np.ndarray:
    b = np.asarray(batch, dtype=np.float64)
    good = np.isfinite(b).all(axis=(1, 2))
    return np.stack([b[good].sum(axis=0), np.full(b.shape[1:], float(good.sum()))])


def finite_mean_pattern(datacube: DataCube, **engine_options: Any) -> np.ndarray:
    """Mean pattern over the patterns without NaN/Inf (float64); ValueError if there are none."""
    from ..engine import reduce_patterns

    total = reduce_patterns(datacube, _finite_sum_batch, combine="sum", **engine_options)
    if total[1, 0, 0] == 0:
        raise Distill4dError("every pattern of the datacube contains NaN or Inf values; there is nothing to detect")
    return total[0] / total[1, 0, 0]
