"""HL7 corrections act for the sending organisation, SQLite and PostgreSQL: whom a
message may act for (MSH-4), the sender's own patient record split off the shared
one when other organisations' studies use it, new studies placed on it, and merges,
unlinks and identifier changes that move the sender's studies only."""

from __future__ import annotations

import ipaddress

import pytest
from sqlalchemy import Engine, select

from kuva.config import LOCAL_ORGANIZATION_OID
from kuva.index.patients import PatientRow
from kuva.index.schema import study
from kuva.index.uow import UnitOfWork
from kuva.model.patient import (
    ChangeIdentifier,
    Demographics,
    MergePatients,
    PatientCommand,
    PatientCorrectionError,
    PatientKey,
    SenderRefused,
    UnlinkPatients,
    UpdatePatient,
)
from kuva.services.patients import MessageRef, PatientService, Senders
from tests.unit.test_index import ORG
from tests.unit.test_patients import MERGED, SURVIVOR, THIRD, store

ORG_A = ORG
ORG_B = "1.2.246.10.7654321.10"
STORED = "Testinen^Maija"
B_NAME = "Korjattu^Bee"


def send(
    service: PatientService, control: str, organization: str, *commands: PatientCommand
) -> str:
    """The ACK as "AA", "AA <note>", "AE" or "AR"."""

    def render(error: PatientCorrectionError | None = None, note: str = "") -> str:
        if error is not None:
            return "AR" if isinstance(error, SenderRefused) else "AE"
        return f"AA {note}".strip()

    ref = MessageRef("RIS", "TESTSAIRAALA", control, "ADT^A08", organization)
    return service.handle(ref, list(commands), render)


def records(engine: Engine, key: PatientKey) -> dict[str, PatientRow]:
    """The patient's records by organisation ("" = the shared one)."""
    with UnitOfWork(engine, write=False) as uow:
        return {row.organization_oid: row for row in uow.patients.records(key)}


def patient_of(engine: Engine, study_uid: str) -> tuple[PatientRow, int]:
    """The study's current patient record and the key of the one it was received for."""
    with UnitOfWork(engine, write=False) as uow:
        current, received = uow.conn.execute(
            select(study.c.patient_pk, study.c.received_patient_pk).where(
                study.c.study_instance_uid == study_uid
            )
        ).one()
        return uow.patients.get(current), received


def name_going_out(engine: Engine, study_uid: str) -> str | None:
    """The patient name retrieve coerces the study's instance to; None: as stored."""
    with UnitOfWork(engine, write=False) as uow:
        stored = uow.instances.get(f"{study_uid}.1.1")
    assert stored is not None
    return stored.corrected_patient.name if stored.corrected_patient else None


def test_whom_a_message_acts_for() -> None:
    embedded = Senders(frozenset({LOCAL_ORGANIZATION_OID, ORG_A}), open_access=True)
    assert embedded.organization("") == LOCAL_ORGANIZATION_OID
    assert embedded.organization("1.2.3") == LOCAL_ORGANIZATION_OID
    assert embedded.organization(ORG_A) == ORG_A
    senders = Senders(frozenset({ORG_A, ORG_B}))
    assert senders.organization(ORG_B) == ORG_B
    assert senders.organization(ORG_A, certified=ORG_A) == ORG_A
    for universal_id, certified, code in [
        ("", None, "101"),
        ("1.2.246.10.99999999.10", None, "204"),
        ("", ORG_A, "101"),
        (ORG_B, ORG_A, "204"),  # another organisation than the certificate's
    ]:
        with pytest.raises(SenderRefused) as refused:
            senders.organization(universal_id, certified)
        assert (refused.value.code, refused.value.field) == (code, "MSH-4")


def test_an_update_from_b_changes_b_studies_only(engine: Engine) -> None:
    dated: list[str] = []
    service = PatientService(
        engine,
        senders=Senders(frozenset({ORG_A, ORG_B})),
        on_retention=lambda uow, studies, at: dated.extend(studies),
    )
    a_study = store(engine, SURVIVOR, 1, organization=ORG_A)
    b_study = store(engine, SURVIVOR, 2, organization=ORG_B)
    update = UpdatePatient(SURVIVOR, Demographics(name=B_NAME, death_date="20260101"))
    assert send(service, "B1", ORG_B, update) == "AA"

    shared, own = records(engine, SURVIVOR)[""], records(engine, SURVIVOR)[ORG_B]
    assert (shared.name, shared.death_date) == (STORED, "")
    assert (own.name, own.death_date) == (B_NAME, "20260101")
    assert patient_of(engine, a_study) == (shared, shared.pk)
    # B's study: on B's record, still received for the shared one (its prohibitions
    # and legal holds cover it)
    assert patient_of(engine, b_study) == (own, shared.pk)
    assert (name_going_out(engine, a_study), name_going_out(engine, b_study)) == (None, B_NAME)
    assert dated == [b_study]  # retention recomputed for B's study only

    # New studies: B's go to B's record, A's to the shared one
    assert patient_of(engine, store(engine, SURVIVOR, 3, organization=ORG_B))[0] == own
    assert patient_of(engine, store(engine, SURVIVOR, 4, organization=ORG_A))[0] == shared
    # A corrects the shared record, B's stays; no further record is made
    assert send(service, "A1", ORG_A, UpdatePatient(SURVIVOR, Demographics(name="Aa^Aa"))) == "AA"
    after = records(engine, SURVIVOR)
    assert set(after) == {"", ORG_B}
    assert (after[""].name, after[ORG_B].name) == ("Aa^Aa", B_NAME)


def test_a_record_only_the_sender_uses_is_corrected_whole(engine: Engine) -> None:
    service = PatientService(engine, senders=Senders(frozenset({ORG_A, ORG_B})))
    b_study = store(engine, SURVIVOR, 1, organization=ORG_B)
    assert send(service, "B1", ORG_B, UpdatePatient(SURVIVOR, Demographics(name=B_NAME))) == "AA"
    (shared,) = records(engine, SURVIVOR).values()
    assert shared.organization_oid == "" and shared.name == B_NAME
    assert patient_of(engine, b_study)[0] == shared


def test_nothing_is_applied_for_a_sender_with_no_study_of_the_patient(engine: Engine) -> None:
    service = PatientService(engine, senders=Senders(frozenset({ORG_A, ORG_B})))
    store(engine, SURVIVOR, 1, organization=ORG_A)
    ack = send(service, "B1", ORG_B, UpdatePatient(SURVIVOR, Demographics(name=B_NAME)))
    assert ack == "AA the sending organisation archives no study of this patient: nothing changed"
    assert send(service, "B2", ORG_B, ChangeIdentifier(old=SURVIVOR, new=THIRD)) == "AE"
    (shared,) = records(engine, SURVIVOR).values()
    assert shared.name == STORED


def test_a_message_of_no_configured_organisation_is_not_recorded(engine: Engine) -> None:
    service = PatientService(engine, senders=Senders(frozenset({ORG_A})))
    store(engine, SURVIVOR, 1, organization=ORG_A)
    update = UpdatePatient(SURVIVOR, Demographics(name=B_NAME))
    assert send(service, "X1", ORG_B, update) == "AR"
    assert records(engine, SURVIVOR)[""].name == STORED
    assert send(service, "X1", ORG_A, update) == "AA"  # not seen before: applied
    assert records(engine, SURVIVOR)[""].name == B_NAME


def test_merge_unlink_and_identifier_change_move_the_sender_studies(engine: Engine) -> None:
    service = PatientService(engine, senders=Senders(frozenset({ORG_A, ORG_B})))
    a_study = store(engine, MERGED, 1, organization=ORG_A)
    b_study = store(engine, MERGED, 2, organization=ORG_B)
    store(engine, SURVIVOR, 3, organization=ORG_B)

    def key(study_uid: str) -> PatientKey:
        return patient_of(engine, study_uid)[0].key

    assert send(service, "M1", ORG_B, MergePatients(SURVIVOR, MERGED)) == "AA"
    assert (key(a_study), key(b_study)) == (MERGED, SURVIVOR)
    late_b = store(engine, MERGED, 4, organization=ORG_B)
    late_a = store(engine, MERGED, 5, organization=ORG_A)
    assert (key(late_a), key(late_b)) == (MERGED, SURVIVOR)
    assert records(engine, MERGED)[""].merged_into_pk is None  # the shared record: unmerged

    assert send(service, "U1", ORG_B, UnlinkPatients(SURVIVOR, MERGED)) == "AA"
    assert [key(uid) for uid in (a_study, b_study, late_a, late_b)] == [MERGED] * 4
    assert patient_of(engine, b_study)[0].organization_oid == ORG_B

    assert send(service, "C1", ORG_B, ChangeIdentifier(old=MERGED, new=THIRD)) == "AA"
    assert [key(uid) for uid in (a_study, b_study, late_a, late_b)] == [
        MERGED,
        THIRD,
        MERGED,
        THIRD,
    ]
    # B's late instance of the old identifier goes to the new one; A's does not
    assert key(store(engine, MERGED, 6, organization=ORG_B)) == THIRD
    assert key(store(engine, MERGED, 7, organization=ORG_A)) == MERGED


def test_an_unlink_after_the_survivor_was_split(engine: Engine) -> None:
    """B merges its record into a patient A also has studies of, then corrects that
    patient (its record is split off), then undoes the merge."""
    service = PatientService(engine, senders=Senders(frozenset({ORG_A, ORG_B})))
    store(engine, MERGED, 1, organization=ORG_A)
    b_study = store(engine, MERGED, 2, organization=ORG_B)
    a_survivor = store(engine, SURVIVOR, 3, organization=ORG_A)
    assert send(service, "M1", ORG_B, MergePatients(SURVIVOR, MERGED)) == "AA"
    rename = UpdatePatient(SURVIVOR, Demographics(name=B_NAME))
    assert send(service, "U1", ORG_B, rename) == "AA"
    assert patient_of(engine, b_study)[0].name == B_NAME
    assert patient_of(engine, a_survivor)[0].name == STORED
    assert send(service, "L1", ORG_B, UnlinkPatients(SURVIVOR, MERGED)) == "AA"
    assert patient_of(engine, b_study)[0].key == MERGED


def test_the_operator_acts_for_every_organisation(engine: Engine) -> None:
    service = PatientService(engine)
    a_study = store(engine, MERGED, 1, organization=ORG_A)
    b_study = store(engine, MERGED, 2, organization=ORG_B)
    store(engine, SURVIVOR, 3, organization=ORG_A)
    service.merge(MERGED, SURVIVOR, by="operator")
    assert {patient_of(engine, uid)[0].key for uid in (a_study, b_study)} == {SURVIVOR}
    assert set(records(engine, MERGED)) == {""}


def test_senders_by_source_address() -> None:
    """[[hl7.senders]]: an organisation sends from its networks only; none listed:
    MSH-4 is taken as sent."""
    senders = Senders(
        frozenset({ORG_A, ORG_B}),
        networks={
            ORG_A: (ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("2001:db8::/32")),
        },
    )
    senders.check_address(ORG_A, "192.0.2.7")
    senders.check_address(ORG_A, "2001:db8::1")
    for organization, address in ((ORG_A, "198.51.100.1"), (ORG_B, "192.0.2.7"), (ORG_A, "")):
        with pytest.raises(SenderRefused, match=r"\[\[hl7\.senders\]\]"):
            senders.check_address(organization, address)
    Senders(frozenset({ORG_A})).check_address(ORG_A, "198.51.100.1")  # none listed
