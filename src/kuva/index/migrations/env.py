"""Alembic environment: runs on the connection kuva hands over (index.database)."""

from __future__ import annotations

from alembic import context

from kuva.index.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("kuva migrations run through kuva.index.database.migrate()")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
