"""The segmentation API: :func:`segment` (an image or a series) and :func:`segment_datacube`
(a 4D scan, through a virtual image or directly on its diffraction patterns), both giving a
:class:`Segmentation`."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import Distill4dError
from .._validate import positive_int
from .baselines import BASELINES, baseline_channels
from .readout import (
    area_fractions,
    channel_masks,
    channel_shares,
    channel_strength,
    group_channels,
    group_spectra,
    label_map,
    spectrum_orientation,
    upsample_strength,
)
from .windows import WindowFeatures, check_images, window_features

__all__ = ["METHODS", "Segmentation", "read_out", "refine_segmentation", "segment", "segment_datacube"]

#: The segmentation methods.
METHODS = ("autoencoder",) + BASELINES + ("peaks",)


@dataclasses.dataclass
class Segmentation:
    """A domain segmentation.

    labels : (T, H, W) int16 domain variant of each pixel (H, W of the input; for a 4D scan
        through its patterns, the scan (Rx, Ry)); -1 is background or undecided.
    labels_windows : (T, ny, nx) int16, the same on the window grid.
    fractions : (T, V) area fraction of each variant per frame.
    channels : (T, ny, nx, C) the per-window latent (>= 0).
    rotation_deg, scale : (T, ny, nx) the autoencoder's affine rotation (degrees) and scale of each
        window (None for the baselines).
    variant_of_channel : (C,) the variant of each channel (-1: unused).
    variant_angles_deg : (V,) each variant's dominant orientation (degrees from the first image axis
        towards the second, in [0, 180)): the strongest peak of its windows' mean spectrum.
    variant_periods_px : (V,) the period (image px) of that peak.
    thresholds : (C,) the Otsu threshold of each channel.
    window_px, step_px : the window grid (image px).
    method : "peaks", "autoencoder", "kmeans", "nmf" or "pca-gmm"; parameters : all settings.
    model_path : the autoencoder model file used or saved (None if not saved).
    timings_s : seconds spent windowing, training (or fitting) and inferring.
    model : the trained autoencoder (not saved by :meth:`to_hdf5`).
    """

    labels: np.ndarray
    labels_windows: np.ndarray
    fractions: np.ndarray
    channels: np.ndarray
    rotation_deg: np.ndarray | None
    scale: np.ndarray | None
    variant_of_channel: np.ndarray
    variant_angles_deg: np.ndarray
    variant_periods_px: np.ndarray
    thresholds: np.ndarray
    window_px: int
    step_px: int
    method: str
    parameters: dict[str, Any]
    model_path: str | None = None
    timings_s: dict[str, float] = dataclasses.field(default_factory=dict)
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    model: Any = None

    @property
    def n_variants(self) -> int:
        """V, the number of domain variants."""
        return int(self.fractions.shape[1])

    def _arrays(self) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        arrays = {
            "labels": self.labels.astype(np.int16), "labels_windows": self.labels_windows.astype(np.int16),
            "fractions": self.fractions.astype(np.float64), "channels": self.channels.astype(np.float32),
            "variant_of_channel": self.variant_of_channel.astype(np.int16),
            "variant_angles_deg": self.variant_angles_deg.astype(np.float64),
            "variant_periods_px": self.variant_periods_px.astype(np.float64),
            "thresholds": self.thresholds.astype(np.float64),
        }
        units = {"variant_angles_deg": "deg", "variant_periods_px": "px"}
        if self.rotation_deg is not None:
            arrays["rotation_deg"] = self.rotation_deg.astype(np.float32)
            units["rotation_deg"] = "deg"
        if self.scale is not None:
            arrays["scale"] = self.scale.astype(np.float32)
        return arrays, units

    def _attrs(self) -> dict[str, Any]:
        return {"method": self.method, "window_px": int(self.window_px), "step_px": int(self.step_px),
                "model_path": self.model_path or "", "parameters": json.dumps(self.parameters),
                "timings_s": json.dumps(self.timings_s)}

    def to_result(self, provenance: Any = None) -> Any:
        """A :class:`distill4d.results.Results` of the arrays (labels, labels_windows, fractions,
        channels, rotation_deg, scale, variants, thresholds), the method and parameters as attributes."""
        from ..results import Provenance, Results

        arrays, units = self._arrays()
        prov = provenance or Provenance(f"segment-{self.method}", parameters=self.parameters)
        return Results(arrays, units, self._attrs(), provenance=prov)

    def to_hdf5(self, path: str | os.PathLike, force: bool = False, provenance: Any = None) -> Path:
        """Write :meth:`to_result` under ``/results`` atomically; ``labels_windows`` carries the
        attributes ``window_px`` and ``step_px``. FileExistsError if ``path`` exists and not ``force``."""
        from ..io.write import write_results_file

        r = self.to_result(provenance)
        grid = {"window_px": int(self.window_px), "step_px": int(self.step_px)}
        return write_results_file(path, r.arrays, units=r.units, attrs=r.attrs, provenance=r.provenance, force=force,
                                  dataset_attrs={"labels_windows": grid})

    def plot(self, images: Any, path_or_ax: Any = None, *, frame: int = 0, title: str = "") -> Any:
        """The image of ``frame`` with the domain map over it and the fractions against the frame
        (:func:`distill4d.plot.domains.domains_figure`); saved when ``path_or_ax`` is a path."""
        from ..plot.domains import domains_figure

        return domains_figure(images, self, path_or_ax, frame=frame, title=title)


def _descriptors(features: np.ndarray, winner: np.ndarray, n_channels: int, centre: float) -> tuple[np.ndarray, ...]:
    """Orientation (degrees), peak radius (feature px) and mean spectrum of each channel over the
    windows it wins; ``used`` where it wins any."""
    ang = np.zeros(n_channels)
    rad = np.ones(n_channels)
    spectra = np.zeros((n_channels,) + features.shape[1:])
    used = np.zeros(n_channels, bool)
    for c in range(n_channels):
        sel = winner == c
        if sel.sum() == 0:
            continue
        used[c] = True
        spectra[c] = features[sel].mean(axis=0)
        ang[c], rad[c] = spectrum_orientation(spectra[c], centre)
    return ang, rad, spectra, used


def read_out(
    channels: np.ndarray,
    features: WindowFeatures,
    *,
    n_variants: int | None = None,
    open_px: int = 1,
    close_px: int = 1,
    tol_deg: float = 10.0,
    descriptors: tuple[np.ndarray, np.ndarray] | None = None,
    image_hw: tuple[int, int] | None = None,
) -> dict[str, np.ndarray]:
    """The read-out of channels (T, ny, nx, C) of ``features``: thresholds, masks, channel groups,
    labels on the window grid and in pixels, fractions and variant orientations (see
    :mod:`distill4d.segment.readout`). ``descriptors``: (angle_deg, radius) per channel to group by
    instead of the channels' mean spectra. ``image_hw``: the pixel grid (default the input's)."""
    ch = np.asarray(channels, dtype=np.float32)
    t, ny, nx, c = ch.shape
    masks, thr = channel_masks(ch, open_px=open_px, close_px=close_px)
    strength = channel_strength(ch, masks, thr)
    winner = label_map(strength).reshape(-1)
    flat = features.flat()
    ang, rad, spectra, used = _descriptors(flat, winner, c, features.zero_frequency_px)
    if n_variants is not None:  # a given number of variants: channels grouped by their whole spectra
        voc = group_spectra(spectra, n_variants, used=used)
    else:  # by orientation and period (the autoencoder's: its templates under the learned rotation and scale)
        g_ang, g_rad = (ang, rad) if descriptors is None else descriptors
        voc = group_channels(g_ang, g_rad, tol_deg=tol_deg, used=used)
    v = int(voc.max()) + 1 if (voc >= 0).any() else 0
    # a variant's map is the sum of its channels (one variant is often spread over several channels),
    # thresholded (Otsu over the series), opened and closed as a channel is
    vsum = np.zeros((t, ny, nx, v), np.float32)
    for j in range(c):
        if voc[j] >= 0:
            vsum[..., voc[j]] += ch[..., j]
    if v:
        vmasks, vthr = channel_masks(vsum, open_px=open_px, close_px=close_px)
        vs = channel_strength(vsum, vmasks, vthr)
    else:
        vs = vsum
    lab_w = label_map(vs) if v else np.full((t, ny, nx), -1, np.int16)
    hw = image_hw or features.image_shape[1:]
    labels = np.empty((t,) + tuple(hw), dtype=np.int16)
    for k in range(t):
        labels[k] = label_map(upsample_strength(vs[k], features.window_px, features.step_px, hw)) if v else -1
    # each variant's orientation: the mean spectrum of the windows it wins
    v_ang, v_per = np.zeros(v), np.zeros(v)
    lw = lab_w.reshape(-1)
    for j in range(v):
        sel = lw == j
        if sel.any():
            v_ang[j], r = spectrum_orientation(flat[sel].mean(axis=0), features.zero_frequency_px)
            v_per[j] = features.period_px(r)
        else:
            v_ang[j], v_per[j] = np.nan, np.nan
    # variants numbered by increasing orientation
    order = np.argsort(np.where(np.isfinite(v_ang), v_ang, np.inf), kind="stable")
    if v and not np.array_equal(order, np.arange(v)):
        rank = np.empty(v, np.int64)
        rank[order] = np.arange(v)
        voc = np.where(voc >= 0, rank[np.maximum(voc, 0)], -1)
        lut = np.concatenate([rank, [-1]]).astype(np.int16)  # index -1 -> -1
        lab_w, labels = lut[lab_w], lut[labels]
        v_ang, v_per = v_ang[order], v_per[order]
    return {"labels": labels, "labels_windows": lab_w, "fractions": area_fractions(labels, v), "thresholds": thr,
            "variant_of_channel": voc, "variant_angles_deg": v_ang, "variant_periods_px": v_per}


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise Distill4dError(f"method must be one of {METHODS}, got {method!r}")


def segment(
    images: Any,
    method: str = "peaks",
    *,
    domains: int | None = None,
    window_px: int = 128,
    step_px: int = 32,
    feature_px: int | None = None,
    taper: str = "hann",
    channels: int | None = None,
    model: Any = None,
    train: Any = None,
    save_model: str | os.PathLike | None = None,
    force: bool = False,
    open_px: int = 1,
    close_px: int = 1,
    tol_deg: float = 10.0,
    seed: int = 0,
    device: Any = "cpu",
    callback: Callable[[dict[str, Any]], None] | None = None,
    features: WindowFeatures | None = None,
    refine: bool = True,
) -> Segmentation:
    """Domain segmentation of an image (H, W) or a series (T, H, W).

    method : "peaks" (default: NMF of the linear window spectra at the mean spectrum's peaks,
        :mod:`distill4d.segment.peaks`; the most accurate on both held-out draws, with the number of
        variants given or not), "autoencoder" (trained on these images unless ``model`` is given),
        "nmf", "kmeans" or "pca-gmm" (on the log spectra).
    domains : number of domain variants V: channels are grouped into V variants by the correlation
        of their windows' mean spectra. None: channels whose orientations differ by less than
        ``tol_deg`` degrees (and periods by < 10 %) are one variant (for a saved autoencoder or one
        with ``channels`` given, the orientation of each channel's template under its learned
        rotation and scale); an autoencoder trained here from the ``peaks`` start gets one channel
        per variant the unmixing finds, each its own variant. The baselines fit ``domains``
        clusters (``channels``, default 8, when None).
    window_px, step_px : the window grid (image px); feature_px : side of each window's binned
        spectrum (px; default 64 for windows of 128 px, see :func:`~distill4d.segment.windows.default_feature_px`); taper : real-space window taper ("hann", "hamming", "none").
    channels : latent channels of the autoencoder (default: ``domains`` when given, else the
        number of variants its ``peaks`` start finds, else 8).
    model : a saved autoencoder (path to ``M.pt`` with ``M.json``) or a trained module, re-used
        without training. train : a :class:`distill4d.ml.window_ae.WindowAETrainConfig`.
    save_model : save the trained autoencoder there (+ ``.json`` card); ``force`` overwrites.
    open_px, close_px : radius (windows) of the morphological opening and closing of the masks.
    seed : training, initial weights and the baselines' random starts.
    device : "cpu" (default), "cuda" or "auto" for the autoencoder.
    callback : called with each training evaluation (dict with ``step``, ``loss``, ``seconds``).
    features : windowed features already computed (:func:`window_features`), re-used.
    refine : place the walls at pixel precision by each variant's fringe energy
        (:func:`distill4d.segment.walls.refine_walls`, within ``window_px / 2`` of a wall; needs
        ``images``; skipped, and said so in ``parameters["walls"]``, where the fringes do not tell the
        variants apart).
    """
    _check_method(method)
    if domains is not None:
        domains = positive_int("domains", domains)
    channels = positive_int("channels", channels) if channels is not None else None
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    scale = "linear" if method == "peaks" else "log"
    if features is None:
        arr = check_images(images)
        features = window_features(arr, window_px, step_px, feature_px=feature_px, taper=taper,
                                   clip=_model_clip(model), scale=scale)
    elif features.scale != scale:
        raise Distill4dError(f"method {method!r} needs features of scale {scale!r}, got {features.scale!r}")
    timings["windows"] = time.perf_counter() - t0
    seg = _segment_features(features, method, domains=domains, channels=channels, model=model, train=train,
                            save_model=save_model, force=force, open_px=open_px, close_px=close_px, tol_deg=tol_deg,
                            seed=seed, device=device, callback=callback, timings=timings,
                            extra={"window_px": features.window_px, "step_px": features.step_px,
                                   "feature_px": features.feature_px, "taper": features.taper})
    if not refine:
        seg.parameters["walls"] = {"applied": False, "reason": "refine=False"}
        return seg
    if images is None:
        seg.parameters["walls"] = {"applied": False, "reason": "no images given (features only)"}
        return seg
    return refine_segmentation(seg, images, seed=seed)


def refine_segmentation(seg: Segmentation, images: Any, *, seed: int = 0) -> Segmentation:
    """A copy of ``seg`` whose pixel labels and fractions have walls placed by fringe energy
    (:func:`~distill4d.segment.walls.refine_walls`, within ``window_px / 2`` of a wall) in ``images``
    (the segmented image or series); the outcome in ``parameters["walls"]`` (labels unchanged where
    it does not apply), the time in ``timings_s["walls"]``."""
    from .walls import refine_walls

    t0 = time.perf_counter()
    imgs = check_images(images)
    if imgs.shape != seg.labels.shape:
        raise Distill4dError(f"images of shape {imgs.shape} do not match the labels {seg.labels.shape}")
    labels, info = refine_walls(imgs, seg.labels, seg.variant_angles_deg, seg.variant_periods_px,
                                band_px=seg.window_px / 2, seed=seed)
    params = {**seg.parameters, "walls": {**info, "band_px": seg.window_px / 2, "sigma_periods": 0.8, "min_contrast": 3.0}}
    timings = {**seg.timings_s, "walls": time.perf_counter() - t0}
    if not info["applied"]:
        return dataclasses.replace(seg, parameters=params, timings_s=timings)
    return dataclasses.replace(seg, labels=labels, fractions=area_fractions(labels, seg.n_variants), parameters=params,
                               timings_s=timings)


def _model_clip(model: Any) -> float | None:
    """The training features' clip level recorded in a saved model's card (None for no model)."""
    if model is None or not isinstance(model, (str, os.PathLike)):
        return getattr(model, "feature_clip", None)
    from ..ml.window_ae.segment import window_ae_geometry

    return window_ae_geometry(model).get("clip")


def _segment_features(features: WindowFeatures, method: str, *, domains: int | None, channels: int | None, model: Any,
                      train: Any, save_model: Any, force: bool, open_px: int, close_px: int, tol_deg: float,
                      seed: int, device: Any, callback: Any, timings: dict[str, float], extra: dict[str, Any],
                      image_hw: tuple[int, int] | None = None) -> Segmentation:
    t, ny, nx = features.features.shape[:3]
    rotation = scale = None
    model_path = None
    history: list[dict[str, Any]] = []
    module = None
    descriptors = None
    n_var = domains
    if method == "peaks":
        return _segment_peaks(features, domains=domains, channels=channels, seed=seed, timings=timings, extra=extra,
                              image_hw=image_hw)
    if method == "autoencoder":
        from ..ml.window_ae.segment import run_window_ae

        # one competitive channel per variant: K when given, else the number the peaks unmixing
        # of the training's start finds (docs/experiments.md)
        out = run_window_ae(features, channels=channels or domains, model=model, train=train, save_model=save_model, force=force,
                            seed=seed, device=device, callback=callback)
        ch = out["channels"]
        rotation, scale = out["rotation_deg"], out["scale"]
        model_path, history, module = out["model_path"], out["history"], out["model"]
        timings.update(out["timings_s"])
        descriptors = out.get("descriptors")
        n_ch = ch.shape[-1]
        if domains is None and out.get("n_variants"):  # each channel one variant
            n_var = int(out["n_variants"])
    else:
        n_ch = domains or channels or 8
        t1 = time.perf_counter()
        ch = baseline_channels(features.flat(), method, n_ch, seed=seed)
        timings["train"] = time.perf_counter() - t1
        timings["inference"] = 0.0
    t2 = time.perf_counter()
    ch = ch.reshape(t, ny, nx, n_ch)
    # the autoencoder's channels scale with the window's contrast: its read-out works on each
    # channel's share of the window's total
    ro = read_out(channel_shares(ch) if method == "autoencoder" else ch, features, n_variants=n_var,
                  open_px=open_px, close_px=close_px, tol_deg=tol_deg,
                  image_hw=image_hw, descriptors=descriptors)
    if method == "autoencoder":  # its variants as above; their labels by the amplitude read-out
        ro = _amplitude_labels(ch, ro, features, image_hw)
    timings["readout"] = time.perf_counter() - t2
    params = {"method": method, "domains": domains, "channels": n_ch, "open_px": open_px, "close_px": close_px,
              "tol_deg": tol_deg, "seed": seed, "clip": features.clip, **extra}
    if rotation is not None:
        rotation = rotation.reshape(t, ny, nx)
        scale = scale.reshape(t, ny, nx)
    return Segmentation(ro["labels"], ro["labels_windows"], ro["fractions"], ch, rotation, scale,
                        ro["variant_of_channel"], ro["variant_angles_deg"], ro["variant_periods_px"], ro["thresholds"],
                        features.window_px, features.step_px, method, params, model_path, timings, history, module)


def _amplitude_labels(ch: np.ndarray, ro: dict[str, np.ndarray], features: WindowFeatures,
                      image_hw: tuple[int, int] | None) -> dict[str, np.ndarray]:
    """``ro`` with labels, window labels and fractions from the amplitude read-out
    (:func:`distill4d.segment.peaks.read_out_peaks`) of each variant's summed channels ``ch``
    (T, ny, nx, C): a wall falls where the variants' amplitudes cross, between window centres."""
    from .peaks import read_out_peaks

    voc = np.asarray(ro["variant_of_channel"])
    v = int(voc.max()) + 1 if (voc >= 0).any() else 0
    if not v:
        return ro
    vs = np.stack([ch[..., voc == j].sum(axis=-1) for j in range(v)], axis=-1)
    ang = np.where(np.isfinite(ro["variant_angles_deg"]), ro["variant_angles_deg"], np.arange(v) + 1e3)
    amp = read_out_peaks(vs, features, ang, ro["variant_periods_px"], image_hw=image_hw)
    return {**ro, **{k: amp[k] for k in ("labels", "labels_windows", "fractions")}}


def _segment_peaks(features: WindowFeatures, *, domains: int | None, channels: int | None, seed: int,
                   timings: dict[str, float], extra: dict[str, Any], image_hw: tuple[int, int] | None) -> Segmentation:
    from .peaks import peak_unmixing, read_out_peaks

    t1 = time.perf_counter()
    out = peak_unmixing(features, domains, max_variants=min(channels or 8, 6), seed=seed)
    timings["train"] = time.perf_counter() - t1
    timings["inference"] = 0.0
    t2 = time.perf_counter()
    orient = [spectrum_orientation(sp, features.zero_frequency_px) for sp in out["spectra"]]
    ang = np.array([o[0] for o in orient])
    rad = np.array([o[1] for o in orient])
    ro = read_out_peaks(out["activations"], features, ang, np.array([features.period_px(r) for r in rad]),
                        image_hw=image_hw)
    timings["readout"] = time.perf_counter() - t2
    params = {"method": "peaks", "domains": domains, "channels": int(out["activations"].shape[-1]), "seed": seed,
              "peak_bins": int(out["mask"].sum()), "residuals": [round(e, 4) for e in out["errors"]], **extra}
    return Segmentation(ro["labels"], ro["labels_windows"], ro["fractions"], ro["strength"], None, None,
                        ro["variant_of_channel"], ro["variant_angles_deg"], ro["variant_periods_px"], ro["thresholds"],
                        features.window_px, features.step_px, "peaks", params, None, timings)


def _pattern_features(batch: np.ndarray, *, feature_px: int, dc_radius_px: float, log: bool = True) -> np.ndarray:
    """log(1 + pattern) (``log``; else the pattern) of a batch (n, Qx, Qy), binned (block means) to
    (n, feature_px, feature_px), the central ``dc_radius_px`` zeroed (the direct beam)."""
    x = np.asarray(batch, dtype=np.float32)
    n, qx, qy = x.shape
    bx, by = qx // feature_px, qy // feature_px
    x = x[:, : bx * feature_px, : by * feature_px].reshape(n, feature_px, bx, feature_px, by).mean(axis=(2, 4))
    if log:
        np.log1p(np.maximum(x, 0), out=x)
    c = feature_px // 2
    yy, xx = np.ogrid[:feature_px, :feature_px]
    x[:, (yy - c) ** 2 + (xx - c) ** 2 <= dc_radius_px**2] = 0
    return x


def segment_datacube(
    datacube: Any,
    method: str = "peaks",
    *,
    route: str = "patterns",
    detector: Any = "bf",
    feature_px: int = 32,
    dc_radius_px: float = 2.0,
    window_px: int = 32,
    step_px: int = 8,
    engine: dict[str, Any] | None = None,
    **kwargs: Any,
) -> Segmentation:
    """Domain segmentation of a 4D-STEM scan (Rx, Ry, Qx, Qy).

    route : "patterns" (default): each diffraction pattern is already a Fourier-space view: its
        ``log(1 + I)``, binned to ``feature_px`` (the pattern side must be at least that) with the
        direct beam (``dc_radius_px`` feature px around the pattern centre) zeroed, is one window's
        feature (computed through ``engine.map_patterns``); labels are on the scan grid (Rx, Ry).
        "virtual": a virtual image (``detector``: "bf", "adf" or a mask (Qx, Qy)) is segmented with
        windows of ``window_px`` every ``step_px`` scan positions (``feature_px`` must divide ``window_px``).
    engine : options of :func:`distill4d.engine.map_patterns` (scheduler, n_workers, progress, ...).
    kwargs : as :func:`segment` (method options, domains, channels, model, seed, ...).
    """
    _check_method(method)
    engine = dict(engine or {})
    if route == "virtual":
        from ..imaging import detector_mask, virtual_image

        mask = detector_mask(datacube, detector) if isinstance(detector, str) else detector
        image = virtual_image(datacube, mask, **engine)
        return segment(image, method, window_px=window_px, step_px=step_px, feature_px=feature_px, **kwargs)
    if route != "patterns":
        raise Distill4dError(f"route must be 'patterns' or 'virtual', got {route!r}")
    import functools

    from ..engine import map_patterns

    feature_px = positive_int("feature_px", feature_px, minimum=4)
    qx, qy = datacube.pattern_shape
    if qx < feature_px or qy < feature_px:
        raise Distill4dError(f"feature_px must be at most the pattern size {qx}x{qy} px, got {feature_px}")
    t0 = time.perf_counter()
    log = method != "peaks"
    fn = functools.partial(_pattern_features, feature_px=feature_px, dc_radius_px=float(dc_radius_px), log=log)
    feats = np.asarray(map_patterns(datacube, fn, job_key=f"segment-patterns-{feature_px}-{dc_radius_px}-{int(log)}",
                                    desc="pattern features", **engine), dtype=np.float32)
    rx, ry = feats.shape[:2]
    if log:
        clip = float(np.quantile(feats[:: max(1, rx // 16), :: max(1, ry // 16)], 0.999)) or 1.0
        feats = np.clip(feats / clip, 0, 1)
    else:
        clip = 1.0
    features = WindowFeatures(feats[None], 1, 1, (1, rx, ry), clip, "none", "log" if log else "linear")
    timings = {"windows": time.perf_counter() - t0}
    kwargs.pop("features", None)
    names = ("domains", "channels", "model", "train", "save_model", "force", "open_px", "close_px", "tol_deg", "seed",
             "device", "callback")
    unknown = set(kwargs) - set(names)
    if unknown:
        raise Distill4dError(f"segment_datacube got unknown options {sorted(unknown)}; expected some of {names}")
    opts = {"domains": None, "channels": None, "model": None, "train": None, "save_model": None, "force": False,
            "open_px": 1, "close_px": 1, "tol_deg": 10.0, "seed": 0, "device": "cpu", "callback": None, **kwargs}
    if opts["domains"] is not None:
        opts["domains"] = positive_int("domains", opts["domains"])
    if opts["channels"] is not None:
        opts["channels"] = positive_int("channels", opts["channels"])
    return _segment_features(features, method, timings=timings, image_hw=(rx, ry),
                             extra={"route": "patterns", "feature_px": feature_px, "dc_radius_px": dc_radius_px},
                             **opts)
