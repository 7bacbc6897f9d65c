"""Training libraries of multislice CBED patterns with structure-factor targets.

``build_library(config, out_dir)`` draws ``n_samples`` simulations (crystal, zone axis,
strain, tilt, energy, semiangle, thicknesses), runs each by multislice
(:func:`distill4d.simulate.multislice.simulate_cbed`: one propagation gives every thickness)
and writes the entries (pattern, probe, target, peak list, metadata), one per thickness, into
shards ``shard_00000.h5``, ``shard_00001.h5``, ... of ``shard_size`` samples each.

- Deterministic: sample ``i`` is drawn from ``numpy.random.default_rng([seed, i])`` alone, so
  a library does not depend on the shard size, the order shards finish in, or the number of
  workers; simulations on the CPU are bit-reproducible.
- Resumable: a shard file appears (atomically) only when it is complete; a rerun with the
  same configuration skips finished shards. ``library.json`` records the configuration; a
  folder built with another configuration is refused.
- Parallel: shards are tasks for :func:`distill4d.engine.run_tasks` (processes, a Dask
  scheduler address or Client; not threads: abTEM's settings are process-wide).

:class:`Library` reads a finished library lazily (one entry at a time, any process);
``distill4d.ml.fcunet.data.LibraryDataset`` wraps it for PyTorch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from .._atomic import atomic_output, atomic_write_bytes
from .._validate import check_keys, nonnegative_float, read_mapping_file, positive_float, positive_int
from ..errors import Distill4dError

__all__ = ["LibraryConfig", "sample_spec", "simulate_sample", "build_library", "Library"]

FORMAT = "distill4d-library"
FORMAT_VERSION = 1


def _pair(name: str, value: Any, *, lo: float, hi: float) -> tuple[float, float]:
    arr = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if arr.shape == (1,):
        arr = np.array([arr[0], arr[0]])
    if arr.shape != (2,) or not np.all(np.isfinite(arr)) or arr[0] > arr[1] or arr[0] < lo or arr[1] > hi:
        raise Distill4dError(f"{name} must be a range [min, max] within [{lo}, {hi}], got {value!r}")
    return float(arr[0]), float(arr[1])


@dataclasses.dataclass(frozen=True)
class LibraryConfig:
    """What a library spans. Ranges are ``(min, max)``, drawn uniformly (energies: a choice).

    n_samples : number of multislice simulations; each gives ``n_thicknesses`` entries.
    shard_size : simulations per shard file (the unit of parallel work and of resumption).
    shape, q_pixel_inv_A : the detector grid (pixels; 1/Å per pixel) of every entry.
    energies_kV : beam energies to choose from (kV).
    semiangle_mrad : convergence semiangle range (mrad).
    thickness_A, n_thicknesses : thickness range (Å) and how many thicknesses of one
        propagation are kept per simulation.
    tilt_mrad : maximum off-zone tilt (mrad), drawn uniformly in a disk; ``on_zone_fraction``
        of the simulations are exactly on zone.
    strain : maximum |εxx|, |εyy| (fraction) of a random diagonal strain of the cell.
    prototypes : names of :func:`distill4d.simulate.crystals.prototype` to draw from
        (empty: all).
    random_space_groups, random_fraction : a fraction of the simulations uses a random
        pyxtal crystal of one of these space groups instead of a prototype.
    max_zone_index : zone axes ``[uvw]`` with ``|u|, |v|, |w| ≤ max_zone_index``.
    slice_thickness_A, frozen_phonons, oversample : multislice settings
        (see :class:`~distill4d.simulate.multislice.CBEDSettings`).
    seed : the library's seed.
    """

    n_samples: int = 100
    shard_size: int = 8
    shape: tuple[int, int] = (128, 128)
    q_pixel_inv_A: float = 0.025
    energies_kV: tuple[float, ...] = (80.0, 120.0, 200.0, 300.0)
    semiangle_mrad: tuple[float, float] = (1.0, 4.0)
    thickness_A: tuple[float, float] = (20.0, 600.0)
    n_thicknesses: int = 3
    tilt_mrad: float = 10.0
    on_zone_fraction: float = 0.3
    strain: float = 0.02
    prototypes: tuple[str, ...] = ()
    random_space_groups: tuple[int, ...] = ()
    random_fraction: float = 0.0
    max_zone_index: int = 1
    slice_thickness_A: float = 2.0
    frozen_phonons: int = 0
    oversample: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        from .crystals import list_prototypes

        positive_int("n_samples", self.n_samples)
        positive_int("shard_size", self.shard_size)
        shape = tuple(int(n) for n in np.atleast_1d(self.shape))
        if len(shape) != 2 or min(shape) < 16:
            raise Distill4dError(f"shape must be two detector sizes >= 16, got {self.shape!r}")
        object.__setattr__(self, "shape", shape)
        positive_float("q_pixel_inv_A", self.q_pixel_inv_A, maximum=1.0)
        energies = tuple(float(e) for e in np.atleast_1d(self.energies_kV))
        if not energies or not all(20 <= e <= 1000 for e in energies):
            raise Distill4dError(f"energies_kV must be energies between 20 and 1000 kV, got {self.energies_kV!r}")
        object.__setattr__(self, "energies_kV", energies)
        object.__setattr__(self, "semiangle_mrad", _pair("semiangle_mrad", self.semiangle_mrad, lo=0.1, hi=100.0))
        object.__setattr__(self, "thickness_A", _pair("thickness_A", self.thickness_A, lo=1.0, hi=5000.0))
        positive_int("n_thicknesses", self.n_thicknesses)
        nonnegative_float("tilt_mrad", self.tilt_mrad)
        for name in ("on_zone_fraction", "random_fraction"):
            v = nonnegative_float(name, getattr(self, name))
            if v > 1:
                raise Distill4dError(f"{name} must be a fraction between 0 and 1, got {v!r}")
        if nonnegative_float("strain", self.strain) >= 0.2:
            raise Distill4dError(f"strain must be below 0.2 (20 %), got {self.strain!r}")
        names = tuple(str(p) for p in self.prototypes)
        known = list_prototypes()
        unknown = sorted(set(names) - set(known))
        if unknown:
            raise Distill4dError(f"unknown prototypes {unknown}; known: {known}")
        object.__setattr__(self, "prototypes", names)
        groups = tuple(int(g) for g in self.random_space_groups)
        if any(not 1 <= g <= 230 for g in groups):
            raise Distill4dError(f"random_space_groups must be space-group numbers 1-230, got {self.random_space_groups!r}")
        object.__setattr__(self, "random_space_groups", groups)
        if self.random_fraction > 0 and not groups:
            raise Distill4dError("random_fraction > 0 needs random_space_groups to draw from")
        positive_int("max_zone_index", self.max_zone_index)
        if not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise Distill4dError(f"seed must be a whole number >= 0, got {self.seed!r}")

    @property
    def n_shards(self) -> int:
        return math.ceil(self.n_samples / self.shard_size)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LibraryConfig:
        check_keys(cls, d, "library configuration")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> LibraryConfig:
        """Read a configuration from a TOML (``.toml``) or JSON file."""
        return cls.from_dict(read_mapping_file(path, "library configuration"))


def sample_spec(config: LibraryConfig, index: int) -> dict[str, Any]:
    """The simulation drawn for sample ``index`` (a JSON-able dict); depends on seed and index only."""
    from .crystals import list_prototypes

    rng = np.random.default_rng([int(config.seed), int(index)])
    spec: dict[str, Any] = {"index": int(index)}
    if config.random_space_groups and rng.random() < config.random_fraction:
        spec["crystal"] = {"space_group": int(rng.choice(config.random_space_groups)), "seed": int(rng.integers(2**31))}
    else:
        names = config.prototypes or tuple(list_prototypes())
        spec["crystal"] = {"prototype": str(rng.choice(names))}
    spec["zone_choice"] = float(rng.random())  # picks among the crystal's zone axes
    spec["energy_eV"] = float(rng.choice(config.energies_kV)) * 1e3
    spec["semiangle_mrad"] = float(rng.uniform(*config.semiangle_mrad))
    t = np.sort(rng.uniform(*config.thickness_A, size=config.n_thicknesses))
    spec["thicknesses_A"] = [float(x) for x in t]
    if rng.random() < config.on_zone_fraction:
        spec["tilt_mrad"] = [0.0, 0.0]
    else:
        r, phi = config.tilt_mrad * math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
        spec["tilt_mrad"] = [r * math.cos(phi), r * math.sin(phi)]
    spec["strain"] = [float(x) for x in rng.uniform(-config.strain, config.strain, size=2)]
    spec["phonon_seed"] = int(rng.integers(2**31))
    return spec


def _crystal(spec: dict[str, Any], config: LibraryConfig) -> tuple[Any, dict[str, Any]]:
    from . import crystals

    c = spec["crystal"]
    if "prototype" in c:
        return _oriented(crystals.prototype(c["prototype"]), c["prototype"], spec, config)
    # A random crystal whose zone axes give no orthogonal cell is redrawn (deterministically).
    last: Exception | None = None
    for attempt in range(_RANDOM_ATTEMPTS):
        try:
            seed = c["seed"] if attempt == 0 else np.random.default_rng([c["seed"], attempt])
            atoms = crystals.random_crystal(c["space_group"], rng=seed)
            name = f"random-sg{c['space_group']}-{atoms.get_chemical_formula()}"
            return _oriented(atoms, name, spec, config)
        except (ValueError, RuntimeError) as err:
            last = err
    raise Distill4dError(f"{_RANDOM_ATTEMPTS} random crystals of space group {c['space_group']} failed: {last}")


_RANDOM_ATTEMPTS = 8


def _oriented(atoms: Any, name: str, spec: dict[str, Any], config: LibraryConfig) -> tuple[Any, dict[str, Any]]:
    from . import crystals

    axes = crystals.zone_axes(atoms, config.max_zone_index)
    # Try the drawn zone axis first, then the next ones: some need too large an orthogonal cell.
    start = int(spec["zone_choice"] * len(axes))
    last: Exception | None = None
    for k in range(len(axes)):
        zone = axes[(start + k) % len(axes)]
        try:
            oriented, info = crystals.orient(atoms, zone)
        except ValueError as err:
            last = err
            continue
        if len(oriented) > 400:
            last = ValueError(f"{len(oriented)} atoms in the oriented cell")
            continue
        F = crystals.deformation_gradient(exx=spec["strain"][0], eyy=spec["strain"][1])
        strained = crystals.strain(oriented, F)
        sg = crystals.spacegroup_number(atoms)
        meta = {"crystal": name, "zone_axis": list(zone), "space_group": sg, "crystal_system": crystals.crystal_system(sg)}
        return strained, meta
    raise Distill4dError(f"no zone axis of {name} gives an orthogonal cell: {last}")


def simulate_sample(spec: dict[str, Any], config: LibraryConfig, *, device: str = "auto") -> list[dict[str, Any]]:
    """Run the simulation of one spec; one entry per thickness (arrays + metadata)."""
    from .multislice import CBEDSettings, simulate_cbed

    atoms, meta = _crystal(spec, config)
    settings = CBEDSettings(
        energy_eV=spec["energy_eV"],
        semiangle_mrad=spec["semiangle_mrad"],
        shape=config.shape,
        q_pixel_inv_A=config.q_pixel_inv_A,
        thicknesses_A=tuple(spec["thicknesses_A"]),
        tilt_mrad=tuple(spec["tilt_mrad"]),
        slice_thickness_A=config.slice_thickness_A,
        frozen_phonons=config.frozen_phonons,
        oversample=config.oversample,
    )
    res = simulate_cbed(atoms, settings, seed=spec["phonon_seed"], device=device)
    out = []
    for k, thickness in enumerate(res.thicknesses_A):
        entry = dict(meta)
        entry.update(
            {
                "pattern": res.patterns[k],
                "probe": res.probe,
                "target": res.target,
                "peaks": res.peaks.astype(np.float32),
                "sample_index": spec["index"],
                "thickness_A": float(thickness),
                "energy_eV": spec["energy_eV"],
                "semiangle_mrad": spec["semiangle_mrad"],
                "tilt_mrad": list(spec["tilt_mrad"]),
                "strain": list(spec["strain"]),
                "seconds": res.info["seconds"],
            }
        )
        out.append(entry)
    return out


_SCALARS = ("sample_index", "thickness_A", "energy_eV", "semiangle_mrad", "space_group", "seconds")
_VECTORS = ("tilt_mrad", "strain", "zone_axis")
_STRINGS = ("crystal", "crystal_system")


def _write_shard(path: pathlib.Path, entries: list[dict[str, Any]], shard: int, config: LibraryConfig) -> None:
    import h5py

    n = len(entries)
    peaks = [e["peaks"] for e in entries]
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in peaks])]).astype(np.int64)
    with atomic_output(path, force=True) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["version"] = FORMAT_VERSION
        f.attrs["shard"] = shard
        f.attrs["n_entries"] = n
        f.attrs["config"] = json.dumps(config.to_dict(), sort_keys=True)
        opts = {"compression": "gzip", "compression_opts": 1, "shuffle": True}
        shape = (1, *config.shape)
        for name in ("pattern", "probe", "target"):
            data = np.stack([e[name] for e in entries]).astype(np.float32)
            f.create_dataset(name + "s", data=data, chunks=shape, **opts)
        f.create_dataset("peaks", data=np.concatenate(peaks).reshape(-1, 3).astype(np.float32))
        f.create_dataset("peak_offsets", data=offsets)
        for name in _SCALARS:
            f.create_dataset(name, data=np.array([e[name] for e in entries], dtype=np.float64))
        for name in _VECTORS:
            f.create_dataset(name, data=np.array([e[name] for e in entries], dtype=np.float64))
        for name in _STRINGS:
            f.create_dataset(name, data=np.array([e[name] for e in entries], dtype=h5py.string_dtype()))
        f["peaks"].attrs["columns"] = "qx_px, qy_px, amplitude (relative to (000))"


def _shard_task(item: tuple[int, dict[str, Any], str, str]) -> tuple[int, int, float]:
    shard, config_dict, out_dir, device = item
    config = LibraryConfig.from_dict(config_dict)
    t0 = time.perf_counter()
    lo, hi = shard * config.shard_size, min(config.n_samples, (shard + 1) * config.shard_size)
    entries = []
    for index in range(lo, hi):
        entries.extend(simulate_sample(sample_spec(config, index), config, device=device))
    _write_shard(pathlib.Path(out_dir) / _shard_name(shard), entries, shard, config)
    return shard, len(entries), time.perf_counter() - t0


def _shard_name(shard: int) -> str:
    return f"shard_{shard:05d}.h5"


def _shard_complete(path: pathlib.Path, shard: int, config_json: str) -> bool:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return (
                f.attrs.get("format") == FORMAT
                and int(f.attrs.get("shard", -1)) == shard
                and f.attrs.get("config") == config_json
            )
    except OSError:
        return False


def _open_folder(config: LibraryConfig, out_dir: pathlib.Path) -> str:
    manifest = out_dir / "library.json"
    config_json = json.dumps(config.to_dict(), sort_keys=True)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir} exists and is not a folder")
    if manifest.exists():
        try:
            old = json.loads(manifest.read_text())
        except ValueError:
            raise Distill4dError(f"{manifest} is not a distill4d library manifest (unreadable JSON)") from None
        if old.get("format") != FORMAT or json.dumps(old.get("config"), sort_keys=True) != config_json:
            raise Distill4dError(
                f"{out_dir} holds a library built with another configuration; "
                "build into a new folder (nothing was changed)"
            )
    else:
        if out_dir.exists() and any(out_dir.iterdir()):
            raise FileExistsError(f"{out_dir} is not empty and not a distill4d library; choose a new folder")
        out_dir.mkdir(parents=True, exist_ok=True)
        body = {"format": FORMAT, "version": FORMAT_VERSION, "config": config.to_dict()}
        atomic_write_bytes(manifest, (json.dumps(body, indent=2, sort_keys=True) + "\n").encode())
    return config_json


def build_library(
    config: LibraryConfig,
    out_dir: str | os.PathLike,
    *,
    scheduler: Any = "processes",
    n_workers: int | None = None,
    device: str = "auto",
    progress: bool | None = None,
    max_shards: int | None = None,
) -> dict[str, Any]:
    """Build (or resume) a library in ``out_dir``; returns a summary dict.

    scheduler, n_workers : where shards run (see :func:`distill4d.engine.run_tasks`):
        ``"processes"`` (default), ``"inline"``, a Dask address or Client; not ``"threads"``.
    device : ``"auto"`` (the GPU when CuPy sees one), ``"cpu"`` or ``"gpu"`` (abTEM's CuPy path).
    max_shards : stop after this many new shards (for time-boxed sessions; rerun to go on).
    """
    from ..engine import run_tasks

    if not isinstance(config, LibraryConfig):
        raise TypeError(f"config must be a LibraryConfig, got {type(config).__name__}")
    if scheduler == "threads":
        raise Distill4dError(
            "scheduler='threads' is not supported for simulations: abTEM's settings and FFT plan caches "
            "are shared by all threads of a process (results then differ at round-off level); use "
            "'processes', 'inline' or a Dask scheduler"
        )
    out = pathlib.Path(os.fspath(out_dir))
    config_json = _open_folder(config, out)
    todo = [s for s in range(config.n_shards) if not _shard_complete(out / _shard_name(s), s, config_json)]
    done_before = config.n_shards - len(todo)
    if max_shards is not None:
        todo = todo[: positive_int("max_shards", max_shards, minimum=0) if max_shards else 0]
    items = [(s, config.to_dict(), str(out), device) for s in todo]
    t0 = time.perf_counter()
    seconds = []
    for _item, (_shard, _n, sec) in run_tasks(
        _shard_task, items, scheduler=scheduler, n_workers=n_workers, progress=progress, desc="library", unit="shard"
    ):
        seconds.append(sec)
    return {
        "shards_total": config.n_shards,
        "shards_before": done_before,
        "shards_built": len(seconds),
        "complete": done_before + len(seconds) == config.n_shards,
        "wall_seconds": time.perf_counter() - t0,
        "shard_seconds": seconds,
    }


class Library:
    """A finished (or partly built) library, read lazily one entry at a time.

    ``len(lib)`` entries over the complete shards; ``lib[i]`` is a dict with ``pattern``,
    ``probe``, ``target`` ((Nx, Ny) float32), ``peaks`` ((m, 3): qx, qy px, amplitude) and the
    metadata. Files are opened per process on first use, so a Library can be handed to
    DataLoader workers.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        import h5py

        self.path = pathlib.Path(os.fspath(path))
        manifest = self.path / "library.json"
        if not manifest.is_file():
            raise FileNotFoundError(f"{self.path} is not a distill4d library (no library.json)")
        body = json.loads(manifest.read_text())
        self.config = LibraryConfig.from_dict(body["config"])
        config_json = json.dumps(self.config.to_dict(), sort_keys=True)
        self.shards: list[pathlib.Path] = []
        counts = []
        for s in range(self.config.n_shards):
            p = self.path / _shard_name(s)
            if p.exists() and _shard_complete(p, s, config_json):
                with h5py.File(p, "r") as f:
                    counts.append(int(f.attrs["n_entries"]))
                self.shards.append(p)
        if not self.shards:
            raise Distill4dError(f"{self.path} has no finished shards yet")
        self._offsets = np.concatenate([[0], np.cumsum(counts)])
        self._files: dict[int, Any] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def _file(self, k: int) -> Any:
        import h5py

        if os.getpid() != self._pid:  # forked: handles of the parent are not ours
            self._files, self._pid = {}, os.getpid()
        if k not in self._files:
            self._files[k] = h5py.File(self.shards[k], "r")
        return self._files[k]

    def locate(self, index: int) -> tuple[int, int]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"library entry {index} out of range for {n} entries")
        index %= n
        k = int(np.searchsorted(self._offsets, index, side="right") - 1)
        return k, int(index - self._offsets[k])

    def __getitem__(self, index: int) -> dict[str, Any]:
        k, j = self.locate(int(index))
        f = self._file(k)
        lo, hi = f["peak_offsets"][j : j + 2]
        entry: dict[str, Any] = {
            "pattern": f["patterns"][j],
            "probe": f["probes"][j],
            "target": f["targets"][j],
            "peaks": f["peaks"][lo:hi],
        }
        for name in _SCALARS + _VECTORS:
            entry[name] = f[name][j]
        for name in _STRINGS:
            v = f[name][j]
            entry[name] = v.decode() if isinstance(v, bytes) else str(v)
        return entry

    def arrays(self, indices: Sequence[int] | None = None) -> dict[str, Any]:
        """``pattern``, ``probe``, ``target`` ((n, Nx, Ny) float32) and ``peaks`` (a list of (m, 3)
        arrays) of the entries ``indices`` (default: all), read shard by shard into memory (the
        bulk of :meth:`__getitem__`, without the metadata, for training from memory)."""
        idx = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)
        where = np.array([self.locate(int(i)) for i in idx], dtype=np.int64).reshape(-1, 2)
        n = tuple(self.config.shape)
        out = {k: np.empty((len(idx), *n), dtype=np.float32) for k in ("pattern", "probe", "target")}
        peaks: list[Any] = [None] * len(idx)
        for k in np.unique(where[:, 0]):
            rows = np.nonzero(where[:, 0] == k)[0]
            f = self._file(int(k))
            for key, name in (("pattern", "patterns"), ("probe", "probes"), ("target", "targets")):
                out[key][rows] = f[name][()][where[rows, 1]]
            all_peaks, offsets = f["peaks"][()], f["peak_offsets"][()]
            for r in rows:
                j = where[r, 1]
                peaks[r] = all_peaks[offsets[j] : offsets[j + 1]]
        out["peaks"] = peaks
        return out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(len(self)):
            yield self[i]

    def metadata(self, names: Sequence[str] = _SCALARS) -> dict[str, np.ndarray]:
        """Per-entry metadata columns over the whole library (for splits and reports)."""
        out: dict[str, list] = {n: [] for n in names}
        for k in range(len(self.shards)):
            f = self._file(k)
            for n in names:
                col = f[n][()]
                out[n].append(np.array([c.decode() if isinstance(c, bytes) else c for c in col]) if n in _STRINGS else col)
        return {n: np.concatenate(v) for n, v in out.items()}

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files = {}
