"""A permutation-, rotation- and mirror-invariant set network on a pattern's spot list.

Input (:func:`spot_sets`): the ``K`` strongest spots of a pattern (direct beam dropped,
intensities raised to 0.5 and divided by the strongest), as vectors ``v = g / s`` in the units
of the pattern's scale ``s`` (1/Å, the shortest strong ``|g|``, as in
:mod:`distill4d.identify.encode`), so a calibration error changes nothing.

Network (:class:`SetNet`, applied with NumPy; trained by :func:`fit_setnet` with PyTorch):
per spot ``x_i = [log u_i, w_i, log w_i]`` (``u = |v|``, ``w`` the relative intensity);
per pair ``e_ij`` = Gaussian bins of ``|v_i - v_j|``, of ``log(u_j / u_i)`` and of ``θ_ij``,
and ``cos θ_ij``, ``|sin θ_ij|`` (θ the unsigned angle between the two spots, 0-180 degrees):
only lengths and unsigned angles, so the
network's output is exactly invariant to an in-plane rotation and a mirror of the pattern, and
(mean and max pooling) to the order of the spots. ``L`` message-passing layers
``h_i += ReLU(W [h_i, mean_j ReLU(A h_i + B h_j + C e_ij + c)] + b)``, then mean and max over
the spots and ``log(1 + n)`` (n the spots kept), a hidden layer and the class logits.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import Distill4dError
from .encode import kept_spots

__all__ = ["N_SPOTS", "SetNet", "fit_setnet", "spot_sets"]

#: Spots per pattern seen by the set network (the strongest).
N_SPOTS = 24
_D_CENTRES = np.linspace(0.0, 6.0, 25)  # pair distances |v_i - v_j| (units of s), bins 0.25 wide
_D_WIDTH = 0.25
_R_CENTRES = np.linspace(-1.5, 1.5, 25)  # log(u_j / u_i), bins 0.125 wide
_R_WIDTH = 0.125
_A_CENTRES = np.linspace(0.0, np.pi, 19)  # the angle between g_i and g_j, bins 10 degrees wide
_A_WIDTH = np.pi / 18
_N_EDGE = _D_CENTRES.size + _R_CENTRES.size + _A_CENTRES.size + 2


def spot_sets(qx_inv_A: Any, qy_inv_A: Any, intensity: Any, counts: Any, *, k: int = N_SPOTS,
              direct_beam_inv_A: float = 0.05, scale_threshold: float = 0.05) -> dict[str, np.ndarray]:
    """The set-network input of ``P`` NaN-padded spot lists ``(P, K0)`` (1/Å from the direct beam).

    Returns ``v`` (P, k, 2) the ``k`` strongest spots in units of the scale ``s`` (0 where
    absent), ``w`` (P, k) their intensity ** 0.5 over the strongest's, ``mask`` (P, k) which
    are spots, ``n`` (P,) spots kept (besides the direct beam) and ``scale`` (P,) ``s`` in 1/Å.
    A pattern with no spot left has ``mask`` all False and ``scale`` NaN.
    """
    qx, qy, it = (np.asarray(a, dtype=np.float64) for a in (qx_inv_A, qy_inv_A, intensity))
    cnt = np.asarray(counts)
    if qx.ndim != 2 or qy.shape != qx.shape or it.shape != qx.shape or cnt.shape != qx.shape[:1]:
        raise Distill4dError(f"spot lists must be qx, qy, intensity of one shape (P, K) and counts (P,), got "
                             f"{qx.shape}, {qy.shape}, {it.shape} and {cnt.shape}")
    P, K0 = qx.shape
    used = np.arange(K0) < cnt[:, None]
    qx, qy, g, keep, w, _, scale = kept_spots(qx, qy, it, used, direct_beam_inv_A, 0.5, scale_threshold)
    wmax = w.max(axis=1, keepdims=True) if K0 else np.zeros((P, 1))
    w = w / np.where(wmax > 0, wmax, 1.0)  # the strongest kept spot 1
    scale = np.where(np.isfinite(scale), scale, np.nan)
    if K0 < k:
        pad = ((0, 0), (0, k - K0))
        qx, qy, w, keep = np.pad(qx, pad), np.pad(qy, pad), np.pad(w, pad), np.pad(keep, pad)
    # the k strongest, ties broken by position so that the chosen set does not depend on the order
    order = np.lexsort((qy, qx, -np.where(keep, w, -1.0)), axis=1)[:, :k]
    mask = np.take_along_axis(keep, order, axis=1)
    s = np.where(np.isfinite(scale), scale, 1.0)[:, None]
    v = np.stack([np.take_along_axis(qx, order, axis=1) / s, np.take_along_axis(qy, order, axis=1) / s], axis=-1)
    v = np.where(mask[..., None], v, 0.0)
    return {"v": v, "w": np.where(mask, np.take_along_axis(w, order, axis=1), 0.0), "mask": mask,
            "n": keep.sum(axis=1), "scale": scale}


def _inputs(xp: Any, v: Any, w: Any, mask: Any) -> tuple[Any, Any]:
    """Node (P, k, 3) and edge (P, k, k, E) features; ``xp`` numpy or torch (the same formulas)."""
    m = mask.astype(v.dtype) if xp is np else mask.to(v.dtype)
    u = xp.sqrt((v**2).sum(-1) + 1e-12)
    lw = xp.log(xp.clip(w, 1e-4, None)) if xp is np else xp.log(w.clamp(min=1e-4))
    nodes = xp.stack([xp.log(u + 1e-6) * m, w, lw * m], -1)
    dv = v[:, :, None, :] - v[:, None, :, :]
    d = xp.sqrt((dv**2).sum(-1) + 1e-12)
    dot = (v[:, :, None, :] * v[:, None, :, :]).sum(-1)
    cross = v[:, :, None, 0] * v[:, None, :, 1] - v[:, :, None, 1] * v[:, None, :, 0]
    uu = u[:, :, None] * u[:, None, :] + 1e-12
    r = xp.log(u[:, None, :] + 1e-6) - xp.log(u[:, :, None] + 1e-6)
    dc = xp.asarray(_D_CENTRES, dtype=v.dtype) if xp is np else xp.tensor(_D_CENTRES, dtype=v.dtype)
    rc = xp.asarray(_R_CENTRES, dtype=v.dtype) if xp is np else xp.tensor(_R_CENTRES, dtype=v.dtype)
    ac = xp.asarray(_A_CENTRES, dtype=v.dtype) if xp is np else xp.tensor(_A_CENTRES, dtype=v.dtype)
    ang = xp.arctan2(xp.abs(cross), dot)
    parts = [xp.exp(-(((d[..., None] - dc) / _D_WIDTH) ** 2)), xp.exp(-(((r[..., None] - rc) / _R_WIDTH) ** 2)),
             xp.exp(-(((ang[..., None] - ac) / _A_WIDTH) ** 2)), (dot / uu)[..., None], (xp.abs(cross) / uu)[..., None]]
    edges = xp.concatenate(parts, -1) if xp is np else xp.cat(parts, -1)
    return nodes, edges


class SetNet:
    """The trained set network as plain arrays (``params``: name -> array), applied with NumPy."""

    def __init__(self, params: dict[str, np.ndarray], classes: np.ndarray, layers: int) -> None:
        self.params, self.classes_, self.layers = params, np.asarray(classes), int(layers)

    def logits(self, sets: dict[str, np.ndarray], chunk: int = 512) -> np.ndarray:
        """Class logits (P, C) of the sets of :func:`spot_sets` (rows without spots get zeros)."""
        P = sets["v"].shape[0]
        out = np.zeros((P, self.classes_.size))
        for s in range(0, P, chunk):
            sl = slice(s, min(s + chunk, P))
            x = sets["x"][sl] if "x.mean" in self.params else None
            out[sl] = self._forward(sets["v"][sl].astype(np.float32), sets["w"][sl].astype(np.float32),
                                    sets["mask"][sl], sets["n"][sl], x)
        return out

    def predict_proba(self, sets: dict[str, np.ndarray]) -> np.ndarray:
        """Class probabilities (P, C), columns ``classes_`` (softmax of :meth:`logits`)."""
        z = self.logits(sets)
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def _forward(self, v: np.ndarray, w: np.ndarray, mask: np.ndarray, n: np.ndarray, x: Any = None) -> np.ndarray:
        p = self.params
        relu = lambda x: np.maximum(x, 0)  # noqa: E731
        nodes, edges = _inputs(np, v, w, mask)
        m = mask.astype(np.float32)
        cnt = np.maximum(m.sum(1), 1.0)
        h = relu(nodes @ p["embed.W"] + p["embed.b"]) * m[..., None]
        for i in range(self.layers):
            pre = (h @ p[f"msg{i}.A"])[:, :, None, :] + (h @ p[f"msg{i}.B"])[:, None, :, :] \
                + edges @ p[f"msg{i}.C"] + p[f"msg{i}.c"]
            agg = (relu(pre) * m[:, None, :, None]).sum(2) / cnt[:, None, None]
            h = (h + relu(np.concatenate([h, agg], -1) @ p[f"upd{i}.W"] + p[f"upd{i}.b"])) * m[..., None]
        mean = h.sum(1) / cnt[:, None]
        mx = np.where(m[..., None] > 0, h, 0.0).max(1)
        z = np.concatenate([mean, mx, np.log1p(n.astype(np.float32))[:, None]], -1)
        if x is not None:
            z = np.concatenate([z, ((x - p["x.mean"]) / p["x.std"]).astype(np.float32)], -1)
        z = relu(z @ p["head.W0"] + p["head.b0"])
        return (z @ p["head.W1"] + p["head.b1"]).astype(np.float64)

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        out = {f"{prefix}/{k}": v.astype(np.float32) for k, v in self.params.items()}
        out[f"{prefix}/classes"] = self.classes_
        out[f"{prefix}/layers"] = np.array(self.layers)
        return out

    @classmethod
    def from_arrays(cls, z: Any, prefix: str) -> "SetNet":
        skip = {f"{prefix}/classes", f"{prefix}/layers"}
        params = {k[len(prefix) + 1:]: np.asarray(z[k], dtype=np.float32) for k in z.files
                  if k.startswith(prefix + "/") and k not in skip}
        return cls(params, np.asarray(z[f"{prefix}/classes"]), int(z[f"{prefix}/layers"]))


def fit_setnet(sets: dict[str, np.ndarray], y: np.ndarray, seed: int, *, hidden: int = 32, layers: int = 2,
               epochs: int = 12, lr: float = 2e-3, weight_decay: float = 1e-4, batch: int = 64,
               state: dict[str, Any] | None = None, callback: Any = None) -> SetNet:
    """Train a :class:`SetNet` on the sets of :func:`spot_sets` and labels ``y`` (PyTorch, CPU,
    seeded; AdamW, one-cycle learning rate, 10 % of the spots dropped at random and dropout 0.2
    before the last layer in training). ``sets`` may also hold ``x`` (P, F), per-pattern
    features (standardised) joined to the pooled spots before the head. ``state``: a dict updated after every epoch (``epoch``, the module's and
    the optimiser's state) and resumed from when it holds one; ``callback(epoch, loss)``."""
    try:
        import torch
    except ImportError:
        raise Distill4dError("the set network needs PyTorch to train: pip install 'distill4d[ml]'") from None
    classes = np.unique(y)
    Y = torch.tensor(np.searchsorted(classes, y), dtype=torch.int64)
    V = torch.tensor(sets["v"], dtype=torch.float32)
    W = torch.tensor(sets["w"], dtype=torch.float32)
    M = torch.tensor(sets["mask"])
    N = torch.tensor(np.log1p(sets["n"]), dtype=torch.float32)
    extra = "x" in sets
    if extra:
        xm, xs = sets["x"].mean(0), sets["x"].std(0) + 1e-6
        X = torch.tensor((sets["x"] - xm) / xs, dtype=torch.float32)
    else:
        X = torch.zeros((len(Y), 0))
    with torch.random.fork_rng(devices=[]):  # seeded here, the caller's generator restored after
        torch.manual_seed(seed)
        return _train(torch, V, W, M, N, X, Y, extra, classes, seed, hidden, layers, epochs, lr, weight_decay, batch,
                      state, callback, (xm, xs) if extra else None)


def _train(torch: Any, V: Any, W: Any, M: Any, N: Any, X: Any, Y: Any, extra: bool, classes: np.ndarray, seed: int,
           hidden: int, layers: int, epochs: int, lr: float, weight_decay: float, batch: int, state: Any,
           callback: Any, xnorm: Any) -> SetNet:
    H, E = hidden, _N_EDGE
    nn = torch.nn
    mods = nn.ModuleDict({"embed": nn.Linear(3, H), "head0": nn.Linear(2 * H + 1 + X.shape[1], 2 * H),
                          "head1": nn.Linear(2 * H, classes.size)})
    for i in range(layers):
        mods[f"msgA{i}"] = nn.Linear(H, H, bias=False)
        mods[f"msgB{i}"] = nn.Linear(H, H, bias=False)
        mods[f"msgC{i}"] = nn.Linear(E, H)
        mods[f"upd{i}"] = nn.Linear(2 * H, H)
    drop = nn.Dropout(0.2)

    def forward(v: Any, w: Any, mask: Any, logn: Any, x: Any) -> Any:
        nodes, edges = _inputs(torch, v, w, mask)
        m = mask.float()
        cnt = m.sum(1).clamp(min=1.0)
        h = torch.relu(mods["embed"](nodes)) * m[..., None]
        for i in range(layers):
            pre = mods[f"msgA{i}"](h)[:, :, None] + mods[f"msgB{i}"](h)[:, None] + mods[f"msgC{i}"](edges)
            agg = torch.einsum("pijh,pj->pih", torch.relu(pre), m) / cnt[:, None, None]
            h = (h + torch.relu(mods[f"upd{i}"](torch.cat([h, agg], -1)))) * m[..., None]
        mean = h.sum(1) / cnt[:, None]
        mx = torch.where(m[..., None] > 0, h, torch.zeros_like(h)).amax(1)
        z = torch.relu(mods["head0"](torch.cat([mean, mx, logn[:, None], x], -1)))
        return mods["head1"](drop(z))

    opt = torch.optim.AdamW(mods.parameters(), lr, weight_decay=weight_decay)
    steps = epochs * ((len(Y) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    start = 0
    if state and "epoch" in state:
        mods.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        start = state["epoch"]
    for ep in range(start, epochs):
        torch.manual_seed(seed * 100003 + ep)  # dropout: the same masks whether resumed or not
        rng = np.random.default_rng([seed, ep])
        g = torch.Generator().manual_seed(int(rng.integers(2**31)))
        mods.train()
        drop.train()
        order = torch.from_numpy(rng.permutation(len(Y)))
        total = 0.0
        for b in range(0, len(Y), batch):
            i = order[b : b + batch]
            m = M[i] & (torch.rand(M[i].shape, generator=g) > 0.1)
            m[:, 0] |= M[i][:, 0]  # keep the strongest spot
            loss = torch.nn.functional.cross_entropy(forward(V[i], W[i], m, N[i], X[i]), Y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(i)
        if state is not None:
            state.update(epoch=ep + 1, model=mods.state_dict(), opt=opt.state_dict(), sched=sched.state_dict())
        if callback is not None:
            callback(ep + 1, total / len(Y))
    sd = {k: t.detach().numpy().copy() for k, t in mods.state_dict().items()}
    params = {"embed.W": sd["embed.weight"].T, "embed.b": sd["embed.bias"],
              "head.W0": sd["head0.weight"].T, "head.b0": sd["head0.bias"],
              "head.W1": sd["head1.weight"].T, "head.b1": sd["head1.bias"]}
    for i in range(layers):
        params.update({f"msg{i}.A": sd[f"msgA{i}.weight"].T, f"msg{i}.B": sd[f"msgB{i}.weight"].T,
                       f"msg{i}.C": sd[f"msgC{i}.weight"].T, f"msg{i}.c": sd[f"msgC{i}.bias"],
                       f"upd{i}.W": sd[f"upd{i}.weight"].T, f"upd{i}.b": sd[f"upd{i}.bias"]})
    if extra:
        params.update({"x.mean": xnorm[0], "x.std": xnorm[1]})
    return SetNet({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in params.items()}, classes, layers)
