"""study and series counters: instances, series, modalities kept with each insert

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 10:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "study", sa.Column("number_of_series", sa.Integer(), server_default="0", nullable=False)
    )
    op.add_column(
        "study",
        sa.Column("number_of_instances", sa.Integer(), server_default="0", nullable=False),
    )
    op.add_column(
        "study",
        sa.Column("modalities_in_study", sa.String(length=64), server_default="", nullable=False),
    )
    op.add_column(
        "series",
        sa.Column("number_of_instances", sa.Integer(), server_default="0", nullable=False),
    )
    # Backfill from the rows already indexed.
    op.execute(
        "UPDATE series SET number_of_instances = "
        "(SELECT count(*) FROM instance WHERE instance.series_pk = series.pk)"
    )
    op.execute(
        "UPDATE study SET "
        "number_of_series = (SELECT count(*) FROM series WHERE series.study_pk = study.pk), "
        "number_of_instances = (SELECT coalesce(sum(series.number_of_instances), 0) "
        "FROM series WHERE series.study_pk = study.pk)"
    )
    if op.get_bind().dialect.name == "sqlite":
        modalities = "replace(group_concat(DISTINCT modality), ',', '\\')"
    else:
        modalities = "string_agg(DISTINCT modality, '\\')"
    op.execute(
        f"UPDATE study SET modalities_in_study = coalesce((SELECT {modalities} FROM series "
        "WHERE series.study_pk = study.pk AND modality <> ''), '')"
    )


def downgrade() -> None:
    with op.batch_alter_table("series") as batch:
        batch.drop_column("number_of_instances")
    with op.batch_alter_table("study") as batch:
        batch.drop_column("modalities_in_study")
        batch.drop_column("number_of_instances")
        batch.drop_column("number_of_series")
