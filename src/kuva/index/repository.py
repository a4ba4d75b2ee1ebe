"""Repositories of the XDS.b Document Repository and of the disclosure log.

``DocumentRepository`` (table ``xds_document``): the documents the repository
holds (ITI TF-2b 3.41, 3.43), each a blob named by its key with the SHA-1 and size
the registry knows it by. ``DisclosureRepository`` (table ``disclosure``): the
disclosure log (luovutusloki), written by kuva.services.disclosure.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select

from kuva.index.dialect import insert_ignoring_conflict
from kuva.index.schema import disclosure, patient, study, xds_document

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
    """One disclosure-log record: a document handed out to ``recipient_organization``."""

    disclosed_at: datetime
    recipient_organization: str  # "" = unknown
    register_holder: str
    patient_id: str
    patient_authority: str
    study_instance_uid: str | None
    document_unique_id: str
    interface: str
    basis: str


@dataclass(frozen=True)
class Disclosure(NewDisclosure):
    pk: int


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
    disclosure.c.pk,
)


def _disclosure(row: Any) -> Disclosure:
    return Disclosure(*row)


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

    def list(
        self,
        *,
        patient_id: str | None = None,
        patient_authority: str | None = None,
        since: datetime | None = None,
        limit: int = 1000,
    ) -> list[Disclosure]:
        """Records, newest first: of one patient (id and authority) and/or since a time."""
        statement = select(*_DISCLOSURE_COLUMNS)
        if patient_id is not None:
            statement = statement.where(disclosure.c.patient_id == patient_id)
            if patient_authority is not None:
                statement = statement.where(disclosure.c.patient_authority == patient_authority)
        if since is not None:
            statement = statement.where(disclosure.c.disclosed_at >= since)
        statement = statement.order_by(disclosure.c.disclosed_at.desc(), disclosure.c.pk.desc())
        return [_disclosure(row) for row in self.conn.execute(statement.limit(limit))]
