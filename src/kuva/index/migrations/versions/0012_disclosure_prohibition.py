"""Disclosure prohibitions of patients (access control by register holder).

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "disclosure_prohibition",
        sa.Column("pk", _PK, nullable=False),
        sa.Column("patient_pk", _PK, nullable=False),
        sa.Column("set_at", sa.DateTime(), nullable=False),
        sa.Column("set_by", sa.String(length=256), server_default="", nullable=False),
        sa.Column("reason", sa.Text(), server_default="", nullable=False),
        sa.ForeignKeyConstraint(
            ["patient_pk"],
            ["patient.pk"],
            name=op.f("fk_disclosure_prohibition_patient_pk_patient"),
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_disclosure_prohibition")),
        sa.UniqueConstraint("patient_pk", name=op.f("uq_disclosure_prohibition_patient_pk")),
    )


def downgrade() -> None:
    op.drop_table("disclosure_prohibition")
