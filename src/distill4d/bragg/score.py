"""Scoring a disk detection against ground truth: intensity-weighted accuracy.

After Munshi et al., npj Comput. Mater. 8:254 (2022): predicted and true peaks closer
than a threshold (1/Å) are matched greedily, closest pairs first, each peak at most once.
In each pattern the intensities of each set are normalised to sum to 1; then
``TP`` = normalised intensity of the matched true peaks, ``FN`` = that of the unmatched
true peaks (``TP + FN = 1``), ``FP`` = normalised intensity of the unmatched predicted
peaks, and ``accuracy = TP / (TP + FP + FN)``. Over a scan, ``TP``, ``FP`` and ``FN`` are
summed over the patterns before the ratio (patterns with no peak in either set add nothing).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .._validate import positive_float
from ..errors import Distill4dError
from .peaks import BraggPeaks

__all__ = ["DetectionScore", "disk_detection_accuracy", "match_peaks"]


@dataclasses.dataclass(frozen=True)
class DetectionScore:
    """Result of :func:`disk_detection_accuracy`.

    ``accuracy`` (aggregate), summed ``tp``, ``fp``, ``fn`` (normalised intensities),
    ``per_position`` accuracy (NaN where neither set has a peak; shape ``(Rx, Ry)`` or ``()``),
    ``n_matched`` matched pairs and ``mean_error_px`` their mean distance in pixels.
    """

    accuracy: float
    tp: float
    fp: float
    fn: float
    per_position: np.ndarray
    n_matched: int
    mean_error_px: float


def match_peaks(pred_xy: Any, true_xy: Any, max_distance: float) -> tuple[np.ndarray, np.ndarray]:
    """Greedy one-to-one matching, closest pairs first, of peaks within ``max_distance``.

    Returns index arrays ``(i_pred, i_true)`` of the matched pairs (same units as the inputs).
    """
    p = np.asarray(pred_xy, dtype=np.float64).reshape(-1, 2)
    t = np.asarray(true_xy, dtype=np.float64).reshape(-1, 2)
    if p.size == 0 or t.size == 0:
        return np.zeros(0, int), np.zeros(0, int)
    d = np.hypot(p[:, None, 0] - t[None, :, 0], p[:, None, 1] - t[None, :, 1])
    ip, it = np.nonzero(d <= max_distance)
    order = np.argsort(d[ip, it], kind="stable")
    used_p = np.zeros(len(p), bool)
    used_t = np.zeros(len(t), bool)
    mp, mt = [], []
    for a, b in zip(ip[order], it[order]):
        if not used_p[a] and not used_t[b]:
            used_p[a] = used_t[b] = True
            mp.append(a)
            mt.append(b)
    return np.asarray(mp, int), np.asarray(mt, int)


def _one(pred: np.ndarray, true: np.ndarray, thr_px: float) -> tuple[float, float, float, int, float]:
    pred = pred[np.isfinite(pred).all(axis=1)] if pred.size else pred.reshape(0, 3)
    true = true[np.isfinite(true).all(axis=1)] if true.size else true.reshape(0, 3)
    ip, it = match_peaks(pred[:, :2], true[:, :2], thr_px)
    wp = np.clip(pred[:, 2], 0, None)
    wt = np.clip(true[:, 2], 0, None)
    wp = wp / wp.sum() if wp.sum() > 0 else np.full(len(wp), 1 / max(len(wp), 1))
    wt = wt / wt.sum() if wt.sum() > 0 else np.full(len(wt), 1 / max(len(wt), 1))
    tp = float(wt[it].sum())
    fn = float(wt.sum() - tp)
    fp = float(wp.sum() - wp[ip].sum())
    err = float(np.hypot(*(pred[ip, :2] - true[it, :2]).T).sum()) if ip.size else 0.0
    return tp, fp, fn, ip.size, err


def _as_lists(x: Any, name: str) -> tuple[list[np.ndarray], tuple[int, ...], BraggPeaks | None]:
    if isinstance(x, BraggPeaks):
        return [x[i, j] for i in range(x.scan_shape[0]) for j in range(x.scan_shape[1])], x.scan_shape, x
    if isinstance(x, (list, tuple)):
        return [np.asarray(a, dtype=np.float64).reshape(-1, 3) for a in x], (len(x),), None
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 2 and arr.shape[1] == 3 or arr.size == 0:
        return [arr.reshape(-1, 3)], (), None
    raise Distill4dError(f"{name} must be BraggPeaks, an (m, 3) array (qx, qy, intensity) or a list of them, got {arr.shape}")


def disk_detection_accuracy(
    pred: Any, truth: Any, threshold_inv_A: float = 0.05, q_pixel_inv_A: float | None = None
) -> DetectionScore:
    """Intensity-weighted detection accuracy of ``pred`` against ``truth`` (see module docstring).

    Parameters
    ----------
    pred, truth : :class:`BraggPeaks`, one ``(m, 3)`` array (qx, qy in pixels, intensity) or a
        list of them (one per pattern); both must describe the same patterns.
    threshold_inv_A : largest distance of a match, in 1/Å.
    q_pixel_inv_A : detector pixel size in 1/Å (default: from the calibration of a BraggPeaks).
    """
    thr = positive_float("threshold_inv_A", threshold_inv_A)
    P, pshape, pb = _as_lists(pred, "pred")
    T, tshape, tb = _as_lists(truth, "truth")
    if len(P) != len(T):
        raise Distill4dError(f"pred has {len(P)} patterns but truth has {len(T)}")
    if q_pixel_inv_A is None:
        for b in (pb, tb):
            if b is not None and b.calibration.q_pixel_inv_A is not None:
                q_pixel_inv_A = b.calibration.q_pixel_inv_A
                break
        else:
            raise Distill4dError("q_pixel_inv_A is needed (no BraggPeaks with a calibrated pixel size was given)")
    thr_px = thr / positive_float("q_pixel_inv_A", q_pixel_inv_A)
    tp = fp = fn = err = 0.0
    nm = 0
    per = np.full(len(P), np.nan)
    for k, (p, t) in enumerate(zip(P, T)):
        a, b, c, m, e = _one(p, t, thr_px)
        tp, fp, fn, nm, err = tp + a, fp + b, fn + c, nm + m, err + e
        if a + b + c > 0:
            per[k] = a / (a + b + c)
    total = tp + fp + fn
    shape = tshape if tb is not None else pshape
    return DetectionScore(
        accuracy=float(tp / total) if total > 0 else float("nan"),
        tp=tp,
        fp=fp,
        fn=fn,
        per_position=per.reshape(shape),
        n_matched=nm,
        mean_error_px=err / nm if nm else float("nan"),
    )
