"""IOCM rejections in the index on SQLite and PostgreSQL: marking, counters, the
note that comes first, another organisation's note, revocation, and the query and
retrieve paths leaving rejected instances out."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime

from sqlalchemy import Engine

from kuva.bench_support import synthetic_instance
from kuva.index.instances import NewInstance
from kuva.index.retrieval import RetrieveKeys
from kuva.index.uow import UnitOfWork
from kuva.model.query import QueryLevel
from kuva.model.rejection import (
    PATIENT_SAFETY,
    RejectedReference,
    RejectionNote,
    Standing,
    StudyStanding,
    standing_of,
)
from tests.unit.test_counters import counters

BASE = datetime(2024, 1, 1, tzinfo=UTC)
HOLDER = "1.2.246.10.12345678.10"


def instances(count: int) -> list[NewInstance]:
    return [replace(synthetic_instance(n, BASE), organization_oid=HOLDER) for n in range(count)]


def note_of(rejected: list[NewInstance]) -> RejectionNote:
    return RejectionNote(
        PATIENT_SAFETY,
        tuple(
            RejectedReference(
                new.attributes.study.study_instance_uid,
                new.attributes.series.series_instance_uid,
                new.attributes.sop_class_uid,
                new.attributes.sop_instance_uid,
            )
            for new in rejected
        ),
    )


def add(engine: Engine, news: list[NewInstance]) -> list[int]:
    with UnitOfWork(engine) as uow:
        pks = [uow.instances.add(new) for new in news]
        uow.commit()
    assert all(pk is not None for pk in pks)
    return [pk for pk in pks if pk is not None]


def reject(engine: Engine, note: RejectionNote, organization: str = HOLDER) -> set[int]:
    with UnitOfWork(engine) as uow:
        added = uow.rejections.record(note, "2.25.99", organization, BASE)
        studies = uow.rejections.mark(added)
        uow.commit()
    return studies


def current_images(engine: Engine) -> set[str]:
    with UnitOfWork(engine, write=False) as uow:
        found = uow.query.find(QueryLevel.IMAGE, {}, ["SOPInstanceUID"])
        return {str(result.values["SOPInstanceUID"]) for result in found}


def test_rejecting_and_revoking_keeps_counters(engine: Engine) -> None:
    news = instances(100)  # one series of one study
    add(engine, news)
    assert counters(engine) == ([(1, 100, "CT")], [100])
    assert len(reject(engine, note_of(news[:10]))) == 1
    assert counters(engine) == ([(1, 90, "CT")], [90])
    assert len(current_images(engine)) == 90
    with UnitOfWork(engine, write=False) as uow:
        keys = RetrieveKeys(study_uids=(news[0].attributes.study.study_instance_uid,))
        assert len(uow.retrieval.instances(keys)) == 90
        assert uow.rejections.get(news[0].attributes.sop_instance_uid) is not None
    # the same note again rejects nothing more
    assert reject(engine, note_of(news[:10])) == set()
    assert counters(engine) == ([(1, 90, "CT")], [90])
    with UnitOfWork(engine) as uow:
        uids = uow.rejections.delete_note("2.25.99")
        uow.rejections.unmark(uids)
        uow.commit()
    assert counters(engine) == ([(1, 100, "CT")], [100])
    assert len(current_images(engine)) == 100


def test_a_study_with_every_instance_rejected_leaves_the_queries(engine: Engine) -> None:
    news = instances(100)
    add(engine, news)
    reject(engine, note_of(news))
    assert counters(engine) == ([(0, 0, "")], [0])
    with UnitOfWork(engine, write=False) as uow:
        for level in (QueryLevel.STUDY, QueryLevel.SERIES, QueryLevel.PATIENT):
            assert list(uow.query.find(level, {}, [])) == []


def test_a_note_first_rejects_on_arrival_only_its_own_organisations(engine: Engine) -> None:
    news = instances(3)
    reject(engine, note_of(news[:1]))  # nothing held yet: recorded only
    foreign = replace(news[1], organization_oid="1.2.246.10.87654321.10")
    reject(engine, note_of([foreign]), organization="1.2.246.10.87654321.10")
    pks = add(engine, news)
    with UnitOfWork(engine) as uow:

        def arrives(index: int) -> int | None:
            new = news[index]
            return uow.rejections.mark_on_arrival(
                pks[index], new.attributes.sop_instance_uid, new.organization_oid
            )

        assert arrives(0) is not None
        assert arrives(1) is None  # another organisation's note
        assert arrives(2) is None
        uow.commit()
    assert current_images(engine) == {
        news[1].attributes.sop_instance_uid,
        news[2].attributes.sop_instance_uid,
    }
    assert counters(engine) == ([(1, 2, "CT")], [2])


def test_retention_wins_over_a_113039_note() -> None:
    today = date(2026, 12, 6)
    free = StudyStanding(held=False, expires_on=None)  # no policy covers it
    expired = StudyStanding(held=False, expires_on=today)
    ahead = StudyStanding(held=False, expires_on=date(2031, 1, 1))
    held = StudyStanding(held=True, expires_on=None)
    assert standing_of([], today) is Standing.DUE  # nothing of it is here yet
    assert standing_of([free, expired], today) is Standing.DUE
    assert standing_of([expired, ahead], today) is Standing.AT_EXPIRY
    assert standing_of([ahead, held], today) is Standing.HELD
