"""patient.corrected_at: when the patient's identity or demographics were last
corrected (HL7 A08/A31/A47); outgoing objects of a corrected patient carry the
current values (services.retrieve)

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27 18:15:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("patient") as batch:
        batch.add_column(sa.Column("corrected_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("patient") as batch:
        batch.drop_column("corrected_at")
