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


@pytest.fixture(scope="session")
def merlin(det: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Merlin ``.mib``/``.hdr`` test files unpacked: ``merlin / "<zip name without .zip>" / "<file>"``."""
    import zipfile

    out = tmp_path_factory.mktemp("merlin")
    for name in ("Merlin_navigation4x2_ROI.zip", "Merlin_navigation4x2_signalNx256_ROI.zip"):
        with zipfile.ZipFile(det / name) as z:
            z.extractall(out / name[: -len(".zip")])
    return out
