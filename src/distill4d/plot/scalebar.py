"""Scale bars from the calibration: real-space maps in nm/Å, diffraction patterns in 1/Å.

Images are drawn in pixel coordinates (scan positions or detector pixels). With a
calibrated pixel size an axis gets a scale bar and no ticks; without one its axes are
labelled in pixels.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import Distill4dError

__all__ = ["add_scale_bar", "label_real_space", "label_diffraction", "nice_length"]


def nice_length(target: float) -> float:
    """The 1, 2 or 5 times a power of ten nearest below ``target`` (> 0)."""
    if not (math.isfinite(target) and target > 0):
        raise Distill4dError(f"target must be a positive finite length, got {target!r}")
    power = 10.0 ** math.floor(math.log10(target))
    return max(m for m in (1.0, 2.0, 5.0) if m * power <= target * (1 + 1e-9)) * power


def _pixel_size(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise Distill4dError(f"{name} must be a positive number, got {value!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise Distill4dError(f"{name} must be a positive number, got {value!r}")
    return v


def add_scale_bar(ax: Any, pixel_size: float, unit: str, *, fraction: float = 0.25, color: str = "white") -> Any:
    """Draw a scale bar on ``ax`` (an image in pixel coordinates) and return the artist.

    ``pixel_size`` is the size of one pixel in ``unit``: ``"Å"`` (real space: the bar reads
    in nm from 10 Å up) or ``"1/Å"`` (reciprocal space). The bar is a round length of at most
    ``fraction`` of the image width, in the lower left corner; its gid is ``"scale_bar"``.
    """
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    pixel_size = _pixel_size("pixel_size", pixel_size)
    if unit not in ("Å", "1/Å"):
        raise Distill4dError(f"unit must be 'Å' or '1/Å', got {unit!r}")
    x0, x1 = ax.get_xlim()
    length = nice_length(fraction * abs(x1 - x0) * pixel_size)
    if unit == "Å" and length >= 10:
        label = f"{length / 10:g} nm"
    else:
        label = f"{length:g} {unit}"
    bar = AnchoredSizeBar(ax.transData, length / pixel_size, label, "lower left", pad=0.4, color=color,
                          frameon=True, size_vertical=max(abs(x1 - x0) / 100, 0.3), borderpad=0.3)
    bar.patch.set(facecolor="black", alpha=0.45, edgecolor="none")  # readable on light and dark images
    bar.set_gid("scale_bar")
    ax.add_artist(bar)
    return bar


def _label(ax: Any, pixel_size: float | None, unit: str, axis_names: tuple[str, str]) -> None:
    """A scale bar (and no ticks) when ``pixel_size`` is known, else axes labelled in pixels."""
    if pixel_size:
        add_scale_bar(ax, pixel_size, unit)
        ax.set_xticks([])
        ax.set_yticks([])
    else:
        ax.set_xlabel(f"{axis_names[1]} (px)")
        ax.set_ylabel(f"{axis_names[0]} (px)")


def label_real_space(ax: Any, scan_step_A: float | None) -> None:
    """A real-space map (Rx down, Ry across): a scale bar in Å/nm when ``scan_step_A`` (Å) is
    known, else axes labelled in scan positions (px)."""
    _label(ax, scan_step_A, "Å", ("scan x", "scan y"))


def label_diffraction(ax: Any, q_pixel_inv_A: float | None) -> None:
    """A diffraction pattern (Qx down, Qy across): a 1/Å scale bar when ``q_pixel_inv_A`` (1/Å)
    is known, else axes labelled in detector pixels."""
    _label(ax, q_pixel_inv_A, "1/Å", ("qx", "qy"))
