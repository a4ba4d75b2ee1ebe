"""Repository of the XDS.b Document Registry (tables ``xds_*`` of index.schema).

Writes what the registry service decided (kuva.services.registry): new objects
with their query columns, status changes (Deprecated on replacement), Folder
lastUpdateTime. Reads what its rules need (objects by entryUUID and by uniqueId,
whether a patient is known, the relationships of a document) and the stored ebRIM
XML of objects for ITI-18 answers (``stored``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from kuva.index.schema import (
    patient,
    xds_association,
    xds_author,
    xds_code,
    xds_document_entry,
    xds_folder,
    xds_object,
    xds_reference_id,
    xds_submission_set,
)
from kuva.model.xds import (
    Association,
    AssociationType,
    AvailabilityStatus,
    Code,
    DocumentEntry,
    Folder,
    ObjectKind,
    PatientId,
    RegisteredObject,
    RegistryObject,
    StoredObject,
    SubmissionSet,
    dtm_instant,
)

# xds_code.kind: the metadata attribute a code row belongs to.
EVENT_CODE = "eventCodeList"
CONFIDENTIALITY_CODE = "confidentialityCode"
FOLDER_CODE = "codeList"

# Chunk for IN lists, well below every database's limit on bound parameters.
_CHUNK = 500


class RegistryConflict(Exception):
    """An object to store collides with one stored meanwhile (its entryUUID)."""


def _chunks(values: Iterable[str]) -> Iterable[list[str]]:
    items = sorted(set(values))
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _lock_key(value: str) -> int:
    """A signed 64-bit key for pg_advisory_xact_lock."""
    return int.from_bytes(hashlib.sha256(value.encode()).digest()[:8], "big", signed=True)


def _patient(row: Any) -> PatientId | None:
    if row.patient_id is None or row.patient_authority is None:
        return None
    return PatientId(row.patient_id, row.patient_authority)


def _registered(row: Any) -> RegisteredObject:
    return RegisteredObject(
        entry_uuid=row.entry_uuid,
        kind=ObjectKind(row.kind),
        status=AvailabilityStatus(row.status),
        patient=_patient(row),
        unique_id=row.unique_id,
        hash=row.hash,
        size=row.size,
    )


_REGISTERED = select(
    xds_object.c.entry_uuid,
    xds_object.c.kind,
    xds_object.c.status,
    xds_object.c.patient_id,
    xds_object.c.patient_authority,
    xds_object.c.unique_id,
    xds_document_entry.c.hash,
    xds_document_entry.c.size,
).select_from(xds_object.outerjoin(xds_document_entry, xds_document_entry.c.pk == xds_object.c.pk))


class RegistryRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    # --- reads for the registry's rules ---

    def lock(self, keys: Iterable[str]) -> None:
        """Serialise registrations that use the same keys (uniqueIds) until commit.

        PostgreSQL: transaction-level advisory locks, taken in a fixed order. SQLite
        has a single writer already (a writing unit of work begins IMMEDIATE).
        """
        if self.conn.dialect.name != "postgresql":
            return
        for key in sorted({_lock_key(k) for k in keys}):
            self.conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})

    def patient_known(self, patient_id: PatientId) -> bool:
        """True when the index holds the patient (Patient ID + issuer = the CX
        assigning authority OID)."""
        found = self.conn.execute(
            select(patient.c.pk)
            .where(patient.c.patient_id == patient_id.id)
            .where(patient.c.issuer == patient_id.authority)
            .limit(1)
        ).first()
        return found is not None

    def find(self, entry_uuids: Iterable[str]) -> dict[str, RegisteredObject]:
        """The stored objects among ``entry_uuids``, by entryUUID."""
        found: dict[str, RegisteredObject] = {}
        for chunk in _chunks(entry_uuids):
            rows = self.conn.execute(_REGISTERED.where(xds_object.c.entry_uuid.in_(chunk)))
            for row in rows:
                found[row.entry_uuid] = _registered(row)
        return found

    def find_by_unique_ids(self, unique_ids: Iterable[str]) -> list[RegisteredObject]:
        """Every stored object (any kind, any status) with one of ``unique_ids``."""
        found: list[RegisteredObject] = []
        for chunk in _chunks(unique_ids):
            rows = self.conn.execute(_REGISTERED.where(xds_object.c.unique_id.in_(chunk)))
            found.extend(_registered(row) for row in rows)
        return found

    def related(
        self,
        targets: Iterable[str],
        types: Iterable[AssociationType],
        *,
        source_kind: ObjectKind,
    ) -> list[tuple[str, str]]:
        """(source, target) of the Approved associations of ``types`` to ``targets``
        whose source is an Approved object of ``source_kind``."""
        source = xds_object.alias("source")
        association = xds_object.alias("association")
        approved = AvailabilityStatus.APPROVED.value
        statement = (
            select(xds_association.c.source_object, xds_association.c.target_object)
            .select_from(
                xds_association.join(association, association.c.pk == xds_association.c.pk).join(
                    source, source.c.entry_uuid == xds_association.c.source_object
                )
            )
            .where(xds_association.c.association_type.in_([t.value for t in types]))
            .where(association.c.status == approved)
            .where(source.c.status == approved)
            .where(source.c.kind == source_kind.value)
        )
        pairs: list[tuple[str, str]] = []
        for chunk in _chunks(targets):
            rows = self.conn.execute(statement.where(xds_association.c.target_object.in_(chunk)))
            pairs.extend((row.source_object, row.target_object) for row in rows)
        return pairs

    # --- ITI-18 answers ---

    def stored(self, entry_uuids: Sequence[str]) -> list[StoredObject]:
        """The stored objects among ``entry_uuids``, in that order (ebrim.leaf_class
        makes LeafClass answers of them)."""
        found: dict[str, StoredObject] = {}
        statement = select(
            xds_object.c.entry_uuid,
            xds_object.c.kind,
            xds_object.c.status,
            xds_object.c.ebxml,
            xds_folder.c.last_update_time,
        ).select_from(xds_object.outerjoin(xds_folder, xds_folder.c.pk == xds_object.c.pk))
        for chunk in _chunks(entry_uuids):
            for row in self.conn.execute(statement.where(xds_object.c.entry_uuid.in_(chunk))):
                found[row.entry_uuid] = StoredObject(
                    entry_uuid=row.entry_uuid,
                    kind=ObjectKind(row.kind),
                    status=AvailabilityStatus(row.status),
                    ebxml=row.ebxml,
                    last_update_time=row.last_update_time,
                )
        return [found[u] for u in entry_uuids if u in found]

    # --- writes ---

    def add(
        self,
        objects: Sequence[RegistryObject],
        *,
        organization_oid: str,
        created_at: datetime,
        last_update_time: str,
        status: AvailabilityStatus = AvailabilityStatus.APPROVED,
    ) -> None:
        """Store validated objects (their ``ebxml`` set), all with ``status``.

        Raises RegistryConflict when an entryUUID is taken meanwhile.
        """
        if not objects:
            return
        rows = [_object_row(obj, organization_oid, created_at, status.value) for obj in objects]
        try:
            result = self.conn.execute(
                insert(xds_object).returning(xds_object.c.pk, sort_by_parameter_order=True),
                rows,
            )
        except IntegrityError as exc:
            raise RegistryConflict("an entryUUID of the objects is stored already") from exc
        pks = [row.pk for row in result]
        tables: dict[Any, list[dict[str, Any]]] = {
            xds_document_entry: [],
            xds_submission_set: [],
            xds_folder: [],
            xds_association: [],
            xds_code: [],
            xds_author: [],
            xds_reference_id: [],
        }
        for pk, obj in zip(pks, objects, strict=True):
            if isinstance(obj, DocumentEntry):
                tables[xds_document_entry].append(_entry_row(pk, obj))
                tables[xds_code].extend(
                    _code_rows(pk, EVENT_CODE, obj.event_codes)
                    + _code_rows(pk, CONFIDENTIALITY_CODE, obj.confidentiality_codes)
                )
                tables[xds_author].extend(
                    {"object_pk": pk, "person": a.person} for a in obj.authors if a.person
                )
                tables[xds_reference_id].extend(
                    {"object_pk": pk, "value": value} for value in obj.reference_ids
                )
            elif isinstance(obj, SubmissionSet):
                code = obj.content_type_code or Code("", "")
                tables[xds_submission_set].append(
                    {
                        "pk": pk,
                        "submission_time": dtm_instant(obj.submission_time),
                        "source_id": obj.source_id,
                        "content_type_code": code.code,
                        "content_type_code_scheme": code.coding_scheme,
                    }
                )
                tables[xds_author].extend(
                    {"object_pk": pk, "person": a.person} for a in obj.authors if a.person
                )
            elif isinstance(obj, Folder):
                tables[xds_folder].append({"pk": pk, "last_update_time": last_update_time})
                tables[xds_code].extend(_code_rows(pk, FOLDER_CODE, obj.code_list))
            elif isinstance(obj, Association):
                tables[xds_association].append(
                    {
                        "pk": pk,
                        "association_type": obj.association_type,
                        "source_object": obj.source_object,
                        "target_object": obj.target_object,
                        "submission_set_status": obj.submission_set_status or None,
                    }
                )
        for table, table_rows in tables.items():
            if table_rows:
                self.conn.execute(insert(table), table_rows)

    def set_status(self, entry_uuids: Iterable[str], status: AvailabilityStatus) -> None:
        for chunk in _chunks(entry_uuids):
            self.conn.execute(
                update(xds_object)
                .where(xds_object.c.entry_uuid.in_(chunk))
                .values(status=status.value)
            )

    def touch_folders(self, entry_uuids: Iterable[str], last_update_time: str) -> None:
        """Set the lastUpdateTime of the Folders ``entry_uuids``."""
        for chunk in _chunks(entry_uuids):
            pks = select(xds_object.c.pk).where(xds_object.c.entry_uuid.in_(chunk))
            self.conn.execute(
                update(xds_folder)
                .where(xds_folder.c.pk.in_(pks))
                .values(last_update_time=last_update_time)
            )


def _patient_columns(obj: RegistryObject) -> tuple[str | None, str | None]:
    found = obj.patient if isinstance(obj, DocumentEntry | SubmissionSet | Folder) else None
    return (found.id, found.authority) if found else (None, None)


def _object_row(
    obj: RegistryObject, organization_oid: str, created_at: datetime, status: str
) -> dict[str, Any]:
    patient_id, authority = _patient_columns(obj)
    unique_id = obj.unique_id if isinstance(obj, DocumentEntry | SubmissionSet | Folder) else None
    return {
        "entry_uuid": obj.id,
        "kind": obj.kind.value,
        "object_type": obj.object_type,
        "logical_id": obj.id,
        "version": 1,
        "status": status,
        "unique_id": unique_id,
        "patient_id": patient_id,
        "patient_authority": authority,
        "organization_oid": organization_oid,
        "ebxml": obj.ebxml,
        "created_at": created_at,
    }


def _entry_row(pk: int, entry: DocumentEntry) -> dict[str, Any]:
    blank = Code("", "")
    patient_id = entry.patient
    row: dict[str, Any] = {
        "pk": pk,
        "patient_id": patient_id.id if patient_id else "",
        "patient_authority": patient_id.authority if patient_id else "",
        "creation_time": dtm_instant(entry.creation_time),
        "service_start_time": dtm_instant(entry.service_start_time)
        if entry.service_start_time
        else None,
        "service_stop_time": dtm_instant(entry.service_stop_time)
        if entry.service_stop_time
        else None,
        "mime_type": entry.mime_type,
        "hash": entry.hash.lower(),
        "size": entry.size or 0,
        "repository_unique_id": entry.repository_unique_id,
        "document_availability": entry.document_availability,
        "language_code": entry.language_code,
    }
    for column, code in (
        ("class_code", entry.class_code),
        ("type_code", entry.type_code),
        ("practice_setting_code", entry.practice_setting_code),
        ("healthcare_facility_type_code", entry.healthcare_facility_type_code),
        ("format_code", entry.format_code),
    ):
        code = code or blank
        row[column] = code.code
        row[f"{column}_scheme"] = code.coding_scheme
    return row


def _code_rows(pk: int, kind: str, codes: Iterable[Code]) -> list[dict[str, Any]]:
    return [
        {"object_pk": pk, "kind": kind, "code": c.code, "scheme": c.coding_scheme} for c in codes
    ]
