"""Engine creation and migrations: one code path for SQLite and PostgreSQL.

SQLite runs in WAL mode with ``synchronous=FULL``: a commit returns only after the
WAL is fsynced, so nothing is acknowledged before it is durable (docs/design.md
principle 2). PostgreSQL is used through psycopg 3 with its own durable commits.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
# Execution option marking a connection that will write (see _sqlite_engine).
WRITE_OPTION = "kuva_write"


def make_engine(url: str, *, pool_size: int = 8) -> Engine:
    """Create the engine for ``url`` with kuva's connection settings."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, parsed.database or "", pool_size)
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        return create_engine(
            parsed, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True
        )
    raise ValueError(
        f"unsupported database: {parsed.get_backend_name()} (use sqlite or postgresql)"
    )


def _sqlite_engine(url: str, database: str, pool_size: int) -> Engine:
    kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": 30}}
    if database:
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    if database in ("", ":memory:"):
        kwargs["poolclass"] = NullPool
    else:
        kwargs["pool_size"] = pool_size
        kwargs["max_overflow"] = pool_size
    engine = create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        # LIKE is case-sensitive, as on PostgreSQL; person names match on an
        # upper-cased column instead (index/query.py).
        cursor.execute("PRAGMA case_sensitive_like=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        # A writing unit of work begins IMMEDIATE: it takes the write lock at the
        # start, so two writers never deadlock on a read-to-write lock upgrade.
        # Readers begin DEFERRED and are never blocked (WAL).
        if conn.get_execution_options().get(WRITE_OPTION):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")

    return engine


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


# The PostgreSQL advisory lock that one migration at a time holds (any number of
# nodes may start on a new database at once; one creates the schema).
_MIGRATION_LOCK = 0x6B757661  # "kuva"


class SchemaMismatch(RuntimeError):
    """The index's schema is not the one this kuva was built for (many nodes:
    ``kuva db upgrade`` migrates, a node never does it on its own)."""


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the index schema up to ``revision`` (Alembic); on PostgreSQL under an
    advisory lock, so nodes starting at once migrate one after another."""
    config = _alembic_config()
    with engine.begin() as connection:
        _lock_migrations(connection)
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
    log.debug("index schema at %s", revision)


def prepare_schema(engine: Engine) -> None:
    """The schema ``kuva serve`` and the CLI work on.

    SQLite (the embedded index of one node): migrated to this kuva's schema, as
    ever. PostgreSQL (possibly many nodes): a new, empty database gets the schema
    from the first node (under the migration lock); otherwise the schema must be
    exactly this kuva's: an older one is upgraded with ``kuva db upgrade`` (once,
    from one node, during a rolling upgrade: docs/deployment.md), a newer one means
    this node runs an older kuva than the others. Either raises SchemaMismatch
    saying what to do.
    """
    if engine.dialect.name == "sqlite":
        migrate(engine)
        return
    config = _alembic_config()
    with engine.begin() as connection:
        _lock_migrations(connection)
        current = MigrationContext.configure(connection).get_current_revision()
        if current is None:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
            log.info("index schema created (%s)", _head())
            return
    head = _head()
    if current == head:
        return
    known = {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}
    if current in known:
        raise SchemaMismatch(
            f"the index schema is at {current}, this kuva needs {head}: run "
            f"'kuva db upgrade' once (from one node), then start the nodes"
        )
    raise SchemaMismatch(
        f"the index schema is at {current}, newer than this kuva knows ({head}): "
        f"run the kuva version the other nodes run"
    )


def _head() -> str:
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def _lock_migrations(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})


def downgrade(engine: Engine, revision: str) -> None:
    config = _alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


def ping(engine: Engine) -> None:
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))
