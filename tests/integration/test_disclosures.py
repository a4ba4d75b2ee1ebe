"""Disclosures reported to a running kuva (SQLite and PostgreSQL, one server per
database for the module): disclosure notices over HTTP (httpx), ATNA Export
messages over HTTP and by syslog over UDP (RFC 5426), the disclosure query over
HTTP and with ``kuva audit disclosures``."""

from __future__ import annotations

import json
import socket
import ssl
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from kuva.audit.listener import ExportReceiver, SyslogListener
from kuva.audit.syslog import SyslogSender, syslog_message
from kuva.config import AuditSettings
from kuva.model.patient import PatientKey
from kuva.services.notices import NoticeService
from tests.conftest import DATABASES, fresh_database
from tests.support.disclosures import (
    OTHER_RECIPIENT,
    RECIPIENT,
    REPORTER,
    cx,
    kuva_export,
    notice,
    third_party_export,
)
from tests.support.server import KuvaServer
from tests.support.synthetic import FINNISH_PIC_ISSUER
from tests.support.syslog import make_pki

STUDY = "1.2.246.10.0.10.7.1"


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module", params=DATABASES)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KuvaServer]:
    """One kuva per database, with a syslog UDP listener; the default HTTP
    organisation (the embedded default's local one) reports and asks."""
    workdir = tmp_path_factory.mktemp(f"disclosures-{request.param}")
    with fresh_database(request.param, workdir) as database_url:
        if request.param == "sqlite":
            database_url = ""  # the embedded default: SQLite in the data folder
        port = _free_udp_port()
        kuva = KuvaServer(
            workdir=workdir,
            database_url=database_url,
            extra={"audit": {"listen": f"udp://127.0.0.1:{port}"}},
        )
        kuva.syslog_port = port  # type: ignore[attr-defined]
        kuva.start()
        try:
            yield kuva
        finally:
            kuva.stop()


@pytest.fixture(scope="module")
def http(server: KuvaServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.http, timeout=10) as client:
        yield client


def _ago(**delta: float) -> str:
    return (datetime.now(UTC) - timedelta(**delta)).isoformat().replace("+00:00", "Z")


def _disclosures(http: httpx.Client, patient_id: str, **params: Any) -> list[dict[str, Any]]:
    response = http.get("/disclosures", params={"patient": cx(patient_id), **params})
    assert response.status_code == 200, response.text
    records: list[dict[str, Any]] = response.json()["disclosures"]
    return records


def test_notices_recorded_found_and_retried(http: httpx.Client) -> None:
    patient = "040404-900V"
    key = str(uuid.uuid4())
    body = [
        notice(patient, _ago(days=10), studies=[STUDY], documents=["1.2.3.4^x"], notice_id=key),
        notice(patient, _ago(days=2), studies=[STUDY + ".2"], person="Dr. Virtanen"),
    ]
    first = http.post("/disclosures/notices", json=body)
    assert first.status_code == 201, first.text
    assert first.json()["recorded"] == 3
    assert [n["created"] for n in first.json()["notices"]] == [True, True]

    retry = http.post("/disclosures/notices", json=body[0])
    assert retry.status_code == 200
    assert retry.json()["notices"] == [
        {"notice": 0, "notice_id": key, "records": 2, "created": False}
    ]

    records = _disclosures(http, patient)
    assert len(records) == 3
    newest = records[0]
    assert newest["recipient"] == {
        "organization": RECIPIENT,
        "person": "Dr. Virtanen",
        "user": None,
        "role": None,
        "purpose_of_use": None,
    }
    assert newest["register_holder"] == REPORTER
    assert (newest["source"], newest["interface"]) == ("notice", "notice")
    assert newest["channel"].startswith("Kanta")
    # The period: from/to, RFC 3339 times and dates.
    week = _disclosures(http, patient, **{"from": _ago(days=7)})
    assert [r["study_instance_uid"] for r in week] == [STUDY + ".2"]
    older = _disclosures(http, patient, to=_ago(days=7))
    assert {r["notice_id"] for r in older} == {key}
    page = http.get("/disclosures", params={"patient": cx(patient), "limit": 2}).json()
    assert (len(page["disclosures"]), page["next_offset"]) == (2, 2)


def test_bad_notices_write_nothing(http: httpx.Client) -> None:
    patient = "050505-900K"
    good = notice(patient, _ago(hours=1), studies=[STUDY])
    bad = notice(patient, _ago(hours=-1), studies=[STUDY])  # an hour ahead
    response = http.post("/disclosures/notices", json=[good, bad])
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"][0] | {"message": ""} == {
        "notice": 1,
        "field": "disclosed_at",
        "message": "",
    }
    not_json = http.post(
        "/disclosures/notices", content=b"{", headers={"content-type": "application/json"}
    )
    assert not_json.status_code == 400
    assert http.post("/disclosures/notices", content=b"x").status_code == 415
    assert _disclosures(http, patient) == []
    assert http.get("/disclosures").status_code == 400
    assert http.get("/disclosures", params={"patient": "a^b"}).status_code == 400


def test_atna_export_over_http(http: httpx.Client) -> None:
    patient = "060606-9009"
    xml = {"content-type": "application/xml"}
    ours = kuva_export(patient, [STUDY], datetime.now(UTC) - timedelta(hours=3))
    response = http.post("/audit/messages", content=ours, headers=xml)
    assert response.status_code == 201, response.text
    assert http.post("/audit/messages", content=ours, headers=xml).status_code == 200
    theirs = third_party_export(patient, "1.2.246.10.99.1.78", _ago(hours=1))
    response = http.post(
        "/audit/messages", content=theirs, headers={"content-type": "text/xml; charset=utf-8"}
    )
    assert response.status_code == 201, response.text
    records = _disclosures(http, patient)
    assert [(r["source"], r["interface"]) for r in records] == [("atna", "ATNA-Export")] * 2
    assert records[0]["recipient"]["organization"] == OTHER_RECIPIENT
    assert records[0]["recipient"]["person"] == "ylilääkäri"
    assert records[0]["document_unique_id"] == "1.2.246.10.99.1.78"
    assert records[0]["basis"] == "Hoito (potilaan suostumus)"
    assert records[1]["study_instance_uid"] == STUDY
    assert records[1]["basis"] == "reported by CUSTOMER-PACS"

    garbage = http.post("/audit/messages", content=b"<AuditMessage><oops>", headers=xml)
    assert garbage.status_code == 400
    assert garbage.headers["content-type"] == "application/problem+json"
    bomb = b'<!DOCTYPE a [<!ENTITY e "x">]><AuditMessage>&e;</AuditMessage>'
    assert http.post("/audit/messages", content=bomb, headers=xml).status_code == 400
    no_patient = ours.replace(b'ParticipantObjectTypeCode="1"', b'ParticipantObjectTypeCode="4"')
    assert http.post("/audit/messages", content=no_patient, headers=xml).status_code == 422
    stop = ours.replace(b'csd-code="110106"', b'csd-code="110100"')
    ignored = http.post("/audit/messages", content=stop, headers=xml)
    assert (ignored.status_code, ignored.json()["recorded"]) == (200, 0)
    assert len(_disclosures(http, patient)) == 2


def test_atna_export_by_syslog_udp(server: KuvaServer, http: httpx.Client) -> None:
    patient = "070707-9000"
    xml = kuva_export(patient, [STUDY], datetime.now(UTC) - timedelta(minutes=5))
    port: int = server.syslog_port  # type: ignore[attr-defined]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"\x00\xffnot syslog at all", ("127.0.0.1", port))
        sock.sendto(b"<85>1 - - - - - - " + b"<AuditMessage>", ("127.0.0.1", port))
        sock.sendto(syslog_message(xml.decode(), timestamp=datetime.now(UTC)), ("127.0.0.1", port))
    deadline = time.monotonic() + 10
    records: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not records:
        records = _disclosures(http, patient)
        time.sleep(0.05)
    assert [(r["source"], r["register_holder"]) for r in records] == [("atna", REPORTER)]
    assert "dropped" in server.log()  # the garbage was logged, the listener lives on
    assert patient not in server.log()


def test_cli_disclosures(server: KuvaServer, http: httpx.Client) -> None:
    patient = "080808-900P"
    posted = http.post(
        "/disclosures/notices",
        json=notice(patient, _ago(days=1), documents=["1.2.246.10.99.1.80"]),
    )
    assert posted.status_code == 201
    table = server.kuva("audit", "disclosures", "--patient", cx(patient))
    assert "1.2.246.10.99.1.80" in table.stdout and RECIPIENT in table.stdout
    assert "1 record(s)" in table.stdout
    data = json.loads(
        server.kuva("audit", "disclosures", "--patient", cx(patient), "--json").stdout
    )
    assert [r["document_unique_id"] for r in data["disclosures"]] == ["1.2.246.10.99.1.80"]
    later = server.kuva(
        "audit",
        "disclosures",
        "--patient",
        cx(patient),
        "--from",
        (datetime.now(UTC) + timedelta(hours=1)).date().isoformat(),
        "--json",
    )
    assert json.loads(later.stdout)["disclosures"] == []
    bad = server.kuva("audit", "disclosures", "--patient", "x^y", check=False)
    assert bad.returncode == 2


def test_atna_export_by_syslog_tls(engine: Engine, tmp_path: Path) -> None:
    """RFC 5425 on kuva's own listener (in-process, real TLS on loopback): kuva's own
    sender with a client certificate of the CA is recorded; one without a
    certificate is refused; a broken frame ends its connection, not the listener."""
    pki = make_pki(tmp_path / "pki")
    settings = AuditSettings(
        listen="tls://127.0.0.1:0",
        ca_file=pki.ca,
        cert_file=pki.server_cert,
        key_file=pki.server_key,
    )
    service = NoticeService(engine)
    listener = SyslogListener(settings, ExportReceiver(service, tuple).receive)
    ((_, host, port),) = listener.start()
    try:
        repository = f"tls://{host}:{port}"
        sender = SyslogSender(
            AuditSettings(
                repository=repository,
                ca_file=pki.ca,
                cert_file=pki.client_cert,
                key_file=pki.client_key,
            )
        )
        anonymous = SyslogSender(AuditSettings(repository=repository, ca_file=pki.ca))
        patient = "090909-900D"
        when = datetime.now(UTC) - timedelta(minutes=1)
        with pytest.raises(OSError):
            anonymous.send(kuva_export(patient, [STUDY], when).decode(), when)
        context = ssl.create_default_context(cafile=str(pki.ca))
        context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
        raw = socket.create_connection((host, port))
        with context.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(b"12x garbage")
        sender.send(kuva_export(patient, [STUDY, STUDY + ".9"], when).decode(), when)
        key = PatientKey(patient, FINNISH_PIC_ISSUER)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(service.disclosures(key).records) < 2:
            time.sleep(0.05)
        records = service.disclosures(key).records
        assert sorted(r.study_instance_uid or "" for r in records) == [STUDY, STUDY + ".9"]
        assert {r.source for r in records} == {"atna"}
    finally:
        listener.stop()
