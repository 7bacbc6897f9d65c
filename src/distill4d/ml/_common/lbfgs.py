"""A small full-batch L-BFGS minimiser for PyTorch parameters: :func:`lbfgs`.

Why not ``torch.optim.LBFGS``: the first ``torch.optim`` optimiser imports ``torch._dynamo`` (about
1.2-1.9 CPU s on the benchmark machine; see :mod:`.adam`), more than the fits this serves take.
Two-loop recursion over the last ``history`` steps, backtracking (Armijo) line search, a step kept
only when it has positive curvature (``yᵀs > 0``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["lbfgs"]


def lbfgs(params: list[Any], loss_fn: Callable[[], Any], *, max_iter: int = 300, history: int = 20,
          tol_grad: float = 1e-7, tol_change: float = 1e-10) -> tuple[float, int]:
    """Minimise ``loss_fn()`` (a scalar tensor of ``params``) in place; returns ``(loss, iterations)``.

    Stops after ``max_iter`` iterations, when the largest gradient component is at most ``tol_grad``,
    or when the loss changes by less than ``tol_change`` (relative) in an iteration."""
    import torch

    params = [p for p in params if p.requires_grad]

    def flat_grad() -> Any:
        return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])

    def evaluate() -> tuple[float, Any]:
        for p in params:
            p.grad = None
        loss = loss_fn()
        loss.backward()
        return float(loss.detach()), flat_grad().detach().double()

    def add(step: Any, t: float) -> None:
        with torch.no_grad():
            i = 0
            for p in params:
                n = p.numel()
                p.add_(step[i : i + n].view_as(p).to(p.dtype), alpha=t)
                i += n

    f, g = evaluate()
    s_hist: list[Any] = []
    y_hist: list[Any] = []
    it = 0
    for it in range(1, int(max_iter) + 1):
        if float(g.abs().max()) <= tol_grad:
            it -= 1
            break
        # two-loop recursion: d = -H g
        q = g.clone()
        alphas = []
        for s, y in zip(reversed(s_hist), reversed(y_hist)):
            a = float(s @ q) / float(y @ s)
            alphas.append(a)
            q -= a * y
        if s_hist:
            q *= float(s_hist[-1] @ y_hist[-1]) / float(y_hist[-1] @ y_hist[-1])
        else:
            q *= min(1.0, 1.0 / max(float(g.abs().sum()), 1e-30))
        for (s, y), a in zip(zip(s_hist, y_hist), reversed(alphas)):
            b = float(y @ q) / float(y @ s)
            q += (a - b) * s
        d = -q
        gtd = float(g @ d)
        if gtd >= 0:  # not a descent direction: forget the history, follow the gradient
            s_hist.clear()
            y_hist.clear()
            d = -g * min(1.0, 1.0 / max(float(g.abs().sum()), 1e-30))
            gtd = float(g @ d)
        t, taken = 1.0, 0.0
        for _ in range(30):
            add(d, t - taken)
            taken = t
            f_new, g_new = evaluate()
            if f_new <= f + 1e-4 * t * gtd:
                break
            t *= 0.5
        else:  # no decrease along d: back to the start point and stop
            add(d, -taken)
            break
        s, y = t * d, g_new - g
        if float(y @ s) > 1e-12 * float(s @ s):
            s_hist.append(s)
            y_hist.append(y)
            if len(s_hist) > history:
                s_hist.pop(0)
                y_hist.pop(0)
        change = abs(f - f_new)
        f, g = f_new, g_new
        if change <= tol_change * max(abs(f), 1e-30):
            break
    return f, it
