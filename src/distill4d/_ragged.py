"""Ragged lists (rows stored one after another in flat arrays) as padded arrays."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["pad_rows"]


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
