"""The README's production block, run as written: PostgreSQL, Redis, the allow-list on, a
worker, and the modality's echo and send calling as an allowed AE title.

Only what must differ on a test machine is swapped, each by an exact string: the database
(a throw-away one, as the superuser creates ``cxr``), the broker (a private Redis: the shared
one is never touched), the PACS (dcmtk's storescp), the node's port (a free one), ``0.0.0.0``
(loopback only) and the sample folder (``../shared/data/dicom`` or synthetic files).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests import factories
from tests.helpers import cli_env, wait_for
from tests.services import RedisServer, StoreSCP, free_port, postgres_database, wait_port

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "worker.cli.main"]
CREATE_DB = "sudo -u postgres createuser cxr && sudo -u postgres createdb --owner cxr cxr"


def production_block() -> list[str]:
    """The lines of the ```sh block after the README's ``<!-- production`` marker."""
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- production[^>]*-->\s*```sh\n(.*?)```", text, re.S)
    assert match, "README.md has no production block"
    return [line for line in match.group(1).splitlines() if line and not line.startswith("#")]


def _command(line: str, swaps: dict[str, str]) -> tuple[dict[str, str], list[str], bool]:
    """(leading VAR=value assignments, argv, runs in the background) of one line."""
    line = _swap(line, swaps)
    background = line.endswith("&")
    words = shlex.split(line.rstrip("& "))
    env: dict[str, str] = {}
    while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    if words and words[0] == ".venv/bin/cxr-triage":
        words = [*CLI, *words[1:]]  # this test's interpreter: the same package, any venv
    return env, words, background


@pytest.mark.slow
def test_the_production_snippet_as_written(tmp_path: Path) -> None:
    lines = production_block()
    assert lines[0] == CREATE_DB  # the one line not run: the database comes from the test
    samples = tmp_path / "samples"
    shared = ROOT.parent / "shared" / "data" / "dicom"
    if (shared / "cr_pa_chest_jpeg_baseline.dcm").is_file():
        samples.mkdir()
        shutil.copy(shared / "cr_pa_chest_jpeg_baseline.dcm", samples / "pa.dcm")
    else:
        factories.write(factories.radiograph(rows=512, columns=512), samples / "pa.dcm")
    port = free_port()
    redis = RedisServer(tmp_path)
    pacs = StoreSCP(tmp_path / "pacs", ae_title="PACS")
    children: list[subprocess.Popen[bytes]] = []
    with postgres_database() as db_url:
        redis.start()
        pacs.start()
        swaps = {
            "postgresql://cxr@127.0.0.1/cxr": db_url,
            "redis://127.0.0.1:6379/0": redis.url,
            "PACS@127.0.0.1:4242": pacs.address,
            "127.0.0.1:11112": f"127.0.0.1:{port}",
            "CXR_BIND=0.0.0.0": "CXR_BIND=127.0.0.1",
            "../shared/data/dicom": str(samples),
        }
        # What a test machine needs besides: the port, a data folder, a short quiet period.
        env = cli_env(tmp_path / "data", CXR_PORT=str(port), CXR_QUIET_SECONDS="1")
        outputs: dict[str, subprocess.CompletedProcess[str]] = {}
        try:
            for n, line in enumerate(lines[1:], start=1):
                if line.startswith("export "):
                    for word in shlex.split(_swap(line, swaps))[1:]:
                        key, _, value = word.partition("=")
                        env[key] = value
                    continue
                extra, argv, background = _command(line, swaps)
                if background:
                    log = (tmp_path / f"line{n}.log").open("wb")
                    children.append(
                        subprocess.Popen(
                            argv, env={**env, **extra}, stdout=log, stderr=subprocess.STDOUT
                        )
                    )
                    if argv[-1] == "listen":
                        wait_port(
                            port, timeout=60, process=children[-1], log=tmp_path / f"line{n}.log"
                        )
                    continue
                done = subprocess.run(
                    argv, env={**env, **extra}, capture_output=True, text=True, timeout=120
                )
                assert done.returncode == 0, (line, done.stdout, done.stderr)
                outputs[argv[len(CLI)]] = done
            assert "status 0x0000" in outputs["echo"].stdout
            assert "sent 1 of 1" in outputs["send"].stdout

            # The study goes through the worker to the PACS: SC and SR, once each.
            def finished() -> dict[str, object] | None:
                done = subprocess.run(
                    [*CLI, "audit", "studies", "--json"],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                studies = [json.loads(row) for row in done.stdout.splitlines()]
                ended = ("done", "failed", "skipped")
                return next((s for s in studies if s["state"] in ended), None)

            study = wait_for(finished, timeout=240, interval=2)
            assert study["state"] == "done", study
            assert len(pacs.received()) == 2

            # Any other calling title is refused and recorded, the tools' default included.
            refused = subprocess.run(
                [*CLI, "echo", f"CXR_TRIAGE@127.0.0.1:{port}", "--timeout", "5"],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert refused.returncode == 1
            rejections = subprocess.run(
                [*CLI, "audit", "rejections", "--json"],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert '"calling_ae": "CXR_SCU"' in rejections.stdout
        finally:
            for child in children:
                child.send_signal(signal.SIGTERM)
            for child in children:
                try:
                    child.wait(30)
                except subprocess.TimeoutExpired:
                    child.kill()
            pacs.stop()
            redis.stop()


def _swap(line: str, swaps: dict[str, str]) -> str:
    for old, new in swaps.items():
        line = line.replace(old, new)
    return line
