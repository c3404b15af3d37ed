"""Dependencies point one way: worker -> dicom_node, worker -> models; nothing imports worker."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imports(package: str) -> set[str]:
    names: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", ["dicom_node", "models"])
def test_libraries_never_import_the_application(package: str) -> None:
    assert "worker" not in _imports(package)


def test_dicom_node_imports_no_tensorflow_celery_or_database() -> None:
    forbidden = {"tensorflow", "keras", "celery", "kombu", "sqlalchemy", "alembic", "models"}
    assert not (_imports("dicom_node") & forbidden)


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys; print(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return {m.split(".")[0] for m in out.stdout.split()}


def test_the_listener_process_never_loads_tensorflow() -> None:
    loaded = _modules_after(
        "import worker.cli.main, worker.node_service\n"
        "from worker.settings import Settings\n"
        "worker.node_service.listener_config(Settings())"
    )
    assert not loaded & {"tensorflow", "keras", "jax", "torch"}


def test_dicom_node_at_runtime() -> None:
    loaded = _modules_after("import dicom_node.listener, dicom_node.sender, dicom_node.synthetic")
    assert not loaded & {"tensorflow", "keras", "celery", "sqlalchemy", "worker"}


PACKAGES = ("dicom_node", "models", "worker")


def _import_graph() -> dict[str, set[str]]:
    """Module -> the project's modules it imports, at the top or inside a function alike."""
    graph: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            deps: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    deps.update(a.name for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    deps.add(node.module)
                    deps.update(f"{node.module}.{a.name}" for a in node.names)
            graph[name] = deps
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_import_graph_has_no_circles() -> None:
    """Function-level imports count: a lazy import that closes a circle is still a circle."""
    assert _cycles(_import_graph()) == []
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_database_layer_does_not_import_the_delivery_code() -> None:
    graph = _import_graph()
    assert not [m for m in graph if m.startswith("worker.db") and "worker.delivery" in graph[m]]
