"""Study and series counters: kept with every insert, backfilled by migration 0002
(SOP Classes in Study: by migration 0015), recounted after rejections."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from sqlalchemy import Engine, insert, select, update

from kuva.bench_support import synthetic_instance
from kuva.index import schema
from kuva.index.database import downgrade, make_engine, migrate
from kuva.index.instances import (
    NewInstance,
    instance_row,
    merge_modalities,
    patient_row,
    series_row,
    study_row,
)
from kuva.index.rejections import recount_study
from kuva.index.uow import UnitOfWork

BASE = datetime(2024, 1, 1, tzinfo=UTC)
CT = "1.2.840.10008.5.1.4.1.1.2"
SC = "1.2.840.10008.5.1.4.1.1.7"
SC_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.7.1"  # SC's UID is a prefix of it


def of_class(new: NewInstance, sop_class_uid: str) -> NewInstance:
    return replace(new, attributes=replace(new.attributes, sop_class_uid=sop_class_uid))


def sop_classes(engine: Engine) -> list[list[str]]:
    with engine.connect() as conn:
        values = conn.execute(
            select(schema.study.c.sop_classes_in_study).order_by(schema.study.c.pk)
        ).scalars()
        return [v.split("\\") if v else [] for v in values]


def counters(engine: Engine) -> tuple[list[tuple[int, int, str]], list[int]]:
    with engine.connect() as conn:
        studies = conn.execute(
            select(
                schema.study.c.number_of_series,
                schema.study.c.number_of_instances,
                schema.study.c.modalities_in_study,
            ).order_by(schema.study.c.pk)
        ).all()
        series = (
            conn.execute(select(schema.series.c.number_of_instances).order_by(schema.series.c.pk))
            .scalars()
            .all()
        )
    return [tuple(row) for row in studies], list(series)  # type: ignore[misc]


def test_merge_modalities() -> None:
    assert merge_modalities("", "CT") == "CT"
    assert merge_modalities("CT", "MR") == "CT\\MR"
    assert merge_modalities("CT\\MR", "CT") == "CT\\MR"
    assert merge_modalities("MR", "") == "MR"


def test_counters_kept_with_each_insert(engine: Engine) -> None:
    instances = [synthetic_instance(n, BASE) for n in range(0, 450)]  # 5 series, 2 studies
    with UnitOfWork(engine) as uow:
        for new in instances:
            assert uow.instances.add(new) is not None
        assert uow.instances.add(instances[0]) is None  # a duplicate counts nothing
        uow.commit()
    studies, series = counters(engine)
    assert studies == [(4, 400, "CT"), (1, 50, "CT")]
    assert series == [100, 100, 100, 100, 50]


def test_sop_classes_in_study_kept_with_each_insert_and_recounted(engine: Engine) -> None:
    instances = [synthetic_instance(n, BASE) for n in range(0, 450)]  # 2 studies
    instances[5] = of_class(instances[5], SC_MULTIFRAME)
    instances[6] = of_class(instances[6], SC)
    instances[7] = of_class(instances[7], SC)
    instances[420] = of_class(instances[420], SC)
    with UnitOfWork(engine) as uow:
        for new in instances:
            assert uow.instances.add(new) is not None
        uow.commit()
    first, second = sop_classes(engine)
    # each class once, in the order they arrived; a prefix is not a match
    assert first == [CT, SC_MULTIFRAME, SC]
    assert sorted(second) == [CT, SC]
    # rejecting every SC instance of the first study takes SC out of it
    rejected = [instances[6].attributes.sop_instance_uid, instances[7].attributes.sop_instance_uid]
    with engine.begin() as conn:
        conn.execute(
            update(schema.instance)
            .where(schema.instance.c.sop_instance_uid.in_(rejected))
            .values(rejection_code="113001")
        )
        study_pk = conn.execute(select(schema.study.c.pk).order_by(schema.study.c.pk)).scalar()
        assert study_pk is not None
        recount_study(conn, study_pk)
    assert sop_classes(engine)[0] == sorted([CT, SC_MULTIFRAME])


def test_migration_backfills_counters(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        migrate(engine)
        downgrade(engine, "0001")
        with engine.begin() as conn:  # rows as version 0001 knew them
            old_study = {c.name for c in schema.study.c} - {
                "number_of_series",
                "number_of_instances",
                "modalities_in_study",
                "received_patient_pk",  # from migration 0008
                "sop_classes_in_study",  # from migration 0015
            }
            for n in range(0, 150):
                new = synthetic_instance(n, BASE)
                if n == 0:
                    p = conn.execute(
                        insert(schema.patient).values(patient_row(new))
                    ).inserted_primary_key[0]
                    row = {k: v for k, v in study_row(new, p).items() if k in old_study}
                    s = conn.execute(insert(schema.study).values(row)).inserted_primary_key[0]
                if n % 100 == 0:
                    srow = series_row(new, s)
                    if n == 100:
                        srow["modality"] = "MR"
                    se = conn.execute(insert(schema.series).values(srow)).inserted_primary_key[0]
                irow = instance_row(new, se)
                del irow["rejection_note_code"]  # from migration 0007
                if n == 120:
                    irow["sop_class_uid"] = SC
                conn.execute(insert(schema.instance).values(irow))
        migrate(engine)
        studies, series = counters(engine)
        assert series == [100, 50]
        assert studies[0][:2] == (2, 150)
        assert set(studies[0][2].split("\\")) == {"CT", "MR"}
        assert sorted(sop_classes(engine)[0]) == [CT, SC]
    finally:
        engine.dispose()
