"""UID validation and generation.

Spool paths are built from UIDs, so a UID is only ever used in a path after
:func:`validate_uid` has accepted it: digits and dots, no empty component, at most 64 characters.
"""

from __future__ import annotations

import re

from pydicom.uid import generate_uid

#: Default root for UIDs of objects this product creates: an arc under a UUID generated for this
#: project (ITU-T X.667). Sites may set their own registered root (``CXR_UID_ROOT``).
DEFAULT_UID_ROOT = "2.25.121621369618346814594181528227270744860."

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class InvalidUIDError(ValueError):
    """A UID that is not a syntactically valid DICOM UID and so cannot name a spool path."""


def validate_uid(value: object, attribute: str) -> str:
    """Return ``value`` as a string if it is a well-formed DICOM UID.

    Parameters
    ----------
    value : object
        The UID as found in the dataset or the DIMSE command.
    attribute : str
        The attribute keyword, used in the error message.

    Raises
    ------
    InvalidUIDError
        If the value is missing, longer than 64 characters, or contains anything but digits and
        single dots (which rules out ``/``, ``..`` and every other path trick).
    """
    text = "" if value is None else str(value).rstrip("\x00 ")
    if not text:
        raise InvalidUIDError(f"{attribute} is missing or empty")
    if len(text) > 64:
        raise InvalidUIDError(f"{attribute} is longer than 64 characters")
    if not _UID_RE.fullmatch(text):
        raise InvalidUIDError(
            f"{attribute} {text[:80]!r} is not a valid UID (digits and dots only)"
        )
    return text


def new_uid(root: str = DEFAULT_UID_ROOT) -> str:
    """Generate a new UID under ``root``."""
    return str(generate_uid(prefix=root))
