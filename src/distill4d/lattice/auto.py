"""``method="auto"``: choose the Bragg-disk detector for strain from the data, and say why.

1. Evidence from the disks (:func:`disk_evidence`): the Friedel asymmetry of the disk
   intensities, ``sum |I(g) - I(-g)| / sum (I(g) + I(-g))`` over the pairs of disks of the
   (reference region's) mean pattern, in each of up to ``n_sample`` patterns (median). On zone
   (thin or thick) the pairs are nearly equal; a tilt moves the Laue circle and makes them
   unequal, and inside each disk the intensity moves towards the Bragg condition, which biases
   correlation with the vacuum probe. The interior contrast of the disks (standard deviation /
   mean inside 0.6 of the radius, against the probe's) is recorded too.
2. Below ``asymmetry_threshold`` and with disks nearly flat inside (``interior_contrast`` below
   ``contrast_threshold``: a thin crystal on zone): plain correlation.
3. Otherwise (a tilt, or a thick crystal whose disks are full of dynamical contrast even on zone, where
   correlation with the flat probe is imprecise): every candidate detector runs on the validation region
   (the strain reference
   region; without one, the central block of at most ``8 x 8`` positions), and the one whose
   strain there is the least scattered wins (the reference region's strain should be uniform;
   without a reference, real strain adds the same variance to every detector that follows it).
   A candidate must beat correlation by the factor ``margin``, else correlation is kept. The
   per-reflection templates (``"template"``) are made from half the region's positions (a
   checkerboard) and scored on the other half: templates are their region's mean, so scored on the
   same patterns they would win by construction.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from .._validate import positive_float
from ..bragg.com_disks import com_batch
from ..bragg.detect import as_datacube, detection_setup, find_bragg_disks
from ..bragg.mean import finite_mean_pattern
from ..bragg.peaks import BraggPeaks
from ..bragg.probe import probe_template
from ..bragg.refine import find_bragg_disks_rim, find_bragg_disks_template
from ..datacube import DataCube
from ..errors import Distill4dError
from .find import find_lattice
from .fit import fit_lattice
from .strain import reference_region, strain_map

__all__ = ["AUTO_CANDIDATES", "AutoChoice", "disk_evidence", "choose_disk_method", "find_bragg_disks_auto",
           "find_disks_by_method"]

#: Detectors ``auto`` chooses among (correlation first: the fallback).
AUTO_CANDIDATES = ("correlation", "sobel", "rim", "template")
#: Friedel asymmetry of the disk intensities above which the robust detectors are tried.
ASYMMETRY_THRESHOLD = 0.15
#: Interior contrast of the disks (std / mean inside 0.6 of the radius, the validation region's mean pattern)
#: above which the robust detectors are tried even on zone. Si [011] multislice strain sets: 60 nm 0.52, 20 nm
#: tilted 0.12-0.18; kinematic (flat) disks 0.03 at 1e5 e-/pattern and 0.14 at 3e3 (shot noise).
CONTRAST_THRESHOLD = 0.3
#: A candidate replaces correlation only when its validation scatter is below this x correlation's.
MARGIN = 0.8
#: The template candidate needs every scored pattern to show this fraction of the templates' disks (intensity-
#: weighted, above the window's border level) among its correlation peaks: strain sets (one crystal state) 0.99-1.00
#: per pattern; central blocks of the identification benchmark's scans, which mix zone axes, down to 0.29-0.73.
TEMPLATE_MATCH = 0.9
#: Largest validation block without a reference region (positions per side).
VALIDATION_BLOCK = 8
#: The candidates run on at most about this many positions of the validation region (a strided grid).
MAX_VALIDATION_PATTERNS = 64
#: Detection parameters chosen once on the whole scan and passed on (not re-chosen per candidate).
_SHARED = ("min_spacing_px", "min_relative_intensity", "max_peaks", "min_relative_intensity_sites",
           "site_tolerance_px", "sites_px", "edge_px", "radius_px")


@dataclasses.dataclass(frozen=True)
class AutoChoice:
    """The detector ``auto`` chose and the evidence.

    Attributes
    ----------
    method : one of ``AUTO_CANDIDATES``.
    evidence : the measurements behind the choice (JSON-able): ``friedel_asymmetry``,
        ``interior_contrast``, ``probe_contrast``, ``n_disks``, ``seconds`` (of the choice), and
        when candidates were run, ``validation`` (region, score kind) and ``scores`` (strain
        scatter per candidate, %).
    reason : one line for the user.
    settings : keyword arguments of :func:`find_disks_by_method` for the whole scan that reuse
        what the choice measured (detection thresholds, the learned tilt-bias coefficient).
    """

    method: str
    evidence: dict
    reason: str
    settings: dict = dataclasses.field(default_factory=dict)


def disk_evidence(datacube: DataCube, probe: Any = None, *, region: tuple[slice, slice] | None = None,
                  n_sample: int = 64, detection: dict | None = None) -> dict:
    """Disk-contrast evidence of thickness and tilt (see the module doc): ``friedel_asymmetry``
    (median over up to ``n_sample`` patterns of ``region``, fraction), ``interior_contrast`` and
    ``probe_contrast`` (std / mean inside 0.6 of the disk radius, mean pattern and probe), ``n_disks``."""
    dc = as_datacube(datacube)
    region = region or (slice(None), slice(None))
    sub = dc[region[0], region[1]]
    template = probe_template(probe, datacube=dc, kind="disk")
    r = template.radius_px
    mean = finite_mean_pattern(sub, scheduler="inline", progress=False)
    mp = find_bragg_disks(DataCube(mean[None, None], dc.calibration), template, scheduler="inline", progress=False,
                          **(detection or {}))
    spots = np.stack([mp.qx, mp.qy], axis=1)
    nx, ny = dc.pattern_shape
    w = r + 1.0 + 2.0
    inside = (spots[:, 0] >= w) & (spots[:, 0] <= nx - 1 - w) & (spots[:, 1] >= w) & (spots[:, 1] <= ny - 1 - w)
    spots, inten = spots[inside], mp.intensity[inside]
    out = {"n_disks": int(spots.shape[0]), "friedel_asymmetry": None, "interior_contrast": None,
           "probe_contrast": _contrast(np.fft.fftshift(template.kernel)[None],
                                       np.array([[nx // 2, ny // 2]], float), r)}
    if spots.shape[0] < 3:
        return out
    direct = int(np.argmax(inten))
    o = spots[direct]
    partner = np.hypot(*(2 * o - spots[:, None, :] - spots[None, :, :]).transpose(2, 0, 1)).argmin(axis=1)
    dist = np.hypot(*(2 * o - spots - spots[partner]).T)
    pairs = [(i, int(j)) for i, j in enumerate(partner) if i < j and dist[i] <= 1.5 and i != direct]
    others = np.array([i for i in range(len(spots)) if i != direct])
    out["interior_contrast"] = _contrast(mean[None], spots[others], r) if others.size else None
    if not pairs:
        return out
    flat = np.arange(sub.n_patterns)
    take = np.unique(np.linspace(0, sub.n_patterns - 1, min(n_sample, sub.n_patterns)).round().astype(int))
    rx, ry = np.unravel_index(flat[take], sub.scan_shape)
    stack = np.stack([np.asarray(sub.pattern(int(a), int(b)), dtype=np.float64) for a, b in zip(rx, ry)])
    res = com_batch(stack, spots, r + 1.0, iterations=0, background=True)
    # com_batch packs valid windows first; with iterations=0 every window is at its spot, so
    # map them back by position
    tot = np.zeros((stack.shape[0], len(spots)))
    for j in range(stack.shape[0]):
        c = int(res["count"][j])
        d = np.hypot(res["qx"][j, :c, None] - spots[None, :, 0], res["qy"][j, :c, None] - spots[None, :, 1])
        tot[j, d.argmin(axis=1)] = res["intensity"][j, :c]
    I1 = np.stack([tot[:, i] for i, _ in pairs], axis=1)
    I2 = np.stack([tot[:, k] for _, k in pairs], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        asym = np.abs(I1 - I2).sum(axis=1) / (I1 + I2).sum(axis=1)
    asym = asym[np.isfinite(asym)]
    out["friedel_asymmetry"] = float(np.median(asym)) if asym.size else None
    out["n_pairs"] = len(pairs)
    return out


def _contrast(images: np.ndarray, spots: np.ndarray, radius: float) -> float:
    """Intensity-weighted mean over disks of std / mean of the pixels within 0.6 ``radius``."""
    img = images[0]
    x = np.arange(img.shape[0])[:, None]
    y = np.arange(img.shape[1])[None, :]
    cvs, ws = [], []
    for sx, sy in spots:
        m = (x - sx) ** 2 + (y - sy) ** 2 <= (0.6 * radius) ** 2
        v = img[m]
        if v.size < 3 or not v.mean() > 0:
            continue
        cvs.append(v.std() / v.mean())
        ws.append(v.mean())
    return float(np.average(cvs, weights=ws)) if cvs else float("nan")


def find_disks_by_method(method: str, datacube: DataCube, probe: Any = None, **options: Any) -> BraggPeaks:
    """Bragg disks by one named detector: ``"correlation"``, ``"sobel"`` (edge-filtered
    correlation), ``"rim"`` (correlation, then a rim circle fit) or ``"template"`` (per-reflection
    templates of a reference region); ``options``: engine options, detection parameters and (rim,
    template) :func:`~distill4d.bragg.find_bragg_disks_rim`'s or
    :func:`~distill4d.bragg.find_bragg_disks_template`'s options."""
    if method == "correlation":
        return find_bragg_disks(datacube, probe, **options)
    if method == "sobel":
        return find_bragg_disks(datacube, probe, kind="sobel", **options)
    if method == "rim":
        return find_bragg_disks_rim(datacube, probe, **options)
    if method == "template":
        return find_bragg_disks_template(datacube, probe, **options)
    raise Distill4dError(f"method must be one of {AUTO_CANDIDATES}, got {method!r}")


def _scatter_pct(peaks: BraggPeaks, basis: Any = None) -> float:
    """Strain scatter (%) of a validation block: RMS over eps_xx, eps_yy and eps_xy of the
    deviations from the block's median (inf when more than half the fits fail); ``basis``: the
    indexing (default: found on ``peaks``)."""
    try:
        sm = strain_map(fit_lattice(peaks, basis))
    except Distill4dError:
        return math.inf
    if float(np.mean(sm.mask)) > 0.5:
        return math.inf
    parts = []
    for k in ("eps_xx", "eps_yy", "eps_xy"):
        v = getattr(sm, k)
        v = v[np.isfinite(v)]
        parts.append(np.mean((v - np.median(v)) ** 2))
    return 100.0 * math.sqrt(float(np.mean(parts)))


def choose_disk_method(
    datacube: Any,
    probe: Any = None,
    *,
    reference: Any = None,
    candidates: tuple[str, ...] = AUTO_CANDIDATES,
    asymmetry_threshold: float = ASYMMETRY_THRESHOLD,
    contrast_threshold: float = CONTRAST_THRESHOLD,
    margin: float = MARGIN,
) -> AutoChoice:
    """Choose the disk detector for ``datacube`` (see the module doc).

    Parameters
    ----------
    datacube : the data.
    probe : vacuum probe (see :func:`distill4d.bragg.probe_template`); None: from the data.
    reference : the strain reference region ``(slice, slice)``, validated against the scan;
        None: the central block of at most 8 x 8 positions.
    candidates : detectors to try (``"correlation"`` is always among them, as the fallback).
    asymmetry_threshold, contrast_threshold : below both the Friedel asymmetry (fraction) and the disks'
        interior contrast (std / mean), correlation is kept untried.
    margin : a candidate wins only with a scatter below ``margin`` x correlation's.

    Returns
    -------
    AutoChoice
    """
    import time

    t0 = time.perf_counter()
    dc = as_datacube(datacube)
    unknown = [c for c in candidates if c not in AUTO_CANDIDATES]
    if unknown:
        raise Distill4dError(f"candidates must be among {AUTO_CANDIDATES}, got {unknown}")
    asymmetry_threshold = positive_float("asymmetry_threshold", asymmetry_threshold, maximum=1.0)
    contrast_threshold = positive_float("contrast_threshold", contrast_threshold, maximum=100.0)
    margin = positive_float("margin", margin, maximum=1.0)
    if reference is not None:
        region = reference_region(reference, dc.scan_shape)
        where = "reference region"
    else:
        bx, by = (min(VALIDATION_BLOCK, n) for n in dc.scan_shape)
        x0, y0 = (dc.scan_shape[0] - bx) // 2, (dc.scan_shape[1] - by) // 2
        region = (slice(x0, x0 + bx), slice(y0, y0 + by))
        where = "central block"
    template, det = detection_setup(dc, probe)
    shared = {k: getattr(det, k) for k in _SHARED}
    ev = disk_evidence(dc, template, region=region, detection=shared)
    asym, contrast = ev.get("friedel_asymmetry"), ev.get("interior_contrast")
    ev["asymmetry_threshold"] = asymmetry_threshold
    ev["contrast_threshold"] = contrast_threshold
    uneven = asym is not None and asym >= asymmetry_threshold
    contrasty = contrast is not None and contrast >= contrast_threshold  # NaN compares False
    if not (uneven or contrasty):
        ev["seconds"] = time.perf_counter() - t0
        why = ("no Friedel pairs of disks to judge tilt by" if asym is None
               else f"disk pairs symmetric (Friedel asymmetry {asym:.3f} < {asymmetry_threshold:g}): on zone")
        if contrast is not None and math.isfinite(contrast):
            why += f", disks flat inside (contrast {contrast:.2f} < {contrast_threshold:g})"
        return AutoChoice("correlation", ev, f"correlation: {why}", shared)
    seen = (f"disks uneven (Friedel asymmetry {asym:.3f})" if uneven
            else f"disks full of contrast on zone (interior contrast {contrast:.2f}): a thick crystal")
    sub = dc[region[0], region[1]]
    nx, ny = sub.scan_shape
    stride = max(1, int(math.ceil(math.sqrt(nx * ny / MAX_VALIDATION_PATTERNS))))
    block = DataCube(np.asarray(sub.data[::stride, ::stride]), dc.calibration) if stride > 1 else sub
    inline = {"scheduler": "inline", "progress": False}
    scores, settings = {}, {"correlation": shared}
    peaks_c, basis = None, None
    try:
        peaks_c = find_bragg_disks(block, template, **shared, **inline)
        basis = find_lattice(peaks_c, origin_px=peaks_c.calibration.origin_px)
        scores["correlation"] = _scatter_pct(peaks_c, basis)
    except Distill4dError:
        scores["correlation"] = math.inf
    for m in (c for c in candidates if c != "correlation"):
        try:
            if m == "rim":
                pk, settings["rim"] = _rim_on_block(block, template, det, peaks_c)
            elif m == "template":
                pk = _template_on_block(block, template, peaks_c)
                settings["template"] = {"reference": region}
            else:
                pk = find_bragg_disks(block, probe, kind="sobel", **inline)
                settings["sobel"] = {k: pk.params[k] for k in _SHARED}
            scores[m] = _scatter_pct(pk, basis)
        except Distill4dError:
            scores[m] = math.inf
    ev["validation"] = {"region": [[s.start, s.stop] for s in region], "stride": stride, "score": where}
    ev["scores"] = {k: (v if math.isfinite(v) else None) for k, v in scores.items()}
    best = min(scores, key=lambda k: scores[k])
    base = scores["correlation"]
    ev["seconds"] = time.perf_counter() - t0
    if best != "correlation" and scores[best] < margin * base:
        return AutoChoice(best, ev, f"{best}: {seen}; strain scatter in the "
                          f"{where} {scores[best]:.3g} % vs correlation {base:.3g} %", settings.get(best, {}))
    return AutoChoice("correlation", ev, f"correlation: {seen} but no detector "
                      f"beat correlation's strain scatter {base:.3g} % by {1 / margin:.3g}x in the {where}", shared)


def _template_on_block(block: DataCube, template: Any, peaks_c: BraggPeaks | None) -> BraggPeaks:
    """Per-reflection templates validated without seeing the patterns they are scored on: made from
    the block's positions of one parity (``(ix + iy)`` even), registered in the others, whose peaks are
    returned as a column ``(m, 1)`` (the templates of a region are its mean, so scoring them on the
    same patterns would favour them by construction). Templates assume one crystal state throughout
    the block: a one-line error where a scored pattern's correlation peaks ``peaks_c`` show less than
    ``TEMPLATE_MATCH`` of the templates' disks (weighted by their intensity) within half a disk radius
    (registration pins each peak near its template's spot, so a block of several zone axes would
    otherwise score a low strain scatter)."""
    from ..bragg.refine import template_batch, template_setup

    if peaks_c is None:
        raise Distill4dError("correlation found no peaks to check the templates against")
    nx, ny = block.scan_shape
    ix, iy = np.indices((nx, ny))
    even = ((ix + iy) % 2 == 0).ravel()
    stack = np.asarray(block.data, dtype=np.float64).reshape(-1, *block.pattern_shape)
    finite = np.isfinite(stack).all(axis=(1, 2))
    made, scored = even & finite, ~even & finite
    if made.sum() < 2 or scored.sum() < 4:
        raise Distill4dError(f"the validation block is too small to split for the template candidate ({int(made.sum())} "
                             f"finite patterns to make templates from, {int(scored.sum())} to score; need 2 and 4)")
    spots, templates, tp = template_setup(stack[made].mean(axis=0), template, block.calibration)
    # each disk counts by its intensity above the window's border level, inside its mask
    off = np.arange(-tp.half_px, tp.half_px + 1)
    rr = np.hypot(off[:, None], off[None, :])
    border = np.median(templates[:, rr > tp.half_px - 0.5], axis=1)
    weight = np.clip((templates - border[:, None, None])[:, rr <= tp.mask_radius_px].sum(axis=1), 0.0, None)
    tol = 0.5 * template.radius_px
    for i in np.flatnonzero(scored):
        p = peaks_c[np.unravel_index(i, (nx, ny))]
        near = np.zeros(len(spots), bool)
        if len(p):
            near = np.hypot(spots[:, None, 0] - p[None, :, 0], spots[:, None, 1] - p[None, :, 1]).min(axis=1) <= tol
        shown = float((weight * near).sum() / max(weight.sum(), 1e-300))
        if shown < TEMPLATE_MATCH:
            raise Distill4dError(f"the validation block is not one crystal state: a pattern shows {shown:.2f} of the "
                                 f"templates' disks (< {TEMPLATE_MATCH:g})")
    res = template_batch(stack[scored], spots, templates, tp)
    shape = (int(scored.sum()), 1)
    k = res["qx"].shape[1]
    return BraggPeaks.from_padded(res["qx"].reshape(shape + (k,)), res["qy"].reshape(shape + (k,)),
                                  res["intensity"].reshape(shape + (k,)), res["count"].reshape(shape),
                                  block.calibration, params={"method": "template"})


def _rim_on_block(block: DataCube, template: Any, det: Any, peaks_c: BraggPeaks | None) -> tuple[BraggPeaks, dict]:
    """The rim fit of correlation's peaks ``peaks_c`` on the validation block, its tilt-bias coefficient
    learned there (else the probe's), and the settings that repeat it on the whole scan."""
    import dataclasses as dc_

    from ..bragg.refine import (RimParameters, learn_tilt_bias_px, plausible_tilt_bias, rim_radius_px, rim_refine,
                                rim_tilt_bias_px)

    if peaks_c is None:
        raise Distill4dError("correlation found no peaks to refine")
    r = rim_radius_px(template)
    rim = RimParameters(radius_px=r, search_px=min(2.0, 0.5 * r))
    probe_bias = rim_tilt_bias_px(template, rim)
    stack = np.asarray(block.data, dtype=np.float64).reshape(-1, *block.pattern_shape)
    stack = np.where(np.isfinite(stack), stack, 0.0)
    qx, qy, it, count = peaks_c.to_padded()
    qx, qy = qx.reshape(stack.shape[0], -1), qy.reshape(stack.shape[0], -1)
    mean = finite_mean_pattern(block, scheduler="inline", progress=False)
    mp = find_bragg_disks(DataCube(mean[None, None], block.calibration), template,
                          **{k: getattr(det, k) for k in _SHARED}, scheduler="inline", progress=False)
    fit = learn_tilt_bias_px(stack, qx, qy, np.stack([mp.qx, mp.qy], 1), rim, scan_shape=block.scan_shape)
    bias = fit.bias_px if plausible_tilt_bias(fit, probe_bias) else probe_bias
    rx, ry = rim_refine(stack, qx, qy, dc_.replace(rim, bias_px=bias))
    shape = block.scan_shape + (qx.shape[1],)
    pk = BraggPeaks.from_padded(rx.reshape(shape), ry.reshape(shape), it.reshape(shape), count.reshape(block.scan_shape),
                                block.calibration, params={"method": "rim"})
    return pk, {**{k: getattr(det, k) for k in _SHARED}, "tilt_bias_px": bias}


def find_bragg_disks_auto(datacube: Any, probe: Any = None, *, reference: Any = None, **engine: Any) -> BraggPeaks:
    """Bragg disks by the detector :func:`choose_disk_method` picks for these data.

    ``engine``: memory_budget, scheduler, n_workers, progress, checkpoint (of the full detection).
    The returned peaks' ``params`` are the chosen detector's, with ``"auto"`` (method chosen,
    reason, evidence) added; ``params["method"]`` names the chosen detector.
    """
    dc = as_datacube(datacube)
    choice = choose_disk_method(dc, probe, reference=reference)
    peaks = find_disks_by_method(choice.method, dc, probe, **choice.settings, **engine)
    params = {**peaks.params, "auto": {"chosen": choice.method, "reason": choice.reason, **choice.evidence}}
    return BraggPeaks(peaks.qx, peaks.qy, peaks.intensity, peaks.offsets, peaks.scan_shape, peaks.calibration, params)
