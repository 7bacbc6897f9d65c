"""HDF5 readers: distill4d's own files, py4DSTEM EMD 1.0, Prismatic EMD, HyperSpy .hspy,
and any HDF5 file with one 4D dataset (Dectris ARINA master files: :mod:`.arina`)."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..calibration import Calibration
from ..errors import Distill4dError, Distill4dKeyError
from ._common import (
    DATASET_HINT,
    SCAN_SHAPE_HINT,
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
from ._h5 import dask_token, h5_value, read_all, safe_calibration, short_error
from .arina import is_arina_master, read_arina
from .attrs import attribute_calibration
from .sources import CorruptFileError, H5Source, open_h5_file

__all__ = ["read_hdf5", "list_datasets", "calibration_attributes", "open_h5", "OWN_FORMAT_ATTR"]

#: Root attribute that marks files written by distill4d ("datacube" or "results").
OWN_FORMAT_ATTR = "distill4d_format"
_MAX_LISTED = 25


@contextlib.contextmanager
def open_h5(path: str | os.PathLike, expect_format: str | None = None) -> Iterator[Any]:
    """Open ``path`` read-only; a truncated or non-HDF5 file raises CorruptFileError naming it.

    With ``expect_format``, the root attribute ``format`` must equal it (files of distill4d's
    result classes), else ValueError.
    """
    path = os.fspath(path)
    f = open_h5_file(path)
    try:
        if expect_format is not None and f.attrs.get("format") != expect_format:
            raise Distill4dError(
                f"{path} is not a {expect_format} file (its format attribute is {f.attrs.get('format')!r})"
            )
        yield f
    finally:
        f.close()


def _all_datasets(f: Any) -> list[tuple[str, tuple[int, ...], str]]:
    import h5py

    found: list[tuple[str, tuple[int, ...], str]] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            found.append(("/" + name, tuple(int(s) for s in obj.shape), str(obj.dtype)))

    try:
        f.visititems(visit)
    except (OSError, RuntimeError) as err:
        raise CorruptFileError(f"{f.filename}: the file is truncated or corrupt ({short_error(err)})") from None
    return found


def _is_candidate(shape: tuple[int, ...]) -> bool:
    """4D, or 5D and more with size-1 leading axes (squeezable to 4D)."""
    if len(shape) < 4:
        return False
    return all(s == 1 for s in shape[: len(shape) - 4]) and all(s > 0 for s in shape)


def list_datasets(path: str | os.PathLike) -> list[tuple[str, tuple[int, ...], str]]:
    """The 4D-STEM candidate datasets of an HDF5 file.

    Parameters
    ----------
    path : an HDF5 file (.h5, .hdf5, .emd, .hspy).

    Returns
    -------
    ``[(dataset_path, shape, dtype), ...]`` for every 4D dataset and every 5D+ dataset whose
    extra leading axes have size 1, in file order.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: file not found")
    with open_h5(path) as f:
        return [d for d in _all_datasets(f) if _is_candidate(d[1])]


def _describe(items: list[tuple[str, tuple[int, ...], str]]) -> str:
    shown = [f"{p} {s} {d}" for p, s, d in items[:_MAX_LISTED]]
    if len(items) > _MAX_LISTED:
        shown.append(f"... and {len(items) - _MAX_LISTED} more")
    return "; ".join(shown) if shown else "nothing"


# ---------------------------------------------------------------------- entry point
def read_hdf5(
    path: str,
    dataset: str | None,
    lazy: bool | None,
    budget: int,
    scan_shape: tuple[int, int] | None = None,
) -> Loaded:
    """Read one 4D-STEM dataset from an HDF5 file (see :func:`distill4d.io.read`)."""
    with open_h5(path) as f:
        fmt = _attr_str(f.attrs.get(OWN_FORMAT_ATTR))
        if fmt == "results" and dataset is None:
            raise Distill4dError(
                f"{path} is a distill4d results file (images and maps), not a 4D dataset; "
                "open it with distill4d.io.read_results(path)"
            )
        if dataset is None:
            if is_arina_master(f):
                return read_arina(f, path, lazy, budget, scan_shape)
        dset = _resolve_dataset(f, path, dataset, scan_shape)
        what = f"dataset {dset.name}"
        check_dtype(dset.dtype, path, what)
        if dset.ndim < 3:
            raise Distill4dError(
                f"{path}: dataset {dset.name} has shape {dset.shape}, which is not 4D-STEM data "
                "(expected (Rx, Ry, Qx, Qy) or a stack (N, Qx, Qy))"
            )
        calibration, q_mrad, _ = _calibration_for(f, dset, path)
        nbytes = int(np.prod(dset.shape, dtype=np.int64)) * dset.dtype.itemsize
        if want_lazy(lazy, nbytes, budget):
            import dask.array as da

            source = H5Source(path, dset.name, dset.shape, dset.dtype)
            scan_axes = 1 if dset.ndim == 3 else dset.ndim - 2
            chunks = scan_chunks(dset.shape, dset.dtype.itemsize, dset.chunks, budget, scan_axes=scan_axes)
            data = da.from_array(source, chunks=chunks, name=f"h5-{dask_token(source)}")
        else:
            data, source = read_all(dset, path), None
    return Loaded(data, calibration, q_mrad, name=os.path.basename(path), source=source)


def _resolve_dataset(f: Any, path: str, dataset: str | None, scan_shape: Any = None) -> Any:
    """The h5py dataset to read: :func:`_choose_dataset`'s, or the single array of a group the caller named."""
    import h5py

    name = _choose_dataset(f, path, dataset, scan_shape)
    obj = f[name]
    if isinstance(obj, h5py.Group):  # a group given by the caller: its single array inside
        inner = [d for d in _all_datasets(obj) if len(d[1]) >= 3]
        if len(inner) != 1:
            raise Distill4dError(
                f"{path}: {name!r} is a group; give the dataset inside it. Datasets of 3 or more "
                f"dimensions there: {_describe([(obj.name.rstrip('/') + p, s, d) for p, s, d in inner])}"
            )
        obj = f[obj.name.rstrip("/") + inner[0][0]]
    return obj


def calibration_attributes(path: str, dataset: str | None, scan_shape: tuple[int, int] | None) -> list[str]:
    """The lines of :func:`distill4d.io.calibration_attributes` for the HDF5 file ``path``."""
    with open_h5(path) as f:
        if dataset is None and is_arina_master(f):
            return []
        dset = _resolve_dataset(f, path, dataset, scan_shape)
        return _calibration_for(f, dset, path)[2]


def _attr_str(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.size == 1:
        return _attr_str(value.reshape(-1)[0])
    return str(value)


def _choose_dataset(f: Any, path: str, dataset: str | None, scan_shape: Any = None) -> str:
    """The path of the dataset to read: the caller's choice, the own file's, the only candidate, or
    (with ``scan_shape`` and no 4D dataset) the only stack of that many patterns."""
    if dataset is not None:
        if not isinstance(dataset, str):
            raise TypeError(f"dataset must be a string (a path inside the HDF5 file), got {dataset!r}")
        key = dataset if dataset.startswith("/") else "/" + dataset
        try:
            ok = key in f
        except (OSError, RuntimeError):  # a broken external link
            ok = False
        if not ok:
            cands = [d for d in _all_datasets(f) if _is_candidate(d[1])]
            raise Distill4dKeyError(
                f"{path}: no dataset {dataset!r} in the file; 4D datasets available: {_describe(cands)}"
            )
        return key
    own = _attr_str(f.attrs.get("distill4d_datacube"))
    if _attr_str(f.attrs.get(OWN_FORMAT_ATTR)) == "datacube" and own and own in f:
        return own
    everything = _all_datasets(f)
    cands = [d for d in everything if _is_candidate(d[1])]
    if len(cands) == 1:
        return cands[0][0]
    if not cands and scan_shape is not None:
        n = int(np.prod(tuple(scan_shape), dtype=np.int64))
        stacks = [d for d in everything if len(d[1]) == 3 and d[1][0] == n]
        if len(stacks) == 1:
            return stacks[0][0]
    if not cands:
        raise Distill4dError(
            f"{path}: no 4D dataset found (expected an array (Rx, Ry, Qx, Qy)); the file holds: "
            f"{_describe(everything)}. To read a 3D stack (N, Qx, Qy), name it as FILE.h5:/path or with "
            f"{DATASET_HINT}, and give its scan with {SCAN_SHAPE_HINT}"
        )
    # an EMD 1.0 DataCube (py4DSTEM) among other 4D arrays is the datacube
    cubes = [d for d in cands if _attr_str(f[d[0]].parent.attrs.get("python_class")) == "DataCube"]
    if len(cubes) == 1:
        return cubes[0][0]
    raise Distill4dError(
        f"{path} holds several 4D datasets; choose one as FILE.h5:/path or with {DATASET_HINT}: "
        f"{_describe(cands)}"
    )


# ---------------------------------------------------------------------- calibration
def _calibration_for(f: Any, dset: Any, path: str) -> tuple[Calibration, float | None, list[str]]:
    """Calibration of ``dset`` from whatever the file records, the q pixel in mrad if only that, and
    the attributes of a plain file it came from (see :mod:`.attrs`)."""
    grp = dset.parent
    if _attr_str(f.attrs.get(OWN_FORMAT_ATTR)) == "datacube":
        names = set(Calibration.field_names())
        if any(k in names for k in grp.attrs):
            return Calibration.from_attrs(grp.attrs), None, []
    fields: dict[str, Any] = {}
    q_mrad: float | None = None
    emd_cal = _emd_calibration_group(grp)
    if emd_cal is not None:
        fields, q_mrad = _from_emd_calibration(emd_cal)
    else:
        axes = _dims(grp, dset.ndim) or _hspy_axes(grp, dset.ndim)
        if axes:
            fields, q_mrad = _from_axes(axes, prismatic="4DSTEM_simulation" in f)
    fields.update(_beam_metadata(f, grp))
    found, found_mrad, lines = attribute_calibration(dset)  # plain attributes fill what is missing
    used = []
    for field, line in lines:
        if field == "q_pixel_mrad":
            if "q_pixel_inv_A" in fields or q_mrad is not None:
                continue
            q_mrad = found_mrad
        elif field in fields:
            continue
        else:
            fields[field] = found[field]
        used.append(line)
    return safe_calibration(fields, path), q_mrad, used


def _emd_calibration_group(grp: Any) -> Any:
    """The EMD 1.0 (py4DSTEM/emdfile) ``metadatabundle/calibration`` group that applies to ``grp``."""
    node = grp
    while True:
        bundle = node.get("metadatabundle")
        if bundle is not None and "calibration" in bundle:
            return bundle["calibration"]
        if _attr_str(node.attrs.get("emd_group_type")) == "root" or node.name == "/":
            return None
        node = node.parent


def _from_emd_calibration(cal: Any) -> tuple[dict[str, Any], float | None]:
    vals = {k: h5_value(cal[k]) for k in cal.keys()}
    fields: dict[str, Any] = {}
    q_mrad = None
    r_size, r_units = _pair(vals.get("R_pixel_size")), vals.get("R_pixel_units", "pixels")
    q_size, q_units = _pair(vals.get("Q_pixel_size")), vals.get("Q_pixel_units", "pixels")
    r_units, q_units = _pair_units(r_units), _pair_units(q_units)
    if r_size:
        fields["scan_step_A"] = same_step(*(length_to_A(s, u) for s, u in zip(r_size, r_units, strict=True)))
    if q_size:
        fields["q_pixel_inv_A"] = same_step(
            *(inv_length_to_inv_A(s, u) for s, u in zip(q_size, q_units, strict=True))
        )
        if fields["q_pixel_inv_A"] is None:
            q_mrad = same_step(*(angle_to_mrad(s, u) for s, u in zip(q_size, q_units, strict=True)))
    qx0, qy0 = vals.get("qx0_mean"), vals.get("qy0_mean")
    if _finite(qx0) and _finite(qy0):
        fields["origin_px"] = (float(qx0), float(qy0))
    rot = vals.get("QR_rotation_degrees")
    if _finite(rot):
        fields["scan_rotation_rad"] = math.radians(float(rot))
    if vals.get("QR_flip") is not None:
        fields["scan_flip"] = bool(vals["QR_flip"])
    semi = positive_or_none(vals.get("probe_convergence_semiangle_mrad"))
    if semi is not None:
        fields["semiangle_mrad"] = semi
    for key in ("beam_energy_eV", "accelerating_voltage_V", "energy_eV"):
        e = positive_or_none(vals.get(key))
        if e is not None:
            fields["energy_eV"] = e
            break
    return fields, q_mrad


def _pair(value: Any) -> tuple[float, float] | None:
    if value is None:
        return None
    arr = np.atleast_1d(np.asarray(value, dtype=float)).reshape(-1)
    if arr.size == 1:
        v = positive_or_none(arr[0])
        return None if v is None else (v, v)
    if arr.size >= 2:
        a, b = positive_or_none(arr[0]), positive_or_none(arr[1])
        return None if a is None or b is None else (a, b)
    return None


def _pair_units(value: Any) -> tuple[str, str]:
    if isinstance(value, (list, tuple, np.ndarray)) and len(value) >= 2:
        return _attr_str(value[0]), _attr_str(value[1])
    return _attr_str(value), _attr_str(value)


def _finite(v: Any) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _dims(grp: Any, ndim: int) -> list[tuple[float, float, str]] | None:
    """EMD dim vectors next to the data as (step, offset, units): ``dim0..`` in EMD 1.0, ``dim1..`` in 0.x."""
    import h5py

    for base in (0, 1):
        dims = [grp.get(f"dim{i + base}") for i in range(ndim)]
        if all(isinstance(d, h5py.Dataset) and d.ndim == 1 and d.shape[0] >= 2 for d in dims):
            out = []
            for d in dims:
                v = np.asarray(d[()], dtype=np.float64)
                step = (v[-1] - v[0]) / (v.shape[0] - 1)  # the whole vector: float32 dims round less
                out.append((float(step), float(v[0]), _attr_str(d.attrs.get("units"))))
            return out
    return None


def _hspy_axes(grp: Any, ndim: int) -> list[tuple[float, float, str]] | None:
    """HyperSpy ``axis-0 ..`` groups (array order) as (step, offset, units)."""
    groups = [grp.get(f"axis-{i}") for i in range(ndim)]
    if not all(g is not None for g in groups):
        return None
    out = []
    for g in groups:
        a = g.attrs
        out.append((float(a.get("scale", 1.0)), float(a.get("offset", 0.0)), _attr_str(a.get("units", ""))))
    return out


def _from_axes(
    axes: list[tuple[float, float, str]], prismatic: bool = False
) -> tuple[dict[str, Any], float | None]:
    """Calibration fields from (step, offset, units) of the last four axes (Rx, Ry, Qx, Qy)."""
    axes = axes[-4:] if len(axes) >= 4 else [(1.0, 0.0, "")] * (4 - len(axes)) + axes
    if prismatic:
        # Prismatic (before its 2020 "Fix units" change) labelled its dims "[n_m]" and
        # "[n_m^-1]" while the values are in Å and 1/Å (the probe step and 1/cell size).
        fix = {"[n_m]": "A", "[n_m^-1]": "A^-1"}
        axes = [(s, o, fix.get(u.strip(), u)) for s, o, u in axes]
    fields: dict[str, Any] = {}
    (sx, _, ux), (sy, _, uy) = axes[0], axes[1]
    fields["scan_step_A"] = same_step(length_to_A(abs(sx), ux), length_to_A(abs(sy), uy))
    (qx, ox, uqx), (qy, oy, uqy) = axes[2], axes[3]
    q = same_step(inv_length_to_inv_A(abs(qx), uqx), inv_length_to_inv_A(abs(qy), uqy))
    q_mrad = None
    if q is not None:
        fields["q_pixel_inv_A"] = q
    else:
        q_mrad = same_step(angle_to_mrad(abs(qx), uqx), angle_to_mrad(abs(qy), uqy))
    calibrated = q is not None or q_mrad is not None
    if calibrated and (ox != 0 or oy != 0) and qx != 0 and qy != 0:
        fields["origin_px"] = (-ox / qx, -oy / qy)
    return fields, q_mrad


def _beam_metadata(f: Any, grp: Any) -> dict[str, Any]:
    """Beam energy and convergence semiangle from HyperSpy or Prismatic metadata, when present."""
    out: dict[str, Any] = {}
    places = (
        (grp.get("metadata/Acquisition_instrument/TEM"), "beam_energy", "convergence_angle"),  # HyperSpy
        (f.get("4DSTEM_simulation/metadata/metadata_0/original/simulation_parameters"), "E", "sa"),  # Prismatic
    )
    for node, energy_keV, semiangle_mrad in places:  # both store keV and mrad
        if node is None:
            continue
        e = positive_or_none(node.attrs.get(energy_keV))
        if e is not None:
            out["energy_eV"] = e * 1e3
        a = positive_or_none(node.attrs.get(semiangle_mrad))
        if a is not None:
            out["semiangle_mrad"] = a
    return out


def read_hdf5_2d(path: str, dataset: str) -> np.ndarray | None:
    """The dataset ``dataset`` of an HDF5 file if it is 2D (an image), else None."""
    with open_h5(path) as f:
        if dataset not in f or not hasattr(f[dataset], "shape"):
            raise Distill4dKeyError(f"{path}: dataset {dataset!r} not found")
        dset = f[dataset]
        if dset.ndim != 2:
            return None
        check_dtype(dset.dtype, path, f"dataset {dset.name}")
        return np.asarray(dset[()])
