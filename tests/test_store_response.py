"""C-STORE responses encoded without pydicom (dicom_node.pynetdicom_seam.store_response): the
same bytes as pynetdicom's encoder, pynetdicom's path for anything else, and a real node
answering with them."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode

from dicom_node.pynetdicom_seam import store_response
from dicom_node.pynetdicom_seam.store_response import _plain_response, encode_store_response
from dicom_node.statuses import CANNOT_UNDERSTAND, SUCCESS
from tests import factories
from tests.rawdicom import A_ASSOCIATE_AC, P_DATA, RawPeer, store_rq

DX = "1.2.840.10008.5.1.4.1.1.1.1"  # 28 characters: even
CR = "1.2.840.10008.5.1.4.1.1.1"  # 25: padded


def _response(message_id: int, class_uid: str, instance_uid: str, status: int) -> C_STORE:
    rsp = C_STORE()
    rsp.MessageID = message_id
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = class_uid
    rsp.AffectedSOPInstanceUID = instance_uid
    rsp.Status = status
    return rsp


def _pynetdicom_encoding(rsp: C_STORE) -> bytes:
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    encoded = encode(message.command_set, True, True)
    assert encoded is not None
    return bytes(encoded)


@pytest.mark.parametrize(
    ("message_id", "class_uid", "instance_uid", "status"),
    [
        (1, DX, "1.2.3.4", SUCCESS),
        (65535, CR, "1.2.826.0.1.3680043.8.498.12345678901234567890123456789012345678", 0xA700),
        (300, CR, "2.25.1", 0xC000),
        (7, DX, "1.2", 0xB000),
    ],
)
def test_the_bytes_are_those_pynetdicom_encodes(
    message_id: int, class_uid: str, instance_uid: str, status: int
) -> None:
    rsp = _response(message_id, class_uid, instance_uid, status)
    ours = encode_store_response(message_id, class_uid, instance_uid, status)
    assert ours == _pynetdicom_encoding(rsp)
    assert _plain_response(rsp) == ours


def test_responses_with_more_than_the_fixed_elements_go_through_pynetdicom() -> None:
    with_comment = _response(1, DX, "1.2.3", CANNOT_UNDERSTAND)
    with_comment.ErrorComment = "bad"  # type: ignore[assignment]  # pynetdicom types it None
    with_element = _response(1, DX, "1.2.3", CANNOT_UNDERSTAND)
    with_element.OffendingElement = [0x00100010]  # type: ignore[assignment]  # as above
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = DX
    request.AffectedSOPInstanceUID = "1.2.3"
    no_instance = _response(1, DX, "1.2.3", SUCCESS)
    no_instance.AffectedSOPInstanceUID = None
    for primitive in (with_comment, with_element, request, no_instance):
        assert _plain_response(primitive) is None
    with pytest.raises(ValueError):
        encode_store_response(70000, DX, "1.2.3", SUCCESS)


def _command_set(peer: RawPeer) -> tuple[bytes, int]:
    """The next DIMSE command from the node, its fragments joined, and how many PDUs it took."""
    data = b""
    for pdus in range(1, 1001):  # bounded: a 100-byte command in 64-byte PDUs is a few
        received = peer.receive()
        assert received.pdu_type == P_DATA
        at = 0
        while at < len(received.body):
            length, _context, control = struct.unpack_from(">LBB", received.body, at)
            assert control & 0x01, "a command fragment"
            data += received.body[at + 6 : at + 4 + length]
            at += 4 + length
            if control & 0x02:
                return data, pdus
    raise AssertionError("no last command fragment")


def _decoded(data: bytes) -> Dataset:
    fp = DicomBytesIO(data)
    fp.is_little_endian, fp.is_implicit_VR = True, True
    return read_dataset(fp, True, True)  # type: ignore[arg-type]


@pytest.mark.parametrize("max_pdu", [16384, 64])
def test_a_node_answers_with_the_encoded_response(
    start_node: Any, max_pdu: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoded: list[bytes | None] = []

    def counted(primitive: Any) -> bytes | None:
        encoded.append(_plain_response(primitive))
        return encoded[-1]

    monkeypatch.setattr(store_response, "_plain_response", counted)
    node = start_node()
    ds = factories.radiograph(rows=64, columns=64)
    with RawPeer(node.listener.port) as peer:
        assert peer.associate(max_pdu=max_pdu).pdu_type == A_ASSOCIATE_AC
        for data in store_rq(ds, message_id=9):
            peer.send(data)
        command, pdus = _command_set(peer)
    expected = encode_store_response(9, ds.SOPClassUID, ds.SOPInstanceUID, SUCCESS)
    # In one PDU when it fits; in fragments, by pynetdicom, when the peer takes only 64 bytes.
    assert (pdus == 1) == (max_pdu == 16384)
    assert command == expected
    assert encoded == [expected]  # the node's response went through this module
    response = _decoded(command)
    assert (response.Status, response.MessageIDBeingRespondedTo) == (SUCCESS, 9)
