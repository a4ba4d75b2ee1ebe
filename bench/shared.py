"""Helpers every benchmark shares: the database it runs on, aligned tables, the command line.

Imported by the scripts in this folder as ``bench.shared`` (each puts the
repository root on ``sys.path`` first).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Engine, create_engine, func, select, text
from sqlalchemy.engine import make_url


def database_size_mb(engine: Engine, sqlite_file: Path | None) -> float:
    if sqlite_file is not None:
        files = [sqlite_file, Path(f"{sqlite_file}-wal")]
        return sum(f.stat().st_size for f in files if f.exists()) / 1e6
    with engine.connect() as conn:
        database = conn.execute(select(func.current_database())).scalar_one()
        return int(conn.execute(select(func.pg_database_size(database))).scalar_one()) / 1e6


def database_version(engine: Engine) -> str:
    if engine.dialect.name == "sqlite":
        return f"SQLite {sqlite3.sqlite_version}"
    with engine.connect() as conn:
        return " ".join(str(conn.execute(select(func.version())).scalar_one()).split()[:2])


@contextlib.contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """A fresh database for the run (dropped afterwards); yields its URL."""
    name = f"kuva_bench_{secrets.token_hex(4)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def print_rows(header: list[str], rows: list[list[str]]) -> None:
    """Aligned columns; a row shorter than the header runs its last cell on."""
    widths = [len(title) for title in header]
    for row in rows:
        if len(row) == len(header):
            widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
        else:
            widths = [max(w, len(c)) for w, c in zip(widths, row[:-1], strict=False)] + widths[
                len(row) - 1 :
            ]
    print("  ".join(title.ljust(w) for title, w in zip(header, widths, strict=True)).rstrip())
    for row in rows:
        cells = [cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip())


def command_line() -> str:
    python = sys.executable
    with contextlib.suppress(ValueError):
        relative = os.path.relpath(python)
        if not relative.startswith(".."):
            python = relative
    return shlex.join([python, *sys.argv])
