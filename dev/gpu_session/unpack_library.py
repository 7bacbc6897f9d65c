"""Unpack a packed library (pack.py) into float32 shards."""
import lzma, pathlib, shutil, sys
from concurrent.futures import ProcessPoolExecutor
import h5py, numpy as np

BIG = ("patterns", "probes", "targets")

def unpack(args):
    src, dst = args
    tmp = dst.with_suffix(".tmp")
    tmp.write_bytes(lzma.decompress(src.read_bytes()))
    with h5py.File(tmp, "r") as f, h5py.File(dst, "w") as g:
        for k, v in f.attrs.items():
            g.attrs[k] = v
        for name in f:
            a = f[name][()]
            if name in BIG:
                a = a.astype(np.float32)
                g.create_dataset(name, data=a, chunks=(1,) + a.shape[1:])
            else:
                g.create_dataset(name, data=a)
    tmp.unlink()

if __name__ == "__main__":
    src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "library.json", dst / "library.json")
    jobs = [(p, dst / p.name[:-3]) for p in sorted(src.glob("shard_*.h5.xz"))]
    with ProcessPoolExecutor(int(sys.argv[3]) if len(sys.argv) > 3 else 8) as ex:
        list(ex.map(unpack, jobs))
    print("unpacked", len(jobs), "shards")
