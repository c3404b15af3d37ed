"""A raw DICOM upper-layer peer for tests that must send what no DICOM library would.

Well-formed PDUs are built here (A-ASSOCIATE-RQ by hand, DIMSE messages with pynetdicom's
encoders) so that tests and the fuzzer can then cut, flip or replace any byte of them.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from typing import BinaryIO, cast

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu import P_DATA_TF

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
A_ASSOCIATE_AC, A_ASSOCIATE_RJ, P_DATA, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT = 2, 3, 4, 5, 6, 7

#: (presentation context ID, abstract syntax, transfer syntaxes)
Context = tuple[int, str, list[str]]
DEFAULT_CONTEXTS: list[Context] = [
    (1, VERIFICATION, [ImplicitVRLittleEndian]),
    (3, CR_IMAGE_STORAGE, [ExplicitVRLittleEndian]),
]


def pdu(pdu_type: int, payload: bytes) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, len(payload)) + payload


def _item(item_type: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(payload)) + payload


def associate_rq(
    called: str = "CXR_TRIAGE",
    calling: str = "RAW_PEER",
    contexts: list[Context] | None = None,
    max_pdu: int = 16384,
) -> bytes:
    """An A-ASSOCIATE-RQ PDU (PS3.8 9.3.2)."""
    body = struct.pack(">HH", 1, 0)
    body += called.encode().ljust(16)[:16] + calling.encode().ljust(16)[:16] + bytes(32)
    body += _item(0x10, APPLICATION_CONTEXT.encode())
    for cx_id, abstract, syntaxes in contexts or DEFAULT_CONTEXTS:
        sub = _item(0x30, abstract.encode()) + b"".join(_item(0x40, ts.encode()) for ts in syntaxes)
        body += _item(0x20, bytes([cx_id, 0, 0, 0]) + sub)
    user = _item(0x51, struct.pack(">L", max_pdu)) + _item(0x52, b"1.2.826.0.1.3680043.9.9999")
    body += _item(0x50, user)
    return pdu(0x01, body)


def pdata(*pdvs: tuple[int, int, bytes]) -> bytes:
    """A P-DATA-TF PDU of (context ID, message control header, data) PDVs."""
    items = b"".join(struct.pack(">LBB", len(d) + 2, cx, ctl) + d for cx, ctl, d in pdvs)
    return pdu(P_DATA, items)


def _encoded(message: C_ECHO_RQ | C_STORE_RQ, context_id: int, max_pdu: int) -> list[bytes]:
    return [P_DATA_TF(p).encode() for p in message.encode_msg(context_id, max_pdu)]


def echo_rq(context_id: int = 1, message_id: int = 1) -> list[bytes]:
    primitive = C_ECHO()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = VERIFICATION
    msg = C_ECHO_RQ()
    msg.primitive_to_message(primitive)
    return _encoded(msg, context_id, 16384)


def store_rq(
    ds: Dataset, context_id: int = 3, message_id: int = 1, max_pdu: int = 16384
) -> list[bytes]:
    """The P-DATA-TF PDUs of a C-STORE-RQ for ``ds`` (Explicit VR Little Endian)."""
    primitive = C_STORE()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = ds.SOPClassUID
    primitive.AffectedSOPInstanceUID = ds.SOPInstanceUID
    primitive.Priority = 0
    data = encode(ds, False, True)
    assert data is not None
    primitive.DataSet = BytesIO(data)
    msg = C_STORE_RQ()
    msg.primitive_to_message(primitive)
    return _encoded(msg, context_id, max_pdu)


def store_command(
    sop_class: str, sop_instance: str, *, data_set_type: int = 0x0000, message_id: int = 1
) -> Dataset:
    """A C-STORE-RQ command set with any values, valid or not (pynetdicom checks them)."""
    cmd = Dataset()
    cmd.CommandGroupLength = 0
    cmd.AffectedSOPClassUID = sop_class
    cmd.CommandField = 0x0001
    cmd.MessageID = message_id
    cmd.Priority = 0
    cmd.CommandDataSetType = data_set_type
    cmd.AffectedSOPInstanceUID = sop_instance
    return cmd


def command_bytes(command: Dataset) -> bytes:
    """A DIMSE command set, Implicit VR Little Endian, as a peer would put in a PDV."""
    data = encode(command, True, True)
    assert data is not None
    return data


@dataclass
class Received:
    pdu_type: int
    body: bytes


class RawPeer:
    """One TCP connection to the node, speaking bytes."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)

    def __enter__(self) -> RawPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _recv_exactly(self, n: int) -> bytes:
        chunks = []
        while n:
            chunk = self.sock.recv(min(n, 65536))
            if not chunk:
                raise ConnectionError("closed by the node")
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def receive(self, timeout: float = 10.0) -> Received:
        """The next PDU from the node; ConnectionError if it closed the connection."""
        self.sock.settimeout(timeout)
        pdu_type, _, length = struct.unpack(">BBL", self._recv_exactly(6))
        return Received(pdu_type, self._recv_exactly(length))

    def associate(self, **kwargs: object) -> Received:
        self.send(associate_rq(**kwargs))  # type: ignore[arg-type]
        return self.receive()

    def closed_by_node(self, timeout: float) -> bool:
        """True if the node closes the connection (after any PDUs it sends) within ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                if not self.sock.recv(65536):
                    return True
            except TimeoutError:
                return False
            except OSError:
                return True
        return False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def dimse_response_status(received: Received) -> int | None:
    """The Status of the DIMSE response in a P-DATA-TF (one PDV holding the whole command)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset

    if received.pdu_type != P_DATA:
        return None
    data = received.body[6:]
    fp = DicomBytesIO(data)
    fp.is_little_endian, fp.is_implicit_VR = True, True
    ds = read_dataset(cast(BinaryIO, fp), True, True)  # DicomBytesIO is one
    return int(ds.Status)


def chunks(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]
