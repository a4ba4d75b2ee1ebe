"""Repository of the local audit trail (index.schema ``audit_record``).

Appends are serialised so that the chain never forks: on PostgreSQL the append
locks the table (EXCLUSIVE: readers go on, other appends wait until this
transaction ends); on SQLite a writing unit of work holds the database's write
lock from its start (BEGIN IMMEDIATE, index.database). An append reads the last
record and writes the next, in the transaction of the change it describes, so it
is best the last write of that transaction: the lock is held until its commit.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, select, text

from kuva.index.database import WRITE_OPTION
from kuva.index.schema import audit_record
from kuva.model.audit import GENESIS_HASH, record_hash


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    recorded_at: datetime
    event_id: str
    outcome: int
    message: str
    prev_hash: str
    hash: str


_COLUMNS = (
    audit_record.c.seq,
    audit_record.c.recorded_at,
    audit_record.c.event_id,
    audit_record.c.outcome,
    audit_record.c.message,
    audit_record.c.prev_hash,
    audit_record.c.hash,
)


class AuditRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def append(
        self, *, recorded_at: datetime, event_id: str, outcome: int, message: str
    ) -> AuditRecord:
        """The next record of the chain, written in this transaction."""
        if self.conn.dialect.name == "postgresql":
            self.conn.execute(text("LOCK TABLE audit_record IN EXCLUSIVE MODE"))
        elif not self.conn.get_execution_options().get(WRITE_OPTION):
            raise RuntimeError("an audit record is appended in a writing unit of work")
        last = self.conn.execute(
            select(audit_record.c.seq, audit_record.c.hash)
            .order_by(audit_record.c.seq.desc())
            .limit(1)
        ).one_or_none()
        seq, prev_hash = (int(last.seq) + 1, str(last.hash)) if last else (1, GENESIS_HASH)
        record = AuditRecord(
            seq=seq,
            recorded_at=recorded_at,
            event_id=event_id,
            outcome=outcome,
            message=message,
            prev_hash=prev_hash,
            hash=record_hash(prev_hash, seq, recorded_at, event_id, outcome, message),
        )
        self.conn.execute(
            audit_record.insert().values(
                seq=record.seq,
                recorded_at=record.recorded_at,
                event_id=record.event_id,
                outcome=record.outcome,
                message=record.message,
                prev_hash=record.prev_hash,
                hash=record.hash,
            )
        )
        return record

    def get(self, seq: int) -> AuditRecord | None:
        row = self.conn.execute(select(*_COLUMNS).where(audit_record.c.seq == seq)).one_or_none()
        return AuditRecord(*row) if row is not None else None

    def walk(self, *, batch: int = 1000) -> Iterator[AuditRecord]:
        """Every record in ``seq`` order, read ``batch`` at a time."""
        after = -1
        while True:
            rows = self.conn.execute(
                select(*_COLUMNS)
                .where(audit_record.c.seq > after)
                .order_by(audit_record.c.seq)
                .limit(batch)
            ).all()
            for row in rows:
                yield AuditRecord(*row)
            if len(rows) < batch:
                return
            after = int(rows[-1].seq)

    def of_events_since(
        self, since: datetime, event_ids: Sequence[str], *, limit: int
    ) -> list[AuditRecord]:
        """The records of ``event_ids`` since ``since``, oldest first; at most
        ``limit``, the newest kept when there are more (by ``recorded_at``'s index)."""
        query = (
            select(*_COLUMNS)
            .where(audit_record.c.recorded_at >= since, audit_record.c.event_id.in_(event_ids))
            .order_by(audit_record.c.seq.desc())
            .limit(limit)
        )
        return [AuditRecord(*row) for row in reversed(list(self.conn.execute(query)))]

    def list(
        self,
        *,
        since: datetime | None = None,
        event_id: str | None = None,
        limit: int = 100,
        before: int | None = None,
    ) -> list[AuditRecord]:
        """The newest records first; ``before``: only records of a lower ``seq``."""
        query = select(*_COLUMNS)
        if before is not None:
            query = query.where(audit_record.c.seq < before)
        if since is not None:
            query = query.where(audit_record.c.recorded_at >= since)
        if event_id is not None:
            query = query.where(audit_record.c.event_id == event_id)
        query = query.order_by(audit_record.c.seq.desc()).limit(limit)
        return [AuditRecord(*row) for row in self.conn.execute(query)]
