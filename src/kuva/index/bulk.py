"""Bulk loading of the study tree into an empty index, for benchmarks.

``bulk_add`` writes the patient, study, series and instance rows that
``InstanceRepository.add`` would write for the same instances in the same order
(same values, same fitting to the columns, same keys: patients by Patient ID +
issuer, studies and series by UID, the study's ``last_received_at`` from the last
instance added to it), but many rows per statement: one ``executemany`` per table
and chunk, on one connection, a transaction per chunk. Statements are SQLAlchemy
Core, so it runs unchanged on SQLite and PostgreSQL.

It is for growing a benchmark index quickly, never for ingest: it only fills an
empty index, skips the per-instance conflict handling of the repository (a SOP
Instance UID given twice is an IntegrityError) and raises ``TreeConflict`` where
the repository would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from typing import Any

from sqlalchemy import Connection, Engine, Table, bindparam, func, insert, select, text, update

from kuva.index.database import WRITE_OPTION
from kuva.index.instances import (
    NewInstance,
    TreeConflict,
    instance_row,
    join_sop_classes,
    merge_modalities,
    patient_row,
    series_row,
    study_row,
)
from kuva.index.schema import instance, patient, series, study

PatientKey = tuple[str, str]


@dataclass
class BulkCounts:
    """Rows written per table."""

    patients: int = 0
    studies: int = 0
    series: int = 0
    instances: int = 0


_TOUCH_STUDY = (
    update(study)
    .where(study.c.pk == bindparam("touch_pk"))
    .values(last_received_at=bindparam("touch_at"))
)


class _Loader:
    """Natural key -> primary key of every row written so far (the index was empty)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.counts = BulkCounts()
        self.patients: dict[PatientKey, int] = {}
        self.studies: dict[str, tuple[int, int]] = {}  # uid -> (pk, patient pk)
        self.series: dict[str, tuple[int, int]] = {}  # uid -> (pk, study pk)

    def _insert(self, table: Table, rows: list[dict[str, Any]]) -> list[int]:
        """Insert ``rows``; their new keys in the same order."""
        if not rows:
            return []
        stmt = insert(table).returning(table.c.pk, sort_by_parameter_order=True)
        return [int(pk) for pk in self.conn.execute(stmt, rows).scalars()]

    def load(self, chunk: list[NewInstance]) -> None:
        # Level by level: every new parent row of the chunk is inserted (and its key
        # known) before its children are built.
        new_patients: dict[PatientKey, dict[str, Any]] = {}
        for new in chunk:
            p = new.attributes.patient
            key = (p.patient_id[:64], p.issuer[:64])
            if key not in self.patients and key not in new_patients:
                new_patients[key] = patient_row(new)
        pks = self._insert(patient, list(new_patients.values()))
        self.patients.update(zip(new_patients, pks, strict=True))
        self.counts.patients += len(pks)

        new_studies: dict[str, dict[str, Any]] = {}
        touched: dict[str, datetime] = {}  # study uid -> received_at of its last instance
        for new in chunk:
            p, s = new.attributes.patient, new.attributes.study
            patient_pk = self.patients[(p.patient_id[:64], p.issuer[:64])]
            uid = s.study_instance_uid
            known = self.studies.get(uid)
            placed = known[1] if known else new_studies.get(uid, {}).get("patient_pk")
            if placed is None:
                new_studies[uid] = study_row(new, patient_pk)
            elif placed != patient_pk:
                raise TreeConflict("Study Instance UID is already archived for another patient")
            touched[uid] = new.received_at
        pks = self._insert(study, list(new_studies.values()))
        for (uid, row), pk in zip(new_studies.items(), pks, strict=True):
            self.studies[uid] = (pk, row["patient_pk"])
        self.counts.studies += len(pks)
        touches = [
            {"touch_pk": self.studies[uid][0], "touch_at": at}
            for uid, at in touched.items()
            if uid not in new_studies or new_studies[uid]["last_received_at"] != at
        ]
        if touches:
            self.conn.execute(_TOUCH_STUDY, touches)

        new_series: dict[str, dict[str, Any]] = {}
        for new in chunk:
            study_pk = self.studies[new.attributes.study.study_instance_uid][0]
            uid = new.attributes.series.series_instance_uid
            known = self.series.get(uid)
            placed = known[1] if known else new_series.get(uid, {}).get("study_pk")
            if placed is None:
                new_series[uid] = series_row(new, study_pk)
            elif placed != study_pk:
                raise TreeConflict("Series Instance UID is already archived in another study")
        pks = self._insert(series, list(new_series.values()))
        for (uid, row), pk in zip(new_series.items(), pks, strict=True):
            self.series[uid] = (pk, row["study_pk"])
        self.counts.series += len(pks)

        rows = [
            instance_row(new, self.series[new.attributes.series.series_instance_uid][0])
            for new in chunk
        ]
        self.conn.execute(insert(instance), rows)
        self.counts.instances += len(rows)


def _chunks(items: Iterable[NewInstance], size: int) -> Iterator[list[NewInstance]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def bulk_add(
    engine: Engine,
    instances: Iterable[NewInstance],
    *,
    chunk_size: int = 20_000,
    progress: Callable[[int], None] | None = None,
) -> BulkCounts:
    """Write ``instances`` (each SOP Instance UID once) into the empty index of ``engine``.

    One transaction per ``chunk_size`` instances; ``progress`` is called with the
    number of instances of each committed chunk.
    """
    with engine.connect() as conn:
        conn = conn.execution_options(**{WRITE_OPTION: True})
        with conn.begin():
            for table in (patient, study, series, instance):
                if conn.execute(select(func.count()).select_from(table)).scalar_one():
                    raise RuntimeError(f"bulk_add only fills an empty index ({table.name} is not)")
        loader = _Loader(conn)
        for chunk in _chunks(instances, chunk_size):
            with conn.begin():
                loader.load(chunk)
            if progress is not None:
                progress(len(chunk))
        with conn.begin():
            recount(conn)
        return loader.counts


def recount(conn: Connection) -> None:
    """Set the study and series counters from the rows (the repository keeps them
    one insert at a time; a bulk load sets them once at the end)."""
    conn.execute(
        update(series).values(
            number_of_instances=select(func.count())
            .select_from(instance)
            .where(instance.c.series_pk == series.c.pk)
            .scalar_subquery()
        )
    )
    conn.execute(
        update(study).values(
            number_of_series=select(func.count())
            .select_from(series)
            .where(series.c.study_pk == study.c.pk)
            .scalar_subquery(),
            number_of_instances=select(func.coalesce(func.sum(series.c.number_of_instances), 0))
            .where(series.c.study_pk == study.c.pk)
            .scalar_subquery(),
        )
    )
    modalities: dict[int, str] = {}
    for study_pk, modality in conn.execute(
        select(series.c.study_pk, series.c.modality).order_by(series.c.pk)
    ):
        modalities[study_pk] = merge_modalities(modalities.get(study_pk, ""), modality)
    classes: dict[int, set[str]] = {}
    for study_pk, sop_class in conn.execute(
        select(series.c.study_pk, instance.c.sop_class_uid)
        .distinct()
        .select_from(instance.join(series, instance.c.series_pk == series.c.pk))
    ):
        classes.setdefault(study_pk, set()).add(sop_class)
    if modalities:
        conn.execute(
            update(study)
            .where(study.c.pk == bindparam("study_pk"))
            .values(modalities_in_study=bindparam("m"), sop_classes_in_study=bindparam("c")),
            [
                {"study_pk": pk, "m": m, "c": join_sop_classes(classes.get(pk, ()))}
                for pk, m in modalities.items()
            ],
        )


def analyze(engine: Engine) -> None:
    """Make a freshly loaded index look like one that has been running for a while.

    PostgreSQL: ``VACUUM (ANALYZE)`` - planner statistics, and the visibility map
    that lets index-only scans skip the heap (autovacuum would set it some time
    after a bulk load, in the middle of a measurement). SQLite: ``ANALYZE`` and
    ``PRAGMA optimize``.
    """
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.execute(text("VACUUM (ANALYZE)"))
        return
    with engine.begin() as conn:
        conn.execute(text("ANALYZE"))
        conn.execute(text("PRAGMA optimize"))
