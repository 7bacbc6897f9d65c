#!/usr/bin/env python3
"""Write a synthetic 4D-STEM benchmark dataset (uint16) to disk as .npy and HDF5.

The data is written one scan row at a time, so memory stays bounded (a few scan rows)
whatever the file size. Content: a bright-field disk (radius 32 px, shifted by up to
+-3 px) on a weak diffuse background, with Poisson noise, in a bank of 32 pre-generated
patterns; each scan position takes a (seeded) random pattern of the bank and scales it
by a smooth, structured "sample" contrast, so a virtual bright-field image shows
features. It is not physical; it is realistic enough for a throughput benchmark (the
values are not constant, the disk is where a BF detector looks).

Files (in --out, default benchmarks/data/):
    benchmark_{Rx}x{Ry}x{Qx}x{Qy}_uint16.npy   plain NumPy format (C order)
    benchmark_{Rx}x{Ry}x{Qx}x{Qy}_uint16.h5    dataset "/data", chunks (1, CRy, Qx, Qy),
                                                no compression (CRy = --h5-chunk-ry)

Usage:
    python benchmarks/make_benchmark_data.py            # 180x180x256x256 (4.25 GB per file)
    python benchmarks/make_benchmark_data.py --quick    # 64x64x256x256  (0.54 GB per file)
    python benchmarks/make_benchmark_data.py --shape 256 256 256 256 --formats npy

Only NumPy and h5py are needed (the project's .venv has both).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "data"
FULL_SHAPE = (180, 180, 256, 256)  # 4.25 GB (3.96 GiB) of uint16
QUICK_SHAPE = (64, 64, 256, 256)  # 0.54 GB of uint16
DISK_RADIUS = 32.0
BANK_SIZE = 32
H5_DATASET = "data"


def dataset_stem(shape: tuple[int, int, int, int]) -> str:
    return "benchmark_{}x{}x{}x{}_uint16".format(*shape)


def dataset_paths(out: Path, shape: tuple[int, int, int, int]) -> dict[str, Path]:
    stem = dataset_stem(shape)
    return {"npy": Path(out) / f"{stem}.npy", "h5": Path(out) / f"{stem}.h5"}


def default_h5_chunk_ry(ry: int) -> int:
    """Scan positions along Ry per HDF5 chunk: the largest divisor of Ry <= 36 (~4.7 MB chunks)."""
    for c in range(min(36, ry), 0, -1):
        if ry % c == 0:
            return c
    return 1


def _pattern_bank(rng: np.random.Generator, qx: int, qy: int) -> np.ndarray:
    """BANK_SIZE noisy patterns (float32): BF disk + diffuse background, Poisson noise."""
    xa, ya = np.indices((qx, qy), dtype=np.float32)
    bank = np.empty((BANK_SIZE, qx, qy), dtype=np.float32)
    for k in range(BANK_SIZE):
        cx = qx / 2 + rng.uniform(-3, 3)
        cy = qy / 2 + rng.uniform(-3, 3)
        r = np.sqrt((xa - cx) ** 2 + (ya - cy) ** 2)
        # Soft-edged disk (~100 counts), weak diffuse halo (a few counts) and two weak Bragg-like spots.
        disk = 100.0 / (1.0 + np.exp(np.clip((r - DISK_RADIUS) / 0.8, -50, 50)))
        halo = 6.0 * np.exp(-r / 45.0)
        spots = np.zeros_like(r)
        for sx, sy in ((cx + 70, cy + 10), (cx - 70, cy - 10)):
            spots += 25.0 * np.exp(-((xa - sx) ** 2 + (ya - sy) ** 2) / (2 * 4.0**2))
        bank[k] = rng.poisson(disk + halo + spots).astype(np.float32)
    return bank


def _contrast(rx: int, ry: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth (Rx, Ry) 'sample' contrast in about [0.5, 1.6]: lattice fringes + a few particles."""
    x, y = np.meshgrid(np.arange(rx, dtype=np.float32), np.arange(ry, dtype=np.float32), indexing="ij")
    c = 1.0 + 0.25 * np.sin(2 * np.pi * x / 23.0) * np.cos(2 * np.pi * y / 31.0)
    for _ in range(6):
        px, py, w = rng.uniform(0, rx), rng.uniform(0, ry), rng.uniform(4, 12)
        c -= 0.4 * np.exp(-((x - px) ** 2 + (y - py) ** 2) / (2 * w**2))
    c += 0.05 * rng.standard_normal((rx, ry)).astype(np.float32)
    return np.clip(c, 0.3, 1.6).astype(np.float32)


def _write_npy_header(f, shape: tuple[int, ...], dtype: np.dtype) -> None:
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(f, header)


def make_dataset(
    out: Path = DEFAULT_OUT,
    shape: tuple[int, int, int, int] = FULL_SHAPE,
    formats: tuple[str, ...] = ("npy", "h5"),
    seed: int = 0,
    h5_chunk_ry: int | None = None,
    overwrite: bool = False,
    verbose: bool = True,
) -> dict[str, Path]:
    """Write the dataset in the requested formats; existing complete files are kept unless overwrite."""
    rx, ry, qx, qy = (int(s) for s in shape)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = dataset_paths(out, (rx, ry, qx, qy))
    nbytes = rx * ry * qx * qy * 2
    todo = [fmt for fmt in formats if overwrite or not _complete(paths[fmt], fmt, (rx, ry, qx, qy))]
    result = {fmt: paths[fmt] for fmt in formats}
    if not todo:
        if verbose:
            print(f"[make_benchmark_data] up to date: {', '.join(str(result[f]) for f in formats)}")
        return result
    chunk_ry = h5_chunk_ry or default_h5_chunk_ry(ry)
    if verbose:
        print(
            f"[make_benchmark_data] writing {rx}x{ry}x{qx}x{qy} uint16 ({nbytes / 1e9:.2f} GB per file) "
            f"as {', '.join(todo)} to {out}"
        )
    rng = np.random.default_rng(seed)
    bank = _pattern_bank(rng, qx, qy)
    contrast = _contrast(rx, ry, rng)
    row_f = np.empty((ry, qx, qy), dtype=np.float32)
    row_u = np.empty((ry, qx, qy), dtype=np.uint16)

    tmp = {fmt: paths[fmt].with_name(paths[fmt].name + ".partial") for fmt in todo}
    f_npy = h5f = dset = None
    t0 = time.perf_counter()
    try:
        if "npy" in todo:
            f_npy = open(tmp["npy"], "wb")
            _write_npy_header(f_npy, (rx, ry, qx, qy), np.dtype(np.uint16))
        if "h5" in todo:
            import h5py

            h5f = h5py.File(tmp["h5"], "w")
            dset = h5f.create_dataset(
                H5_DATASET, shape=(rx, ry, qx, qy), dtype=np.uint16, chunks=(1, chunk_ry, qx, qy)
            )
            dset.attrs["axes"] = ["Rx", "Ry", "Qx", "Qy"]
            dset.attrs["description"] = "synthetic 4D-STEM benchmark data (distill4d benchmarks)"
            h5f.attrs["seed"] = seed
        for x in range(rx):
            idx = rng.integers(0, BANK_SIZE, ry)
            np.multiply(bank[idx], contrast[x][:, None, None], out=row_f)
            np.rint(row_f, out=row_f)
            row_u[...] = row_f  # values < 200 * 1.6: no overflow
            if f_npy is not None:
                row_u.tofile(f_npy)
            if dset is not None:
                dset[x] = row_u
            if verbose and (x % max(1, rx // 10) == 0 or x == rx - 1):
                done = (x + 1) / rx
                el = time.perf_counter() - t0
                print(f"  row {x + 1}/{rx}  {done * 100:5.1f}%  {el:6.1f} s", flush=True)
    finally:
        if f_npy is not None:
            f_npy.close()
        if h5f is not None:
            h5f.close()
    for fmt in todo:
        os.replace(tmp[fmt], paths[fmt])
    if verbose:
        el = time.perf_counter() - t0
        print(f"[make_benchmark_data] done in {el:.1f} s: {', '.join(str(paths[f]) for f in todo)}")
    return result


def _complete(path: Path, fmt: str, shape: tuple[int, int, int, int]) -> bool:
    """True when ``path`` exists and holds a uint16 array of ``shape``."""
    if not path.exists():
        return False
    try:
        if fmt == "npy":
            a = np.load(path, mmap_mode="r")
            ok = a.shape == shape and a.dtype == np.uint16
            del a
            return ok
        import h5py

        with h5py.File(path, "r") as f:
            d = f[H5_DATASET]
            return d.shape == shape and d.dtype == np.uint16
    except Exception:
        return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: benchmarks/data)")
    p.add_argument("--quick", action="store_true", help=f"small dataset {QUICK_SHAPE} (0.54 GB) for a smoke test")
    p.add_argument("--shape", type=int, nargs=4, metavar=("RX", "RY", "QX", "QY"), help="explicit shape")
    p.add_argument("--formats", default="npy,h5", help="comma-separated: npy,h5 (default both)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--h5-chunk-ry", type=int, default=None, help="scan positions along Ry per HDF5 chunk")
    p.add_argument("--overwrite", action="store_true", help="rewrite files that already exist")
    a = p.parse_args(argv)
    shape = tuple(a.shape) if a.shape else (QUICK_SHAPE if a.quick else FULL_SHAPE)
    formats = tuple(f.strip() for f in a.formats.split(",") if f.strip())
    bad = [f for f in formats if f not in ("npy", "h5")]
    if bad:
        p.error(f"unknown format(s) {bad}; use npy and/or h5")
    make_dataset(a.out, shape, formats, a.seed, a.h5_chunk_ry, a.overwrite)
    return 0


if __name__ == "__main__":
    sys.exit(main())
