"""A random-forest hierarchy for blind crystal identification from spot features.

Three levels, each a scikit-learn random forest on the features of
:mod:`distill4d.identify.encode`:

1. the crystal system (all seven, :data:`SYSTEMS`), from the calibration-free shape
   features (so a calibration error changes no class);
2. the space group within each system (from the same features);
3. per system, the conventional lattice parameters: ``log(a · s)``, ``log(b · s)``,
   ``log(c · s)`` (``s`` the pattern's scale in 1/Å, so these are dimensionless) and
   alpha, beta, gamma (degrees), regressed from the shape features; ``a = exp(·) / s``, so a
   calibration error of x % moves a, b, c by x % and the angles not at all.

The crystal-system classifier is a forest or (``system_classifier="mlp"``) a small multilayer
perceptron trained with PyTorch and applied with NumPy. Probabilities are the models' own
(leaf frequencies, softmax), not recalibrated. Many
patterns of one region combine by :func:`aggregate`: the sum of log-probabilities
(a naive-Bayes product, ``"log"``) or the sum of per-pattern margins (``"margin"``:
``p_c - max_{c' != c} p_c'``), which one overconfident wrong pattern cannot dominate.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._validate import positive_int
from ..errors import Distill4dError
from ..simulate.spots import SYSTEMS
from .encode import N_FEATURES, scale_inv_A, shape_features

__all__ = ["SYSTEMS", "CrystalIdentifier", "aggregate", "top_k"]

_FORMAT = "distill4d-crystal-identifier-2"


class _ArrayForest:
    """A trained random forest held as plain arrays (the form of a model file), predicting
    exactly as scikit-learn does: features cast to float32, ``x <= threshold`` goes left,
    leaf values normalised per tree (classifiers) and averaged over trees."""

    def __init__(self, left: np.ndarray, right: np.ndarray, feature: np.ndarray, threshold: np.ndarray,
                 value: np.ndarray, roots: np.ndarray, classes: np.ndarray | None) -> None:
        self.left, self.right, self.feature, self.threshold = left, right, feature, threshold
        self.value, self.roots = value, roots
        self.classes_ = classes

    @classmethod
    def from_sklearn(cls, forest: Any) -> "_ArrayForest":
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("left", "right", "feature", "threshold", "value")}
        roots, start = [], 0
        for est in forest.estimators_:
            t = est.tree_
            n = t.node_count
            leaf = t.children_left == -1
            parts["left"].append(np.where(leaf, -1, t.children_left + start))
            parts["right"].append(np.where(leaf, -1, t.children_right + start))
            parts["feature"].append(np.where(leaf, 0, t.feature))
            parts["threshold"].append(t.threshold)
            v = t.value[:, 0, :] if hasattr(forest, "classes_") else t.value[:, :, 0]
            if hasattr(forest, "classes_"):
                v = v / np.maximum(v.sum(axis=1, keepdims=True), 1e-300)
            parts["value"].append(v)
            roots.append(start)
            start += n
        cat = {k: np.concatenate(v) for k, v in parts.items()}
        classes = np.asarray(forest.classes_) if hasattr(forest, "classes_") else None
        return cls(cat["left"].astype(np.int64), cat["right"].astype(np.int64), cat["feature"].astype(np.int64),
                   cat["threshold"].astype(np.float64), cat["value"].astype(np.float64),
                   np.asarray(roots, dtype=np.int64), classes)

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """Compact arrays for a file: int32 children, int16 features, float32 thresholds rounded
        down (``x <= t`` is unchanged for every float32 ``x``) and the leaves' values only, float32."""
        leaf = self.left < 0
        t32 = np.where(leaf, 0.0, self.threshold).astype(np.float32)
        t32 = np.where(t32.astype(np.float64) > np.where(leaf, 0.0, self.threshold),
                       np.nextafter(t32, np.float32(-np.inf)), t32)
        out = {f"{prefix}/left": self.left.astype(np.int32), f"{prefix}/right": self.right.astype(np.int32),
               f"{prefix}/feature": self.feature.astype(np.int16), f"{prefix}/threshold": t32,
               f"{prefix}/leaf_value": self.value[leaf].astype(np.float32), f"{prefix}/roots": self.roots}
        if self.classes_ is not None:
            out[f"{prefix}/classes"] = self.classes_
        return out

    @classmethod
    def from_arrays(cls, z: Any, prefix: str) -> "_ArrayForest":
        get = lambda k: np.asarray(z[f"{prefix}/{k}"])  # noqa: E731
        classes = get("classes") if f"{prefix}/classes" in z else None
        left = get("left").astype(np.int64)
        leaf_value = get("leaf_value").astype(np.float64)
        value = np.zeros((left.size,) + leaf_value.shape[1:])
        value[left < 0] = leaf_value
        return cls(left, get("right").astype(np.int64), get("feature").astype(np.int64),
                   get("threshold").astype(np.float64), value, get("roots").astype(np.int64), classes)

    def _leaf_values(self, X: np.ndarray) -> np.ndarray:
        """Every tree's leaf value (T, P, outputs)."""
        X = np.asarray(X, dtype=np.float32).astype(np.float64)
        node = np.broadcast_to(self.roots[:, None], (self.roots.size, X.shape[0])).copy()  # (T, P)
        cols = np.arange(X.shape[0])
        while True:
            inner = self.left[node] >= 0
            if not inner.any():
                break
            go_left = X[cols, self.feature[node]] <= self.threshold[node]
            node = np.where(inner, np.where(go_left, self.left[node], self.right[node]), node)
        return self.value[node]

    def _chunked(self, X: np.ndarray, reduce: Any, chunk: int = 2048) -> list[Any]:
        """``reduce(leaf values (T, p, outputs))`` over blocks of ``chunk`` patterns (bounds memory)."""
        return [reduce(self._leaf_values(X[s : s + chunk])) for s in range(0, max(len(X), 1), chunk)]

    def _mean_leaf_value(self, X: np.ndarray) -> np.ndarray:
        return np.concatenate(self._chunked(X, lambda v: v.mean(axis=0)))

    def predict_std(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and spread (standard deviation over the trees) of a regressor: two (P, outputs) arrays."""
        parts = self._chunked(X, lambda v: (v.mean(axis=0), v.std(axis=0)))
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self._mean_leaf_value(X)

    def predict(self, X: np.ndarray) -> np.ndarray:
        v = self._mean_leaf_value(X)
        return self.classes_[np.argmax(v, axis=1)] if self.classes_ is not None else v



class _MLP:
    """A small multilayer perceptron classifier held as plain arrays, applied with NumPy:
    standardise (``mean``, ``std``), ``ReLU(x W_i + b_i)`` for the hidden layers, softmax of the
    last. Trained by :func:`_fit_mlp` (PyTorch); applying it needs no PyTorch."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, weights: list[np.ndarray], biases: list[np.ndarray],
                 classes: np.ndarray) -> None:
        self.mean, self.std, self.weights, self.biases, self.classes_ = mean, std, weights, biases, classes

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        h = (np.asarray(X, dtype=np.float64) - self.mean) / self.std
        for i, (W, b) in enumerate(zip(self.weights, self.biases)):
            h = h @ W + b
            if i < len(self.weights) - 1:
                h = np.maximum(h, 0.0)
        h = np.exp(h - h.max(axis=1, keepdims=True))
        return h / h.sum(axis=1, keepdims=True)

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        out = {f"{prefix}/mean": self.mean, f"{prefix}/std": self.std, f"{prefix}/classes": self.classes_}
        for i, (W, b) in enumerate(zip(self.weights, self.biases)):
            out[f"{prefix}/W{i}"] = W.astype(np.float32)
            out[f"{prefix}/b{i}"] = b.astype(np.float32)
        return out

    @classmethod
    def from_arrays(cls, z: Any, prefix: str) -> "_MLP":
        n = sum(1 for k in z if k.startswith(f"{prefix}/W"))
        get = lambda k: np.asarray(z[f"{prefix}/{k}"], dtype=np.float64)  # noqa: E731
        return cls(get("mean"), get("std"), [get(f"W{i}") for i in range(n)], [get(f"b{i}") for i in range(n)],
                   np.asarray(z[f"{prefix}/classes"]))


def _fit_mlp(X: np.ndarray, y: np.ndarray, seed: int, hidden: tuple[int, ...] = (256, 256), epochs: int = 20,
             dropout: float = 0.3, lr: float = 1e-3, weight_decay: float = 1e-3, batch: int = 128) -> _MLP:
    """Train an :class:`_MLP` (PyTorch, CPU, seeded; dropout between the hidden layers, AdamW)."""
    try:
        import torch
    except ImportError:
        raise Distill4dError("the 'mlp' system classifier needs PyTorch to train: pip install 'distill4d[ml]'") from None
    classes = np.unique(y)
    yi = np.searchsorted(classes, y)
    mean, std = X.mean(axis=0), X.std(axis=0) + 1e-6
    A = torch.tensor((X - mean) / std, dtype=torch.float32)
    Y = torch.tensor(yi, dtype=torch.int64)
    gen = torch.Generator().manual_seed(seed)
    layers: list[Any] = []
    width = X.shape[1]
    for h in hidden:
        lin = torch.nn.Linear(width, h)
        with torch.no_grad():
            torch.nn.init.kaiming_uniform_(lin.weight, a=5 ** 0.5, generator=gen)
            lin.bias.uniform_(-width ** -0.5, width ** -0.5, generator=gen)
        layers += [lin, torch.nn.ReLU(), torch.nn.Dropout(dropout)]
        width = h
    last = torch.nn.Linear(width, classes.size)
    with torch.no_grad():
        torch.nn.init.kaiming_uniform_(last.weight, a=5 ** 0.5, generator=gen)
        last.bias.zero_()
    net = torch.nn.Sequential(*layers, last)
    opt = torch.optim.AdamW(net.parameters(), lr, weight_decay=weight_decay)
    rng = np.random.default_rng(seed)
    net.train()
    with torch.random.fork_rng(devices=[]):  # dropout draws from the global generator: seed it, restore it after
        torch.manual_seed(seed)
        for _ in range(epochs):
            order = torch.from_numpy(rng.permutation(len(X)))
            for b in range(0, len(X), batch):
                i = order[b : b + batch]
                loss = torch.nn.functional.cross_entropy(net(A[i]), Y[i])
                opt.zero_grad()
                loss.backward()
                opt.step()
    lins = [m for m in net if isinstance(m, torch.nn.Linear)]
    return _MLP(mean, std, [m.weight.detach().double().numpy().T.copy() for m in lins],
                [m.bias.detach().double().numpy().copy() for m in lins], classes)


def _features(features: Any) -> np.ndarray:
    X = np.asarray(features, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != N_FEATURES:
        raise Distill4dError(f"features must have shape (n_patterns, {N_FEATURES}), got {X.shape}")
    if X.shape[0] == 0:
        raise Distill4dError("features is empty: no patterns")
    if not np.all(np.isfinite(X)):
        raise Distill4dError("features contain NaN or Inf values")
    return X


def top_k(proba: Any, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most probable classes of each row of ``proba`` (n, C): ``(indices, probabilities)``, both (n, k)."""
    p = np.atleast_2d(np.asarray(proba, dtype=np.float64))
    k = min(positive_int("k", k), p.shape[1])
    idx = np.argsort(-p, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(p, idx, axis=1)


def aggregate(proba: Any, method: str = "log", eps: float = 1e-3) -> np.ndarray:
    """One score per class (C,) from the probabilities (n, C) of n patterns of one region.

    ``"log"``: ``softmax(Σ log(p + eps))`` (a probability; ``eps`` keeps one zero from
    vetoing a class). ``"margin"``: ``Σ (p_c - max_{c' != c} p_c') / n`` (in [-1, 1]; the
    class with the largest is chosen).
    """
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        raise Distill4dError(f"proba must have shape (n_patterns >= 1, n_classes), got {p.shape}")
    if method == "log":
        s = np.log(p + eps).sum(axis=0)
        s = np.exp(s - s.max())
        return s / s.sum()
    if method == "margin":
        if p.shape[1] < 2:
            return np.ones(p.shape[1])
        order = np.sort(p, axis=1)
        best, second = order[:, -1:], order[:, -2:-1]
        other = np.where(p == best, second, best)  # the largest of the other classes
        return (p - other).mean(axis=0)
    raise Distill4dError(f"method must be 'log' or 'margin', got {method!r}")


class CrystalIdentifier:
    """Crystal system -> space group -> lattice parameters, each a random forest.

    Parameters
    ----------
    n_estimators : trees per forest.
    min_samples_leaf : smallest leaf of every forest.
    seed : random seed of every forest (explicit; results are reproducible).
    n_jobs : worker threads of scikit-learn (1 by default).
    max_depth : deepest level of every tree (None: grown until pure); bounds the model's size.
    system_classifier : "forest" (a random forest) or "mlp" (a multilayer perceptron on the
        standardised features, trained with PyTorch, applied with NumPy) for the crystal system.
    """

    def __init__(self, n_estimators: int = 200, min_samples_leaf: int = 1, seed: int = 0, n_jobs: int = 1,
                 max_depth: int | None = None, system_classifier: str = "forest") -> None:
        if system_classifier not in ("forest", "mlp"):
            raise Distill4dError(f"system_classifier must be 'forest' or 'mlp', got {system_classifier!r}")
        self.system_classifier = system_classifier
        self.n_estimators = positive_int("n_estimators", n_estimators)
        self.min_samples_leaf = positive_int("min_samples_leaf", min_samples_leaf)
        self.max_depth = None if max_depth is None else positive_int("max_depth", max_depth)
        self.seed = int(seed)
        self.n_jobs = int(n_jobs)
        self.system_model: Any = None
        self.space_group_models: dict[int, Any] = {}
        self.lattice_models: dict[int, Any] = {}

    def _forest(self, kind: str) -> Any:
        from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

        cls = RandomForestClassifier if kind == "classifier" else RandomForestRegressor
        return cls(n_estimators=self.n_estimators, min_samples_leaf=self.min_samples_leaf,
                   max_depth=self.max_depth, random_state=self.seed, n_jobs=self.n_jobs)

    def fit(self, features: Any, system: Any, space_group: Any, cellpar: Any, *, state: dict[str, Any] | None = None,
            callback: Any = None) -> "CrystalIdentifier":
        """Train on patterns: ``features`` (P, N_FEATURES), ``system`` (P,) indices into
        :data:`SYSTEMS`, ``space_group`` (P,) numbers, ``cellpar`` (P, 6) a, b, c (Å),
        alpha, beta, gamma (degrees) of the conventional cell.

        Every part (the system classifier, each system's space-group and lattice forests) is
        kept in the form of a model file, so the fitted model predicts exactly as the one saved.
        ``state``: a dict of those parts' arrays; parts found there are taken instead of fitted
        (resuming a fit on the same data), and every part fitted is added to it, after which
        ``callback(part)`` is called (the caller may save ``state``).
        """
        X = _features(features)
        sys_ = np.asarray(system, dtype=np.int64)
        sg = np.asarray(space_group, dtype=np.int64)
        cp = np.asarray(cellpar, dtype=np.float64)
        P = X.shape[0]
        if sys_.shape != (P,) or sg.shape != (P,) or cp.shape != (P, 6):
            raise Distill4dError(
                f"system, space_group and cellpar must have shapes ({P},), ({P},), ({P}, 6); got "
                f"{sys_.shape}, {sg.shape}, {cp.shape}"
            )
        if np.any((sys_ < 0) | (sys_ >= len(SYSTEMS))):
            raise Distill4dError(f"system must hold indices 0..{len(SYSTEMS) - 1} into SYSTEMS")
        state = {} if state is None else state
        Xs = shape_features(X)
        s = scale_inv_A(X)

        def part(prefix: str, kind: Any, fit: Any) -> Any:
            if not any(k.startswith(prefix + "/") for k in state):
                state.update(fit().arrays(prefix))
                if callback is not None:
                    callback(prefix)
            return kind.from_arrays(state, prefix)

        forest = lambda kind, x, y: lambda: _ArrayForest.from_sklearn(self._forest(kind).fit(x, y))  # noqa: E731
        if self.system_classifier == "mlp":
            self.system_model = part("system_mlp", _MLP, lambda: _fit_mlp(Xs, sys_, self.seed))
        else:
            self.system_model = part("system", _ArrayForest, forest("classifier", Xs, sys_))
        self.space_group_models, self.lattice_models = {}, {}
        target = np.concatenate([np.log(cp[:, :3] * s[:, None]), cp[:, 3:]], axis=1)
        for c in np.unique(sys_):
            rows = sys_ == c
            if np.unique(sg[rows]).size > 1:
                self.space_group_models[int(c)] = part(f"space_group/{c}", _ArrayForest,
                                                       forest("classifier", Xs[rows], sg[rows]))
            else:
                self.space_group_models[int(c)] = int(sg[rows][0])
            self.lattice_models[int(c)] = part(f"lattice/{c}", _ArrayForest,
                                               forest("regressor", Xs[rows], target[rows]))
        return self

    def save(self, path: Any) -> None:
        """Write the trained model to an ``.npz`` file of plain arrays (no pickle; read with :meth:`load`)."""
        import json

        from .._atomic import atomic_output

        self._check_fitted()
        arrays: dict[str, np.ndarray] = {}
        conv = lambda m: m if isinstance(m, _ArrayForest) else _ArrayForest.from_sklearn(m)  # noqa: E731
        if isinstance(self.system_model, _MLP):
            arrays.update(self.system_model.arrays("system_mlp"))
        else:
            arrays.update(conv(self.system_model).arrays("system"))
        single = {}
        for c, m in self.space_group_models.items():
            if isinstance(m, int):
                single[str(c)] = m
            else:
                arrays.update(conv(m).arrays(f"space_group/{c}"))
        for c, m in self.lattice_models.items():
            arrays.update(conv(m).arrays(f"lattice/{c}"))
        meta = {"format": _FORMAT, "n_features": N_FEATURES, "n_estimators": self.n_estimators,
                "min_samples_leaf": self.min_samples_leaf, "seed": self.seed, "max_depth": self.max_depth,
                "system_classifier": self.system_classifier,
                "systems": sorted(int(c) for c in self.lattice_models), "single_space_group": single}
        arrays["meta"] = np.array(json.dumps(meta))
        with atomic_output(path) as tmp, open(tmp, "xb") as fh:
            np.savez_compressed(fh, **arrays)

    @classmethod
    def load(cls, path: Any) -> "CrystalIdentifier":
        """A model written by :meth:`save` (predicts exactly as the one saved)."""
        import json
        from pathlib import Path

        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"crystal identifier model {p} does not exist")
        with np.load(p, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"])) if "meta" in z else {}
            if meta.get("format") != _FORMAT:
                raise Distill4dError(f"{p} is not a distill4d crystal identifier model (format {meta.get('format')!r})")
            if meta["n_features"] != N_FEATURES:
                raise Distill4dError(
                    f"{p} was trained on {meta['n_features']} features, this version encodes {N_FEATURES}"
                )
            kind = meta.get("system_classifier", "forest")
            model = cls(meta["n_estimators"], meta["min_samples_leaf"], meta["seed"], max_depth=meta.get("max_depth"),
                        system_classifier=kind)
            model.system_model = _MLP.from_arrays(z, "system_mlp") if kind == "mlp" else _ArrayForest.from_arrays(z, "system")
            for c in meta["systems"]:
                if str(c) in meta["single_space_group"]:
                    model.space_group_models[c] = int(meta["single_space_group"][str(c)])
                else:
                    model.space_group_models[c] = _ArrayForest.from_arrays(z, f"space_group/{c}")
                model.lattice_models[c] = _ArrayForest.from_arrays(z, f"lattice/{c}")
        return model

    def _check_fitted(self) -> None:
        if self.system_model is None:
            raise Distill4dError("the CrystalIdentifier is not trained: call fit(...) first")

    def predict_proba(self, features: Any) -> np.ndarray:
        """Crystal-system probabilities (P, 7), columns in the order of :data:`SYSTEMS`."""
        self._check_fitted()
        X = _features(features)
        p = self.system_model.predict_proba(shape_features(X))
        out = np.zeros((X.shape[0], len(SYSTEMS)))
        out[:, self.system_model.classes_] = p
        return out

    def predict_system(self, features: Any) -> np.ndarray:
        """Most probable crystal system (P,) as indices into :data:`SYSTEMS`."""
        return np.argmax(self.predict_proba(features), axis=1)

    def space_groups(self) -> np.ndarray:
        """The space-group numbers seen in training, the columns of :meth:`predict_space_group_proba`."""
        self._check_fitted()
        out = []
        for m in self.space_group_models.values():
            out += [int(m)] if isinstance(m, int) else [int(v) for v in m.classes_]
        return np.array(sorted(out))

    def predict_space_group_proba(self, features: Any, min_system_proba: float = 1e-3) -> np.ndarray:
        """Space-group probabilities (P, G), ``P(system) · P(group | system)``, columns :meth:`space_groups`.

        A system's space-group classifier runs only on the patterns where ``P(system) >=
        min_system_proba``; elsewhere its groups get ``P(system) / n_groups`` (each off by less
        than ``min_system_proba``; 0 computes everything). Most patterns need two or three of
        the seven classifiers.
        """
        X = _features(features)
        ps = self.predict_proba(X)
        groups = self.space_groups()
        col = {g: i for i, g in enumerate(groups)}
        out = np.zeros((X.shape[0], groups.size))
        Xs = shape_features(X)
        for c, m in self.space_group_models.items():
            if isinstance(m, int):
                out[:, col[m]] += ps[:, c]
                continue
            cols = [col[int(g)] for g in m.classes_]
            rows = ps[:, c] >= min_system_proba
            out[np.ix_(~rows, cols)] += ps[~rows, c : c + 1] / len(cols)
            if rows.any():
                out[np.ix_(rows, cols)] += ps[rows, c : c + 1] * m.predict_proba(Xs[rows])
        return out

    def predict_space_group_within(self, features: Any, system: int) -> tuple[np.ndarray, np.ndarray]:
        """``(groups, proba)``: the space groups of crystal system ``system`` (index into
        :data:`SYSTEMS`) seen in training (G,) and ``P(group | system)`` of every pattern (P, G)."""
        X = _features(features)
        m = self.space_group_models.get(int(system))
        if m is None:
            raise Distill4dError(f"the model saw no {SYSTEMS[int(system)]} structure in training")
        if isinstance(m, int):
            return np.array([m]), np.ones((X.shape[0], 1))
        return np.asarray(m.classes_, dtype=np.int64), m.predict_proba(shape_features(X))

    def predict_lattice(self, features: Any, system: Any = None, return_std: bool = False) -> Any:
        """Conventional lattice parameters (P, 6): a, b, c (Å), alpha, beta, gamma (degrees).

        ``system`` (P,) picks each pattern's regressor; default: the predicted system. Rows
        whose system had no training pattern are NaN. ``return_std``: also the spread of the
        trees (P, 6), same units (a, b, c: ``a · std(log a)``), a per-pattern uncertainty.
        """
        X = _features(features)
        sys_ = self.predict_system(X) if system is None else np.asarray(system, dtype=np.int64)
        if sys_.shape != (X.shape[0],):
            raise Distill4dError(f"system must have shape ({X.shape[0]},), got {sys_.shape}")
        out = np.full((X.shape[0], 6), np.nan)
        std = np.full((X.shape[0], 6), np.nan)
        Xs, s = shape_features(X), scale_inv_A(X)
        for c in np.unique(sys_):
            rows = sys_ == c
            model = self.lattice_models.get(int(c))
            if model is None:
                continue
            t, ts = model.predict_std(Xs[rows])
            out[rows, :3] = np.exp(t[:, :3]) / s[rows, None]
            out[rows, 3:] = t[:, 3:]
            std[rows, :3] = out[rows, :3] * ts[:, :3]
            std[rows, 3:] = ts[:, 3:]
        return (out, std) if return_std else out

    def predict(self, features: Any, k: int = 3) -> dict[str, np.ndarray]:
        """Everything for a batch of feature vectors (P, N_FEATURES), as arrays (the form a server returns):

        ``system`` (P,) index into :data:`SYSTEMS`; ``system_proba`` (P, 7); ``space_group``
        (P, k) the k most probable numbers and ``space_group_proba`` (P, k); ``lattice`` (P, 6)
        a, b, c (Å), alpha, beta, gamma (degrees) for the predicted system and
        ``lattice_std`` (P, 6) the trees' spread.
        """
        X = _features(features)
        ps = self.predict_proba(X)
        system = np.argmax(ps, axis=1)
        sg_idx, sg_p = top_k(self.predict_space_group_proba(X), k)
        lat, lat_std = self.predict_lattice(X, system, return_std=True)
        return {"system": system, "system_proba": ps, "space_group": self.space_groups()[sg_idx],
                "space_group_proba": sg_p, "lattice": lat, "lattice_std": lat_std}
