"""Integrity checks: indexes on the blob keys of ``instance`` and ``xds_document``
(which rows reference a blob), and ``integrity_scrub``, the position of the
continuous check (services.integrity)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(op.f("ix_instance_blob_key"), "instance", ["blob_key"])
    op.create_index(op.f("ix_xds_document_blob_key"), "xds_document", ["blob_key"])
    scrub = op.create_table(
        "integrity_scrub",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("phase", sa.String(length=16), nullable=False),
        sa.Column("after_pk", sa.BigInteger(), nullable=False),
        sa.Column("pass_started_at", sa.DateTime(), nullable=True),
        sa.Column("last_pass_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_integrity_scrub")),
    )
    op.bulk_insert(scrub, [{"pk": 1, "phase": "instance", "after_pk": 0}])


def downgrade() -> None:
    op.drop_table("integrity_scrub")
    op.drop_index(op.f("ix_xds_document_blob_key"), "xds_document")
    op.drop_index(op.f("ix_instance_blob_key"), "instance")
