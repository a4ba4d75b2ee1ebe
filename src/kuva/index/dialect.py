"""The few statements whose spelling differs between SQLite and PostgreSQL."""

from __future__ import annotations

from functools import cache
from typing import Any

from sqlalchemy import Connection, Table
from sqlalchemy.dialects import postgresql, sqlite


@cache
def _insert_ignoring_conflict(dialect: str, table: Table, conflict_columns: tuple[str, ...]) -> Any:
    module: Any = {"postgresql": postgresql, "sqlite": sqlite}.get(dialect)
    if module is None:  # pragma: no cover - make_engine refuses other databases
        raise ValueError(f"unsupported dialect {dialect}")
    return (
        module.insert(table)
        .on_conflict_do_nothing(index_elements=list(conflict_columns))
        .returning(*table.primary_key.columns)
    )


def insert_ignoring_conflict(
    conn: Connection, table: Table, values: dict[str, Any], conflict_columns: list[str]
) -> Any:
    """``INSERT ... ON CONFLICT (cols) DO NOTHING RETURNING <primary key>``; None on
    conflict.

    The statement is built once per table; values go as parameters, so the
    compiled form is reused (this runs for every received instance).
    """
    stmt = _insert_ignoring_conflict(conn.dialect.name, table, tuple(conflict_columns))
    return conn.execute(stmt, values).scalar_one_or_none()
