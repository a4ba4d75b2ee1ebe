"""XDS.b Document Repository documents and the disclosure log (index.schema,
"XDS.b Document Repository" and ``disclosure``)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "xds_document",
        sa.Column("pk", _PK, nullable=False),
        sa.Column("unique_id", sa.String(length=128), nullable=False),
        sa.Column("repository_unique_id", sa.String(length=64), nullable=False),
        sa.Column("mime_type", sa.String(length=256), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha1", sa.String(length=40), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("blob_key", sa.String(length=128), nullable=False),
        sa.Column("organization_oid", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("patient_authority", sa.String(length=64), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("stored_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_xds_document")),
        sa.UniqueConstraint("unique_id", name=op.f("uq_xds_document_unique_id")),
    )
    op.create_index(
        op.f("ix_xds_document_study_instance_uid"), "xds_document", ["study_instance_uid"]
    )

    op.create_table(
        "disclosure",
        sa.Column("pk", _PK, nullable=False),
        sa.Column("disclosed_at", sa.DateTime(), nullable=False),
        sa.Column(
            "recipient_organization", sa.String(length=64), server_default="", nullable=False
        ),
        sa.Column("register_holder", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("patient_authority", sa.String(length=64), server_default="", nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("document_unique_id", sa.String(length=128), nullable=False),
        sa.Column("interface", sa.String(length=16), nullable=False),
        sa.Column("basis", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_disclosure")),
    )
    op.create_index(
        "ix_disclosure_patient", "disclosure", ["patient_id", "patient_authority", "disclosed_at"]
    )
    op.create_index("ix_disclosure_disclosed_at", "disclosure", ["disclosed_at"])


def downgrade() -> None:
    op.drop_table("disclosure")  # its indexes go with it
    op.drop_table("xds_document")
