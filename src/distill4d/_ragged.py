"""Ragged lists (rows stored one after another in flat arrays): checked, and as padded arrays."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import Distill4dError

__all__ = ["pad_rows", "spot_lists"]


def pad_rows(flat: Sequence[np.ndarray], starts: np.ndarray, counts: np.ndarray,
             fill: float = np.nan) -> tuple[list[np.ndarray], np.ndarray]:
    """Rows ``i`` = ``a[starts[i] : starts[i] + counts[i]]`` of each flat array ``a`` of ``flat``, padded
    with ``fill`` to ``(n, K)`` float64 (``K`` the largest count, at least 1); and the mask ``(n, K)``
    of the entries that hold data."""
    counts = np.asarray(counts)
    K = int(counts.max(initial=1))
    col = np.arange(K)
    used = col < counts[:, None]
    src = (np.asarray(starts, dtype=np.int64)[:, None] + col)[used]
    out = []
    for a in flat:
        p = np.full((counts.size, K), fill)
        p[used] = a[src]
        out.append(p)
    return out, used


def spot_lists(qx_inv_A: Any, qy_inv_A: Any, intensity: Any,
               counts: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Spot lists stored one after another, checked: ``(qx, qy, intensity)`` flat float64 arrays (1/Å,
    1/Å, any unit), ``counts`` (P,) and the offsets (P + 1,) of each pattern's first spot.
    Distill4dError for arrays of different lengths, counts that do not add up, NaN or Inf."""
    qx = np.asarray(qx_inv_A, dtype=np.float64)
    qy = np.asarray(qy_inv_A, dtype=np.float64)
    it = np.asarray(intensity, dtype=np.float64)
    n = np.asarray(counts)
    if qx.ndim != 1 or qy.shape != qx.shape or it.shape != qx.shape:
        raise Distill4dError(
            f"qx_inv_A, qy_inv_A and intensity must be flat arrays of one length (N,), got "
            f"{qx.shape}, {qy.shape}, {it.shape}"
        )
    if n.ndim != 1 or n.dtype.kind not in "iu" or np.any(n < 0) or int(n.sum()) != qx.size:
        raise Distill4dError(f"counts must be (P,) non-negative integers summing to {qx.size} spots, got shape "
                             f"{n.shape} summing to {int(n.sum()) if n.dtype.kind in 'iu' else 'non-integers'}")
    offsets = np.concatenate([[0], np.cumsum(n)]).astype(np.int64)
    finite = np.isfinite(qx) & np.isfinite(qy) & np.isfinite(it)
    if not finite.all():
        bad = int(np.searchsorted(offsets, np.flatnonzero(~finite)[0], side="right") - 1)
        raise Distill4dError(f"spots of pattern {bad} contain NaN or Inf values (qx, qy or intensity)")
    return qx, qy, it, n, offsets
