"""Chunked on-disk output of a map job, so that an interrupted job resumes where it stopped.

Layout of a checkpoint directory::

    manifest.json        shape, tiling and job key of the job
    tile_000012.npz      the results of finished tile 12 (written atomically)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .._atomic import atomic_output, atomic_write_bytes
from ..errors import Distill4dError
from .tiles import Tile

_FORMAT = "distill4d-checkpoint-1"


class KeepCheckpoint(os.PathLike):
    """A checkpoint directory that stays after a successful run.

    The mapping functions remove their checkpoint directory once they return the full result.
    A pipeline whose later steps should resume too passes ``KeepCheckpoint(path)`` instead and
    removes the directory itself when its last output is written (the CLI does so with
    ``OUTPUT.partial/``).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __repr__(self) -> str:
        return f"KeepCheckpoint({os.fspath(self.path)!r})"


class Checkpoint:
    """A directory of finished tiles for one job (see the module docstring)."""

    def __init__(self, path: Path, tiles: list[Tile]) -> None:
        self.path = path
        self.tiles = tiles
        self._index = {t: i for i, t in enumerate(tiles)}

    @classmethod
    def open(cls, path: str | os.PathLike, shape: tuple[int, ...], tiles: list[Tile], job_key: str) -> "Checkpoint":
        """Open ``path`` for a job, creating it, or check that it belongs to this job."""
        path = Path(path)
        manifest = path / "manifest.json"
        if path.exists() and not path.is_dir():
            raise NotADirectoryError(f"checkpoint {path} exists and is not a directory")
        if manifest.exists():
            try:
                meta = json.loads(manifest.read_text())
            except (OSError, json.JSONDecodeError) as err:
                raise Distill4dError(f"checkpoint manifest {manifest} is unreadable ({err}); delete the directory") from None
            if meta.get("format") != _FORMAT:
                raise Distill4dError(f"{path} is not a distill4d checkpoint (format {meta.get('format')!r})")
            if tuple(meta["shape"]) != tuple(shape) or meta["job_key"] != job_key:
                raise Distill4dError(
                    f"checkpoint {path} belongs to another job (data shape {tuple(meta['shape'])}, "
                    f"job {meta['job_key']!r}); this job has shape {tuple(shape)} and job {job_key!r}. "
                    "Use another checkpoint directory or delete this one."
                )
            return cls(path, [Tile(*t) for t in meta["tiles"]])
        if path.exists() and any(path.iterdir()):
            raise Distill4dError(f"checkpoint directory {path} is not empty and has no manifest; refusing to use it")
        path.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": _FORMAT,
            "shape": list(shape),
            "job_key": job_key,
            "tiles": [[t.x0, t.x1, t.y0, t.y1] for t in tiles],
        }
        atomic_write_bytes(manifest, json.dumps(meta).encode())
        return cls(path, list(tiles))

    def _file(self, tile: Tile) -> Path:
        return self.path / f"tile_{self._index[tile]:06d}.npz"

    def save(self, tile: Tile, result: dict[str, np.ndarray]) -> None:
        """Write the results of a finished tile (atomically: a crash leaves no half file)."""
        with atomic_output(self._file(tile)) as tmp, open(tmp, "xb") as fh:
            np.savez(fh, **{f"out_{k}": v for k, v in result.items()})

    def remove(self) -> None:
        """Delete the manifest and the tile files, then the directory if nothing else is in it."""
        for f in [self.path / "manifest.json", *(self._file(t) for t in self.tiles)]:
            f.unlink(missing_ok=True)
        try:
            self.path.rmdir()
        except OSError:  # something else was put there: leave it
            pass

    def load_done(self) -> dict[Tile, dict[str, np.ndarray]]:
        """The results of every tile finished so far."""
        done = {}
        for tile in self.tiles:
            f = self._file(tile)
            if f.exists():
                try:
                    with np.load(f, allow_pickle=False) as z:
                        done[tile] = {k[4:]: z[k] for k in z.files}
                except (OSError, ValueError) as err:  # a damaged tile is recomputed
                    import warnings

                    warnings.warn(f"checkpoint tile {f} is unreadable ({err}); it will be recomputed", stacklevel=3)
        return done

