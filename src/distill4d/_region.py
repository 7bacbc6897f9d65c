"""Scan regions ``(slice, slice)``: checked against a scan's shape, and their ``x0:x1,y0:y1`` text.

Kept apart from :mod:`distill4d.lattice` (which imports SciPy) so that the CLI can check a region
before any heavy import; :func:`reference_region` is also reachable as
``distill4d.lattice.strain.reference_region``.
"""

from __future__ import annotations

import warnings
from typing import Any

from .errors import Distill4dError

__all__ = ["checked_region", "reference_region", "region_text"]


def reference_region(reference: Any, shape: tuple[int, int], name: str = "reference") -> tuple[slice, slice]:
    """The region ``(slice, slice)`` of a scan of ``shape`` checked and made explicit (step 1,
    bounds within the scan; negative bounds count from the end, as in Python).

    A region that reaches past the scan is clipped to it with a warning; TypeError if
    ``reference`` is not two slices, Distill4dError if a slice has a step or selects no
    position of the scan. ``name`` names the region in the messages (e.g. ``"--reference"``).
    """
    return checked_region(reference, shape, name)[0]


def checked_region(reference: Any, shape: tuple[int, int], name: str) -> tuple[tuple[slice, slice], bool]:
    """:func:`reference_region` (warning included) and whether the region was clipped."""
    if not (isinstance(reference, tuple) and len(reference) == 2 and all(isinstance(s, slice) for s in reference)):
        raise TypeError(
            f"{name} must be None or 'median', a region (slice, slice) of the scan, a Lattice, a Basis "
            f"or a 2x2 array [u v] in pixels; got {reference!r}"
        )
    out, clipped = [], False
    for s, n in zip(reference, shape):
        if s.step not in (None, 1):
            raise Distill4dError(f"{name} region slices must have step 1, got {s}")
        lo = 0 if s.start is None else int(s.start) + (n if s.start < 0 else 0)
        hi = n if s.stop is None else int(s.stop) + (n if s.stop < 0 else 0)
        a, b = max(lo, 0), min(hi, n)
        clipped |= (a, b) != (lo, hi)
        out.append(slice(a, b))
    given, scan = region_text(reference), f"0:{shape[0]},0:{shape[1]}"
    if any(s.stop <= s.start for s in out):
        raise Distill4dError(
            f"{name} region {given} selects no position of the scan of {shape[0]} x {shape[1]} positions "
            f"(x0:x1,y0:y1 within {scan})"
        )
    if clipped:
        warnings.warn(f"{name} region {given} reaches past the scan of {shape[0]} x {shape[1]} positions; "
                      f"using {region_text(tuple(out))}", stacklevel=3)
    return (out[0], out[1]), clipped


def region_text(region: tuple[slice, slice]) -> str:
    """``x0:x1,y0:y1`` of a region (empty where a bound is None)."""
    return ",".join(f"{'' if s.start is None else s.start}:{'' if s.stop is None else s.stop}" for s in region)
