"""The import graph of ``distill4d``: no cycles, and no private names taken from another package.

The graph is read from the source with :mod:`ast`: every ``import`` and ``from ... import``
of a ``distill4d`` module, at module level and inside functions (an import inside a function
is still a dependency, only a later one). Imports under ``if TYPE_CHECKING:`` are left out:
they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import distill4d

SRC = Path(distill4d.__file__).resolve().parent
#: Top-level helper modules shared by the whole package (package-private, importable anywhere).
SHARED_PRIVATE = {"distill4d._validate", "distill4d._atomic", "distill4d._version"}


def _modules() -> dict[str, tuple[Path, bool]]:
    mods = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        mods[".".join(parts)] = (path, is_pkg)
    return mods


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    """Import nodes anywhere in ``tree``, except in ``if TYPE_CHECKING:`` blocks."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from (n for child in node.orelse for n in _import_nodes_in(child))
            continue
        yield from _import_nodes_in(node)


def _import_nodes_in(node: ast.AST):
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node
    else:
        yield from _import_nodes(node)


def _edges() -> list[tuple[str, str, str | None, int]]:
    """``(importer, imported module, imported name or None, line)`` for every import of distill4d."""
    mods = _modules()
    edges = []
    for mod, (path, is_pkg) in mods.items():
        for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                edges += [(mod, a.name, None, node.lineno) for a in node.names if a.name in mods]
                continue
            if node.level:
                base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target not in mods:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                edges.append((mod, sub, None, node.lineno) if sub in mods else (mod, target, alias.name, node.lineno))
    return [e for e in edges if e[0] != e[1]]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _in_cli(mod: str) -> bool:
    return mod == "distill4d.cli" or mod.startswith("distill4d.cli.")


def test_no_import_cycles_outside_the_cli():
    edges = [e for e in _edges() if not (_in_cli(e[0]) or _in_cli(e[1]))]
    graph: dict[str, set[str]] = {}
    for a, b, _, _ in edges:
        graph.setdefault(a, set()).add(b)
    problems = []
    for comp in _cycles(graph):
        inside = sorted({f"{a} -> {b} (line {line})" for a, b, _, line in edges if a in comp and b in comp})
        problems.append("cycle among " + ", ".join(comp) + ":\n    " + "\n    ".join(inside))
    assert not problems, "\n".join(problems)


def test_cli_modules_do_not_import_each_other_in_circles():
    """Command modules import only ``cli._common``; nothing in ``cli/`` but the ``python -m`` entry
    (``cli/__main__``) imports ``distill4d.cli`` itself."""
    bad = sorted({f"{a} -> {b} (line {line})" for a, b, _, line in _edges()
                  if _in_cli(a) and _in_cli(b) and a not in ("distill4d.cli", "distill4d.cli.__main__")
                  and b != "distill4d.cli._common"})
    assert not bad, "\n".join(bad)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _top_package(mod: str) -> str:
    parts = mod.split(".")
    return ".".join(parts[:2])


def _owner(mod: str) -> str:
    """The package whose private module ``mod`` is (``distill4d.io._common`` -> ``distill4d.io``)."""
    parts = mod.split(".")
    for i, part in enumerate(parts[1:], start=1):
        if _private(part):
            return ".".join(parts[:i])
    return mod


def test_no_private_names_from_other_packages():
    """A private name (``_x``) or private module is used only inside the package that defines it.

    ``distill4d._validate``, ``distill4d._atomic`` and ``distill4d._version`` are shared by the
    whole package.
    """
    bad = []
    for importer, target, name, line in _edges():
        if target in SHARED_PRIVATE:
            continue
        home = _top_package(target)
        if _private(target.split(".")[-1]) or any(_private(p) for p in target.split(".")[1:]):
            owner = _owner(target)
            if not (importer == owner or importer.startswith(owner + ".")):
                bad.append(f"{importer} (line {line}) imports the private module {target}")
                continue
        if name is not None and _private(name) and _top_package(importer) != home:
            bad.append(f"{importer} (line {line}) imports the private name {target}.{name}")
    assert not bad, "\n".join(sorted(set(bad)))
