"""HL7 corrections act for the organisation that sent them: ``patient.organization_oid``
("" = the record as received, shared; else the organisation whose corrections the
record carries), part of the patient's unique key

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
    with op.batch_alter_table("patient") as batch:
        batch.add_column(
            sa.Column("organization_oid", sa.String(length=64), server_default="", nullable=False)
        )
        batch.drop_constraint("uq_patient_patient_id_issuer", type_="unique")
        batch.create_unique_constraint(
            "uq_patient_patient_id_issuer_organization_oid",
            ["patient_id", "issuer", "organization_oid"],
        )


def downgrade() -> None:
    # Only without organisations' own records: the shared key must be unique again.
    with op.batch_alter_table("patient") as batch:
        batch.drop_constraint("uq_patient_patient_id_issuer_organization_oid", type_="unique")
        batch.create_unique_constraint("uq_patient_patient_id_issuer", ["patient_id", "issuer"])
        batch.drop_column("organization_oid")
