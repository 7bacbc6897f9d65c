"""The documentation site builds without a warning or a broken link (``mkdocs build --strict``),
and every ``from distill4d... import ...`` line of the README and the docs names a real object."""

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_IMPORT = re.compile(r"^\s*from (distill4d[\w.]*) import ([\w, ]+)", re.M)


def test_imports_in_the_documentation_resolve():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "docs").rglob("*.py"))]
    checked, broken = 0, []
    for page in pages:
        for module, names in _IMPORT.findall(page.read_text(encoding="utf-8")):
            try:
                mod = importlib.import_module(module)
            except ModuleNotFoundError as err:
                if err.name and not err.name.startswith("distill4d"):
                    continue  # an optional dependency that is not installed here
                broken.append(f"{page.name}: {module} ({err})")
                continue
            for name in (n.strip() for n in names.split(",")):
                checked += 1
                if name and not hasattr(mod, name):
                    broken.append(f"{page.name}: {module}.{name}")
    assert checked > 20 and not broken, broken


@pytest.mark.slow
def test_docs_build_strict(tmp_path):
    for module in ("mkdocs", "material", "mkdocstrings"):
        pytest.importorskip(module)
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = proc.stdout + proc.stderr
    assert "WARNING" not in log, log
    assert (tmp_path / "site" / "reference" / "cli" / "index.html").exists()
    assert (tmp_path / "site" / "reference" / "api" / "index.html").exists()


@pytest.mark.slow
def test_readme_python_tour_runs_as_written_on_the_demo_files(repo_root, tmp_path, monkeypatch):
    """The README's Python tour runs, line by line as written, in the folder of the demo's files
    (scan.h5, multilayer.h5, probe.npy), and its detectors fit the demo's detector (no clipping)."""
    import re
    import warnings

    pytest.importorskip("torch")
    from distill4d.cli.demo import demo_inputs

    text = (repo_root / "README.md").read_text()
    tour = re.search(r"## Python tour\n\n.*?```python\n(.*?)```", text, re.S).group(1)
    assert len(text.splitlines()) <= 150
    demo_inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(compile(tour, "README.md tour", "exec"), {})
    assert not [w for w in caught if "clipped" in str(w.message)]
    assert (tmp_path / "tour_strain.png").exists() and (tmp_path / "tour_results.h5").exists()
