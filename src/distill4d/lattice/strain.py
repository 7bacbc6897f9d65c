"""Strain and rotation maps from local lattices.

With the reciprocal basis ``G = [u v]`` at a position and ``G0`` of the reference, the
real-space bases are ``A = G^-T`` and ``A0 = G0^-T`` (up to a common scale), the deformation
is ``F = A A0^-1 = G^-T G0^T``, the strain ``eps = (F + F^T)/2 - I`` and the rotation
``theta = atan2(F10 - F01, F00 + F11)`` (radians, positive from x towards y). A cell
stretched along x in real space has ``eps_xx > 0`` (its reciprocal ``g_x`` shrinks).

Strain is reported in **detector coordinates** (x = first detector axis), which may be
rotated with respect to the scan axes; pass ``rotation_rad`` to report it in a frame whose
x axis is at that angle from the detector x axis (e.g. the scan rotation, or a crystal
direction).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from .._validate import nonnegative_float
from ..bragg.peaks import BraggPeaks
from ..errors import Distill4dError
from .._region import checked_region, reference_region  # noqa: F401 (reference_region: public here too)
from ..calibration import Calibration
from ..results import Provenance, Results
from .find import Basis
from .fit import Lattice, fit_lattice

__all__ = ["StrainMap", "strain_map", "strain_from_deformation", "reference_basis"]

_FORMAT = "distill4d-strainmap-1"


def strain_from_deformation(F: Any) -> dict[str, np.ndarray]:
    """``eps_xx``, ``eps_yy``, ``eps_xy`` (fractions) and ``theta`` (radians) of ``F`` (..., 2, 2)."""
    F = np.asarray(F, dtype=np.float64)
    return {
        "eps_xx": F[..., 0, 0] - 1.0,
        "eps_yy": F[..., 1, 1] - 1.0,
        "eps_xy": 0.5 * (F[..., 0, 1] + F[..., 1, 0]),
        "theta": np.arctan2(F[..., 1, 0] - F[..., 0, 1], F[..., 0, 0] + F[..., 1, 1]),
    }


@dataclasses.dataclass
class StrainMap:
    """Strain and rotation at every scan position.

    Attributes
    ----------
    eps_xx, eps_yy, eps_xy : ``(Rx, Ry)`` strain components (fractions; 0.01 = 1 %), NaN where
        the lattice fit failed.
    theta : ``(Rx, Ry)`` lattice rotation in radians (positive from x towards y).
    mask : ``(Rx, Ry)`` True where the fit failed.
    reference : the reference reciprocal basis ``[u v]`` (2x2, pixels) of the lattice methods;
        for CC-ST-AE the reference deformation ``F_ref`` (2x2, relative to its base pattern).
    rotation_rad : angle of the reporting frame's x axis from the detector x axis.
    calibration : of the data (scan step in Å for scale bars, ...).
    provenance : how the map was made: the detection method and parameters (under
        ``parameters["detection"]``), the lattice fit options, the reference and the rotation.
    """

    eps_xx: np.ndarray
    eps_yy: np.ndarray
    eps_xy: np.ndarray
    theta: np.ndarray
    mask: np.ndarray
    reference: np.ndarray
    rotation_rad: float = 0.0
    calibration: Calibration = dataclasses.field(default_factory=Calibration)
    provenance: Provenance | None = None

    @property
    def scan_shape(self) -> tuple[int, int]:
        return self.eps_xx.shape  # type: ignore[return-value]

    def smoothed(self, sigma: float) -> StrainMap:
        """A copy with each component averaged over neighbouring positions by a Gaussian of
        ``sigma`` scan positions (normalised over the valid positions only: masked or NaN
        positions neither contribute nor receive values; ``sigma`` 0 returns an unchanged copy).

        Trades spatial resolution for precision: on noisy data the error of an unbiased
        per-position estimate falls by about ``1 / (2 sqrt(pi) sigma)``; features narrower than
        a few ``sigma`` are flattened.
        """
        from scipy import ndimage

        sigma = nonnegative_float("sigma", sigma)
        if sigma > max(self.scan_shape):
            raise Distill4dError(f"sigma {sigma} scan positions is wider than the scan {self.scan_shape}")
        comps = ("eps_xx", "eps_yy", "eps_xy", "theta")
        valid = ~np.asarray(self.mask, bool) & np.all([np.isfinite(getattr(self, k)) for k in comps], axis=0)
        out = {}
        w = ndimage.gaussian_filter(valid.astype(np.float64), sigma, mode="nearest") if sigma > 0 else None
        for k in comps:
            v = np.asarray(getattr(self, k), dtype=np.float64)
            if sigma > 0:
                num = ndimage.gaussian_filter(np.where(valid, v, 0.0), sigma, mode="nearest")
                v = num / np.where(w > 0, w, 1.0)
            out[k] = np.where(valid, v, np.nan)
        prov = self.provenance
        if prov is not None:
            prov = prov.replace(parameters={**prov.parameters, "smoothed_sigma": sigma})
        return dataclasses.replace(self, **out, mask=~valid, provenance=prov)

    # ------------------------------------------------------------------ files
    def to_result(self) -> Results:
        """The common result container: ``eps_xx``, ``eps_yy``, ``eps_xy`` ('fraction'), ``theta``
        ('rad'), ``mask``, ``reference`` ('pixels'), with the calibration and provenance."""
        arrays = {k: getattr(self, k) for k in ("eps_xx", "eps_yy", "eps_xy", "theta", "mask", "reference")}
        units = {"eps_xx": "fraction", "eps_yy": "fraction", "eps_xy": "fraction", "theta": "rad",
                 "reference": "pixels"}
        attrs = {"rotation_rad": self.rotation_rad,
                 "frame": json.dumps({"x": "detector x rotated by rotation_rad"})}
        return Results(arrays, units, attrs, self.calibration, self.provenance)

    def to_hdf5(
        self, path: str | os.PathLike, force: bool = False, *, extra: dict[str, Any] | None = None,
        attrs: dict[str, Any] | None = None,
    ) -> Path:
        """Write :meth:`to_result` (datasets at the root, ``/calibration``, ``provenance``) to an HDF5
        file, atomically. FileExistsError if it exists and ``force`` is False. ``extra`` (name →
        array) and ``attrs`` are written alongside, by the methods that have more to keep (e.g.
        CC-ST-AE's bases and class map)."""
        r = self.to_result()
        r = r.replace(arrays={**r.arrays, **(extra or {})}, attrs={"format": _FORMAT, **r.attrs, **(attrs or {})})
        return r.to_h5(path, force=force, group="")

    @classmethod
    def from_hdf5(cls, path: str | os.PathLike) -> "StrainMap":
        """Read a file written by :meth:`to_hdf5` (also one written before calibration and provenance were kept)."""
        from ..io.hdf5 import open_h5
        from ..results import read_results

        with open_h5(path, expect_format=_FORMAT):
            pass
        r = read_results(path)
        return cls(
            *(r[k] for k in ("eps_xx", "eps_yy", "eps_xy", "theta", "mask", "reference")),
            rotation_rad=float(r.attrs["rotation_rad"]), calibration=r.calibration, provenance=r.provenance,
        )

    # ------------------------------------------------------------------ figure
    def plot(self, path_or_ax: Any = None, *, limit_percent: float | None = None, limit_deg: float | None = None):
        """Four panels (eps_xx, eps_yy, eps_xy in %, theta in degrees), diverging colours centred at 0,
        with a scale bar when the calibration has ``scan_step_A`` (else axes in scan positions).

        ``path_or_ax``: a file path (the figure is saved there), an array of 4 matplotlib axes,
        or None. Colour limits default to the 99th percentile of |values|. Returns the figure.
        """
        import matplotlib

        if path_or_ax is None or isinstance(path_or_ax, (str, os.PathLike)):
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        from ..plot.scalebar import label_real_space

        if path_or_ax is None or isinstance(path_or_ax, (str, os.PathLike)):
            fig, axes = plt.subplots(1, 4, figsize=(16, 4), constrained_layout=True)
        else:
            axes = np.ravel(path_or_ax)
            if axes.size != 4:
                raise Distill4dError(f"path_or_ax must be a path, None or 4 axes, got {axes.size} axes")
            fig = axes[0].figure
        panels = [
            ("ε_xx (%)", 100 * self.eps_xx, limit_percent),
            ("ε_yy (%)", 100 * self.eps_yy, limit_percent),
            ("ε_xy (%)", 100 * self.eps_xy, limit_percent),
            ("θ (°)", np.degrees(self.theta), limit_deg),
        ]
        for ax, (title, data, lim) in zip(axes, panels):
            if lim is None:
                finite = np.abs(data[np.isfinite(data)])
                lim = float(np.percentile(finite, 99)) if finite.size else 1.0
                lim = lim if lim > 0 else 1.0
            im = ax.imshow(np.ma.masked_invalid(data), cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
            ax.set_title(title)
            label_real_space(ax, self.calibration.scan_step_A)
            fig.colorbar(im, ax=ax, shrink=0.8)
        if isinstance(path_or_ax, (str, os.PathLike)):
            fig.savefig(path_or_ax, dpi=120)
            plt.close(fig)
        return fig


def _median_basis(lattice: Lattice, region: tuple[slice, slice] | None = None) -> np.ndarray:
    G = lattice.matrix
    ok = lattice.ok
    if region is not None:
        G, ok = G[region], ok[region]
    if not ok.any():
        where = "in the reference region" if region is not None else "anywhere in the scan"
        raise Distill4dError(f"the lattice fit failed {where}; no reference lattice can be taken from it")
    return np.median(G[ok], axis=0)


def reference_basis(lattice: Lattice, reference: Any = None) -> np.ndarray:
    """The reference reciprocal basis ``[u v]`` (2x2, pixels) of ``reference`` (see :func:`strain_map`)."""
    if reference is None or (isinstance(reference, str) and reference == "median"):
        return _median_basis(lattice)
    if isinstance(reference, Lattice):
        return _median_basis(reference)
    if isinstance(reference, Basis):
        return reference.matrix
    if isinstance(reference, np.ndarray):
        G0 = np.asarray(reference, float)
        if G0.shape != (2, 2) or not np.all(np.isfinite(G0)) or abs(np.linalg.det(G0)) < 1e-12:
            raise Distill4dError(f"reference array must be a finite, invertible 2x2 [u v] in pixels, got {G0!r}")
        return G0
    return _median_basis(lattice, reference_region(reference, lattice.scan_shape))


def strain_map(
    peaks_or_lattice: BraggPeaks | Lattice,
    reference: Any = None,
    *,
    rotation_rad: float = 0.0,
    **fit_options: Any,
) -> StrainMap:
    """Strain and rotation maps relative to a reference lattice.

    Parameters
    ----------
    peaks_or_lattice : detected :class:`BraggPeaks` (fitted with :func:`fit_lattice`) or a
        fitted :class:`Lattice`.
    reference : ``None``/``"median"`` (median lattice of the scan), a region
        ``(slice, slice)`` of the scan (its median lattice), a :class:`Lattice` of a reference
        scan or a :class:`Basis` (both also fix the indexing of the peaks), or a 2x2 array
        ``[u v]`` in pixels.
    rotation_rad : report strain in a frame whose x axis is at this angle (radians) from the
        detector x axis (``eps' = R^T eps R``); theta does not depend on it.
    **fit_options : passed to :func:`fit_lattice` when peaks are given.

    Returns
    -------
    StrainMap (NaN and ``mask`` True where the fit failed, including positions where too few
    peaks lie on a lattice: ``min_indexed_fraction`` of :func:`fit_lattice`). When no position
    has a lattice (no crystal) and the reference comes from the scan, every position is
    invalid and the reference is NaN.
    """
    if isinstance(peaks_or_lattice, BraggPeaks):
        if "basis" not in fit_options:
            if isinstance(reference, Lattice):
                fit_options["basis"] = reference.basis
            elif isinstance(reference, Basis):
                fit_options["basis"] = reference
        lattice = fit_lattice(peaks_or_lattice, **fit_options)
    elif isinstance(peaks_or_lattice, Lattice):
        if fit_options:
            raise TypeError(f"fit options {sorted(fit_options)} apply only when BraggPeaks are given")
        lattice = peaks_or_lattice
    else:
        raise TypeError(f"peaks_or_lattice must be BraggPeaks or a Lattice, got {type(peaks_or_lattice).__name__}")
    phi = float(rotation_rad)
    if not math.isfinite(phi):
        raise Distill4dError(f"rotation_rad must be finite, got {rotation_rad!r}")
    if isinstance(reference, tuple):  # a region: checked once; recorded as used when it was clipped
        region, clipped = checked_region(reference, lattice.scan_shape, "reference")
        reference = region if clipped else reference
    ok = lattice.ok
    if ok.any() or not (reference is None or (isinstance(reference, str) and reference == "median")
                         or isinstance(reference, tuple)):
        G0 = reference_basis(lattice, reference)
    else:  # no lattice anywhere (e.g. no crystal): every position invalid, no reference to take
        G0 = np.full((2, 2), np.nan)
    G = lattice.matrix
    Gs = np.where(ok[..., None, None], G, np.eye(2))
    F = np.swapaxes(np.linalg.inv(Gs), -1, -2) @ G0.T  # G^-T G0^T
    if phi:
        R = np.array([[math.cos(phi), -math.sin(phi)], [math.sin(phi), math.cos(phi)]])
        F = R.T @ F @ R
    s = strain_from_deformation(F)
    for k in s:
        s[k] = np.where(ok, s[k], np.nan)
    params = {
        "lattice_fit": {k: (v.matrix if isinstance(v, Basis) else v) for k, v in fit_options.items()},
        "reference": _describe_reference(reference),
        "reference_basis_px": G0,
        "rotation_rad": phi,
        "positions_with_lattice": int(ok.sum()),
        "min_indexed_fraction": lattice.min_indexed_fraction,
    }
    if lattice.provenance is not None:  # the detection's, whether peaks or their lattice were given
        prov = lattice.provenance.derive("strain_map", params, key="detection")
    else:
        prov = Provenance("strain_map", params)
    return StrainMap(**s, mask=~ok, reference=G0, rotation_rad=phi, calibration=lattice.calibration,
                     provenance=prov)


def _describe_reference(reference: Any) -> Any:
    """``reference`` of :func:`strain_map` as JSON-able provenance: "median", a region
    ``[[x0, x1], [y0, y1]]``, a basis ``[u v]`` in pixels, or "lattice" (another scan's)."""
    if reference is None or isinstance(reference, str):
        return reference or "median"
    if isinstance(reference, Lattice):
        return "lattice"
    if isinstance(reference, Basis):
        return reference.matrix
    return reference
