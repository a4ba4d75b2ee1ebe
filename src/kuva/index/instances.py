"""Repository of the study tree: patient, study, series, instance rows."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Integer,
    String,
    Table,
    bindparam,
    case,
    func,
    literal,
    or_,
    select,
    update,
)

from kuva.index.dialect import insert_ignoring_conflict
from kuva.index.schema import instance, patient, series, study
from kuva.model.instance import InstanceAttributes

_INT32 = range(-(2**31), 2**31)


def _fit(table: Table, values: dict[str, Any]) -> dict[str, Any]:
    """Fit values to their columns: the index keeps what it can, the blob keeps all.

    Strings are cut to the column's length; an integer outside the 32-bit range of
    an Integer column (malformed IS, PS3.5 6.2) is left out (NULL).
    """
    limits = _LIMITS.get(table.name)
    if limits is None:
        limits = _LIMITS[table.name] = _column_limits(table)
    fitted = dict(values)
    for name, value in values.items():
        limit = limits.get(name)
        if limit is None:
            continue
        if limit and isinstance(value, str):
            fitted[name] = value[:limit]
        elif not limit and isinstance(value, int) and value not in _INT32:
            fitted[name] = None
    return fitted


# Per table, what ``_fit`` checks of a column: its length (a String with one) or
# 0 (an Integer, 32 bits); columns not named need nothing.
_LIMITS: dict[str, dict[str, int]] = {}


def _column_limits(table: Table) -> dict[str, int]:
    limits: dict[str, int] = {}
    for column in table.c:
        column_type = column.type
        if isinstance(column_type, String) and column_type.length:
            limits[column.name] = column_type.length
        elif type(column_type) is Integer:
            limits[column.name] = 0
    return limits


class TreeConflict(Exception):
    """The instance contradicts the stored study tree (a UID already placed elsewhere)."""


class ForeignStudy(Exception):
    """The instance's study is archived by another organisation: a study has one
    register holder (the organisation whose node archived it first)."""


class StudyDestroying(Exception):
    """The instance belongs to a study retention is destroying (services.retention)."""


@dataclass(frozen=True)
class CurrentPatient:
    """The patient a study belongs to now, as the index holds it (after HL7
    corrections): what its objects go out with."""

    patient_id: str
    issuer: str
    name: str
    birth_date: str
    sex: str


@dataclass(frozen=True)
class StoredInstance:
    pk: int
    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    study_instance_uid: str
    transfer_syntax_uid: str
    blob_key: str
    size: int
    sha256: str
    organization_oid: str
    # The study's current patient when a correction applies to it: the study was
    # merged away from the patient it was received for (HL7 A40), or its patient's
    # identity or demographics were corrected (A08, A31, A47). None: none applies.
    corrected_patient: CurrentPatient | None = None


@dataclass(frozen=True)
class AddedTree:
    """Where ``InstanceRepository.add`` put an instance, and what it created."""

    study_pk: int
    series_pk: int
    new_study: bool
    new_series: bool


@dataclass(frozen=True)
class NewInstance:
    attributes: InstanceAttributes
    blob_key: str
    size: int
    sha256: str
    received_at: datetime
    source_ae: str
    organization_oid: str


_STORED_COLUMNS = (
    instance.c.pk,
    instance.c.sop_instance_uid,
    instance.c.sop_class_uid,
    series.c.series_instance_uid,
    study.c.study_instance_uid,
    instance.c.transfer_syntax_uid,
    instance.c.blob_key,
    instance.c.size,
    instance.c.sha256,
    instance.c.organization_oid,
    case(
        (
            or_(
                patient.c.corrected_at.is_not(None),
                study.c.patient_pk
                != func.coalesce(study.c.received_patient_pk, study.c.patient_pk),
            ),
            True,
        ),
        else_=False,
    ).label("corrected"),
    patient.c.patient_id.label("current_patient_id"),
    patient.c.issuer.label("current_issuer"),
    patient.c.patient_name.label("current_name"),
    patient.c.birth_date.label("current_birth_date"),
    patient.c.sex.label("current_sex"),
)
_INSTANCE_FIELDS = (
    "pk",
    "sop_instance_uid",
    "sop_class_uid",
    "series_instance_uid",
    "study_instance_uid",
    "transfer_syntax_uid",
    "blob_key",
    "size",
    "sha256",
    "organization_oid",
)


def stored_instance(row: Any) -> StoredInstance:
    """A StoredInstance from a row that selected ``_STORED_COLUMNS``."""
    corrected = None
    if row.corrected:
        corrected = CurrentPatient(
            row.current_patient_id,
            row.current_issuer,
            row.current_name,
            row.current_birth_date,
            row.current_sex,
        )
    values = {name: getattr(row, name) for name in _INSTANCE_FIELDS}
    return StoredInstance(**values, corrected_patient=corrected)


# instance -> series -> study -> (current) patient: what _STORED_COLUMNS read.
STORED_TREE = (
    instance.join(series, instance.c.series_pk == series.c.pk)
    .join(study, series.c.study_pk == study.c.pk)
    .join(patient, study.c.patient_pk == patient.c.pk)
)


_STORED = select(*_STORED_COLUMNS).select_from(STORED_TREE)
_GET_STORED = _STORED.where(instance.c.sop_instance_uid == bindparam("uid"))
# The shared record of the patient and the register holder's own (index.patients).
_PATIENT_ROWS = select(patient.c.pk, patient.c.merged_into_pk, patient.c.organization_oid).where(
    patient.c.patient_id == bindparam("patient_id"),
    patient.c.issuer == bindparam("issuer"),
    patient.c.organization_oid.in_(["", bindparam("organization")]),
)
_STUDY_ROW = select(
    study.c.pk, study.c.patient_pk, study.c.organization_oid, study.c.destroying_at
).where(study.c.study_instance_uid == bindparam("uid"))
_SERIES_ROW = select(series.c.pk, series.c.study_pk).where(
    series.c.series_instance_uid == bindparam("uid")
)
# Counters kept with every insert (PS3.4 C.3.4 computed attributes, index/query.py).
_SOP_CLASSES = study.c.sop_classes_in_study
_COUNT_INSTANCE_IN_SERIES = (
    update(series)
    .where(series.c.pk == bindparam("series_pk"))
    .values(number_of_instances=series.c.number_of_instances + 1)
)
_COUNT_INSTANCE_IN_STUDY = (
    update(study)
    .where(study.c.pk == bindparam("study_pk"))
    .values(
        number_of_instances=study.c.number_of_instances + 1,
        last_received_at=bindparam("received_at"),
        # SOP Classes in Study gains the instance's class when it is new to the study,
        # decided by the statement every instance runs anyway: no read, and writers
        # of the same study on other nodes cannot lose each other's classes.
        sop_classes_in_study=case(
            (
                (literal("\\") + _SOP_CLASSES + literal("\\")).like(
                    bindparam("sop_class_pattern"), escape="/"
                ),
                _SOP_CLASSES,
            ),
            (_SOP_CLASSES == "", bindparam("sop_class", type_=String())),
            else_=_SOP_CLASSES + literal("\\") + bindparam("sop_class", type_=String()),
        ),
    )
)


def _sop_class_pattern(sop_class_uid: str) -> str:
    """LIKE pattern (escape ``/``) of a class among backslash-separated values."""
    escaped = "".join("/" + c if c in "/%_" else c for c in sop_class_uid)
    return f"%\\{escaped}\\%"


def join_sop_classes(sop_class_uids: Iterable[str]) -> str:
    """SOP Classes in Study as the index keeps it (sorted, backslashes): recounts."""
    return "\\".join(sorted(set(sop_class_uids)))


_STUDY_MODALITIES = select(study.c.modalities_in_study).where(study.c.pk == bindparam("pk"))
_COUNT_SERIES_IN_STUDY = (
    update(study)
    .where(study.c.pk == bindparam("study_pk"))
    .values(
        number_of_series=study.c.number_of_series + 1,
        modalities_in_study=bindparam("modalities"),
    )
)


def merge_modalities(existing: str, modality: str) -> str:
    """ModalitiesInStudy after a series of ``modality`` joins (sorted, backslashes)."""
    values = {m for m in existing.split("\\") if m}
    if modality:
        values.add(modality)
    return "\\".join(sorted(values))[:64]


# The rows InstanceRepository.add writes (also used by index.bulk for benchmarks).
def patient_row(new: NewInstance) -> dict[str, Any]:
    p = new.attributes.patient
    return _fit(
        patient,
        {
            "patient_id": p.patient_id,
            "issuer": p.issuer,
            "patient_name": p.name,
            "patient_name_norm": p.name.upper(),
            "birth_date": p.birth_date,
            "sex": p.sex,
            "created_at": new.received_at,
        },
    )


def study_row(
    new: NewInstance, patient_pk: int, received_patient_pk: int | None = None
) -> dict[str, Any]:
    s = new.attributes.study
    return _fit(
        study,
        {
            "study_instance_uid": s.study_instance_uid,
            "patient_pk": patient_pk,
            "study_date": s.study_date,
            "study_time": s.study_time,
            "accession_number": s.accession_number,
            "study_id": s.study_id,
            "study_description": s.description,
            "referring_physician_name": s.referring_physician_name,
            "organization_oid": new.organization_oid,
            "created_at": new.received_at,
            "last_received_at": new.received_at,
            "received_patient_pk": received_patient_pk or patient_pk,
        },
    )


def series_row(new: NewInstance, study_pk: int) -> dict[str, Any]:
    s = new.attributes.series
    return _fit(
        series,
        {
            "series_instance_uid": s.series_instance_uid,
            "study_pk": study_pk,
            "modality": s.modality,
            "series_number": s.series_number,
            "series_description": s.description,
            "body_part_examined": s.body_part_examined,
            "series_date": s.series_date,
            "series_time": s.series_time,
            "institution_name": s.institution_name,
            "station_name": s.station_name,
            "created_at": new.received_at,
        },
    )


def instance_row(new: NewInstance, series_pk: int) -> dict[str, Any]:
    a = new.attributes
    return _fit(
        instance,
        {
            "sop_instance_uid": a.sop_instance_uid,
            "series_pk": series_pk,
            "sop_class_uid": a.sop_class_uid,
            "instance_number": a.instance_number,
            "content_date": a.content_date,
            "content_time": a.content_time,
            "number_of_frames": a.number_of_frames,
            "rows": a.rows,
            "columns": a.columns,
            "transfer_syntax_uid": a.transfer_syntax_uid,
            "blob_key": new.blob_key,
            "size": new.size,
            "sha256": new.sha256,
            "received_at": new.received_at,
            "source_ae": new.source_ae,
            "organization_oid": new.organization_oid,
            "dataset_json": a.dataset_json,
            "rejection_note_code": a.rejection_note.code if a.rejection_note else None,
        },
    )


@dataclass(frozen=True)
class _NewPatient:
    pk: int
    merged_into_pk: int | None


def survivor(conn: Connection, patient_pk: int) -> int:
    """The patient a merged patient resolves to: the end of its ``merged_into`` chain
    (A into B, B into C: C), in one statement (a recursive CTE, SQLite and PostgreSQL).
    Merges refuse cycles (services.patients); UNION, not UNION ALL, ends the walk on
    one all the same, and it is then an error. An unknown patient is its own survivor."""
    link = patient.alias("link")
    chain = (
        select(patient.c.pk, patient.c.merged_into_pk)
        .where(patient.c.pk == patient_pk)
        .cte("chain", recursive=True)
    )
    chain = chain.union(
        select(link.c.pk, link.c.merged_into_pk).where(link.c.pk == chain.c.merged_into_pk)
    )
    rows = conn.execute(select(chain.c.pk, chain.c.merged_into_pk)).all()
    if not rows:
        return patient_pk
    ends = [int(row.pk) for row in rows if row.merged_into_pk is None]
    if not ends:
        raise RuntimeError(f"patient {patient_pk}: its merge chain is a cycle")
    return ends[0]


class InstanceRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        # Set by ``add`` for the instance it just inserted (the ingest hooks).
        self.last_added: AddedTree | None = None

    def get(self, sop_instance_uid: str) -> StoredInstance | None:
        row = self.conn.execute(_GET_STORED, {"uid": sop_instance_uid}).one_or_none()
        return stored_instance(row) if row is not None else None

    def get_many(self, sop_instance_uids: Iterable[str]) -> dict[str, StoredInstance]:
        """Stored instances by SOP Instance UID, looked up in index-sized chunks."""
        found: dict[str, StoredInstance] = {}
        uids = list(dict.fromkeys(sop_instance_uids))
        for start in range(0, len(uids), 500):
            chunk = uids[start : start + 500]
            for row in self.conn.execute(_STORED.where(instance.c.sop_instance_uid.in_(chunk))):
                stored = stored_instance(row)
                found[stored.sop_instance_uid] = stored
        return found

    def count(self) -> int:
        return int(self.conn.execute(select(func.count()).select_from(instance)).scalar_one())

    def add(self, new: NewInstance) -> int | None:
        """Insert the instance and the patient/study/series it belongs to.

        Returns the new instance's key, or None when an instance with the same SOP
        Instance UID is already indexed (the caller decides what that means).
        Patient, study and series rows are created on first sight and otherwise
        left as they are (corrections are a later, explicit step); the study's and
        series' counters are kept in the same transaction.
        """
        received_pk, patient_pk = self._patient(new)
        study_pk, new_study, study_found = self._get_or_create(
            study,
            _STUDY_ROW,
            {"uid": new.attributes.study.study_instance_uid},
            study_row(new, patient_pk, received_pk),
            ["study_instance_uid"],
        )
        if study_found is not None:
            # The holder first: another organisation learns nothing of the study.
            if study_found.organization_oid != new.organization_oid:
                raise ForeignStudy("study archived by another register holder; refused")
            if study_found.patient_pk != patient_pk:
                raise TreeConflict("Study Instance UID is already archived for another patient")
            if study_found.destroying_at is not None:
                # Its blobs are being deleted: a new one would outlive it as an orphan.
                raise StudyDestroying("the study is being destroyed (retention ended)")
        series_pk, new_series, _ = self._get_or_create(
            series,
            _SERIES_ROW,
            {"uid": new.attributes.series.series_instance_uid},
            series_row(new, study_pk),
            ["series_instance_uid"],
            ("study_pk", study_pk, "Series Instance UID is already archived in another study"),
        )
        pk = insert_ignoring_conflict(
            self.conn, instance, instance_row(new, series_pk), ["sop_instance_uid"]
        )
        if pk is None:
            return None
        if new_series:
            existing = self.conn.execute(_STUDY_MODALITIES, {"pk": study_pk}).scalar_one()
            self.conn.execute(
                _COUNT_SERIES_IN_STUDY,
                {
                    "study_pk": study_pk,
                    "modalities": merge_modalities(existing, new.attributes.series.modality),
                },
            )
        self.conn.execute(_COUNT_INSTANCE_IN_SERIES, {"series_pk": series_pk})
        sop_class = new.attributes.sop_class_uid
        self.conn.execute(
            _COUNT_INSTANCE_IN_STUDY,
            {
                "study_pk": study_pk,
                "received_at": new.received_at,
                "sop_class": sop_class,
                "sop_class_pattern": _sop_class_pattern(sop_class),
            },
        )
        self.last_added = AddedTree(study_pk, series_pk, new_study, new_series)
        return int(pk)

    def _patient(self, new: NewInstance) -> tuple[int, int]:
        """(received, current) patient of a new instance: its shared record (made on
        first sight) and the record its study belongs to - the register holder's own
        record of the patient when there is one, else the shared one - resolved to
        the survivor when merged into another (HL7 A40)."""
        key = {
            "patient_id": new.attributes.patient.patient_id[:64],
            "issuer": new.attributes.patient.issuer[:64],
            "organization": new.organization_oid,
        }
        for _ in range(2):
            rows: dict[str, Any] = {
                row.organization_oid: row for row in self.conn.execute(_PATIENT_ROWS, key)
            }
            shared: Any = rows.get("")
            if shared is None:
                received = insert_ignoring_conflict(
                    self.conn,
                    patient,
                    patient_row(new),
                    ["patient_id", "issuer", "organization_oid"],
                )
                if received is None:
                    continue  # made meanwhile by another node: look again
                shared = _NewPatient(int(received), None)
            current = rows.get(new.organization_oid, shared) if new.organization_oid else shared
            placed = (
                survivor(self.conn, current.pk)
                if current.merged_into_pk is not None
                else int(current.pk)
            )
            return int(shared.pk), placed
        raise RuntimeError("patient row vanished while being created")  # pragma: no cover

    def _get_or_create(
        self,
        table: Table,
        lookup: Any,
        key: dict[str, Any],
        values: dict[str, Any],
        conflict_columns: list[str],
        parent: tuple[str, int, str] | None = None,
    ) -> tuple[int, bool, Any]:
        """(key, created, the row found or None) of the row found by ``lookup``,
        created from ``values`` when absent.

        ``parent`` = (column, expected key, message): a row found under another
        parent is a TreeConflict. A row created meanwhile by another node (the insert
        hit its unique constraint) is looked up again and checked the same way.
        """
        for attempt in range(2):
            row = self.conn.execute(lookup, key).one_or_none()
            if row is not None:
                if parent is not None and getattr(row, parent[0]) != parent[1]:
                    raise TreeConflict(parent[2])
                return int(row.pk), False, row
            if attempt == 0:
                pk = insert_ignoring_conflict(self.conn, table, values, conflict_columns)
                if pk is not None:
                    return int(pk), True, None
        raise RuntimeError(f"{table.name} row vanished while being created")  # pragma: no cover
