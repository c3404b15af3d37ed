"""Orthanc, the real PACS of the end-to-end tests, in a private network namespace.

Orthanc 1.10 cannot bind to loopback only, so it runs inside ``unshare --net`` where the only
interface is that namespace's own ``lo``. Unix sockets are files, visible from both namespaces,
so ``socat`` relays bridge the ports: Orthanc's DICOM and HTTP ports out to 127.0.0.1 here, and
our node's port into the namespace for Orthanc's pushes. Everything stays on loopback.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.services import free_port, require

DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def _listen(port: int) -> str:
    return f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr"


class Orthanc:
    """Start with :meth:`start`, stop with :meth:`stop` (by process group); bounded waits."""

    def __init__(
        self,
        workdir: Path,
        node_port: int,
        node_ae: str = "CXR_TRIAGE",
        *,
        dicomweb: bool = False,
        config: dict[str, Any] | None = None,
        node_http_port: int | None = None,
    ) -> None:
        for tool in ("Orthanc", "socat", "unshare", "ip"):
            require(shutil.which(tool) is not None, f"{tool} is not installed")
        if dicomweb:  # without it Orthanc starts, and STOW-RS and OHIF fail only by timing out
            require(Path(DICOMWEB_PLUGIN).is_file(), "orthanc-dicomweb is not installed")
        self.dir = workdir
        self.node_port = node_port
        self.node_ae = node_ae
        self.dicomweb = dicomweb
        self.extra_config = config or {}
        #: Our node's HTTP port (STOW-RS), reached inside the namespace as 127.0.0.1:8043.
        self.node_http_port = node_http_port
        self.dicom_port = free_port()
        self.http_port = free_port()
        self._procs: list[subprocess.Popen[bytes]] = []

    @property
    def destination(self) -> str:
        return f"ORTHANC@127.0.0.1:{self.dicom_port}"

    def _sock(self, name: str) -> str:
        return str(self.dir / f"{name}.sock")

    @property
    def http_socket(self) -> Path:
        """Orthanc's HTTP port as a Unix socket: reachable from any network namespace."""
        return Path(self._sock("http"))

    def start(self, timeout: float = 60.0) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "cxr-triage-test-pacs",
            "StorageDirectory": str(self.dir / "storage"),
            "IndexDirectory": str(self.dir / "index"),
            "DicomAet": "ORTHANC",
            "DicomPort": 4242,
            "HttpPort": 8042,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [DICOMWEB_PLUGIN] if self.dicomweb else [],
            "DicomWeb": {"Enable": self.dicomweb, "Root": "/dicom-web/"},
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            # Inside the namespace our node is reached through a relay on its loopback.
            "DicomModalities": {"cxr": [self.node_ae, "127.0.0.1", 11112]},
            **self.extra_config,
        }
        (self.dir / "orthanc.json").write_text(json.dumps(config))
        inside = (
            "ip link set lo up && "
            f"socat UNIX-LISTEN:{self._sock('dicom')},fork TCP:127.0.0.1:4242 & "
            f"socat UNIX-LISTEN:{self._sock('http')},fork TCP:127.0.0.1:8042 & "
            f"socat {_listen(11112)} UNIX-CONNECT:{self._sock('node')} & "
            + (
                f"socat {_listen(8043)} UNIX-CONNECT:{self._sock('node-http')} & "
                if self.node_http_port
                else ""
            )
            + f"exec Orthanc {self.dir / 'orthanc.json'}"
        )
        env = {**os.environ, "TCP_NODELAY": "1"}
        log = open(self.dir / "orthanc.log", "ab")  # noqa: SIM115 - the child keeps it
        self._procs.append(
            subprocess.Popen(
                ["unshare", "--net", "sh", "-c", inside],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        relays = [
            f"{_listen(self.dicom_port)} UNIX-CONNECT:{self._sock('dicom')}",
            f"{_listen(self.http_port)} UNIX-CONNECT:{self._sock('http')}",
            f"UNIX-LISTEN:{self._sock('node')},fork TCP:127.0.0.1:{self.node_port}",
        ]
        if self.node_http_port:
            relays.append(
                f"UNIX-LISTEN:{self._sock('node-http')},fork TCP:127.0.0.1:{self.node_http_port}"
            )
        for relay in relays:
            self._procs.append(
                subprocess.Popen(
                    ["socat", *relay.split(" ")],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.get("/system")
                return
            except OSError as exc:
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(
                        f"Orthanc did not answer in {timeout} s; see {self.dir}"
                    ) from exc
                time.sleep(0.25)

    def in_namespace(self, command: list[str]) -> list[str]:
        """``command`` run inside Orthanc's network namespace, where it listens on 4242.

        For a sender that should reach Orthanc directly, without the relays (the benchmark).
        """
        return ["nsenter", f"--net=/proc/{self._procs[0].pid}/ns/net", *command]

    def stop(self) -> None:
        for proc in self._procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self._procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self._procs.clear()

    def _request(self, method: str, path: str, data: bytes | None = None) -> bytes:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}", data=data, method=method
        )
        with urllib.request.urlopen(req, timeout=30) as rsp:
            return bytes(rsp.read())

    def get(self, path: str) -> Any:
        return json.loads(self._request("GET", path))

    def get_bytes(self, path: str) -> bytes:
        return self._request("GET", path)

    def post(self, path: str, data: bytes) -> Any:
        return json.loads(self._request("POST", path, data))
