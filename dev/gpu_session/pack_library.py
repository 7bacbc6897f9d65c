"""Pack a distill4d library for transfer: patterns/probes/targets as float16, each shard lzma-compressed."""
import lzma, pathlib, shutil, sys
from concurrent.futures import ProcessPoolExecutor
import h5py, numpy as np

BIG = ("patterns", "probes", "targets")

def pack(args):
    src, dst = args
    tmp = dst.with_suffix("")  # .h5
    with h5py.File(src, "r") as f, h5py.File(tmp, "w") as g:
        for k, v in f.attrs.items():
            g.attrs[k] = v
        for name in f:
            a = f[name][()]
            if name in BIG:
                a = a.astype(np.float16)
            g.create_dataset(name, data=a)
    dst.write_bytes(lzma.compress(tmp.read_bytes(), preset=6))
    tmp.unlink()
    return dst.stat().st_size

if __name__ == "__main__":
    src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "library.json", dst / "library.json")
    jobs = [(p, dst / (p.name + ".xz")) for p in sorted(src.glob("shard_*.h5"))]
    with ProcessPoolExecutor(2) as ex:
        sizes = list(ex.map(pack, jobs))
    print(len(sizes), sum(sizes) / 1e6, "MB")
