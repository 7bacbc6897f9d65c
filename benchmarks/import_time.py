#!/usr/bin/env python3
"""How long ``import distill4d`` takes, and which heavy modules it loads (none should be).

Each measurement is a fresh interpreter: wall time of ``python -c "import distill4d"``
minus that of ``python -c "pass"`` (the interpreter's own start-up), median of --repeat
runs. Writes its section of benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/import_time.py
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from _results import machine_line, write_section

HEAVY = ("torch", "dask", "distributed", "abtem", "fastapi", "h5py", "scipy", "matplotlib", "rsciio")


def _wall(code: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=15)
    a = p.parse_args(argv)
    _wall("import distill4d")  # warm the file cache
    base = [_wall("pass") for _ in range(a.repeat)]
    imp = [_wall("import distill4d") for _ in range(a.repeat)]
    seconds = statistics.median(imp) - statistics.median(base)
    loaded = subprocess.run(
        [sys.executable, "-c", f"import sys, distill4d; print([m for m in {HEAVY!r} if m in sys.modules])"],
        capture_output=True, text=True, check=True).stdout.strip()
    verdict = "PASS" if seconds < 1.0 else "FAIL"
    section = "\n".join([
        "## Import time",
        "",
        "Written by `benchmarks/import_time.py`.",
        "",
        machine_line(),
        f"- `import distill4d`: {seconds * 1e3:.0f} ms (median of {a.repeat} fresh interpreters, "
        f"interpreter start-up of {statistics.median(base) * 1e3:.0f} ms subtracted): {verdict} (goal < 1 s)",
        f"- heavy modules loaded by the import: {loaded} (of {', '.join(HEAVY)})",
    ])
    write_section("import_time", section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
