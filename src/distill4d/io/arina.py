"""Dectris ARINA (and EIGER) NeXus master files: ``*_master.h5`` linking to frame stacks.

The master file's ``/entry/data/data_NNNNNN`` entries are external links to files of frames
``(N, Qx, Qy)`` (bitshuffle/LZ4 compressed: needs hdf5plugin). The frames are concatenated in
name order and laid on the scan: ``scan_shape`` when given, else a square scan. The dtype is
kept as stored (RosettaSciIO would convert uint32 to uint16).
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from ..errors import Distill4dError
from ._common import SCAN_SHAPE_HINT, Loaded, check_dtype, positive_or_none, scan_chunks, want_lazy
from ._h5 import dask_token, h5_value, read_all, safe_calibration
from .sources import H5Source

__all__ = ["is_arina_master", "read_arina"]


def is_arina_master(f: Any) -> bool:
    """A Dectris (ARINA/EIGER) NeXus master file: /entry/data/data_NNNNNN links to 3D frame stacks."""
    import h5py

    g = f.get("entry/data")
    if not isinstance(g, h5py.Group):
        return False
    names = [k for k in g.keys() if k.startswith("data_")]
    if not names:
        return False
    for k in names:
        if isinstance(g.get(k, getlink=True), h5py.ExternalLink):
            continue  # checked (and a missing file reported) when read
        d = g.get(k)
        if not (isinstance(d, h5py.Dataset) and d.ndim == 3):
            return False
    return True


def read_arina(
    f: Any, path: str, lazy: bool | None, budget: int, scan_shape: tuple[int, int] | None
) -> Loaded:
    import h5py

    g = f["entry/data"]
    names = sorted(k for k in g.keys() if k.startswith("data_"))
    parts: list[tuple[str, tuple[int, ...], np.dtype]] = []
    for k in names:
        link = g.get(k, getlink=True)
        try:
            d = g[k]
        except (KeyError, OSError):
            target = link.filename if isinstance(link, h5py.ExternalLink) else k
            raise FileNotFoundError(
                f"{path}: the data file {target!r} that this ARINA master file links to is missing "
                f"(it must be in the same folder: {os.path.dirname(os.path.abspath(path))})"
            ) from None
        if d.ndim != 3:
            raise Distill4dError(f"{path}: {d.name} has shape {d.shape}; expected a stack of frames (N, Qx, Qy)")
        parts.append((f"/entry/data/{k}", tuple(int(s) for s in d.shape), d.dtype))
    dtype = parts[0][2]
    check_dtype(dtype, path, "ARINA frames")
    frame = parts[0][1][1:]
    if any(p[1][1:] != frame for p in parts):
        raise Distill4dError(
            f"{path}: the linked data files hold frames of different shapes: {[p[1] for p in parts]}"
        )
    n = sum(p[1][0] for p in parts)
    nbytes = n * int(np.prod(frame)) * dtype.itemsize
    if want_lazy(lazy, nbytes, budget):
        import dask.array as da

        arrays = []
        for name, shape, dt in parts:
            src = H5Source(path, name, shape, dt)
            arrays.append(
                da.from_array(
                    src,
                    chunks=scan_chunks(shape, dt.itemsize, (1,) + shape[1:], budget, 1),
                    name=f"h5-{dask_token(src)}",
                )
            )
        data = da.concatenate(arrays, axis=0) if len(arrays) > 1 else arrays[0]
    else:
        data = np.concatenate([read_all(f[name], path) for name, _, _ in parts], axis=0)
    fields: dict[str, Any] = {}
    det = f.get("entry/instrument/detector/detectorSpecific")
    if det is not None and "photon_energy" in det:  # the beam energy the detector was set up for, eV
        e = positive_or_none(h5_value(det["photon_energy"]))
        if e is not None:
            fields["energy_eV"] = e
    meta_scan, step = _arina_companion(path)
    if step is not None:
        fields["scan_step_A"] = step
    if scan_shape is None:
        scan_shape = meta_scan
    if scan_shape is None:
        side = math.isqrt(n)
        if side * side != n:
            raise Distill4dError(
                f"{path}: {n} frames do not make a square scan; give the scan with {SCAN_SHAPE_HINT}"
            )
        scan_shape = (side, side)
    return Loaded(
        data, safe_calibration(fields, path), None, name=os.path.basename(path), scan_shape=scan_shape
    )


def _arina_companion(path: str) -> tuple[tuple[int, int] | None, float | None]:
    """Scan step (Å) from the optional ``<name>.h5`` next to ``<name>_master.h5`` (pixel size in nm)."""
    import h5py

    if not path.endswith("_master.h5"):
        return None, None
    meta = path[: -len("_master.h5")] + ".h5"
    if not os.path.exists(meta):
        return None, None
    try:
        with h5py.File(meta, "r") as m:
            attrs = m["STEM Metadata"].attrs
            size = np.atleast_1d(attrs["Pixel Size"]).astype(float)
            step = positive_or_none(size[0])
            return None, None if step is None else step * 10.0
    except (OSError, KeyError, ValueError, TypeError):
        return None, None
