"""What this seam relies on inside pynetdicom, checked against the pynetdicom that is installed.

Each :class:`Reliance` names one private name (or undocumented internal) that a seam module
reads, replaces or wraps, why, and what about it must hold: that it exists (on an instance
where it is an instance attribute), a method's parameters, and the lines of pynetdicom's own
code that make our patch work (the reactor sleeping ``_run_loop_delay``, the thread running
``_target``). :func:`broken` lists every reliance the installed version breaks;
:func:`check` raises with that list. The listener calls :func:`check` before it serves, and
``tests/test_pynetdicom_contract.py`` runs it (and shows it failing on a patched copy), so an
upgrade fails here, first and loudly, not somewhere in the receive path. docs/upstream.md says
what pynetdicom would need so that each patch could go.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Reliance:
    #: Where the name lives: a class (``module:Class``) or a module (``module``).
    where: str
    name: str
    #: The seam module that uses it.
    used_by: str
    why: str
    #: A method's parameters (without ``self``), when we call or replace it.
    params: tuple[str, ...] | None = None
    #: ``(function, text)``: pynetdicom's code that our use depends on.
    source_has: tuple[tuple[str, str], ...] = ()

    @property
    def label(self) -> str:
        return f"{self.where.split(':')[-1]}.{self.name}"


_DUL = "pynetdicom.dul:DULServiceProvider"
_ASSOC = "pynetdicom.association:Association"
_DIMSE = "pynetdicom.dimse:DIMSEServiceProvider"
_MESSAGE = "pynetdicom.dimse_messages:DIMSEMessage"
_REACTOR = f"{_DUL}.run_reactor"

RELIANCES: tuple[Reliance, ...] = (
    Reliance(
        _DUL,
        "_read_pdu_data",
        "pdu_reader",
        "replaced per association by PduReader: bounded, with a deadline, streamed to disk",
        params=(),
        source_has=(
            (f"{_DUL}._read_pdu_data", "self._recv_pdu.put(pdu)"),
            (f"{_DUL}._read_pdu_data", "self.event_queue.put(event)"),
        ),
    ),
    Reliance(
        _DUL,
        "_is_transport_event",
        "pdu_reader, wakeup",
        "wrapped: hands on PDUs the reader buffered, waits instead of sleeping 1 ms",
        params=(),
        source_has=((_REACTOR, "elif self._is_transport_event():"),),
    ),
    Reliance(
        _DUL,
        "_decode_pdu",
        "pdu_reader",
        "called by PduReader for every PDU the state machine must see",
        params=("bytestream",),
    ),
    Reliance(
        _DUL,
        "_recv_pdu",
        "pdu_reader",
        "the queue of decoded PDUs PduReader fills, as _read_pdu_data did",
    ),
    Reliance(
        _DUL,
        "_kill_thread",
        "pdu_reader, wakeup",
        "read to stop streaming; set by our kill_dul",
        source_has=((_REACTOR, "if self._kill_thread:"),),
    ),
    Reliance(
        _DUL,
        "_run_loop_delay",
        "wakeup",
        "set to 0: the reactor waits in _is_transport_event instead of sleeping",
        source_has=((_REACTOR, "time.sleep(self._run_loop_delay)"),),
    ),
    Reliance(
        _DUL,
        "_target",
        "wakeup, server",
        "threading.Thread's target, the reactor: wrapped to own a wake-up descriptor",
        source_has=(
            (f"{_DUL}.__init__", "target=make_target(self.run_reactor)"),
            ("threading:Thread.run", "self._target(*self._args, **self._kwargs)"),
        ),
    ),
    Reliance(
        _ASSOC,
        "_target",
        "server",
        "the association thread's reactor: wrapped to turn an exception into an A-ABORT",
        source_has=((f"{_ASSOC}.__init__", "target=make_target(self.run_reactor)"),),
    ),
    Reliance(
        _ASSOC,
        "_reactor_checkpoint",
        "tests only (the requestor's race, see sender)",
        "the pause each send waits for; a test pauses the reactor with it",
        source_has=((f"{_ASSOC}.send_c_store", "self._reactor_checkpoint.clear()"),),
    ),
    Reliance(
        _ASSOC,
        "_is_paused",
        "tests only (the requestor's race, see sender)",
        "what a send waits for after clearing the checkpoint",
        source_has=((f"{_ASSOC}.send_c_store", "while not self._is_paused:"),),
    ),
    Reliance(
        _MESSAGE,
        "_data_set_file",
        "incoming, pdu_reader",
        "the file a C-STORE dataset is received into: streamed into, swapped for a discard",
        source_has=(
            (f"{_MESSAGE}.decode_msg", "self._data_set_file.write(data[1:])"),
            (f"{_MESSAGE}.decode_msg", "self._data_set_file.file.flush()"),
            (f"{_MESSAGE}.message_to_primitive", "primitive._dataset_file = self._data_set_file"),
        ),
    ),
    Reliance(
        "pynetdicom.dimse_primitives:C_STORE",
        "_dataset_file",
        "incoming",
        "the request's received file: removed if no handler took it, or a dropped dataset",
    ),
    Reliance(
        "pynetdicom.dimse_primitives:C_STORE",
        "_dataset_path",
        "incoming",
        "None when the command said no dataset follows",
    ),
    Reliance(
        "pynetdicom.ae:ApplicationEntity",
        "_servers",
        "server",
        "a server we start in our own thread is registered for AE.shutdown()",
        source_has=(("pynetdicom.ae:ApplicationEntity.shutdown", "for server in self._servers"),),
    ),
    Reliance(
        "pynetdicom.transport:RequestHandler",
        "_create_association",
        "server",
        "builds the acceptor Association that our handle() guards and starts",
        params=(),
        source_has=(
            (
                "pynetdicom.transport:RequestHandler._create_association",
                "deepcopy(self.server.contexts)",
            ),
        ),
    ),
    Reliance(
        "pynetdicom._config", "STORE_RECV_CHUNKED_DATASET", "io_switches", "datasets to files"
    ),
    Reliance(
        "pynetdicom._config", "STORE_SEND_CHUNKED_DATASET", "io_switches", "files as they are"
    ),
    *(
        Reliance("pynetdicom._handlers", f"standard_{what}_handler", "server", "unbound if unheard")
        for what in ("dimse_recv", "dimse_sent", "pdu_recv", "pdu_sent")
    ),
    # Internals without an underscore, as undocumented as the names above.
    Reliance(_DUL, "event_queue", "pdu_reader, wakeup", "state-machine events we queue"),
    Reliance(_DUL, "to_provider_queue", "wakeup", "its put wakes the DUL thread"),
    Reliance(_DUL, "to_user_queue", "server", "its put wakes the association thread"),
    Reliance(_DUL, "kill_dul", "wakeup", "replaced: also wakes the thread", params=()),
    Reliance(_DUL, "stop_dul", "wakeup", "replaced: no spinning", params=()),
    Reliance(
        _DUL, "send_pdu", "store_response", "sends our encoded response", params=("primitive",)
    ),
    Reliance(
        "pynetdicom.fsm:StateMachine",
        "do_action",
        "server",
        "wrapped: an exception becomes an A-ABORT",
        params=("event",),
    ),
    Reliance(_DIMSE, "get_msg", "server, incoming, sender", "wrapped", params=("block",)),
    Reliance(_DIMSE, "receive_primitive", "incoming", "wrapped", params=("primitive",)),
    Reliance(_DIMSE, "send_msg", "store_response", "wrapped", params=("primitive", "context_id")),
    Reliance(_DIMSE, "msg_queue", "server, incoming, sender", "looked at and woken"),
    Reliance(_DIMSE, "message", "incoming, pdu_reader", "the message being received"),
    Reliance(
        "pynetdicom.transport:AssociationSocket",
        "recv",
        "sockets",
        "replaced per requested association: one-buffer reads",
        params=("nr_bytes",),
    ),
)


@functools.cache
def _instances() -> dict[str, Any]:
    """Instances for names set in ``__init__`` (nothing connects or starts)."""
    from pynetdicom import AE
    from pynetdicom.association import Association
    from pynetdicom.dimse_messages import C_STORE_RQ
    from pynetdicom.dimse_primitives import C_STORE

    ae = AE()
    assoc = Association(ae, "requestor")
    return {
        "pynetdicom.ae:ApplicationEntity": ae,
        _ASSOC: assoc,
        _DUL: assoc.dul,
        _DIMSE: assoc.dimse,
        "pynetdicom.fsm:StateMachine": assoc.dul.state_machine,
        _MESSAGE: C_STORE_RQ(),
        "pynetdicom.dimse_primitives:C_STORE": C_STORE(),
    }


def _resolve(path: str) -> Any:
    """``module`` or ``module:Class`` or ``module:Class.attribute``."""
    module, _, rest = path.partition(":")
    found: Any = importlib.import_module(module)
    for part in rest.split(".") if rest else ():
        found = getattr(found, part)
    return found


def _problems(reliance: Reliance) -> list[str]:
    label = reliance.label
    try:
        owner = _instances().get(reliance.where) or _resolve(reliance.where)
    except (ImportError, AttributeError) as exc:
        return [f"{reliance.where} is gone ({exc})"]
    if not hasattr(owner, reliance.name):
        return [f"{label} is gone (used by {reliance.used_by}: {reliance.why})"]
    problems = []
    if reliance.params is not None:
        try:
            params = tuple(inspect.signature(getattr(owner, reliance.name)).parameters)
        except (TypeError, ValueError) as exc:
            params = (f"<{exc}>",)
        if params[:1] == ("self",):
            params = params[1:]
        if params != reliance.params:
            problems.append(f"{label} now takes {params}, not {reliance.params}")
    for function, text in reliance.source_has:
        try:
            source = inspect.getsource(_resolve(function))
        except (ImportError, AttributeError, OSError, TypeError) as exc:
            problems.append(f"{function} cannot be read ({exc}); {label} relies on it")
            continue
        if text not in source:
            problems.append(f"{function} no longer has {text!r} ({label}: {reliance.why})")
    return problems


def broken(reliances: tuple[Reliance, ...] = RELIANCES) -> list[str]:
    """Every way the installed pynetdicom breaks what the seam relies on ([] if none)."""
    return [problem for reliance in reliances for problem in _problems(reliance)]


class ContractBroken(RuntimeError):
    """The installed pynetdicom is not one this seam was written against."""


def check() -> None:
    """Raise :class:`ContractBroken` listing what the installed pynetdicom changed."""
    problems = broken()
    if problems:
        import pynetdicom

        raise ContractBroken(
            f"pynetdicom {pynetdicom.__version__} changed what dicom_node.pynetdicom_seam "
            "relies on (see docs/upstream.md): " + "; ".join(problems)
        )
