"""The audit trail's queued writer (services.audit_writer), SQLite and PostgreSQL:
queued records are appended in batches, all of them before ``stop`` returns; a
full queue writes on the caller's thread instead of dropping; a batch the index
refuses is tried again; queued and synchronous appends from many threads keep one
chain that ``kuva audit verify`` finds intact. Also the register holder's own
retrieves, whose patients the writer reads, and refused HL7 messages."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from lxml import etree
from sqlalchemy import Engine, func, select
from typer.testing import CliRunner

from kuva.audit.message import render
from kuva.cli import app
from kuva.config import Settings
from kuva.index.schema import audit_record
from kuva.index.uow import UnitOfWork
from kuva.model import audit as a
from kuva.model.patient import MergePatients
from kuva.services.audit import AuditTrail, Requester, SentStudy
from kuva.services.audit_writer import Pending, QueuedWriter
from kuva.services.patients import MessageRef, PatientService
from tests.unit.test_patients import MERGED, SURVIVOR, store

CT = "1.2.840.10008.5.1.4.1.1.2"


def _trail(engine: Engine, **audit: object) -> AuditTrail:
    return AuditTrail(engine, Settings(audit=audit), render=render)


def _query(trail: AuditTrail, n: int = 1) -> None:
    for _ in range(n):
        trail.queried(
            "FINDSCU",
            "127.0.0.1",
            sop_class_uid=a.STUDY_ROOT_FIND,
            identifier=b"\x08\x00\x52\x00",
            transfer_syntax="1.2.840.10008.1.2",
            ok=True,
        )


def _count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(audit_record)).scalar_one())


def _messages(engine: Engine, event_id: str) -> list[etree._Element]:
    with UnitOfWork(engine, write=False) as uow:
        records = uow.audit.list(event_id=event_id, limit=100)
    return [etree.fromstring(r.message.encode()) for r in reversed(records)]


# ---------------------------------------------------------------- the writer alone


def test_offer_gives_back_what_does_not_fit() -> None:
    written: list[Sequence[Pending]] = []
    entered, gate = threading.Event(), threading.Event()

    def write(items: Sequence[Pending]) -> None:
        entered.set()
        gate.wait(10)
        written.append(items)

    writer = QueuedWriter(write, capacity=3, batch_size=10, batch_seconds=0)
    event = _event()
    assert writer.offer([event]) == [event]  # not started: nothing queued
    writer.start()
    assert writer.offer([event]) == []
    assert entered.wait(5)  # the writer holds that one; the queue is empty
    assert len(writer.offer([event] * 5)) == 2
    assert writer.overflowed == 2
    gate.set()
    writer.stop()
    assert [len(batch) for batch in written] == [1, 3]
    assert writer.offer([event]) == [event]  # stopped: nothing queued


def test_a_refused_batch_is_tried_again() -> None:
    attempts: list[int] = []

    def write(items: Sequence[Pending]) -> None:
        attempts.append(len(items))
        if len(attempts) < 3:
            raise OSError("index unavailable")

    writer = QueuedWriter(write, capacity=10, batch_size=10, batch_seconds=0.01, retry_seconds=0.01)
    writer.start()
    writer.offer([_event(), _event()])
    writer.stop()
    assert attempts == [2, 2, 2] and writer.written == 2


def _event() -> a.AuditEvent:
    return a.application_activity(
        True,
        source=a.AuditSource("KUVA"),
        application=a.ActiveParticipant("KUVA", requestor=False),
        launcher=None,
        occurred_at=datetime.now(UTC),
    )


# ---------------------------------------------------------------- the trail's writer


def test_queued_records_are_written_in_batches(engine: Engine) -> None:
    trail = _trail(engine, batch_size=10, batch_seconds=2)
    writer = trail.writer
    assert writer is not None
    trail.start_writer()
    started = time.monotonic()
    _query(trail, 35)
    trail.stop_writer()  # drains: does not wait out batch_seconds
    assert time.monotonic() - started < 2
    assert (writer.written, writer.batches) == (35, 4)
    assert _count(engine) == 35
    assert trail.verify() == (35, [])


def test_without_a_running_writer_records_are_written_at_once(engine: Engine) -> None:
    _query(_trail(engine), 2)  # never started (CLI commands, tests)
    assert _count(engine) == 2
    _query(_trail(engine, queue_size=0), 1)  # no queue configured
    assert _count(engine) == 3


def test_a_full_queue_writes_on_the_callers_thread(engine: Engine) -> None:
    trail = _trail(engine, queue_size=2, batch_size=1, batch_seconds=0)
    entered, gate = threading.Event(), threading.Event()

    def held(items: Sequence[Pending]) -> None:
        entered.set()
        gate.wait(10)
        trail._write(items)

    writer = QueuedWriter(held, capacity=2, batch_size=1, batch_seconds=0)
    trail._writer = writer
    trail.start_writer()
    _query(trail)
    assert entered.wait(5)
    _query(trail, 3)  # two wait on the queue, the third is written now
    assert _count(engine) == 1
    gate.set()
    trail.stop_writer()
    assert _count(engine) == 4
    assert writer.overflowed == 1
    assert trail.verify() == (4, [])


@pytest.fixture
def config(tmp_path: Path, database_url: str) -> Path:
    path = tmp_path / "kuva.toml"
    path.write_text(
        f'[archive]\ndata_dir = "{tmp_path / "data"}"\ndatabase_url = "{database_url}"\n',
        encoding="utf-8",
    )
    return path


def test_queued_and_synchronous_appends_keep_one_chain(engine: Engine, config: Path) -> None:
    trail = _trail(engine, batch_size=7, batch_seconds=0.01)
    trail.start_writer()
    errors: list[BaseException] = []

    def run(work: str) -> None:
        try:
            for _ in range(25):
                if work == "queued":
                    _query(trail)
                else:
                    trail.application_started()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in ("queued", "sync") * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    trail.stop_writer()
    assert errors == []
    assert trail.verify() == (100, [])
    result = CliRunner().invoke(app, ["audit", "verify", "--config", str(config)])
    assert result.exit_code == 0 and "audit trail intact: 100 record(s)" in result.output


# ---------------------------------------------------------------- new events


def test_own_retrieves_name_the_current_patient(engine: Engine) -> None:
    study = store(engine, MERGED, 1)
    store(engine, SURVIVOR, 2)
    PatientService(engine).merge(MERGED, SURVIVOR)
    trail = _trail(engine)
    trail.start_writer()
    trail.dicom_retrieved(
        "GETSCU",
        "127.0.0.2",
        [SentStudy(study, {CT: 1})],
        outcome=a.Outcome.SUCCESS,
    )
    trail.dicom_retrieved(
        "MOVESCU",
        "127.0.0.3",
        [SentStudy(study, {CT: 1})],
        outcome=a.Outcome.MINOR_FAILURE,
        move_destination=("STORESCP", "10.0.0.8"),
    )
    trail.web_retrieved(Requester(None, "127.0.0.4"), [], transaction=a.RAD_107)  # nothing
    trail.stop_writer()
    get, move = _messages(engine, "110104")
    for root in (get, move):
        ids = [p.get("ParticipantObjectID") for p in root.iter("ParticipantObjectIdentification")]
        assert ids == [study, f"{SURVIVOR.patient_id}^^^&{SURVIVOR.issuer}&ISO"]
        assert root.find("EventIdentification").get("EventActionCode") == "R"  # type: ignore[union-attr]
    users = [
        (p.get("UserID"), p.get("UserIsRequestor"), p.find("RoleIDCode") is not None)
        for p in move.iter("ActiveParticipant")
    ]
    assert users == [
        ("KUVA", "false", True),
        ("STORESCP", "false", True),
        ("MOVESCU", "true", False),
    ]
    assert [p.get("UserID") for p in get.iter("ActiveParticipant")] == ["KUVA", "GETSCU"]


def test_a_refused_hl7_message_is_audited_with_its_ack(engine: Engine) -> None:
    store(engine, SURVIVOR, 1)
    service = PatientService(engine, audit=_trail(engine))
    ref = MessageRef("RIS", "SAIRAALA", "MSG-7", "ADT^A40")
    ack = service.handle(
        ref,
        [MergePatients(target=SURVIVOR, source=SURVIVOR)],  # into itself: refused
        lambda error: "AE" if error is not None else "AA",
    )
    assert ack == "AE"
    (root,) = _messages(engine, "110110")
    event = root.find("EventIdentification")
    assert event is not None and event.get("EventOutcomeIndicator") == "4"
    ids = [p.get("ParticipantObjectID") for p in root.iter("ParticipantObjectIdentification")]
    assert ids == [f"{SURVIVOR.patient_id}^^^&{SURVIVOR.issuer}&ISO"]
    assert "Testinen" not in etree.tostring(root).decode()
