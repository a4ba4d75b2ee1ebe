"""Repository of patient identity corrections: merges as an overlay, updates of
demographics, identifier changes, and the HL7 messages already applied.

A merge never rewrites instances: the source patient records ``merged_into`` and its
studies' ``patient_pk`` points at the survivor, while ``received_patient_pk`` keeps
the patient each study was received for, so that an unlink can move them back.
Touching a patient with 100,000 instances touches its few study rows.

A patient (Patient ID + issuer) has its shared record (``organization_oid`` "",
the one ``received_patient_pk`` names) and, once an organisation's HL7 correction
had to leave other organisations' studies alone, that organisation's own record
(``split``), to which its studies of the patient belong from then on (ingest
prefers it: index.instances). Everything is looked up on the unique (Patient ID,
issuer, organisation) key and the indexed study columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, exists, func, insert, literal_column, or_, select, update
from sqlalchemy.exc import IntegrityError

from kuva.index.instances import survivor
from kuva.index.schema import hl7_message, patient, study
from kuva.model.clock import utcnow
from kuva.model.patient import Demographics, DuplicateMessage, PatientKey


@dataclass(frozen=True)
class PatientRow:
    pk: int
    key: PatientKey
    name: str
    birth_date: str
    sex: str
    merged_into_pk: int | None
    death_date: str = ""
    organization_oid: str = ""  # "" = the shared record; else that organisation's own


_COLUMNS = (
    patient.c.pk,
    patient.c.patient_id,
    patient.c.issuer,
    patient.c.patient_name,
    patient.c.birth_date,
    patient.c.sex,
    patient.c.merged_into_pk,
    patient.c.death_date,
    patient.c.organization_oid,
)


@dataclass(frozen=True)
class PatientStudy:
    """A study of a patient as an operator sees it (``kuva patients show``)."""

    study_instance_uid: str
    study_date: str
    accession_number: str
    modalities: str
    instances: int
    received_for: PatientKey


# Longest merge chain followed (merges refuse cycles; this bounds a damaged index).
_MAX_HOPS = 100


def _row(row: Any) -> PatientRow:
    return PatientRow(
        int(row.pk),
        PatientKey(row.patient_id, row.issuer),
        row.patient_name,
        row.birth_date,
        row.sex,
        row.merged_into_pk,
        row.death_date,
        row.organization_oid,
    )


class PatientRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def find(self, key: PatientKey, organization: str | None = None) -> PatientRow | None:
        """``organization``'s record of the patient ("" = the shared one); None: its
        shared record, else an organisation's own when it has no shared one."""
        statement = select(*_COLUMNS).where(
            patient.c.patient_id == key.patient_id, patient.c.issuer == key.issuer
        )
        if organization is not None:
            statement = statement.where(patient.c.organization_oid == organization)
        row = self.conn.execute(
            statement.order_by(patient.c.organization_oid, patient.c.pk).limit(1)
        ).one_or_none()
        return _row(row) if row is not None else None

    def records(self, key: PatientKey) -> list[PatientRow]:
        """Every record of the patient: the shared one and organisations' own."""
        rows = self.conn.execute(
            select(*_COLUMNS)
            .where(patient.c.patient_id == key.patient_id, patient.c.issuer == key.issuer)
            .order_by(patient.c.organization_oid, patient.c.pk)
        )
        return [_row(row) for row in rows]

    def used_by_others(self, row: PatientRow, organization: str) -> bool:
        """Whether a study of another organisation belongs to the patient now, or was
        received for it and would come back to it (an unmerge) - not one placed on
        its organisation's own record of the patient."""
        own = patient.alias("own")
        return bool(
            self.conn.execute(
                select(
                    or_(
                        exists().where(
                            study.c.patient_pk == row.pk, study.c.organization_oid != organization
                        ),
                        exists().where(
                            study.c.received_patient_pk == row.pk,
                            study.c.organization_oid != organization,
                            ~exists().where(
                                own.c.patient_id == row.key.patient_id,
                                own.c.issuer == row.key.issuer,
                                own.c.organization_oid == study.c.organization_oid,
                            ),
                        ),
                    )
                )
            ).scalar()
        )

    def holds_studies(self, pk: int, organization: str) -> bool:
        """Whether a study of ``organization`` belongs to the patient now."""
        return bool(
            self.conn.execute(
                select(
                    exists().where(
                        study.c.patient_pk == pk, study.c.organization_oid == organization
                    )
                )
            ).scalar()
        )

    def split(self, pk: int, organization: str, at: datetime) -> int:
        """``organization``'s own record of the patient, made from ``pk`` (its values,
        its merge), with ``organization``'s studies of ``pk`` moved onto it (they
        keep ``pk`` as the patient they were received for) and its own records
        merged into ``pk`` merged into it."""
        src = self.conn.execute(select(patient).where(patient.c.pk == pk)).one()
        values = {
            name: getattr(src, name)
            for name in (
                "patient_id",
                "issuer",
                "patient_name",
                "patient_name_norm",
                "birth_date",
                "sex",
                "merged_into_pk",
                "corrected_at",
                "death_date",
            )
        }
        own = int(
            self.conn.execute(
                insert(patient)
                .values(**values, organization_oid=organization, created_at=at)
                .returning(patient.c.pk)
            ).scalar_one()
        )
        self.conn.execute(
            update(study)
            .where(study.c.patient_pk == pk, study.c.organization_oid == organization)
            .values(patient_pk=own)
        )
        # The organisation's own records merged into this patient are merged into
        # its own record now (their unlink finds the merge there).
        self.conn.execute(
            update(patient)
            .where(patient.c.merged_into_pk == pk, patient.c.organization_oid == organization)
            .values(merged_into_pk=own)
        )
        return own

    def get(self, pk: int) -> PatientRow:
        return _row(self.conn.execute(select(*_COLUMNS).where(patient.c.pk == pk)).one())

    def create(self, key: PatientKey, at: datetime, organization: str = "") -> int:
        """An empty patient record (a merge source not seen yet: its instances, when
        they come, go to the survivor); ``organization``: its own record."""
        return int(
            self.conn.execute(
                insert(patient)
                .values(
                    patient_id=key.patient_id,
                    issuer=key.issuer,
                    organization_oid=organization,
                    created_at=at,
                )
                .returning(patient.c.pk)
            ).scalar_one()
        )

    def survivor(self, pk: int) -> int:
        return survivor(self.conn, pk)

    def merge(self, source_pk: int, target_pk: int) -> list[str]:
        """Merge ``source`` into ``target``; returns the Study Instance UIDs of the
        studies that moved. The caller has refused cycles (``survivor(target) ==
        source``)."""
        self.conn.execute(
            update(patient).where(patient.c.pk == source_pk).values(merged_into_pk=target_pk)
        )
        moved = self.conn.execute(
            update(study)
            .where(study.c.patient_pk == source_pk)
            .values(patient_pk=survivor(self.conn, target_pk))
            .returning(study.c.study_instance_uid)
        )
        return list(moved.scalars())

    def unmerge(self, source_pk: int) -> list[str]:
        """Undo the merge of ``source``: each study under its former survivor goes back
        to the survivor of the patient it was received for - its organisation's own
        record of that patient when there is one, as ingest places a study. Returns
        the Study Instance UIDs of the studies that moved."""
        former = survivor(self.conn, source_pk)
        self.conn.execute(
            update(patient).where(patient.c.pk == source_pk).values(merged_into_pk=None)
        )
        received_patients = self.conn.execute(
            select(study.c.received_patient_pk, study.c.organization_oid)
            .where(study.c.patient_pk == former)
            .distinct()
        ).all()
        moved: list[str] = []
        for received, organization in received_patients:  # a few, however many studies
            if received is None:  # indexed before the received patient was kept
                continue
            now = survivor(self.conn, self._placed(received, organization))
            if now != former:
                result = self.conn.execute(
                    update(study)
                    .where(
                        study.c.patient_pk == former,
                        study.c.received_patient_pk == received,
                        study.c.organization_oid == organization,
                    )
                    .values(patient_pk=now)
                    .returning(study.c.study_instance_uid)
                )
                moved.extend(result.scalars())
        return moved

    def _placed(self, received_pk: int, organization: str) -> int:
        """The record a study received for ``received_pk`` belongs to: its
        organisation's own record of that patient, else ``received_pk``."""
        held = patient.alias("held")
        own = self.conn.execute(
            select(patient.c.pk)
            .join(
                held,
                (held.c.patient_id == patient.c.patient_id) & (held.c.issuer == patient.c.issuer),
            )
            .where(held.c.pk == received_pk, patient.c.organization_oid == organization)
        ).scalar()
        return int(own) if own is not None else received_pk

    def update(self, pk: int, demographics: Demographics, at: datetime | None = None) -> None:
        """New demographics; the patient is marked corrected (``corrected_at``), so
        that its objects go out with them (services.retrieve)."""
        values: dict[str, object] = {}
        if demographics.name is not None:
            name = demographics.name
            values.update(patient_name=name, patient_name_norm=name.upper())
        if demographics.birth_date is not None:
            values["birth_date"] = demographics.birth_date
        if demographics.sex is not None:
            values["sex"] = demographics.sex
        if values:
            values["corrected_at"] = at or utcnow()
        # The death date goes out with no object: it does not make the patient corrected.
        if demographics.death_date is not None:
            values["death_date"] = demographics.death_date
        if values:
            self.conn.execute(update(patient).where(patient.c.pk == pk).values(**values))

    def change_identifier(self, pk: int, key: PatientKey, at: datetime | None = None) -> None:
        self.conn.execute(
            update(patient)
            .where(patient.c.pk == pk)
            .values(patient_id=key.patient_id, issuer=key.issuer, corrected_at=at or utcnow())
        )

    def study_uids(self, pk: int) -> list[str]:
        """Study Instance UIDs of the studies that belong to the patient now."""
        return list(
            self.conn.execute(
                select(study.c.study_instance_uid)
                .where(study.c.patient_pk == pk)
                .order_by(study.c.pk)
            ).scalars()
        )

    # ------------------------------------------------------------------ operator's view

    def chain(self, pk: int) -> list[PatientRow]:
        """The patient and those it is merged into, in order, up to its survivor (the
        last); one recursive statement, like ``survivor``."""
        link = patient.alias("link")
        walk = (
            select(patient.c.pk, patient.c.merged_into_pk, literal_column("0").label("hop"))
            .where(patient.c.pk == pk)
            .cte("walk", recursive=True)
        )
        walk = walk.union(
            select(link.c.pk, link.c.merged_into_pk, walk.c.hop + 1).where(
                link.c.pk == walk.c.merged_into_pk, walk.c.hop < _MAX_HOPS
            )
        )
        hops = select(walk.c.pk, walk.c.hop).subquery()
        rows = self.conn.execute(
            select(*_COLUMNS).join(hops, hops.c.pk == patient.c.pk).order_by(hops.c.hop)
        )
        return [_row(row) for row in rows]

    def merged_into_this(self, pk: int) -> list[PatientRow]:
        """The patients merged into this one, directly or through others."""
        link = patient.alias("link")
        members = (
            select(patient.c.pk)
            .where(patient.c.merged_into_pk == pk)
            .cte("members", recursive=True)
        )
        members = members.union(select(link.c.pk).where(link.c.merged_into_pk == members.c.pk))
        rows = self.conn.execute(
            select(*_COLUMNS).where(patient.c.pk.in_(select(members.c.pk))).order_by(patient.c.pk)
        )
        return [_row(row) for row in rows]

    def studies(self, pk: int) -> list[PatientStudy]:
        """The studies that belong to the patient now, oldest first, each with the
        patient it was received for."""
        received = patient.alias("received")
        rows = self.conn.execute(
            select(
                study.c.study_instance_uid,
                study.c.study_date,
                study.c.accession_number,
                study.c.modalities_in_study,
                study.c.number_of_instances,
                received.c.patient_id,
                received.c.issuer,
            )
            .select_from(
                study.outerjoin(
                    received,
                    received.c.pk == func.coalesce(study.c.received_patient_pk, study.c.patient_pk),
                )
            )
            .where(study.c.patient_pk == pk)
            .order_by(study.c.study_date, study.c.pk)
        )
        return [
            PatientStudy(
                study_instance_uid=row.study_instance_uid,
                study_date=row.study_date,
                accession_number=row.accession_number,
                modalities=row.modalities_in_study,
                instances=int(row.number_of_instances),
                received_for=PatientKey(row.patient_id or "", row.issuer or ""),
            )
            for row in rows
        ]

    # ------------------------------------------------------------------ HL7 messages

    def seen_message(self, application: str, facility: str, control_id: str) -> str | None:
        """The ACK given to a message already applied, or None."""
        return self.conn.execute(
            select(hl7_message.c.ack).where(
                hl7_message.c.sending_application == application,
                hl7_message.c.sending_facility == facility,
                hl7_message.c.control_id == control_id,
            )
        ).scalar()

    def record_message(
        self,
        application: str,
        facility: str,
        control_id: str,
        message_type: str,
        ack: str,
        at: datetime,
    ) -> None:
        """Record a message and its ACK. DuplicateMessage: another connection recorded
        the same one first (the unique sender + control id); this transaction is
        then spent, to be rolled back."""
        try:
            self.conn.execute(
                insert(hl7_message).values(
                    sending_application=application,
                    sending_facility=facility,
                    control_id=control_id,
                    message_type=message_type,
                    ack=ack,
                    received_at=at,
                )
            )
        except IntegrityError as exc:
            raise DuplicateMessage(control_id) from exc
