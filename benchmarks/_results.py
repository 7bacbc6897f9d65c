"""Shared by the benchmark scripts: the machine description and RESULTS.md sections.

Each script owns one section of benchmarks/RESULTS.md between ``<!-- NAME:start -->`` and
``<!-- NAME:end -->`` and rewrites only that section.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
from pathlib import Path

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"
#: Where the selection and experiment scripts (weights candidates, variants, searches, test-time
#: views) write their sections: not RESULTS.md, which keeps only the benchmarks behind claims of
#: the shipped code. ``benchmarks/data/`` is gitignored; a decision taken on these numbers is
#: recorded in docs/experiments.md.
EXPERIMENTS_MD = Path(__file__).resolve().parent / "data" / "experiments.md"
_REPO = Path(__file__).resolve().parent.parent
# absolute paths of one machine (scratch, home and temporary folders) never go into a results file
_MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:work|tmp|root|home|scratch|mnt)(?:/[^\s`'\")\],;]+)+")


def machine_info() -> dict:
    """CPU model, cores, RAM (GB), kernel, Python and the date of the run."""
    info: dict = {"cpu_model": "unknown", "cores": os.cpu_count(), "ram_gb": None}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    info["ram_gb"] = int(line.split()[1]) * 1024 / 1e9
                    break
    except OSError:
        pass
    try:
        info["affinity_cores"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        info["affinity_cores"] = None
    info["kernel"] = platform.release()
    info["python"] = platform.python_version()
    info["date"] = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return info


def machine_line(info: dict | None = None) -> str:
    """One Markdown line describing the machine."""
    info = info or machine_info()
    ram = f"{info['ram_gb']:.1f} GB RAM" if info.get("ram_gb") else "RAM unknown"
    return (f"- Machine: {info['cpu_model']}, {info['cores']} cores, {ram}, "
            f"Linux {info['kernel']}, Python {info['python']}")


def public_text(text: str) -> str:
    """``text`` with this repository's absolute paths made relative and other machine paths
    (scratch, temporary and home folders) cut to their last component."""
    text = text.replace(str(_REPO) + "/", "")
    return _MACHINE_PATH.sub(lambda m: Path(m.group(0)).name, text)


def write_section(name: str, section: str, path: Path = RESULTS_MD) -> None:
    """Put ``section`` between this benchmark's markers in ``path``, keeping the rest.

    Machine paths are removed first (:func:`public_text`)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    body = public_text(section).strip("\n")
    if not body.startswith(start):
        body = f"{start}\n{body}\n{end}"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.exists() else "# distill4d benchmark results\n\n"
    if text.count(start) > 1 or text.count(end) > 1:
        raise ValueError(f"{path} has more than one {start} or {end} marker; remove the stale copy by hand")
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = head + body + tail
    else:
        text = text.rstrip("\n") + "\n\n" + body + "\n"
    path.write_text(text)


def add_output_arguments(parser, section: str) -> None:
    """``--threads``, ``--no-results`` and ``--section`` (default ``section``) of a benchmark that
    writes one RESULTS.md section and ``benchmarks/data/<section>.json``."""
    parser.add_argument("--threads", type=int, default=2, help="PyTorch CPU threads")
    parser.add_argument("--no-results", action="store_true", help="do not write RESULTS.md")
    parser.add_argument("--section", default=section,
                        help=f"RESULTS.md section (and data/SECTION.json) to write (default {section}; another name "
                             "keeps that section's earlier rows)")
