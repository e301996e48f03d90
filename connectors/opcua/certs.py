"""The OPC-UA client certificate (`l4e-agent opcua-cert`): a self-signed pair asyncua generates."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

# --------------------------------------------------------------------------------------------- certificates


def make_client_certificate(
    cert_path: Path, key_path: Path, application_uri: str | None = None, hostname: str | None = None
) -> None:
    """Create a self-signed client certificate (DER, valid 365 days) and its private key (PEM, mode 0600).

    Existing files are kept when they still match ``application_uri`` and ``hostname`` (asyncua regenerates
    only a missing or mismatched pair). Defaults: hostname = this host, application_uri =
    ``urn:l4e-agent:<hostname>``. The server must trust the certificate (most servers put it in a "rejected"
    folder on first contact for an administrator to accept). Synchronous (for the CLI): it runs its own event
    loop, so call it from a thread when a loop is already running.
    """
    from asyncua.crypto.cert_gen import setup_self_signed_certificate
    from cryptography.x509.oid import ExtendedKeyUsageOID

    host = hostname or socket.gethostname()
    uri = application_uri or f"urn:l4e-agent:{host}"
    cert_path, key_path = Path(cert_path), Path(key_path)
    for path in (cert_path, key_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    old_umask = os.umask(0o077)  # the key is written by asyncua: make it private from the start
    try:
        asyncio.run(
            setup_self_signed_certificate(
                key_path, cert_path, uri, host, [ExtendedKeyUsageOID.CLIENT_AUTH], {"organizationName": "l4e-agent"}
            )
        )
    finally:
        os.umask(old_umask)
    key_path.chmod(0o600)
