"""DIMSE statuses the C-STORE SCP answers with (documented in ``docs/statuses.md``)."""

SUCCESS = 0x0000
#: Refused: out of resources (low disk, spool or database write failed). The peer should retry.
OUT_OF_RESOURCES = 0xA700
#: Error: the dataset's SOP Instance UID differs from the C-STORE command's.
DATASET_MISMATCH = 0xA900
#: Error: cannot understand (malformed or truncated dataset).
CANNOT_UNDERSTAND = 0xC210
#: Error: cannot understand (an unexpected failure inside the node; see its log).
PROCESSING_FAILURE = 0xC211
#: Error: cannot understand (a UID that is not a valid UID and cannot name a spool path).
INVALID_UID = 0xC212
