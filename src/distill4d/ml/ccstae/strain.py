"""Strain maps with a CC-ST-AE trained, without labels, on the user's own scan.

:func:`strain_map_ccstae` does the whole job:

1. **Prepare**: every pattern is resampled (through the engine, out of core) onto the
   model's ``size x size`` grid with the direct beam at ``(size//2, size//2)``; by default the
   grid covers the largest circle about the beam that fits on the detector (a box prefilter
   keeps the counts when pixels are merged). Intensities are divided by one number for the
   whole scan (the brightest spot of the mean pattern becomes 1), never per pattern, so
   Poisson statistics stay consistent.
2. **Spot mask** from the mean pattern: its Bragg disks as the classical detector finds them
   (:func:`distill4d.bragg.mean_pattern_spots`), the direct beam left out, each covered by a
   disk of the probe radius plus ``margin_px`` (see :func:`spot_mask`).
3. **Training** (:mod:`distill4d.ml.ccstae.train`): the bases start as the means of a seeded k-means clustering of the masked patterns; the
   choice head is warmed up on those cluster labels during the first epoch, then everything
   is learned by the CC-ST-AE loss alone. Every 10th pattern is held out to monitor the loss:
   early stopping keeps the best epoch.
4. **Read-out**: each pattern's affine ``A`` (input ↔ base) gives ``F = A^-T`` (see
   :mod:`distill4d.ml.ccstae.model`); a base whose masked spots carry less than ``vacuum_ratio`` of
   the brightest base's is *vacuum* (no strain there). Sample bases other than the reference
   one are registered onto it by an affine fit, so that all sample positions share one frame.
   ``F`` relative to the median ``F_ref`` over the reference region, ``F F_ref^-1``, gives
   ``eps_xx, eps_yy, eps_xy, theta`` in the DESIGN convention (the classical path's), as a
   :class:`~distill4d.lattice.StrainMap`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import Distill4dError
from ...results import Provenance, Results
from ..._validate import nonnegative_float, positive_float, positive_int
from ...datacube import DataCube
from ...lattice.strain import StrainMap, reference_region, strain_from_deformation
from .._common.resample import resample_patterns
from .train import CCSTAETrainConfig, train_ccstae

__all__ = [
    "CCSTAEResult",
    "encode_patterns",
    "load_ccstae",
    "prepare_patterns",
    "refine_transforms",
    "save_ccstae",
    "spot_mask",
    "strain_map_ccstae",
]

# ============================================================================ preparation
def _prepare_batch(batch: np.ndarray, *, origin: tuple[float, float], scale: float, size: int,
                   blur_px: float = 0.0) -> np.ndarray:
    out = resample_patterns(np.asarray(batch, dtype=np.float32), origin, scale, size)
    if blur_px > 0:
        from scipy import ndimage

        out = ndimage.gaussian_filter(out, (0, blur_px, blur_px), mode="constant")
    return out


def _origin(datacube: DataCube, origin_px: Any) -> tuple[float, float]:
    if origin_px is None:
        origin_px = datacube.calibration.origin_px
    if origin_px is None:
        return _central_disk_centre(datacube.mean_pattern())
    o = np.asarray(origin_px, dtype=np.float64)
    if o.shape != (2,) or not np.all(np.isfinite(o)):
        raise Distill4dError(f"origin_px must be two finite pixel coordinates (qx, qy), got {origin_px!r}")
    return float(o[0]), float(o[1])


def _central_disk_centre(mean: np.ndarray) -> tuple[float, float]:
    """Centre of mass of the pixels above half the maximum of the mean pattern (the direct beam)."""
    m = np.nan_to_num(np.asarray(mean, dtype=np.float64))
    if not m.max() > 0:
        raise Distill4dError("the mean pattern is empty (all zero); there is no direct beam to centre on")
    w = np.where(m >= 0.5 * m.max(), m, 0.0)
    ix, iy = np.indices(m.shape)
    return float((w * ix).sum() / w.sum()), float((w * iy).sum() / w.sum())


def prepare_patterns(
    datacube: DataCube,
    *,
    size: int = 64,
    origin_px: Any = None,
    q_radius_px: float | None = None,
    blur_px: float = 1.5,
    **engine: Any,
) -> tuple[np.ndarray, dict[str, Any]]:
    """The patterns on the model grid, ``(Rx, Ry, size, size)`` float32, and the geometry used:
    ``{"origin_px", "scale", "size"}`` (``scale`` = grid pixel / detector pixel).

    origin_px : the direct beam on the detector (pixels); default the calibration's, else the
        centre of the mean pattern's central disk.
    q_radius_px : detector pixels from the beam to the grid's edge; default the largest
        circle about the beam that fits on the detector.
    blur_px : Gaussian sigma (grid pixels) applied after resampling. Bilinear warping of sharp
        disk edges pulls the fitted transform towards the identity (the un-interpolated
        image matches best); at 1.5 px the loss minimum of a known warp sits at the true
        transform (at 0 px, at 0.9 of it: ``tests/test_ccstae.py``). It also smooths shot noise.
    **engine : memory_budget, scheduler, n_workers, progress (see :func:`distill4d.engine.map_patterns`).
    """
    from ...engine import map_patterns

    if not isinstance(datacube, DataCube):
        raise TypeError(f"datacube must be a distill4d.DataCube, got {type(datacube).__name__}")
    size = positive_int("size", size)
    o = _origin(datacube, origin_px)
    qx, qy = datacube.shape[2:]
    if q_radius_px is None:
        q_radius_px = min(o[0], o[1], qx - 1 - o[0], qy - 1 - o[1])
        if q_radius_px < size / 8:
            raise Distill4dError(f"the direct beam {o} is too close to the detector edge; give q_radius_px")
    r = positive_float("q_radius_px", q_radius_px, maximum=4.0 * max(qx, qy))
    scale = r / (size // 2)
    blur = nonnegative_float("blur_px", blur_px)
    fn = functools.partial(_prepare_batch, origin=o, scale=scale, size=size, blur_px=blur)
    x = map_patterns(datacube, fn, desc="ccstae prepare", **engine)
    bad = ~np.isfinite(x).all(axis=(2, 3))
    if bad.any():
        where = [tuple(int(v) for v in p) for p in np.argwhere(bad)[:5]]
        raise Distill4dError(f"{int(bad.sum())} patterns contain NaN or inf, e.g. at scan positions {where}")
    return x, {"origin_px": list(o), "scale": float(scale), "size": size, "blur_px": blur}


def spot_mask(
    spots_px: np.ndarray, radius_px: float, geometry: dict[str, Any], *, margin_px: float = 1.5
) -> tuple[np.ndarray, np.ndarray, float]:
    """The loss mask on the model grid: ``(mask, spots, radius)`` in grid pixels.

    spots_px : ``(k, 2)`` Bragg disks on the detector (pixels; e.g. from
        :func:`distill4d.bragg.mean_pattern_spots`); the direct beam (within 1.5 disk radii of
        the origin) and disks whose mask would leave the grid are dropped.
    radius_px : the disk radius on the detector (pixels).
    geometry : ``{"origin_px", "scale", "size"}`` from :func:`prepare_patterns`.
    margin_px : grid pixels added to the disk radius (room for the disks to move).
    """
    size, scale = int(geometry["size"]), float(geometry["scale"])
    o = np.asarray(geometry["origin_px"], dtype=np.float64)
    r = positive_float("radius_px", radius_px) / scale
    reach = r + nonnegative_float("margin_px", margin_px)
    spots = (np.asarray(spots_px, dtype=np.float64).reshape(-1, 2) - o) / scale + size // 2
    d = np.hypot(*(spots - size // 2).T)
    inside = np.all((spots >= reach) & (spots <= size - 1 - reach), axis=1)
    spots = spots[(d > 1.5 * r) & inside]
    if not len(spots):
        raise Distill4dError("no Bragg disk besides the direct beam lies on the model grid; CC-ST-AE needs "
                             "a diffracting crystal (or a larger q_radius_px)")
    ix, iy = np.indices((size, size))
    mask = np.zeros((size, size), dtype=np.float32)
    for p in spots:
        mask[np.hypot(ix - p[0], iy - p[1]) <= reach] = 1.0
    return mask, spots, float(r)


def encode_patterns(model: Any, patterns: np.ndarray, *, batch_size: int = 256, device: Any = "auto") -> dict[str, np.ndarray]:
    """``A`` (N, 2, 2), ``t`` (N, 2; grid pixels) and ``classes`` (N,) of prepared patterns."""
    import torch

    from .._common.device import torch_device

    dev = torch_device(device)
    model = model.to(dev).eval()
    outs: dict[str, list[np.ndarray]] = {"A": [], "t": [], "classes": []}
    with torch.no_grad():
        for i in range(0, len(patterns), batch_size):
            o = model(torch.from_numpy(np.asarray(patterns[i : i + batch_size], dtype=np.float32)).to(dev))
            outs["A"].append(o["A"].double().cpu().numpy())
            outs["t"].append(o["t"].double().cpu().numpy())
            outs["classes"].append(o["logits"].argmax(1).cpu().numpy())
    model.to("cpu")
    return {k: np.concatenate(v) for k, v in outs.items()}


# ============================================================================ refinement
def _fit_warps(moving: Any, targets: Any, mask: Any, B: Any, s: Any, *, steps: int, lr_a: float, lr_t: float):
    """``(B, s)`` minimising, for each image, ``Σ mask · (α warp(moving, B, s) − targets)²`` with
    ``α`` in closed form; Adam from ``(B, s)``, moving about ``lr_a`` in ``B`` and ``lr_t`` grid px
    in ``s`` per step. Tensors: ``moving``, ``targets`` (N, S, S), ``mask`` (S, S), ``B`` (N, 2, 2),
    ``s`` (N, 2)."""
    import torch

    from .model import warp

    B, s = B.clone().requires_grad_(True), s.clone().requires_grad_(True)
    x = targets * mask
    opt = torch.optim.Adam([{"params": [B], "lr": lr_a}, {"params": [s], "lr": lr_t}])
    for _ in range(steps):
        pred = warp(moving, B, s) * mask
        alpha = ((pred * x).sum((1, 2)) / (pred * pred).sum((1, 2)).clamp_min(1e-12)).detach()
        loss = ((alpha[:, None, None] * pred - x) ** 2).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return B.detach(), s.detach()


def refine_transforms(
    patterns: np.ndarray,
    bases: np.ndarray,
    enc: dict[str, np.ndarray],
    mask: np.ndarray,
    *,
    steps: int = 100,
    batch_size: int = 4096,
    device: Any = "auto",
) -> dict[str, np.ndarray]:
    """Each pattern's own least-squares affine, starting from the encoder's.

    For every pattern ``x`` with chosen base ``b`` the inverse transform ``(B, s)`` and an
    intensity factor ``α`` minimise ``Σ mask · (α warp(b, B, s) − x)²`` (``α`` in closed form;
    Adam, ``steps`` steps, moving about 1e-3 in ``B`` and 0.02 grid px in ``s`` per step).
    The amortised encoder shrinks its transforms towards the scan's mean on noisy data; this
    fit does not (its error is that of a per-pattern estimate: larger, unbiased).
    Returns ``enc`` with ``A`` and ``t`` replaced.
    """
    import torch

    from .model import inverse_affine
    from .._common.device import torch_device

    steps = positive_int("steps", steps, minimum=0)
    dev = torch_device(device)
    M = torch.from_numpy(np.asarray(mask, dtype=np.float32)).to(dev)
    Bk = torch.from_numpy(np.asarray(bases, dtype=np.float32)).to(dev)
    A_out, t_out = np.array(enc["A"], dtype=np.float64), np.array(enc["t"], dtype=np.float64)
    for i in range(0, len(patterns), batch_size):
        sl = slice(i, i + batch_size)
        x = torch.from_numpy(np.asarray(patterns[sl], dtype=np.float32)).to(dev)
        base = Bk[torch.from_numpy(enc["classes"][sl]).to(dev)]
        Bi, si = inverse_affine(torch.from_numpy(A_out[sl]).float().to(dev), torch.from_numpy(t_out[sl]).float().to(dev))
        A, t = inverse_affine(*_fit_warps(base, x, M, Bi, si, steps=steps, lr_a=1e-3, lr_t=2e-2))
        A_out[sl], t_out[sl] = A.double().cpu().numpy(), t.double().cpu().numpy()
    return {**enc, "A": A_out, "t": t_out}


# ============================================================================ read-out
def _register(base: np.ndarray, ref: np.ndarray, mask: np.ndarray, steps: int = 300) -> np.ndarray:
    """The affine ``(A, t)`` as a 2x3 array with ``α warp(base, A, t) ≈ ref`` inside ``mask``."""
    import torch

    # 2e-3 per step in A, 0.05 px in t: a few px in 300 steps
    A, t = _fit_warps(torch.from_numpy(base.astype(np.float32))[None], torch.from_numpy(ref.astype(np.float32))[None],
                      torch.from_numpy(mask.astype(np.float32)), torch.eye(2)[None], torch.zeros(1, 2),
                      steps=steps, lr_a=2e-3, lr_t=5e-2)
    return np.column_stack([A[0].double().numpy(), t[0].double().numpy()])


@dataclasses.dataclass
class CCSTAEResult:
    """What :func:`strain_map_ccstae` found.

    strain : the strain map (NaN and ``mask`` True at vacuum positions).
    classes : ``(Rx, Ry)`` base chosen at each position.
    vacuum_bases : indices of the bases judged vacuum (no Bragg spots).
    bases : ``(K, S, S)`` the learned base patterns (prepared-grid pixels, scaled intensities).
    spot_mask : ``(S, S)`` the loss mask.
    transforms : ``(Rx, Ry, 2, 3)`` each pattern's ``[A | t]`` onto the reference base's frame.
    geometry : ``{"origin_px", "scale", "size", "intensity_scale"}`` of the preparation.
    history : per-epoch losses; ``info``: training summary; ``model``: the trained network.
    """

    strain: StrainMap
    classes: np.ndarray
    vacuum_bases: list[int]
    bases: np.ndarray
    spot_mask: np.ndarray
    transforms: np.ndarray
    geometry: dict[str, Any]
    history: list[dict[str, Any]]
    info: dict[str, Any]
    model: Any = None

    @property
    def sample(self) -> np.ndarray:
        """``(Rx, Ry)`` True where the chosen base is not vacuum."""
        return ~np.isin(self.classes, self.vacuum_bases)

    def _extra(self) -> dict[str, np.ndarray]:
        return {
            "ccstae/classes": self.classes.astype(np.int16),
            "ccstae/bases": self.bases.astype(np.float32),
            "ccstae/spot_mask": self.spot_mask.astype(np.uint8),
            "ccstae/transforms": self.transforms,
            "ccstae/vacuum_bases": np.asarray(self.vacuum_bases, dtype=np.int16),
        }

    def _attrs(self) -> dict[str, str]:
        return {"ccstae_geometry": json.dumps(self.geometry), "ccstae_info": json.dumps(self.info)}

    def to_result(self) -> Results:
        """The strain map's container (:meth:`StrainMap.to_result`) plus the ``ccstae/...`` arrays."""
        r = self.strain.to_result()
        return r.replace(arrays={**r.arrays, **self._extra()}, attrs={**r.attrs, **self._attrs()})

    def to_hdf5(self, path: str | os.PathLike, force: bool = False) -> Path:
        """The strain map (see :meth:`StrainMap.to_hdf5`) plus ``ccstae/classes``, ``bases``,
        ``spot_mask``, ``transforms`` and the geometry, in one file written atomically."""
        return self.strain.to_hdf5(path, force=force, extra=self._extra(), attrs=self._attrs())

    def plot_bases(self, path_or_ax: Any = None):
        """The class map and each base (spot mask outlined); saved when ``path_or_ax`` is a path."""
        import matplotlib

        if path_or_ax is None or isinstance(path_or_ax, (str, os.PathLike)):
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        from matplotlib.colors import BoundaryNorm, ListedColormap

        from ...plot.scalebar import label_real_space

        k = len(self.bases)
        fig, axes = plt.subplots(1, k + 1, figsize=(4 * (k + 1), 4), constrained_layout=True)
        # one colour per base, with a discrete colour bar naming each (and how often it was chosen)
        cmap = ListedColormap(plt.get_cmap("tab10")(np.arange(k) % 10))
        im = axes[0].imshow(self.classes, cmap=cmap, norm=BoundaryNorm(np.arange(k + 1) - 0.5, k),
                            interpolation="nearest")
        bar = fig.colorbar(im, ax=axes[0], ticks=np.arange(k), shrink=0.8)
        bar.ax.set_yticklabels([f"{j}: {'vacuum' if j in self.vacuum_bases else 'sample'} "
                                f"({int(np.sum(self.classes == j))})" for j in range(k)])
        bar.ax.set_title("base (positions)", fontsize=9)
        axes[0].set_title("base chosen")
        label_real_space(axes[0], self.strain.calibration.scan_step_A)
        for j in range(k):
            axes[j + 1].imshow(np.sqrt(np.clip(self.bases[j], 0, None)), cmap="magma")
            axes[j + 1].contour(self.spot_mask, levels=[0.5], colors="c", linewidths=0.5)
            axes[j + 1].set_title(f"base {j} (sqrt intensity)")
            axes[j + 1].set_xlabel("qy, prepared grid (px)")
            axes[j + 1].set_ylabel("qx, prepared grid (px)")
        if isinstance(path_or_ax, (str, os.PathLike)):
            fig.savefig(path_or_ax, dpi=110)
            plt.close(fig)
        return fig


def _spot_contrast(base: np.ndarray, spots: np.ndarray, radius: float) -> float:
    """Mean of ``base`` inside the disks at ``spots`` minus its mean in rings just outside them."""
    ix, iy = np.indices(base.shape)
    d = np.min([np.hypot(ix - p[0], iy - p[1]) for p in spots], axis=0)
    core, ring = d <= max(radius - 0.5, 0.7), (d > radius + 0.5) & (d <= radius + 2.0)
    return float(base[core].mean() - base[ring].mean()) if core.any() and ring.any() else 0.0


def _readout(
    enc: dict[str, np.ndarray],
    bases: np.ndarray,
    mask: np.ndarray,
    spots: np.ndarray,
    radius: float,
    scan_shape: tuple[int, int],
    reference: Any,
    vacuum_ratio: float,
) -> tuple[StrainMap, np.ndarray, list[int], np.ndarray]:
    k = len(bases)
    classes = enc["classes"].reshape(scan_shape)
    contrast = np.array([_spot_contrast(b, spots, radius) for b in bases])
    vacuum = [j for j in range(k) if contrast[j] < vacuum_ratio * contrast.max()]
    sample = ~np.isin(classes, vacuum)
    if not sample.any():
        raise Distill4dError("every position was assigned to a vacuum base; no strain can be measured")
    region = (slice(None), slice(None)) if reference is None or reference == "median" else reference_region(reference, scan_shape)
    in_ref = np.zeros(scan_shape, bool)
    in_ref[region] = True
    in_ref &= sample
    if not in_ref.any():
        raise Distill4dError(f"the reference region {reference!r} holds no sample (non-vacuum) position")
    ref_base = int(np.bincount(classes[in_ref], minlength=k).argmax())
    A = enc["A"].reshape(*scan_shape, 2, 2).copy()
    t = enc["t"].reshape(*scan_shape, 2).copy()
    for j in range(k):
        if j != ref_base and j not in vacuum and (classes == j).any():
            Tj = _register(bases[j], bases[ref_base], mask)
            sel = classes == j
            # input(c + A u + t) = base_j(u);  base_j(c + Aj v + tj) = base_ref(v)
            t[sel] = (A[sel] @ Tj[:, 2]) + t[sel]
            A[sel] = A[sel] @ Tj[:, :2]
    F = np.swapaxes(np.linalg.inv(A), -1, -2)
    F_ref = np.median(F[in_ref], axis=0)
    s = strain_from_deformation(F @ np.linalg.inv(F_ref))
    for name in s:
        s[name] = np.where(sample, s[name], np.nan)
    smap = StrainMap(**s, mask=~sample, reference=F_ref)
    return smap, classes, vacuum, np.concatenate([A, t[..., None]], axis=-1)


# ============================================================================ the whole job
def strain_map_ccstae(
    datacube: DataCube,
    probe: Any = None,
    *,
    num_base: int = 2,
    reference: Any = None,
    model: Any = None,
    config: Any = None,
    train: CCSTAETrainConfig = CCSTAETrainConfig(),
    size: int = 64,
    origin_px: Any = None,
    q_radius_px: float | None = None,
    margin_px: float = 1.5,
    min_spot_intensity: float = 0.005,
    vacuum_ratio: float = 0.25,
    refine_steps: int = 100,
    smooth: float = 0.0,
    device: Any = "auto",
    callback: Callable[[dict[str, Any]], None] | None = None,
    **engine: Any,
) -> CCSTAEResult:
    """Strain, shear and rotation maps and a sample / vacuum (or phase) map from a CC-ST-AE
    trained on ``datacube`` itself (no labels).

    Parameters
    ----------
    probe : the vacuum probe (optional; see :func:`distill4d.bragg.probe_template`), used to
        find the Bragg disks of the mean pattern and their radius.
    num_base : number of base patterns (2: sample and vacuum, or two phases).
    reference : ``None``/``"median"`` (all sample positions) or a region ``(slice, slice)``
        of the scan whose median deformation is the zero of strain and rotation.
    model : a model saved by :func:`save_ccstae` (path) or ``(model, card)`` from
        :func:`load_ccstae`: it is re-used (no training) with its own preparation geometry.
    config : a :class:`~distill4d.ml.ccstae.CCSTAEConfig` (default: ``size``, ``num_base``).
    train : the training settings.
    size, origin_px, q_radius_px : the preparation (see :func:`prepare_patterns`).
    margin_px : the spot mask's margin beyond the disk radius (grid pixels).
    min_spot_intensity : the weakest disk of the mean pattern kept in the mask, relative to
        the direct beam.
    vacuum_ratio : a base whose masked spot intensity is below this fraction of the brightest
        base's is vacuum.
    refine_steps : after the encoder, each pattern's own affine is fitted to its base
        (:func:`refine_transforms`); 0 keeps the encoder's transforms, which are shrunk towards
        the scan's mean on noisy data.
    smooth : Gaussian sigma in scan positions applied to the strain maps
        (:meth:`StrainMap.smoothed`; 0: none): precision for spatial resolution.
    device : "auto", "cpu" or "cuda[:N]" for training and encoding.
    callback : called with each epoch's losses.
    **engine : memory_budget, scheduler, n_workers, progress for reading the data.
    """
    from .model import CCSTAEConfig

    t0 = time.perf_counter()
    refine_steps = positive_int("refine_steps", refine_steps, minimum=0)
    smooth = nonnegative_float("smooth", smooth)
    vacuum_ratio = positive_float("vacuum_ratio", vacuum_ratio, maximum=1.0)
    card = None
    if model is not None:
        if isinstance(model, (str, os.PathLike)):
            model, card = load_ccstae(model)
        elif isinstance(model, tuple) and len(model) == 2:
            model, card = model
        else:
            raise TypeError("model must be a path written by save_ccstae or (model, card) from load_ccstae")
        g = card["geometry"]
        x, geom = prepare_patterns(datacube, size=g["size"], origin_px=g["origin_px"],
                                   q_radius_px=g["scale"] * (g["size"] // 2), blur_px=g["blur_px"], **engine)
        geom["intensity_scale"] = g["intensity_scale"]
        x /= geom["intensity_scale"]
        mask = model.spot_mask.detach().cpu().numpy()
        history, info = [], {**card.get("info", {}), "reused": True}
        spots, radius = np.asarray(info["spots"]), float(info["disk_radius_px"])
    else:
        x, geom = prepare_patterns(datacube, size=size, origin_px=origin_px, q_radius_px=q_radius_px, **engine)
    n = datacube.n_patterns
    flat = x.reshape(n, *x.shape[2:])
    if card is None:
        from ...bragg.com_disks import mean_pattern_spots

        found, window = mean_pattern_spots(datacube, probe, min_spot_intensity=min_spot_intensity, **engine)
        mask, spots, radius = spot_mask(found, window - 1.0, geom, margin_px=margin_px)
        mean = flat.mean(0)
        scale = float((mean * mask).max())
        if not scale > 0:
            raise Distill4dError("the Bragg spots of the mean pattern carry no intensity")
        flat /= scale
        geom["intensity_scale"] = scale
        cfg = config if config is not None else CCSTAEConfig(size=geom["size"], num_base=num_base)
        ref_index = None
        if reference is not None and not (isinstance(reference, str) and reference == "median"):
            sel = np.zeros(datacube.scan_shape, bool)
            sel[reference_region(reference, datacube.scan_shape)] = True
            ref_index = np.flatnonzero(sel.reshape(-1))
        model, history, info = train_ccstae(flat, mask, cfg, train, device=device, callback=callback,
                                            reference_index=ref_index)
        info.update({"spots": spots.tolist(), "disk_radius_px": radius, "train": dataclasses.asdict(train)})
    enc = encode_patterns(model, flat, device=device)
    bases = model.bases.detach().cpu().numpy()
    if refine_steps:
        enc = refine_transforms(flat, bases, enc, mask, steps=refine_steps, device=device)
    del flat, x
    smap, classes, vacuum, transforms = _readout(
        enc, bases, mask, spots, radius, datacube.scan_shape, reference, vacuum_ratio)
    smap = dataclasses.replace(smap, calibration=datacube.calibration, provenance=Provenance("ccstae", {
        "num_base": num_base, "reference": reference, "size": size, "origin_px": origin_px,
        "q_radius_px": q_radius_px, "margin_px": margin_px, "min_spot_intensity": min_spot_intensity,
        "vacuum_ratio": vacuum_ratio, "refine_steps": refine_steps, "train": dataclasses.asdict(train),
        "model": None if model is None else str(model) if isinstance(model, (str, os.PathLike)) else "in-memory model"}))
    if smooth > 0:
        smap = smap.smoothed(smooth)
    info.update({"refine_steps": refine_steps, "smooth": smooth, "total_seconds": time.perf_counter() - t0})
    return CCSTAEResult(strain=smap, classes=classes, vacuum_bases=vacuum, bases=bases, spot_mask=mask,
                        transforms=transforms, geometry=geom, history=history, info=info, model=model)


# ============================================================================ files
def save_ccstae(path: str | os.PathLike, result: CCSTAEResult, *, force: bool = False) -> Path:
    """Write the trained model of ``result`` (a plain state_dict, ``path``) and its card
    (``path`` with ``.json``: architecture, preparation geometry, training summary)."""
    from .._common.model_files import CARD_FORMATS, save_state_and_card

    if result.model is None:
        raise Distill4dError("result holds no model to save")
    card = {"format": CARD_FORMATS["ccstae"], "config": result.model.config.to_dict(), "geometry": result.geometry,
            "vacuum_bases": result.vacuum_bases, "info": result.info,
            "history": result.history}
    return save_state_and_card(path, result.model, card, force=force)


def load_ccstae(path: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
    """``(model, card)`` from :func:`save_ccstae` (weights loaded with ``weights_only=True``)."""
    from .._common.model_files import load_model
    from .model import CCSTAE, CCSTAEConfig

    return load_model(path, "ccstae", lambda card: CCSTAE(CCSTAEConfig.from_dict(card.config)))
