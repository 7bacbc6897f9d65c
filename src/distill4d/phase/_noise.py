"""The shot-noise floor of ptychography's amplitude error, and the automatic choice of its loss.

For a pixel of counted data ``y ~ Poisson(λ)`` the amplitude error of a model that predicts ``λ``
exactly is ``f(λ) = E[(√y − √λ)²]``: about ``2λ`` for ``λ ≪ 1``, ``1/4 + 7/(64 λ)`` for ``λ ≫ 1``. The
ratio of a reconstruction's error ``Σ (√I − √y)²`` to ``Σ f(I)``, over the pixels where it predicts at least
:data:`BRIGHT_COUNTS`, tells how well its model explains the data: about 1 when only the shot noise is
left, well above 1 when the model is wrong (a single slice for a thick crystal). ``loss="auto"`` of
:func:`distill4d.phase.reconstruct` uses it.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

#: ``loss="auto"``: the Poisson loss where a short single-slice trial's amplitude error is below this
#: factor times its shot-noise expectation, the amplitude loss above it. Chosen on the validation scans of
#: ``benchmarks/ptycho_loss_choice.py``, between their trial ratios (thin MoS2 1.01-1.21, where the Poisson loss
#: did better; 97-120 Å Mo, CeO2, MgO and BaTiO3 3.3-20, where the amplitude loss did better in all 4 runs at
#: 2e4 e⁻ and 2 of 4 at 2e3, within 0.007 SSIM in the other two).
AUTO_POISSON_RATIO = 2.0
#: Side (scan positions) of the central patch of that trial, and its iterations.
AUTO_TRIAL_POSITIONS = 16
AUTO_TRIAL_ITERATIONS = 2
#: The ratio is taken over the pixels where the model predicts at least this many counts: in dimmer ones a
#: model that predicts too little has a lower amplitude error than the truth (``E[y] = λ`` against about ``2λ``).
BRIGHT_COUNTS = 1.0
_LO, _HI, _N = 1e-4, 1e3, 512


@functools.lru_cache(maxsize=1)
def _table() -> np.ndarray:
    """``f(λ)`` on ``_N`` points log-spaced over ``[_LO, _HI]`` (exact sums over ``y``)."""
    lam = np.geomspace(_LO, _HI, _N)
    y = np.arange(0, int(_HI + 12 * math.sqrt(_HI) + 40), dtype=np.float64)
    log_fact = np.concatenate([[0.0], np.cumsum(np.log(y[1:]))])
    out = np.empty(_N)
    for i, l in enumerate(lam):
        k = y[: int(l + 12 * math.sqrt(l) + 40)]
        p = np.exp(k * math.log(l) - l - log_fact[: k.size])
        out[i] = float(np.sum(p * (np.sqrt(k) - math.sqrt(l)) ** 2))
    return out


def shot_noise_floor(torch: Any, lam: Any) -> Any:
    """``E[(√y − √λ)²]`` for ``y ~ Poisson(λ)``, elementwise, of a tensor ``lam`` of counts (≥ 0; NaN and
    negative values count as 0, so that a diverging model reaches the divergence guard, not an index error)."""
    lam = torch.nan_to_num(lam, nan=0.0, posinf=math.inf).clamp(min=0)
    table = torch.as_tensor(_table(), dtype=lam.dtype, device=lam.device)
    u0, du = math.log(_LO), (math.log(_HI) - math.log(_LO)) / (_N - 1)
    pos = ((torch.log(lam.clamp(_LO, _HI)) - u0) / du).clamp(0, _N - 1)
    i = pos.floor().long().clamp(max=_N - 2)
    w = pos - i
    mid = table[i] * (1 - w) + table[i + 1] * w
    return torch.where(lam < _LO, 2 * lam, torch.where(lam > _HI, 0.25 + 7 / (64 * lam.clamp(min=_HI)), mid))


def counted(data: Any, samples: int = 64) -> bool:
    """Whether patterns of ``data`` (``(Rx, Ry, Qx, Qy)``, array-like) look like counts: non-negative
    whole numbers, in up to ``samples`` patterns spread over the scan."""
    rx, ry = data.shape[:2]
    idx = np.linspace(0, rx * ry - 1, min(samples, rx * ry)).round().astype(int)
    for i in idx:
        p = np.asarray(data[i // ry, i % ry])
        if p.dtype.kind == "u":
            continue
        if p.dtype.kind not in "if" or not np.all(np.isfinite(p)) or p.min() < 0 or np.any(p != np.round(p)):
            return False
    return True
