"""Domain segmentation of images, image series and 4D scans (ferroelectric domains, unsupervised).

``windows`` (windowed-FFT features), ``readout`` (Otsu masks, labels, fractions, channel-to-variant
grouping, scores), ``walls`` (walls at pixel precision by fringe energy), ``baselines`` (k-means, NMF, PCA + Gaussian mixture) and ``core``
(:func:`segment`, :func:`segment_datacube`, :class:`Segmentation`). The autoencoder lives in
:mod:`distill4d.ml.window_ae`.
"""

from .baselines import BASELINES, baseline_channels
from .core import METHODS, Segmentation, read_out, refine_segmentation, segment, segment_datacube
from .readout import adjusted_rand_index, area_fractions, match_labels, mean_iou, otsu_threshold
from .windows import WindowFeatures, window_features

__all__ = [
    "BASELINES",
    "METHODS",
    "Segmentation",
    "WindowFeatures",
    "adjusted_rand_index",
    "area_fractions",
    "baseline_channels",
    "match_labels",
    "mean_iou",
    "otsu_threshold",
    "read_out",
    "refine_segmentation",
    "segment",
    "segment_datacube",
    "window_features",
]
