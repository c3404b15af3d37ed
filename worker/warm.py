"""Which worker processes have loaded the model and run their warm-up, for readiness checks.

Each prefork child of ``cxr-triage work`` warms up before it takes tasks (see
:mod:`worker.tasks`) and then leaves a mark: a file named by its PID in a folder named by its
parent's PID, under ``CXR_DATA_DIR/run/``. The parent, which never loads TensorFlow, counts the
marks of children still alive; ``cxr-triage run`` reads the same folder from outside.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from worker.pids import pid_alive
from worker.settings import Settings


class WarmMarks:
    """The marks of one ``cxr-triage work`` process's children."""

    def __init__(self, settings: Settings, worker_pid: int) -> None:
        self.folder = settings.storage.data_dir / "run" / f"worker-{worker_pid}"

    def reset(self) -> None:
        """Start with no marks (the worker's main process, before it forks its children)."""
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        # Marks of workers that are gone would otherwise pile up.
        for old in self.folder.parent.glob("worker-*"):
            pid = old.name.removeprefix("worker-")
            if pid.isdigit() and not pid_alive(int(pid)):
                shutil.rmtree(old, ignore_errors=True)

    def mark(self, pid: int, seconds: float) -> None:
        """Child ``pid`` is warm (it took ``seconds``)."""
        self._write(f"{pid}.warm", f"{seconds:.3f}\n")

    def failed(self, pid: int, reason: str) -> None:
        """Child ``pid`` could not load or run the model."""
        self._write(f"{pid}.failed", reason[:500] + "\n")

    def _write(self, name: str, text: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(self.folder / name)

    def _live(self, suffix: str) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return [
            p for p in self.folder.glob(f"*{suffix}") if p.stem.isdigit() and pid_alive(int(p.stem))
        ]

    def check(self, expected: int) -> str:
        """``ok`` once ``expected`` live children are warm; otherwise what is missing."""
        failures = self._live(".failed")
        if failures:
            with contextlib.suppress(OSError):
                return f"model failed in worker process {failures[0].stem}: " + (
                    failures[0].read_text().strip()
                )
        warm = len(self._live(".warm"))
        if warm >= expected:
            return "ok"
        return f"{warm} of {expected} worker processes warm (loading the model)"
