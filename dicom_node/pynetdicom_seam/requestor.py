"""The requestor side's patch: a response stays with the thread that waits for it.

Upstream would need the reactor to leave responses on the queue while a send is in progress
(or to pause before it looks, not after): see docs/upstream.md.
"""

from __future__ import annotations

from typing import Any

from pynetdicom.association import Association


def _responds(primitive: object) -> bool:
    return getattr(primitive, "MessageIDBeingRespondedTo", None) is not None


def leave_responses_to_the_sender(assoc: Association) -> None:
    """Keep the requestor's reactor thread from taking a response that a send waits for.

    pynetdicom pauses the reactor before each ``send_c_store``, but the pause can come a moment
    late: the reactor has just passed its checkpoint (its ``_is_paused`` still True) and then
    takes the next message without blocking. On a fast peer the response is there by then; the
    reactor drops it ("Received unexpected C-STORE service message") and the send waits the
    whole DIMSE timeout (seen once: 60 s, then the object sent again). The reactor serves
    requests only, so its look leaves responses on the queue for the thread that waits.
    """
    dimse = assoc.dimse
    messages = dimse.msg_queue
    get_msg = dimse.get_msg

    def get_message(block: bool = False) -> Any:
        if block:  # the sending thread, waiting for its response
            return get_msg(block=True)
        with messages.mutex:  # as Queue.get does, so the look and the take are one step
            # The queue holds DIMSE primitives; a response is one that answers a message ID,
            # as pynetdicom's own send_msg tells them apart.
            if not messages.queue or _responds(messages.queue[0][1]):
                return None, None
            item = messages.queue.popleft()
            messages.not_full.notify()
        return item

    dimse.get_msg = get_message  # type: ignore[method-assign]
