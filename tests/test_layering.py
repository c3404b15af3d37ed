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
