"""services.onboarding on SQLite and PostgreSQL: the evidence of the functions the
DICOM and HL7 run of tests/integration/test_onboarding.py does not drive. Audit
records are rendered by kuva's own message builders (kuva.audit.message) and
appended to the trail as the archive appends them; rejections and disclosure
notices are the index's rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, insert

from kuva.audit.message import render
from kuva.config import Settings
from kuva.index.schema import disclosure_notice, rejection
from kuva.index.uow import UnitOfWork
from kuva.model import audit as a
from kuva.model.directory import NodeSettings, OrganizationSettings, OrganizationState
from kuva.services.directory import DirectoryService
from kuva.services.onboarding import KOS_FORMAT_CODE, OnboardingService

CLINIC = "1.2.246.10.55555555.10"
OTHER = "1.2.246.10.12345678.10"
ADDED = datetime(2026, 12, 1, tzinfo=UTC)
LATER = ADDED + timedelta(hours=1)
SOURCE = a.AuditSource("KUVA")
ARCHIVE = a.ActiveParticipant("KUVA", requestor=False, roles=(a.DESTINATION,))


def _clinic(engine: Engine) -> OnboardingService:
    directory = DirectoryService(engine, clock=lambda: ADDED)
    directory.add_organization(
        OrganizationSettings(oid=CLINIC, name="Test Clinic", state=OrganizationState.TESTING),
        by="operator",
    )
    directory.add_node(NodeSettings(ae_title="CLINIC", organization=CLINIC), by="operator")
    return OnboardingService(engine, Settings())


def _append(engine: Engine, *events: a.AuditEvent) -> None:
    with UnitOfWork(engine) as uow:
        for event in events:
            uow.audit.append(
                recorded_at=LATER,
                event_id=event.event_id.code,
                outcome=int(event.outcome),
                message=render(event),
            )
        uow.commit()


def _consumer(oid: str) -> a.ActiveParticipant:
    return a.ActiveParticipant(oid, requestor=True, roles=(a.SOURCE,))


def _stored_query(oid: str, request: bytes) -> a.AuditEvent:
    return a.stored_query(
        source=SOURCE,
        consumer=_consumer(oid),
        registry=ARCHIVE,
        query_id="urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d",
        request=request,
        patient=None,
        outcome=a.Outcome.SUCCESS,
        occurred_at=LATER,
    )


def _status(service: OnboardingService) -> dict[str, str]:
    return {f.id: f.status for f in service.report(CLINIC).functions}


def test_xds_searches_and_retrieves_count_for_the_organisation_that_made_them(
    engine: Engine,
) -> None:
    service = _clinic(engine)
    kos = f"<AdhocQuery><Value>('{KOS_FORMAT_CODE}')</Value></AdhocQuery>".encode()
    _append(
        engine,
        _stored_query(CLINIC, b"<AdhocQuery><Value>('urn:oid:1.2.3')</Value></AdhocQuery>"),
        _stored_query(OTHER, kos),  # another organisation's: no evidence of the clinic's
    )
    status = _status(service)
    assert status["report-search"] == "passed" and status["image-search"] == "not-run"
    _append(
        engine,
        _stored_query(CLINIC, kos),
        a.instances_transferred(
            source=SOURCE,
            sender=a.ActiveParticipant("KUVA", requestor=False, roles=(a.SOURCE,)),
            receiver=a.ActiveParticipant(CLINIC, requestor=True, roles=(a.DESTINATION,)),
            study_instance_uid="1.2.3.4",
            sop_classes=(a.SopClass("1.2.840.10008.5.1.4.1.1.2", 2),),
            patient=None,
            outcome=a.Outcome.SUCCESS,
            occurred_at=LATER,
            action=a.Action.READ,
            transaction=a.RAD_69,
        ),
    )
    status = _status(service)
    assert status["image-search"] == "passed" and status["image-retrieve"] == "passed"
    report = service.report(CLINIC)
    [search] = [f for f in report.functions if f.id == "image-search"]
    assert [e.source for e in search.evidence] == ["audit"] and search.evidence[0].at == LATER


def test_corrections_and_notices_are_read_from_the_index(engine: Engine) -> None:
    service = _clinic(engine)
    with engine.begin() as conn:
        for number, code in enumerate(("113038", "113037")):
            conn.execute(
                insert(rejection).values(
                    sop_instance_uid=f"1.2.3.{number}",
                    series_instance_uid="1.2.3",
                    study_instance_uid="1.2",
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                    code=code,
                    note_sop_instance_uid=f"1.2.9.{number}",
                    organization_oid=CLINIC,
                    rejected_at=LATER,
                )
            )
        conn.execute(
            insert(disclosure_notice).values(
                reporter=CLINIC,
                notice_id="N-1",
                digest="0" * 64,
                source="notice",
                received_at=LATER,
                record_count=1,
            )
        )
    status = _status(service)
    assert status["metadata-correction"] == "passed"
    assert status["content-correction"] == "passed"
    assert status["disclosure-notice"] == "passed"
    # Not an IAN node among the clinic's: ian is not required.
    [ian] = [f for f in service.report(CLINIC).functions if f.id == "ian"]
    assert not ian.required and "takes IANs" in ian.reason
    assert "ian" not in service.report(CLINIC).missing


def test_only_an_organisation_in_testing_is_held_back(engine: Engine) -> None:
    service = _clinic(engine)
    assert "archive" in service.missing(CLINIC)
    assert service.missing("1.2.3") == []  # not in the directory
    DirectoryService(engine).set_state(CLINIC, OrganizationState.SUSPENDED, by="operator")
    assert service.missing(CLINIC) == []
