"""Figures the operator console's overview shows (services.operations), each one read
by an indexed column (no scan of a whole table)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, func, select

from kuva.index.schema import instance


class OverviewRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def received_since(self, since: datetime) -> int:
        """Instances received at or after ``since`` (the received_at index)."""
        query = select(func.count()).select_from(instance).where(instance.c.received_at >= since)
        return int(self.conn.execute(query).scalar_one())
