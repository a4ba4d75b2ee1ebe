"""Repository for manifests: a study with its patient and every instance it holds.

What an XDS-I.b manifest of a study lists (RAD TF-3 4.68.4.1.2.3), and what its
registration and Instance Availability Notifications need, read from indexed
columns only, so that neither ever opens a blob.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, select

from kuva.index.schema import instance, patient, series, study
from kuva.model.instance import PatientAttributes, StudyAttributes
from kuva.model.uids import made_by_kuva


@dataclass(frozen=True)
class ListedInstance:
    series_instance_uid: str
    series_number: int | None
    sop_class_uid: str
    sop_instance_uid: str
    instance_number: int | None
    rows: int | None  # Rows (0028,0010): the instance holds pixel data


@dataclass(frozen=True)
class StudyListing:
    patient: PatientAttributes
    study: StudyAttributes
    instances: list[ListedInstance]
    # Timezone Offset From UTC (0008,0201) of the study's first listed object that
    # kuva did not make; "" when it has none
    timezone_offset: str = ""


_STUDY = (
    select(
        patient.c.patient_id,
        patient.c.issuer,
        patient.c.patient_name,
        patient.c.birth_date,
        patient.c.sex,
        study.c.pk,
        study.c.study_instance_uid,
        study.c.study_date,
        study.c.study_time,
        study.c.accession_number,
        study.c.study_id,
        study.c.study_description,
        study.c.referring_physician_name,
    )
    .select_from(study.join(patient, study.c.patient_pk == patient.c.pk))
    .where(study.c.study_instance_uid == bindparam("uid"))
)
_DATASET = select(instance.c.dataset_json).where(instance.c.sop_instance_uid == bindparam("uid"))
TIMEZONE_OFFSET_FROM_UTC = "00080201"
_INSTANCES = (
    select(
        series.c.series_instance_uid,
        series.c.series_number,
        instance.c.sop_class_uid,
        instance.c.sop_instance_uid,
        instance.c.instance_number,
        instance.c.rows,
    )
    .select_from(instance.join(series, instance.c.series_pk == series.c.pk))
    .where(
        series.c.study_pk == bindparam("study_pk"),
        instance.c.rejection_code.is_(None),  # rejected (IOCM)
        instance.c.rejection_note_code.is_(None),  # a rejection note
    )
)


@dataclass(frozen=True)
class HeldInstance:
    """An instance of a study as its registration sees it."""

    pk: int  # increases with arrival: a registration lists the instances up to one
    series_instance_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    received_at: datetime
    modality: str  # of its series
    rejection_code: str | None  # IOCM: rejected instances are UNAVAILABLE
    rejection_note_code: str | None  # set for rejection notes


@dataclass(frozen=True)
class StudyHoldings:
    study_instance_uid: str
    organization_oid: str  # the register holder
    instances: list[HeldInstance]  # in arrival (pk) order


_HOLDINGS_STUDY = select(study.c.pk, study.c.organization_oid).where(
    study.c.study_instance_uid == bindparam("uid")
)
_HOLDINGS = (
    select(
        instance.c.pk,
        series.c.series_instance_uid,
        instance.c.sop_class_uid,
        instance.c.sop_instance_uid,
        instance.c.received_at,
        series.c.modality,
        instance.c.rejection_code,
        instance.c.rejection_note_code,
    )
    .select_from(instance.join(series, instance.c.series_pk == series.c.pk))
    .where(series.c.study_pk == bindparam("study_pk"))
    .order_by(instance.c.pk)
)


def _order(row: ListedInstance) -> tuple[Any, ...]:
    """Series (number, UID), instance (number, UID); unnumbered last.

    Sorted here rather than in SQL so that the order is the same on every database.
    """
    return (
        row.series_number is None,
        row.series_number or 0,
        row.series_instance_uid,
        row.instance_number is None,
        row.instance_number or 0,
        row.sop_instance_uid,
    )


class ManifestRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def study(self, study_instance_uid: str) -> StudyListing | None:
        """The study, its patient and its instances in series/instance order; None if unknown."""
        head = self.conn.execute(_STUDY, {"uid": study_instance_uid}).first()
        if head is None:
            return None
        rows = self.conn.execute(_INSTANCES, {"study_pk": head.pk})
        listed = sorted((ListedInstance(*row) for row in rows), key=_order)
        received = next((i for i in listed if not made_by_kuva(i.sop_instance_uid)), None)
        return StudyListing(
            patient=PatientAttributes(
                patient_id=head.patient_id,
                issuer=head.issuer,
                name=head.patient_name,
                birth_date=head.birth_date,
                sex=head.sex,
            ),
            study=StudyAttributes(
                study_instance_uid=head.study_instance_uid,
                study_date=head.study_date,
                study_time=head.study_time,
                accession_number=head.accession_number,
                study_id=head.study_id,
                description=head.study_description,
                referring_physician_name=head.referring_physician_name,
            ),
            instances=listed,
            timezone_offset=self._offset(received.sop_instance_uid) if received else "",
        )

    def _offset(self, sop_instance_uid: str) -> str:
        """An instance's Timezone Offset From UTC, from its DICOM JSON (one row)."""
        text = self.conn.execute(_DATASET, {"uid": sop_instance_uid}).scalar()
        values = json.loads(text).get(TIMEZONE_OFFSET_FROM_UTC, {}).get("Value") if text else None
        return str(values[0]) if values else ""

    def holdings(self, study_instance_uid: str) -> StudyHoldings | None:
        """The study's register holder and instances; None if unknown."""
        head = self.conn.execute(_HOLDINGS_STUDY, {"uid": study_instance_uid}).first()
        if head is None:
            return None
        rows = self.conn.execute(_HOLDINGS, {"study_pk": head.pk})
        return StudyHoldings(
            study_instance_uid=study_instance_uid,
            organization_oid=head.organization_oid,
            instances=[HeldInstance(*row) for row in rows],
        )
