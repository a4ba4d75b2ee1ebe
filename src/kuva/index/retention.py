"""Repository of retention (services.retention): each study's stored expiry, legal
holds, the steps of a destruction and the destruction records that outlive it.

Every statement reads an index: the expiry by ``study.expires_on`` (what has
expired is one range scan), a study's instances by ``series.study_pk`` and
``instance.series_pk``, holds by study UID or patient, blobs by ``blob_key``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    Connection,
    bindparam,
    delete,
    exists,
    insert,
    or_,
    select,
    update,
)

from kuva.index.schema import (
    destruction,
    disclosure_prohibition,
    instance,
    legal_hold,
    patient,
    rejection,
    series,
    study,
    xds_document,
)
from kuva.model.rejection import RETENTION_EXPIRED, StudyStanding
from kuva.model.retention import Expiry, StudyFacts, parse_dicom_date

CHUNK = 500


def _chunks(values: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


@dataclass(frozen=True)
class ExpiredStudy:
    pk: int
    study_instance_uid: str
    organization_oid: str  # the register holder
    policy: str
    expires_on: date


@dataclass(frozen=True)
class DoomedInstance:
    """An instance about to be destroyed: what its record and IAN name of it."""

    pk: int
    series_pk: int
    series_instance_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    sha256: str
    blob_key: str


@dataclass(frozen=True)
class Hold:
    pk: int
    study_instance_uid: str | None
    patient_id: str | None
    patient_issuer: str | None
    reason: str
    held_by: str
    held_at: datetime


@dataclass(frozen=True)
class DestructionRecord:
    pk: int
    study_instance_uid: str
    organization_oid: str
    patient_id: str
    patient_issuer: str
    policy: str
    expires_on: date | None
    rejection_note_uid: str | None
    reason: str
    destroyed_by: str
    decided_at: datetime
    destroyed_at: datetime | None
    instances: int
    sha256_digest: str
    # When and by whom an operator allowed the study to be archived again; None: not.
    resend_allowed_at: datetime | None = None
    resend_allowed_by: str | None = None


_RECORD_COLUMNS = (
    destruction.c.pk,
    destruction.c.study_instance_uid,
    destruction.c.organization_oid,
    destruction.c.patient_id,
    destruction.c.patient_issuer,
    destruction.c.policy,
    destruction.c.expires_on,
    destruction.c.rejection_note_uid,
    destruction.c.reason,
    destruction.c.destroyed_by,
    destruction.c.decided_at,
    destruction.c.destroyed_at,
    destruction.c.instances,
    destruction.c.sha256_digest,
    destruction.c.resend_allowed_at,
    destruction.c.resend_allowed_by,
)


def _record(row: Any) -> DestructionRecord:
    return DestructionRecord(*row)


# Looked up only when an instance starts a study the index does not hold (ingest).
_BARRING_RESEND = (
    select(*_RECORD_COLUMNS)
    .where(
        destruction.c.study_instance_uid == bindparam("uid"),
        destruction.c.resend_allowed_at.is_(None),
    )
    .order_by(destruction.c.pk.desc())
    .limit(1)
)


# A hold on the study, on its current patient or on the patient it was received for.
_HELD = or_(
    exists().where(legal_hold.c.study_instance_uid == study.c.study_instance_uid),
    exists().where(legal_hold.c.patient_pk == study.c.patient_pk),
    exists().where(legal_hold.c.patient_pk == study.c.received_patient_pk),
)

_FACTS = select(
    study.c.pk,
    study.c.organization_oid,
    study.c.modalities_in_study,
    study.c.study_date,
    patient.c.birth_date,
    patient.c.death_date,
).select_from(study.join(patient, study.c.patient_pk == patient.c.pk))

_SET_EXPIRY = (
    update(study)
    .where(study.c.pk == bindparam("b_pk"))
    .values(expires_on=bindparam("b_expires_on"), retention_policy=bindparam("b_policy"))
)

_DOOMED_COLUMNS = (
    instance.c.pk,
    instance.c.series_pk,
    series.c.series_instance_uid,
    instance.c.sop_class_uid,
    instance.c.sop_instance_uid,
    instance.c.sha256,
    instance.c.blob_key,
)
_TREE = instance.join(series, instance.c.series_pk == series.c.pk)


class RetentionRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    # ------------------------------------------------------------------ expiry

    def facts(self, study_pks: Sequence[int], *, sop_classes: bool) -> dict[int, StudyFacts]:
        """What retention decides on, per study (its current patient's dates);
        the SOP classes of its current instances only when ``sop_classes``."""
        found: dict[int, StudyFacts] = {}
        classes: dict[int, set[str]] = {}
        for chunk in _chunks(list(study_pks)):
            rows = self.conn.execute(_FACTS.where(study.c.pk.in_(chunk))).all()
            if sop_classes:
                for study_pk, sop_class in self.conn.execute(
                    select(series.c.study_pk, instance.c.sop_class_uid)
                    .select_from(_TREE)
                    .where(series.c.study_pk.in_(chunk), instance.c.rejection_code.is_(None))
                    .distinct()
                ):
                    classes.setdefault(int(study_pk), set()).add(sop_class)
            for row in rows:
                found[int(row.pk)] = StudyFacts(
                    organization_oid=row.organization_oid,
                    modalities=frozenset(m for m in row.modalities_in_study.split("\\") if m),
                    sop_classes=frozenset(classes.get(int(row.pk), ())),
                    study_date=parse_dicom_date(row.study_date),
                    birth_date=parse_dicom_date(row.birth_date),
                    death_date=parse_dicom_date(row.death_date),
                )
        return found

    def set_expiry(self, expiries: dict[int, Expiry | None]) -> None:
        rows = [
            {
                "b_pk": pk,
                "b_expires_on": expiry.expires_on if expiry else None,
                "b_policy": expiry.policy if expiry else None,
            }
            for pk, expiry in expiries.items()
        ]
        if rows:
            self.conn.execute(_SET_EXPIRY, rows)

    def study_pk(self, study_uid: str) -> int | None:
        pk = self.conn.execute(
            select(study.c.pk).where(study.c.study_instance_uid == study_uid)
        ).scalar()
        return int(pk) if pk is not None else None

    def study_pks(self, study_uids: Iterable[str]) -> list[int]:
        pks: list[int] = []
        for chunk in _chunks(sorted(set(study_uids))):
            pks.extend(
                self.conn.execute(
                    select(study.c.pk).where(study.c.study_instance_uid.in_(chunk))
                ).scalars()
            )
        return pks

    def study_pks_after(self, after_pk: int, limit: int) -> list[int]:
        """The next ``limit`` study keys after ``after_pk`` (keyset pagination)."""
        return list(
            self.conn.execute(
                select(study.c.pk).where(study.c.pk > after_pk).order_by(study.c.pk).limit(limit)
            ).scalars()
        )

    def expiry_of(self, study_uid: str) -> tuple[date | None, str | None] | None:
        row = self.conn.execute(
            select(study.c.expires_on, study.c.retention_policy).where(
                study.c.study_instance_uid == study_uid
            )
        ).one_or_none()
        return (row.expires_on, row.retention_policy) if row is not None else None

    def expired(self, today: date, limit: int | None) -> list[ExpiredStudy]:
        """Studies whose expiry has come, no hold keeps and no destruction has taken
        yet, soonest expired first: a range scan of ``ix_study_expires_on``."""
        statement = (
            select(
                study.c.pk,
                study.c.study_instance_uid,
                study.c.organization_oid,
                study.c.retention_policy,
                study.c.expires_on,
            )
            .where(study.c.expires_on <= today, study.c.destroying_at.is_(None), ~_HELD)
            .order_by(study.c.expires_on, study.c.pk)
        )
        if limit is not None:
            statement = statement.limit(limit)
        return [ExpiredStudy(*row) for row in self.conn.execute(statement)]

    # ------------------------------------------------------------------ holds

    def add_hold(
        self,
        *,
        study_uid: str | None,
        patient_pk: int | None,
        reason: str,
        by: str,
        at: datetime,
    ) -> int:
        return int(
            self.conn.execute(
                insert(legal_hold)
                .values(
                    study_instance_uid=study_uid,
                    patient_pk=patient_pk,
                    reason=reason,
                    held_by=by[:64],
                    held_at=at,
                )
                .returning(legal_hold.c.pk)
            ).scalar_one()
        )

    def release(self, *, study_uid: str | None, patient_pk: int | None) -> int:
        """Delete the holds on the study or the patient; how many there were."""
        if study_uid is not None:
            condition = legal_hold.c.study_instance_uid == study_uid
        else:
            condition = legal_hold.c.patient_pk == patient_pk
        return int(self.conn.execute(delete(legal_hold).where(condition)).rowcount)

    def holds(self) -> list[Hold]:
        rows = self.conn.execute(
            select(
                legal_hold.c.pk,
                legal_hold.c.study_instance_uid,
                patient.c.patient_id,
                patient.c.issuer,
                legal_hold.c.reason,
                legal_hold.c.held_by,
                legal_hold.c.held_at,
            )
            .select_from(legal_hold.outerjoin(patient, legal_hold.c.patient_pk == patient.c.pk))
            .order_by(legal_hold.c.pk)
        )
        return [Hold(*row) for row in rows]

    def is_held(self, study_pk: int) -> bool:
        return bool(
            self.conn.execute(
                select(_HELD).select_from(study).where(study.c.pk == study_pk)
            ).scalar()
        )

    def standings(self, study_uids: Iterable[str]) -> list[StudyStanding]:
        """Hold and expiry of each of these studies the archive keeps (by its UID)."""
        uids = sorted(set(study_uids))
        found: list[StudyStanding] = []
        for chunk in _chunks(uids):
            rows = self.conn.execute(
                select(_HELD.label("held"), study.c.expires_on).where(
                    study.c.study_instance_uid.in_(chunk)
                )
            )
            found.extend(StudyStanding(bool(row.held), row.expires_on) for row in rows)
        return found

    def studies_held_by(self, *, study_uid: str | None, patient_pk: int | None) -> list[str]:
        """The studies a hold on ``study_uid`` or on the patient keeps."""
        if study_uid is not None:
            return [study_uid]
        rows = self.conn.execute(
            select(study.c.study_instance_uid).where(
                or_(study.c.patient_pk == patient_pk, study.c.received_patient_pk == patient_pk)
            )
        )
        return [row[0] for row in rows]

    def pending_notes(self, study_uids: Sequence[str]) -> list[str]:
        """The 113039 notes naming these studies whose rejected instances are still
        kept (their destruction waited for a hold)."""
        found: set[str] = set()
        for chunk in _chunks(study_uids):
            rows = self.conn.execute(
                select(rejection.c.note_sop_instance_uid)
                .distinct()
                .select_from(
                    rejection.join(
                        instance, instance.c.sop_instance_uid == rejection.c.sop_instance_uid
                    )
                )
                .where(
                    rejection.c.study_instance_uid.in_(chunk),
                    rejection.c.code == RETENTION_EXPIRED,
                    instance.c.rejection_code == RETENTION_EXPIRED,
                )
            )
            found.update(row[0] for row in rows)
        return sorted(found)

    def studies_of_note(self, note_uid: str) -> list[str]:
        rows = self.conn.execute(
            select(rejection.c.study_instance_uid)
            .distinct()
            .where(rejection.c.note_sop_instance_uid == note_uid)
        )
        return [row[0] for row in rows]

    # ------------------------------------------------------------------ destruction

    def studies_of(self, organization: str) -> list[str]:
        """The Study Instance UIDs the organisation holds (not being destroyed)."""
        query = select(study.c.study_instance_uid).where(
            study.c.organization_oid == organization, study.c.destroying_at.is_(None)
        )
        return list(self.conn.execute(query.order_by(study.c.pk)).scalars())

    def lock_study(self, study_uid: str) -> Any:
        """The study's row (pk, patient, holder, expiry, destroying_at), locked until
        the transaction ends; None when it is not held."""
        return self.conn.execute(
            select(
                study.c.pk,
                study.c.organization_oid,
                study.c.expires_on,
                study.c.retention_policy,
                study.c.destroying_at,
                patient.c.patient_id,
                patient.c.issuer,
            )
            .select_from(study.join(patient, study.c.patient_pk == patient.c.pk))
            .where(study.c.study_instance_uid == study_uid)
            .with_for_update(of=study)
        ).one_or_none()

    def mark_destroying(self, study_pk: int, at: datetime) -> None:
        """The first step of a study's destruction: every instance is rejected 113039
        (so every outgoing path and the integrity check leave it out) and the
        counters say empty (so C-FIND and QIDO-RS no longer list the study)."""
        self.conn.execute(update(study).where(study.c.pk == study_pk).values(destroying_at=at))
        series_pks = select(series.c.pk).where(series.c.study_pk == study_pk)
        self.conn.execute(
            update(instance)
            .where(instance.c.series_pk.in_(series_pks))
            .values(rejection_code=RETENTION_EXPIRED)
        )
        self.conn.execute(
            update(series).where(series.c.study_pk == study_pk).values(number_of_instances=0)
        )
        self.conn.execute(
            update(study)
            .where(study.c.pk == study_pk)
            .values(
                number_of_instances=0,
                number_of_series=0,
                modalities_in_study="",
                sop_classes_in_study="",
            )
        )

    def begin_record(self, values: dict[str, Any]) -> int:
        return int(
            self.conn.execute(
                insert(destruction).values(**values).returning(destruction.c.pk)
            ).scalar_one()
        )

    def lock_record(self, pk: int, *, lock: bool = True) -> DestructionRecord | None:
        """The record, locked until the transaction ends unless ``lock`` is false."""
        statement = select(*_RECORD_COLUMNS).where(destruction.c.pk == pk)
        if lock:
            statement = statement.with_for_update()
        row = self.conn.execute(statement).one_or_none()
        return _record(row) if row is not None else None

    def unfinished(self) -> list[DestructionRecord]:
        """Destructions decided but not finished (the process died midway)."""
        rows = self.conn.execute(
            select(*_RECORD_COLUMNS)
            .where(destruction.c.destroyed_at.is_(None))
            .order_by(destruction.c.pk)
        )
        return [_record(row) for row in rows]

    def unfinished_of_note(self, note_uid: str) -> int | None:
        """The unfinished destruction of a rejection note's instances, if any."""
        pk = self.conn.execute(
            select(destruction.c.pk).where(
                destruction.c.rejection_note_uid == note_uid, destruction.c.destroyed_at.is_(None)
            )
        ).scalar()
        return int(pk) if pk is not None else None

    def finish_record(
        self, pk: int, *, at: datetime, instances: int, digest: str, sha256_list: str
    ) -> None:
        self.conn.execute(
            update(destruction)
            .where(destruction.c.pk == pk)
            .values(
                destroyed_at=at, instances=instances, sha256_digest=digest, sha256_list=sha256_list
            )
        )

    def destroyed(
        self, *, study_uid: str | None, since: datetime | None, limit: int
    ) -> list[DestructionRecord]:
        statement = select(*_RECORD_COLUMNS).where(destruction.c.destroyed_at.is_not(None))
        if study_uid is not None:
            statement = statement.where(destruction.c.study_instance_uid == study_uid)
        if since is not None:
            statement = statement.where(destruction.c.destroyed_at >= since)
        statement = statement.order_by(destruction.c.destroyed_at.desc()).limit(limit)
        return [_record(row) for row in self.conn.execute(statement)]

    def sha256_list(self, pk: int) -> str:
        return str(
            self.conn.execute(
                select(destruction.c.sha256_list).where(destruction.c.pk == pk)
            ).scalar_one()
        )

    def is_destroyed(self, study_uid: str) -> bool:
        """Whether a destruction of the study (or of some of its instances) is recorded."""
        return (
            self.conn.execute(
                select(destruction.c.pk).where(destruction.c.study_instance_uid == study_uid)
            ).first()
            is not None
        )

    def barring_resend(self, study_uid: str) -> DestructionRecord | None:
        """The latest destruction of the study no operator has allowed a resend of
        (``allow_resend``); None: its instances may be archived (again)."""
        row = self.conn.execute(_BARRING_RESEND, {"uid": study_uid}).first()
        return _record(row) if row is not None else None

    def allow_resend(self, study_uid: str, *, by: str, reason: str, at: datetime) -> int:
        """Let the study's instances be archived again: every destruction of it not
        yet allowed is marked so; how many were."""
        result = self.conn.execute(
            update(destruction)
            .where(
                destruction.c.study_instance_uid == study_uid,
                destruction.c.resend_allowed_at.is_(None),
            )
            .values(resend_allowed_at=at, resend_allowed_by=by[:64], resend_reason=reason)
        )
        return int(result.rowcount)

    def blocks_revocation(self, note_uid: str) -> bool:
        """Whether a rejection note can no longer be revoked: a destruction of its
        instances is recorded, or a study it names is being destroyed."""
        recorded = select(destruction.c.pk).where(destruction.c.rejection_note_uid == note_uid)
        destroying = (
            select(study.c.pk)
            .join(rejection, rejection.c.study_instance_uid == study.c.study_instance_uid)
            .where(
                rejection.c.note_sop_instance_uid == note_uid, study.c.destroying_at.is_not(None)
            )
        )
        return (
            self.conn.execute(recorded.limit(1)).first() is not None
            or self.conn.execute(destroying.limit(1)).first() is not None
        )

    def instances_of_study(self, study_pk: int) -> list[DoomedInstance]:
        rows = self.conn.execute(
            select(*_DOOMED_COLUMNS)
            .select_from(_TREE)
            .where(series.c.study_pk == study_pk)
            .order_by(instance.c.pk)
        )
        return [DoomedInstance(*row) for row in rows]

    def instances_of_note(self, note_uid: str) -> list[DoomedInstance]:
        """The held instances a 113039 note rejects and that are still rejected."""
        rows = self.conn.execute(
            select(*_DOOMED_COLUMNS)
            .select_from(
                _TREE.join(rejection, rejection.c.sop_instance_uid == instance.c.sop_instance_uid)
            )
            .where(
                rejection.c.note_sop_instance_uid == note_uid,
                rejection.c.code == RETENTION_EXPIRED,
                instance.c.rejection_code == RETENTION_EXPIRED,
            )
            .order_by(instance.c.pk)
        )
        return [DoomedInstance(*row) for row in rows]

    def study_of_note(self, note_uid: str) -> Any:
        """The study of a rejection note's first rejected instance, with its holder
        and patient (the record names them)."""
        return self.conn.execute(
            select(
                study.c.study_instance_uid,
                study.c.organization_oid,
                patient.c.patient_id,
                patient.c.issuer,
            )
            .select_from(
                study.join(patient, study.c.patient_pk == patient.c.pk).join(
                    rejection, rejection.c.study_instance_uid == study.c.study_instance_uid
                )
            )
            .where(rejection.c.note_sop_instance_uid == note_uid)
            .limit(1)
        ).one_or_none()

    def documents_of_study(self, study_uid: str) -> list[tuple[int, str, str]]:
        """(pk, uniqueId, blob key) of the repository documents recorded for a study."""
        rows = self.conn.execute(
            select(xds_document.c.pk, xds_document.c.unique_id, xds_document.c.blob_key).where(
                xds_document.c.study_instance_uid == study_uid
            )
        )
        return [(int(pk), uid, key) for pk, uid, key in rows]

    def referenced_elsewhere(
        self, keys: Sequence[str], instance_pks: set[int], document_pks: set[int]
    ) -> set[str]:
        """Those of ``keys`` a row other than the given ones references (a blob two
        rows share stays while one of them does)."""
        kept: set[str] = set()
        for chunk in _chunks(sorted(set(keys))):
            for key, pk in self.conn.execute(
                select(instance.c.blob_key, instance.c.pk).where(instance.c.blob_key.in_(chunk))
            ):
                if pk not in instance_pks:
                    kept.add(key)
            for key, pk in self.conn.execute(
                select(xds_document.c.blob_key, xds_document.c.pk).where(
                    xds_document.c.blob_key.in_(chunk)
                )
            ):
                if pk not in document_pks:
                    kept.add(key)
        return kept

    def delete_instances(self, pks: Sequence[int]) -> None:
        for chunk in _chunks(list(pks)):
            self.conn.execute(delete(instance).where(instance.c.pk.in_(chunk)))

    def delete_documents(self, pks: Sequence[int]) -> None:
        for chunk in _chunks(list(pks)):
            self.conn.execute(delete(xds_document).where(xds_document.c.pk.in_(chunk)))

    def delete_empty_series(self, series_pks: Iterable[int]) -> None:
        """Delete those of the series that hold no instance any more."""
        for chunk in _chunks(sorted(set(series_pks))):
            self.conn.execute(
                delete(series).where(
                    series.c.pk.in_(chunk),
                    ~exists().where(instance.c.series_pk == series.c.pk),
                )
            )

    def delete_study(self, study_pk: int) -> tuple[int, int | None]:
        """Delete the study's series and the study; (current patient, patient it was
        received for)."""
        row = self.conn.execute(
            select(study.c.patient_pk, study.c.received_patient_pk).where(study.c.pk == study_pk)
        ).one()
        self.conn.execute(delete(series).where(series.c.study_pk == study_pk))
        self.conn.execute(delete(study).where(study.c.pk == study_pk))
        return int(row.patient_pk), row.received_patient_pk

    def delete_patient_if_unreferenced(self, patient_pk: int) -> bool:
        """Delete the patient when nothing of it is left and nothing refers to it: no
        study (current or as received), no merge from or into it, no legal hold, no
        disclosure prohibition (services.access: it outlives the patient's studies)."""
        other = patient.alias("other")
        result = self.conn.execute(
            delete(patient).where(
                patient.c.pk == patient_pk,
                patient.c.merged_into_pk.is_(None),
                ~exists().where(study.c.patient_pk == patient_pk),
                ~exists().where(study.c.received_patient_pk == patient_pk),
                ~exists().where(other.c.merged_into_pk == patient_pk),
                ~exists().where(legal_hold.c.patient_pk == patient_pk),
                ~exists().where(disclosure_prohibition.c.patient_pk == patient_pk),
            )
        )
        return bool(result.rowcount)
