"""An HL7 v2 receiver over MLLP on a free loopback port, for the tests: it keeps every message
and answers each as told (AA, AE, AR, a malformed ACK, nothing at all, or a closed socket)."""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field

START, END = b"\x0b", b"\x1c\x0d"


@dataclass
class MllpPeer:
    """``answer``: "AA", "AE", "AR", "garbage", "hang" or "close"; changeable between sends."""

    answer: str = "AA"
    received: list[str] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"hl7+mllp://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(10)
                data = b""
                try:
                    while not data.endswith(END) and len(data) < 1 << 22:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                except OSError:
                    continue
                message = data.removeprefix(START).removesuffix(END).decode("utf-8")
                self.received.append(message)
                if self.answer == "hang":
                    self._stop.wait(30)  # bounded: the sender's timeout is shorter
                    continue
                if self.answer == "close":
                    continue
                conn.sendall(START + self._ack(message).encode() + END)

    def _ack(self, message: str) -> str:
        if self.answer == "garbage":
            return "this is not HL7"
        msh = message.split("\r")[0].split("|")
        control = msh[9] if len(msh) > 9 else ""
        text = {"AE": "|patient unknown", "AR": "|not accepted here"}.get(self.answer, "")
        return (
            f"MSH|^~\\&|RIS|HOSPITAL|{msh[2]}|{msh[3]}|20261205000000||ACK^R01^ACK|A{control}|P|2.5.1"
            f"\rMSA|{self.answer}|{control}{text}"
        )

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._sock.close()
