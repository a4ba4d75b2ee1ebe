"""Retention and destruction: the stored expiry of each study (indexed), the
patient's death date, legal holds and destruction records (services.retention)

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-27 21:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("patient") as batch:
        batch.add_column(
            sa.Column("death_date", sa.String(length=8), server_default="", nullable=False)
        )
    with op.batch_alter_table("study") as batch:
        batch.add_column(sa.Column("expires_on", sa.Date(), nullable=True))
        batch.add_column(sa.Column("retention_policy", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("destroying_at", sa.DateTime(), nullable=True))
    op.create_index(op.f("ix_study_expires_on"), "study", ["expires_on"])
    op.create_table(
        "legal_hold",
        sa.Column("pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=True),
        sa.Column(
            "patient_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("held_by", sa.String(length=64), nullable=False),
        sa.Column("held_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["patient_pk"], ["patient.pk"], name=op.f("fk_legal_hold_patient_pk_patient")
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_legal_hold")),
    )
    op.create_index(op.f("ix_legal_hold_study_instance_uid"), "legal_hold", ["study_instance_uid"])
    op.create_index(op.f("ix_legal_hold_patient_pk"), "legal_hold", ["patient_pk"])
    op.create_table(
        "destruction",
        sa.Column("pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("organization_oid", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("patient_issuer", sa.String(length=64), server_default="", nullable=False),
        sa.Column("policy", sa.String(length=64), nullable=False),
        sa.Column("expires_on", sa.Date(), nullable=True),
        sa.Column("rejection_note_uid", sa.String(length=64), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("destroyed_by", sa.String(length=64), nullable=False),
        sa.Column("decided_at", sa.DateTime(), nullable=False),
        sa.Column("destroyed_at", sa.DateTime(), nullable=True),
        sa.Column("instances", sa.Integer(), server_default="0", nullable=False),
        sa.Column("sha256_digest", sa.String(length=64), server_default="", nullable=False),
        sa.Column("sha256_list", sa.Text(), server_default="", nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_destruction")),
    )
    op.create_index(
        op.f("ix_destruction_study_instance_uid"), "destruction", ["study_instance_uid"]
    )
    op.create_index(
        op.f("ix_destruction_rejection_note_uid"), "destruction", ["rejection_note_uid"]
    )
    op.create_index(op.f("ix_destruction_destroyed_at"), "destruction", ["destroyed_at"])


def downgrade() -> None:
    op.drop_table("destruction")
    op.drop_table("legal_hold")
    op.drop_index(op.f("ix_study_expires_on"), "study")
    with op.batch_alter_table("study") as batch:
        batch.drop_column("destroying_at")
        batch.drop_column("retention_policy")
        batch.drop_column("expires_on")
    with op.batch_alter_table("patient") as batch:
        batch.drop_column("death_date")
