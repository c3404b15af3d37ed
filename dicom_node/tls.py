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
    ca: Path | None = None, *, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """Build a sender's TLS context: trust ``ca`` and optionally present ``cert``/``key``."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca) if ca else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # DICOM peers are addressed by IP and AE title; certificates rarely carry the host name.
    ctx.check_hostname = False
    if cert is not None:
        ctx.load_cert_chain(certfile=str(cert), keyfile=str(key) if key else None)
    return ctx
