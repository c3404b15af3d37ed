from __future__ import annotations

import os
from pathlib import Path

import pytest

from dicom_node.spool import LowDiskSpaceError, Spool
from dicom_node.uids import DEFAULT_UID_ROOT, InvalidUIDError, new_uid, validate_uid


@pytest.mark.parametrize(
    "uid", ["1.2.3", "1.2.840.10008.5.1.4.1.1.1", "2.25." + "9" * 39, "1" * 64]
)
def test_valid_uids_pass(uid: str) -> None:
    assert validate_uid(uid, "X") == uid


@pytest.mark.parametrize(
    "uid, message",
    [
        ("../../etc/x", "not a valid UID"),
        ("1.2/3", "not a valid UID"),
        ("1..2", "not a valid UID"),
        (".1.2", "not a valid UID"),
        ("1.2.", "not a valid UID"),
        ("1.2.3\\4", "not a valid UID"),
        ("", "missing"),
        (None, "missing"),
        ("1" * 65, "longer than 64"),
    ],
)
def test_invalid_uids_are_refused(uid: str | None, message: str) -> None:
    with pytest.raises(InvalidUIDError, match=message):
        validate_uid(uid, "SOPInstanceUID")


def test_new_uid_uses_root() -> None:
    uid = new_uid()
    assert uid.startswith(DEFAULT_UID_ROOT)
    assert validate_uid(uid, "x") == uid


def test_spool_location_refuses_traversal(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    with pytest.raises(InvalidUIDError):
        spool.location("1.2.3", "../../../etc", "1.2.4")
    loc = spool.location("1.2.3", "1.2.3.4", "1.2.3.4.5")
    assert loc.relative == "1.2.3/1.2.3.4/1.2.3.4.5.dcm"
    assert loc.path.is_relative_to(spool.studies)


def test_commit_moves_file_into_place_and_leaves_nothing_behind(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    src = spool.incoming / "x.dcm"
    src.write_bytes(b"abc" * 100)
    loc = spool.location("1.2", "1.2.3", "1.2.3.4")
    assert spool.commit(src, loc) == 300
    assert loc.path.read_bytes() == b"abc" * 100
    assert list(spool.incoming.iterdir()) == []
    # Replacing an existing instance is atomic too.
    src.write_bytes(b"new")
    spool.commit(src, loc)
    assert loc.path.read_bytes() == b"new"
    spool.remove(loc)
    assert not loc.path.exists()


def test_watermark(tmp_path: Path) -> None:
    free = Spool(tmp_path / "s").free_bytes()
    spool = Spool(tmp_path / "s", min_free_bytes=free + 2**30)
    with pytest.raises(LowDiskSpaceError, match="watermark"):
        spool.check_space()
    ok = Spool(tmp_path / "s", min_free_bytes=0)
    ok.check_space(1024)
    assert os.path.isdir(ok.incoming)
