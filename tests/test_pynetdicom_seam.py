"""What the seam's patches do to pynetdicom (dicom_node.pynetdicom_seam), against a real node
on 127.0.0.1. The only tests, with tests/test_pynetdicom_contract.py, that touch pynetdicom's
private names."""

from __future__ import annotations

import time
from typing import Any

import pytest
from pynetdicom.dimse_messages import C_ECHO_RQ, C_ECHO_RSP
from pynetdicom.dimse_primitives import C_ECHO
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_node import sender
from dicom_node.sender import SenderOptions
from tests.helpers import dest


def _arrive(assoc: Any, message: Any, **fields: Any) -> Any:
    """Hand the association's DIMSE layer ``message`` as the DUL thread does with what the peer
    sent (encoded into P-DATA, then decoded); return the primitive it queued."""
    primitive = C_ECHO()
    for name, value in fields.items():
        setattr(primitive, name, value)
    message.primitive_to_message(primitive)
    for pdata in message.encode_msg(1, 16384):
        assoc.dimse.receive_primitive(pdata)
    return assoc.dimse.msg_queue.queue[-1][1]


def test_the_reactor_leaves_a_response_to_the_thread_that_waits_for_it(start_node: Any) -> None:
    """pynetdicom's requestor race: its reactor thread, paused a moment too late, looks for a
    message without blocking and takes the response ``send_c_store`` waits for ("Received
    unexpected C-STORE service message"); the send then waits the whole DIMSE timeout. Here a
    response decoded by the association's DIMSE layer (the primitive the reactor would see)
    stays queued through the reactor's looks (every millisecond) and goes to the blocking get,
    while a request is still the reactor's to take."""
    node = start_node()
    options = SenderOptions(calling_ae="TEST_SCU", dimse_timeout=5, acse_timeout=10)
    ae = sender.requestor(options)
    ae.add_requested_context(Verification)
    assoc = sender.associate(ae, dest(node), options)
    try:
        response = _arrive(
            assoc,
            C_ECHO_RSP(),
            MessageIDBeingRespondedTo=1,
            AffectedSOPClassUID=Verification,
            Status=0x0000,
        )
        assert assoc.dimse.get_msg(block=False) == (None, None)  # the reactor's look
        time.sleep(0.2)  # and about 200 of its own turns
        assert assoc.dimse.get_msg(block=True) == (1, response)

        assoc._reactor_checkpoint.clear()  # pause the reactor, as pynetdicom's sends do
        while not assoc._is_paused:
            time.sleep(0.001)
        request = _arrive(assoc, C_ECHO_RQ(), MessageID=7, AffectedSOPClassUID=Verification)
        assert assoc.dimse.get_msg(block=False) == (1, request)
        assoc._reactor_checkpoint.set()
    finally:
        assoc.release()


def test_the_listener_sets_no_process_wide_switch(make_settings, monkeypatch) -> None:
    """pynetdicom's switches are the entry point's (cxr-triage listen), not the library's."""
    import tempfile

    from pynetdicom import _config

    from worker.node_service import build_node

    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", False)
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", False)
    monkeypatch.setattr(tempfile, "tempdir", None)
    node = build_node(make_settings())
    try:
        with pytest.raises(RuntimeError, match="entry point"):
            node.listener.start()
        sends_as_files = _config.STORE_SEND_CHUNKED_DATASET
    finally:
        node.engine.dispose()
    assert not _config.STORE_RECV_CHUNKED_DATASET and tempfile.tempdir is None
    assert not sends_as_files


@pytest.mark.parametrize("level", ["WARNING", "DEBUG"])
def test_pynetdicom_logging_handlers_run_only_when_heard(start_node, level) -> None:
    import logging

    from pynetdicom import AE, evt
    from pynetdicom._handlers import standard_dimse_recv_handler
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    node = start_node()
    library = logging.getLogger("pynetdicom")
    saved = library.level
    library.setLevel(level)
    try:
        ae = AE(ae_title="TEST_SCU")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", node.listener.port, ae_title="CXR_TRIAGE")
        assert assoc.is_established
        (served,) = node.listener._live.values()
        bound = [h[0] for h in served.get_handlers(evt.EVT_DIMSE_RECV)]
        assert (standard_dimse_recv_handler in bound) == (level == "DEBUG")
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
    finally:
        library.setLevel(saved)
