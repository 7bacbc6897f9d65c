"""Atomic outputs: write to a temporary file beside the target, then rename over it.

A crash or an error half-way leaves the target as it was (absent, or the old file) and
no temporary file behind. New files get the usual permissions (from the umask).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_output", "atomic_write_bytes"]


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, force: bool = True) -> Iterator[Path]:
    """Yield a fresh temporary path next to ``path``; on success it replaces ``path``.

    With ``force=False`` an existing ``path`` raises FileExistsError before anything is
    written. The temporary file is not created here: the caller writes it (h5py, open, ...).
    """
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; pass force=True (--force on the command line) to overwrite it")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: the folder {path.parent} does not exist")
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (replacing an existing file)."""
    with atomic_output(path) as tmp, open(tmp, "xb") as fh:
        fh.write(data)
