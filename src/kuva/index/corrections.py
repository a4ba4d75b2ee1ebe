"""Repository of the history of corrections (index.schema ``correction``): every
rejection, revocation, merge and update, appended and never changed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select

from kuva.index.schema import correction


@dataclass(frozen=True)
class Correction:
    kind: str
    subject: str
    detail: dict[str, Any]
    source: str
    applied_at: datetime


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
                source=source,
                applied_at=at,
            )
        )

    def of_subject(self, subject: str) -> list[Correction]:
        rows = self.conn.execute(
            select(
                correction.c.kind,
                correction.c.subject,
                correction.c.detail,
                correction.c.source,
                correction.c.applied_at,
            )
            .where(correction.c.subject == subject)
            .order_by(correction.c.pk)
        )
        return [
            Correction(row.kind, row.subject, json.loads(row.detail), row.source, row.applied_at)
            for row in rows
        ]
