import os
import stat

import numpy as np
import pytest

import distill4d
from distill4d._atomic import atomic_output


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp, open(tmp, "xb") as fh:
            fh.write(b"half")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_existing_output_needs_force_and_missing_folder_is_named(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(FileExistsError, match="force"):
        with atomic_output(target, force=False):
            pass
    with pytest.raises(FileNotFoundError, match="nope"):
        with atomic_output(tmp_path / "nope" / "x.h5"):
            pass


def test_outputs_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = distill4d.write(tmp_path / "r.h5", {"a": np.zeros((2, 2))})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
