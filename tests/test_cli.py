"""The cxr-triage command line, run as a real process on the embedded default."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests import factories
from tests.helpers import cli_env, rows, wait_for
from tests.services import free_port, wait_port

CLI = [sys.executable, "-m", "worker.cli.main"]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return cli_env(tmp_path / "data", **extra)


def _run(
    args: list[str], env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args", [[], ["listen"], ["echo"], ["send"], ["db"], ["db", "upgrade"]])
def test_help_at_every_level(args: list[str], tmp_path: Path) -> None:
    proc = _run([*args, "--help"], _env(tmp_path))
    assert proc.returncode == 0
    assert "usage: cxr-triage" in proc.stdout and len(proc.stdout) > 150


def test_invalid_configuration_is_explained(tmp_path: Path) -> None:
    proc = _run(["db", "current"], _env(tmp_path, CXR_PORT="eleven"))
    assert proc.returncode == 2
    # One line, naming the setting as the user set it, without pydantic's text.
    assert proc.stderr.strip().splitlines() == [
        "cxr-triage: invalid configuration: CXR_PORT: input should be a valid integer "
        "(got 'eleven')"
    ]
    proc = _run(["db", "current"], _env(tmp_path, CXR_DESTINATIONS="PACS@nowhere"))
    assert proc.returncode == 2 and "AET@host:port" in proc.stderr
    proc = _run(["--config", str(tmp_path / "missing.toml"), "db", "current"], _env(tmp_path))
    assert proc.returncode == 2 and "not found" in proc.stderr


def test_db_upgrade_on_the_embedded_default(tmp_path: Path) -> None:
    proc = _run(["db", "upgrade"], _env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    from worker.db.migrate import head_revision

    head = head_revision()
    assert head is not None and f"database at {head}" in proc.stdout
    assert (tmp_path / "data" / "cxr-triage.sqlite").is_file()
    assert f"current: {head}" in _run(["db", "current"], _env(tmp_path)).stdout


def test_listen_echo_send_on_the_embedded_default(tmp_path: Path) -> None:
    """No database or broker configured: SQLite and the embedded broker, no server needed."""
    port = free_port()
    cfg = tmp_path / "node.toml"
    cfg.write_text(
        f'ae_title = "TOML_NODE"\nport = {port}\nquiet_seconds = 0.5\nmonitor_interval = 0.2\n'
    )
    env = _env(tmp_path)
    log = (tmp_path / "listen.log").open("w")
    proc = subprocess.Popen(
        [*CLI, "--config", str(cfg), "listen"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait_port(port, timeout=30, process=proc, log=tmp_path / "listen.log")
        echo = _run(["echo", f"TOML_NODE@127.0.0.1:{port}"], env)
        assert echo.returncode == 0 and "status 0x0000" in echo.stdout

        folder = tmp_path / "study"
        uid = "1.2.826.0.1.3680043.8.498.4004"
        for i in range(3):
            factories.write(factories.radiograph(study_uid=uid, seed=i), folder / f"{i}.dcm")
        (folder / "notes.txt").write_text("not dicom")
        sent = _run(["send", str(folder), "--to", f"TOML_NODE@127.0.0.1:{port}"], env)
        assert sent.returncode == 1  # one file was not DICOM
        assert "sent 3 of 4 file(s)" in sent.stdout and "0x0000: 3" in sent.stdout
        assert "not a DICOM file" in sent.stderr

        # The study is queued into the embedded broker (a SQLite file).
        def queued() -> int:
            with sqlite3.connect(tmp_path / "data" / "broker.sqlite") as db:
                try:
                    return int(db.execute("select count(*) from kombu_message").fetchone()[0])
                except sqlite3.OperationalError:
                    return 0

        def state() -> str:
            with sqlite3.connect(tmp_path / "data" / "cxr-triage.sqlite") as db:
                row = db.execute("select state from studies where study_instance_uid=?", (uid,))
                return str(row.fetchone()[0])

        # The broker has the message a moment before the database says "queued".
        wait_for(lambda: state() == "queued", timeout=30)
        assert queued() == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        log.close()


def test_send_and_echo_failures(tmp_path: Path) -> None:
    env = _env(tmp_path)
    closed = free_port()
    proc = _run(["echo", f"NOBODY@127.0.0.1:{closed}", "--timeout", "2"], env)
    assert proc.returncode == 1 and "FAILED" in proc.stderr
    assert "could not connect" in proc.stderr and "aborted" not in proc.stderr
    assert "Traceback" not in proc.stderr
    # A name the resolver refuses at once (no packet leaves this host).
    proc = _run(["echo", "NOBODY@" + "x" * 64 + ".invalid:104", "--timeout", "2"], env)
    assert proc.returncode == 1 and "could not connect" in proc.stderr
    assert "Traceback" not in proc.stderr
    f = factories.write(factories.radiograph(), tmp_path / "x.dcm")
    proc = _run(["send", str(f), "--to", f"NOBODY@127.0.0.1:{closed}", "--quiet"], env)
    assert proc.returncode == 1 and "sent 0 of 1" in proc.stdout
    proc = _run(["send", str(tmp_path / "nope"), "--to", f"X@127.0.0.1:{closed}"], env)
    assert proc.returncode == 2 and "no such file" in proc.stderr
    proc = _run(["send", str(f), "--to", "not-an-address"], env)
    assert proc.returncode == 2 and "AET@host:port" in proc.stderr


def test_listen_reports_a_busy_port(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = _run(["listen", "--port", str(port)], _env(tmp_path), timeout=30)
    assert proc.returncode == 1 and "cannot listen" in proc.stderr


@pytest.mark.slow
def test_listen_with_several_processes_shares_the_port(tmp_path: Path) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    port = free_port()
    env = _env(tmp_path, CXR_PORT=str(port), CXR_QUIET_SECONDS="0.5", CXR_MONITOR_INTERVAL="0.2")
    log_path = tmp_path / "listen.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        [*CLI, "listen", "--processes", "3"], env=env, stdout=log, stderr=subprocess.STDOUT
    )

    def nodes() -> list[str]:
        with sqlite3.connect(tmp_path / "data" / "cxr-triage.sqlite") as db:
            return [r[0] for r in db.execute("select node from associations order by id")]

    try:
        # Every child started (it logs its database etc. once Node.start has returned).
        wait_for(lambda: log_path.read_text().count(", spool ") == 3, timeout=60)
        # Three associations open at once: each goes to a process that holds none yet.
        ae = AE(ae_title="BALANCE")
        ae.add_requested_context(Verification)
        held = []
        for _ in range(3):
            assoc = ae.associate("127.0.0.1", port, ae_title="CXR_TRIAGE")
            assert assoc.is_established
            held.append(assoc)
        wait_for(lambda: len(nodes()) == 3, timeout=10)
        assert len(set(nodes())) == 3, nodes()
        for assoc in held:
            assoc.release()

        folder = tmp_path / "many"
        for i in range(12):
            factories.write(factories.radiograph(seed=i), folder / f"{i}.dcm")
        for f in sorted(folder.iterdir()):
            sent = _run(["send", str(f), "--to", f"CXR_TRIAGE@127.0.0.1:{port}", "--quiet"], env)
            assert sent.returncode == 0, sent.stderr
        with sqlite3.connect(tmp_path / "data" / "cxr-triage.sqlite") as db:
            assert db.execute("select count(*) from instances").fetchone()[0] == 12
        wait_for(lambda: _all_queued(tmp_path), timeout=30)
        # One process of the group completed and queued them all: the others run no monitor.
        assert log_path.read_text().count("study monitor off") == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        log.close()


@pytest.mark.slow
def test_a_listener_process_that_dies_or_hangs_is_replaced_while_the_others_carry_on(
    tmp_path: Path,
) -> None:
    import os

    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    port = free_port()
    env = _env(tmp_path, CXR_PORT=str(port))
    log_path = tmp_path / "listen.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        [*CLI, "listen", "--processes", "2", "--hang-after", "3"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def children() -> set[int]:
        listed = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        return {int(pid) for pid in listed}

    def serving() -> int:
        return log_path.read_text().count(", spool ")

    def nodes() -> list[str]:
        with sqlite3.connect(tmp_path / "data" / "cxr-triage.sqlite") as db:
            return [r[0] for r in db.execute("select node from associations order by id")]

    try:
        wait_for(lambda: serving() == 2, timeout=60)
        ae = AE(ae_title="HOLDER")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", port, ae_title="CXR_TRIAGE")
        assert assoc.is_established
        holder = int(wait_for(nodes, timeout=10)[-1].rsplit(":", 1)[1])
        (other,) = children() - {holder}
        os.kill(other, signal.SIGKILL)  # dies
        wait_for(lambda: other not in children() and len(children()) == 2, timeout=15)
        wait_for(lambda: serving() == 3, timeout=60)
        assert assoc.send_c_echo().Status == 0  # the holder's association carried on
        (replacement,) = children() - {holder}
        os.kill(replacement, signal.SIGSTOP)  # hangs: its accept loop stops renewing
        wait_for(lambda: replacement not in children() and len(children()) == 2, timeout=30)
        assert assoc.send_c_echo().Status == 0
        assoc.release()
        text = log_path.read_text()
        assert "restarting it in 1 s (the others carry on)" in text
        assert "has not answered for" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        log.close()


def _all_queued(tmp_path: Path) -> bool:
    with sqlite3.connect(tmp_path / "data" / "cxr-triage.sqlite") as db:
        states = {r[0] for r in db.execute("select state from studies")}
    return states == {"queued"}


@pytest.mark.slow
def test_a_worker_that_stops_on_an_unrecoverable_error_exits_non_zero(tmp_path: Path) -> None:
    """Celery's worker_main drops the status; systemd and Docker restart only on failure."""
    data = tmp_path / "data"
    data.mkdir()
    # An embedded broker whose queue table refuses the inference queue: the consumer cannot
    # declare it, and Celery stops the worker as unrecoverable.
    with sqlite3.connect(data / "broker.sqlite") as db:
        db.execute(
            "CREATE TABLE kombu_queue (id INTEGER PRIMARY KEY, name VARCHAR(200) UNIQUE "
            "CHECK (name != 'inference'))"
        )
    proc = _run(["work", "--concurrency", "1"], _env(tmp_path), timeout=240)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Unrecoverable error" in proc.stderr and "CHECK constraint failed" in proc.stderr


def test_commands_that_read_a_database_never_create_one(tmp_path: Path) -> None:
    """Pointed at the wrong folder, replay, audit and api say so; none leaves a database."""
    missing = tmp_path / "nonexistent"
    env = _env(tmp_path, CXR_API_TOKEN="t")
    for args in (["replay", "--list"], ["replay"], ["audit", "studies"], ["api"]):
        proc = _run([*args, "--data-dir", str(missing)], env)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert proc.stderr.strip().splitlines() == [
            f"cxr-triage: no database at {missing}/cxr-triage.sqlite: point --data-dir or "
            "CXR_DATA_DIR (or CXR_DATABASE_URL) at the node's"
        ]
        assert not missing.exists()


def test_predict_checks_its_inputs_before_loading_the_model(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not an image")
    proc = _run(
        ["predict", str(tmp_path / "empty"), str(tmp_path / "notes.txt"), str(tmp_path / "no")],
        _env(tmp_path),
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"cxr-triage predict: {tmp_path / 'empty'}: no DICOM, PNG or JPEG files in this folder",
        f"cxr-triage predict: {tmp_path / 'notes.txt'}: not a DICOM, PNG or JPEG image",
        f"cxr-triage predict: {tmp_path / 'no'}: no such file",
        "cxr-triage predict: nothing to classify",
    ]


def test_echo_and_send_call_as_their_own_title(start_node, tmp_path: Path) -> None:
    """With the allow-list on, the tools call as --aet; by default they are CXR_SCU, never the
    node's own title, so a node does not appear to call itself."""
    from worker.db.models import Association, Rejection

    node = start_node(allowed_calling_aets=["CR_ROOM1"])
    peer = f"CXR_TRIAGE@127.0.0.1:{node.listener.port}"
    env = _env(tmp_path)
    refused = _run(["echo", peer, "--timeout", "5"], env)
    assert refused.returncode == 1 and "FAILED" in refused.stderr
    assert "pynetdicom" not in refused.stderr  # our words, not the library's log lines
    assert _run(["echo", peer, "--aet", "CR_ROOM1"], env).returncode == 0
    f = factories.write(factories.radiograph(), tmp_path / "x.dcm")
    sent = _run(["send", str(f), "--to", peer, "--aet", "CR_ROOM1", "--quiet"], env)
    assert sent.returncode == 0 and "sent 1 of 1" in sent.stdout
    (rejected,) = rows(node.engine, Rejection)
    assert rejected.calling_ae == "CXR_SCU"
    assert {a.calling_ae for a in rows(node.engine, Association)} == {"CR_ROOM1"}
