"""Reading 4D-STEM data into a :class:`~distill4d.DataCube` and writing data and results.

Formats, by file extension:

============================  ===================================================================
``.h5 .hdf5 .emd .hspy``      HDF5: distill4d's own files, py4DSTEM EMD 1.0, Prismatic EMD,
                              HyperSpy, Dectris ARINA/EIGER master files (``*_master.h5``), or any
                              HDF5 file holding one 4D dataset (``dataset=`` or ``"file.h5:/path"``
                              chooses among several)
``.npy``                      NumPy array (memory-mapped when lazy)
``.blo``                      NanoMegas ASTAR blockfile
``.mib``                      Quantum Detectors Merlin (with its ``.hdr``), via RosettaSciIO
``.dm3 .dm4``                 Gatan Digital Micrograph, via RosettaSciIO
``.xml``                      EMPAD (the ``.xml`` next to the ``.raw``), via RosettaSciIO
``.tvips .mrc .ser .prz``     TVIPS, Direct Electron MRC, FEI TIA, Panta Rhei, via RosettaSciIO
============================  ===================================================================

Arrays keep their stored order: axis 0 is the slow scan direction (rows, Rx), axis 2 the
detector rows (Qx), as py4DSTEM does. A stack of patterns with one navigation axis
``(N, Qx, Qy)`` (a line scan, or frames whose scan shape the file does not record) becomes
``(1, N, Qx, Qy)``, or ``scan_shape + (Qx, Qy)`` when ``scan_shape=(Rx, Ry)`` is given.
A plain HDF5 file is calibrated from attributes of its dataset whose name and unit are
unambiguous (``energy_eV``, ``beam_energy`` with a unit, ``semiangle_mrad``,
``q_pixel_size_invA``, ``scan_step_A``, ...: the list is in :mod:`distill4d.io.attrs`);
:func:`calibration_attributes` says which it used.
Merlin frames are flipped upside down as RosettaSciIO, pyxem and py4DSTEM do (the detector
reads its rows out bottom first), so a pixel at raw row ``y`` is at ``Qx = height - 1 - y``.
"""

from __future__ import annotations

import os
import pathlib
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import Distill4dError
from .hdf5 import list_datasets
from .sources import CorruptFileError, H5Source, MemmapSource, NpySource
from ..results import Results, read_results
from .write import write

if TYPE_CHECKING:  # pragma: no cover
    from ..datacube import DataCube
    from ._common import Loaded

__all__ = [
    "read",
    "write",
    "read_results",
    "Results",
    "list_datasets",
    "calibration_attributes",
    "split_dataset_path",
    "supported_formats",
    "H5Source",
    "NpySource",
    "MemmapSource",
    "CorruptFileError",
]

_HDF5 = (".h5", ".hdf5", ".hdf", ".emd", ".hspy", ".nxs")


def supported_formats() -> dict[str, str]:
    """``{extension: format}`` for every extension :func:`read` knows."""
    from .rsciio import RSCIIO_FORMATS

    out = {ext: "HDF5 (distill4d, py4DSTEM EMD, Prismatic, HyperSpy, ARINA, any 4D dataset)" for ext in _HDF5}
    out[".npy"] = "NumPy array"
    out[".blo"] = "NanoMegas blockfile"
    out.update({ext: label for ext, (_, label) in RSCIIO_FORMATS.items()})
    return out


def split_dataset_path(path: str | os.PathLike) -> tuple[str, str | None]:
    """Split ``"file.h5:/path/in/file"`` into ``("file.h5", "/path/in/file")``.

    The split is on the last ``':'`` and only when the part before it is an existing file,
    so ordinary paths (including ones with ``':'`` in them) are left whole.
    """
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if ":" in text and not os.path.exists(text):
        head, _, tail = text.rpartition(":")
        if head and tail and os.path.isfile(head):
            return head, tail
    return text, None


def read(
    path: str | os.PathLike,
    *,
    dataset: str | None = None,
    lazy: bool | None = None,
    memory_budget: int | None = None,
    scan_shape: tuple[int, int] | None = None,
    **calibration_fields: Any,
) -> DataCube:
    """Read a 4D-STEM dataset into a :class:`~distill4d.DataCube`.

    Parameters
    ----------
    path : the file; for HDF5, ``"file.h5:/path/in/file"`` names the dataset.
    dataset : the dataset inside an HDF5 file (or the title/index of a signal in a
        RosettaSciIO file) when the file holds several; default: the only 4D dataset.
    lazy : ``True`` reads on demand (a Dask array whose chunks are whole patterns along the
        scan, picklable for Dask distributed); ``False`` loads everything into memory;
        ``None`` (default) is lazy when the data is larger than ``memory_budget``.
    memory_budget : bytes (default :data:`distill4d.engine.DEFAULT_MEMORY_BUDGET`, 1 GiB,
        or the environment variable ``DISTILL4D_MEMORY_BUDGET``).
    scan_shape : ``(Rx, Ry)`` for data stored as a stack of frames (Dectris ARINA when not
        square, a 3D dataset, a line of frames); the number of patterns must agree.
    **calibration_fields : :class:`~distill4d.Calibration` fields that override what the
        file says, e.g. ``q_pixel_inv_A=0.02, energy_eV=300e3`` (``None`` keeps the file's
        value).

    Returns
    -------
    DataCube with axes ``(Rx, Ry, Qx, Qy)`` in the stored order, native byte order, and
    the calibration found in the file (Å, 1/Å, eV, mrad) updated by ``calibration_fields``.

    Raises
    ------
    FileNotFoundError : the file (or a data file it links to) does not exist.
    ValueError : unknown extension (the message lists the supported formats); a truncated or
        corrupt file (:class:`CorruptFileError`, a ValueError); no 4D dataset, or several.
    KeyError : ``dataset`` is not in the file (the message lists the 4D datasets).
    TypeError : the data is not real intensities (complex, boolean, strings), or an unknown
        calibration field.

    Examples
    --------
    >>> dc = read("scan.h5:/datacube_root/datacube/data", q_pixel_inv_A=0.02)  # doctest: +SKIP
    """
    from ..calibration import Calibration, electron_wavelength_A
    from .._validate import is_dask
    from ..datacube import DataCube
    from ._common import memory_budget as _budget
    from ._common import native, scan_chunks, to_4d, want_lazy

    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file path (str or os.PathLike), got {type(path).__name__}")
    file, inline = split_dataset_path(path)
    if inline is not None:
        if dataset is not None and dataset != inline:
            raise Distill4dError(f"the dataset is given twice: {inline!r} in the path and {dataset!r} as --dataset (dataset=)")
        dataset = inline
    unknown = set(calibration_fields) - set(Calibration.field_names())
    if unknown:
        raise TypeError(
            f"read() got unknown keyword(s) {sorted(unknown)}; "
            f"calibration fields are {Calibration.field_names()}"
        )
    if lazy is not None and not isinstance(lazy, bool):
        raise TypeError(f"lazy must be True, False or None, got {lazy!r}")
    budget = _budget(memory_budget)
    if not os.path.exists(file):
        raise FileNotFoundError(f"{file}: file not found")
    if os.path.isdir(file):
        raise IsADirectoryError(f"{file} is a folder; give the data file inside it")
    ext = pathlib.Path(file).suffix.lower()
    if ext == ".hdr" and os.path.exists(file[:-4] + ".mib"):
        file, ext = file[:-4] + ".mib", ".mib"
    loaded = _dispatch(file, ext, dataset, lazy, budget, scan_shape)
    data = native(to_4d(loaded.data, file, scan_shape if scan_shape is not None else loaded.scan_shape))
    if lazy is not True and isinstance(data, np.memmap) and not want_lazy(lazy, data.nbytes, budget):
        data = np.array(data)  # an eager read is an ordinary in-memory array
    if lazy is True and not is_dask(data):
        import dask.array as da

        data = da.from_array(data, chunks=scan_chunks(data.shape, data.dtype.itemsize, None, budget))
    cal = loaded.calibration
    overrides = {k: v for k, v in calibration_fields.items() if v is not None}
    if overrides:
        cal = cal.replace(**overrides)
    if cal.q_pixel_inv_A is None and loaded.q_pixel_mrad is not None and cal.energy_eV is not None:
        cal = cal.replace(q_pixel_inv_A=loaded.q_pixel_mrad * 1e-3 / electron_wavelength_A(cal.energy_eV))
    src = loaded.source
    reader = src if src is not None and tuple(src.shape) == tuple(data.shape) and src.dtype == data.dtype else None
    return DataCube(data, cal, name=loaded.name or os.path.basename(file), reader=reader)


def calibration_attributes(
    path: str | os.PathLike, dataset: str | None = None, scan_shape: tuple[int, int] | None = None
) -> list[str]:
    """Which attributes of a plain HDF5 file :func:`read` took its calibration from.

    One line per attribute taken (see :mod:`distill4d.io.attrs` for the names understood); empty
    for files that are not HDF5, distill4d's own files, ARINA master files and files whose
    metadata (EMD, HyperSpy, Prismatic) already gave those fields. ``dataset`` (or
    ``"file.h5:/path"``) and ``scan_shape`` as for :func:`read`.
    """
    import h5py

    from .hdf5 import calibration_attributes as from_hdf5

    file, inline = split_dataset_path(path)
    if not (os.path.isfile(file) and h5py.is_hdf5(file)):
        return []
    return from_hdf5(file, dataset or inline, scan_shape)


def _dispatch(
    file: str, ext: str, dataset: str | None, lazy: bool | None, budget: int, scan_shape: Any
) -> Loaded:
    from .rsciio import RSCIIO_FORMATS

    if ext in _HDF5:
        from .hdf5 import read_hdf5

        return read_hdf5(file, dataset, lazy, budget, scan_shape)
    if dataset is not None and ext not in RSCIIO_FORMATS:
        raise Distill4dError(
            f"{file}: --dataset (dataset=) {dataset!r} applies to HDF5 files only, not to {ext or 'this'} files"
        )
    if ext == ".npy":
        from .npy import read_npy

        return read_npy(file, lazy, budget)
    if ext == ".blo":
        from .blockfile import read_blockfile

        return read_blockfile(file, lazy, budget)
    if ext in RSCIIO_FORMATS:
        from .rsciio import read_rsciio

        return read_rsciio(file, lazy, budget, dataset)
    raise Distill4dError(f"{file}: unknown file extension {ext!r}; supported formats: {_formats_text()}")


def _formats_text() -> str:
    by_label: dict[str, list[str]] = {}
    for e, label in supported_formats().items():
        by_label.setdefault(label, []).append(e)
    return "; ".join(f"{' '.join(exts)} ({label})" for label, exts in by_label.items())


def read_probe(path: str | os.PathLike, *, dataset: str | None = None) -> np.ndarray:
    """A vacuum-probe image ``(Qx, Qy)`` as float64 from a file.

    ``path`` (or ``"file.h5:/dataset"``) may hold a 2D image (``.npy`` or an HDF5 dataset),
    or a 3D/4D stack of vacuum patterns, which is averaged (read with :func:`read`).
    """
    file, inline = split_dataset_path(path)
    dataset = dataset or inline
    if not os.path.exists(file):
        raise FileNotFoundError(f"{file}: probe file not found")
    ext = pathlib.Path(file).suffix.lower()
    image = None
    if ext == ".npy":
        from .npy import read_npy_2d

        image = read_npy_2d(file)
    elif ext in _HDF5 and dataset is not None:
        from .hdf5 import read_hdf5_2d

        image = read_hdf5_2d(file, dataset)
    if image is None:
        return read(file, dataset=dataset).mean_pattern()
    if not np.all(np.isfinite(image)):
        raise Distill4dError(f"{path}: the probe image contains NaN or Inf values")
    return image.astype(np.float64)
