"""The index on SQLite and PostgreSQL: engine, migrations and the study tree."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Column, Engine, Integer, MetaData, Table, inspect, select
from sqlalchemy.exc import StatementError

from kuva.index import schema
from kuva.index.database import make_engine, migrate, ping
from kuva.index.group_commit import GroupCommitter
from kuva.index.instances import ForeignStudy, NewInstance, StoredInstance, TreeConflict
from kuva.index.uow import UnitOfWork
from kuva.model.instance import (
    InstanceAttributes,
    PatientAttributes,
    SeriesAttributes,
    StudyAttributes,
)
from kuva.services.ingest import IncomingInstance, IngestService, StoreStatus
from kuva.storage import blob_key
from kuva.storage.filesystem import FileBlobStore

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
ROOT = "2.25.1111111111"
ORG = "1.2.246.10.1234567.10"
NOW = datetime(2026, 3, 14, 9, 26, 53, tzinfo=UTC)


def attributes(
    n: int,
    *,
    study: str = f"{ROOT}.1",
    series: str = f"{ROOT}.1.1",
    patient_id: str = "010181-900C",
    **patient_fields: str,
) -> InstanceAttributes:
    """Synthetic attributes of instance ``n`` in the given study and series."""
    return InstanceAttributes(
        sop_class_uid=CT,
        sop_instance_uid=f"{series}.{n}",
        transfer_syntax_uid=EXPLICIT_LE,
        patient=PatientAttributes(
            patient_id=patient_id,
            name=patient_fields.get("name", "Testinen^Maija"),
            birth_date="19810101",
            sex="F",
        ),
        study=StudyAttributes(
            study_instance_uid=study,
            study_date="20260314",
            study_time="092653",
            accession_number="A1",
            study_id="1",
            description=patient_fields.get("study_description", "CT thorax"),
        ),
        series=SeriesAttributes(
            series_instance_uid=series,
            modality="CT",
            series_number=1,
            description="Axial",
        ),
        instance_number=n,
        rows=512,
        columns=512,
        dataset_json='{"00080060":{"vr":"CS","Value":["CT"]}}',
    )


def new_instance(attrs: InstanceAttributes, **overrides: Any) -> NewInstance:
    """An index row for ``attrs`` with a made-up blob reference."""
    digest = f"{attrs.instance_number or 0:064x}"
    values: dict[str, Any] = {
        "attributes": attrs,
        "blob_key": f"sha256/{digest[:2]}/{digest[2:4]}/{digest}",
        "size": 1000 + (attrs.instance_number or 0),
        "sha256": digest,
        "received_at": NOW,
        "source_ae": "CT1",
        "organization_oid": ORG,
    }
    values.update(overrides)
    return NewInstance(**values)


def add(engine: Engine, new: NewInstance) -> int | None:
    """Add one instance in its own committed unit of work."""
    with UnitOfWork(engine) as uow:
        pk = uow.instances.add(new)
        uow.commit()
    return pk


def row_counts(engine: Engine) -> dict[str, int]:
    """Number of rows in each study-tree table."""
    with engine.connect() as conn:
        return {
            table.name: len(conn.execute(select(table.c.pk)).all())
            for table in (schema.patient, schema.study, schema.series, schema.instance)
        }


def test_migrate_creates_schema(database_url: str) -> None:
    """Migrating an empty database creates every table of the schema."""
    engine = make_engine(database_url)
    try:
        ping(engine)
        assert not set(schema.metadata.tables) & set(inspect(engine).get_table_names())
        migrate(engine)
        tables = set(inspect(engine).get_table_names())
        assert set(schema.metadata.tables) <= tables
        assert "alembic_version" in tables
        migrate(engine)  # a second run is a no-op
        with engine.connect() as conn:
            assert MigrationContext.configure(conn).get_current_revision() == "0021"
    finally:
        engine.dispose()


def test_migration_matches_schema_module(engine: Engine) -> None:
    """The Alembic migration creates exactly what index.schema describes."""
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        differences = compare_metadata(context, schema.metadata)
    assert differences == []
    # The comparison does see a difference when there is one.
    extra = MetaData()
    for table in schema.metadata.tables.values():
        table.to_metadata(extra)
    Table("not_migrated", extra, Column("pk", Integer, primary_key=True))
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert [d[0] for d in compare_metadata(context, extra)] == ["add_table"]


def test_make_engine_refuses_other_databases() -> None:
    """Only SQLite and PostgreSQL are supported."""
    with pytest.raises(ValueError, match="unsupported database"):
        make_engine("mysql://kuva@localhost/kuva")


def test_sqlite_pragmas(tmp_path: Path) -> None:
    """SQLite runs in WAL mode with synchronous=FULL and foreign keys on."""
    engine = make_engine(f"sqlite:///{tmp_path / 'index.sqlite'}")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()


def test_add_creates_tree_once(engine: Engine) -> None:
    """The first instance creates patient, study and series; the second reuses them."""
    first = add(engine, new_instance(attributes(1)))
    assert first is not None
    assert row_counts(engine) == {"patient": 1, "study": 1, "series": 1, "instance": 1}
    second = add(engine, new_instance(attributes(2)))
    assert second is not None and second != first
    assert row_counts(engine) == {"patient": 1, "study": 1, "series": 1, "instance": 2}
    add(engine, new_instance(attributes(3, series=f"{ROOT}.1.2")))
    assert row_counts(engine) == {"patient": 1, "study": 1, "series": 2, "instance": 3}
    with engine.connect() as conn:
        patient = conn.execute(select(schema.patient)).one()
        study = conn.execute(select(schema.study)).one()
    assert patient.patient_id == "010181-900C"
    assert patient.patient_name == "Testinen^Maija"
    assert patient.patient_name_norm == "TESTINEN^MAIJA"
    assert patient.created_at == NOW
    assert study.organization_oid == ORG
    assert study.study_description == "CT thorax"
    assert study.last_received_at == NOW


def test_add_touches_study_last_received(engine: Engine) -> None:
    """Each new instance moves the study's last_received_at."""
    add(engine, new_instance(attributes(1)))
    later = NOW.replace(hour=11)
    add(engine, new_instance(attributes(2), received_at=later))
    with engine.connect() as conn:
        study = conn.execute(select(schema.study)).one()
    assert study.created_at == NOW
    assert study.last_received_at == later


def test_duplicate_sop_instance_uid(engine: Engine) -> None:
    """A second instance with the same SOP Instance UID is not added (None)."""
    assert add(engine, new_instance(attributes(1))) is not None
    other_bytes = new_instance(attributes(1), sha256="f" * 64, size=5)
    assert add(engine, other_bytes) is None
    assert row_counts(engine)["instance"] == 1
    with UnitOfWork(engine, write=False) as uow:
        stored = uow.instances.get(f"{ROOT}.1.1.1")
    assert stored is not None
    assert stored.sha256 == f"{1:064x}"


def test_get_and_get_many(engine: Engine) -> None:
    """get/get_many return StoredInstance with the study tree's UIDs."""
    pks = [add(engine, new_instance(attributes(n))) for n in (1, 2, 3)]
    assert pks[1] is not None
    with UnitOfWork(engine, write=False) as uow:
        stored = uow.instances.get(f"{ROOT}.1.1.2")
        missing = uow.instances.get(f"{ROOT}.9")
        many = uow.instances.get_many(
            [f"{ROOT}.1.1.1", f"{ROOT}.1.1.3", f"{ROOT}.9", f"{ROOT}.1.1.1"]
        )
        count = uow.instances.count()
    digest = f"{2:064x}"
    assert stored == StoredInstance(
        pk=pks[1],
        sop_instance_uid=f"{ROOT}.1.1.2",
        sop_class_uid=CT,
        series_instance_uid=f"{ROOT}.1.1",
        study_instance_uid=f"{ROOT}.1",
        transfer_syntax_uid=EXPLICIT_LE,
        blob_key=f"sha256/{digest[:2]}/{digest[2:4]}/{digest}",
        size=1002,
        sha256=digest,
        organization_oid=ORG,
    )
    assert missing is None
    assert set(many) == {f"{ROOT}.1.1.1", f"{ROOT}.1.1.3"}
    assert all(isinstance(v, StoredInstance) for v in many.values())
    assert many[f"{ROOT}.1.1.3"].pk == pks[2]
    assert count == 3


def test_get_many_beyond_one_chunk(engine: Engine) -> None:
    """More UIDs than one lookup chunk (500) are all found."""
    with UnitOfWork(engine) as uow:
        for n in range(1, 521):
            uow.instances.add(new_instance(attributes(n)))
        uow.commit()
    uids = [f"{ROOT}.1.1.{n}" for n in range(1, 531)]
    with UnitOfWork(engine, write=False) as uow:
        found = uow.instances.get_many(uids)
    assert len(found) == 520


def test_series_uid_under_another_study(engine: Engine) -> None:
    """A series UID already placed in one study cannot appear in another."""
    add(engine, new_instance(attributes(1, study=f"{ROOT}.1", series=f"{ROOT}.1.1")))
    with UnitOfWork(engine) as uow, pytest.raises(TreeConflict, match="another study"):
        uow.instances.add(new_instance(attributes(2, study=f"{ROOT}.2", series=f"{ROOT}.1.1")))
    assert row_counts(engine) == {"patient": 1, "study": 1, "series": 1, "instance": 1}


def test_study_uid_under_another_patient(engine: Engine) -> None:
    """A study UID already archived for one patient cannot appear for another."""
    add(engine, new_instance(attributes(1)))
    with UnitOfWork(engine) as uow, pytest.raises(TreeConflict, match="another patient"):
        uow.instances.add(new_instance(attributes(2, patient_id="020292-902R")))
    assert row_counts(engine) == {"patient": 1, "study": 1, "series": 1, "instance": 1}


def test_study_of_another_register_holder(engine: Engine) -> None:
    """A study has one register holder: another organisation's instance of it is
    refused before anything else is said of the study (not even its patient)."""
    add(engine, new_instance(attributes(1)))
    other = "1.2.246.10.87654321.10"
    for attrs in (attributes(2), attributes(3, patient_id="020292-902P")):
        with UnitOfWork(engine) as uow, pytest.raises(ForeignStudy, match="register holder"):
            uow.instances.add(new_instance(attrs, organization_oid=other))
    assert row_counts(engine) == {"patient": 1, "study": 1, "series": 1, "instance": 1}


def test_same_patient_id_other_issuer_is_another_patient(engine: Engine) -> None:
    """Patients are keyed by (Patient ID, Issuer)."""
    attrs = attributes(1)
    add(engine, new_instance(attrs))
    other = InstanceAttributes(
        **{
            **attrs.__dict__,
            "sop_instance_uid": f"{ROOT}.2.1.1",
            "patient": PatientAttributes(patient_id="010181-900C", issuer="1.2.246.21"),
            "study": StudyAttributes(study_instance_uid=f"{ROOT}.2"),
            "series": SeriesAttributes(series_instance_uid=f"{ROOT}.2.1"),
        }
    )
    add(engine, new_instance(other))
    assert row_counts(engine)["patient"] == 2


def test_long_strings_are_cut(engine: Engine) -> None:
    """Values longer than their column are cut to fit, on every database."""
    long_name = "Äijälä^" + "Ö" * 400
    attrs = attributes(1, name=long_name, study_description="D" * 100)
    long_series = SeriesAttributes(
        series_instance_uid=f"{ROOT}.1.1",
        modality="X" * 20,
        station_name="S" * 40,
        institution_name="I" * 80,
    )
    attrs = InstanceAttributes(
        **{**attrs.__dict__, "series": long_series, "content_time": "1" * 30}
    )
    pk = add(engine, new_instance(attrs, source_ae="A" * 20))
    assert pk is not None
    with engine.connect() as conn:
        patient = conn.execute(select(schema.patient)).one()
        study = conn.execute(select(schema.study)).one()
        series = conn.execute(select(schema.series)).one()
        instance = conn.execute(select(schema.instance)).one()
    assert patient.patient_name == long_name[:324]
    assert patient.patient_name_norm == long_name.upper()[:324]
    assert study.study_description == "D" * 64
    assert series.modality == "X" * 16
    assert series.station_name == "S" * 16
    assert series.institution_name == "I" * 64
    assert instance.content_time == "1" * 16
    assert instance.source_ae == "A" * 16
    # The same long values again find the same (cut) rows.
    assert add(engine, new_instance(attributes(2, name=long_name))) is not None
    assert row_counts(engine)["patient"] == 1


@pytest.mark.parametrize("field", ["instance_number", "number_of_frames", "series_number"])
def test_integer_beyond_column_range_is_not_an_index_failure(
    database_url: str, tmp_path: Path, field: str
) -> None:
    """An IS value beyond 32 bits (pydicom reads it as given) is no index failure.

    Strings are cut to fit their column so that the same object is archived alike
    on both databases; an out-of-range integer must likewise end as stored (value
    kept or dropped) or refused as invalid, not as a database error.
    """
    engine = make_engine(database_url)
    migrate(engine)
    blobs = FileBlobStore(tmp_path / "blobs")
    committer = GroupCommitter(engine)
    try:
        attrs = attributes(1)
        if field == "series_number":
            series = SeriesAttributes(series_instance_uid=f"{ROOT}.1.1", series_number=2**40)
            attrs = InstanceAttributes(**{**attrs.__dict__, "series": series})
        else:
            attrs = InstanceAttributes(**{**attrs.__dict__, field: 99_999_999_999})
        writer = blobs.open_writer()
        writer.write(b"synthetic object bytes")
        outcome = IngestService(blobs, committer).store(
            IncomingInstance(attributes=attrs, blob=writer, source_ae="CT1", organization_oid=ORG)
        )
        # Stored; the out-of-range value is left out of the index (the blob keeps it).
        assert outcome.status is StoreStatus.STORED, outcome
    finally:
        committer.close()
        engine.dispose()


def test_a_blob_that_cannot_be_stored_leaves_no_row(engine: Engine, tmp_path: Path) -> None:
    """Its name taken by other bytes (a damaged or forged file): the instance is
    answered as a storage failure, and its index rows (written meanwhile) are undone."""
    blobs = FileBlobStore(tmp_path / "blobs")
    committer = GroupCommitter(engine)
    try:
        content = b"synthetic object bytes"
        key = blob_key(hashlib.sha256(content).hexdigest())
        taken = blobs.path_of(key)
        taken.parent.mkdir(parents=True, exist_ok=True)
        taken.write_bytes(b"other bytes, another size")
        writer = blobs.open_writer()
        writer.write(content)
        outcome = IngestService(blobs, committer).store(
            IncomingInstance(
                attributes=attributes(1), blob=writer, source_ae="CT1", organization_oid=ORG
            )
        )
        assert outcome.status is StoreStatus.FAILED
        assert outcome.message == f"storage failure: {key} exists with another size"
        assert row_counts(engine)["instance"] == 0
        assert taken.read_bytes() == b"other bytes, another size"
    finally:
        committer.close()
        blobs.close()


def test_rolled_back_unit_of_work_leaves_nothing(engine: Engine) -> None:
    """A unit of work that is not committed is rolled back."""
    with UnitOfWork(engine) as uow:
        assert uow.instances.add(new_instance(attributes(1))) is not None
    assert row_counts(engine) == {"patient": 0, "study": 0, "series": 0, "instance": 0}


def test_naive_datetime_is_refused(engine: Engine) -> None:
    """Registry times must be timezone-aware (UTC)."""
    with UnitOfWork(engine) as uow, pytest.raises(StatementError, match="naive datetime"):
        uow.instances.add(new_instance(attributes(1), received_at=datetime(2026, 1, 1)))


def test_name_and_accession_prefix_use_the_index(engine: Engine) -> None:
    """LIKE 'prefix%' can use the index on every database (migration 0003)."""
    from sqlalchemy import text

    queries = {
        "ix_patient_patient_name_norm": (
            "SELECT pk FROM patient WHERE patient_name_norm LIKE 'ÄIJ%'"
        ),
        "ix_study_accession_number": "SELECT pk FROM study WHERE accession_number LIKE 'ACC1%'",
    }
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SET enable_seqscan = off"))
            explain, ranged = "EXPLAIN ", "Index Cond"
        else:
            explain, ranged = "EXPLAIN QUERY PLAN ", "SEARCH"
        for index, query in queries.items():
            plan = " ".join(str(row) for row in conn.execute(text(explain + query)))
            # A range on the index, not a full index scan with a filter.
            assert index in plan and ranged in plan, plan
