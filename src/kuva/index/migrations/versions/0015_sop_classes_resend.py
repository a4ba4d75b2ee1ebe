"""SOP Classes in Study kept on the study row (backfilled from its current
instances), and an operator's allowance to archive a destroyed study again on its
destruction records

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06 05:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("study") as batch:
        batch.add_column(
            sa.Column("sop_classes_in_study", sa.Text(), server_default="", nullable=False)
        )
    with op.batch_alter_table("destruction") as batch:
        batch.add_column(sa.Column("resend_allowed_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("resend_allowed_by", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("resend_reason", sa.Text(), nullable=True))
    # Backfill from the instances held, rejected ones left out (as the counters do).
    if op.get_bind().dialect.name == "sqlite":
        classes = "replace(group_concat(DISTINCT instance.sop_class_uid), ',', '\\')"
    else:
        classes = "string_agg(DISTINCT instance.sop_class_uid, '\\')"
    op.execute(
        f"UPDATE study SET sop_classes_in_study = coalesce((SELECT {classes} FROM instance "
        "JOIN series ON instance.series_pk = series.pk WHERE series.study_pk = study.pk "
        "AND instance.rejection_code IS NULL), '')"
    )


def downgrade() -> None:
    with op.batch_alter_table("destruction") as batch:
        batch.drop_column("resend_reason")
        batch.drop_column("resend_allowed_by")
        batch.drop_column("resend_allowed_at")
    with op.batch_alter_table("study") as batch:
        batch.drop_column("sop_classes_in_study")
