"""outbox: the node a delivery task sends to (``kuva tasks retry --node``) and a
retry deadline instead of an attempt count (IANs ride out a node's outage)

Undelivered IAN and storage commitment report tasks get their destination from
their payload; their retry policy stays the attempt count they were added with.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06 05:00:00
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

# Task kind -> the payload key naming the node it delivers to.
_DESTINATION_KEYS = {"instance-availability": "node", "storage-commitment": "requester_ae"}


def upgrade() -> None:
    with op.batch_alter_table("task") as batch:
        batch.add_column(sa.Column("retry_until", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("destination", sa.String(length=64), nullable=True))
    op.create_index(op.f("ix_task_destination_status"), "task", ["destination", "status"])
    task = sa.table(
        "task",
        sa.column("pk", sa.Integer),
        sa.column("kind", sa.String),
        sa.column("status", sa.String),
        sa.column("payload", sa.Text),
        sa.column("destination", sa.String),
    )
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(task.c.pk, task.c.kind, task.c.payload).where(
            task.c.kind.in_(list(_DESTINATION_KEYS)), task.c.status != "done"
        )
    ).all()
    for pk, kind, payload in rows:
        destination = json.loads(payload).get(_DESTINATION_KEYS[kind])
        if destination:
            conn.execute(
                sa.update(task).where(task.c.pk == pk).values(destination=str(destination))
            )


def downgrade() -> None:
    # Before this revision a queue waited on every task not done.
    op.execute("UPDATE task SET status = 'done' WHERE status = 'superseded'")
    op.drop_index(op.f("ix_task_destination_status"), table_name="task")
    with op.batch_alter_table("task") as batch:
        batch.drop_column("destination")
        batch.drop_column("retry_until")
