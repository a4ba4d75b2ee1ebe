"""Disclosures reported by customers: ``disclosure_notice`` (one row per disclosure
notice or ATNA Export message recorded, with the client's idempotency key) and the
``disclosure`` columns that tell kuva's own disclosures from reported ones
(``source``, ``channel``, ``recipient_person``, ``notice_pk``)

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-27 21:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "disclosure_notice",
        sa.Column("pk", _PK, nullable=False),
        sa.Column("reporter", sa.String(length=64), nullable=False),
        sa.Column("notice_id", sa.String(length=80), nullable=True),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("record_count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_disclosure_notice")),
        sa.UniqueConstraint(
            "reporter", "notice_id", name=op.f("uq_disclosure_notice_reporter_notice_id")
        ),
    )
    with op.batch_alter_table("disclosure") as batch:
        batch.add_column(
            sa.Column("source", sa.String(length=16), server_default="archive", nullable=False)
        )
        batch.add_column(sa.Column("channel", sa.String(length=128), nullable=True))
        batch.add_column(sa.Column("recipient_person", sa.String(length=128), nullable=True))
        batch.add_column(sa.Column("notice_pk", _PK, nullable=True))
        batch.create_foreign_key(
            op.f("fk_disclosure_notice_pk_disclosure_notice"),
            "disclosure_notice",
            ["notice_pk"],
            ["pk"],
        )
        batch.create_index(op.f("ix_disclosure_notice_pk"), ["notice_pk"])


def downgrade() -> None:
    with op.batch_alter_table("disclosure") as batch:
        batch.drop_index(op.f("ix_disclosure_notice_pk"))
        batch.drop_constraint(op.f("fk_disclosure_notice_pk_disclosure_notice"), type_="foreignkey")
        batch.drop_column("notice_pk")
        batch.drop_column("recipient_person")
        batch.drop_column("channel")
        batch.drop_column("source")
    op.drop_table("disclosure_notice")
