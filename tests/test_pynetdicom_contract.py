"""The pynetdicom seam's contract (dicom_node.pynetdicom_seam.contract): what it relies on holds
in the installed pynetdicom, fails loudly in a changed one, and nothing outside the seam touches
pynetdicom's private names."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pynetdicom
import pytest

from dicom_node.pynetdicom_seam import contract

ROOT = Path(__file__).resolve().parents[1]
SEAM = ROOT / "dicom_node" / "pynetdicom_seam"
#: Tests of the seam itself may reach in, as the seam does.
SEAM_TESTS = {"test_pynetdicom_contract.py", "test_pynetdicom_seam.py"}


def test_the_installed_pynetdicom_keeps_the_contract() -> None:
    assert contract.broken() == []
    contract.check()


def _patched_copy(tmp_path: Path, edits: dict[str, list[tuple[str, str]]]) -> Path:
    """A copy of the installed pynetdicom with ``edits`` (file -> [(old, new)]) applied."""
    copy = tmp_path / "site" / "pynetdicom"
    shutil.copytree(Path(pynetdicom.__file__).parent, copy, ignore=shutil.ignore_patterns("tests"))
    for name, changes in edits.items():
        path = copy / name
        text = path.read_text()
        for old, new in changes:
            assert old in text, (name, old)
            text = text.replace(old, new)
        path.write_text(text)
    return copy.parent


def _broken_under(site: Path) -> list[str]:
    code = (
        "import json, pynetdicom\n"
        "from dicom_node.pynetdicom_seam import contract\n"
        f"assert pynetdicom.__file__.startswith({str(site)!r})\n"
        "print(json.dumps(contract.broken()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": f"{site}:{ROOT}", "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    problems: list[str] = json.loads(out.stdout.strip().splitlines()[-1])
    return problems


def test_a_changed_pynetdicom_fails_the_contract(tmp_path: Path) -> None:
    """A private renamed, a parameter renamed and a line of the reactor changed: each is named."""
    site = _patched_copy(
        tmp_path,
        {
            "dul.py": [
                ("self._recv_pdu", "self._received_pdus"),
                ("def _decode_pdu(self, bytestream", "def _decode_pdu(self, data"),
                ("time.sleep(self._run_loop_delay)", "self._idle.wait(self._run_loop_delay)"),
            ],
            "ae.py": [("self._servers", "self._server_list")],
        },
    )
    problems = _broken_under(site)
    text = "\n".join(problems)
    assert "DULServiceProvider._recv_pdu is gone" in text
    assert "_read_pdu_data no longer has 'self._recv_pdu.put(pdu)'" in text
    assert "DULServiceProvider._decode_pdu now takes ('data',)" in text
    assert "no longer has 'time.sleep(self._run_loop_delay)'" in text
    assert "ApplicationEntity._servers is gone" in text
    assert len(problems) == 5, problems


def test_the_listener_refuses_to_start_on_a_changed_pynetdicom(tmp_path: Path) -> None:
    site = _patched_copy(tmp_path, {"dimse_messages.py": [("_data_set_file", "_dataset_fh")]})
    code = (
        "from pathlib import Path\n"
        "from dicom_node.pynetdicom_seam import io_switches\n"
        "from dicom_node.listener import Listener, ListenerConfig\n"
        "from dicom_node.spool import Spool\n"
        f"spool = Spool(Path({str(tmp_path / 'spool')!r}))\n"
        "io_switches.configure(spool.incoming)\n"
        "Listener(ListenerConfig(port=0), spool, None).start()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": f"{site}:{ROOT}", "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert out.returncode != 0
    assert "ContractBroken" in out.stderr
    assert "DIMSEMessage._data_set_file is gone" in out.stderr


def _their_private_names() -> set[str]:
    """Every private name pynetdicom defines: modules, functions, classes, attributes."""
    names = set()
    for path in Path(pynetdicom.__file__).parent.rglob("*.py"):
        if "tests" in path.parts:
            continue
        if path.stem.startswith("_") and not path.stem.startswith("__"):
            names.add(path.stem)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def _reached(path: Path, names: set[str]) -> set[str]:
    """Names of ``names`` that ``path`` reaches on another object (not ``self``), imports from
    pynetdicom, or spells as a string (``getattr``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr in names:
            if not (isinstance(node.value, ast.Name) and node.value.id in {"self", "cls"}):
                found.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value in names:
                found.add(node.value)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pynetdicom"):
            parts = (node.module or "").split(".") + [a.name for a in node.names]
            found.update(p for p in parts if p.startswith("_"))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("pynetdicom."):
                    found.update(p for p in alias.name.split(".") if p.startswith("_"))
    return found


def test_every_private_name_the_seam_reaches_is_in_the_contract() -> None:
    theirs = _their_private_names()
    pinned = {r.name for r in contract.RELIANCES} | {
        r.where.split(".")[-1] for r in contract.RELIANCES
    }
    unpinned = {
        str(path.relative_to(ROOT)): sorted(_reached(path, theirs) - pinned)
        for path in SEAM.glob("*.py")
    }
    assert {k: v for k, v in unpinned.items() if v} == {}


def _project_files() -> list[Path]:
    files = []
    for package in ("dicom_node", "worker", "models", "bench", "tests"):
        for path in (ROOT / package).rglob("*.py"):
            if SEAM in path.parents or path.name in SEAM_TESTS:
                continue
            files.append(path)
    return files


def test_nothing_outside_the_seam_reaches_a_private_pynetdicom_name() -> None:
    """The done-when's grep, by syntax: pynetdicom's private names the contract pins (and
    imports of its private modules) appear only in the seam and its own tests."""
    private = {r.name for r in contract.RELIANCES if r.name.startswith("_")} | {
        r.where.split(".")[-1] for r in contract.RELIANCES if "._" in r.where
    }
    reached = {
        str(path.relative_to(ROOT)): sorted(_reached(path, private | {"_config", "_handlers"}))
        for path in _project_files()
    }
    assert {k: v for k, v in reached.items() if v} == {}


@pytest.mark.parametrize("text", ["x._read_pdu_data()", "getattr(m, '_data_set_file')"])
def test_the_check_sees_a_private_name(tmp_path: Path, text: str) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(f"{text}\nfrom pynetdicom import _config\n")
    assert len(_reached(probe, {"_read_pdu_data", "_data_set_file"})) == 2
    assert re.search(r"_config", str(_reached(probe, set())))
