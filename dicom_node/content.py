"""Whether two encodings of one instance hold the same content.

A PACS re-routes an instance transcoded (another transfer syntax) or with a private tag of its
own added. Neither changes what the model sees or what the results say, so such a re-send is a
duplicate receipt, not a new revision (which would send the PACS a second SR). The content is
the decoded pixels and every public attribute; the encoding (file meta, transfer syntax,
private tags, planar configuration) is not.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.tag import Tag

logger = logging.getLogger(__name__)

# Attributes that describe the encoding of the pixels, not the image.
_ENCODING = {Tag("PixelData"), Tag("PlanarConfiguration"), Tag("DataSetTrailingPadding")}


def content_digest(path: Path) -> str | None:
    """SHA-256 over the decoded pixels and the public attributes of the file at ``path``.

    Returns None when the file cannot be read or its pixels decoded: such a file is then
    the same as another only if its bytes are.
    """
    try:
        ds = dcmread(path)
        pixels = np.ascontiguousarray(ds.pixel_array) if "PixelData" in ds else None
    except Exception as exc:  # any decoder failure means "cannot compare by content"
        logger.debug("no content digest for %s: %s", path.name, exc)
        return None
    digest = hashlib.sha256()
    _add_attributes(digest, ds)
    if pixels is not None:
        digest.update(f"{pixels.dtype.str}{pixels.shape}".encode())
        digest.update(pixels.tobytes())
    return digest.hexdigest()


def same_content(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` hold the same pixels and public attributes (False if unsure)."""
    first = content_digest(a)
    return first is not None and first == content_digest(b)


def _add_attributes(digest: hashlib._Hash, ds: Dataset) -> None:
    for elem in ds:
        if elem.tag.is_private or elem.tag in _ENCODING:
            continue
        digest.update(str(elem.tag).encode())
        if elem.VR == "SQ":
            for item in elem.value:
                digest.update(b"item")
                _add_attributes(digest, item)
        else:
            digest.update(repr(elem.value).encode())
