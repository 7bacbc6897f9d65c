"""Atomic HDF5 writers: a DataCube (EMD 1.0 layout that py4DSTEM reads) and result arrays.

Own DataCube file (``distill4d_format = "datacube"``)::

    /                                   emd_group_type="file", version_major=1, version_minor=0,
                                        distill4d_format="datacube", distill4d_format_version=1,
                                        distill4d_version, distill4d_datacube="/datacube_root/datacube/data"
    /datacube_root                      emd_group_type="root", python_class="Root"
    /datacube_root/datacube             emd_group_type="array", python_class="DataCube",
                                        + Calibration.to_attrs() (names carry units)
    /datacube_root/datacube/data        (Rx, Ry, Qx, Qy), chunked by blocks of whole patterns
    /datacube_root/datacube/dim0..dim3  [0, step] with name (Rx, Ry, Qx, Qy) and units (A, A^-1, pixels)
    /datacube_root/metadatabundle/calibration   py4DSTEM Calibration (R/Q_pixel_size, units, origin, ...)

Results file (``distill4d_format = "results"``; :class:`distill4d.results.Results`)::

    /                 distill4d_format="results", distill4d_format_version, distill4d_version,
                      provenance (JSON of distill4d.results.Provenance, when given), + the caller's attrs
    /calibration      attributes Calibration.to_attrs() (when given; names carry units)
    /results/<name>   one dataset per array, attribute ``units``

``StrainMap`` and ``BraggPeaks`` files are results files too, written by the same writer
(:func:`write_results_file`) with their arrays at the root instead of ``/results`` and their
own ``format`` attribute, so that files written before read as they did.

Every write goes to a temporary file in the output folder and is moved over the output
with :func:`os.replace` only when complete, so a failed write leaves no partial file and
an existing output untouched.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pathlib
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np

from .._atomic import atomic_output
from .._validate import is_dask
from ..calibration import Calibration
from ..datacube import DataCube
from ..errors import Distill4dError

__all__ = ["write", "write_results_file", "read_results_file"]

FORMAT_VERSION = 1
_DATACUBE_PATH = "/datacube_root/datacube/data"
_CHUNK_BYTES = 4 * 2**20  # HDF5 storage chunk of the data, about (whole patterns)
_WRITE_BLOCK_BYTES = 256 * 2**20  # what one streamed block of a lazy DataCube may hold
_COMPRESSIONS = (None, "gzip", "lz4")


def write(
    path: str | os.PathLike,
    obj: DataCube | Mapping[str, Any],
    *,
    force: bool = False,
    units: Mapping[str, str] | None = None,
    attrs: Mapping[str, Any] | None = None,
    compression: str | None = None,
    results: Mapping[str, Any] | None = None,
    calibration: Calibration | None = None,
    provenance: Any = None,
) -> pathlib.Path:
    """Write a DataCube or a dict of result arrays to an HDF5 file, atomically.

    Parameters
    ----------
    path : output file (``.h5``; ``.emd`` and ``.hdf5`` work too).
    obj : a :class:`DataCube` (written in the EMD 1.0 layout, readable by :func:`read` and
        py4DSTEM; lazy data is streamed block by block, never loaded whole), or a dict
        ``{name: array}`` of results (virtual images, CoM maps, ...) written as
        ``/results/<name>``.
    force : overwrite an existing file. Without it an existing ``path`` raises FileExistsError.
    units : ``{name: unit}`` for result arrays, stored as each dataset's ``units``
        attribute (e.g. ``{"bf": "counts", "com_x": "px"}``); for a DataCube,
        ``{"data": unit}`` names the unit of the intensities (default ``"counts"``).
    attrs : file-level attributes (e.g. the command line, calibration values); values that
        HDF5 cannot hold directly (dicts, None) are stored as JSON text.
    compression : ``None`` (default, fastest), ``"gzip"`` or ``"lz4"`` for a DataCube's data.
    results : with a DataCube only: ``{name: array}`` stored beside it as ``/results/<name>``
        (e.g. a simulation's ground truth), read back by :func:`distill4d.results.read_results`; their units
        go in ``units`` too.
    calibration : with a dict only: the calibration of the data the results came from,
        stored as the attributes of ``/calibration``.
    provenance : with a dict only: how the results were made
        (:class:`distill4d.results.Provenance`), stored as JSON in the ``provenance`` attribute.

    Returns
    -------
    The path written, as a :class:`pathlib.Path`.
    """
    out = pathlib.Path(os.fspath(path))
    if not isinstance(force, bool):
        raise TypeError(f"force must be True or False, got {force!r}")
    if compression not in _COMPRESSIONS:
        raise Distill4dError(f"compression must be one of {_COMPRESSIONS}, got {compression!r}")
    if out.exists() and out.is_dir():
        raise IsADirectoryError(f"{out} is a folder; give a file name to write to")
    if out.exists() and not force:
        raise FileExistsError(
            f"{out} already exists; pass force=True (or --force on the command line) to overwrite it"
        )
    if not out.parent.exists():
        raise FileNotFoundError(f"cannot write {out}: the folder {out.parent} does not exist")
    if isinstance(obj, DataCube):
        if calibration is not None or provenance is not None:
            raise TypeError("calibration= and provenance= go with a dict of results; a DataCube has its own calibration")
        _refuse_input(out, obj)
        extra = _check_results(results, {"data"}, units) if results is not None else {}
        with atomic_output(out) as tmp:
            _write_datacube(tmp, obj, units, attrs, compression, extra)
    elif isinstance(obj, Mapping):
        if results is not None:
            raise TypeError("results= goes with a DataCube; a dict of results is written as it is")
        arrays = _check_results(obj, set(), units)  # plain names here: no sub-groups
        write_results_file(out, arrays, units=units, attrs=attrs, calibration=calibration,
                           provenance=provenance, force=True)  # existing outputs were refused above
    else:
        raise TypeError(
            f"obj must be a distill4d.DataCube or a dict {{name: array}} of results, got {type(obj).__name__}"
        )
    return out


def _refuse_input(out: pathlib.Path, dc: DataCube) -> None:
    """Refuse to write over a file the DataCube is being read from (lazily or memory-mapped)."""
    if not out.exists():
        return
    for src in _source_files(dc.data):
        with contextlib.suppress(OSError):
            if os.path.samefile(src, out):
                raise Distill4dError(
                    f"cannot write to {out}: it is the file this DataCube is being read from; "
                    "write to another file"
                )


def _source_files(data: Any) -> list[str]:
    from .sources import _Source

    if isinstance(data, np.memmap) and data.filename:
        return [data.filename]
    files: list[str] = []
    if is_dask(data):
        for value in dict(data.__dask_graph__()).values():
            if isinstance(value, _Source):
                files.append(value.path)
            elif isinstance(value, np.memmap) and value.filename:
                files.append(value.filename)
    return files


# ---------------------------------------------------------------------- DataCube
def _write_datacube(
    tmp: str,
    dc: DataCube,
    units: Any,
    attrs: Mapping[str, Any] | None,
    compression: str | None,
    results: dict[str, np.ndarray],
) -> None:
    import h5py
    import hdf5plugin

    from .._version import __version__

    data_units = "counts"
    if isinstance(units, Mapping) and "data" in units:
        data_units = str(units["data"])
    elif units is not None and not isinstance(units, Mapping):
        raise TypeError(f"units must be a dict such as {{'data': 'counts'}}, got {type(units).__name__}")
    rx, ry, qx, qy = dc.shape
    pattern = qx * qy * dc.dtype.itemsize
    per_chunk = max(1, _CHUNK_BYTES // pattern)
    chunks = (max(1, min(rx, per_chunk // ry)), ry, qx, qy) if per_chunk >= ry else (1, per_chunk, qx, qy)
    comp: dict[str, Any] = {}
    if compression == "gzip":
        comp = {"compression": "gzip", "compression_opts": 4, "shuffle": True}
    elif compression == "lz4":
        comp = dict(hdf5plugin.LZ4())
    cal = dc.calibration
    with h5py.File(tmp, "w") as f:
        f.attrs.update(
            {
                "emd_group_type": "file",
                "version_major": 1,
                "version_minor": 0,
                "UUID": str(uuid.uuid4()),
                "authoring_program": "distill4d",
                "authoring_user": "",
                "distill4d_format": "datacube",
                "distill4d_format_version": FORMAT_VERSION,
                "distill4d_version": __version__,
                "distill4d_datacube": _DATACUBE_PATH,
            }
        )
        _set_attrs(f, attrs)
        root = f.create_group("datacube_root")
        root.attrs.update({"emd_group_type": "root", "python_class": "Root"})
        g = root.create_group("datacube")
        g.attrs.update({"emd_group_type": "array", "python_class": "DataCube", "name": dc.name or "datacube"})
        g.attrs.update(cal.to_attrs())
        dset = g.create_dataset("data", shape=dc.shape, dtype=dc.dtype, chunks=chunks, **comp)
        dset.attrs["units"] = data_units
        _copy_data(dc.data, dset)
        r_step = cal.scan_step_A
        q_step = cal.q_pixel_inv_A
        for i, (name, step, unit) in enumerate(
            [("Rx", r_step, "A"), ("Ry", r_step, "A"), ("Qx", q_step, "A^-1"), ("Qy", q_step, "A^-1")]
        ):
            d = g.create_dataset(f"dim{i}", data=np.array([0.0, 1.0 if step is None else step]))
            d.attrs.update({"name": name, "units": "pixels" if step is None else unit})
        bundle = root.create_group("metadatabundle")
        bundle.attrs["emd_group_type"] = "metadatabundle"
        _write_py4dstem_calibration(bundle, cal)
        if results:
            _results_group(f, results, units or {})


def _copy_data(data: Any, dset: Any) -> None:
    """Copy into ``dset`` block by block (bounded memory for lazy or memory-mapped data)."""
    rx, ry, qx, qy = (int(s) for s in data.shape)
    pattern = qx * qy * np.dtype(data.dtype).itemsize
    row = ry * pattern
    if row <= _WRITE_BLOCK_BYTES:
        rows = max(1, min(rx, _WRITE_BLOCK_BYTES // row))
        if is_dask(data):
            chunk = int(data.chunks[0][0])
            if rows >= chunk:
                rows = (rows // chunk) * chunk
        for x0 in range(0, rx, rows):
            dset[x0 : x0 + rows] = _materialise(data[x0 : x0 + rows])
    else:  # one scan row is too large: go part of a row at a time
        cols = max(1, _WRITE_BLOCK_BYTES // pattern)
        for x0 in range(rx):
            for y0 in range(0, ry, cols):
                dset[x0, y0 : y0 + cols] = _materialise(data[x0, y0 : y0 + cols])


def _materialise(block: Any) -> np.ndarray:
    return np.asarray(block.compute(scheduler="threads") if is_dask(block) else block)


def _write_py4dstem_calibration(bundle: Any, cal: Calibration) -> None:
    """The EMD 1.0 ``metadatabundle/calibration`` group as py4DSTEM/emdfile write it."""
    c = bundle.create_group("calibration")
    c.attrs.update({"emd_group_type": "metadata", "python_class": "Calibration"})
    items: dict[str, Any] = {
        "Q_pixel_size": 1.0 if cal.q_pixel_inv_A is None else cal.q_pixel_inv_A,
        "Q_pixel_units": "pixels" if cal.q_pixel_inv_A is None else "A^-1",
        "R_pixel_size": 1.0 if cal.scan_step_A is None else cal.scan_step_A,
        "R_pixel_units": "pixels" if cal.scan_step_A is None else "A",
        "QR_flip": bool(cal.scan_flip),
    }
    if cal.scan_rotation_rad is not None:
        items["QR_rotation_degrees"] = math.degrees(cal.scan_rotation_rad)
    if cal.origin_px is not None:
        items["qx0_mean"], items["qy0_mean"] = cal.origin_px
    if cal.semiangle_mrad is not None:
        items["probe_convergence_semiangle_mrad"] = cal.semiangle_mrad
    for key, value in items.items():
        if isinstance(value, bool):
            d = c.create_dataset(key, data=np.bool_(value))
            d.attrs["type"] = "bool"
        elif isinstance(value, str):
            import h5py

            d = c.create_dataset(key, data=value, dtype=h5py.string_dtype())
            d.attrs["type"] = "string"
        else:
            d = c.create_dataset(key, data=float(value))
            d.attrs["type"] = "number"
    import h5py

    d = c.create_dataset("_root_treepath", data="", dtype=h5py.string_dtype())
    d.attrs["type"] = "string"
    t = c.create_group("_target_paths")
    t.attrs.update({"length": 1, "type": "list_of_strings"})
    t.create_dataset("0", data="/datacube", dtype=h5py.string_dtype())


# ---------------------------------------------------------------------- results
def _check_results(
    obj: Mapping[str, Any], other_units: set[str], units: Any, *, nested: bool = False
) -> dict[str, np.ndarray]:
    if not isinstance(obj, Mapping):
        raise TypeError(f"results must be a dict {{name: array}}, got {type(obj).__name__}")
    if not obj:
        raise Distill4dError("the results dict is empty; nothing to write")
    arrays: dict[str, np.ndarray] = {}
    for name, value in obj.items():
        parts = name.split("/") if isinstance(name, str) and nested else [name]
        if not isinstance(name, str) or not all(
            isinstance(p, str) and p and "/" not in p and p not in (".", "..") for p in parts
        ):
            rule = "of non-empty parts between '/'" if nested else "without '/'"
            raise Distill4dError(f"result names must be non-empty strings {rule}, got {name!r}")
        if is_dask(value):
            value = value.compute()
        arr = np.asarray(value)
        if arr.dtype.hasobject:
            raise TypeError(f"result {name!r} has dtype object; expected a numeric array")
        arrays[name] = arr
    if units is not None and not isinstance(units, Mapping):
        raise TypeError(f"units must be a dict {{name: unit}}, got {type(units).__name__}")
    unknown = set(units or {}) - set(arrays) - other_units
    if unknown:
        raise Distill4dError(f"units given for {sorted(unknown)}, which are not among the results {sorted(arrays)}")
    return arrays


def _check_metadata(calibration: Any, provenance: Any) -> None:
    if calibration is not None and not isinstance(calibration, Calibration):
        raise TypeError(f"calibration must be a distill4d.Calibration or None, got {type(calibration).__name__}")
    if provenance is not None and not callable(getattr(provenance, "to_json", None)):
        raise TypeError(f"provenance must be a distill4d.results.Provenance or None, got {type(provenance).__name__}")


def write_results_file(
    path: str | os.PathLike,
    arrays: Mapping[str, Any],
    *,
    units: Mapping[str, str] | None = None,
    attrs: Mapping[str, Any] | None = None,
    calibration: Calibration | None = None,
    provenance: Any = None,
    force: bool = False,
    group: str = "results",
    dataset_attrs: Mapping[str, Mapping[str, Any]] | None = None,
) -> pathlib.Path:
    """The one results writer behind :func:`write` and the result classes' ``to_hdf5``.

    Writes ``arrays`` (names may contain ``/`` for sub-groups) under ``/<group>`` (``""``: the
    root, the layout of ``StrainMap`` and ``BraggPeaks`` files) with their ``units``, the
    ``calibration`` as attributes of ``/calibration``, the ``provenance`` as JSON, and
    ``attrs`` at the root, atomically; ``dataset_attrs`` ``{array name: {attribute: value}}`` adds
    attributes to some datasets. FileExistsError if ``path`` exists and not ``force``.
    """
    if group not in ("results", ""):
        raise Distill4dError(f"group must be 'results' or '' (the root), got {group!r}")
    arrays = _check_results(arrays, set(), units, nested=True)
    taken = {"calibration", "results"} & {name.split("/")[0] for name in arrays} if not group else set()
    if taken:
        raise Distill4dError(f"arrays at the root cannot be named {sorted(taken)}: those names are the file's own")
    _check_metadata(calibration, provenance)
    unknown = set(dataset_attrs or {}) - set(arrays)
    if unknown:
        raise Distill4dError(f"dataset_attrs given for {sorted(unknown)}, which are not among the arrays {sorted(arrays)}")
    out = pathlib.Path(os.fspath(path))
    with atomic_output(out, force=force) as tmp:
        _write_results(tmp, arrays, units or {}, attrs, calibration, provenance, group, dataset_attrs)
    return out


def _write_results(
    tmp: str,
    arrays: dict[str, np.ndarray],
    units: Mapping[str, str],
    attrs: Mapping[str, Any] | None,
    calibration: Calibration | None = None,
    provenance: Any = None,
    group: str = "results",
    dataset_attrs: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    import h5py

    from .._version import __version__

    with h5py.File(tmp, "w") as f:
        f.attrs.update(
            {
                "distill4d_format": "results",
                "distill4d_format_version": FORMAT_VERSION,
                "distill4d_version": __version__,
            }
        )
        _set_attrs(f, attrs)
        if calibration is not None:
            f.create_group("calibration").attrs.update(calibration.to_attrs())
        if provenance is not None:
            f.attrs["provenance"] = provenance.to_json()
        _results_group(f, arrays, units, group)
        base = f[group] if group else f
        for name, extra in (dataset_attrs or {}).items():
            _set_attrs(base[name], extra)


def _results_group(f: Any, arrays: dict[str, np.ndarray], units: Mapping[str, str], group: str = "results") -> None:
    g = f.create_group(group) if group else f
    for name, arr in arrays.items():
        d = g.create_dataset(name, data=arr)
        d.attrs["units"] = str(units.get(name, ""))


def _set_attrs(target: Any, attrs: Mapping[str, Any] | None) -> None:
    if attrs is None:
        return
    if not isinstance(attrs, Mapping):
        raise TypeError(f"attrs must be a dict {{name: value}}, got {type(attrs).__name__}")
    reserved = {"distill4d_format", "distill4d_format_version", "distill4d_version", "distill4d_datacube", "provenance"}
    for key, value in attrs.items():
        if not isinstance(key, str) or not key:
            raise Distill4dError(f"attribute names must be non-empty strings, got {key!r}")
        if key in reserved:
            raise Distill4dError(f"attribute {key!r} is reserved for distill4d's own use")
        target.attrs[key] = _attr_value(value)


def _attr_value(value: Any) -> Any:
    if isinstance(value, Calibration):
        return json.dumps(value.to_attrs())
    if isinstance(value, (str, bytes, bool, int, float, np.generic)):
        return value
    if isinstance(value, (list, tuple, np.ndarray)):
        arr = np.asarray(value)
        if arr.dtype.kind in "biuf":
            return arr
        if all(isinstance(v, str) for v in np.asarray(value, dtype=object).reshape(-1)):
            return json.dumps(list(value) if not isinstance(value, np.ndarray) else value.tolist())
    try:
        return json.dumps(value)
    except TypeError:
        return str(value)


def read_results_file(
    path: str | os.PathLike,
) -> tuple[dict[str, np.ndarray], dict[str, str], dict[str, Any], Calibration]:
    """The pieces of a results file: ``(arrays, units, attrs, calibration)``, for
    :func:`distill4d.results.read_results`, which builds the :class:`~distill4d.results.Results`.

    Reads files written by :func:`write` with a dict or :func:`write_results_file`, the
    ``results=`` stored beside a DataCube, and ``StrainMap`` / ``BraggPeaks`` files. ``attrs``
    still holds the ``provenance`` JSON (or an older file's ``command`` / ``input``); the
    calibration is empty where the file has none.
    """
    from .hdf5 import _attr_str, open_h5

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: file not found")
    with open_h5(path) as f:
        fmt = _attr_str(f.attrs.get("distill4d_format"))
        own = _attr_str(f.attrs.get("format")).startswith("distill4d-")  # StrainMap, BraggPeaks, ...
        if "results" in f and fmt in ("results", "datacube"):
            group = f["results"]
        elif own:
            group = f
        else:
            what = (
                "a distill4d DataCube file (read it with distill4d.read)"
                if fmt == "datacube"
                else "not a distill4d results file"
            )
            raise Distill4dError(
                f"{path}: {what}; expected a file written by distill4d.write(path, {{name: array}})"
            )
        arrays: dict[str, np.ndarray] = {}
        units: dict[str, str] = {}
        try:
            for name, d in _datasets(group, skip=("calibration",) if group is f else ()):
                arrays[name] = np.asarray(d[()])
                units[name] = _attr_str(d.attrs.get("units", ""))
        except (OSError, RuntimeError) as err:
            from .sources import CorruptFileError

            raise CorruptFileError(f"{path}: the file is truncated or corrupt ({err})") from None
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        if "calibration" in f:
            cal = Calibration.from_attrs(dict(f["calibration"].attrs))
        elif fmt == "datacube" and _DATACUBE_PATH.rsplit("/", 1)[0] in f:
            cal = Calibration.from_attrs(dict(f[_DATACUBE_PATH.rsplit("/", 1)[0]].attrs))
        else:  # files of the CLI before /calibration: calibration_<field> attributes
            cal = Calibration.from_attrs({k[12:]: v for k, v in attrs.items() if k.startswith("calibration_")})
    return arrays, units, attrs, cal


def _datasets(group: Any, skip: tuple[str, ...] = ()) -> list[tuple[str, Any]]:
    """``(relative name, dataset)`` of every dataset under ``group``, sub-groups included."""
    import h5py

    found: list[tuple[str, Any]] = []
    for name, obj in group.items():
        if name in skip:
            continue
        if isinstance(obj, h5py.Group):
            found.extend((f"{name}/{sub}", d) for sub, d in _datasets(obj))
        else:
            found.append((name, obj))
    return found
