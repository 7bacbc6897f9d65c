"""Images and image series (not 4D scans): ``.npy``, ``.tif``/``.tiff`` (every page a frame),
``.png``/``.jpg`` (one frame, colour averaged to grey) and HDF5 datasets ``FILE.h5:/path``."""

from __future__ import annotations

import os
import pathlib

import numpy as np

from ..errors import Distill4dError

__all__ = ["IMAGE_SUFFIXES", "image_ndim", "read_images"]

#: Suffixes read as images by :func:`read_images` (besides .npy and HDF5 datasets).
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
_HDF5 = (".h5", ".hdf5", ".emd")


def _split(path: str | os.PathLike) -> tuple[str, str | None]:
    from . import split_dataset_path

    file, inline = split_dataset_path(path)
    return str(file), inline


def _locate(path: str | os.PathLike, dataset: str | None) -> tuple[str, str | None, str]:
    """``(file, dataset, lower-case suffix)`` of ``FILE`` or ``FILE.h5:/dataset``; FileNotFoundError if absent."""
    file, inline = _split(path)
    if not os.path.exists(file):
        raise FileNotFoundError(f"{file}: file not found")
    return file, dataset or inline, pathlib.Path(file).suffix.lower()


def image_ndim(path: str | os.PathLike, dataset: str | None = None) -> int:
    """The number of dimensions of the data in ``path`` (2 image, 3 series, 4 scan) without reading
    it; 2 or 3 for image formats. FileNotFoundError if absent."""
    file, dataset, ext = _locate(path, dataset)
    if ext == ".npy":
        from .sources import read_npy_header

        return len(read_npy_header(file)[0])
    if ext in _HDF5 and dataset is not None:
        from .hdf5 import open_h5

        with open_h5(file) as f:
            if dataset not in f or not hasattr(f[dataset], "shape"):
                raise Distill4dError(f"{file}: dataset {dataset!r} not found")
            return int(f[dataset].ndim)
    if ext in IMAGE_SUFFIXES:
        return 3 if ext in (".tif", ".tiff") else 2
    return 4


def read_images(path: str | os.PathLike, dataset: str | None = None) -> np.ndarray:
    """The image (H, W) or series (T, H, W) in ``path`` as float32. Distill4dError for other shapes,
    complex or non-numeric data; FileNotFoundError if absent."""
    file, dataset, ext = _locate(path, dataset)
    if ext == ".npy":
        arr = np.load(file, allow_pickle=False, mmap_mode="r")
    elif ext in _HDF5:
        if dataset is None:
            raise Distill4dError(f"{file}: name the image dataset as {file}:/path/to/image")
        from .hdf5 import open_h5

        with open_h5(file) as f:
            if dataset not in f or not hasattr(f[dataset], "shape"):
                raise Distill4dError(f"{file}: dataset {dataset!r} not found")
            arr = np.asarray(f[dataset][()])
    elif ext in IMAGE_SUFFIXES:
        from PIL import Image, ImageSequence

        try:
            with Image.open(file) as im:
                frames = [np.asarray(p.convert("F") if p.mode not in ("I;16", "I", "F") else p, dtype=np.float32)
                          for p in ImageSequence.Iterator(im)]
        except OSError as err:
            raise Distill4dError(f"{file}: cannot read the image ({err})") from None
        arr = frames[0] if len(frames) == 1 else np.stack(frames)
    else:
        raise Distill4dError(f"{file}: not an image file (expected .npy, {', '.join(IMAGE_SUFFIXES)} or FILE.h5:/dataset)")
    if arr.ndim not in (2, 3):
        raise Distill4dError(f"{file}: expected an image (H, W) or a series (T, H, W), got shape {arr.shape}")
    if arr.dtype.kind not in "uifb":
        raise Distill4dError(f"{file}: expected real pixel values, got dtype {arr.dtype}")
    return np.asarray(arr, dtype=np.float32)
