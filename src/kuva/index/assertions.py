"""XUA assertions seen (``xua_assertion``), for refusing replays (services.assertions)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, delete, insert, select

from kuva.index.schema import xua_assertion


class AssertionRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def seen(self, digest: str) -> bool:
        return (
            self.conn.execute(
                select(xua_assertion.c.digest).where(xua_assertion.c.digest == digest)
            ).first()
            is not None
        )

    def add(self, digest: str, expires_at: datetime) -> None:
        """Remember ``digest`` until ``expires_at``; an IntegrityError when it is
        remembered already (another node took it first)."""
        self.conn.execute(insert(xua_assertion).values(digest=digest, expires_at=expires_at))

    def forget_expired(self, now: datetime) -> int:
        """Drop what expired before ``now`` (on its index); the number dropped."""
        result = self.conn.execute(delete(xua_assertion).where(xua_assertion.c.expires_at < now))
        return result.rowcount or 0
