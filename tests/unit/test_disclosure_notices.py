"""Disclosures reported by customers without a server: the notice JSON's validation,
the ATNA Export parser, syslog framing, and the service on SQLite and PostgreSQL
(one transaction per request, idempotency, the query across merges and who sees
what)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from kuva.audit import export
from kuva.audit.listener import ExportReceiver, syslog_msg
from kuva.audit.syslog import syslog_message
from kuva.index import schema
from kuva.index.uow import UnitOfWork
from kuva.model import audit as a
from kuva.model.disclosure import Source
from kuva.model.patient import PatientKey
from kuva.services.disclosure import DisclosureLog, Handout, Interface
from kuva.services.notices import NoticeConflict, NoticeService
from kuva.web.notices import NoticeProblem, parse_notices
from tests.support.disclosures import (
    OTHER_RECIPIENT,
    RECIPIENT,
    REPORTER,
    kuva_export,
    notice,
    third_party_export,
)
from tests.support.synthetic import FINNISH_PIC_ISSUER

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
PATIENT = "010181-900C"
STUDY = "1.2.246.10.0.10.1.1001"


def _parse(body: Any) -> list[Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_notices(data, REPORTER, NOW)


def _refused(body: Any) -> NoticeProblem:
    with pytest.raises(NoticeProblem) as caught:
        _parse(body)
    return caught.value


# ------------------------------------------------------------------ notice JSON


def test_a_notice_and_a_list() -> None:
    one = notice(PATIENT, "2026-11-27T09:00:00+02:00", studies=[STUDY], person="Dr. Virtanen")
    (reported,) = _parse(one)
    assert reported.reporter == REPORTER
    assert reported.recipient_organization == RECIPIENT
    assert reported.recipient_person == "Dr. Virtanen"
    assert reported.patient == PatientKey(PATIENT, FINNISH_PIC_ISSUER)
    assert reported.disclosed_at == datetime(2026, 11, 27, 7, 0, tzinfo=UTC)
    assert reported.source is Source.NOTICE and reported.notice_id is None
    two = _parse([one, notice(PATIENT, "2026-11-27T11:59:00Z", documents=["1.2.3^ext"])])
    assert [r.documents for r in two] == [(), ("1.2.3^ext",)]


@pytest.mark.parametrize(
    ("body", "position", "field", "message"),
    [
        (
            notice(PATIENT, "2026-11-27T10:00:00Z", studies=[STUDY], recipient="1.2.03"),
            0,
            "recipient.organization",
            "not a valid OID",
        ),
        (notice(PATIENT, "2026-11-27T10:00:00Z", studies=["1..2"]), 0, "studies.0", "OID"),
        (notice(PATIENT, "2026-11-27T12:06:00Z", studies=[STUDY]), 0, "disclosed_at", "future"),
        (notice(PATIENT, "2026-11-27T10:00:00", studies=[STUDY]), 0, "disclosed_at", "timezone"),
        (
            notice(PATIENT, "2026-11-27T10:00:00Z", studies=[STUDY], unknown=1),
            0,
            "unknown",
            "Extra inputs",
        ),
        (
            notice(PATIENT, "2026-11-27T10:00:00Z", studies=[STUDY], channel="x" * 129),
            0,
            "channel",
            "at most 128",
        ),
        (notice("x" * 65, "2026-11-27T10:00:00Z", studies=[STUDY]), 0, "patient.id", "at most 64"),
        (notice("010181^900C", "2026-11-27T10:00:00Z", studies=[STUDY]), 0, "patient.id", "^"),
        (notice(PATIENT, "2026-11-27T10:00:00Z"), 0, "", "no study and no document"),
        (
            notice(PATIENT, "2026-11-27T10:00:00Z", studies=[STUDY], notice_id="no"),
            0,
            "notice_id",
            "UUID",
        ),
        (notice(PATIENT, "2026-11-27T10:00:00Z", studies=[STUDY], basis=" "), 0, "basis", "empty"),
    ],
)
def test_a_bad_notice_is_named(
    body: dict[str, Any], position: int, field: str, message: str
) -> None:
    problem = _refused(body)
    assert problem.status == 422
    first = problem.errors[0]
    assert (first["notice"], first["field"]) == (position, field)
    assert message in first["message"]
    assert PATIENT not in problem.detail  # no identity codes echoed into logs


def test_a_bad_notice_in_a_list_refuses_the_list() -> None:
    good = notice(PATIENT, "2026-11-27T10:00:00Z", studies=[STUDY])
    problem = _refused([good, good, dict(good, recipient={"organization": "not-an-oid"})])
    assert (problem.status, problem.errors[0]["notice"]) == (422, 2)
    assert problem.detail.startswith("notice 2: recipient.organization")


def test_empty_list_wrong_shape_and_not_json() -> None:
    assert _refused([]).status == 422
    assert "at least 1" in _refused([]).detail
    assert _refused(b'"a string"').status == 422
    assert _refused(b"{not json").status == 400
    assert _refused(b"").status == 400


# ------------------------------------------------------------------ ATNA Export


def test_kuva_rendered_export() -> None:
    data = kuva_export(PATIENT, [STUDY, STUDY + ".2"], datetime(2026, 11, 26, 8, 0, tzinfo=UTC))
    parsed = export.parse(data, NOW)
    assert isinstance(parsed, export.ExportMessage)
    reported = parsed.reported_by(REPORTER)
    assert reported.patient == PatientKey(PATIENT, FINNISH_PIC_ISSUER)
    assert reported.studies == (STUDY, STUDY + ".2") and reported.documents == ()
    assert reported.recipient_organization == RECIPIENT
    assert reported.disclosed_at == datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
    assert reported.channel == "RAD-69 Retrieve Imaging Document Set"
    assert reported.basis == "reported by CUSTOMER-PACS"
    assert reported.interface == "ATNA-Export" and reported.source is Source.ATNA
    assert parsed.enterprise_site_id == REPORTER
    assert reported.notice_id is not None and reported.notice_id.startswith("sha256:")


def test_third_party_export() -> None:
    data = third_party_export(PATIENT, "1.2.246.10.99.1.77", "2026-11-20T08:15:30.123+02:00")
    parsed = export.parse(data, NOW)
    assert isinstance(parsed, export.ExportMessage)
    assert parsed.recipient == OTHER_RECIPIENT  # the OID among UserID, AlternativeUserID
    assert parsed.recipient_person == "ylilääkäri"
    assert parsed.documents == ("1.2.246.10.99.1.77",) and parsed.studies == ()
    assert parsed.disclosed_at == datetime(2026, 11, 20, 6, 15, 30, 123000, tzinfo=UTC)
    assert parsed.basis == "Hoito (potilaan suostumus)"
    assert parsed.channel == "ITI-43 Retrieve Document Set"


def test_not_an_export_is_ignored() -> None:
    other = a.application_activity(
        True,
        source=a.AuditSource("X"),
        application=a.ActiveParticipant("X", requestor=False),
        launcher=None,
        occurred_at=NOW,
    )
    from kuva.audit.message import render

    assert isinstance(export.parse(render(other).encode(), NOW), export.Ignored)
    failed = kuva_export(PATIENT, [STUDY], NOW, outcome=a.Outcome.SERIOUS_FAILURE)
    assert "EventOutcomeIndicator 8" in export.parse(failed, NOW).reason  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage \x00\xff",
        b"<AuditMessage><EventIdentification>",
        b"<Other/>",
        b'<!DOCTYPE a [<!ENTITY e "x">]><AuditMessage>&e;</AuditMessage>',
        b"<AuditMessage/>",
    ],
)
def test_malformed(data: bytes) -> None:
    with pytest.raises(export.MalformedMessage):
        export.parse(data, NOW)


def test_unusable_exports() -> None:
    future = kuva_export(PATIENT, [STUDY], NOW + timedelta(hours=1))
    with pytest.raises(export.UnusableExport, match="future"):
        export.parse(future, NOW)
    no_study = kuva_export(PATIENT, [], NOW)
    with pytest.raises(export.UnusableExport, match="no study"):
        export.parse(no_study, NOW)
    bad_uid = kuva_export(PATIENT, ["1.2.x"], NOW)
    with pytest.raises(export.UnusableExport, match="not a valid UID"):
        export.parse(bad_uid, NOW)


def test_syslog_framing() -> None:
    xml = kuva_export(PATIENT, [STUDY], NOW)
    framed = syslog_message(xml.decode(), timestamp=NOW, hostname="h", procid=1)
    assert syslog_msg(framed) == xml
    with_sd = b'<85>1 2026-11-27T12:00:00Z h app 1 IHE+RFC-3881 [x@1 a="b\\]c"] ' + xml
    assert syslog_msg(with_sd) == xml
    assert syslog_msg(b"<85>1 2026-11-27T12:00:00Z h app 1 IHE - " + xml) == xml
    assert syslog_msg(b"<85>Nov 27 12:00:00 h app: " + xml) == xml


# ------------------------------------------------------------------ the service


def _count(engine: Engine, table: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_record_and_query(engine: Engine) -> None:
    service = NoticeService(engine, clock=lambda: NOW)
    key = str(uuid.uuid4())
    notices = _parse(
        [
            notice(
                PATIENT,
                "2026-11-20T10:00:00Z",
                studies=[STUDY, STUDY],
                documents=["d.1"],
                notice_id=key,
            ),
            notice(PATIENT, "2026-11-25T10:00:00Z", documents=["d.2"]),
        ]
    )
    outcomes = service.record(notices)
    assert [(o.records, o.created) for o in outcomes] == [(2, True), (1, True)]
    # A retry: nothing added, the same answer but not created.
    again = service.record(notices[:1])
    assert [(o.notice_id, o.records, o.created) for o in again] == [(key, 2, False)]
    assert _count(engine, schema.disclosure) == 3
    # The same id with other content: refused, nothing of the request written.
    changed = _parse(
        [
            notice(PATIENT, "2026-11-26T10:00:00Z", documents=["d.9"]),
            notice(PATIENT, "2026-11-21T10:00:00Z", studies=[STUDY], notice_id=key),
        ]
    )
    with pytest.raises(NoticeConflict) as caught:
        service.record(changed)
    assert caught.value.index == 1
    assert _count(engine, schema.disclosure) == 3
    assert _count(engine, schema.disclosure_notice) == 2

    patient = PatientKey(PATIENT, FINNISH_PIC_ISSUER)
    page = service.disclosures(patient)
    assert [r.disclosed_at.day for r in page.records] == [25, 20, 20]
    assert {r.source for r in page.records} == {"notice"}
    assert {r.notice_id for r in page.records} == {None, key}
    period = service.disclosures(
        patient,
        start=datetime(2026, 11, 21, tzinfo=UTC),
        end=datetime(2026, 11, 26, tzinfo=UTC),
    )
    assert [r.document_unique_id for r in period.records] == ["d.2"]
    assert len(service.disclosures(patient, limit=2, offset=2).records) == 1


def test_who_sees_what_and_merges(engine: Engine) -> None:
    """kuva's own disclosure (source archive) and a notice are told apart; an
    organisation sees what it holds or received; a merged identity's records are the
    survivor's."""
    service = NoticeService(engine, clock=lambda: NOW)
    merged, survivor = "020202-900E", PATIENT
    with UnitOfWork(engine) as uow:
        old = uow.patients.create(PatientKey(merged, FINNISH_PIC_ISSUER), NOW)
        new = uow.patients.create(PatientKey(survivor, FINNISH_PIC_ISSUER), NOW)
        uow.patients.merge(old, new)
        uow.commit()
    DisclosureLog(engine, clock=lambda: NOW - timedelta(days=3)).record(
        OTHER_RECIPIENT,
        [Handout("1.2.3.4", REPORTER, STUDY, (merged, FINNISH_PIC_ISSUER))],
        Interface.RAD_69,
    )
    service.record(_parse([notice(survivor, "2026-11-25T10:00:00Z", studies=[STUDY])]))
    asked = PatientKey(survivor, FINNISH_PIC_ISSUER)
    page = service.disclosures(asked)
    assert [(r.source, r.interface, r.patient_id) for r in page.records] == [
        ("notice", "notice", survivor),
        ("archive", "RAD-69", merged),
    ]
    assert page.identities == [(survivor, FINNISH_PIC_ISSUER), (merged, FINNISH_PIC_ISSUER)]
    # Asked by the merged identity: the same person, the same answer.
    by_old = service.disclosures(PatientKey(merged, FINNISH_PIC_ISSUER))
    assert len(by_old.records) == 2
    assert len(service.disclosures(asked, viewer=REPORTER).records) == 2
    assert [r.source for r in service.disclosures(asked, viewer=RECIPIENT).records] == ["notice"]
    assert [r.source for r in service.disclosures(asked, viewer=OTHER_RECIPIENT).records] == [
        "archive"
    ]
    assert service.disclosures(asked, viewer="1.2.3.4.5").records == []


def test_syslog_receiver(engine: Engine) -> None:
    service = NoticeService(engine, clock=lambda: NOW)
    receiver = ExportReceiver(service, lambda: [REPORTER], clock=lambda: NOW)
    xml = kuva_export(PATIENT, [STUDY], NOW - timedelta(minutes=1))
    message = syslog_message(xml.decode(), timestamp=NOW)
    assert receiver.receive(message, "test") == 1
    assert receiver.receive(message, "test") == 0  # the same message again
    assert receiver.receive(b"\x00garbage", "test") == 0
    stranger = kuva_export(PATIENT, [STUDY], NOW, site="1.2.246.10.5.5")
    assert receiver.receive(stranger, "test") == 0  # not a configured organisation
    records = service.disclosures(PatientKey(PATIENT, FINNISH_PIC_ISSUER)).records
    assert [(r.source, r.interface, r.register_holder) for r in records] == [
        ("atna", "ATNA-Export", REPORTER)
    ]


def test_the_json_schema_agrees_with_the_models() -> None:
    from pathlib import Path

    from kuva.model import disclosure as d
    from kuva.web.notices import MAX_NOTICES

    schema_file = Path(__file__).resolve().parents[2] / "docs" / "disclosure-notice.schema.json"
    document = json.loads(schema_file.read_text(encoding="utf-8"))
    properties = document["$defs"]["notice"]["properties"]
    assert document["oneOf"][1]["maxItems"] == MAX_NOTICES
    assert properties["channel"]["maxLength"] == d.CHANNEL_LENGTH
    assert properties["basis"]["maxLength"] == d.BASIS_LENGTH
    assert properties["patient"]["properties"]["id"]["maxLength"] == d.PATIENT_ID_LENGTH
    assert properties["recipient"]["properties"]["person"]["maxLength"] == d.PERSON_LENGTH
    assert properties["documents"]["items"]["maxLength"] == d.DOCUMENT_ID_LENGTH
    assert properties["studies"]["maxItems"] == d.MAX_ITEMS
    assert set(properties) == {
        "notice_id",
        "recipient",
        "patient",
        "studies",
        "documents",
        "disclosed_at",
        "channel",
        "basis",
    }


def test_http_authorisation(engine: Engine) -> None:
    """Over the ASGI app (in-process, on the real index): no organisation, 403; an
    organisation sees what it holds or received; an operator sees all, with the
    identities searched."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from kuva.web.disclosures import disclosures_router

    operator = "1.2.246.10.1.1"
    app = FastAPI()
    app.include_router(
        disclosures_router(NoticeService(engine), operators=[operator], max_message_bytes=1 << 20)
    )
    client = TestClient(app)
    query = {"patient": f"{PATIENT}^^^&{FINNISH_PIC_ISSUER}&ISO"}
    body = notice(PATIENT, "2026-11-25T10:00:00Z", studies=[STUDY])

    app.state.default_organization = None
    for response in (
        client.get("/disclosures", params=query),
        client.post("/disclosures/notices", json=body),
        client.post("/audit/messages", content=b"<x/>", headers={"content-type": "text/xml"}),
    ):
        assert response.status_code == 403
        assert response.headers["content-type"] == "application/problem+json"

    app.state.default_organization = REPORTER
    assert client.post("/disclosures/notices", json=body).status_code == 201
    assert len(client.get("/disclosures", params=query).json()["disclosures"]) == 1
    app.state.default_organization = OTHER_RECIPIENT
    assert client.get("/disclosures", params=query).json()["disclosures"] == []
    app.state.default_organization = RECIPIENT
    seen = client.get("/disclosures", params=query).json()
    assert len(seen["disclosures"]) == 1 and "identities" not in seen
    app.state.default_organization = operator
    everything = client.get("/disclosures", params=query).json()
    assert len(everything["disclosures"]) == 1
    assert everything["identities"] == [{"id": PATIENT, "issuer": FINNISH_PIC_ISSUER}]
    assert client.get("/disclosures", params=query | {"limit": "0"}).status_code == 400
    assert client.get("/disclosures", params=query | {"from": "yesterday"}).status_code == 400
    assert client.get("/disclosures", params=query | {"page": "2"}).status_code == 400
