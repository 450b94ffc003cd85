"""The package tree is the architecture, and the imports keep it true.

Every ``import`` in every module of ``cxr_viewer`` (top level or inside a function: a lazy import is
still an arrow) is read with ``ast`` and checked against the allowed arrows below. A forbidden
arrow, a Qt import below ``gui`` or an import cycle between modules fails with the file and line.
No display, no torch and no data needed: this reads source only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG_DIR = Path(__file__).resolve().parents[1] / "cxr_viewer"

#: part -> the parts it may import (besides itself and the package root ``cxr_viewer``:
#: version and research notice). ``cli`` may import ``gui`` to open the window and, lazily, to write
#: the PDF report with Qt's writer; ``gui`` never imports ``cli``.
ALLOWED = {
    "common": set(),
    "io": {"common"},
    "ai": {"io", "common"},
    "training": {"ai", "io", "common"},
    "clinical": {"ai", "io", "common"},
    "gui": {"clinical", "training", "ai", "io", "common"},
    "cli": {"gui", "clinical", "training", "ai", "io", "common"},
}
QT = ("PySide6", "shiboken6", "pyqtgraph", "PyQt5", "PyQt6", "PySide2")
#: parts allowed to import Qt (``cli`` only inside functions: the PDF writer and the GUI start).
QT_ALLOWED = {"gui": "anywhere", "cli": "lazily"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def part_of(module: str) -> str | None:
    """``cxr_viewer.io.dicom`` -> ``io``; the package root and ``__main__`` have no part."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] != "__main__" else None


def imports_of(path: Path) -> list[tuple[str, int, bool]]:
    """(absolute module imported, line, at module level) for every import statement in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    top_level = {id(node) for node in tree.body}
    # an import inside ``if TYPE_CHECKING:`` / ``try:`` at module level still runs at import time
    for node in tree.body:
        if isinstance(node, (ast.If, ast.Try)):
            top_level |= {id(n) for n in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # ``from cxr_viewer.io import dicom`` imports the module cxr_viewer.io.dicom
            found.append((target, node.lineno, id(node) in top_level))
            found += [(f"{target}.{alias.name}", node.lineno, id(node) in top_level) for alias in node.names
                      if (PKG_DIR.parent / f"{target}.{alias.name}".replace(".", "/")).with_suffix(".py").exists()
                      or (PKG_DIR.parent / f"{target}.{alias.name}".replace(".", "/") / "__init__.py").exists()]
    return found


MODULES = sorted(PKG_DIR.rglob("*.py"))


def test_every_module_lies_in_a_known_part():
    parts = {part_of(module_name(p)) for p in MODULES} - {None}
    assert parts == set(ALLOWED), f"parts on disk {sorted(parts)} vs the layering rules {sorted(ALLOWED)}"
    for p in MODULES:
        if p.parent != PKG_DIR:
            assert (p.parent / "__init__.py").exists(), f"{p.parent} has no __init__.py"
            doc = ast.get_docstring(ast.parse((p.parent / "__init__.py").read_text()))
            assert doc and len(doc) > 40, f"{p.parent}/__init__.py must say what the part owns and may import"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG_DIR)))
def test_imports_only_point_down(path: Path):
    this = module_name(path)
    part = part_of(this)
    bad = []
    for target, line, top in imports_of(path):
        root = target.split(".")[0]
        if root in QT:
            rule = QT_ALLOWED.get(part)
            if rule is None or (rule == "lazily" and top):
                bad.append(f"line {line}: imports {target} (Qt{' at module level' if rule else ''})")
            continue
        if root != "cxr_viewer":
            continue
        other = part_of(target)
        if other is None or other == part or part is None:
            continue
        if other not in ALLOWED[part]:
            bad.append(f"line {line}: {part} imports {target} ({other} is not below {part})")
    assert not bad, f"{path.relative_to(PKG_DIR)}:\n" + "\n".join(bad)


def test_no_import_cycles_between_modules():
    graph: dict[str, set[str]] = {}
    known = {module_name(p) for p in MODULES}
    for p in MODULES:
        this = module_name(p)
        graph[this] = set()
        for target, _line, _top in imports_of(p):
            # the longest known module that the import names (``from a.b import c`` -> a.b.c or a.b)
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != this and target != "cxr_viewer":
                graph[this].add(target)
    # a package's __init__ importing its own submodules is how Python packages expose names: the
    # submodule's import of a sibling goes through the package but not back to it.
    packages = {module_name(p) for p in MODULES if p.name == "__init__.py"}
    for name in packages:
        graph[name] = {t for t in graph[name] if not t.startswith(name + ".")}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or ())


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph (depth-first search), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_checker_sees_a_forbidden_arrow(tmp_path, monkeypatch):
    """The rules are not vacuous: an io module importing ai, or Qt, is reported."""
    fake = PKG_DIR / "io" / "dicom.py"
    tree = ast.parse(fake.read_text())
    names = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert "cxr_viewer.common.errors" in names  # the checker reads the real module's imports
    source = "from cxr_viewer.ai.model import HEADS\ndef f():\n    import PySide6\n"
    fake_io = tmp_path / "cxr_viewer" / "io" / "fake.py"
    fake_io.parent.mkdir(parents=True)
    fake_io.write_text(source)
    monkeypatch.setattr(__import__(__name__), "PKG_DIR", tmp_path / "cxr_viewer")
    with pytest.raises(AssertionError, match=r"io imports cxr_viewer.ai.model[\s\S]*PySide6"):
        test_imports_only_point_down(fake_io)
