"""Pack a distill4d library for transfer (patterns, probes, targets as float16; each shard
lzma-compressed) and unpack it again (float32 shards the Library reads as before).

    python dev/gpu_session/library_transfer.py pack LIB PACKED
    python dev/gpu_session/library_transfer.py unpack PACKED LIB [processes]
"""
import lzma
import pathlib
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor

import h5py
import numpy as np

BIG = ("patterns", "probes", "targets")


def _copy(src: pathlib.Path, dst: pathlib.Path, dtype) -> None:
    """``src`` shard → ``dst`` with the big arrays in ``dtype`` (one pattern a chunk), the rest as is."""
    with h5py.File(src, "r") as f, h5py.File(dst, "w") as g:
        for k, v in f.attrs.items():
            g.attrs[k] = v
        for name in f:
            a = f[name][()]
            if name in BIG:
                a = a.astype(dtype)
                g.create_dataset(name, data=a, chunks=(1,) + a.shape[1:])
            else:
                g.create_dataset(name, data=a)


def pack(args) -> int:
    src, dst = args
    tmp = dst.with_suffix("")  # .h5
    _copy(src, tmp, np.float16)
    dst.write_bytes(lzma.compress(tmp.read_bytes(), preset=6))
    tmp.unlink()
    return dst.stat().st_size


def unpack(args) -> int:
    src, dst = args
    tmp = dst.with_suffix(".tmp")
    tmp.write_bytes(lzma.decompress(src.read_bytes()))
    _copy(tmp, dst, np.float32)
    tmp.unlink()
    return dst.stat().st_size


if __name__ == "__main__":
    mode, src, dst = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
    if mode not in ("pack", "unpack"):
        sys.exit(__doc__)
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "library.json", dst / "library.json")
    if mode == "pack":
        jobs = [(p, dst / (p.name + ".xz")) for p in sorted(src.glob("shard_*.h5"))]
    else:
        jobs = [(p, dst / p.name[:-3]) for p in sorted(src.glob("shard_*.h5.xz"))]
    with ProcessPoolExecutor(int(sys.argv[4]) if len(sys.argv) > 4 else 2) as ex:
        sizes = list(ex.map(pack if mode == "pack" else unpack, jobs))
    print(f"{mode}ed {len(jobs)} shards, {sum(sizes) / 1e6:.1f} MB")
