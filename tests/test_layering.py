"""workers/ and search_spaces/ never import orchestrator/; the loss modules import only torch; orchestrator/
imports no module that imports it back."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


# The loss code: workers/distill_loss.py composes the others; a missing one is a failure, not a skip.
LOSS_MODULES = ("workers.losses", "workers.distill_loss", "workers.curriculum", "workers.loss_config")
# Imported at every CLI start and pickled into every Ray worker and Tune trial: no torch either.
PURE_PYTHON_MODULES = ("workers.curriculum", "workers.loss_config")


def module_path(name: str) -> Path:
    """`workers.losses` -> ROOT/workers/losses.py (or the package's __init__.py)."""
    base = ROOT.joinpath(*name.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, anywhere in the file (also inside functions), parsed with ast:
    `import a.b`, `from a import b` (a and a.b: b may be a submodule), relative imports resolved
    against the file's package, and `importlib.import_module("a.b")` / `__import__("a")` with a
    literal name."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            if module:
                names.add(module)
            prefix = f"{module}." if module else ""
            names.update(prefix + alias.name for alias in node.names if alias.name != "*")
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Name) and node.func.id == "__import__")
                or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            )
        ):
            names.add(node.args[0].value)
    return names


def third_party_imports(entry: str) -> dict[str, set[str]]:
    """Top-level packages outside the standard library that `entry` reaches, following its imports of
    workers modules transitively: {package: the workers modules importing it}."""
    seen, todo, found = set(), [entry], {}
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_path(name)
        assert path.exists(), f"{name} ({path.relative_to(ROOT)}) is missing"
        for imported in imported_modules(path):
            root = imported.split(".")[0]
            if root == "workers":
                # `from workers.x import y`: y is a name in workers.x unless a module file of that name exists.
                if module_path(imported).exists() or imported.count(".") == 1:
                    todo.append(imported)
            elif root not in sys.stdlib_module_names:
                found.setdefault(root, set()).add(name)
    return found


def test_workers_and_search_spaces_never_import_orchestrator():
    offenders, files = [], 0
    for package in ("workers", "search_spaces"):
        paths = sorted((ROOT / package).rglob("*.py"))
        assert (ROOT / package / "__init__.py") in paths, f"{package}/ is missing"
        files += len(paths)
        for path in paths:
            for name in imported_modules(path):
                if name == "orchestrator" or name.startswith("orchestrator."):
                    offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert offenders == []
    assert files > 10  # both packages were really read


@pytest.mark.parametrize("entry", LOSS_MODULES)
def test_loss_modules_import_only_torch(entry):
    """A loss module, and every workers module it imports (transitively, also lazily), imports nothing
    but torch and the standard library: no transformers, DeepSpeed, Ray or orchestrator code."""
    reached = third_party_imports(entry)
    assert set(reached) <= {"torch"}, {pkg: sorted(mods) for pkg, mods in reached.items() if pkg != "torch"}


@pytest.mark.parametrize("entry", PURE_PYTHON_MODULES)
def test_pure_python_modules_import_no_torch(entry):
    assert third_party_imports(entry) == {}


def test_the_rules_catch_a_violation(tmp_path, monkeypatch):
    """The import parser sees each way of importing a forbidden package, and the loss rule follows a
    workers module the loss code imports into its own imports."""
    sample = tmp_path / "workers" / "sample.py"
    sample.parent.mkdir()
    sample.write_text(
        "import importlib\n"
        "from . import helper\n"
        "from .. import orchestrator\n"
        "def lazy():\n"
        "    import deepspeed.comm\n"
        "    from transformers import AutoModel\n"
        "    return importlib.import_module('ray.train'), __import__('orchestrator.cli')\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert imported_modules(sample) >= {
        "workers.helper",
        "orchestrator",
        "deepspeed.comm",
        "transformers",
        "ray.train",
        "orchestrator.cli",
    }
    (tmp_path / "workers" / "helper.py").write_text("import math\nimport torch\n")
    (tmp_path / "workers" / "loss.py").write_text(
        "from workers import helper\nfrom workers.sample import lazy\n"
    )
    assert third_party_imports("workers.loss") == {
        "torch": {"workers.helper"},
        "deepspeed": {"workers.sample"},
        "transformers": {"workers.sample"},
        "ray": {"workers.sample"},
        "orchestrator": {"workers.sample"},
    }
    with pytest.raises(AssertionError, match="workers.gone"):
        third_party_imports("workers.gone")


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
