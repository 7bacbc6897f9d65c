"""The ML packages: one home per model, torch-free to import, public names resolved lazily."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

PACKAGES = ("distill4d.ml", "distill4d.ml._common", "distill4d.ml.fcunet", "distill4d.ml.ccstae", "distill4d.ml.phase",
            "distill4d.ml.window_ae", "distill4d.segment")


@pytest.mark.parametrize("package", PACKAGES)
def test_package_import_does_not_import_torch(package):
    code = f"import sys, {package}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_torch_free_constants():
    from distill4d.ml.fcunet import DEFAULT_WEIGHTS, FCUNET_VIEWS
    from distill4d.ml.phase import SHIPPED_MODELS, SHIPPED_TRAINING_SETS

    assert FCUNET_VIEWS == ("none", "flips", "dihedral")
    assert DEFAULT_WEIGHTS.is_file() and DEFAULT_WEIGHTS.with_suffix(".json").is_file()
    assert "conv4d-mixed" in SHIPPED_MODELS and SHIPPED_TRAINING_SETS == ("mos2", "mixed")


@pytest.mark.parametrize("package", PACKAGES[2:6])
def test_public_names_resolve_to_their_one_home(package):
    pytest.importorskip("torch")
    pkg = importlib.import_module(package)
    for name in pkg.__all__:
        obj = getattr(pkg, name)
        module = getattr(obj, "__module__", None)
        if module is not None and callable(obj):
            assert module.startswith(package + "."), (name, module)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        pkg.nope  # noqa: B018
    assert set(pkg.__all__) <= set(dir(pkg))
