"""C-STORE responses encoded directly, not through pydicom.

pynetdicom turns every response primitive into a DIMSE message with a pydicom command set,
encodes that set twice (once for its group length, once to send it) and fragments it: about
0.6 ms of the association thread's time per C-STORE, an eighth of the listener's Python per
instance. A C-STORE response is seven fixed elements in Implicit VR Little Endian (PS3.7 9.3.1.2,
E.1): :func:`encode_store_response` writes exactly the bytes pynetdicom would (a test compares
the two), and :func:`answer_stores_directly` sends them as one P-DATA. A response with more than
those elements (an error comment, an offending element), one that would not fit the peer's
maximum PDU, or an association where something listens for EVT_DIMSE_SENT (pynetdicom's debug
logging) still goes through pynetdicom.
"""

from __future__ import annotations

import struct
from typing import Any

from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

_C_STORE_RSP = 0x8001
_NO_DATASET = 0x0101
#: A P-DATA-TF's bytes around one PDV: PDU header (6), PDV length (4), context ID (1),
#: message control header (1).
_PDU_OVERHEAD = 12
_LAST_COMMAND_FRAGMENT = b"\x03"


def _uid_element(element: int, uid: str) -> bytes:
    value = uid.encode("ascii")
    if len(value) % 2:
        value += b"\x00"  # UI values are padded with NUL to an even length
    return struct.pack("<HHL", 0x0000, element, len(value)) + value


def encode_store_response(
    message_id: int, sop_class_uid: str, sop_instance_uid: str, status: int
) -> bytes:
    """The command set of a C-STORE-RSP with no dataset, Implicit VR Little Endian.

    Raises
    ------
    ValueError
        If a UID is not ASCII or a number does not fit its element (pynetdicom then encodes it).
    """
    if not (0 <= message_id <= 0xFFFF and 0 <= status <= 0xFFFF):
        raise ValueError("a message ID or status outside an unsigned short")
    body = b"".join(
        (
            _uid_element(0x0002, sop_class_uid),
            struct.pack("<HHLH", 0x0000, 0x0100, 2, _C_STORE_RSP),
            struct.pack("<HHLH", 0x0000, 0x0120, 2, message_id),
            struct.pack("<HHLH", 0x0000, 0x0800, 2, _NO_DATASET),
            struct.pack("<HHLH", 0x0000, 0x0900, 2, status),
            _uid_element(0x1000, sop_instance_uid),
        )
    )
    return struct.pack("<HHLL", 0x0000, 0x0000, 4, len(body)) + body


def _plain_response(primitive: Any) -> bytes | None:
    """The encoded command set of a C-STORE response this module can send, or None."""
    if type(primitive) is not C_STORE or primitive.MessageIDBeingRespondedTo is None:
        return None
    if primitive.ErrorComment is not None or primitive.OffendingElement is not None:
        return None
    class_uid, instance_uid = primitive.AffectedSOPClassUID, primitive.AffectedSOPInstanceUID
    if class_uid is None or instance_uid is None or primitive.Status is None:
        return None
    try:
        return encode_store_response(
            int(primitive.MessageIDBeingRespondedTo),
            str(class_uid),
            str(instance_uid),
            int(primitive.Status),
        )
    except (UnicodeEncodeError, ValueError, struct.error):
        return None


def answer_stores_directly(assoc: Any) -> None:
    """Send this association's plain C-STORE responses without pynetdicom's message encoding."""
    dimse = assoc.dimse
    send_msg = dimse.send_msg

    def send(primitive: Any, context_id: int) -> None:
        encoded = _plain_response(primitive)
        max_pdu = dimse.maximum_pdu_size  # the peer's; 0 is no limit
        if (
            encoded is None
            or (max_pdu and len(encoded) + _PDU_OVERHEAD > max_pdu)
            or assoc.get_handlers(evt.EVT_DIMSE_SENT)
        ):
            send_msg(primitive, context_id)
            return
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, _LAST_COMMAND_FRAGMENT + encoded))
        dimse.dul.send_pdu(pdata)

    dimse.send_msg = send
