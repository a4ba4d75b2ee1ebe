"""Repositories of the XDS.b Document Repository and of the disclosure log.

``DocumentRepository`` (table ``xds_document``): the documents the repository
holds (ITI TF-2b 3.41, 3.43), each a blob named by its key with the SHA-1 and size
the registry knows it by. ``DisclosureRepository`` (tables ``disclosure`` and
``disclosure_notice``): the disclosure log (luovutusloki), written by
kuva.services.disclosure (kuva's own disclosures) and kuva.services.notices (those
customers report), read by the disclosure query (services.notices).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, insert, or_, select

from kuva.index.dialect import insert_ignoring_conflict
from kuva.index.schema import disclosure, disclosure_notice, patient, study, xds_document

# Chunk for IN lists, well below every database's limit on bound parameters.
_CHUNK = 500


def _chunks(values: Iterable[str]) -> Iterable[list[str]]:
    items = sorted(set(values))
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


@dataclass(frozen=True)
class NewDocument:
    """A document to record; ``unique_id`` is its DocumentEntry.uniqueId."""

    unique_id: str
    repository_unique_id: str
    mime_type: str
    size: int
    sha1: str
    sha256: str
    blob_key: str
    organization_oid: str  # the register holder
    patient_id: str
    patient_authority: str
    study_instance_uid: str | None
    stored_at: datetime


@dataclass(frozen=True)
class StoredDocument(NewDocument):
    pk: int


_DOCUMENT_COLUMNS = (
    xds_document.c.unique_id,
    xds_document.c.repository_unique_id,
    xds_document.c.mime_type,
    xds_document.c.size,
    xds_document.c.sha1,
    xds_document.c.sha256,
    xds_document.c.blob_key,
    xds_document.c.organization_oid,
    xds_document.c.patient_id,
    xds_document.c.patient_authority,
    xds_document.c.study_instance_uid,
    xds_document.c.stored_at,
    xds_document.c.pk,
)


def _stored(row: Any) -> StoredDocument:
    return StoredDocument(*row)


@dataclass(frozen=True)
class StudyFacts:
    """What a manifest's DocumentEntry needs of a study beyond the manifest listing."""

    organization_oid: str  # the register holder
    modalities_in_study: tuple[str, ...]


class DocumentRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def add(self, document: NewDocument) -> bool:
        """Record ``document``; False when its uniqueId is recorded already (the row
        is then left as it is: a uniqueId names one content, ITI TF-3 4.2.3.2.26)."""
        pk = insert_ignoring_conflict(self.conn, xds_document, asdict(document), ["unique_id"])
        return pk is not None

    def find(self, unique_ids: Iterable[str]) -> dict[str, StoredDocument]:
        """The recorded documents among ``unique_ids``, by uniqueId."""
        found: dict[str, StoredDocument] = {}
        statement = select(*_DOCUMENT_COLUMNS)
        for chunk in _chunks(unique_ids):
            for row in self.conn.execute(statement.where(xds_document.c.unique_id.in_(chunk))):
                document = _stored(row)
                found[document.unique_id] = document
        return found

    def of_study(self, study_instance_uid: str, mime_type: str) -> list[StoredDocument]:
        """The documents of ``mime_type`` recorded for a study, oldest first."""
        rows = self.conn.execute(
            select(*_DOCUMENT_COLUMNS)
            .where(xds_document.c.study_instance_uid == study_instance_uid)
            .where(xds_document.c.mime_type == mime_type)
            .order_by(xds_document.c.stored_at, xds_document.c.pk)
        )
        return [_stored(row) for row in rows]

    def study_facts(self, study_instance_uid: str) -> StudyFacts | None:
        row = self.conn.execute(
            select(study.c.organization_oid, study.c.modalities_in_study).where(
                study.c.study_instance_uid == study_instance_uid
            )
        ).first()
        if row is None:
            return None
        modalities = tuple(m for m in row.modalities_in_study.split("\\") if m)
        return StudyFacts(row.organization_oid, modalities)


@dataclass(frozen=True)
class NewDisclosure:
    """One disclosure-log record: a document handed out to ``recipient_organization``.
    ``source``: archive (kuva's own), notice or atna (reported by the register
    holder, under the ``disclosure_notice`` row ``notice_pk``)."""

    disclosed_at: datetime
    recipient_organization: str  # "" = unknown
    register_holder: str
    patient_id: str
    patient_authority: str
    study_instance_uid: str | None
    document_unique_id: str
    interface: str
    basis: str
    source: str = "archive"
    channel: str | None = None
    recipient_person: str | None = None
    notice_pk: int | None = None
    # The user of a verified XUA assertion (model.xua): NameID, role and purpose codes.
    recipient_user: str | None = None
    recipient_role: str | None = None
    purpose_of_use: str | None = None


@dataclass(frozen=True)
class Disclosure(NewDisclosure):
    """A record as read back, with its key and the client's notice id (if any)."""

    pk: int = 0
    notice_id: str | None = None


_DISCLOSURE_COLUMNS = (
    disclosure.c.disclosed_at,
    disclosure.c.recipient_organization,
    disclosure.c.register_holder,
    disclosure.c.patient_id,
    disclosure.c.patient_authority,
    disclosure.c.study_instance_uid,
    disclosure.c.document_unique_id,
    disclosure.c.interface,
    disclosure.c.basis,
    disclosure.c.source,
    disclosure.c.channel,
    disclosure.c.recipient_person,
    disclosure.c.notice_pk,
    disclosure.c.recipient_user,
    disclosure.c.recipient_role,
    disclosure.c.purpose_of_use,
    disclosure.c.pk,
    disclosure_notice.c.notice_id,
)
_DISCLOSURE_FROM = disclosure.outerjoin(
    disclosure_notice, disclosure.c.notice_pk == disclosure_notice.c.pk
)


def _disclosure(row: Any) -> Disclosure:
    return Disclosure(*row)


@dataclass(frozen=True)
class StoredNotice:
    """A reported disclosure already recorded (``disclosure_notice``)."""

    digest: str
    record_count: int


class DisclosureRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def add(self, records: Sequence[NewDisclosure]) -> None:
        if records:
            self.conn.execute(insert(disclosure), [asdict(record) for record in records])

    def patients_of_studies(self, study_uids: Iterable[str]) -> dict[str, tuple[str, str]]:
        """Study Instance UID -> (Patient ID, Issuer of Patient ID) of the studies known."""
        found: dict[str, tuple[str, str]] = {}
        statement = select(
            study.c.study_instance_uid, patient.c.patient_id, patient.c.issuer
        ).select_from(study.join(patient, study.c.patient_pk == patient.c.pk))
        for chunk in _chunks(study_uids):
            for row in self.conn.execute(statement.where(study.c.study_instance_uid.in_(chunk))):
                found[row.study_instance_uid] = (row.patient_id, row.issuer)
        return found

    def add_notice(
        self,
        *,
        reporter: str,
        notice_id: str | None,
        digest: str,
        source: str,
        received_at: datetime,
        record_count: int,
    ) -> int:
        """Record a reported disclosure; its key. A ``notice_id`` the reporter has
        used already violates the unique constraint (IntegrityError)."""
        result = self.conn.execute(
            insert(disclosure_notice)
            .values(
                reporter=reporter,
                notice_id=notice_id,
                digest=digest,
                source=source,
                received_at=received_at,
                record_count=record_count,
            )
            .returning(disclosure_notice.c.pk)
        )
        return int(result.scalar_one())

    def find_notices(self, reporter: str, notice_ids: Iterable[str]) -> dict[str, StoredNotice]:
        """The notices ``reporter`` recorded under any of ``notice_ids`` (their unique
        key), by notice id."""
        statement = select(
            disclosure_notice.c.notice_id,
            disclosure_notice.c.digest,
            disclosure_notice.c.record_count,
        ).where(disclosure_notice.c.reporter == reporter)
        found: dict[str, StoredNotice] = {}
        for chunk in _chunks(notice_ids):
            for row in self.conn.execute(statement.where(disclosure_notice.c.notice_id.in_(chunk))):
                found[row.notice_id] = StoredNotice(row.digest, row.record_count)
        return found

    def of_patients(
        self,
        patients: Sequence[tuple[str, str]],
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        viewer: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Disclosure]:
        """The records of any of ``patients`` (Patient ID, authority), newest first,
        disclosed in [start, end). Each patient is an equality on the leading columns
        of ``ix_disclosure_patient`` with the period on its last. ``viewer``: only
        the records where that organisation is the register holder or the
        recipient; None = all."""
        if not patients:
            return []
        period = []
        if start is not None:
            period.append(disclosure.c.disclosed_at >= start)
        if end is not None:
            period.append(disclosure.c.disclosed_at < end)
        statement = (
            select(*_DISCLOSURE_COLUMNS)
            .select_from(_DISCLOSURE_FROM)
            .where(
                or_(
                    *(
                        and_(
                            disclosure.c.patient_id == patient_id,
                            disclosure.c.patient_authority == authority,
                            *period,
                        )
                        for patient_id, authority in patients
                    )
                )
            )
        )
        if viewer is not None:
            statement = statement.where(
                or_(
                    disclosure.c.register_holder == viewer,
                    disclosure.c.recipient_organization == viewer,
                )
            )
        statement = (
            statement.order_by(disclosure.c.disclosed_at.desc(), disclosure.c.pk.desc())
            .limit(limit)
            .offset(offset)
        )
        return [_disclosure(row) for row in self.conn.execute(statement)]

    def of_organization(
        self,
        organization: str,
        *,
        start: datetime,
        end: datetime,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Disclosure]:
        """The records where ``organization`` is the register holder or the recipient,
        disclosed in [start, end), newest first: a range of ``ix_disclosure_disclosed_at``
        (the period bounds what is read)."""
        statement = (
            select(*_DISCLOSURE_COLUMNS)
            .select_from(_DISCLOSURE_FROM)
            .where(
                disclosure.c.disclosed_at >= start,
                disclosure.c.disclosed_at < end,
                or_(
                    disclosure.c.register_holder == organization,
                    disclosure.c.recipient_organization == organization,
                ),
            )
            .order_by(disclosure.c.disclosed_at.desc(), disclosure.c.pk.desc())
            .limit(limit)
            .offset(offset)
        )
        return [_disclosure(row) for row in self.conn.execute(statement)]

    def list(
        self,
        *,
        patient_id: str | None = None,
        patient_authority: str | None = None,
        since: datetime | None = None,
        limit: int = 1000,
    ) -> list[Disclosure]:
        """Records, newest first: of one patient (id and authority) and/or since a time."""
        statement = select(*_DISCLOSURE_COLUMNS).select_from(_DISCLOSURE_FROM)
        if patient_id is not None:
            statement = statement.where(disclosure.c.patient_id == patient_id)
            if patient_authority is not None:
                statement = statement.where(disclosure.c.patient_authority == patient_authority)
        if since is not None:
            statement = statement.where(disclosure.c.disclosed_at >= since)
        statement = statement.order_by(disclosure.c.disclosed_at.desc(), disclosure.c.pk.desc())
        return [_disclosure(row) for row in self.conn.execute(statement.limit(limit))]
