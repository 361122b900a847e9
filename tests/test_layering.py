"""workers/ and search_spaces/ never import orchestrator/; the loss modules import only torch."""

import ast
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
