"""The package's shape (issue 12, docs/architecture.md): no import cycles,
counting every import statement (function-level and TYPE_CHECKING ones too),
since a cycle that only runs late is still two modules that cannot be
understood apart; modules and classes small enough to hold one concept;
every module with its line in docs/architecture.md.

The size allow-lists name today's offenders; each helper that takes one
apart removes its entry (a stale entry fails the test too, so the lists can
only shrink)."""

from __future__ import annotations

import ast
from pathlib import Path

import modelimage

ROOT = Path(modelimage.__file__).parent
MAX_MODULE_LINES = 450
MAX_CLASS_LINES = 200
# the format codecs are whole specs in one place (issue 12)
CODECS = {"modelimage.formats.gguf", "modelimage.formats.safetensors"}
# Modules over MAX_MODULE_LINES and classes over MAX_CLASS_LINES still on main.
ALLOWED_LONG_MODULES: set[str] = set()
ALLOWED_LONG_CLASSES: set[str] = set()


def modules() -> dict[str, tuple[Path, list[str]]]:
    """module name -> (file, the package its relative imports start from)."""
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = ["modelimage", *path.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
            out[".".join(parts)] = (path, parts)
        else:
            out[".".join(parts)] = (path, parts[:-1])
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, (path, package) in mods.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(package[: len(package) - node.level + 1] + [node.module or ""]).strip(".") \
                    if node.level else node.module or ""
                # ``from PKG import sub`` imports the submodule; PKG itself only
                # when a name is defined in PKG's __init__ (running a parent
                # package first is what every submodule import does)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in mods and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def path_through(component: frozenset[str], graph: dict[str, set[str]]) -> list[str]:
    """The shortest cycle from the component's first module back to itself."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    following.append(w)
        frontier = following
    return [start, start]


def test_the_walker_sees_function_level_and_type_checking_imports():
    graph = import_graph()
    assert "modelimage.sources.hf" in graph["modelimage.sources"]  # imported inside open_source
    assert "modelimage.tarstream" in graph["modelimage.sink"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset("abc")]
    g = {"a": {"b"}, "b": {"c", "a"}, "c": {"a"}}
    assert path_through(frozenset("abc"), g) == ["a", "b", "a"]


def test_no_import_cycles():
    graph = import_graph()
    found = cycles(graph)
    assert not found, "import cycles: " + "; ".join(
        " -> ".join(path_through(c, graph)) + (f" (all of {sorted(c)} reach each other)" if len(c) > 2 else "")
        for c in found)


def _lines(node: ast.AST) -> int:
    return node.end_lineno - node.lineno + 1  # type: ignore[attr-defined,operator]


def test_modules_and_classes_stay_small():
    long_modules, long_classes = set(), set()
    for name, (path, _) in modules().items():
        source = path.read_text(encoding="utf-8")
        if name not in CODECS and len(source.splitlines()) > MAX_MODULE_LINES:
            long_modules.add(name)
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ClassDef) and _lines(node) > MAX_CLASS_LINES:
                long_classes.add(f"{name}.{node.name}")
    assert long_modules <= ALLOWED_LONG_MODULES, \
        f"modules over {MAX_MODULE_LINES} lines: {sorted(long_modules - ALLOWED_LONG_MODULES)}"
    assert long_classes <= ALLOWED_LONG_CLASSES, \
        f"classes over {MAX_CLASS_LINES} lines: {sorted(long_classes - ALLOWED_LONG_CLASSES)}"
    stale = (ALLOWED_LONG_MODULES - long_modules) | (ALLOWED_LONG_CLASSES - long_classes)
    assert not stale, f"these are short now: remove them from the allow-lists: {sorted(stale)}"


def test_every_module_has_its_line_in_docs_architecture():
    """docs/architecture.md names each module (``registry/push``, a package
    by its folder, the root as ``modelimage``) in its table: what it owns,
    what it never does."""
    doc = (ROOT.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    rows = {line.split("|")[1].strip().split()[0].strip("`") for line in doc.splitlines()
            if line.startswith("| `")}
    named = {"/".join(name.split(".")[1:]) or "modelimage" for name in modules()}
    assert not named - rows, f"add a line for each to the table in docs/architecture.md: {sorted(named - rows)}"
    assert not rows - named, f"these modules are gone: remove their lines from docs/architecture.md: " \
                             f"{sorted(rows - named)}"
