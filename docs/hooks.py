"""MkDocs hooks: pages generated at build time (so that module moves never break the site).

- ``reference/cli.md``: every ``distill4d`` command's ``--help``, from
  ``distill4d.cli.build_parser()`` (its subparsers walked recursively);
- ``reference/api/<module>.md``: one mkdocstrings page per public module of ``src/distill4d``
  (found on disk; private modules, those with a leading underscore, are skipped), listed in the
  nav under *Reference > API* and on ``reference/api/index.md``;
- ``benchmarks.md``: ``benchmarks/RESULTS.md``, so the documentation can link to the numbers.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
PACKAGE = "distill4d"
_API: list[tuple[str, str]] = []  # (module, page) in order


def public_modules() -> list[str]:
    """Dotted names of the package's public modules and packages, sorted, found on disk."""
    names = []
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        rel = path.relative_to(SRC).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if any(p.startswith("_") for p in parts) or "configs" in parts:
            continue
        names.append(".".join(parts))
    return sorted(set(names))


def _walk(parser: argparse.ArgumentParser, prog: str):
    yield prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, f"{prog} {name}")


def cli_page() -> str:
    os.environ["COLUMNS"] = "100"  # the help's line width, whatever the terminal
    if str(SRC) not in sys.path:
        sys.path.insert(0, str(SRC))
    from distill4d.cli import build_parser

    lines = ["# Command line", "",
             "Generated from the command's own parsers (`distill4d.cli.build_parser()`) when the site is "
             "built, so it always matches the installed version. Every command also answers `--help`.", ""]
    for prog, parser in _walk(build_parser(), "distill4d"):
        level = "#" * min(2 + prog.count(" "), 4)
        lines += [f"{level} `{prog}`", ""]
        if parser.description and prog != "distill4d":
            lines += [parser.description.strip(), ""]
        lines += ["```text", parser.format_help().rstrip(), "```", ""]
    return "\n".join(lines)


def api_pages() -> dict[str, str]:
    pages = {}
    _API.clear()
    index = ["# API reference", "",
             "One page per public module of the `distill4d` package, generated from the docstrings "
             "when the site is built. Most users need only the functions the tutorials show; "
             "`import distill4d` exposes `read`, `write`, `DataCube`, `Calibration` and `map_patterns`.", ""]
    for name in public_modules():
        page = f"reference/api/{name}.md"
        pages[page] = f"# `{name}`\n\n::: {name}\n    options:\n      show_root_heading: false\n"
        _API.append((name, page))
        depth = name.count(".")
        index.append(f"{'    ' * max(depth - 1, 0)}- [`{name}`]({name}.md)")
    pages["reference/api/index.md"] = "\n".join(index) + "\n"
    return pages


def benchmarks_page() -> str:
    text = (ROOT / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8")
    head = ("!!! note\n    This page is `benchmarks/RESULTS.md` of the repository: each section is written by the "
            "script it names (see `benchmarks/README.md` for how to rerun it). Numbers are for the machine each "
            "section names.\n\n")
    first, _, rest = text.partition("\n")
    return first + "\n\n" + head + rest


def on_files(files, config):
    generated = {"reference/cli.md": cli_page(), "benchmarks.md": benchmarks_page(), **api_pages()}
    for uri, content in generated.items():
        old = files.get_file_from_path(uri)
        if old is not None:
            files.remove(old)
        files.append(File.generated(config, uri, content=content))
    return files


def on_config(config):
    api_pages()  # fills _API for the nav
    entries = ["reference/api/index.md"] + [{name: page} for name, page in _API]

    def fix(items):
        for item in items:
            if isinstance(item, dict):
                for key, value in item.items():
                    if key == "API":
                        item[key] = entries
                    elif isinstance(value, list):
                        fix(value)

    fix(config["nav"] or [])
    return config
