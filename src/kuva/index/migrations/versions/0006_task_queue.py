"""outbox queues: tasks that must run one at a time, in order (index.schema ``task.queue``)

Tasks sharing a queue name run one after another in the order they were added
(the registrations of one study; the IANs of one study to one node).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 15:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("task") as batch:
        batch.add_column(sa.Column("queue", sa.String(length=200), nullable=True))
    op.create_index(op.f("ix_task_queue_pk"), "task", ["queue", "pk"])


def downgrade() -> None:
    op.drop_index(op.f("ix_task_queue_pk"), table_name="task")
    with op.batch_alter_table("task") as batch:
        batch.drop_column("queue")
