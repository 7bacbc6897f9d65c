"""NanoMegas ASTAR blockfiles (``.blo``): 8-bit patterns on a scan, memory-mapped.

Read here rather than through RosettaSciIO, whose blockfile module needs scikit-image
(for writing only) and pads truncated files with zeros instead of saying they are truncated.
Layout (little-endian): a header (``IMGBLO``, offsets, sizes, scan step in nm, beam energy
in V), a virtual bright-field image, then every pattern as 6 bytes (``AA 55`` and a frame
number) followed by ``DP_SZ x DP_SZ`` bytes. Patterns are in scan order, ``NX`` per row.
"""

from __future__ import annotations

import os

import numpy as np

from .._validate import is_dask
from ..calibration import Calibration
from ._common import Loaded, positive_or_none, same_step, scan_chunks, want_lazy
from .sources import CorruptFileError, MemmapSource

__all__ = ["read_blockfile"]

_HEADER = np.dtype(
    [
        ("ID", "S6"),
        ("MAGIC", "<u2"),
        ("Data_offset_1", "<u4"),  # virtual bright field
        ("Data_offset_2", "<u4"),  # patterns
        ("UNKNOWN1", "<u4"),
        ("DP_SZ", "<u2"),  # pattern side, pixels
        ("DP_rotation", "<u2"),
        ("NX", "<u2"),  # scan columns
        ("NY", "<u2"),  # scan rows
        ("Scan_rotation", "<u2"),  # 1/100 degree
        ("SX", "<f8"),  # scan step along x, nm
        ("SY", "<f8"),  # scan step along y, nm
        ("Beam_energy", "<u4"),  # V
        ("SDP", "<u2"),
        ("Camera_length", "<u4"),
        ("Acquisition_time", "<f8"),
    ]
)


def read_blockfile(path: str, lazy: bool | None, budget: int) -> Loaded:
    """Read a ``.blo`` file as ``(NY, NX, DP_SZ, DP_SZ)`` uint8; see :func:`distill4d.io.read`."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(_HEADER.itemsize)
    if len(raw) < _HEADER.itemsize:
        raise CorruptFileError(
            f"{path}: the file is truncated or corrupt ({size} bytes, shorter than a blockfile header)"
        )
    h = np.frombuffer(raw, dtype=_HEADER, count=1)[0]
    if bytes(h["ID"]) != b"IMGBLO":
        raise CorruptFileError(
            f"{path}: not a NanoMegas blockfile (it does not start with 'IMGBLO'); the file is truncated "
            "or corrupt, or has the wrong extension"
        )
    ny, nx, side = int(h["NY"]), int(h["NX"]), int(h["DP_SZ"])
    offset = int(h["Data_offset_2"])
    if ny == 0 or nx == 0 or side == 0 or offset < _HEADER.itemsize:
        raise CorruptFileError(
            f"{path}: the blockfile header is corrupt (scan {ny}x{nx}, patterns {side}x{side})"
        )
    frame = np.dtype([("header", "u1", (6,)), ("data", "u1", (side, side))])
    source = MemmapSource(path, offset, frame, (ny, nx), field="data")  # raises if truncated
    marks = np.memmap(path, dtype=frame, mode="r", offset=offset, shape=(ny * nx,))["header"][[0, -1], :2]
    if not np.all(marks == [0xAA, 0x55]):
        raise CorruptFileError(
            f"{path}: the file is truncated or corrupt "
            "(patterns do not start with the blockfile frame mark AA 55)"
        )
    nbytes = ny * nx * side * side
    if want_lazy(lazy, nbytes, budget):
        import dask.array as da
        from dask.base import tokenize

        data = da.from_array(
            source, chunks=scan_chunks(source.shape, 1, None, budget), name=f"blo-{tokenize(source)}"
        )
    else:
        data = source[:, :]
    sx, sy = positive_or_none(h["SX"]), positive_or_none(h["SY"])
    step_nm = same_step(sx, sy)
    energy = positive_or_none(h["Beam_energy"])
    cal = Calibration(
        scan_step_A=None if step_nm is None else step_nm * 10.0,
        energy_eV=energy if energy is not None and 1e2 < energy <= 1e7 else None,
    )
    return Loaded(data, cal, name=os.path.basename(path), source=source if is_dask(data) else None)
