"""Everything that reaches into pynetdicom's internals, in one place.

The rest of the project uses pynetdicom's public API (``AE``, ``evt``, the primitives) and this
package's functions; only the modules here read, replace or wrap pynetdicom's private names.
Each module says what it patches, why, and what upstream would need to make it unnecessary
(collected in docs/upstream.md):

- :mod:`.server`: the acceptor's connection life cycle (TLS handshake off the accept loop,
  state-machine and thread exceptions become an A-ABORT, connections bounded apart from
  associations, shared presentation contexts, waiting for DIMSE messages);
- :mod:`.pdu_reader`: a bounded PDU reader with a deadline that streams C-STORE datasets to
  their file (``_read_pdu_data``, ``_is_transport_event``, ``_decode_pdu``, ``_recv_pdu``);
- :mod:`.wakeup`: the DUL thread waits for its peer or for work instead of polling
  (``_run_loop_delay``, ``_target``, ``kill_dul``/``stop_dul``);
- :mod:`.store_response`: C-STORE responses without pynetdicom's message encoding;
- :mod:`.incoming`: the received dataset's file (``_data_set_file``, ``_dataset_file``,
  ``_dataset_path``) kept track of, dropped, and cleaned up;
- :mod:`.io_switches`: the process-wide ``_config`` switches, set at entry points only;
- :mod:`.sockets`: TCP_NODELAY and one-buffer reads;
- :mod:`.requestor`: the requestor reactor's race for a response.

:mod:`.contract` lists every name relied on and checks it against the installed pynetdicom;
the listener refuses to start when it fails, and so does ``tests/test_pynetdicom_contract.py``.
"""
