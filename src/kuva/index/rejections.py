"""Repository of IOCM rejections (model.rejection).

A rejection is recorded per SOP Instance UID, whether the instance is held or not
yet received; an instance that is held is marked (``instance.rejection_code``) and
taken out of its series' and study's counters, in the same transaction. Revoking a
rejection note undoes both.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, bindparam, delete, select, update

from kuva.index.dialect import insert_ignoring_conflict
from kuva.index.instances import join_sop_classes
from kuva.index.schema import instance, rejection, series, study
from kuva.model.rejection import RejectionNote


@dataclass(frozen=True)
class Rejection:
    sop_instance_uid: str
    study_instance_uid: str
    code: str
    note_sop_instance_uid: str
    organization_oid: str


_REJECTION_COLUMNS = (
    rejection.c.sop_instance_uid,
    rejection.c.study_instance_uid,
    rejection.c.code,
    rejection.c.note_sop_instance_uid,
    rejection.c.organization_oid,
)


def _chunks(values: Sequence[str], size: int = 500) -> Iterable[Sequence[str]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


# The code of the rejection that names an instance, made by the instance's own
# organisation (a note of another organisation never rejects it).
_NAMED = select(rejection.c.code).where(
    rejection.c.sop_instance_uid == instance.c.sop_instance_uid,
    rejection.c.organization_oid == instance.c.organization_oid,
)

_NAMED_ON_ARRIVAL = select(rejection.c.code).where(
    rejection.c.sop_instance_uid == bindparam("uid"),
    rejection.c.organization_oid == bindparam("org"),
)


class RejectionRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def get(self, sop_instance_uid: str) -> Rejection | None:
        row = self.conn.execute(
            select(*_REJECTION_COLUMNS).where(rejection.c.sop_instance_uid == sop_instance_uid)
        ).one_or_none()
        return Rejection(*row) if row is not None else None

    def of_note(self, note_sop_instance_uid: str) -> list[Rejection]:
        rows = self.conn.execute(
            select(*_REJECTION_COLUMNS)
            .where(rejection.c.note_sop_instance_uid == note_sop_instance_uid)
            .order_by(rejection.c.pk)
        )
        return [Rejection(*row) for row in rows]

    def record(
        self, note: RejectionNote, note_uid: str, organization_oid: str, at: datetime
    ) -> list[str]:
        """Record the note's rejections; SOP Instance UIDs newly rejected (an instance
        an earlier note already rejected keeps that rejection)."""
        added = []
        for ref in note.references:
            pk = insert_ignoring_conflict(
                self.conn,
                rejection,
                {
                    "sop_instance_uid": ref.sop_instance_uid,
                    "series_instance_uid": ref.series_instance_uid,
                    "study_instance_uid": ref.study_instance_uid,
                    "sop_class_uid": ref.sop_class_uid,
                    "code": note.code,
                    "note_sop_instance_uid": note_uid,
                    "organization_oid": organization_oid,
                    "rejected_at": at,
                },
                ["sop_instance_uid"],
            )
            if pk is not None:
                added.append(ref.sop_instance_uid)
        return added

    def mark_on_arrival(
        self, instance_pk: int, sop_instance_uid: str, organization_oid: str
    ) -> int | None:
        """Mark a just-indexed instance when a rejection of its own organisation names
        it (the note came first). Every instance pays one indexed, pre-built SELECT;
        the UPDATEs run only when there is such a rejection. Returns the key of its
        study when it was rejected."""
        code = self.conn.execute(
            _NAMED_ON_ARRIVAL, {"uid": sop_instance_uid, "org": organization_oid}
        ).scalar()
        if code is None:
            return None
        marked = self.conn.execute(
            update(instance)
            .where(instance.c.pk == instance_pk)
            .values(rejection_code=code)
            .returning(instance.c.series_pk)
        ).scalar()
        if marked is None:
            return None
        self.conn.execute(
            update(series)
            .where(series.c.pk == marked)
            .values(number_of_instances=series.c.number_of_instances - 1)
        )
        study_pk = int(
            self.conn.execute(select(series.c.study_pk).where(series.c.pk == marked)).scalar_one()
        )
        recount_study(self.conn, study_pk)
        return study_pk

    def holders(self, study_uids: Iterable[str]) -> dict[str, str]:
        """The register holder of each held study among ``study_uids``."""
        rows = self.conn.execute(
            select(study.c.study_instance_uid, study.c.organization_oid).where(
                study.c.study_instance_uid.in_(sorted(set(study_uids)))
            )
        )
        return {uid: org for uid, org in rows}

    def mark(self, sop_instance_uids: Sequence[str]) -> set[int]:
        """Mark the held, unmarked instances among ``sop_instance_uids`` with their
        rejection's code; returns the keys of the studies whose counters changed."""
        return self._set(sop_instance_uids, rejected=True)

    def unmark(self, sop_instance_uids: Sequence[str]) -> set[int]:
        """Undo ``mark``; returns the keys of the studies whose counters changed."""
        return self._set(sop_instance_uids, rejected=False)

    def _set(self, sop_instance_uids: Sequence[str], *, rejected: bool) -> set[int]:
        studies: set[int] = set()
        for chunk in _chunks(list(dict.fromkeys(sop_instance_uids))):
            condition = (
                and_(instance.c.rejection_code.is_(None), _NAMED.exists())
                if rejected
                else instance.c.rejection_code.is_not(None)
            )
            rows = self.conn.execute(
                select(instance.c.pk, instance.c.series_pk, series.c.study_pk)
                .select_from(instance.join(series, instance.c.series_pk == series.c.pk))
                .where(instance.c.sop_instance_uid.in_(chunk), condition)
            ).all()
            if not rows:
                continue
            code: Any = _NAMED.scalar_subquery() if rejected else None
            self.conn.execute(
                update(instance)
                .where(instance.c.pk.in_([row.pk for row in rows]))
                .values(rejection_code=code)
            )
            per_series: dict[int, int] = {}
            for row in rows:
                per_series[row.series_pk] = per_series.get(row.series_pk, 0) + 1
                studies.add(row.study_pk)
            sign = -1 if rejected else 1
            for series_pk, n in per_series.items():
                self.conn.execute(
                    update(series)
                    .where(series.c.pk == series_pk)
                    .values(number_of_instances=series.c.number_of_instances + sign * n)
                )
        for study_pk in studies:
            recount_study(self.conn, study_pk)
        return studies

    def delete_note(self, note_sop_instance_uid: str) -> list[str]:
        """Remove the note's rejections; the SOP Instance UIDs they covered."""
        uids = [r.sop_instance_uid for r in self.of_note(note_sop_instance_uid)]
        self.conn.execute(
            delete(rejection).where(rejection.c.note_sop_instance_uid == note_sop_instance_uid)
        )
        return uids

    def study_uids(self, study_pks: Iterable[int]) -> list[str]:
        pks = list(study_pks)
        if not pks:
            return []
        return list(
            self.conn.execute(
                select(study.c.study_instance_uid).where(study.c.pk.in_(pks))
            ).scalars()
        )


def recount_study(conn: Connection, study_pk: int) -> None:
    """A study's counters from its series (a study has few series): after some of its
    instances were rejected, restored or deleted (PS3.4 C.3.4 computed attributes)."""
    rows = conn.execute(
        select(series.c.modality, series.c.number_of_instances).where(series.c.study_pk == study_pk)
    ).all()
    live = [row for row in rows if row.number_of_instances > 0]
    classes = conn.execute(
        select(instance.c.sop_class_uid)
        .distinct()
        .select_from(instance.join(series, instance.c.series_pk == series.c.pk))
        .where(series.c.study_pk == study_pk, instance.c.rejection_code.is_(None))
    ).scalars()
    conn.execute(
        update(study)
        .where(study.c.pk == study_pk)
        .values(
            number_of_series=len(live),
            number_of_instances=sum(row.number_of_instances for row in live),
            modalities_in_study="\\".join(sorted({r.modality for r in live if r.modality}))[:64],
            sop_classes_in_study=join_sop_classes(classes),
        )
    )
