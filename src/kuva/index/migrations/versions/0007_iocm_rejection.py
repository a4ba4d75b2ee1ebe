"""IOCM rejections and the history of corrections (index.schema ``rejection``,
``correction``, ``instance.rejection_code`` and ``rejection_note_code``)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27 16:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("instance") as batch:
        batch.add_column(sa.Column("rejection_code", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("rejection_note_code", sa.String(length=16), nullable=True))
    op.create_table(
        "rejection",
        sa.Column("pk", _PK, nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("series_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_class_uid", sa.String(length=64), nullable=False),
        sa.Column("code", sa.String(length=16), nullable=False),
        sa.Column("note_sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("organization_oid", sa.String(length=64), nullable=False),
        sa.Column("rejected_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_rejection")),
        sa.UniqueConstraint("sop_instance_uid", name=op.f("uq_rejection_sop_instance_uid")),
    )
    op.create_index(
        op.f("ix_rejection_note_sop_instance_uid"), "rejection", ["note_sop_instance_uid"]
    )
    op.create_index(op.f("ix_rejection_study_instance_uid"), "rejection", ["study_instance_uid"])
    op.create_table(
        "correction",
        sa.Column("pk", _PK, nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("subject", sa.String(length=128), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("applied_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_correction")),
    )
    op.create_index(op.f("ix_correction_subject"), "correction", ["subject"])


def downgrade() -> None:
    op.drop_table("correction")
    op.drop_table("rejection")
    with op.batch_alter_table("instance") as batch:
        batch.drop_column("rejection_note_code")
        batch.drop_column("rejection_code")
