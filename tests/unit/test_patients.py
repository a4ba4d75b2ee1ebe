"""Patient corrections in the index and the patient service, SQLite and PostgreSQL:
the survivor of a merge chain in one statement, a duplicate HL7 message as a domain
error, the studies registered again after each correction, the operator's commands
and view."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from typing import Any

import pytest
from sqlalchemy import Engine, event, update

from kuva.config import Settings
from kuva.index.instances import survivor
from kuva.index.schema import patient
from kuva.index.uow import UnitOfWork
from kuva.model.patient import (
    ChangeIdentifier,
    Demographics,
    DuplicateMessage,
    MergePatients,
    PatientCommand,
    PatientCorrectionError,
    PatientKey,
    UnlinkPatients,
    UpdatePatient,
)
from kuva.services.patients import MessageRef, PatientService
from kuva.services.registration import (
    DIRECT_REGISTRATIONS,
    REGISTRATION_BATCH_TASK,
    REGISTRATION_TASK,
    RegistrationService,
    register_again,
)
from tests.unit.test_index import NOW, ORG, ROOT, attributes, new_instance

ISSUER = "1.2.246.21"
SURVIVOR = PatientKey("010181-900C", ISSUER)
MERGED = PatientKey("020202-900E", ISSUER)
THIRD = PatientKey("030303-9005", ISSUER)


def store(
    engine: Engine,
    key: PatientKey,
    study: int,
    name: str = "Testinen^Maija",
    organization: str = ORG,
) -> str:
    """One instance of study ``study`` of the patient, archived for ``organization``;
    its Study Instance UID."""
    study_uid = f"{ROOT}.{study}"
    attrs = attributes(1, study=study_uid, series=f"{study_uid}.1", patient_id=key.patient_id)
    attrs = replace(attrs, patient=replace(attrs.patient, issuer=key.issuer, name=name))
    with UnitOfWork(engine) as uow:
        assert uow.instances.add(new_instance(attrs, organization_oid=organization)) is not None
        uow.commit()
    return study_uid


def pk_of(engine: Engine, key: PatientKey) -> int:
    with UnitOfWork(engine, write=False) as uow:
        row = uow.patients.find(key)
    assert row is not None
    return row.pk


@pytest.fixture
def statements(engine: Engine) -> Iterator[list[str]]:
    """The SQL statements the engine runs while the test watches."""
    seen: list[str] = []

    def count(*args: Any) -> None:
        seen.append(args[2])

    event.listen(engine, "before_cursor_execute", count)
    yield seen
    event.remove(engine, "before_cursor_execute", count)


# ---------------------------------------------------------------- index


def test_survivor_is_the_end_of_the_chain_in_one_statement(
    engine: Engine, statements: list[str]
) -> None:
    keys = [PatientKey(f"0{n}0101-900{n}", ISSUER) for n in range(1, 5)]
    for n, key in enumerate(keys, 1):
        store(engine, key, n)
    first, second, third, alone = (pk_of(engine, key) for key in keys)
    with UnitOfWork(engine) as uow:
        uow.conn.execute(update(patient).where(patient.c.pk == first).values(merged_into_pk=second))
        uow.conn.execute(update(patient).where(patient.c.pk == second).values(merged_into_pk=third))
        uow.commit()
    with UnitOfWork(engine, write=False) as uow:
        statements.clear()
        assert survivor(uow.conn, first) == third
        assert len(statements) == 1 and "RECURSIVE" in statements[0].upper()
        assert survivor(uow.conn, second) == third
        assert survivor(uow.conn, third) == third
        assert survivor(uow.conn, alone) == alone  # never merged
        assert survivor(uow.conn, 987654) == 987654  # unknown: its own
        assert [row.pk for row in uow.patients.chain(first)] == [first, second, third]
        assert {row.pk for row in uow.patients.merged_into_this(third)} == {first, second}
    # A cycle (the service refuses to make one) ends the walk and is an error.
    with UnitOfWork(engine) as uow:
        uow.conn.execute(update(patient).where(patient.c.pk == third).values(merged_into_pk=first))
        with pytest.raises(RuntimeError, match="cycle"):
            survivor(uow.conn, first)


def test_a_message_recorded_twice_is_a_duplicate_message(engine: Engine) -> None:
    with UnitOfWork(engine) as uow:
        uow.patients.record_message("RIS", "TESTSAIRAALA", "C-1", "ADT^A40", "ACK 1", NOW)
        uow.commit()
    with UnitOfWork(engine) as uow, pytest.raises(DuplicateMessage):
        uow.patients.record_message("RIS", "TESTSAIRAALA", "C-1", "ADT^A40", "ACK 2", NOW)
    with UnitOfWork(engine) as uow:  # another sender's C-1 is another message
        uow.patients.record_message("LIS", "TESTSAIRAALA", "C-1", "ADT^A40", "ACK 3", NOW)
        uow.commit()


def test_the_same_message_applied_meanwhile_is_answered_with_its_ack(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race of two connections: the second finds no record at first, then loses on
    the unique control id; it answers with the first one's ACK and applies nothing."""
    store(engine, SURVIVOR, 1)
    merged_study = store(engine, MERGED, 2)
    with UnitOfWork(engine) as uow:
        uow.patients.record_message("RIS", "TESTSAIRAALA", "C-2", "ADT^A40", "FIRST ACK", NOW)
        uow.commit()
    service = PatientService(engine)
    answers = iter([None])
    real = service._seen
    monkeypatch.setattr(service, "_seen", lambda ref: next(answers, real(ref)))
    ref = MessageRef("RIS", "TESTSAIRAALA", "C-2", "ADT^A40")
    ack = service.handle(ref, [MergePatients(SURVIVOR, MERGED)], lambda error: "SECOND ACK")
    assert ack == "FIRST ACK"
    with UnitOfWork(engine, write=False) as uow:
        assert uow.patients.study_uids(pk_of(engine, MERGED)) == [merged_study]


# ---------------------------------------------------------------- service


def registrations(engine: Engine) -> list[str]:
    """Subjects of the pending registration tasks."""
    with UnitOfWork(engine, write=False) as uow:
        tasks = uow.tasks.list(status="pending", kind=REGISTRATION_TASK, subject=None, limit=1000)
    return sorted(task.subject for task in tasks)


def done(engine: Engine) -> None:
    """Mark every pending task done (the registration ran)."""
    with UnitOfWork(engine) as uow:
        for task in uow.tasks.list(status="pending", kind=None, subject=None, limit=1000):
            uow.tasks.complete(task.pk, now=NOW)
        uow.commit()


def apply(service: PatientService, control: str, *commands: PatientCommand) -> str:
    ref = MessageRef("RIS", "TESTSAIRAALA", control, "ADT^A40")
    return service.handle(ref, list(commands), lambda error: "AE" if error else "AA")


def test_every_correction_registers_the_changed_studies_again(engine: Engine) -> None:
    service = PatientService(engine, on_changed=partial(register_again, Settings()))
    kept = store(engine, SURVIVOR, 1)
    merged = [store(engine, MERGED, n) for n in (2, 3)]
    done(engine)

    # A40: the merged patient's studies, not the survivor's
    assert apply(service, "M1", MergePatients(SURVIVOR, MERGED)) == "AA"
    assert registrations(engine) == sorted(merged)
    done(engine)
    assert apply(service, "M2", MergePatients(SURVIVOR, MERGED)) == "AA"  # merged already
    assert registrations(engine) == []

    # A08 with what the archive holds: nothing to register, nothing in the history
    same = Demographics(name="Testinen^Maija", birth_date="19810101")
    assert apply(service, "U1", UpdatePatient(SURVIVOR, same)) == "AA"
    assert registrations(engine) == []
    # a new name: every study of the survivor
    renamed = Demographics(name="Virtanen^Maija")
    assert apply(service, "U2", UpdatePatient(SURVIVOR, renamed)) == "AA"
    assert registrations(engine) == sorted([kept, *merged])
    done(engine)
    # the merged-away patient's name belongs to no study now
    assert apply(service, "U3", UpdatePatient(MERGED, renamed)) == "AA"
    assert registrations(engine) == []

    # A37 unlink: back to the patient they were received for
    assert apply(service, "L1", UnlinkPatients(SURVIVOR, MERGED)) == "AA"
    assert registrations(engine) == sorted(merged)
    done(engine)

    # A47: the patient's every study; a failed one registers nothing
    assert apply(service, "C1", ChangeIdentifier(old=SURVIVOR, new=THIRD)) == "AA"
    assert registrations(engine) == [kept]
    done(engine)
    assert apply(service, "C2", ChangeIdentifier(old=MERGED, new=THIRD)) == "AE"
    assert registrations(engine) == []

    with UnitOfWork(engine, write=False) as uow:
        history = uow.corrections.naming({str(SURVIVOR)})
    assert [c.kind for c in history] == ["merge", "update", "unlink", "identifier change"]


def test_a_patient_of_many_studies_is_registered_again_through_one_batch_task(
    engine: Engine,
) -> None:
    """Beyond DIRECT_REGISTRATIONS studies the correction adds one batch task; the
    batch schedules every study's registration."""
    service = PatientService(engine, on_changed=partial(register_again, Settings()))
    store(engine, SURVIVOR, 1)
    merged = [store(engine, MERGED, n) for n in range(2, DIRECT_REGISTRATIONS + 4)]
    done(engine)
    assert apply(service, "MANY", MergePatients(SURVIVOR, MERGED)) == "AA"
    assert registrations(engine) == []
    with UnitOfWork(engine, write=False) as uow:
        (batch,) = uow.tasks.list(
            status="pending", kind=REGISTRATION_BATCH_TASK, subject=None, limit=10
        )
    assert batch.payload["studies"] == sorted(merged)
    registration = RegistrationService(engine, Settings(), None, None)  # type: ignore[arg-type]
    registration.run_registration_batch(batch)
    assert registrations(engine) == sorted(merged)


def test_operator_merge_unmerge_and_show(engine: Engine) -> None:
    service = PatientService(engine, on_changed=partial(register_again, Settings()))
    store(engine, SURVIVOR, 1)
    merged_study = store(engine, MERGED, 2)
    store(engine, THIRD, 3)
    done(engine)

    with pytest.raises(PatientCorrectionError, match="unknown"):
        service.merge(PatientKey("040404-900V", ISSUER), SURVIVOR)
    corrected = service.merge(MERGED, SURVIVOR, by="tester")
    assert (corrected.changed, corrected.studies) == (True, (merged_study,))
    assert registrations(engine) == [merged_study]
    assert not service.merge(MERGED, SURVIVOR).changed
    with pytest.raises(PatientCorrectionError, match="circular"):
        service.merge(SURVIVOR, MERGED)
    service.merge(SURVIVOR, THIRD)  # a chain: MERGED -> SURVIVOR -> THIRD

    view = service.show(MERGED)
    assert view is not None
    assert [row.key for row in view.chain] == [MERGED, SURVIVOR, THIRD]
    assert view.current.key == THIRD
    assert {row.key for row in view.merged} == {MERGED, SURVIVOR}
    assert len(view.studies) == 3
    assert {s.received_for for s in view.studies} == {SURVIVOR, MERGED, THIRD}
    assert [(c.kind, c.subject, c.source) for c in view.history] == [
        ("merge", str(MERGED), "tester"),
        ("merge", str(SURVIVOR), "operator"),
    ]
    assert service.show(PatientKey("040404-900V", ISSUER)) is None

    former, corrected = service.unmerge(SURVIVOR)
    assert former == THIRD and len(corrected.studies) == 2
    with pytest.raises(PatientCorrectionError, match="not merged"):
        service.unmerge(SURVIVOR)
    view = service.show(SURVIVOR)
    assert view is not None and [row.key for row in view.chain] == [SURVIVOR]
    assert [c.kind for c in view.history] == ["merge", "merge", "unlink"]


def test_an_identifier_change_keeps_the_history_of_the_former_identifier(
    engine: Engine,
) -> None:
    service = PatientService(engine)
    store(engine, SURVIVOR, 1)
    apply(service, "U", UpdatePatient(SURVIVOR, Demographics(name="Virtanen^Maija")))
    apply(service, "C", ChangeIdentifier(old=SURVIVOR, new=THIRD))
    view = service.show(THIRD)
    assert view is not None
    assert [(c.kind, c.subject) for c in view.history] == [
        ("update", str(SURVIVOR)),
        ("identifier change", str(SURVIVOR)),
    ]


@pytest.mark.parametrize(
    ("text", "issuer", "key"),
    [
        ("010181-900C^^^1.2.246.21", "", SURVIVOR),
        ("010181-900C^^^&1.2.246.21&ISO", "", SURVIVOR),
        ("010181-900C", "1.2.246.21", SURVIVOR),
        ("010181-900C^^^1.2.246.21", "1.2.246.21", SURVIVOR),
        ("LOCAL7", "", PatientKey("LOCAL7", "")),
    ],
)
def test_patient_key_as_an_operator_writes_it(text: str, issuer: str, key: PatientKey) -> None:
    assert PatientKey.parse(text, issuer) == key


@pytest.mark.parametrize(
    "text", ["", "^^^1.2.246.21", "010181-900C^^1.2.246.21", "010181-900C^x^^1.2", "9" * 65]
)
def test_patient_key_refused(text: str) -> None:
    with pytest.raises(ValueError):
        PatientKey.parse(text)


def test_patient_key_with_two_issuers_refused() -> None:
    with pytest.raises(ValueError, match="two different issuers"):
        PatientKey.parse("010181-900C^^^1.2.246.21", "1.2.246.10")
