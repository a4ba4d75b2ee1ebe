"""The few statements whose spelling differs between SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Table
from sqlalchemy.dialects import postgresql, sqlite


def insert_ignoring_conflict(
    conn: Connection, table: Table, values: dict[str, Any], conflict_columns: list[str]
) -> Any:
    """``INSERT ... ON CONFLICT (cols) DO NOTHING RETURNING pk``; None on conflict."""
    dialect = conn.dialect.name
    stmt: Any
    if dialect == "postgresql":
        stmt = postgresql.insert(table)
    elif dialect == "sqlite":
        stmt = sqlite.insert(table)
    else:  # pragma: no cover - make_engine refuses other databases
        raise ValueError(f"unsupported dialect {dialect}")
    stmt = stmt.values(**values).on_conflict_do_nothing(index_elements=conflict_columns)
    return conn.execute(stmt.returning(table.c.pk)).scalar_one_or_none()
