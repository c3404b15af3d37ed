"""TLS contexts for DICOM associations (PS3.15 Annex B, TLS 1.2 or newer)."""

from __future__ import annotations

import ssl
from pathlib import Path


def server_context(
    cert: Path, key: Path, *, ca: Path | None = None, verify_client: bool = False
) -> ssl.SSLContext:
    """Build the listener's TLS context.

    Parameters
    ----------
    cert, key : pathlib.Path
        PEM server certificate (chain) and private key.
    ca : pathlib.Path, optional
        PEM bundle of CAs trusted to sign client certificates.
    verify_client : bool
        Require a client certificate signed by ``ca``; handshakes without one fail.
    """
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile=str(cert), keyfile=str(key))
    if verify_client:
        if ca is None:
            raise ValueError("verify_client needs a CA bundle (CXR_TLS_CA)")
        ctx.verify_mode = ssl.CERT_REQUIRED
    if ca is not None:
        ctx.load_verify_locations(cafile=str(ca))
    return ctx


def client_context(
    ca: Path | None = None,
    *,
    cert: Path | None = None,
    key: Path | None = None,
    verify_hostname: bool = True,
    system_ca: bool = False,
) -> ssl.SSLContext:
    """Build a sender's TLS context.

    Parameters
    ----------
    ca : pathlib.Path, optional
        PEM bundle trusted to sign the destinations' certificates. It replaces the system store:
        a hospital's PACS is signed by its own CA, and a public CA vouching for an address on
        the hospital network is no assurance.
    cert, key : pathlib.Path, optional
        Our client certificate and key, for destinations that require one.
    verify_hostname : bool
        Check that the destination's certificate names the host we connect to (a DNS name in
        its SANs, or for an address, an IP SAN).
    system_ca : bool
        Trust the system's CAs as well (or alone, when ``ca`` is not given).

    Raises
    ------
    ValueError
        If neither ``ca`` nor ``system_ca`` says whom to trust.
    """
    if ca is None and not system_ca:
        raise ValueError(
            "outbound TLS needs CXR_SEND_TLS_CA (the CA that signs the destinations), "
            "or CXR_SEND_TLS_SYSTEM_CA=true to trust the system's CAs"
        )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = verify_hostname
    if system_ca:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if ca is not None:
        ctx.load_verify_locations(cafile=str(ca))
    if cert is not None:
        ctx.load_cert_chain(certfile=str(cert), keyfile=str(key) if key else None)
    return ctx
