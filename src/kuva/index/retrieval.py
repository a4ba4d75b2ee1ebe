"""Repository for retrieves: the stored instances a C-GET / C-MOVE (or WADO) asks for.

A retrieve names what it wants by unique keys only (PS3.4 C.4.2.2.1 for C-MOVE,
C.4.3.2.1 for C-GET): Patient ID, Study, Series and SOP Instance UIDs, each level
possibly a list of UIDs. Every key is an indexed column, so resolving a retrieve
never opens a blob.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Select, select

from kuva.index.access import visible_studies
from kuva.index.instances import _STORED_COLUMNS, STORED_TREE, StoredInstance, stored_instance
from kuva.index.schema import instance, patient, series, study
from kuva.model.access import AccessScope

# Longest UID list sent in one statement; longer lists are looked up in chunks
# (SQLite and PostgreSQL both cap the number of bound parameters).
_CHUNK = 1000


@dataclass(frozen=True)
class RetrieveKeys:
    """What a retrieve matches on; an empty key does not constrain.

    ``issuer`` narrows ``patient_id`` to one assigning authority (Issuer of Patient
    ID); without it a Patient ID matches under every issuer.
    """

    patient_id: str = ""
    issuer: str | None = None
    study_uids: tuple[str, ...] = ()
    series_uids: tuple[str, ...] = ()
    sop_instance_uids: tuple[str, ...] = ()


def _sort_key(row: Any) -> tuple[Any, ...]:
    """Study (date, time, UID), series (number, UID), instance (number, UID).

    Sorted here rather than in SQL so that the order is the same on every
    database (collations differ); instances without a number come last.
    """
    return (
        row.study_date,
        row.study_time,
        row.study_instance_uid,
        row.series_number is None,
        row.series_number or 0,
        row.series_instance_uid,
        row.instance_number is None,
        row.instance_number or 0,
        row.sop_instance_uid,
    )


class RetrievalRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def instances(
        self, keys: RetrieveKeys, limit: int | None = None, scope: AccessScope | None = None
    ) -> list[StoredInstance]:
        """The stored instances matching every given key, in study/series/instance order.

        With ``limit``, at most ``limit + 1`` instances are returned: enough for
        the caller to tell that there are more than it accepts.
        """
        lists = {
            "study": keys.study_uids,
            "series": keys.series_uids,
            "sop": keys.sop_instance_uids,
        }
        longest = max(lists, key=lambda name: len(lists[name]))
        values = lists[longest]
        chunks: list[tuple[str, ...]] = (
            [values[i : i + _CHUNK] for i in range(0, len(values), _CHUNK)]
            if len(values) > _CHUNK
            else [values]
        )
        rows: list[Any] = []
        visible = None if scope is None else visible_studies(scope)
        for chunk in chunks:
            statement = self._statement(keys, {**lists, longest: chunk})
            if visible is not None:  # what the requester may not read does not match
                statement = statement.where(visible)
            if limit is not None:
                statement = statement.limit(limit + 1 - len(rows))
            rows.extend(self.conn.execute(statement))
            if limit is not None and len(rows) > limit:
                break
        rows.sort(key=_sort_key)
        return [stored_instance(row) for row in rows]

    @staticmethod
    def _statement(keys: RetrieveKeys, lists: dict[str, Sequence[str]]) -> Select[Any]:
        statement = select(
            *_STORED_COLUMNS,
            study.c.study_date,
            study.c.study_time,
            series.c.series_number,
            instance.c.instance_number,
        ).select_from(STORED_TREE)
        # Rejected instances (IOCM) are never handed out.
        statement = statement.where(instance.c.rejection_code.is_(None))
        if keys.patient_id:
            statement = statement.where(patient.c.patient_id == keys.patient_id)
            if keys.issuer is not None:
                statement = statement.where(patient.c.issuer == keys.issuer)
        for column, uids in (
            (study.c.study_instance_uid, lists["study"]),
            (series.c.series_instance_uid, lists["series"]),
            (instance.c.sop_instance_uid, lists["sop"]),
        ):
            if len(uids) == 1:
                statement = statement.where(column == uids[0])
            elif uids:
                statement = statement.where(column.in_(list(uids)))
        return statement
