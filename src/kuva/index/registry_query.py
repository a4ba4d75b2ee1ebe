"""The Registry Stored Queries (ITI TF-2a 3.18.4.1.2.3.7) as SQL on the registry tables.

kuva.services.stored_query reads and checks a query's parameters and asks for
objects here by criteria; every answer is one statement per kind of object (lists
longer than ``CHUNK`` values are sent in chunks), never one per object. Each
statement starts from an indexed column (``index.schema``):

* DocumentEntries of a patient: ``ix_xds_document_entry_find`` (patient_id,
  patient_authority, class_code, creation_time) - FindDocuments by patient, and by
  patient + classCode + creationTime range, read one range of it (one range per
  identity when the patient has merged identities, below);
* SubmissionSets and Folders of a patient: ``ix_xds_object_patient`` (patient_id,
  patient_authority, kind);
* objects by entryUUID (unique) or uniqueId (``ix_xds_object_unique_id``);
* Associations by sourceObject / targetObject (``ix_xds_association_source`` /
  ``_target``);
* multi-valued attributes - eventCodeList, confidentialityCode, a Folder's codeList
  (``xds_code``), authorPerson (``xds_author``), referenceIdList
  (``xds_reference_id``) - as ``EXISTS`` on the child table by its ``object_pk`` index,
  evaluated only for the rows the leading index already chose.

Times are compared as the 14-digit UTC instants the repository stores
(``model.xds.dtm_instant``): ``low <= value < high``. An object without the
attribute never matches a range on it. Codes match on code and coding scheme.
authorPerson patterns are SQL LIKE patterns (``%`` any string, ``_`` one
character), case-sensitive on both databases (SQLite runs with
``case_sensitive_like``); a backslash in a pattern is a literal backslash.

Rows come back in registration order (the primary key). That order is made
here, not with ``ORDER BY``: with a ``LIMIT`` the planner could otherwise prefer
walking the primary key to the patient index.

Patient merges (HL7 A40, kuva.services.patients) are an overlay on the index's
``patient`` table and never rewrite registry rows: ``merged_into`` and
``survivors`` read the ``merged_into_pk`` chains, each in one recursive
statement, for kuva.services.stored_query to apply. Only the shared patient
records are read: a merge an organisation made on its own record (an HL7 A40 that
had to leave other organisations' studies alone, kuva.services.patients) moves its
studies, whose manifests are registered again, and not the registry entries of
the others. An index patient (Patient ID,
Issuer of Patient ID) is the registry patient (CX.1, CX.4 OID) whose assigning
authority is that issuer. Several patients are matched as ``patient_id IN (...)
AND patient_authority IN (...)`` with the pairs deciding: the composite indexes
are read as ranges, where a row-value ``(patient_id, patient_authority) IN (...)``
is not (SQLite scans the whole index for it; PostgreSQL ranges over the
authority alone).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    and_,
    literal,
    or_,
    select,
)

from kuva.index.access import visible_entries
from kuva.index.registry import CONFIDENTIALITY_CODE, EVENT_CODE, FOLDER_CODE
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
from kuva.model.access import AccessScope
from kuva.model.xds import AvailabilityStatus, Code, ObjectKind, PatientId, StoredObject

# Values per IN list, well below every database's limit on bound parameters.
CHUNK = 500

CodeSet = tuple[Code, ...]  # one query parameter: any of these codes


@dataclass(frozen=True)
class TimeRange:
    """``low <= value < high``, both 14-digit UTC instants or None (open)."""

    low: str | None = None
    high: str | None = None


@dataclass(frozen=True)
class DocumentCriteria:
    """What DocumentEntries must match. None: not constrained; an empty tuple of
    values matches nothing. ``patients``: any of them (a patient and the identities
    merged into it). ``event_codes`` / ``confidentiality_codes``: each set must
    match (AND), any code of a set (OR)."""

    patients: tuple[PatientId, ...] | None = None
    entry_uuids: tuple[str, ...] | None = None
    unique_ids: tuple[str, ...] | None = None
    statuses: tuple[str, ...] | None = None
    object_types: tuple[str, ...] | None = None
    class_codes: CodeSet | None = None
    type_codes: CodeSet | None = None
    practice_setting_codes: CodeSet | None = None
    healthcare_facility_type_codes: CodeSet | None = None
    format_codes: CodeSet | None = None
    event_codes: tuple[CodeSet, ...] = ()
    confidentiality_codes: tuple[CodeSet, ...] = ()
    author_persons: tuple[str, ...] | None = None  # LIKE patterns, any
    reference_ids: tuple[str, ...] | None = None  # any
    creation_time: TimeRange | None = None
    service_start_time: TimeRange | None = None
    service_stop_time: TimeRange | None = None


@dataclass(frozen=True)
class SubmissionSetCriteria:
    patients: tuple[PatientId, ...] | None = None
    entry_uuids: tuple[str, ...] | None = None
    unique_ids: tuple[str, ...] | None = None
    statuses: tuple[str, ...] | None = None
    source_ids: tuple[str, ...] | None = None
    content_type_codes: CodeSet | None = None
    submission_time: TimeRange | None = None
    author_person: str | None = None  # a LIKE pattern


@dataclass(frozen=True)
class FolderCriteria:
    patients: tuple[PatientId, ...] | None = None
    entry_uuids: tuple[str, ...] | None = None
    unique_ids: tuple[str, ...] | None = None
    statuses: tuple[str, ...] | None = None
    last_update_time: TimeRange | None = None
    code_list: tuple[CodeSet, ...] = ()  # each set must match (AND), any code of it


@dataclass(frozen=True)
class Found:
    """A registry object a query matched. ``patient``: as registered (None for
    Associations); ``ebxml`` only when asked for (LeafClass); the association
    columns for Associations; ``last_update_time`` for Folders."""

    pk: int
    entry_uuid: str
    kind: ObjectKind
    status: AvailabilityStatus
    patient: PatientId | None
    ebxml: str | None = None
    last_update_time: str | None = None
    association_type: str | None = None
    source_object: str | None = None
    target_object: str | None = None
    register_holder: str = ""
    unique_id: str | None = None

    def stored(self) -> StoredObject:
        """The object as a LeafClass answer is made of (found with ``xml=True``)."""
        if self.ebxml is None:
            raise ValueError("found without its ebRIM XML")
        return StoredObject(
            entry_uuid=self.entry_uuid,
            kind=self.kind,
            status=self.status,
            ebxml=self.ebxml,
            last_update_time=self.last_update_time,
        )


def _chunks(values: Iterable[str]) -> list[list[str]]:
    items = sorted(set(values))
    return [items[start : start + CHUNK] for start in range(0, len(items), CHUNK)]


def like_literal(pattern: str) -> str:
    """A stored query LIKE pattern for ``LIKE ... ESCAPE '\\'``: ``%`` and ``_`` stay
    wildcards, a backslash is literal."""
    return pattern.replace("\\", "\\\\")


def _codes(code: Any, scheme: Any, codes: CodeSet) -> ColumnElement[bool]:
    """(code, scheme) is one of ``codes``. The IN on the code alone lets an index
    led by it be used; the pairs decide."""
    if not codes:
        return literal(False)
    return and_(
        code.in_(sorted({c.code for c in codes})),
        or_(*(and_(code == c.code, scheme == c.coding_scheme) for c in codes)),
    )


def _patients(
    id_column: Any, authority_column: Any, patients: Sequence[PatientId]
) -> list[ColumnElement[bool]]:
    """(id, authority) is one of ``patients`` (module docstring: IN on each column
    for the index, the pairs decide)."""
    if not patients:
        return [literal(False)]
    if len(patients) == 1:
        (only,) = patients
        return [id_column == only.id, authority_column == only.authority]
    return [
        id_column.in_(sorted({p.id for p in patients})),
        authority_column.in_(sorted({p.authority for p in patients})),
        or_(*(and_(id_column == p.id, authority_column == p.authority) for p in patients)),
    ]


def _range(column: Any, when: TimeRange | None) -> list[ColumnElement[bool]]:
    if when is None:
        return []
    conditions: list[ColumnElement[bool]] = []
    if when.low is not None:
        conditions.append(column >= when.low)
    if when.high is not None:
        conditions.append(column < when.high)
    return conditions


def _child_codes(kind: str, codes: CodeSet) -> ColumnElement[bool]:
    """The object has a code row of ``kind`` that is one of ``codes``."""
    return (
        select(literal(1))
        .where(xds_code.c.object_pk == xds_object.c.pk)
        .where(xds_code.c.kind == kind)
        .where(_codes(xds_code.c.code, xds_code.c.scheme, codes))
        .exists()
    )


def _authors(patterns: Sequence[str]) -> ColumnElement[bool]:
    if not patterns:
        return literal(False)
    return (
        select(literal(1))
        .where(xds_author.c.object_pk == xds_object.c.pk)
        .where(or_(*(xds_author.c.person.like(like_literal(p), escape="\\") for p in patterns)))
        .exists()
    )


def _columns(xml: bool) -> list[Any]:
    columns: list[Any] = [
        xds_object.c.pk,
        xds_object.c.entry_uuid,
        xds_object.c.kind,
        xds_object.c.status,
        xds_object.c.patient_id,
        xds_object.c.patient_authority,
        xds_object.c.organization_oid,
        xds_object.c.unique_id,
    ]
    if xml:
        columns.append(xds_object.c.ebxml)
    return columns


def _found(row: Any, xml: bool, **extra: Any) -> Found:
    registered = (
        PatientId(row.patient_id, row.patient_authority)
        if row.patient_id is not None and row.patient_authority is not None
        else None
    )
    return Found(
        pk=row.pk,
        entry_uuid=row.entry_uuid,
        kind=ObjectKind(row.kind),
        status=AvailabilityStatus(row.status),
        patient=registered,
        ebxml=row.ebxml if xml else None,
        register_holder=row.organization_oid,
        unique_id=row.unique_id,
        **extra,
    )


class RegistryQueryRepository:
    """Reads of the Registry Stored Queries; ``limit`` caps the rows of one call
    (ask for one more than you accept to know that there were more)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        # What the requester may read (services.access); None = everything. Every
        # read below is restricted to it.
        self.scope: AccessScope | None = None

    def _visible(self, statement: Select[Any]) -> Select[Any]:
        visible = None if self.scope is None else visible_entries(self.scope)
        return statement if visible is None else statement.where(visible)

    # --- by kind, by criteria ---

    def documents(self, criteria: DocumentCriteria, *, limit: int, xml: bool) -> list[Found]:
        c = criteria
        d = xds_document_entry
        statement = select(*_columns(xml)).select_from(
            d.join(xds_object, xds_object.c.pk == d.c.pk)
        )
        conditions: list[ColumnElement[bool]] = []
        if c.patients is not None:
            conditions += _patients(d.c.patient_id, d.c.patient_authority, c.patients)
        if c.statuses is not None:
            conditions.append(xds_object.c.status.in_(c.statuses))
        if c.object_types is not None:
            conditions.append(xds_object.c.object_type.in_(c.object_types))
        for codes, column, scheme in (
            (c.class_codes, d.c.class_code, d.c.class_code_scheme),
            (c.type_codes, d.c.type_code, d.c.type_code_scheme),
            (c.practice_setting_codes, d.c.practice_setting_code, d.c.practice_setting_code_scheme),
            (
                c.healthcare_facility_type_codes,
                d.c.healthcare_facility_type_code,
                d.c.healthcare_facility_type_code_scheme,
            ),
            (c.format_codes, d.c.format_code, d.c.format_code_scheme),
        ):
            if codes is not None:
                conditions.append(_codes(column, scheme, codes))
        conditions += _range(d.c.creation_time, c.creation_time)
        conditions += _range(d.c.service_start_time, c.service_start_time)
        conditions += _range(d.c.service_stop_time, c.service_stop_time)
        conditions += [_child_codes(EVENT_CODE, codes) for codes in c.event_codes]
        conditions += [
            _child_codes(CONFIDENTIALITY_CODE, codes) for codes in c.confidentiality_codes
        ]
        if c.author_persons is not None:
            conditions.append(_authors(c.author_persons))
        if c.reference_ids is not None:
            conditions.append(
                select(literal(1))
                .where(xds_reference_id.c.object_pk == xds_object.c.pk)
                .where(xds_reference_id.c.value.in_(c.reference_ids))
                .exists()
            )
        return self._run(
            statement.where(*conditions), c.entry_uuids, c.unique_ids, limit=limit, xml=xml
        )

    def submission_sets(
        self, criteria: SubmissionSetCriteria, *, limit: int, xml: bool
    ) -> list[Found]:
        c = criteria
        s = xds_submission_set
        statement = select(*_columns(xml)).select_from(
            s.join(xds_object, xds_object.c.pk == s.c.pk)
        )
        conditions = self._common(c.patients, ObjectKind.SUBMISSION_SET, c.statuses)
        if c.source_ids is not None:
            conditions.append(s.c.source_id.in_(c.source_ids))
        if c.content_type_codes is not None:
            conditions.append(
                _codes(s.c.content_type_code, s.c.content_type_code_scheme, c.content_type_codes)
            )
        conditions += _range(s.c.submission_time, c.submission_time)
        if c.author_person is not None:
            conditions.append(_authors([c.author_person]))
        return self._run(
            statement.where(*conditions), c.entry_uuids, c.unique_ids, limit=limit, xml=xml
        )

    def folders(self, criteria: FolderCriteria, *, limit: int, xml: bool) -> list[Found]:
        c = criteria
        f = xds_folder
        statement = select(*_columns(xml), f.c.last_update_time).select_from(
            f.join(xds_object, xds_object.c.pk == f.c.pk)
        )
        conditions = self._common(c.patients, ObjectKind.FOLDER, c.statuses)
        conditions += _range(f.c.last_update_time, c.last_update_time)
        conditions += [_child_codes(FOLDER_CODE, codes) for codes in c.code_list]
        return self._run(
            statement.where(*conditions), c.entry_uuids, c.unique_ids, limit=limit, xml=xml
        )

    def associations(
        self,
        *,
        sources: Iterable[str] = (),
        targets: Iterable[str] = (),
        types: Sequence[str] | None = None,
        limit: int,
        xml: bool,
    ) -> list[Found]:
        """Associations whose sourceObject is one of ``sources`` or whose
        targetObject is one of ``targets`` (of ``types`` when given)."""
        a = xds_association
        statement = select(
            *_columns(xml), a.c.association_type, a.c.source_object, a.c.target_object
        ).select_from(a.join(xds_object, xds_object.c.pk == a.c.pk))
        if types is not None:
            statement = statement.where(a.c.association_type.in_(types))
        statement = self._visible(statement)
        found: dict[int, Found] = {}
        for column, values in ((a.c.source_object, sources), (a.c.target_object, targets)):
            for chunk in _chunks(values):
                rows = self.conn.execute(statement.where(column.in_(chunk)).limit(limit))
                for row in rows:
                    found[row.pk] = _found(
                        row,
                        xml,
                        association_type=row.association_type,
                        source_object=row.source_object,
                        target_object=row.target_object,
                    )
                if len(found) >= limit:
                    return _ordered(found.values())[:limit]
        return _ordered(found.values())[:limit]

    # --- the merge overlay (module docstring) ---

    def merged_into(self, patient_id: PatientId) -> list[PatientId]:
        """The patients merged into ``patient_id``, directly or along a chain (A into
        B, B into C: A and B for C), walking ``merged_into_pk`` back from it; none
        when the index does not hold the patient."""
        p = patient
        merged = (
            select(p.c.pk, p.c.patient_id, p.c.issuer)
            .where(*_patients(p.c.patient_id, p.c.issuer, [patient_id]))
            .where(p.c.organization_oid == "")
            .cte("merged", recursive=True)
        )
        source = p.alias("source")
        # UNION, not UNION ALL: a cycle (which merges refuse) would still end.
        merged = merged.union(
            select(source.c.pk, source.c.patient_id, source.c.issuer).where(
                source.c.merged_into_pk == merged.c.pk, source.c.organization_oid == ""
            )
        )
        rows = self.conn.execute(
            select(merged.c.patient_id, merged.c.issuer).where(
                or_(merged.c.patient_id != patient_id.id, merged.c.issuer != patient_id.authority)
            )
        )
        return sorted((PatientId(row.patient_id, row.issuer) for row in rows), key=str)

    def survivors(self, patients: Iterable[PatientId]) -> dict[PatientId, PatientId]:
        """Each of ``patients`` that is merged into another -> the patient it resolves
        to now, the end of its chain (as index.instances.survivor); patients not
        merged, or not in the index, are left out."""
        wanted = sorted(set(patients), key=str)
        if not wanted:
            return {}
        p = patient
        # One row per step along each chain: the patient it starts from, the patient
        # reached and the one that is merged into (NULL at the end).
        chain = (
            select(
                p.c.patient_id.label("start_id"),
                p.c.issuer.label("start_issuer"),
                p.c.pk,
                p.c.merged_into_pk,
            )
            .where(*_patients(p.c.patient_id, p.c.issuer, wanted))
            .where(p.c.organization_oid == "", p.c.merged_into_pk.is_not(None))
            .cte("chain", recursive=True)
        )
        step = p.alias("step")
        chain = chain.union(
            select(chain.c.start_id, chain.c.start_issuer, step.c.pk, step.c.merged_into_pk)
            .join(step, step.c.pk == chain.c.merged_into_pk)
            .where(chain.c.merged_into_pk.is_not(None))
        )
        rows = self.conn.execute(
            select(chain.c.start_id, chain.c.start_issuer, p.c.patient_id, p.c.issuer)
            .join(p, p.c.pk == chain.c.pk)
            .where(chain.c.merged_into_pk.is_(None))
        )
        return {
            PatientId(row.start_id, row.start_issuer): PatientId(row.patient_id, row.issuer)
            for row in rows
        }

    # --- helpers ---

    def _common(
        self,
        patients: tuple[PatientId, ...] | None,
        kind: ObjectKind,
        statuses: tuple[str, ...] | None,
    ) -> list[ColumnElement[bool]]:
        conditions: list[ColumnElement[bool]] = [xds_object.c.kind == kind.value]
        if patients is not None:
            conditions += _patients(
                xds_object.c.patient_id, xds_object.c.patient_authority, patients
            )
        if statuses is not None:
            conditions.append(xds_object.c.status.in_(statuses))
        return conditions

    def _run(
        self,
        statement: Select[Any],
        entry_uuids: tuple[str, ...] | None,
        unique_ids: tuple[str, ...] | None,
        *,
        limit: int,
        xml: bool,
    ) -> list[Found]:
        """``statement``, further restricted to ``entry_uuids`` and ``unique_ids``
        (in chunks) when given."""
        keys: list[tuple[Any, list[str]]] = []
        if entry_uuids is not None:
            keys.append((xds_object.c.entry_uuid, list(entry_uuids)))
        if unique_ids is not None:
            keys.append((xds_object.c.unique_id, list(unique_ids)))
        if not keys:
            return self._rows(statement.limit(limit), xml)
        if len(keys) == 2:  # both: the first decides, the second filters
            statement = statement.where(keys[1][0].in_(keys[1][1]))
        column, values = keys[0]
        found: dict[int, Found] = {}
        for chunk in _chunks(values):
            for item in self._rows(statement.where(column.in_(chunk)).limit(limit), xml):
                found[item.pk] = item
            if len(found) >= limit:
                break
        return _ordered(found.values())[:limit]

    def _rows(self, statement: Select[Any], xml: bool) -> list[Found]:
        rows = self.conn.execute(self._visible(statement))
        has_time = "last_update_time" in statement.selected_columns
        return _ordered(
            _found(row, xml, last_update_time=row.last_update_time if has_time else None)
            for row in rows
        )


def _ordered(found: Iterable[Found]) -> list[Found]:
    return sorted(found, key=lambda item: item.pk)
