"""pattern operator classes for the name and accession number indexes (PostgreSQL)

LIKE 'prefix%' can use a plain btree index only under the C collation; with
varchar_pattern_ops it can under any (PostgreSQL 15 treats C.UTF-8 as non-C).
Equality lookups keep using the index. Nothing changes on SQLite, where
case-sensitive LIKE uses the index as it is.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 12:20:00
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_INDEXES = (
    ("ix_patient_patient_name_norm", "patient", "patient_name_norm"),
    ("ix_study_accession_number", "study", "accession_number"),
)


def _recreate(ops: dict[str, str] | None) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, table, column in _INDEXES:
        op.drop_index(name, table_name=table)
        op.create_index(name, table, [column], postgresql_ops={column: ops[column]} if ops else {})


def upgrade() -> None:
    _recreate(
        {"patient_name_norm": "varchar_pattern_ops", "accession_number": "varchar_pattern_ops"}
    )


def downgrade() -> None:
    _recreate(None)
