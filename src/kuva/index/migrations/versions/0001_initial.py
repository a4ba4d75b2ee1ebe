"""initial index: study tree, storage commitment, outbox

Revision ID: 0001
Revises: -
Create Date: 2026-11-27 08:51:33.963883
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "patient",
        sa.Column("pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("issuer", sa.String(length=64), server_default="", nullable=False),
        sa.Column("patient_name", sa.String(length=324), server_default="", nullable=False),
        sa.Column("patient_name_norm", sa.String(length=324), server_default="", nullable=False),
        sa.Column("birth_date", sa.String(length=8), server_default="", nullable=False),
        sa.Column("sex", sa.String(length=16), server_default="", nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_patient")),
        sa.UniqueConstraint("patient_id", "issuer", name=op.f("uq_patient_patient_id_issuer")),
    )
    op.create_index(
        op.f("ix_patient_patient_name_norm"), "patient", ["patient_name_norm"], unique=False
    )
    op.create_table(
        "storage_commitment",
        sa.Column("pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("transaction_uid", sa.String(length=64), nullable=False),
        sa.Column("requester_ae", sa.String(length=16), nullable=False),
        sa.Column("organization_oid", sa.String(length=64), nullable=False),
        sa.Column("requested_at", sa.DateTime(), nullable=False),
        sa.Column("instance_count", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column("failed_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("verified_at", sa.DateTime(), nullable=True),
        sa.Column("result_json", sa.Text(), nullable=True),
        sa.Column("reported_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_storage_commitment")),
        sa.UniqueConstraint("transaction_uid", name=op.f("uq_storage_commitment_transaction_uid")),
    )
    op.create_table(
        "task",
        sa.Column("pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=128), server_default="", nullable=False),
        sa.Column("payload", sa.Text(), server_default="{}", nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=False),
        sa.Column("locked_by", sa.String(length=64), nullable=True),
        sa.Column("locked_until", sa.DateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_task")),
    )
    op.create_index(op.f("ix_task_kind_status"), "task", ["kind", "status"], unique=False)
    op.create_index(
        op.f("ix_task_status_next_attempt_at"), "task", ["status", "next_attempt_at"], unique=False
    )
    op.create_index(op.f("ix_task_subject"), "task", ["subject"], unique=False)
    op.create_table(
        "study",
        sa.Column("pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column(
            "patient_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("study_date", sa.String(length=8), server_default="", nullable=False),
        sa.Column("study_time", sa.String(length=16), server_default="", nullable=False),
        sa.Column("accession_number", sa.String(length=16), server_default="", nullable=False),
        sa.Column("study_id", sa.String(length=16), server_default="", nullable=False),
        sa.Column("study_description", sa.String(length=64), server_default="", nullable=False),
        sa.Column(
            "referring_physician_name", sa.String(length=324), server_default="", nullable=False
        ),
        sa.Column("organization_oid", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("last_received_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["patient_pk"], ["patient.pk"], name=op.f("fk_study_patient_pk_patient")
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_study")),
        sa.UniqueConstraint("study_instance_uid", name=op.f("uq_study_study_instance_uid")),
    )
    op.create_index(op.f("ix_study_accession_number"), "study", ["accession_number"], unique=False)
    op.create_index(op.f("ix_study_last_received_at"), "study", ["last_received_at"], unique=False)
    op.create_index(op.f("ix_study_organization_oid"), "study", ["organization_oid"], unique=False)
    op.create_index(op.f("ix_study_patient_pk"), "study", ["patient_pk"], unique=False)
    op.create_index(op.f("ix_study_study_date"), "study", ["study_date"], unique=False)
    op.create_table(
        "series",
        sa.Column("pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("series_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("study_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("modality", sa.String(length=16), server_default="", nullable=False),
        sa.Column("series_number", sa.Integer(), nullable=True),
        sa.Column("series_description", sa.String(length=64), server_default="", nullable=False),
        sa.Column("body_part_examined", sa.String(length=16), server_default="", nullable=False),
        sa.Column("series_date", sa.String(length=8), server_default="", nullable=False),
        sa.Column("series_time", sa.String(length=16), server_default="", nullable=False),
        sa.Column("institution_name", sa.String(length=64), server_default="", nullable=False),
        sa.Column("station_name", sa.String(length=16), server_default="", nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["study_pk"], ["study.pk"], name=op.f("fk_series_study_pk_study")),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_series")),
        sa.UniqueConstraint("series_instance_uid", name=op.f("uq_series_series_instance_uid")),
    )
    op.create_index(op.f("ix_series_modality"), "series", ["modality"], unique=False)
    op.create_index(op.f("ix_series_study_pk"), "series", ["study_pk"], unique=False)
    op.create_table(
        "instance",
        sa.Column("pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column(
            "series_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("sop_class_uid", sa.String(length=64), nullable=False),
        sa.Column("instance_number", sa.Integer(), nullable=True),
        sa.Column("content_date", sa.String(length=8), server_default="", nullable=False),
        sa.Column("content_time", sa.String(length=16), server_default="", nullable=False),
        sa.Column("number_of_frames", sa.Integer(), nullable=True),
        sa.Column("rows", sa.Integer(), nullable=True),
        sa.Column("columns", sa.Integer(), nullable=True),
        sa.Column("transfer_syntax_uid", sa.String(length=64), nullable=False),
        sa.Column("blob_key", sa.String(length=128), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("source_ae", sa.String(length=16), nullable=False),
        sa.Column("organization_oid", sa.String(length=64), nullable=False),
        sa.Column("dataset_json", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["series_pk"], ["series.pk"], name=op.f("fk_instance_series_pk_series")
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_instance")),
        sa.UniqueConstraint("sop_instance_uid", name=op.f("uq_instance_sop_instance_uid")),
    )
    op.create_index(op.f("ix_instance_received_at"), "instance", ["received_at"], unique=False)
    op.create_index(op.f("ix_instance_series_pk"), "instance", ["series_pk"], unique=False)
    op.create_index(op.f("ix_instance_sop_class_uid"), "instance", ["sop_class_uid"], unique=False)


def downgrade() -> None:

    op.drop_index(op.f("ix_instance_sop_class_uid"), table_name="instance")
    op.drop_index(op.f("ix_instance_series_pk"), table_name="instance")
    op.drop_index(op.f("ix_instance_received_at"), table_name="instance")
    op.drop_table("instance")
    op.drop_index(op.f("ix_series_study_pk"), table_name="series")
    op.drop_index(op.f("ix_series_modality"), table_name="series")
    op.drop_table("series")
    op.drop_index(op.f("ix_study_study_date"), table_name="study")
    op.drop_index(op.f("ix_study_patient_pk"), table_name="study")
    op.drop_index(op.f("ix_study_organization_oid"), table_name="study")
    op.drop_index(op.f("ix_study_last_received_at"), table_name="study")
    op.drop_index(op.f("ix_study_accession_number"), table_name="study")
    op.drop_table("study")
    op.drop_index(op.f("ix_task_subject"), table_name="task")
    op.drop_index(op.f("ix_task_status_next_attempt_at"), table_name="task")
    op.drop_index(op.f("ix_task_kind_status"), table_name="task")
    op.drop_table("task")
    op.drop_table("storage_commitment")
    op.drop_index(op.f("ix_patient_patient_name_norm"), table_name="patient")
    op.drop_table("patient")
