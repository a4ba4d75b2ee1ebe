"""Repository of patient identity corrections: merges as an overlay, updates of
demographics, identifier changes, and the HL7 messages already applied.

A merge never rewrites instances: the source patient records ``merged_into`` and its
studies' ``patient_pk`` points at the survivor, while ``received_patient_pk`` keeps
the patient each study was received for, so that an unlink can move them back.
Touching a patient with 100,000 instances touches its few study rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select, update

from kuva.index.instances import survivor
from kuva.index.schema import hl7_message, patient, study
from kuva.model.patient import Demographics, PatientKey


@dataclass(frozen=True)
class PatientRow:
    pk: int
    key: PatientKey
    name: str
    birth_date: str
    sex: str
    merged_into_pk: int | None


_COLUMNS = (
    patient.c.pk,
    patient.c.patient_id,
    patient.c.issuer,
    patient.c.patient_name,
    patient.c.birth_date,
    patient.c.sex,
    patient.c.merged_into_pk,
)


def _row(row: Any) -> PatientRow:
    return PatientRow(
        int(row.pk),
        PatientKey(row.patient_id, row.issuer),
        row.patient_name,
        row.birth_date,
        row.sex,
        row.merged_into_pk,
    )


class PatientRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def find(self, key: PatientKey) -> PatientRow | None:
        row = self.conn.execute(
            select(*_COLUMNS).where(
                patient.c.patient_id == key.patient_id, patient.c.issuer == key.issuer
            )
        ).one_or_none()
        return _row(row) if row is not None else None

    def get(self, pk: int) -> PatientRow:
        return _row(self.conn.execute(select(*_COLUMNS).where(patient.c.pk == pk)).one())

    def create(self, key: PatientKey, at: datetime) -> int:
        """An empty patient record (a merge source not seen yet: its instances, when
        they come, go to the survivor)."""
        return int(
            self.conn.execute(
                insert(patient)
                .values(patient_id=key.patient_id, issuer=key.issuer, created_at=at)
                .returning(patient.c.pk)
            ).scalar_one()
        )

    def survivor(self, pk: int) -> int:
        return survivor(self.conn, pk)

    def merge(self, source_pk: int, target_pk: int) -> int:
        """Merge ``source`` into ``target``; returns how many studies moved. The caller
        has refused cycles (``survivor(target) == source``)."""
        self.conn.execute(
            update(patient).where(patient.c.pk == source_pk).values(merged_into_pk=target_pk)
        )
        moved = self.conn.execute(
            update(study)
            .where(study.c.patient_pk == source_pk)
            .values(patient_pk=survivor(self.conn, target_pk))
        )
        return int(moved.rowcount)

    def unmerge(self, source_pk: int) -> int:
        """Undo the merge of ``source``: each study under its former survivor goes back
        to the survivor of the patient it was received for. Returns studies moved."""
        former = survivor(self.conn, source_pk)
        self.conn.execute(
            update(patient).where(patient.c.pk == source_pk).values(merged_into_pk=None)
        )
        received_patients = self.conn.execute(
            select(study.c.received_patient_pk).where(study.c.patient_pk == former).distinct()
        ).scalars()
        moved = 0
        for received in list(received_patients):  # a few patients, however many studies
            now = survivor(self.conn, received)
            if now != former:
                result = self.conn.execute(
                    update(study)
                    .where(study.c.patient_pk == former, study.c.received_patient_pk == received)
                    .values(patient_pk=now)
                )
                moved += int(result.rowcount)
        return moved

    def update(self, pk: int, demographics: Demographics) -> None:
        values: dict[str, str] = {}
        if demographics.name is not None:
            name = demographics.name
            values.update(patient_name=name, patient_name_norm=name.upper())
        if demographics.birth_date is not None:
            values["birth_date"] = demographics.birth_date
        if demographics.sex is not None:
            values["sex"] = demographics.sex
        if values:
            self.conn.execute(update(patient).where(patient.c.pk == pk).values(**values))

    def change_identifier(self, pk: int, key: PatientKey) -> None:
        self.conn.execute(
            update(patient)
            .where(patient.c.pk == pk)
            .values(patient_id=key.patient_id, issuer=key.issuer)
        )

    def study_count(self, pk: int) -> int:
        rows = self.conn.execute(select(study.c.pk).where(study.c.patient_pk == pk)).all()
        return len(rows)

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
