"""The local audit trail, SQLite and PostgreSQL: a chain that never forks under
concurrent appends, records written in the transaction of the change they describe
(patient corrections, disclosures) and none when it rolls back, and
``kuva audit verify`` naming every record altered, deleted or inserted directly
in the database."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
from lxml import etree
from sqlalchemy import Engine, delete, select, update
from typer.testing import CliRunner

from kuva.audit.message import render
from kuva.cli import app
from kuva.config import Settings
from kuva.index.schema import audit_record, task
from kuva.index.uow import UnitOfWork
from kuva.model import audit as a
from kuva.model.clock import utcnow
from kuva.model.patient import PatientCorrectionError, PatientKey
from kuva.services.audit import DELIVERY_TASK, AuditTrail
from kuva.services.disclosure import DisclosureLog, Handout, Interface
from kuva.services.patients import PatientService
from tests.unit.test_patients import MERGED, SURVIVOR, store


def _settings(**audit: object) -> Settings:
    return Settings(audit=audit)


def _trail(engine: Engine, **audit: object) -> AuditTrail:
    return AuditTrail(engine, _settings(**audit), render=render)


def _started(trail: AuditTrail, times: int) -> None:
    for _ in range(times):
        trail.application_started()


def _records(engine: Engine) -> list[tuple[int, str, str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                audit_record.c.seq,
                audit_record.c.event_id,
                audit_record.c.prev_hash,
                audit_record.c.hash,
            ).order_by(audit_record.c.seq)
        )
        return [tuple(row) for row in rows]  # type: ignore[misc]


def test_records_form_a_chain(engine: Engine) -> None:
    trail = _trail(engine)
    _started(trail, 3)
    rows = _records(engine)
    assert [row[0] for row in rows] == [1, 2, 3]
    assert rows[0][2] == a.GENESIS_HASH
    assert rows[1][2] == rows[0][3] and rows[2][2] == rows[1][3]
    assert trail.verify() == (3, [])
    with UnitOfWork(engine, write=False) as uow:
        (first,) = uow.audit.list(event_id="110100", limit=1)
    assert first.seq == 3
    root = etree.fromstring(first.message.encode())
    assert root.find("EventIdentification/EventTypeCode").get("csd-code") == "110120"  # type: ignore[union-attr]


def test_no_delivery_task_without_a_repository(engine: Engine) -> None:
    _started(_trail(engine), 1)
    _started(_trail(engine, repository="udp://127.0.0.1:6514"), 1)
    with engine.connect() as conn:
        subjects = conn.execute(select(task.c.subject).where(task.c.kind == DELIVERY_TASK))
        assert list(subjects.scalars()) == ["2"]


def test_nothing_is_recorded_when_disabled(engine: Engine) -> None:
    _started(_trail(engine, enabled=False), 2)
    assert _records(engine) == []


def test_concurrent_appends_never_fork(engine: Engine) -> None:
    trail = _trail(engine)
    errors: list[BaseException] = []

    def append() -> None:
        try:
            _started(trail, 10)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=append) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert [row[0] for row in _records(engine)] == list(range(1, 41))
    assert trail.verify() == (40, [])


def test_a_merge_is_audited_in_its_transaction(engine: Engine) -> None:
    store(engine, SURVIVOR, 1)
    store(engine, MERGED, 2)
    service = PatientService(engine, audit=_trail(engine))
    service.merge(MERGED, SURVIVOR, by="operator jane")
    (record,) = _records(engine)
    assert record[1] == "110110"
    with UnitOfWork(engine, write=False) as uow:
        message = uow.audit.get(1)
    assert message is not None
    root = etree.fromstring(message.message.encode())
    assert root.find("EventIdentification").get("EventActionCode") == "U"  # type: ignore[union-attr]
    assert root.find("ActiveParticipant").get("UserID") == "operator jane"  # type: ignore[union-attr]
    patients = [p.get("ParticipantObjectID") for p in root.iter("ParticipantObjectIdentification")]
    assert patients == [
        f"{SURVIVOR.patient_id}^^^&{SURVIVOR.issuer}&ISO",
        f"{MERGED.patient_id}^^^&{MERGED.issuer}&ISO",
    ]
    # Merged already: nothing changes, nothing is audited.
    service.merge(MERGED, SURVIVOR)
    assert len(_records(engine)) == 1


def test_a_refused_correction_leaves_no_record(engine: Engine) -> None:
    store(engine, SURVIVOR, 1)
    service = PatientService(engine, audit=_trail(engine))
    with pytest.raises(PatientCorrectionError):
        service.merge(PatientKey("nobody", SURVIVOR.issuer), SURVIVOR)
    assert _records(engine) == []


def test_disclosures_are_audited_per_patient(engine: Engine) -> None:
    log = DisclosureLog(engine, audit=_trail(engine))
    handouts = [
        Handout("1.2.3.1", "1.2.246.10.1", "1.2.3", patient=("010181-900C", "1.2.246.21")),
        Handout("1.2.3.2", "1.2.246.10.1", "1.2.3", patient=("010181-900C", "1.2.246.21")),
        Handout("1.2.4.1", "1.2.246.10.1", "1.2.4", patient=("020202-900E", "1.2.246.21")),
        Handout("1.2.5.1", "1.2.246.10.2", "1.2.5", patient=("030303-9005", "1.2.246.21")),
    ]
    assert log.record("1.2.246.10.2", handouts, Interface.ITI_43) == 3
    rows = _records(engine)
    assert [row[1] for row in rows] == ["110106", "110106"]
    with UnitOfWork(engine, write=False) as uow:
        first = uow.audit.get(1)
    assert first is not None
    root = etree.fromstring(first.message.encode())
    ids = [p.get("ParticipantObjectID") for p in root.iter("ParticipantObjectIdentification")]
    assert ids == ["010181-900C^^^&1.2.246.21&ISO", "1.2.3.1", "1.2.3.2"]
    recipient = root.find("ActiveParticipant")
    assert recipient is not None
    assert (recipient.get("UserID"), recipient.get("UserIsRequestor")) == ("1.2.246.10.2", "true")
    # RAD-69: the studies handed out.
    log.record("", handouts[:2], Interface.RAD_69)
    with UnitOfWork(engine, write=False) as uow:
        third = uow.audit.get(3)
    assert third is not None
    root = etree.fromstring(third.message.encode())
    ids = [p.get("ParticipantObjectID") for p in root.iter("ParticipantObjectIdentification")]
    assert ids == ["010181-900C^^^&1.2.246.21&ISO", "1.2.3"]
    assert root.find("ActiveParticipant").get("UserID") == "unknown"  # type: ignore[union-attr]


# ---------------------------------------------------------------- kuva audit verify


@pytest.fixture
def config(tmp_path: Path, database_url: str) -> Path:
    path = tmp_path / "kuva.toml"
    path.write_text(
        f'[archive]\ndata_dir = "{tmp_path / "data"}"\ndatabase_url = "{database_url}"\n',
        encoding="utf-8",
    )
    return path


def _verify(config: Path) -> tuple[int, str]:
    result = CliRunner().invoke(
        app, ["audit", "verify", "--config", str(config)], env={"COLUMNS": "200"}
    )
    return result.exit_code, result.output


def test_verify_names_altered_deleted_and_inserted_records(engine: Engine, config: Path) -> None:
    trail = _trail(engine)
    _started(trail, 8)
    assert _verify(config) == (0, "audit trail intact: 8 record(s)\n")

    with engine.begin() as conn:
        # 3: its message edited; 5: its outcome edited and its hash made to match
        # its own fields - it still no longer leads to record 6.
        conn.execute(
            update(audit_record)
            .where(audit_record.c.seq == 3)
            .values(message=audit_record.c.message + " ")
        )
        row = conn.execute(select(audit_record).where(audit_record.c.seq == 5)).one()
        forged = a.record_hash(row.prev_hash, 5, row.recorded_at, row.event_id, 4, row.message)
        conn.execute(
            update(audit_record).where(audit_record.c.seq == 5).values(outcome=4, hash=forged)
        )
        # 7: deleted.
        conn.execute(delete(audit_record).where(audit_record.c.seq == 7))
        # 9: put in at the end with a hash of its own, not chained to record 8.
        recorded_at = utcnow() + timedelta(seconds=1)
        conn.execute(
            audit_record.insert().values(
                seq=9,
                recorded_at=recorded_at,
                event_id="110100",
                outcome=0,
                message="<AuditMessage/>",
                prev_hash="f" * 64,
                hash=a.record_hash("f" * 64, 9, recorded_at, "110100", 0, "<AuditMessage/>"),
            )
        )

    code, output = _verify(config)
    assert code == 1, output
    lines = [line for line in output.splitlines() if "│" in line]
    found = {(cells[0], cells[1]) for cells in (_cells(line) for line in lines) if cells}
    assert found == {
        ("3", "altered"),
        ("6", "inserted"),  # record 5 rehashed after its change, or 6 put in
        ("7", "deleted"),
        ("9", "inserted"),
    }, output
    assert "4 break(s) in 8 record(s)" in output

    count, breaks = trail.verify()
    assert count == 8
    assert [(b.seq, b.kind) for b in breaks] == [
        (3, "altered"),
        (6, "inserted"),
        (7, "deleted"),
        (9, "inserted"),
    ]


def test_verify_finds_records_deleted_at_the_start(engine: Engine) -> None:
    trail = _trail(engine)
    _started(trail, 3)
    with engine.begin() as conn:
        conn.execute(delete(audit_record).where(audit_record.c.seq <= 2))
    count, breaks = trail.verify()
    assert count == 1
    assert [(b.seq, b.last, b.kind) for b in breaks] == [(1, 2, "deleted")]


def test_list(engine: Engine, config: Path) -> None:
    trail = _trail(engine)
    _started(trail, 2)
    store(engine, SURVIVOR, 1)
    store(engine, MERGED, 2)
    PatientService(engine, audit=trail).merge(MERGED, SURVIVOR)
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["audit", "list", "--config", str(config), "--event", "patient record"],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert "110110 Patient Record" in result.output
    assert "110100" not in result.output
    since = (utcnow() + timedelta(hours=1)).isoformat()
    result = runner.invoke(app, ["audit", "list", "--config", str(config), "--since", since])
    assert result.exit_code == 0 and "110" not in result.output
    result = runner.invoke(app, ["audit", "list", "--config", str(config), "--xml", "--limit", "1"])
    assert result.output.startswith("<AuditMessage>")


def _cells(line: str) -> list[str]:
    cells = [cell.strip() for cell in line.strip().strip("│").split("│")]
    return cells if cells and cells[0] and cells[0][0].isdigit() else []
