"""Socket tuning shared by the listener and the sender."""

from __future__ import annotations

import logging
import socket

from pynetdicom import evt

logger = logging.getLogger(__name__)


def set_nodelay(event: evt.Event) -> None:
    """``EVT_CONN_OPEN`` handler: turn Nagle's algorithm off on the association's socket.

    pynetdicom leaves it on, which stalls each small DIMSE message about 40 ms behind the peer's
    delayed ACK.
    """
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:  # e.g. a socket already closed by the peer
        logger.debug("could not set TCP_NODELAY: %s", exc)
