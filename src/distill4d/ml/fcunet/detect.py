"""Bragg disk detection with a trained FCU-Net (the shipped weights by default).

Each pattern (and the vacuum probe) is resampled onto the model's grid — its size and
pixel size in 1/Å, the direct beam at ``(N//2, N//2)`` — with a box prefilter when the data
are finer than the model's pixels (no counts are thrown away at low dose). The network
predicts the structure-factor image (one pass with dropout off by default, or the mean of
``n_passes`` Monte-Carlo dropout passes, whose spread gives a per-peak uncertainty); its
maxima are found, filtered and refined with the classical detector's code
(:func:`distill4d.bragg.detect.peaks_from_images`) and mapped back to the input's pixels.
The resulting :class:`~distill4d.bragg.BraggPeaks` feed the same lattice and strain code as
the classical path.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import warnings
from typing import Any

import numpy as np

from ...errors import Distill4dError
from ..._validate import nonnegative_float, positive_int
from .._common.device import torch_device
from .._common.resample import resample_patterns
from . import DEFAULT_MIN_INTENSITY, DEFAULT_PASSES, DEFAULT_WEIGHTS

__all__ = [
    "FCUNetDetector",
    "fcunet_detector",
    "find_bragg_disks_fcunet",
    "load_fcunet",
    "peaks_from_prediction",
    "true_peaks",
]

def load_fcunet(weights: str | os.PathLike | None = None, *, device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """Load an FCU-Net and its model card (``weights`` with ``.json``); None: the shipped model.

    Read through :func:`distill4d.ml._common.model_files.load_model` (``torch.load(weights_only=True)``:
    no pickle code runs); the card is a :class:`~distill4d.ml._common.model_files.ModelCard`.
    """
    from .._common.model_files import load_model
    from .model import FCUNet, FCUNetConfig

    path = DEFAULT_WEIGHTS if weights is None else pathlib.Path(os.fspath(weights))
    return load_model(path, "fcunet", lambda card: FCUNet(FCUNetConfig.from_dict(card.config)), device=device)


def _prediction_params(min_intensity: float, max_peaks: int = 256) -> Any:
    from ...bragg.detect import DetectionParameters

    return DetectionParameters(
        radius_px=1.0,
        edge_px=1.0,
        min_spacing_px=2.0,
        min_relative_intensity=0.0,
        min_absolute_intensity=min_intensity,
        max_peaks=max_peaks,
        subpixel="dft",
    )


def peaks_from_prediction(images: np.ndarray, min_intensity: float = DEFAULT_MIN_INTENSITY) -> list[np.ndarray]:
    """Peaks ``(m, 3)`` (qx, qy in the image's pixels, predicted amplitude) of each predicted image."""
    from ...bragg.detect import peaks_from_images

    imgs = np.asarray(images, dtype=np.float64)
    found = peaks_from_images(imgs, _prediction_params(min_intensity))
    return [
        np.stack([found["qx"][j, :c], found["qy"][j, :c], found["intensity"][j, :c]], axis=1)
        for j, c in enumerate(found["count"])
    ]


def true_peaks(peaks: np.ndarray, shape: tuple[int, int], min_amplitude: float = 0.01, edge_px: float = 1.0) -> np.ndarray:
    """The kinematic peaks a detector can be scored against: amplitude ≥ ``min_amplitude`` of
    (000), at least ``edge_px`` inside the detector and inside its inscribed circle (where the
    simulated patterns are defined)."""
    p = np.asarray(peaks, dtype=np.float64).reshape(-1, 3)
    nx, ny = shape
    r = np.hypot(p[:, 0] - nx // 2, p[:, 1] - ny // 2)
    keep = (
        (p[:, 2] >= min_amplitude)
        & (p[:, 0] >= edge_px) & (p[:, 0] <= nx - 1 - edge_px)
        & (p[:, 1] >= edge_px) & (p[:, 1] <= ny - 1 - edge_px)
        & (r <= min(nx, ny) / 2 - edge_px)
    )
    return p[keep]


class FCUNetDetector:
    """A loaded FCU-Net bound to one detector geometry; ``detect_batch`` is an engine batch function.

    Parameters
    ----------
    probe : the vacuum probe image ``(Qx, Qy)`` of the data (any position on the detector).
    q_pixel_inv_A : the data's detector pixel size in 1/Å.
    origin_px : the direct beam's position in the data's pixels ``(qx, qy)``.
    weights : weights file (None: the shipped model).
    n_passes : Monte-Carlo dropout passes averaged per pattern (1, the default: dropout off, deterministic).
    views : ``"none"`` (default), ``"flips"`` or ``"dihedral"``: average the prediction over that
        many mirrored views of each pattern (:class:`~distill4d.ml.fcunet.FCUNetViews`; 1, 4
        or 8 times the cost).
    min_intensity : prediction threshold (relative to (000)); None: the model card's tuned one.
    seed : seed of the dropout masks (the same data give the same peaks).
    device : ``"auto"``, ``"cpu"`` or ``"cuda[:N]"`` (see :func:`distill4d.ml._common.device.torch_device`).
    batch_size : patterns per network call.
    loaded : ``(model, card)`` from :func:`load_fcunet` on ``device``, to share one loaded network
        (``weights`` is then only its name).
    """

    def __init__(
        self,
        probe: np.ndarray,
        *,
        q_pixel_inv_A: float,
        origin_px: tuple[float, float],
        probe_origin_px: tuple[float, float] | None = None,
        weights: str | os.PathLike | None = None,
        n_passes: int = DEFAULT_PASSES,
        views: str = "none",
        min_intensity: float | None = None,
        seed: int = 0,
        device: str = "auto",
        batch_size: int = 32,
        loaded: tuple[Any, dict[str, Any]] | None = None,
    ) -> None:
        from .model import FCUNetViews

        self.device = torch_device(device)
        if loaded is None:
            self.model, self.card = load_fcunet(weights, device=self.device)
        else:  # one network shared by several detectors (the inference server)
            self.model, self.card = loaded
        self.views = views
        if views != "none":
            self.model = FCUNetViews(self.model, views)  # raises for an unknown name
        status = str(self.card.get("status", ""))
        if status.startswith("preliminary"):
            warnings.warn(f"FCU-Net weights {weights or DEFAULT_WEIGHTS.name}: {status}", stacklevel=2)
        self.size = int(self.card["input"]["size_px"])
        self.model_q_pixel = float(self.card["input"]["q_pixel_inv_A"])
        q = float(q_pixel_inv_A)
        if not (np.isfinite(q) and q > 0):
            raise Distill4dError(f"q_pixel_inv_A must be a positive pixel size in 1/Å, got {q_pixel_inv_A!r}")
        self.q_pixel_inv_A = q
        self.scale = self.model_q_pixel / q
        if not 0.1 <= self.scale <= 20:
            raise Distill4dError(
                f"the data's pixel size {q:.4g} 1/Å is {self.scale:.3g}x finer than the model's "
                f"{self.model_q_pixel:.4g} 1/Å; FCU-Net resamples only between 0.1x (coarser data) and 20x"
            )
        self.origin = (float(origin_px[0]), float(origin_px[1]))
        probe = np.asarray(probe, dtype=np.float64)
        if probe.ndim != 2 or not np.all(np.isfinite(probe)) or probe.max() <= 0:
            raise Distill4dError(f"probe must be a finite 2D image with a positive maximum, got shape {probe.shape}")
        po = self.origin if probe_origin_px is None else (float(probe_origin_px[0]), float(probe_origin_px[1]))
        p = resample_patterns(probe[None], po, self.scale, self.size)[0]
        if p.max() <= 0:
            raise Distill4dError("the probe is empty after resampling onto the model grid (is its origin on the detector?)")
        self.probe = p / p.max()
        self.n_passes = positive_int("n_passes", n_passes)
        tuned = self.card.get("detection", {}).get("min_intensity", DEFAULT_MIN_INTENSITY)
        self.min_intensity = nonnegative_float("min_intensity", tuned if min_intensity is None else min_intensity)
        self.seed = int(seed)
        self.batch_size = positive_int("batch_size", batch_size)

    def predict(self, patterns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation over the MC passes of the predicted images, on the model grid."""
        import torch

        x = resample_patterns(np.asarray(patterns), self.origin, self.scale, self.size)
        bad = ~np.isfinite(x).all(axis=(1, 2))
        x[bad] = 0.0
        mean = np.zeros(x.shape, dtype=np.float32)
        sq = np.zeros(x.shape, dtype=np.float32)
        mc = self.n_passes > 1
        self.model.set_mc_dropout(mc)
        gen_state = torch.random.get_rng_state()
        try:
            torch.manual_seed(self.seed)
            with torch.no_grad():
                for b in range(0, x.shape[0], self.batch_size):
                    xb = torch.from_numpy(x[b : b + self.batch_size]).to(self.device)
                    pb = torch.from_numpy(self.probe).to(self.device).expand_as(xb)
                    for _ in range(self.n_passes):
                        y = self.model(xb, pb).float().cpu().numpy()
                        mean[b : b + len(y)] += y
                        sq[b : b + len(y)] += y * y
        finally:
            torch.random.set_rng_state(gen_state)
            self.model.set_mc_dropout(True)
        mean /= self.n_passes
        std = np.sqrt(np.maximum(sq / self.n_passes - mean**2, 0.0))
        mean[bad] = np.nan
        return mean, std

    def to_input_px(self, qx: np.ndarray, qy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Model-grid pixels → the data's pixels."""
        c = self.size // 2
        return self.origin[0] + (qx - c) * self.scale, self.origin[1] + (qy - c) * self.scale

    def detect_batch(self, batch: np.ndarray, max_peaks: int = 256) -> dict[str, np.ndarray]:
        """Padded peaks of a batch ``(n, Qx, Qy)``: qx, qy (data pixels), intensity, sigma, count."""
        from ...bragg.detect import peaks_from_images

        mean, std = self.predict(batch)
        found = peaks_from_images(mean, _prediction_params(self.min_intensity, max_peaks))
        qx, qy = self.to_input_px(found["qx"], found["qy"])
        # uncertainty: the MC spread of the prediction at the peak's nearest pixel
        sigma = np.full(found["qx"].shape, np.nan)
        ok = np.isfinite(found["qx"])
        ii = np.nonzero(ok)[0]
        ix = np.clip(np.rint(found["qx"][ok]).astype(int), 0, self.size - 1)
        iy = np.clip(np.rint(found["qy"][ok]).astype(int), 0, self.size - 1)
        sigma[ok] = std[ii, ix, iy]
        return {"qx": qx, "qy": qy, "intensity": found["intensity"], "sigma": sigma, "count": found["count"]}


def _detect(batch: np.ndarray, detector: FCUNetDetector) -> dict[str, np.ndarray]:
    return detector.detect_batch(batch)


def _detect_refined(batch: np.ndarray, detector: FCUNetDetector, rim: Any) -> dict[str, np.ndarray]:
    """FCU-Net says which disks exist (and roughly where), the rim fit where exactly."""
    from ...bragg.refine import rim_refine

    out = detector.detect_batch(batch)
    b = np.asarray(batch, dtype=np.float64)
    if not np.isfinite(b).all():
        b = np.where(np.isfinite(b), b, 0.0)
    out["qx"], out["qy"] = rim_refine(b, out["qx"], out["qy"], rim)
    return out


def _pixel_size(datacube: Any, probe: Any, q_pixel_inv_A: float | None) -> float:
    if q_pixel_inv_A is not None:
        return float(q_pixel_inv_A)
    cal = datacube.calibration
    if cal.q_pixel_inv_A is not None:
        return float(cal.q_pixel_inv_A)
    if cal.semiangle_mrad is not None and cal.energy_eV is not None:
        # the probe disk's radius in pixels is the semiangle / wavelength in 1/Å
        return float(cal.semiangle_mrad * 1e-3 / cal.wavelength_A / probe.radius_px)
    raise Distill4dError(
        "FCU-Net needs the detector pixel size: give the calibration's q_pixel_inv_A "
        "(--q-pixel-inv-A), or the semiangle and beam energy (--semiangle-mrad, --energy-kV)"
    )


def fcunet_detector(
    datacube: Any,
    probe: Any = None,
    *,
    weights: str | os.PathLike | None = None,
    n_passes: int = DEFAULT_PASSES,
    views: str = "none",
    min_intensity: float | None = None,
    q_pixel_inv_A: float | None = None,
    origin_px: tuple[float, float] | None = None,
    seed: int = 0,
    device: str = "auto",
    loaded: tuple[Any, dict[str, Any]] | None = None,
) -> FCUNetDetector:
    """The :class:`FCUNetDetector` that :func:`find_bragg_disks_fcunet` applies to ``datacube``.

    The probe template is built as for the correlation detector (None: the central disk of the
    mean pattern); the direct beam is at ``origin_px``, else the calibration's origin, else the
    probe's centre; the pixel size as in :func:`find_bragg_disks_fcunet`. ``loaded``: a
    ``(model, card)`` pair from :func:`load_fcunet` to share.
    """
    from ...bragg.detect import as_datacube
    from ...bragg.probe import probe_template

    dc = as_datacube(datacube)
    pr = probe_template(probe, datacube=dc, kind="disk")
    dq = _pixel_size(dc, pr, q_pixel_inv_A)
    cal = dc.calibration
    origin = origin_px if origin_px is not None else cal.origin_px if cal.origin_px is not None else pr.origin_px
    image = np.fft.fftshift(pr.kernel)  # centred at (Qx//2, Qy//2)
    nx, ny = image.shape
    return FCUNetDetector(
        image, q_pixel_inv_A=dq, origin_px=origin, probe_origin_px=(nx // 2, ny // 2), weights=weights,
        n_passes=n_passes, views=views, min_intensity=min_intensity, seed=seed, device=device, loaded=loaded,
    )


def find_bragg_disks_fcunet(
    datacube: Any,
    probe: Any = None,
    *,
    weights: str | os.PathLike | None = None,
    n_passes: int = DEFAULT_PASSES,
    views: str = "none",
    min_intensity: float | None = None,
    q_pixel_inv_A: float | None = None,
    seed: int = 0,
    device: str = "auto",
    memory_budget: int | None = None,
    scheduler: Any = "inline",
    n_workers: int | None = None,
    progress: bool | None = None,
    checkpoint: Any = None,
    return_uncertainty: bool = False,
    refine: str = "none",
) -> Any:
    """Find the Bragg disks of every pattern with FCU-Net; a :class:`BraggPeaks` in the data's pixels.

    probe : the vacuum probe (as for :func:`distill4d.bragg.find_bragg_disks`; None: the
        central disk of the mean pattern).
    weights : a weights file with its model card beside it (None: the shipped model).
    n_passes : Monte-Carlo dropout passes averaged per pattern (1, the default: no dropout;
        see :data:`DEFAULT_PASSES`).
    views : ``"none"`` (default), ``"flips"`` (4 mirrored views averaged) or ``"dihedral"`` (8,
        with transposes): test-time averaging, at that many times the cost.
    min_intensity : threshold on the predicted amplitude (relative to (000)); None: tuned one.
    q_pixel_inv_A : the detector pixel size in 1/Å (default: the calibration, else from the
        semiangle, energy and the probe's radius).
    The direct beam is at the calibration's origin, else at the probe's centre.
    return_uncertainty : also return the per-peak MC standard deviation of the predicted
        amplitude (a flat array aligned with the peaks; all 0 with one pass).
    refine : ``"none"`` (the network's positions) or ``"rim"``: FCU-Net judges which disks exist,
        and each position is refined by the rim circle fit with the tilt-bias model
        (:func:`distill4d.bragg.refine.rim_refine`).
    """
    from ...bragg.detect import as_datacube
    from ...bragg.peaks import BraggPeaks
    from ...engine import map_patterns

    if refine not in ("none", "rim"):
        raise Distill4dError(f"refine must be 'none' or 'rim', got {refine!r}")
    dc = as_datacube(datacube)
    cal = dc.calibration
    detector = fcunet_detector(dc, probe, weights=weights, n_passes=n_passes, views=views,
                               min_intensity=min_intensity, q_pixel_inv_A=q_pixel_inv_A, seed=seed, device=device)
    dq, origin = detector.q_pixel_inv_A, detector.origin
    rim = None
    if refine == "rim":
        from ...bragg.probe import probe_template
        from ...bragg.refine import RimParameters, rim_radius_px, rim_tilt_bias_px

        pr = probe_template(probe, datacube=dc, kind="disk")
        r = rim_radius_px(pr)
        rim = RimParameters(radius_px=r, search_px=min(2.0, 0.5 * r))
        rim = dataclasses.replace(rim, bias_px=rim_tilt_bias_px(pr, rim))
        fn = functools.partial(_detect_refined, detector=detector, rim=rim)
    else:
        fn = functools.partial(_detect, detector=detector)
    key = (
        f"fcunet:{weights or 'shipped'}:{detector.card.get('training', {}).get('seconds')}:{n_passes}:"
        f"{detector.min_intensity}:{dq}:{origin}:{seed}" + ("" if views == "none" else f":{views}")
        + ("" if rim is None else f":{rim}")
    )
    res = map_patterns(
        dc, fn, memory_budget=memory_budget, scheduler=scheduler, n_workers=n_workers, progress=progress,
        checkpoint=checkpoint, job_key=key, desc="fcunet disks",
    )
    params = {
        "method": "fcunet",
        "weights": str(weights or DEFAULT_WEIGHTS.name),
        "n_passes": n_passes,
        "views": views,
        "min_intensity": detector.min_intensity,
        "q_pixel_inv_A": dq,
        "origin_px": list(origin),
        "seed": seed,
        "refine": refine,
    }
    if rim is not None:
        params["rim"] = dataclasses.asdict(rim)
    peaks = BraggPeaks.from_padded(res["qx"], res["qy"], res["intensity"], res["count"], cal, params=params)
    if not return_uncertainty:
        return peaks
    take = np.arange(res["qx"].shape[2]) < res["count"][..., None]
    return peaks, res["sigma"][take]
