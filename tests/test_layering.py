"""workers/ and search_spaces/ never import orchestrator/; the loss modules import only torch; orchestrator/
imports no module that imports it back."""

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_workers_and_search_spaces_never_import_orchestrator():
    offenders = []
    for package in ("workers", "search_spaces"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for name in imported_modules(path):
                if name == "orchestrator" or name.startswith("orchestrator."):
                    offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert offenders == []


def test_loss_modules_import_only_torch():
    allowed_roots = {"torch", "__future__", "dataclasses", "typing", "math", "collections", "workers"}
    for name in ("losses.py", "curriculum.py", "distill_loss.py"):
        path = ROOT / "workers" / name
        if not path.exists():
            continue
        roots = {mod.split(".")[0] for mod in imported_modules(path)}
        assert roots <= allowed_roots, f"{name} imports {sorted(roots - allowed_roots)}"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, lazy: bool) -> set[str]:
    """Modules `path` imports: with `lazy`, every import; without, only those run when it is imported
    (statements at module level, also inside a top-level `if` or `try`), not the ones inside functions."""
    tree = ast.parse(path.read_text(), filename=str(path))
    statements = list(ast.walk(tree)) if lazy else list(tree.body)
    names: set[str] = set()
    while statements:
        node = statements.pop()
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # submodules, if any
        elif not lazy and isinstance(node, (ast.If, ast.Try)):
            statements += node.body + node.orelse + getattr(node, "finalbody", [])
            statements += [s for handler in getattr(node, "handlers", []) for s in handler.body]
    return names


def orchestrator_import_graph(lazy: bool) -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in (ROOT / "orchestrator").rglob("*.py")}
    return {name: imports_of(path, lazy) & modules.keys() - {name} for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return path[path.index(node) :] + [node]
        if node in done:
            return None
        path.append(node)
        for target in sorted(graph[node]):
            if (cycle := visit(target)) is not None:
                return cycle
        path.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        if (cycle := visit(node)) is not None:
            return cycle
    return None


def test_orchestrator_has_no_module_level_import_cycle():
    graph = orchestrator_import_graph(lazy=False)
    assert graph["orchestrator.cli"] == {"orchestrator.errors"}
    assert "orchestrator.sweep.layout" in graph["orchestrator.sweep.results"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_orchestrator_has_no_import_cycle_hidden_in_functions():
    """An import moved into a function to dodge a cycle still ties the modules into one knot."""
    graph = orchestrator_import_graph(lazy=True)
    assert "orchestrator.report.write" in graph["orchestrator.train.run"]  # a lazy import is counted
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_cycle_finder_sees_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_sweep_layout_is_a_leaf():
    """Every part of the sweep names its files and metrics through sweep/layout.py; importing nothing from
    orchestrator (also lazily) keeps it from closing a cycle between them."""
    imported = imports_of(ROOT / "orchestrator" / "sweep" / "layout.py", lazy=True)
    assert not {name for name in imported if name.split(".")[0] == "orchestrator"}


def test_cli_start_up_imports_no_heavy_library():
    """The CLI imports every sub-command's module on each start (even for --help): none of them may pull
    in torch, Ray or the rest at import time, or every command would start seconds slower."""
    heavy = ("torch", "ray", "transformers", "deepspeed", "numpy", "pyarrow", "matplotlib", "tokenizers")
    code = (
        "import sys; from orchestrator.cli import build_parser; build_parser(); "
        f"print(' '.join(m for m in {heavy!r} if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == []
