"""Figures the operator console's overview shows (services.operations), each one read
by an indexed column (no scan of a whole table)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, func, select, update

from kuva.index.dialect import insert_ignoring_conflict
from kuva.index.schema import (
    archive_figure,
    disclosure,
    instance,
    legal_hold,
    rejection,
    study,
)


@dataclass(frozen=True)
class StudyFacts:
    """What the archive knows of a study beyond its DICOM attributes."""

    register_holder: str
    expires_on: date | None
    policy: str | None
    holds: list[tuple[str, str, datetime]]  # reason, by, since
    rejections: list[tuple[str, str, datetime]]  # code, note SOP Instance UID, when
    disclosures: list[tuple[datetime, str, str, str]]  # when, to, interface, basis


class OverviewRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def received_since(self, since: datetime) -> int:
        """Instances received at or after ``since`` (the received_at index)."""
        query = select(func.count()).select_from(instance).where(instance.c.received_at >= since)
        return int(self.conn.execute(query).scalar_one())

    def last_instance_pk(self) -> int:
        """The highest instance key (the primary key index's last entry)."""
        return int(self.conn.execute(select(func.max(instance.c.pk))).scalar_one() or 0)

    def study_facts(self, study_uid: str, *, limit: int = 100) -> StudyFacts | None:
        """The study's holder, expiry, holds, rejections and disclosures (each by an
        index on the study's UID; at most ``limit`` of each)."""
        row = self.conn.execute(
            select(study.c.organization_oid, study.c.expires_on, study.c.retention_policy).where(
                study.c.study_instance_uid == study_uid
            )
        ).first()
        if row is None:
            return None
        holds = self.conn.execute(
            select(legal_hold.c.reason, legal_hold.c.held_by, legal_hold.c.held_at)
            .where(legal_hold.c.study_instance_uid == study_uid)
            .limit(limit)
        )
        rejected = self.conn.execute(
            select(rejection.c.code, rejection.c.note_sop_instance_uid, rejection.c.rejected_at)
            .where(rejection.c.study_instance_uid == study_uid)
            .order_by(rejection.c.rejected_at)
            .limit(limit)
        )
        disclosed = self.conn.execute(
            select(
                disclosure.c.disclosed_at,
                disclosure.c.recipient_organization,
                disclosure.c.interface,
                disclosure.c.basis,
            )
            .where(disclosure.c.study_instance_uid == study_uid)
            .order_by(disclosure.c.disclosed_at.desc())
            .limit(limit)
        )
        return StudyFacts(
            row.organization_oid,
            row.expires_on,
            row.retention_policy,
            [tuple(r) for r in holds],
            [tuple(r) for r in rejected],
            [tuple(r) for r in disclosed],
        )

    def storage_used(self) -> tuple[int, int]:
        """Instances and their bytes: a read of the whole instance table (the
        background figures job only, never a request)."""
        count, size = self.conn.execute(
            select(func.count(), func.coalesce(func.sum(instance.c.size), 0))
        ).one()
        return int(count), int(size)

    def put_figure(self, name: str, value: dict[str, Any], at: datetime) -> None:
        text = json.dumps(value, sort_keys=True)
        inserted = insert_ignoring_conflict(
            self.conn, archive_figure, {"name": name, "value": text, "computed_at": at}, ["name"]
        )
        if inserted is None:
            self.conn.execute(
                update(archive_figure)
                .where(archive_figure.c.name == name)
                .values(value=text, computed_at=at)
            )

    def figures(self) -> dict[str, tuple[dict[str, Any], datetime]]:
        rows = self.conn.execute(select(archive_figure))
        return {row.name: (json.loads(row.value), row.computed_at) for row in rows}
