"""Adam without ``torch.optim``: the update of ``torch.optim.Adam`` (its CPU single-tensor path, L2
weight decay added to the gradient, complex parameters as pairs of reals), and its state-dict format.

Why: the first ``torch.optim`` optimiser imports ``torch._dynamo`` (about 1.2-1.5 CPU s on the
benchmark machine), a fixed cost of every command that reconstructs or trains. The tests check this
update against ``torch.optim.Adam`` step for step (bit for bit on the CPU).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["Adam"]


class Adam:
    """``torch.optim.Adam(params, lr, betas, eps, weight_decay)`` (no amsgrad, no maximize).

    ``params``: tensors, or groups ``{"params": [...], "lr": ..., ...}`` (other keys are kept, e.g.
    a name); ``param_groups``, ``zero_grad``, ``step``, ``state_dict`` and ``load_state_dict``
    behave as ``torch.optim``'s (a state dict of either loads into the other).

    A group's ``shared_dim`` (an int; not in ``torch.optim``) divides each element's step by the root of
    the second moments summed along that axis instead of its own: the elements along it (e.g. a probe's
    incoherent modes) move by their gradient relative to the strongest, not all by about ``lr``. With
    one element along the axis this is ``torch.optim.Adam`` bit for bit.
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
        items = list(params)
        groups = items if items and isinstance(items[0], dict) else [{"params": items}]
        self.param_groups: list[dict[str, Any]] = []
        for g in groups:
            group = {**defaults, **g, "params": list(g["params"])}
            self.param_groups.append(group)
        self.state: dict[Any, dict[str, Any]] = {}

    def _params(self) -> list[Any]:
        return [p for g in self.param_groups for p in g["params"]]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self._params():
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                if p.grad.grad_fn is not None:
                    p.grad.detach_()
                else:
                    p.grad.requires_grad_(False)
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        for g in self.param_groups:
            lr, (beta1, beta2), eps, wd = float(g["lr"]), g["betas"], g["eps"], g["weight_decay"]
            shared = g.get("shared_dim")
            for p in g["params"]:
                if p.grad is None:
                    continue
                st = self.state.get(p)
                if st is None:
                    st = self.state[p] = {"step": 0, "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                                          "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
                st["step"] += 1
                grad, m, v, param = p.grad, st["exp_avg"], st["exp_avg_sq"], p
                if wd != 0:
                    grad = grad.add(param, alpha=wd)
                if torch.is_complex(param):
                    grad, m, v, param = (torch.view_as_real(t) for t in (grad, m, v, param))
                m.lerp_(grad, 1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                step = float(st["step"])
                step_size = lr / (1 - beta1**step)
                vs = v if shared is None else v.sum(dim=shared, keepdim=True)
                denom = (vs.sqrt() / (1 - beta2**step) ** 0.5).add_(eps)
                param.addcdiv_(m, denom, value=-step_size)

    def state_dict(self) -> dict[str, Any]:
        """``torch.optim``'s format: parameters numbered in group order."""
        index = {id(p): i for i, p in enumerate(self._params())}
        state = {index[id(p)]: {"step": torch.tensor(float(st["step"])), "exp_avg": st["exp_avg"],
                                "exp_avg_sq": st["exp_avg_sq"]} for p, st in self.state.items()}
        groups, k = [], 0
        for g in self.param_groups:
            n = len(g["params"])
            groups.append({**{key: v for key, v in g.items() if key != "params"}, "params": list(range(k, k + n))})
            k += n
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, data: dict[str, Any]) -> None:
        """Load :meth:`state_dict` (or ``torch.optim.Adam``'s): moments, step counts and each group's options."""
        params = self._params()
        saved = data["param_groups"]
        if len(saved) != len(self.param_groups) or any(len(s["params"]) != len(g["params"])
                                                       for s, g in zip(saved, self.param_groups)):
            raise ValueError("optimizer state: the saved parameter groups do not match these parameters")
        for s, g in zip(saved, self.param_groups):
            for key in ("lr", "betas", "eps", "weight_decay"):
                if key in s:
                    g[key] = tuple(s[key]) if key == "betas" else s[key]
        order = [i for s in saved for i in s["params"]]
        self.state = {}
        for i, p in zip(order, params):
            st = data["state"].get(i)
            if st is None:
                continue
            step = st["step"]
            self.state[p] = {"step": int(round(float(step))) if not isinstance(step, int) else step,
                             "exp_avg": st["exp_avg"].to(device=p.device, dtype=p.dtype),
                             "exp_avg_sq": st["exp_avg_sq"].to(device=p.device, dtype=p.dtype)}
