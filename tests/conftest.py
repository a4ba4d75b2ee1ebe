"""Shared fixtures: every index test runs on SQLite and, where reachable, PostgreSQL."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from kuva.index.database import make_engine, migrate
from tests.support.server import KuvaServer

POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _postgres_reachable() -> bool:
    try:
        import psycopg

        with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3):
            return True
    except Exception:
        return False


POSTGRES = _postgres_reachable()


DATABASES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@contextlib.contextmanager
def fresh_database(kind: str, folder: Path) -> Iterator[str]:
    """A fresh, empty index database: SQLite in ``folder``, or a new PostgreSQL
    database (dropped afterwards)."""
    if kind == "sqlite":
        yield f"sqlite:///{folder / 'index.sqlite'}"
        return
    if not POSTGRES:
        pytest.skip("PostgreSQL not reachable at 127.0.0.1:5432")
    import psycopg

    name = f"kuva_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty index database: SQLite in tmp_path, or a new PostgreSQL database."""
    with fresh_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """A migrated engine on a fresh index database."""
    engine = make_engine(database_url)
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def kuva_server(tmp_path: Path, database_url: str) -> Iterator[Callable[..., KuvaServer]]:
    """Factory: ``kuva_server(nodes=[...], extra={...})`` starts a real kuva process."""
    servers: list[KuvaServer] = []

    def start(**kwargs: Any) -> KuvaServer:
        workdir = tmp_path / f"kuva{len(servers)}"
        workdir.mkdir()
        server = KuvaServer(workdir=workdir, database_url=database_url, **kwargs)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        if server.process is not None:
            server.kill()
