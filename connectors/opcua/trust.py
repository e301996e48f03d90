"""Who the OPC-UA server is: its certificate pinned on first use, or checked against a trust list.

Contract
    With a secured policy (anything but None) every session's server certificate is checked by
    :meth:`ServerTrust.check`, called from asyncua's ``certificate_validator`` hook inside CreateSession:
    after the secure channel is open (the server has proved it holds the certificate's private key, and
    asyncua has verified its signature over our nonce) and BEFORE ActivateSession, the only request that
    carries the user name and password. A refused certificate therefore never sees the credentials.

Trusted certificates (read again at every check, so a change needs no restart)
    - ``security.server_certificate``: one file or a list (DER or PEM; a PEM file may hold several);
    - ``security.trust_dir``: every ``*.der``, ``*.cer``, ``*.crt`` and ``*.pem`` file in that folder;
    - the accepted one, ``<state-dir>/trust/<source>.der``: pinned on first use, or written by
      ``l4e-agent probe CONFIG --source NAME --accept-certificate FINGERPRINT``.

    When no trust list is configured, none is accepted yet and ``trust_on_first_use`` is true (the default),
    the presented certificate is pinned (written atomically to ``<state-dir>/trust/<source>.der``; in memory
    only when the connector has no state folder, or the write fails) and logged once at INFO with its SHA-256
    fingerprint. A configured trust list is never extended by a first use. Any other
    certificate later raises :class:`UntrustedServer` naming both fingerprints; the connector keeps retrying
    with its backoff, so accepting the new certificate restores the data without a restart.

Fingerprints are SHA-256 over the DER certificate, printed as ``SHA256:AB:CD:...`` (the form of
``openssl x509 -noout -fingerprint -sha256 -in CERT``); :func:`parse_fingerprint` accepts it with or
without the prefix, colons, spaces or upper case.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from agent.core.atomic import write_atomic
from agent.core.errors import ConnectionLost, ConnectorError

_logger = logging.getLogger("connectors.opcua")
_TRUST_SUFFIXES = (".der", ".cer", ".crt", ".pem")
_PEM_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


class UntrustedServer(ConnectionLost):
    """The server presented a certificate that is not trusted; no credentials were sent. Retriable."""

    def __init__(self, message: str, presented: str, trusted: list[str]) -> None:
        super().__init__(message)
        self.presented = presented
        self.trusted = trusted


# --------------------------------------------------------------------------------------------- certificates


def fingerprint(der: bytes) -> str:
    """``SHA256:AB:CD:…`` of a DER certificate."""
    digest = hashlib.sha256(der).hexdigest().upper()
    return "SHA256:" + ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def parse_fingerprint(text: str) -> str:
    """The canonical ``SHA256:AB:…`` form of a typed fingerprint; ValueError names what is wrong."""
    hex_part = re.sub(r"[\s:]", "", text.strip())
    if hex_part.lower().startswith("sha256"):
        hex_part = hex_part[6:]
    if not re.fullmatch(r"[0-9A-Fa-f]{64}", hex_part):
        raise ValueError(f"not a SHA-256 fingerprint: {text!r} (64 hex digits, e.g. as `l4e-agent probe` prints it)")
    digest = hex_part.upper()
    return "SHA256:" + ":".join(digest[i : i + 2] for i in range(0, 64, 2))


def first_certificate(der: bytes) -> bytes:
    """The leading certificate of a DER blob that may carry its chain after it (servers do send that)."""
    if len(der) < 2 or der[0] != 0x30:
        return der
    length = der[1]
    if length < 0x80:
        return der[: 2 + length]
    count = length & 0x7F
    return der[: 2 + count + int.from_bytes(der[2 : 2 + count], "big")]


def load_certificates(path: Path) -> list[bytes]:
    """DER bytes of every certificate in a DER or PEM file; ConnectionLost (retriable) names the file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConnectionLost(f"cannot read trusted server certificate {path}: {exc.strerror or exc}") from exc
    return parse_certificates(path, data)


def parse_certificates(path: Path, data: bytes) -> list[bytes]:
    """DER bytes of every certificate in ``data`` (DER or PEM, read from ``path``, named in errors)."""
    try:
        if b"-----BEGIN" in data:
            certs = [x509.load_pem_x509_certificate(block) for block in _PEM_BLOCK.findall(data)]
        else:
            certs = [x509.load_der_x509_certificate(first_certificate(data))]
    except ValueError as exc:
        raise ConnectionLost(f"trusted server certificate {path} is not a DER or PEM certificate ({exc})") from exc
    if not certs:
        raise ConnectionLost(f"trusted server certificate {path} holds no certificate")
    return [cert.public_bytes(Encoding.DER) for cert in certs]


def describe(der: bytes) -> str:
    """``SHA256:… (CN=…, valid until 2027-01-01)`` for logs and probe output."""
    text = fingerprint(der)
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return text
    return f"{text} ({cert.subject.rfc4514_string() or 'no subject'}, valid until {cert.not_valid_after_utc:%Y-%m-%d})"


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a synced temporary file and a rename: never a torn certificate.

    When run as root (``l4e-agent probe --accept-certificate`` under sudo), the folder and file are handed
    to the owner of the state folder, so that the service's own user can still replace them later.
    """
    path.parent.mkdir(parents=True, exist_ok=True)

    def prepare(tmp: Path) -> None:
        os.chmod(tmp, 0o644)
        if os.geteuid() == 0:
            owner = path.parent.parent.stat()
            for item in (path.parent, tmp):
                os.chown(item, owner.st_uid, owner.st_gid)

    write_atomic(path, data, prepare=prepare)


# --------------------------------------------------------------------------------------------- trust


@dataclass
class Verdict:
    """What the last check saw: the presented certificate and how it was judged."""

    der: bytes
    fingerprint: str
    status: str  # "trusted" | "pinned now" | "first use" | "untrusted" | "not checked"
    where: str  # where the matching trusted certificate lives, or what is trusted instead

    def line(self) -> str:
        """One line for ``probe``."""
        return f"server certificate {describe(self.der)}: {self.status} ({self.where})"


class ServerTrust:
    """The trust state of one source's server certificate (see the module docstring).

    ``source`` names the source in messages and in the pin file; ``configured`` are the resolved
    ``server_certificate`` paths, ``trust_dir`` the resolved folder (or None); ``stats`` (a SourceStats)
    gets ``untrusted`` set to the reason while the server is refused and None once it is trusted.
    """

    def __init__(
        self,
        source: str,
        configured: Iterable[Path] = (),
        trust_dir: Path | None = None,
        *,
        first_use: bool = True,
        state_dir: Path | None = None,
        stats: Any = None,
    ) -> None:
        self.source = source
        self.configured = list(configured)
        self.trust_dir = trust_dir
        self.first_use = first_use
        self.state_dir = state_dir
        self.stats = stats
        self.last: Verdict | None = None
        self._memory_pin: bytes | None = None  # without a state folder (or when writing it failed)

    @property
    def pin_path(self) -> Path | None:
        return None if self.state_dir is None else self.state_dir / "trust" / f"{self.source}.der"

    def trusted(self) -> dict[str, str]:
        """Fingerprint → where it is trusted from, read from disk now."""
        out: dict[str, str] = {}
        for path in self.configured:
            for der in load_certificates(path):
                out.setdefault(fingerprint(der), f"server_certificate {path}")
        if self.trust_dir is not None:
            try:
                files = sorted(p for p in self.trust_dir.iterdir() if p.suffix.lower() in _TRUST_SUFFIXES)
            except OSError as exc:
                raise ConnectionLost(f"cannot read trust_dir {self.trust_dir}: {exc.strerror or exc}") from exc
            for path in files:
                for der in load_certificates(path):
                    out.setdefault(fingerprint(der), f"trust_dir {path}")
        pin = self.pin_path
        if pin is not None:
            try:
                data = pin.read_bytes()
            except FileNotFoundError:
                data = None
            except OSError as exc:  # unreadable: refuse rather than pin anew over it
                raise ConnectionLost(f"cannot read the pinned server certificate {pin}: {exc.strerror or exc}") from exc
            if data is not None:
                for der in parse_certificates(pin, data):
                    out.setdefault(fingerprint(der), f"accepted in {pin}")
        if self._memory_pin is not None:
            out.setdefault(fingerprint(self._memory_pin), "pinned in memory for this run")
        return out

    def check(self, der: bytes, *, pin: bool = True) -> Verdict:
        """Judge the presented certificate; raises UntrustedServer when it is not trusted.

        ``pin=False`` (``probe``) never writes: a first use is reported, not pinned.
        """
        der = first_certificate(der)
        fp = fingerprint(der)
        trusted = self.trusted()
        if fp in trusted:
            verdict = Verdict(der, fp, "trusted", trusted[fp])
        elif not trusted and self.first_use and not self.configured and self.trust_dir is None:
            verdict = self._pin(der, fp) if pin else Verdict(der, fp, "first use", "not pinned yet")
        else:
            self.last = Verdict(der, fp, "untrusted", _trusted_list(trusted))
            message = self._refusal(der, trusted)
            if self.stats is not None:
                self.stats.untrusted = message
            raise UntrustedServer(message, fp, list(trusted))
        self.last = verdict
        if self.stats is not None and self.stats.untrusted is not None:
            self.stats.untrusted = None
            _logger.info("OPC-UA source %s: server certificate %s is trusted again", self.source, fp)
        return verdict

    def accept(self, der: bytes) -> Path:
        """Store ``der`` as this source's accepted certificate (replacing an older pin); returns the file."""
        path = self.pin_path
        if path is None:
            raise ConnectorError(f"source {self.source}: no state folder to store the accepted certificate in")
        try:
            write_atomically(path, first_certificate(der))
        except OSError as exc:
            raise ConnectorError(f"source {self.source}: cannot write {path}: {exc}") from exc
        return path

    def validator(self, *, pin: bool = True):
        """An asyncua ``certificate_validator``: runs :meth:`check` inside CreateSession."""

        async def validate(cert: x509.Certificate, _application: Any) -> None:
            self.check(cert.public_bytes(Encoding.DER), pin=pin)

        return validate

    def recorder(self):
        """An asyncua ``certificate_validator`` for policy None: notes the certificate, checks nothing."""

        async def record(cert: x509.Certificate, _application: Any) -> None:
            der = cert.public_bytes(Encoding.DER)
            self.last = Verdict(der, fingerprint(der), "not checked", "security policy None proves no identity")

        return record

    # ---- internals

    def _pin(self, der: bytes, fp: str) -> Verdict:
        path = self.pin_path
        where = "in memory for this run (no state folder)"
        stored = False
        if path is not None:
            try:
                write_atomically(path, der)
                where, stored = f"in {path}", True
            except OSError as exc:  # trusted for this run; the next start pins again
                where = f"in memory for this run: cannot write {path} ({exc.strerror or exc})"
        if not stored:
            self._memory_pin = der
        _logger.info(
            "OPC-UA source %s: pinned the server certificate %s %s on first use; a different certificate "
            "will be refused",
            self.source,
            describe(der),
            where,
        )
        return Verdict(der, fp, "pinned now", where)

    def _refusal(self, der: bytes, trusted: dict[str, str]) -> str:
        fp = fingerprint(der)
        if trusted:
            what = f"the trusted one is {_trusted_list(trusted)}"
        elif self.configured or self.trust_dir is not None:
            what = "the trust list (server_certificate, trust_dir) is empty"
        else:
            what = "no certificate is trusted yet and trust_on_first_use is false"
        return (
            f"server certificate not trusted: the server presents {describe(der)}, {what}; refused before "
            f"sending any credentials. If the server's certificate was replaced on purpose, accept it: "
            f"l4e-agent probe <asset file> --source {self.source} --accept-certificate {fp}"
        )


async def endpoint_certificate(endpoint: str, policy_uri: str, mode: Any, timeout: float) -> bytes:
    """The certificate the server lists for (policy, mode), read over an unsecured discovery channel.

    Sends GetEndpoints only: no session, no credentials. Used to accept a certificate by its fingerprint.
    """
    from asyncua import Client

    client = Client(endpoint, timeout=timeout)
    async with asyncio.timeout(timeout * 2):
        endpoints = await client.connect_and_get_server_endpoints()
    chosen = Client.find_endpoint(endpoints, mode, policy_uri)
    return first_certificate(chosen.ServerCertificate or b"")


def _trusted_list(trusted: dict[str, str]) -> str:
    return ", ".join(f"{fp} ({where})" for fp, where in trusted.items()) or "none"


__all__ = [
    "ServerTrust",
    "UntrustedServer",
    "Verdict",
    "describe",
    "endpoint_certificate",
    "fingerprint",
    "first_certificate",
    "load_certificates",
    "parse_fingerprint",
]
