"""The C-STORE SCP over real associations on 127.0.0.1."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from dicom_node import synthetic
from dicom_node.eligibility import OUR_MANUFACTURER
from dicom_node.sender import AssociationFailed, echo
from dicom_node.statuses import CANNOT_UNDERSTAND, INVALID_UID, OUT_OF_RESOURCES
from tests import factories
from tests.helpers import dest, rows, send, wait_for
from tests.services import require, shared_file
from worker.db.models import Association, Instance, Rejection, Study


def _spooled(node) -> list[Path]:
    return sorted(p for p in node.listener.spool.studies.rglob("*.dcm"))


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_eligible_instance_is_spooled_and_recorded(start_node, backend, request) -> None:
    overrides = {"database_url": request.getfixturevalue("pg_url")} if backend == "postgres" else {}
    node = start_node(**overrides)
    ds = factories.radiograph(modality="CR", rows=300, columns=200)
    summary = send(node, [ds])
    assert [r.status for r in summary.results] == [0x0000]

    (path,) = [p for p in _spooled(node) if p.stem == ds.SOPInstanceUID]
    back = dcmread(path)
    assert back.SOPInstanceUID == ds.SOPInstanceUID
    assert back.PixelData == ds.PixelData
    assert list(node.listener.spool.incoming.iterdir()) == []

    (inst,) = rows(node.engine, Instance, Instance.sop_instance_uid == ds.SOPInstanceUID)
    assert inst.eligible and inst.rule == "view-position"
    assert (
        inst.spool_path == f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
    )
    assert inst.size_bytes == path.stat().st_size
    assert inst.transfer_syntax_uid == "1.2.840.10008.1.2.1"
    (study,) = rows(node.engine, Study, Study.study_instance_uid == ds.StudyInstanceUID)
    assert study.patient_id == "SYN0001"
    (assoc,) = rows(node.engine, Association, Association.id == inst.association_id)
    assert assoc.calling_ae == "TEST_SCU" and assoc.peer_host == "127.0.0.1"


def test_ineligible_instances_are_acknowledged_not_kept(start_node) -> None:
    node = start_node()
    cases = {
        "modality": factories.ct_slice(),
        "view-position": factories.radiograph(view_position="AP"),
        "description": factories.radiograph(view_position=None, SeriesDescription="CHEST LAT"),
        "own-output": factories.radiograph(Manufacturer=OUR_MANUFACTURER),
    }
    sr = factories.structured_report()
    summary = send(node, [*cases.values(), sr])
    assert [r.status for r in summary.results] == [0x0000] * 5
    assert _spooled(node) == []
    for rule, ds in [*cases.items(), ("modality", sr)]:
        (inst,) = rows(node.engine, Instance, Instance.sop_instance_uid == ds.SOPInstanceUID)
        assert not inst.eligible and inst.rule == rule and inst.spool_path is None, inst.reason


def test_keep_ineligible_keeps_files(start_node) -> None:
    node = start_node(keep_ineligible=True)
    ds = factories.ct_slice()
    assert send(node, [ds]).results[0].status == 0
    assert [p.stem for p in _spooled(node)] == [ds.SOPInstanceUID]


@pytest.mark.dcmtk
def test_storescu_sends_the_real_files(start_node, tmp_path) -> None:
    require(Path("/usr/bin/storescu").exists(), "dcmtk storescu is not installed")
    files = {
        name: shared_file(name)
        for name in (
            "cr_pa_chest_jpeg_baseline.dcm",
            "dx_chest_no_view_tags.dcm",
            "dx_canine_lateral_thorax.dcm",
        )
    }
    node = start_node()
    for name, path in files.items():
        jpeg = ["-xy"] if "jpeg" in name else []
        proc = subprocess.run(
            [
                "/usr/bin/storescu",  # dcmtk's, not the one pynetdicom puts in the venv
                "-aet",
                "DCMTK",
                "-aec",
                "CXR_TRIAGE",
                *jpeg,
                "127.0.0.1",
                str(node.listener.port),
                str(path),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={"TCP_NODELAY": "1"},
        )
        assert proc.returncode == 0, proc.stderr
    found = {i.sop_instance_uid: i for i in rows(node.engine, Instance)}
    expect = {
        "cr_pa_chest_jpeg_baseline.dcm": (True, "view-position", "1.2.840.10008.1.2.4.50"),
        "dx_chest_no_view_tags.dcm": (False, "view-unknown", "1.2.840.10008.1.2"),
        "dx_canine_lateral_thorax.dcm": (False, "non-human", "1.2.840.10008.1.2.1"),
    }
    for name, (eligible, rule, _ts) in expect.items():
        uid = dcmread(files[name], stop_before_pixels=True).SOPInstanceUID
        inst = found[uid]
        assert (inst.eligible, inst.rule) == (eligible, rule), inst.reason
    # The JPEG file is stored byte-for-byte in its own transfer syntax.
    cr = dcmread(files["cr_pa_chest_jpeg_baseline.dcm"])
    (kept,) = _spooled(node)
    back = dcmread(kept)
    assert back.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    assert back.PixelData == cr.PixelData


def test_monochrome1_copy_is_eligible(start_node) -> None:
    node = start_node()
    path = shared_file("cr_pa_chest_monochrome1.dcm")
    assert send(node, [path]).results[0].status == 0
    (inst,) = rows(node.engine, Instance)
    assert inst.eligible
    assert dcmread(_spooled(node)[0]).PhotometricInterpretation == "MONOCHROME1"


def test_assume_pa_chest_setting(start_node) -> None:
    node = start_node(assume_pa_chest=True)
    assert send(node, [shared_file("dx_chest_no_view_tags.dcm")]).results[0].status == 0
    (inst,) = rows(node.engine, Instance)
    assert inst.eligible and inst.rule == "assumed"


def test_calling_ae_allow_list(start_node) -> None:
    node = start_node(allowed_calling_aets=["MODALITY1"])
    summary = send(node, [factories.radiograph()], calling_ae="INTRUDER")
    assert summary.results[0].status is None
    assert "rejected" in (summary.results[0].error or "")
    (rej,) = rows(node.engine, Rejection)
    assert rej.kind == "association" and rej.calling_ae == "INTRUDER"
    assert "allow-list" in rej.reason
    assert send(node, [factories.radiograph()], calling_ae="MODALITY1").results[0].status == 0


def test_called_ae_mismatch(start_node) -> None:
    node = start_node()
    with pytest.raises(AssociationFailed, match="rejected"):
        echo(dest(node, "SOMEONE_ELSE"))
    (rej,) = rows(node.engine, Rejection)
    assert "called AE 'SOMEONE_ELSE'" in rej.reason
    assert echo(dest(node)) == 0


def test_truncated_dataset_fails_and_node_stays_up(start_node, tmp_path) -> None:
    node = start_node()
    ds = factories.radiograph()
    path = factories.truncated_file(ds, tmp_path / "cut.dcm", cut=1000)
    summary = send(node, [path])
    assert summary.results[0].status == CANNOT_UNDERSTAND
    assert _spooled(node) == [] and list(node.listener.spool.incoming.iterdir()) == []
    (rej,) = rows(node.engine, Rejection)
    assert rej.kind == "instance" and rej.status == CANNOT_UNDERSTAND
    assert "truncated" in rej.reason and rej.sop_instance_uid == ds.SOPInstanceUID
    assert rows(node.engine, Instance) == []
    assert echo(dest(node)) == 0
    assert send(node, [factories.radiograph()]).results[0].status == 0


@pytest.mark.filterwarnings("ignore::UserWarning:pydicom.valuerep")  # invalid on purpose
@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "SeriesInstanceUID"])
def test_traversal_uid_is_refused(start_node, tmp_path, keyword) -> None:
    node = start_node()
    ds = factories.with_unsafe_uid(factories.radiograph(), keyword, "../../../../tmp/evil")
    path = tmp_path / "evil.dcm"
    from pydicom import config

    with config.disable_value_validation():
        factories.write(ds, path)
    summary = send(node, [path])
    assert summary.results[0].status == INVALID_UID
    (rej,) = rows(node.engine, Rejection)
    assert keyword in rej.reason and "not a valid UID" in rej.reason
    assert not Path("/tmp/evil").exists()
    assert not any(node.listener.spool.root.parent.rglob("*evil*"))


def test_watermark_refuses_associations(start_node) -> None:
    node = start_node(min_free_mb=10**9)  # a petabyte
    summary = send(node, [factories.radiograph()])
    assert summary.results[0].status is None
    (rej,) = rows(node.engine, Rejection)
    assert "low disk space" in rej.reason


def test_watermark_fails_instances_that_would_cross_it(start_node) -> None:
    node = start_node()
    spool = node.listener.spool
    # Leave 4 MB of head-room above the watermark: a 1 MB image fits, a 12 MB one does not.
    spool.min_free_bytes = spool.free_bytes() - 4 * 2**20
    small = factories.radiograph(rows=512, columns=1024, bits=16)
    big = factories.radiograph(rows=2048, columns=3072, bits=16)
    statuses = [r.status for r in send(node, [small, big]).results]
    assert statuses == [0x0000, OUT_OF_RESOURCES]
    (rej,) = rows(node.engine, Rejection)
    assert rej.status == OUT_OF_RESOURCES and "watermark" in rej.reason
    assert [p.stem for p in _spooled(node)] == [small.SOPInstanceUID]


def test_database_failure_is_not_acknowledged(start_node, tmp_path) -> None:
    node = start_node(db_timeout=0.5)
    assert send(node, [factories.radiograph()]).results[0].status == 0
    locker = sqlite3.connect(tmp_path / "data" / "cxr-triage.sqlite", timeout=10)
    locker.execute("BEGIN EXCLUSIVE")  # the database is now unwritable for everyone else
    ds = factories.radiograph()
    try:
        status = send(node, [ds]).results[0].status
    finally:
        locker.rollback()
        locker.close()
    assert status == OUT_OF_RESOURCES
    assert ds.SOPInstanceUID not in [p.stem for p in _spooled(node)]
    assert list(node.listener.spool.incoming.iterdir()) == []
    assert rows(node.engine, Instance, Instance.sop_instance_uid == ds.SOPInstanceUID) == []
    # Once the database is back the same instance is stored normally.
    assert send(node, [ds]).results[0].status == 0
    assert ds.SOPInstanceUID in [p.stem for p in _spooled(node)]


def test_resent_instance_is_updated_not_duplicated(start_node) -> None:
    node = start_node()
    ds = factories.radiograph()
    send(node, [ds])
    send(node, [ds])
    assert len(rows(node.engine, Instance)) == 1
    assert len(_spooled(node)) == 1
    assert len(rows(node.engine, Association)) == 2


def test_peer_closing_mid_pdu_leaves_node_up(start_node) -> None:
    """A sender that dies mid-transfer gets nothing acknowledged and breaks nothing."""
    import socket as _socket
    import struct

    node = start_node()
    # A P-DATA-TF header announcing 1 MB, then 10 bytes, then the connection drops.
    with _socket.create_connection(("127.0.0.1", node.listener.port), timeout=5) as s:
        s.sendall(struct.pack(">BBL", 0x04, 0, 1_000_000) + b"x" * 10)
    # And an A-ASSOCIATE-RQ announcing 500 bytes that stops after 20.
    with _socket.create_connection(("127.0.0.1", node.listener.port), timeout=5) as s:
        s.sendall(struct.pack(">BBL", 0x01, 0, 500) + b"\x00\x01" + b"\x00" * 18)
    assert echo(dest(node)) == 0
    assert rows(node.engine, Instance) == []


def test_large_datasets_in_many_pdus_arrive_byte_for_byte(start_node, tmp_path) -> None:
    """The P-DATA streaming path (dicom_node.pynetdicom_seam.pdu_reader): ~1,000 PDUs per
    image, three images."""
    require(Path("/usr/bin/storescu").exists(), "dcmtk storescu is not installed")
    node = start_node(max_pdu=16384)
    study = generate_uid()
    sent = [
        synthetic.radiograph(rows=2000, columns=2400, bits=16, study_uid=study, seed=n)
        for n in range(3)
    ]
    paths = [synthetic.write(ds, tmp_path / f"{n}.dcm") for n, ds in enumerate(sent)]
    port = str(node.listener.port)
    proc = subprocess.run(
        [
            "/usr/bin/storescu",
            "-aec",
            "CXR_TRIAGE",
            "--max-pdu",
            "16384",
            "127.0.0.1",
            port,
            *paths,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={"TCP_NODELAY": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    kept = {dcmread(p).SOPInstanceUID: dcmread(p) for p in _spooled(node)}
    assert len(kept) == 3
    for ds in sent:
        back = kept[ds.SOPInstanceUID]
        assert back.PixelData == ds.PixelData
        assert [e.tag for e in back] == [e.tag for e in ds]


def test_associations_negotiate_apart_on_the_shared_contexts(start_node) -> None:
    """The server's presentation contexts are shared by its associations, not copied for each
    (dicom_node.pynetdicom_seam.server): two open at once with different transfer syntaxes each
    get their own answer, and the server's own contexts are left as they were."""
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import AE

    node = start_node()
    server = node.listener._server
    before = [(cx.abstract_syntax, list(cx.transfer_syntax)) for cx in server.contexts]
    datasets = [factories.radiograph(seed=n) for n in range(2)]
    held = []
    for ds, syntax in zip(datasets, (ExplicitVRLittleEndian, ImplicitVRLittleEndian), strict=True):
        ae = AE(ae_title="TEST_SCU")
        ae.add_requested_context(ds.SOPClassUID, [syntax])
        assoc = ae.associate("127.0.0.1", node.listener.port, ae_title="CXR_TRIAGE")
        assert assoc.is_established
        assert [cx.transfer_syntax for cx in assoc.accepted_contexts] == [[syntax]]
        held.append((assoc, ds))
    for assoc, ds in held:
        assert assoc.send_c_store(ds).Status == 0x0000
        assoc.release()
    assert [(cx.abstract_syntax, list(cx.transfer_syntax)) for cx in server.contexts] == before
    syntaxes = {
        i.sop_instance_uid: i.transfer_syntax_uid
        for i in rows(node.engine, Instance, Instance.sop_instance_uid.is_not(None))
    }
    assert syntaxes == {
        datasets[0].SOPInstanceUID: ExplicitVRLittleEndian,
        datasets[1].SOPInstanceUID: ImplicitVRLittleEndian,
    }


def test_a_restarted_node_completes_what_became_due_at_once(start_node, make_settings) -> None:
    from worker.node_service import build_node

    first = start_node(monitor_interval=60)  # a pass at start, the next a minute later
    ds = factories.radiograph()
    assert [r.status for r in send(first, [ds]).results] == [0x0000]
    time.sleep(1.0)  # the quiet period (0.5 s) passes with no pass to notice it
    where = Study.study_instance_uid == ds.StudyInstanceUID
    assert [s.state for s in rows(first.engine, Study, where)] == ["receiving"]

    second = build_node(make_settings(monitor_interval=60))  # the same database, restarted
    second.start()
    try:
        # Its first pass runs at start, not an interval later.
        wait_for(lambda: rows(second.engine, Study, where)[0].state != "receiving", timeout=10)
    finally:
        second.stop()
