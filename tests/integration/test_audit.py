"""The audit trail of a running kuva, SQLite and PostgreSQL: syslog receivers on
loopback (RFC 5426 UDP; RFC 5425 TLS with mutual authentication, certificates made
here) receive the DICOM Audit Messages of its start and stop, of C-STORE (one per
study and association), C-FIND, a refused association and an HL7 merge; a
repository that is down at first gets every message once it is up; the local
trail verifies. STOW-RS, QIDO-RS, ITI-18, WADO-RS, WADO-URI and C-GET by the register
holder leave their records in the trail, the queued ones written at SIGTERM at the
latest."""

from __future__ import annotations

import base64
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from lxml import etree
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import Engine, select

from kuva.audit.syslog import PRI, SyslogSender, syslog_message
from kuva.config import LOCAL_ORGANIZATION_OID, AuditSettings
from kuva.index.database import make_engine
from kuva.index.schema import audit_record
from kuva.xds.namespaces import REGISTRY_STORED_QUERY, q
from tests.support.hl7 import MERGED, SURVIVOR, Hl7Site, adt, mrg, msa, pid
from tests.support.peers import LOOPBACK, dcmtk_available, dcmtk_env, echoscu, free_port
from tests.support.server import KuvaServer
from tests.support.synthetic import make_ct_series, write_series
from tests.support.syslog import (
    Pki,
    SyslogMessage,
    TlsSyslogReceiver,
    UdpSyslogReceiver,
    make_pki,
)
from tests.unit.test_ebrim import sample_payload
from tests.unit.test_repository import soap_envelope

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
    # The directory the file seeded at start (services.directory): its nodes added.
    assert udp.wait_for("110113", len(NODES), event_type="110128")

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
    (alert,) = udp.wait_for("110113", event_type="110126")
    assert alert.root.find("EventIdentification/EventTypeCode").get("csd-code") == "110126"  # type: ignore[union-attr]
    assert alert.root.find("EventIdentification").get("EventOutcomeIndicator") == "4"  # type: ignore[union-attr]
    assert _participant_ids(alert)[0] == "INTRUDER"

    # HL7 A40: a Patient Record update.
    ack = site.mllp_send(adt("A40", pid(SURVIVOR), mrg(MERGED), control="AUDIT-1"))
    assert msa(ack) == ("AA", "AUDIT-1")
    (record,) = udp.wait_for("110110")
    assert record.root.find("EventIdentification").get("EventActionCode") == "U"  # type: ignore[union-attr]
    # MSH-3 and MSH-4 (namespace and universal id: the organisation).
    assert _participant_ids(record)[0] == f"RIS|TESTSAIRAALA^{LOCAL_ORGANIZATION_OID}"

    assert server.stop() == 0
    stops = [
        m
        for m in udp.wait_for("110100", 2)
        if m.root.find("EventIdentification/EventTypeCode").get("csd-code") == "110121"  # type: ignore[union-attr]
    ]
    assert len(stops) == 1
    result = server.kuva("audit", "verify")
    assert f"audit trail intact: {7 + len(NODES)} record(s)" in result.stdout
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


# ---------------------------------------------------------------- HTTP and retrieve paths


def _trail_rows(engine: Engine, event_id: str) -> list[etree._Element]:
    with engine.connect() as conn:
        messages = conn.execute(
            select(audit_record.c.message)
            .where(audit_record.c.event_id == event_id)
            .order_by(audit_record.c.seq)
        ).scalars()
        return [etree.fromstring(m.encode()) for m in messages]


def _action(root: etree._Element) -> str | None:
    return root.find("EventIdentification").get("EventActionCode")  # type: ignore[union-attr]


def _event_types(root: etree._Element) -> list[str | None]:
    return [c.get("csd-code") for c in root.iter("EventTypeCode")]


def _poll(check: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not audited in time"
        time.sleep(0.05)


def _stored_query(server: KuvaServer) -> httpx.Response:
    query = sample_payload("iti18-FindDocuments-request.xml")
    for value in query.iter(q("rim", "Value")):
        if value.text and "$patient_id$" in value.text:
            value.text = value.text.replace("$patient_id$", f"{SURVIVOR}^^^&1.2.246.21&ISO")
    return httpx.post(
        server.http + "/xds/registry",
        content=soap_envelope(REGISTRY_STORED_QUERY, query),
        headers={"content-type": "application/soap+xml; charset=UTF-8"},
        timeout=30,
    )


@dcmtk
@pytest.mark.dcmtk
def test_http_and_retrieve_paths_are_audited_and_sigterm_drains_the_queue(
    kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path
) -> None:
    """STOW-RS (written before the answer), QIDO-RS, ITI-18, WADO-RS, WADO-URI and
    C-GET by the register holder itself (queued: 5 s batches here), an HL7 message
    refused with AE, and a SIGTERM that writes what is still queued before the
    process exits."""
    server = kuva_server(extra={"audit": {"batch_seconds": 5}})
    engine = make_engine(database_url)
    try:
        client = DICOMwebClient(url=f"{server.http}/dicom-web")
        study_uid = generate_uid()
        series = make_ct_series(2, rows=16, cols=16, patient_id=SURVIVOR, study_uid=study_uid)
        client.store_instances([dcmread(p) for p in write_series(series, tmp_path / "ct")])
        (stored,) = _trail_rows(engine, "110104")  # written before the STOW-RS answer
        assert _action(stored) == "C"
        assert stored.find("ActiveParticipant").get("UserIsRequestor") == "true"  # type: ignore[union-attr]
        assert (
            stored.find("ParticipantObjectIdentification/SOPClass").get(  # type: ignore[union-attr]
                "NumberOfInstances"
            )
            == "2"
        )

        # Queries and the holder's own retrieves: queued, then written in one batch.
        assert len(client.search_for_studies(search_filters={"PatientID": SURVIVOR})) == 1
        assert _trail_rows(engine, "110112") == []  # still queued
        assert len(client.retrieve_study(study_uid)) == 2
        first = series[0]
        wado_uri = httpx.get(
            f"{server.http}/wado",
            params={
                "requestType": "WADO",
                "studyUID": study_uid,
                "seriesUID": first.SeriesInstanceUID,
                "objectUID": first.SOPInstanceUID,
                "contentType": "application/dicom",
            },
            timeout=30,
        )
        assert wado_uri.status_code == 200, wado_uri.text
        out = tmp_path / "get"
        out.mkdir()
        result = subprocess.run(
            [
                *("getscu", "-S", "-aet", "GETSCU", "-aec", "KUVA", "-od", str(out)),
                *("-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}"),
                *(LOOPBACK, str(server.dicom_port)),
            ],
            capture_output=True,
            text=True,
            env=dcmtk_env(),
            timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert len(list(out.iterdir())) == 2
        assert _stored_query(server).status_code == 200
        # An HL7 merge of the patient into itself: ACK AE, a Patient Record with
        # outcome 4, written with the message's record before the ACK.
        site = Hl7Site(server, database_url, tmp_path)
        ack = site.mllp_send(adt("A40", pid(SURVIVOR), mrg(SURVIVOR), control="AUDIT-AE"))
        assert msa(ack) == ("AE", "AUDIT-AE")
        (refused,) = _trail_rows(engine, "110110")
        assert refused.find("EventIdentification").get("EventOutcomeIndicator") == "4"  # type: ignore[union-attr]
        _poll(lambda: len(_trail_rows(engine, "110112")) == 2)
        _poll(lambda: len(_trail_rows(engine, "110104")) == 4)

        qido, iti18 = _trail_rows(engine, "110112")
        target = base64.b64decode(qido.findtext(".//ParticipantObjectQuery") or "")
        assert target == f"/dicom-web/studies?PatientID={SURVIVOR}".encode()
        assert _event_types(iti18) == ["ITI-18"]
        request = base64.b64decode(iti18.findtext(".//ParticipantObjectQuery") or "")
        assert b"AdhocQueryRequest" in request
        patient = iti18.find("ParticipantObjectIdentification")
        assert patient is not None and patient.get("ParticipantObjectID", "").startswith(SURVIVOR)

        wado, uri, get = _trail_rows(engine, "110104")[1:]
        assert (_action(wado), _event_types(wado)) == ("R", ["RAD-107"])
        assert (_action(uri), _event_types(uri)) == ("R", ["RAD-55"])
        assert (
            uri.find("ParticipantObjectIdentification/SOPClass").get(  # type: ignore[union-attr]
                "NumberOfInstances"
            )
            == "1"
        )
        assert (_action(get), _event_types(get)) == ("R", ["RAD-16"])
        assert [p.get("UserID") for p in get.iter("ActiveParticipant")] == ["KUVA", "GETSCU"]
        for sent in (wado, uri, get):
            ids = [
                p.get("ParticipantObjectID") for p in sent.iter("ParticipantObjectIdentification")
            ]
            assert ids == [study_uid, f"{SURVIVOR}^^^&1.2.246.21&ISO"]

        # The last query is still queued when SIGTERM comes: written before the exit.
        assert len(client.search_for_studies(search_filters={"PatientID": "nobody"})) == 0
        assert len(_trail_rows(engine, "110112")) == 2
        metrics = httpx.get(f"{server.http}/metrics", timeout=10).text
        assert "kuva_audit_queued 1.0" in metrics  # that query
        assert server.stop() == 0
        queries = _trail_rows(engine, "110112")
        assert len(queries) == 3
        stop = _trail_rows(engine, "110100")[-1]
        assert _event_types(stop) == ["110121"]  # the stop is the last record
        result_verify = server.kuva("audit", "verify")
        assert "audit trail intact" in result_verify.stdout
        assert "Testinen" not in server.log() and SURVIVOR not in server.log()
    finally:
        engine.dispose()
