"""DICOM TLS with dcmtk's storescu and our own sender, certificates made by the test."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from dicom_node.addresses import Destination
from dicom_node.sender import AssociationFailed, SenderOptions, echo
from dicom_node.tls import client_context
from tests import factories
from tests.certs import make_pki
from tests.helpers import rows, wait_for
from tests.services import require
from worker.db.models import Association, Instance, Rejection


@pytest.fixture
def pki(tmp_path: Path):
    d = tmp_path / "pki"
    d.mkdir()
    return make_pki(d)


def _storescu(port: int, path: Path, *tls: str) -> subprocess.CompletedProcess[str]:
    require(Path("/usr/bin/storescu").exists(), "dcmtk storescu is not installed")
    return subprocess.run(
        [
            "/usr/bin/storescu",  # dcmtk's, not the one pynetdicom puts in the venv
            "-aet",
            "MODALITY",
            "-aec",
            "CXR_TRIAGE",
            *tls,
            "127.0.0.1",
            str(port),
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={"TCP_NODELAY": "1"},
    )


@pytest.mark.dcmtk
def test_storescu_with_trusted_client_certificate(start_node, pki, tmp_path) -> None:
    node = start_node(
        tls_cert=pki.server_cert, tls_key=pki.server_key, tls_ca=pki.ca, tls_verify_client=True
    )
    ds = factories.radiograph()
    path = factories.write(ds, tmp_path / "cr.dcm")
    tls = ["+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.ca)]
    proc = _storescu(node.listener.port, path, *tls)
    assert proc.returncode == 0, proc.stderr
    (inst,) = rows(node.engine, Instance)
    assert inst.sop_instance_uid == ds.SOPInstanceUID and inst.eligible
    (assoc,) = rows(node.engine, Association)
    assert assoc.tls and assoc.calling_ae == "MODALITY"


@pytest.mark.dcmtk
def test_storescu_without_client_certificate_is_refused(start_node, pki, tmp_path) -> None:
    node = start_node(
        tls_cert=pki.server_cert, tls_key=pki.server_key, tls_ca=pki.ca, tls_verify_client=True
    )
    path = factories.write(factories.radiograph(), tmp_path / "cr.dcm")
    proc = _storescu(node.listener.port, path, "+tla", "+cf", str(pki.ca))
    assert proc.returncode != 0
    rogue = ["+tls", str(pki.rogue_key), str(pki.rogue_cert), "+cf", str(pki.ca)]
    assert _storescu(node.listener.port, path, *rogue).returncode != 0
    assert rows(node.engine, Instance) == []
    rejected = wait_for(lambda: rows(node.engine, Rejection), timeout=10)
    assert all("TLS handshake failed" in r.reason for r in rejected)
    # Plain TCP to a TLS port is refused too.
    assert _storescu(node.listener.port, path).returncode != 0


def test_our_sender_over_tls(start_node, pki) -> None:
    node = start_node(
        tls_cert=pki.server_cert, tls_key=pki.server_key, tls_ca=pki.ca, tls_verify_client=True
    )
    target = Destination("CXR_TRIAGE", "127.0.0.1", node.listener.port)
    good = SenderOptions(
        calling_ae="SCU",
        ssl_context=client_context(pki.ca, cert=pki.client_cert, key=pki.client_key),
    )
    assert echo(target, good) == 0
    anonymous = SenderOptions(calling_ae="SCU", ssl_context=client_context(pki.ca))
    with pytest.raises(AssociationFailed):
        echo(target, anonymous)


def test_outbound_tls_from_settings(start_node, make_settings, pki) -> None:
    """Deliveries, replay, send and echo take TLS from CXR_SEND_TLS_*: the same options."""
    pacs = start_node(
        tls_cert=pki.server_cert, tls_key=pki.server_key, tls_ca=pki.ca, tls_verify_client=True
    )
    target = Destination("CXR_TRIAGE", "127.0.0.1", pacs.listener.port)
    plain = make_settings()
    with pytest.raises(AssociationFailed):
        echo(target, plain.sender_options(acse_timeout=5))
    tls = make_settings(
        send_tls=True,
        send_tls_ca=pki.ca,
        send_tls_cert=pki.client_cert,
        send_tls_key=pki.client_key,
    )
    assert echo(target, tls.sender_options()) == 0
    (assoc,) = wait_for(lambda: rows(pacs.engine, Association), timeout=5)
    assert assoc.tls and assoc.calling_ae == "CXR_TRIAGE"


def test_outbound_tls_checks_the_name_and_trusts_only_what_it_is_given(
    start_node, make_settings, tmp_path
) -> None:
    """A PACS whose certificate names another host is refused unless the check is turned off."""
    (tmp_path / "other").mkdir()
    other = make_pki(tmp_path / "other", server_names=("pacs.example.org",))
    pacs = start_node(tls_cert=other.server_cert, tls_key=other.server_key)
    target = Destination("CXR_TRIAGE", "127.0.0.1", pacs.listener.port)
    checked = make_settings(send_tls=True, send_tls_ca=other.ca)
    with pytest.raises(AssociationFailed):
        echo(target, checked.sender_options(acse_timeout=5))
    unchecked = make_settings(send_tls=True, send_tls_ca=other.ca, send_tls_verify_hostname=False)
    assert echo(target, unchecked.sender_options()) == 0
    # The configured CA replaces the system store; the system's CAs only when asked for.
    assert len(client_context(other.ca).get_ca_certs()) == 1
    with pytest.raises(ValueError, match="CXR_SEND_TLS_SYSTEM_CA"):
        make_settings(send_tls=True)
    assert make_settings(send_tls=True, send_tls_system_ca=True).sender_options().ssl_context
