"""STOW-RS into the node: each part takes the C-STORE path, and the answer says which failed."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest
from pydicom.uid import generate_uid

from dicom_node.statuses import CANNOT_UNDERSTAND, DATASET_MISMATCH
from dicom_node.stow_inbound import STOW_CALLER, StowRequestError, boundary_of, parts
from tests import factories
from tests.helpers import rows, wait_for
from worker.db.models import Association, Instance, Study

TOKEN = "stow-secret"


def _body(items: list[bytes], boundary: str = "b0undary") -> bytes:
    out = b""
    for data in items:
        out += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def _post(
    node: Any,
    body: bytes,
    path: str = "/dicom-web/studies",
    token: str | None = TOKEN,
    kind: str = 'multipart/related; type="application/dicom"; boundary=b0undary',
) -> tuple[int, Any]:
    headers = {"Content-Type": kind}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(
        f"http://127.0.0.1:{node.stow.port}{path}", data=body, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as rsp:
            return rsp.status, json.loads(rsp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _uids(answer: Any, tag: str) -> list[str]:
    return [item["00081155"]["Value"][0] for item in answer.get(tag, {}).get("Value", [])]


def test_a_stow_upload_is_received_like_a_c_store(start_node) -> None:
    node = start_node(stow_port=0, api_token=TOKEN, quiet_seconds=0.5)
    study = generate_uid()
    chest = factories.radiograph(study_uid=study, seed=1)
    ct = factories.ct_slice(study_uid=study)
    status, answer = _post(node, _body([factories.encode(chest), factories.encode(ct), b"junk"]))
    # Two stored (the CT is recorded as skipped, as a C-STORE of it would be), one refused.
    assert status == 202, answer
    assert sorted(_uids(answer, "00081199")) == sorted([chest.SOPInstanceUID, ct.SOPInstanceUID])
    (failure,) = answer["00081198"]["Value"]
    assert failure["00081197"]["Value"] == [CANNOT_UNDERSTAND]
    instances = {i.sop_instance_uid: i for i in rows(node.engine, Instance)}
    assert instances[chest.SOPInstanceUID].eligible and not instances[ct.SOPInstanceUID].eligible
    spooled = (
        node.settings.storage.spool_dir / "studies" / instances[chest.SOPInstanceUID].spool_path
    )
    assert spooled.is_file()
    (assoc,) = rows(node.engine, Association)
    assert assoc.calling_ae == STOW_CALLER
    # The study completes and is queued like one that came by C-STORE.
    wait_for(lambda: rows(node.engine, Study)[0].state in ("complete", "queueing", "queued"))

    # The same instance again, to its study's URL: a duplicate receipt, nothing new.
    status, answer = _post(
        node, _body([factories.encode(chest)]), path=f"/dicom-web/studies/{study}"
    )
    assert status == 200 and _uids(answer, "00081199") == [chest.SOPInstanceUID]
    assert len(rows(node.engine, Instance)) == 2
    # An instance posted to another study's URL is refused, not stored there.
    other = factories.radiograph(seed=2)
    status, answer = _post(node, _body([factories.encode(other)]), path=f"/studies/{study}")
    assert status == 409
    assert answer["00081198"]["Value"][0]["00081197"]["Value"] == [DATASET_MISMATCH]
    assert other.SOPInstanceUID not in {i.sop_instance_uid for i in rows(node.engine, Instance)}
    # Nothing of the bodies or their parts is left in incoming/.
    assert list((node.settings.storage.spool_dir / "incoming").iterdir()) == []


def test_a_stow_request_it_cannot_take_gets_a_clear_http_error(start_node) -> None:
    node = start_node(stow_port=0, api_token=TOKEN)
    body = _body([factories.encode(factories.radiograph())])
    assert _post(node, body, token=None)[0] == 401
    assert _post(node, body, token="wrong")[0] == 401
    status, answer = _post(node, body, kind="application/dicom")
    assert status == 415 and "multipart/related" in answer["error"]
    assert _post(node, body, path="/dicom-web/series")[0] == 404
    status, answer = _post(node, body[:-40])  # cut short: the last part never closes
    assert status == 400 and "not closed" in answer["error"]
    assert rows(node.engine, Instance) == []


def test_multipart_parsing() -> None:
    assert boundary_of('multipart/related; type="application/dicom"; boundary="x y"') == "x y"
    with pytest.raises(StowRequestError):
        boundary_of("multipart/related; boundary=abc; type=application/json")
    body = _body([b"one", b"two\r\n--not-it"], "abc")
    assert [body[s:e] for _, s, e in parts(body, "abc")] == [b"one", b"two\r\n--not-it"]


def test_the_stow_endpoint_needs_a_token(make_settings) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="CXR_STOW_PORT needs CXR_API_TOKEN"):
        make_settings(stow_port=8081)


@pytest.mark.slow
def test_orthanc_stows_a_study_into_the_node(start_node, tmp_path) -> None:
    """A real DICOMweb client: Orthanc's plugin posts a study to the node by STOW-RS."""
    from tests.orthanc import Orthanc

    node = start_node(stow_port=0, api_token=TOKEN, quiet_seconds=0.5)
    orthanc = Orthanc(
        tmp_path / "orthanc",
        node.listener.port,
        dicomweb=True,
        node_http_port=node.stow.port,
        config={
            "DicomWeb": {
                "Enable": True,
                "Root": "/dicom-web/",
                "Servers": {
                    "cxr": {
                        "Url": "http://127.0.0.1:8043/dicom-web/",
                        "HttpHeaders": {"Authorization": f"Bearer {TOKEN}"},
                    }
                },
            }
        },
    )
    orthanc.start()
    try:
        study = generate_uid()
        sent = [factories.radiograph(study_uid=study, seed=n) for n in (1, 2)]
        for ds in sent:
            uploaded = orthanc.post("/instances", factories.encode(ds))
        job = orthanc.post(
            "/dicom-web/servers/cxr/stow",
            json.dumps({"Resources": [uploaded["ParentStudy"]]}).encode(),
        )
        assert "error" not in json.dumps(job).lower(), job
        received = {i.sop_instance_uid for i in rows(node.engine, Instance)}
        assert received == {ds.SOPInstanceUID for ds in sent}
        wait_for(lambda: rows(node.engine, Study)[0].state in ("complete", "queueing", "queued"))
        assert {a.calling_ae for a in rows(node.engine, Association)} == {STOW_CALLER}
    finally:
        orthanc.stop()
