"""Fixtures shared across the test packages: the repository's folders and the real detector
files of the workspace's ``shared/testdata/detectors``."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DETECTORS = ROOT.parent / "shared" / "testdata" / "detectors"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository's root folder (README.md, docs/, src/)."""
    return ROOT


@pytest.fixture(scope="session")
def weights_dir() -> Path:
    """The shipped weights and model cards (``src/distill4d/weights``)."""
    import distill4d

    return Path(distill4d.__file__).resolve().parent / "weights"


@pytest.fixture(scope="session")
def det() -> Path:
    """The folder of small real detector files; skips where the shared test data are absent."""
    if not DETECTORS.is_dir():
        pytest.skip(f"real detector test files not found at {DETECTORS} (the shared test data folder is absent)")
    return DETECTORS
