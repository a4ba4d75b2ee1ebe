"""The audit trail of a running kuva, SQLite and PostgreSQL: syslog receivers on
loopback (RFC 5426 UDP; RFC 5425 TLS with mutual authentication, certificates made
here) receive the DICOM Audit Messages of its start and stop, of C-STORE (one per
study and association), C-FIND, a refused association and an HL7 merge; a
repository that is down at first gets every message once it is up; the local
trail verifies."""

from __future__ import annotations

import base64
import ssl
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kuva.audit.syslog import PRI, SyslogSender, syslog_message
from kuva.config import AuditSettings
from tests.support.hl7 import MERGED, SURVIVOR, Hl7Site, adt, mrg, msa, pid
from tests.support.peers import LOOPBACK, dcmtk_available, echoscu, free_port
from tests.support.server import KuvaServer
from tests.support.syslog import (
    Pki,
    SyslogMessage,
    TlsSyslogReceiver,
    UdpSyslogReceiver,
    make_pki,
)

CT = "1.2.840.10008.5.1.4.1.1.2"
NODES = [{"ae_title": "STORESCU"}, {"ae_title": "FINDSCU"}]
WHEN = datetime(2026, 11, 28, 9, 30, tzinfo=UTC)
XML = "<AuditMessage>ä</AuditMessage>"

dcmtk = pytest.mark.skipif(not dcmtk_available(), reason="dcmtk not installed")


@pytest.fixture
def udp() -> Iterator[UdpSyslogReceiver]:
    receiver = UdpSyslogReceiver()
    yield receiver
    receiver.close()


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


def _tls_settings(pki: Pki, port: int, *, client_cert: bool = True) -> dict[str, str]:
    settings = {"repository": f"tls://{LOOPBACK}:{port}", "ca_file": str(pki.ca)}
    if client_cert:
        settings |= {"cert_file": str(pki.client_cert), "key_file": str(pki.client_key)}
    return settings


def _participant_ids(message: SyslogMessage) -> list[str | None]:
    return [p.get("UserID") for p in message.root.iter("ActiveParticipant")]


# ---------------------------------------------------------------- the sender alone


def test_rfc5424_message() -> None:
    data = syslog_message(XML, timestamp=WHEN, hostname="node 1", procid=42)
    assert data == (
        b"<85>1 2026-11-28T09:30:00.000000Z node_1 kuva 42 IHE+RFC-3881 - \xef\xbb\xbf"
        + XML.encode()
    )
    assert PRI == 85


def test_udp_sender(udp: UdpSyslogReceiver) -> None:
    SyslogSender(AuditSettings(repository=f"udp://{LOOPBACK}:{udp.port}")).send(XML, WHEN)
    (message,) = udp.messages if udp.messages else _wait(udp)
    assert message.xml.decode() == XML
    assert (message.pri, message.version, message.msgid) == ("85", "1", "IHE+RFC-3881")


def _wait(receiver: UdpSyslogReceiver | TlsSyslogReceiver) -> list[SyslogMessage]:
    import time

    deadline = time.monotonic() + 5
    while not receiver.messages and time.monotonic() < deadline:
        time.sleep(0.02)
    return receiver.messages


def test_tls_sender_octet_counting_and_mutual_authentication(pki: Pki) -> None:
    receiver = TlsSyslogReceiver(pki.server_context())
    try:
        sender = SyslogSender(AuditSettings(**_tls_settings(pki, receiver.port)))
        sender.send(XML, WHEN)
        sender.send(XML + " " * 70000, WHEN)  # larger than any datagram
        _wait(receiver)
        assert [len(m.xml) for m in receiver.messages][:1] == [len(XML.encode())]
        # Without a client certificate the repository refuses the session.
        anonymous = SyslogSender(
            AuditSettings(**_tls_settings(pki, receiver.port, client_cert=False))
        )
        with pytest.raises(OSError):
            anonymous.send(XML, WHEN)
    finally:
        receiver.close()
    assert len(receiver.messages) == 2


def test_tls_sender_refuses_a_repository_of_another_ca(pki: Pki, tmp_path: Path) -> None:
    other = make_pki(tmp_path / "other")
    receiver = TlsSyslogReceiver(other.server_context(require_client_cert=False))
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            SyslogSender(AuditSettings(**_tls_settings(pki, receiver.port))).send(XML, WHEN)
    finally:
        receiver.close()
    assert receiver.messages == []


# ---------------------------------------------------------------- a running kuva


@dcmtk
@pytest.mark.dcmtk
def test_a_running_archive_audits_over_udp(
    kuva_server: Callable[..., KuvaServer],
    database_url: str,
    tmp_path: Path,
    udp: UdpSyslogReceiver,
) -> None:
    server = kuva_server(
        nodes=NODES,
        extra={"audit": {"repository": f"udp://{LOOPBACK}:{udp.port}", "source_id": "KUVA-TEST"}},
    )
    site = Hl7Site(server, database_url, tmp_path)
    (started,) = udp.wait_for("110100")
    assert started.root.find("EventIdentification/EventTypeCode").get("csd-code") == "110120"  # type: ignore[union-attr]
    assert started.root.find("AuditSourceIdentification").get("AuditSourceID") == "KUVA-TEST"  # type: ignore[union-attr]
    assert started.timestamp.endswith("Z")

    # C-STORE: one message per study and association, at its release.
    kept = site.store(SURVIVOR, n=3)
    merged = site.store(MERGED, n=1)
    transfers = udp.wait_for("110104", 2)
    by_study = {
        m.root.find("ParticipantObjectIdentification").get("ParticipantObjectID"): m  # type: ignore[union-attr]
        for m in transfers
    }
    assert set(by_study) == {kept, merged}
    transfer = by_study[kept]
    assert transfer.root.find("EventIdentification").get("EventOutcomeIndicator") == "0"  # type: ignore[union-attr]
    assert _participant_ids(transfer) == ["STORESCU", "KUVA"]
    sop_class = transfer.root.find("ParticipantObjectIdentification/SOPClass")
    assert sop_class is not None and sop_class.attrib == {"UID": CT, "NumberOfInstances": "3"}
    patient = transfer.root.findall("ParticipantObjectIdentification")[1]
    assert patient.get("ParticipantObjectID", "").startswith(SURVIVOR)

    # C-FIND: one message per request, with its identifier.
    site.find_study(kept)
    (query,) = udp.wait_for("110112")
    identifier = base64.b64decode(query.root.findtext(".//ParticipantObjectQuery") or "")
    assert kept.encode() in identifier
    assert _participant_ids(query) == ["FINDSCU", "KUVA"]

    # A calling AE title that is not a node: refused and alerted.
    assert echoscu(LOOPBACK, server.dicom_port, aet="INTRUDER", aec="KUVA").returncode != 0
    (alert,) = udp.wait_for("110113")
    assert alert.root.find("EventIdentification/EventTypeCode").get("csd-code") == "110126"  # type: ignore[union-attr]
    assert alert.root.find("EventIdentification").get("EventOutcomeIndicator") == "4"  # type: ignore[union-attr]
    assert _participant_ids(alert)[0] == "INTRUDER"

    # HL7 A40: a Patient Record update.
    ack = site.mllp_send(adt("A40", pid(SURVIVOR), mrg(MERGED), control="AUDIT-1"))
    assert msa(ack) == ("AA", "AUDIT-1")
    (record,) = udp.wait_for("110110")
    assert record.root.find("EventIdentification").get("EventActionCode") == "U"  # type: ignore[union-attr]
    assert _participant_ids(record)[0] == "RIS|TESTSAIRAALA"

    assert server.stop() == 0
    stops = [
        m
        for m in udp.wait_for("110100", 2)
        if m.root.find("EventIdentification/EventTypeCode").get("csd-code") == "110121"  # type: ignore[union-attr]
    ]
    assert len(stops) == 1
    result = server.kuva("audit", "verify")
    assert "audit trail intact: 7 record(s)" in result.stdout
    # No names and no identity codes in the log.
    log = server.log()
    assert "Testinen" not in log and SURVIVOR not in log


def test_a_repository_down_at_first_gets_every_message(
    kuva_server: Callable[..., KuvaServer], pki: Pki
) -> None:
    port = free_port()
    server = kuva_server(extra={"audit": _tls_settings(pki, port)})
    server.stop()  # start and stop recorded; the repository is not there yet
    server.start()
    receiver = TlsSyslogReceiver(pki.server_context(), port=port)
    try:
        messages = receiver.wait_for("110100", 3, timeout=30)
        types = sorted(
            m.root.find("EventIdentification/EventTypeCode").get("csd-code")  # type: ignore[union-attr]
            for m in messages
        )
        assert types[:3] == ["110120", "110120", "110121"]
    finally:
        receiver.close()
    failed = server.kuva("tasks", "list", "--failed", "--plain").stdout
    assert failed == ""
