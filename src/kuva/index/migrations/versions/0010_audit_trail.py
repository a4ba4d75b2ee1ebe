"""audit_record: the local, hash-chained audit trail of PS3.15 A.5 messages
(services.audit; index.schema ``audit_record``)

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-28 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "audit_record",
        sa.Column("seq", _PK, autoincrement=False, nullable=False),
        sa.Column("recorded_at", sa.DateTime(), nullable=False),
        sa.Column("event_id", sa.String(length=16), nullable=False),
        sa.Column("outcome", sa.Integer(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_record")),
    )
    op.create_index("ix_audit_record_recorded_at", "audit_record", ["recorded_at"])


def downgrade() -> None:
    op.drop_index("ix_audit_record_recorded_at", table_name="audit_record")
    op.drop_table("audit_record")
