"""Identify the crystal of a scan: per-pattern predictions and their aggregate over a region.

:func:`identify` takes a :class:`~distill4d.bragg.BraggPeaks` (calibrated: ``q_pixel_inv_A``
and ``origin_px``) or a :class:`~distill4d.DataCube` (its disks are found first with the
automatic detector, :func:`distill4d.lattice.auto.find_bragg_disks_auto`), encodes every
pattern with at least ``min_spots`` spots besides the direct beam
(:mod:`distill4d.identify.encode`) and applies a :class:`~distill4d.identify.models.CrystalIdentifier`
(default: the shipped model, :func:`load_default`). The patterns of ``region`` (default: the
whole scan) are combined by :func:`~distill4d.identify.models.aggregate`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .._validate import positive_int
from ..errors import Distill4dError
from ..results import Provenance, Results
from ..simulate.spots import SYSTEMS
from .encode import encode_batch
from .models import CrystalIdentifier, aggregate, top_k

__all__ = ["CrystalIdentification", "DEFAULT_MODEL", "LATTICE_NAMES", "default_model_path", "identify", "load_default",
           "predict_spots"]

#: File name of the shipped model in ``distill4d/weights`` (its card: the same name with ``.json``).
DEFAULT_MODEL = "identify_forest.npz"

#: Names of the six lattice parameters and their units.
LATTICE_NAMES = ("a", "b", "c", "alpha", "beta", "gamma")
LATTICE_UNITS = ("Å", "Å", "Å", "degrees", "degrees", "degrees")


def default_model_path() -> Any:
    """Path of the shipped model file (:data:`DEFAULT_MODEL`)."""
    from importlib.resources import files

    return files("distill4d") / "weights" / DEFAULT_MODEL


def load_default() -> CrystalIdentifier:
    """The shipped :class:`CrystalIdentifier` (``distill4d/weights/identify_forest.npz``, its
    model card ``identify_forest.json`` beside it)."""
    from pathlib import Path

    return CrystalIdentifier.load(Path(str(default_model_path())))


@dataclasses.dataclass
class CrystalIdentification:
    """Per-pattern predictions over a scan ``(Rx, Ry)`` and their aggregate over a region.

    Per pattern (invalid patterns: system -1, space group 0, NaN elsewhere):
    ``valid`` (Rx, Ry) whether it had enough spots to be identified; ``system`` (Rx, Ry) index
    into :data:`SYSTEMS`; ``system_proba`` (Rx, Ry, 7); ``space_group`` and
    ``space_group_proba`` (Rx, Ry, k), the top k; ``lattice`` and ``lattice_std`` (Rx, Ry, 6)
    a, b, c (Å), alpha, beta, gamma (degrees) for the pattern's predicted system and the
    model's spread.

    Aggregate over ``region`` (the valid patterns in it, ``n_aggregated``): ``agg_system``,
    ``agg_system_score`` (7,) (``aggregation`` "log": probabilities; "margin": mean margins),
    ``agg_space_group`` and ``agg_space_group_score`` (up to k) the space groups *of that
    system* and their aggregated ``P(group | system)``, ``agg_lattice`` (6,) the median
    over the patterns of the lattice for ``agg_system``, ``agg_lattice_spread`` (6,) their
    scatter (1.4826 × median absolute deviation; 0 for one pattern) and ``agg_lattice_std``
    (6,) the model's median per-pattern spread. With ``aggregation`` "none" these are absent
    (None).
    """

    valid: np.ndarray
    system: np.ndarray
    system_proba: np.ndarray
    space_group: np.ndarray
    space_group_proba: np.ndarray
    lattice: np.ndarray
    lattice_std: np.ndarray
    region: tuple[slice, slice]
    aggregation: str
    n_aggregated: int
    agg_system: int | None = None
    agg_system_score: np.ndarray | None = None
    agg_space_group: np.ndarray | None = None
    agg_space_group_score: np.ndarray | None = None
    agg_lattice: np.ndarray | None = None
    agg_lattice_spread: np.ndarray | None = None
    agg_lattice_std: np.ndarray | None = None
    calibration: Any = None
    provenance: Provenance | None = None

    def to_results(self) -> Results:
        """The arrays as a :class:`~distill4d.results.Results` (names, units, attributes: systems,
        region, aggregation, the aggregate's system name)."""
        arrays: dict[str, np.ndarray] = {
            "valid": self.valid, "crystal_system": self.system, "probabilities": self.system_proba,
            "space_group": self.space_group, "space_group_probabilities": self.space_group_proba,
            "lattice_parameters": self.lattice, "lattice_parameters_std": self.lattice_std,
        }
        units = {"lattice_parameters": "Å, Å, Å, degrees, degrees, degrees",
                 "lattice_parameters_std": "Å, Å, Å, degrees, degrees, degrees"}
        attrs: dict[str, Any] = {
            "crystal_systems": ",".join(SYSTEMS), "lattice_parameter_names": ",".join(LATTICE_NAMES),
            "region": f"{self.region[0].start}:{self.region[0].stop},{self.region[1].start}:{self.region[1].stop}",
            "aggregation": self.aggregation, "n_aggregated": int(self.n_aggregated),
        }
        if self.agg_system is not None:
            arrays.update(aggregate_crystal_system=np.array(self.agg_system),
                          aggregate_probabilities=self.agg_system_score,
                          aggregate_space_group=self.agg_space_group,
                          aggregate_space_group_probabilities=self.agg_space_group_score,
                          aggregate_lattice_parameters=self.agg_lattice,
                          aggregate_lattice_parameters_spread=self.agg_lattice_spread,
                          aggregate_lattice_parameters_std=self.agg_lattice_std)
            for k in ("aggregate_lattice_parameters", "aggregate_lattice_parameters_spread",
                      "aggregate_lattice_parameters_std"):
                units[k] = "Å, Å, Å, degrees, degrees, degrees"
            attrs["aggregate_crystal_system_name"] = SYSTEMS[self.agg_system]
            attrs["aggregate_space_group_top"] = int(self.agg_space_group[0])
            attrs.update({f"aggregate_{n}": float(v) for n, v in zip(LATTICE_NAMES, self.agg_lattice)})
        from ..calibration import Calibration

        return Results(arrays, units, attrs, self.calibration or Calibration(), self.provenance)

    def to_hdf5(self, path: Any, force: bool = False) -> Any:
        """Write :meth:`to_results` to an HDF5 results file (atomically; FileExistsError without ``force``)."""
        return self.to_results().to_h5(path, force=force)

    def summary(self) -> str:
        """A few readable lines: the aggregate (or, with "none", the most common system) and the lattice."""
        n_valid = int(self.valid.sum())
        lines = [f"identified {n_valid} of {self.valid.size} patterns (the others have too few spots)"]
        if self.agg_system is None:
            if n_valid:
                counts = np.bincount(self.system[self.valid], minlength=len(SYSTEMS))
                lines.append("crystal system per pattern: " + ", ".join(
                    f"{SYSTEMS[c]} {counts[c]}" for c in np.argsort(-counts) if counts[c]))
            return "\n".join(lines)
        score = self.agg_system_score
        what = "probability" if self.aggregation == "log" else "mean margin"
        lines.append(f"aggregate of {self.n_aggregated} patterns ({self.aggregation}), crystal system ({what}): "
                     + ", ".join(f"{SYSTEMS[c]} {score[c]:.2f}" for c in np.argsort(-score)[:3]))
        lines.append(f"space group within {SYSTEMS[self.agg_system]} (top 3): " + ", ".join(
            f"{int(g)} ({p:.2f})" for g, p in zip(self.agg_space_group[:3], self.agg_space_group_score[:3])))
        lat, spread, std = self.agg_lattice, self.agg_lattice_spread, self.agg_lattice_std
        unc = np.sqrt(spread**2 + std**2)
        lines.append(f"lattice parameters ({SYSTEMS[self.agg_system]}; median ± scatter and model spread): "
                     + ", ".join(f"{n} {v:.2f} ± {u:.2f}{' Å' if i < 3 else '°'}"
                                 for i, (n, v, u) in enumerate(zip(LATTICE_NAMES, lat, unc))))
        return "\n".join(lines)


def _padded_inv_A(peaks: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    cal = peaks.calibration
    pix = cal.require("q_pixel_inv_A")
    origin = cal.require("origin_px")
    qx, qy, it, count = peaks.to_padded()
    P = len(peaks)
    return ((qx - origin[0]) * pix).reshape(P, -1), ((qy - origin[1]) * pix).reshape(P, -1), it.reshape(P, -1), \
        count.reshape(P)


def predict_spots(qx_inv_A: np.ndarray, qy_inv_A: np.ndarray, intensity: np.ndarray, count: np.ndarray,
                  model: CrystalIdentifier, *, k: int = 3, min_spots: int = 3,
                  direct_beam_inv_A: float = 0.05) -> dict[str, np.ndarray]:
    """Per-pattern predictions for ``P`` NaN-padded spot lists ``(P, K)`` (1/Å from the direct
    beam; ``count`` (P,) spots per pattern): ``valid`` (P,) patterns with ``min_spots`` or more
    spots besides the direct beam, ``spots`` (P,) that number, ``system`` (P,) (-1 where not
    valid), ``system_proba`` (P, 7), ``space_group`` / ``space_group_proba`` (P, k), ``lattice``
    / ``lattice_std`` (P, 6) (NaN where not valid) and ``features`` of the valid patterns."""
    qx, qy, it = (np.asarray(a, dtype=np.float64) for a in (qx_inv_A, qy_inv_A, intensity))
    count = np.asarray(count)
    if qx.ndim != 2 or qy.shape != qx.shape or it.shape != qx.shape or count.shape != qx.shape[:1]:
        raise Distill4dError(f"spot lists must be qx, qy, intensity of one shape (P, K) and count (P,), got "
                             f"{qx.shape}, {qy.shape}, {it.shape} and {count.shape}")
    used = np.arange(qx.shape[1]) < count[:, None]
    if not (np.all(np.isfinite(qx[used & np.isfinite(it)])) and np.all(np.isfinite(qy[used & np.isfinite(it)]))):
        raise Distill4dError("the Bragg peaks contain NaN or Inf positions")
    with np.errstate(invalid="ignore"):
        spots = (used & (np.hypot(qx, qy) >= direct_beam_inv_A) & (it > 0)).sum(axis=1)
    valid = spots >= min_spots
    P = qx.shape[0]
    kk = min(k, model.space_groups().size)
    out = {"valid": valid, "spots": spots, "system": np.full(P, -1), "system_proba": np.full((P, len(SYSTEMS)), np.nan),
           "space_group": np.zeros((P, kk), dtype=np.int64), "space_group_proba": np.full((P, kk), np.nan),
           "lattice": np.full((P, 6), np.nan), "lattice_std": np.full((P, 6), np.nan)}
    X = encode_batch(qx[valid], qy[valid], it[valid], count[valid], direct_beam_inv_A=direct_beam_inv_A) \
        if valid.any() else np.zeros((0, 0))
    if valid.any():
        pred = model.predict(X, k=kk)
        for key in ("system", "system_proba", "space_group", "space_group_proba", "lattice", "lattice_std"):
            out[key][valid] = pred[key]
    out["features"] = X
    return out


def identify(
    data: Any,
    model: CrystalIdentifier | None = None,
    *,
    region: tuple[slice, slice] | None = None,
    aggregation: str = "log",
    k: int = 3,
    min_spots: int = 3,
    direct_beam_inv_A: float = 0.05,
    probe: Any = None,
    **engine: Any,
) -> CrystalIdentification:
    """Crystal system, space group and lattice parameters of every pattern of ``data``, and of a region.

    Parameters
    ----------
    data : a :class:`~distill4d.bragg.BraggPeaks` (calibrated: ``q_pixel_inv_A``, ``origin_px``)
        or a :class:`~distill4d.DataCube` (disks found first by the automatic detector, with
        ``probe`` and the engine keywords ``engine``).
    model : a trained :class:`CrystalIdentifier`; default the shipped one (:func:`load_default`).
    region : ``(slice, slice)`` of scan positions whose patterns are aggregated; default all.
    aggregation : "log" (sum of log-probabilities), "margin" (sum of margins) or "none".
    k : how many space groups to keep (top k).
    min_spots : patterns with fewer spots than this (besides the direct beam) are not identified.
    direct_beam_inv_A : spots nearer the origin than this (1/Å) are the direct beam.
    """
    from ..bragg.peaks import BraggPeaks

    if aggregation not in ("log", "margin", "none"):
        raise Distill4dError(f"aggregation must be 'log', 'margin' or 'none', got {aggregation!r}")
    k = positive_int("k", k)
    min_spots = positive_int("min_spots", min_spots)
    if not isinstance(data, BraggPeaks):
        from ..datacube import DataCube

        if not isinstance(data, DataCube):
            raise TypeError(f"data must be a BraggPeaks or a DataCube, got {type(data).__name__}")
        from ..lattice.auto import find_bragg_disks_auto

        data = find_bragg_disks_auto(data, probe, reference=region, **engine)
    elif probe is not None or engine:
        raise Distill4dError("probe and engine keywords apply to a DataCube only (data is a BraggPeaks)")
    peaks = data
    model = load_default() if model is None else model
    if not isinstance(model, CrystalIdentifier):
        raise TypeError(f"model must be a CrystalIdentifier or None, got {type(model).__name__}")
    Rx, Ry = peaks.scan_shape
    if region is None:
        region = (slice(0, Rx), slice(0, Ry))
    if peaks.n_peaks == 0:
        raise Distill4dError("the Bragg peaks hold no peak at all: nothing to identify (check the disk detection)")
    qx, qy, it, count = _padded_inv_A(peaks)
    pred = predict_spots(qx, qy, it, count, model, k=k, min_spots=min_spots, direct_beam_inv_A=direct_beam_inv_A)
    valid = pred["valid"]
    if not valid.any():
        raise Distill4dError(f"no pattern has {min_spots} or more spots besides the direct beam (the most: "
                             f"{int(pred['spots'].max())}): nothing to identify (lower min_spots / --min-spots, or "
                             "check the disk detection and origin_px)")
    sys_, ps, sg, sgp = pred["system"], pred["system_proba"], pred["space_group"], pred["space_group_proba"]
    lat, lat_std, X = pred["lattice"], pred["lattice_std"], pred["features"]
    kk = sg.shape[1]
    shape = (Rx, Ry)
    out = CrystalIdentification(
        valid.reshape(shape), sys_.reshape(shape), ps.reshape(shape + (-1,)), sg.reshape(shape + (kk,)),
        sgp.reshape(shape + (kk,)), lat.reshape(shape + (6,)), lat_std.reshape(shape + (6,)), region, aggregation,
        0, calibration=peaks.calibration,
        provenance=Provenance("identify", {"aggregation": aggregation, "k": k, "min_spots": min_spots,
                                           "direct_beam_inv_A": direct_beam_inv_A,
                                           "detection": peaks.params.get("method")}),
    )
    in_region = np.zeros(shape, bool)
    in_region[region] = True
    rows = np.flatnonzero(in_region.ravel()[valid])  # rows of X in the region
    out.n_aggregated = int(rows.size)
    if aggregation == "none":
        return out
    if rows.size == 0:
        raise Distill4dError(f"the region {region} holds no pattern with {min_spots} or more spots: nothing to "
                             "aggregate (choose another region, or aggregation 'none')")
    Xr = X[rows]
    score = aggregate(pred["system_proba"][rows], aggregation)
    best = int(np.argmax(score))
    groups, gproba = model.predict_space_group_within(Xr, best)  # the hierarchy: groups of the chosen system
    gi, gp = top_k(aggregate(gproba, aggregation)[None], min(kk, groups.size))
    rl, rs = model.predict_lattice(Xr, np.full(rows.size, best), return_std=True)
    med = np.nanmedian(rl, axis=0)
    out.agg_system, out.agg_system_score = best, score
    out.agg_space_group, out.agg_space_group_score = groups[gi[0]], gp[0]
    out.agg_lattice = med
    out.agg_lattice_spread = 1.4826 * np.nanmedian(np.abs(rl - med), axis=0)
    out.agg_lattice_std = np.nanmedian(rs, axis=0)
    return out

