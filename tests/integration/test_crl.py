"""Client certificates checked against a CRL (``[tls] crl_file``), read again when it
changes, on a real ``kuva serve`` with mutual TLS on HTTP and HL7.

Organisation A's certificate works; the CA publishes a CRL revoking it and within
seconds A's handshakes are refused (and audited as a node authentication failure)
on both listeners while B's go on; a newer CRL without A lets A in again.
"""

from __future__ import annotations

import base64
import datetime as dt
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from lxml import etree
from sqlalchemy import text

from kuva.config import TlsSettings
from kuva.index.database import make_engine
from kuva.tls import server_context
from tests.support.peers import LOOPBACK
from tests.support.pki import Identity, make_mutual_tls_pki
from tests.support.server import KuvaServer

ORG_A = "1.2.246.10.12345678.10"
ORG_B = "1.2.246.10.87654321.10"


def _get(server: KuvaServer, identity: Identity, ca: Path) -> int:
    with httpx.Client(
        base_url=server.http, verify=identity.client_context(ca), timeout=10
    ) as client:
        return client.get("/dicom-web/studies").status_code


def _hl7_handshake(server: KuvaServer, identity: Identity, ca: Path) -> bool:
    """Whether an MLLP-over-TLS connection with ``identity`` gets through (kuva
    closes a refused one; reading then fails or returns nothing)."""
    context = identity.client_context(ca)
    try:
        with (
            socket.create_connection((LOOPBACK, server.hl7_port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as sock,
        ):
            sock.settimeout(2)
            # TLS 1.3: the client's certificate is judged after the client's
            # handshake ends; a refusal shows on the first read.
            sock.sendall(b"\x0bMSH|^~\\&|RIS\r\x1c\r")
            return bool(sock.recv(1024))
    except (ssl.SSLError, OSError):
        return False


def _alerts(database_url: str) -> list[str]:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT message FROM audit_record WHERE event_id = '110113' ORDER BY seq")
            ).all()
    finally:
        engine.dispose()
    found = []
    for (message,) in rows:
        for detail in etree.fromstring(str(message).encode()).iter("ParticipantObjectDetail"):
            found.append(base64.b64decode(detail.get("value", "")).decode())
    return found


def _eventually(check: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


def test_a_revoked_certificate_is_refused_once_the_crl_changes(
    kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path
) -> None:
    pki = make_mutual_tls_pki(tmp_path / "pki")
    crl = tmp_path / "pki" / "crl.pem"
    pki.authority.write_crl(crl, [], age=dt.timedelta(minutes=10))
    server = kuva_server(
        organizations=[
            {"oid": ORG_A, "name": "A", "certificates": [pki.hospital_a.subject]},
            {"oid": ORG_B, "name": "B", "certificates": [pki.hospital_b.subject]},
        ],
        extra={
            "tls": {**pki.tls_section(), "crl_file": str(crl), "crl_check_seconds": 0.5},
            "http": {"tls": True},
            "hl7": {"tls": True},
        },
        client_tls=pki.hospital_a.client_context(pki.ca),
    )
    assert _get(server, pki.hospital_a, pki.ca) == 200
    assert _hl7_handshake(server, pki.hospital_a, pki.ca)

    pki.authority.write_crl(crl, [pki.hospital_a], age=dt.timedelta(minutes=5))

    def refused() -> bool:
        try:
            _get(server, pki.hospital_a, pki.ca)
        except httpx.TransportError:
            return True
        return False

    assert _eventually(refused), "A's revoked certificate was still taken"
    assert not _hl7_handshake(server, pki.hospital_a, pki.ca)
    assert _get(server, pki.hospital_b, pki.ca) == 200
    assert _hl7_handshake(server, pki.hospital_b, pki.ca)
    assert _eventually(lambda: any("revoked" in alert for alert in _alerts(database_url)))

    # The revocation lifted by a newer CRL: A is let in again.
    pki.authority.write_crl(crl, [], age=dt.timedelta(minutes=1))
    assert _eventually(lambda: not refused())
    assert "CRL" in server.log() and "read again" in server.log()


def test_an_unreadable_crl_stops_the_start(tmp_path: Path) -> None:
    pki = make_mutual_tls_pki(tmp_path / "pki")
    bad = tmp_path / "crl.pem"
    bad.write_text("not a CRL")
    with pytest.raises(ValueError, match="crl_file"):
        server_context(TlsSettings.model_validate({**pki.tls_section(), "crl_file": str(bad)}))
