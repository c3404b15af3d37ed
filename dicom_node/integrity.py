"""Structural check that a received DICOM file is completely encoded.

pydicom reads a truncated value without complaint (it returns the bytes it found), so a dataset cut
off mid-transfer would otherwise be acknowledged and stored. :func:`check_encoding_complete` walks
the element stream after the file meta, following defined lengths, undefined-length sequences and
items, and encapsulated pixel data, and fails if any value runs past the end of the file. It reads
element headers only and seeks over values, so a 15 MB image costs a few system calls.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID

_ITEM = 0xFFFEE000
_ITEM_DELIM = 0xFFFEE00D
_SEQ_DELIM = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
# Deepest nesting of sequence items accepted. Real chest objects nest a few levels; a hostile
# file nests hundreds, and pydicom's recursive reader would then exhaust the stack, where the
# garbage collector may run finalizers that fail in turn. The walk refuses such a file before
# pydicom reads it.
MAX_NESTING = 32
# VRs whose explicit-VR header has 2 reserved bytes and a 4-byte length.
_LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"SV",
    b"UV",
}


# Every VR an explicit-VR element header may carry.
_KNOWN_VRS = _LONG_VRS | {
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO",
    b"LT", b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
}  # fmt: skip


class MalformedDatasetError(ValueError):
    """A received file that is not a readable, completely encoded DICOM dataset."""


class IncompleteDatasetError(MalformedDatasetError):
    """The encoded dataset ends before one of its values or sequences does."""


def read_header_checked(path: Path) -> Dataset:
    """Read a received Part 10 file's attributes (not its pixels) and verify it is complete.

    Raises
    ------
    MalformedDatasetError
        If pydicom cannot parse the file or its encoding is cut short.
    """
    try:
        meta = read_file_meta_info(path)
        ts = UID(meta.TransferSyntaxUID)
        with open(path, "rb") as fh:
            end = os.fstat(fh.fileno()).st_size
            pixel_bytes = None
            if ts.is_deflated:
                # A deflated stream cannot be walked without inflating it: parse it whole.
                dcmread(fh)
            else:
                start = 132 + 12 + int(meta.FileMetaInformationGroupLength)
                if not ts.is_implicit_VR:
                    _check_explicit_vr(fh, start, end)
                pixel_bytes = check_encoding_complete(
                    fh, start, end, implicit_vr=ts.is_implicit_VR, little_endian=ts.is_little_endian
                )
            fh.seek(0)
            ds = dcmread(fh, stop_before_pixels=True)
            if pixel_bytes is not None and not ts.is_compressed:
                _check_native_pixel_length(ds, pixel_bytes)
            # pydicom converts values when first read: convert all now, so that a value it
            # cannot understand (an unknown VR, a bad number) is found here and not later.
            for elem in ds.iterall():
                _ = elem.value
            return ds
    except MalformedDatasetError:
        raise
    except RecursionError as exc:
        raise MalformedDatasetError("sequences nested too deeply to read") from exc
    except (InvalidDicomError, OSError, EOFError, struct.error) as exc:
        raise MalformedDatasetError(f"{type(exc).__name__}: {exc}") from exc
    except Exception as exc:  # pydicom raises many types on hostile bytes; all mean "cannot read"
        raise MalformedDatasetError(f"{type(exc).__name__}: {_short(exc)}") from exc


def _short(exc: Exception, limit: int = 200) -> str:
    text = str(exc)
    return text if len(text) <= limit else text[:limit] + "..."


def recorded_text(ds: Dataset, keyword: str, max_length: int) -> str:
    """The value of a string attribute as it will be recorded, or a clear refusal.

    Raises
    ------
    MalformedDatasetError
        If the value holds control characters (a NUL byte cannot be stored in PostgreSQL, and
        none belongs in a DICOM string) or is longer than its VR allows.
    """
    value = ds.get(keyword, "")
    text = "" if value is None else str(value)
    # Trailing NUL is legitimate padding for UIDs; anything else is not.
    text = text.rstrip("\x00 ")
    if any(ord(c) < 0x20 and c not in "\t\n\r\x1b" for c in text):
        raise MalformedDatasetError(f"{keyword} contains control characters")
    if len(text) > max_length:
        raise MalformedDatasetError(f"{keyword} is {len(text)} characters long (max {max_length})")
    return text


def _check_explicit_vr(fh: BinaryIO, start: int, end: int) -> None:
    """The first element of an explicit-VR dataset must name a VR (pydicom would guess)."""
    if end - start < 6:
        return
    fh.seek(start + 4)
    vr = fh.read(2)
    if vr not in _KNOWN_VRS:
        raise MalformedDatasetError(
            "the dataset is not encoded in the negotiated explicit VR transfer syntax "
            f"(first element has no VR, found {vr!r})"
        )


def _check_native_pixel_length(ds: Dataset, actual: int) -> None:
    """Native pixel data must hold every pixel the image attributes promise."""
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
        bits = int(ds.BitsAllocated)
        count = int(ds.Rows) * int(ds.Columns) * int(ds.SamplesPerPixel) * frames
    except (AttributeError, TypeError, ValueError):
        return  # not an image whose size the attributes state; nothing to compare
    expected = (count * bits + 7) // 8
    if actual < expected:
        raise IncompleteDatasetError(
            f"Pixel Data holds {actual} bytes, the image attributes need {expected}"
        )


def check_encoding_complete(
    fp: BinaryIO, start: int, end: int, *, implicit_vr: bool, little_endian: bool
) -> int | None:
    """Walk the dataset encoded in ``fp[start:end]`` and raise if it is truncated.

    Parameters
    ----------
    fp : BinaryIO
        Seekable binary file.
    start : int
        Offset of the first data element after the file meta information.
    end : int
        Size of the file.
    implicit_vr, little_endian : bool
        The transfer syntax encoding of the dataset.

    Raises
    ------
    IncompleteDatasetError
        If an element header or value extends past ``end``, or an undefined-length sequence or
        item has no delimiter.

    Returns
    -------
    int or None
        The length of the top-level Pixel Data value; None if absent or encapsulated.
    """
    walker = _Walker(fp, end, implicit_vr=implicit_vr, little_endian=little_endian)
    walker.dataset(start, end, until_item_delimiter=False)
    return walker.pixel_data_length


class _Walker:
    def __init__(self, fp: BinaryIO, end: int, *, implicit_vr: bool, little_endian: bool) -> None:
        self.fp = fp
        self.end = end
        self.implicit_vr = implicit_vr
        self.e = "<" if little_endian else ">"
        self.pixel_data_length: int | None = None
        self._depth = 0

    def _read(self, pos: int, n: int) -> bytes:
        if pos + n > self.end:
            raise IncompleteDatasetError(f"dataset ends at byte {self.end}, expected {pos + n}")
        self.fp.seek(pos)
        data = self.fp.read(n)
        if len(data) != n:
            raise IncompleteDatasetError(f"short read at byte {pos}")
        return data

    def _tag(self, pos: int) -> int:
        group, elem = struct.unpack(self.e + "HH", self._read(pos, 4))
        return (group << 16) | elem

    def _header(self, pos: int) -> tuple[int, bytes | None, int, int]:
        """Return (tag, vr, length, value offset) of the element at ``pos``."""
        tag = self._tag(pos)
        # Item and delimitation tags are always implicit-style (tag + 4-byte length).
        if self.implicit_vr or (tag >> 16) == 0xFFFE:
            (length,) = struct.unpack(self.e + "L", self._read(pos + 4, 4))
            return tag, None, length, pos + 8
        vr = self._read(pos + 4, 2)
        if vr in _LONG_VRS:
            (length,) = struct.unpack(self.e + "L", self._read(pos + 8, 4))
            return tag, vr, length, pos + 12
        (length,) = struct.unpack(self.e + "H", self._read(pos + 6, 2))
        return tag, vr, length, pos + 8

    def dataset(self, pos: int, limit: int, *, until_item_delimiter: bool) -> int:
        """Walk elements from ``pos``; return the offset just past the dataset (or delimiter)."""
        while pos < limit:
            tag, _vr, length, value = self._header(pos)
            if tag == _ITEM_DELIM:
                if not until_item_delimiter:
                    raise IncompleteDatasetError(f"unexpected item delimiter at byte {pos}")
                return value
            if length != _UNDEFINED:
                if tag == 0x7FE00010 and self._depth == 0:
                    self.pixel_data_length = length
                pos = value + length
                if pos > limit:
                    raise IncompleteDatasetError(
                        f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) needs {length} bytes, "
                        f"the data ends {pos - limit} bytes short"
                    )
                continue
            # Undefined length: an SQ (explicit, implicit or UN) or encapsulated pixel data;
            # both are a run of items closed by a sequence delimiter.
            pos = self._items(value, limit)
        if until_item_delimiter:
            raise IncompleteDatasetError("undefined-length item has no delimiter")
        return pos

    def _items(self, pos: int, limit: int) -> int:
        while True:
            tag, _, length, value = self._header(pos)
            if tag == _SEQ_DELIM:
                return value
            if tag != _ITEM:
                raise IncompleteDatasetError(
                    f"expected an item tag at byte {pos}, "
                    f"found ({tag >> 16:04X},{tag & 0xFFFF:04X})"
                )
            if length == _UNDEFINED:
                if self._depth >= MAX_NESTING:
                    raise MalformedDatasetError(f"sequences nested more than {MAX_NESTING} deep")
                self._depth += 1
                pos = self.dataset(value, limit, until_item_delimiter=True)
                self._depth -= 1
            else:
                pos = value + length
                if pos > limit:
                    raise IncompleteDatasetError(f"item at byte {value - 8} runs past the end")
