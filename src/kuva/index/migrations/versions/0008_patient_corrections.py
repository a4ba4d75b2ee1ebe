"""patient corrections: merges as an overlay and HL7 message dedup (index.schema
``patient.merged_into_pk``, ``study.received_patient_pk``, ``hl7_message``)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27 17:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("patient") as batch:
        batch.add_column(sa.Column("merged_into_pk", _PK, nullable=True))
    with op.batch_alter_table("study") as batch:
        batch.add_column(sa.Column("received_patient_pk", _PK, nullable=True))
    # Kept nullable in the database (making it NOT NULL would rebuild the study table
    # on SQLite); every row gets a value here and from every insert.
    op.execute("UPDATE study SET received_patient_pk = patient_pk")
    op.create_index(op.f("ix_study_received_patient_pk"), "study", ["received_patient_pk"])
    op.create_index(op.f("ix_patient_merged_into_pk"), "patient", ["merged_into_pk"])
    op.create_table(
        "hl7_message",
        sa.Column("pk", _PK, nullable=False),
        sa.Column("sending_application", sa.String(length=180), nullable=False),
        sa.Column("sending_facility", sa.String(length=180), nullable=False),
        sa.Column("control_id", sa.String(length=199), nullable=False),
        sa.Column("message_type", sa.String(length=16), nullable=False),
        sa.Column("ack", sa.Text(), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_hl7_message")),
        sa.UniqueConstraint(
            "sending_application",
            "sending_facility",
            "control_id",
            name=op.f("uq_hl7_message_sending_application_sending_facility_control_id"),
        ),
    )


def downgrade() -> None:
    op.drop_table("hl7_message")
    op.drop_index(op.f("ix_patient_merged_into_pk"), table_name="patient")
    op.drop_index(op.f("ix_study_received_patient_pk"), table_name="study")
    with op.batch_alter_table("study") as batch:
        batch.drop_column("received_patient_pk")
    with op.batch_alter_table("patient") as batch:
        batch.drop_column("merged_into_pk")
