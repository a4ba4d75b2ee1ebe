"""Repository of the history of corrections (index.schema ``correction``): every
rejection, revocation, merge and update, appended and never changed."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, insert, or_, select

from kuva.index.schema import correction


@dataclass(frozen=True)
class Correction:
    kind: str
    subject: str
    detail: dict[str, Any]
    source: str
    applied_at: datetime


_SOURCE_LENGTH = 64  # the width of correction.source (index.schema)


class CorrectionLog:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def append(
        self, kind: str, subject: str, detail: dict[str, Any], source: str, at: datetime
    ) -> None:
        self.conn.execute(
            insert(correction).values(
                kind=kind,
                subject=subject,
                detail=json.dumps(detail, separators=(",", ":"), sort_keys=True),
                # Where it came from, as told (e.g. "HL7 ADT^A08 <MSH-3>"): cut to the
                # column, a long sending application is no reason to refuse it.
                source=source[:_SOURCE_LENGTH],
                applied_at=at,
            )
        )

    def of_subject(self, subject: str) -> list[Correction]:
        return self._select(correction.c.subject == subject)

    def naming(self, subjects: Collection[str]) -> list[Correction]:
        """Corrections of any of ``subjects`` or naming one in their detail (the
        target of a merge, the new identifier of an identifier change), oldest first.
        The detail is read by pattern: meant for an operator's look at one patient."""
        if not subjects:
            return []
        mentions = [
            correction.c.detail.contains(json.dumps(subject), autoescape=True)
            for subject in sorted(subjects)
        ]
        return self._select(or_(correction.c.subject.in_(sorted(subjects)), *mentions))

    def _select(self, where: ColumnElement[bool]) -> list[Correction]:
        rows = self.conn.execute(
            select(
                correction.c.kind,
                correction.c.subject,
                correction.c.detail,
                correction.c.source,
                correction.c.applied_at,
            )
            .where(where)
            .order_by(correction.c.pk)
        )
        return [
            Correction(row.kind, row.subject, json.loads(row.detail), row.source, row.applied_at)
            for row in rows
        ]
