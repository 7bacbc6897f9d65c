"""Classical baselines on the same windowed-FFT features (scikit-learn): k-means, NMF and PCA +
Gaussian mixture. Each gives channels (n, K) >= 0 that go through the same read-out as the
autoencoder's latent (:mod:`distill4d.segment.readout`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import Distill4dError
from .._validate import positive_int

__all__ = ["BASELINES", "baseline_channels"]

#: The baseline methods.
BASELINES = ("kmeans", "nmf", "pca-gmm")


def _pca(x: np.ndarray, n: int, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA

    n = min(n, x.shape[0] - 1, x.shape[1])
    return PCA(n_components=n, random_state=seed, svd_solver="randomized").fit_transform(x)


def baseline_channels(features: Any, method: str, n_channels: int, *, seed: int = 0, n_pca: int = 16) -> np.ndarray:
    """Channels (n, K) float32 >= 0 of ``features`` (n, F, F) by ``method``:

    - ``"kmeans"``: k-means (k-means++, 4 starts) of the features' first ``n_pca`` principal
      components; channel k is 1 where the window is in cluster k (one-hot).
    - ``"nmf"``: non-negative matrix factorisation (NNDSVDa start) of the features; the channels are
      the activations, each component scaled to a unit maximum.
    - ``"pca-gmm"``: a Gaussian mixture (full covariances) of the first ``n_pca`` principal
      components; the channels are the posterior probabilities.
    """
    if method not in BASELINES:
        raise Distill4dError(f"method must be one of {BASELINES}, got {method!r}")
    k = positive_int("n_channels", n_channels)
    x = np.asarray(features, dtype=np.float32)
    x = x.reshape(len(x), -1)
    if len(x) <= k:
        raise Distill4dError(f"{method} needs more windows than channels ({k}), got {len(x)} windows; "
                             "use a smaller step_px or window_px")
    if method == "kmeans":
        from sklearn.cluster import KMeans

        z = _pca(x, n_pca, seed)
        lab = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(z)
        return np.eye(k, dtype=np.float32)[lab]
    if method == "nmf":
        import warnings

        from sklearn.decomposition import NMF
        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            w = NMF(n_components=k, init="nndsvda", random_state=seed, max_iter=300).fit_transform(x)
        return (w / np.maximum(w.max(axis=0, keepdims=True), 1e-12)).astype(np.float32)
    from sklearn.mixture import GaussianMixture

    z = _pca(x, n_pca, seed)
    gmm = GaussianMixture(n_components=k, covariance_type="full", random_state=seed, n_init=2, reg_covar=1e-4)
    return gmm.fit(z).predict_proba(z).astype(np.float32)
