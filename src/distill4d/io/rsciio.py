"""Detector formats read through RosettaSciIO (rsciio): Merlin .mib, Gatan .dm3/.dm4,
EMPAD .xml, TVIPS .tvips, Direct Electron .mrc, FEI TIA .ser, Panta Rhei .prz.

RosettaSciIO returns ``{"data", "axes", "metadata"}`` dicts with the array in stored order
(navigation axes first, detector axes last); the axes carry scale and units that become the
:class:`~distill4d.Calibration`. Lazy reads use rsciio's own lazy mode, whose memory-mapped
graphs reopen the file in each worker.
"""

from __future__ import annotations

import importlib
import logging
import os
import warnings
from typing import Any

import numpy as np

from ..calibration import Calibration
from ..errors import Distill4dError, Distill4dKeyError
from ._common import (
    Loaded,
    angle_to_mrad,
    check_dtype,
    inv_length_to_inv_A,
    length_to_A,
    positive_or_none,
    same_step,
    scan_chunks,
    want_lazy,
)
from .sources import CorruptFileError

__all__ = ["read_rsciio", "RSCIIO_FORMATS"]

#: file extension -> (rsciio module, format name for messages)
RSCIIO_FORMATS: dict[str, tuple[str, str]] = {
    ".mib": ("quantumdetector", "Quantum Detectors Merlin"),
    ".dm3": ("digitalmicrograph", "Gatan Digital Micrograph"),
    ".dm4": ("digitalmicrograph", "Gatan Digital Micrograph"),
    ".xml": ("empad", "EMPAD (the .xml header next to the .raw)"),
    ".tvips": ("tvips", "TVIPS"),
    ".mrc": ("mrc", "Direct Electron / MRC"),
    ".ser": ("tia", "FEI TIA"),
    ".prz": ("pantarhei", "Panta Rhei"),
}


def read_rsciio(
    path: str,
    lazy: bool | None,
    budget: int,
    dataset: str | None = None,
) -> Loaded:
    """Read ``path`` with the RosettaSciIO plugin for its extension; see :func:`distill4d.io.read`."""
    ext = os.path.splitext(path)[1].lower()
    module_name, label = RSCIIO_FORMATS[ext]
    try:
        module = importlib.import_module(f"rsciio.{module_name}")
    except ImportError as err:
        raise ImportError(
            f"reading {label} files ({path}) needs RosettaSciIO with its '{module_name}' plugin; "
            f"importing it failed: {err}. Install it with: pip install 'rosettasciio[all]'"
        ) from None
    if ext == ".mib":
        _check_mib_complete(path)
    signals = _call_reader(module, path, label, lazy)
    sig = _pick_signal(signals, path, dataset)
    data = sig["data"]
    check_dtype(data.dtype, path)
    if data.ndim < 3:
        raise Distill4dError(
            f"{path}: the {label} file holds a {data.ndim}D array of shape {tuple(data.shape)}, "
            "not 4D-STEM data (expected a scan of diffraction patterns)"
        )
    is_dask = type(data).__module__.startswith("dask.")
    nbytes = int(np.prod(data.shape, dtype=np.int64)) * np.dtype(data.dtype).itemsize
    if is_dask and not want_lazy(lazy, nbytes, budget):
        try:
            data = data.compute(scheduler="sync")
        except Exception as err:  # noqa: BLE001 - any failure inside rsciio means a bad file
            raise CorruptFileError(
                f"{path}: reading the {label} data failed: the file is truncated or corrupt ({err})"
            ) from None
    elif is_dask and any(len(c) > 1 for c in data.chunks[-2:]):  # keep whole patterns per chunk
        data = data.rechunk(
            scan_chunks(
                tuple(data.shape), np.dtype(data.dtype).itemsize, None, budget, scan_axes=data.ndim - 2
            )
        )
    cal, q_mrad = calibration_from_axes(sig.get("axes", []), sig.get("metadata", {}), data.ndim, path)
    return Loaded(data, cal, q_mrad, name=os.path.basename(path))


_MIB_BYTES = {"U01": None, "U08": 1, "U16": 2, "U32": 4, "U64": 8}


def _check_mib_complete(path: str) -> None:
    """Raise CorruptFileError when a Merlin file holds fewer frames than its .hdr announces.

    RosettaSciIO reads a cut file as an interrupted acquisition and returns a smaller scan
    without a word; a shape that silently changes is worse than a clear error.
    """
    with open(path, "rb") as f:
        head = f.read(384)
    fields = head.split(b",")
    if len(fields) < 7 or not head.startswith(b"MQ1"):
        return  # not a plain MIB header: let rsciio say what is wrong
    try:
        header_bytes, width, height = int(fields[2]), int(fields[4]), int(fields[5])
    except ValueError:
        raise CorruptFileError(f"{path}: the Merlin frame header is corrupt: {head[:60]!r}") from None
    itemsize = _MIB_BYTES.get(fields[6].decode("ascii", "replace").strip())
    if itemsize is None:
        return  # raw (R64) or 1-bit frames: sizes are not simple, rsciio checks them
    frame = header_bytes + width * height * itemsize
    size = os.path.getsize(path)
    in_file, rest = divmod(size, frame)
    expected = _hdr_frames(path)
    if rest or (expected is not None and in_file < expected):
        want = f" of the {expected} its .hdr announces" if expected else ""
        raise CorruptFileError(
            f"{path}: the file is truncated or corrupt: it holds {in_file} whole frames{want}"
            f"{' and a partial one' if rest else ''} ({size} bytes, {frame} bytes per frame)"
        )


def _hdr_frames(path: str) -> int | None:
    hdr = os.path.splitext(path)[0] + ".hdr"
    if not os.path.exists(hdr):
        return None
    with open(hdr, "rb") as f:
        text = f.read(65536).decode("latin1", "replace")
    for line in text.splitlines():
        if line.startswith("Frames in Acquisition"):
            try:
                n = int(line.split(":", 1)[1].strip())
            except (IndexError, ValueError):
                return None
            return n if n > 0 else None
    return None


def _call_reader(module: Any, path: str, label: str, lazy: bool | None) -> list[dict]:
    """Call ``module.file_reader`` lazily where it can; any failure is reported as a bad file."""
    logger = logging.getLogger("rsciio")
    old = logger.level
    logger.setLevel(logging.ERROR)  # rsciio logs warnings (e.g. "numba not installed") we do not need
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                return module.file_reader(path, lazy=lazy is not False)
            except NotImplementedError:
                return module.file_reader(path, lazy=False)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{path}: a file the {label} reader needs is missing ({err})") from None
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - rsciio raises many kinds for a bad file
        raise CorruptFileError(
            f"{path}: cannot read as a {label} file: the file is truncated or corrupt, or not in this format "
            f"({type(err).__name__}: {err})"
        ) from None
    finally:
        logger.setLevel(old)


def _pick_signal(signals: list[dict], path: str, dataset: str | None) -> dict:
    usable = [s for s in signals if getattr(s.get("data"), "ndim", 0) >= 3]
    if dataset is not None:
        titles = [_title(s) for s in signals]
        for s, t in zip(signals, titles, strict=True):
            if t == dataset:
                return s
        try:
            return signals[int(dataset)]
        except (ValueError, IndexError):
            raise Distill4dKeyError(f"{path}: no signal {dataset!r}; the file holds: {_list(signals)}") from None
    if not signals:
        raise Distill4dError(f"{path}: the file holds no data")
    if not usable:
        raise Distill4dError(
            f"{path}: no 4D-STEM data found (no array with 3 or more dimensions); "
            f"the file holds: {_list(signals)}"
        )
    four = [s for s in usable if s["data"].ndim >= 4]
    if len(four) == 1:
        return four[0]
    if len(usable) == 1:
        return usable[0]
    raise Distill4dError(
        f"{path} holds several multi-dimensional signals; choose one with --dataset TITLE_OR_INDEX (dataset= in Python): "
        f"{_list(signals)}"
    )


def _title(s: dict) -> str:
    return str(s.get("metadata", {}).get("General", {}).get("title", ""))


def _list(signals: list[dict]) -> str:
    return "; ".join(
        f"[{i}] {_title(s) or '(untitled)'} {tuple(s['data'].shape)} {s['data'].dtype}"
        for i, s in enumerate(signals)
    )


def calibration_from_axes(
    axes: list[dict], metadata: dict, ndim: int, path: str
) -> tuple[Calibration, float | None]:
    """Calibration from rsciio axes dicts (array order) and metadata (beam energy in keV).

    Scan axes in a length unit give ``scan_step_A`` (only when both scan axes agree);
    detector axes in 1/length give ``q_pixel_inv_A``; detector axes in mrad give the
    pixel angle, converted once the beam energy is known. A non-zero detector offset
    gives the diffraction origin.
    """
    ordered = sorted(axes, key=lambda a: a.get("index_in_array", axes.index(a))) if axes else []
    fields: dict[str, Any] = {}
    q_mrad = None
    if len(ordered) == ndim:
        nav, sig = ordered[:-2], ordered[-2:]
        steps = [length_to_A(abs(float(a.get("scale", 1.0))), a.get("units", "")) for a in nav]
        if len(steps) == 1:
            fields["scan_step_A"] = steps[0]
        elif len(steps) >= 2:
            fields["scan_step_A"] = same_step(steps[-2], steps[-1])
        q = same_step(
            *(inv_length_to_inv_A(abs(float(a.get("scale", 1.0))), a.get("units", "")) for a in sig)
        )
        if q is not None:
            fields["q_pixel_inv_A"] = q
        else:
            q_mrad = same_step(
                *(angle_to_mrad(abs(float(a.get("scale", 1.0))), a.get("units", "")) for a in sig)
            )
        if (q is not None or q_mrad is not None) and any(float(a.get("offset", 0.0)) != 0 for a in sig):
            fields["origin_px"] = tuple(-float(a.get("offset", 0.0)) / float(a["scale"]) for a in sig)
    tem = (metadata or {}).get("Acquisition_instrument", {}).get("TEM", {})
    energy_keV = positive_or_none(tem.get("beam_energy"))
    if energy_keV is not None:
        fields["energy_eV"] = energy_keV * 1e3
    semi = positive_or_none(tem.get("convergence_angle"))
    if semi is not None:
        fields["semiangle_mrad"] = semi
    from ._h5 import safe_calibration

    return safe_calibration(fields, path), q_mrad
