"""directory: customer organisations and their DICOM nodes in the index, changed at
runtime and put in force on every node (services.directory); an index of a study's
disclosures and the background figures of the operator console

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-06 16:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "directory_organization",
        sa.Column("oid", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("business_id", sa.String(length=32), server_default="", nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("contacts", sa.Text(), server_default="[]", nullable=False),
        sa.Column("certificates", sa.Text(), server_default="[]", nullable=False),
        sa.Column("notice_date", sa.Date(), nullable=True),
        sa.Column("termination_date", sa.Date(), nullable=True),
        sa.Column("origin", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("oid", name=op.f("pk_directory_organization")),
    )
    op.create_table(
        "directory_node",
        sa.Column("ae_title", sa.String(length=16), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("organization", sa.String(length=64), server_default="", nullable=False),
        sa.Column("ian", sa.Boolean(), nullable=False),
        sa.Column("as_received", sa.Boolean(), nullable=False),
        sa.Column("tls", sa.Boolean(), nullable=False),
        sa.Column("default_issuer", sa.String(length=64), server_default="", nullable=False),
        sa.Column("default_character_set", sa.String(length=64), server_default="", nullable=False),
        sa.Column("origin", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("ae_title", name=op.f("pk_directory_node")),
    )
    op.create_index(op.f("ix_directory_node_organization"), "directory_node", ["organization"])
    op.create_table(
        "directory_version",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_directory_version")),
    )
    op.execute("INSERT INTO directory_version (id, version) VALUES (1, 0)")
    # The console's study page lists a study's disclosures.
    op.create_index("ix_disclosure_study", "disclosure", ["study_instance_uid"])
    # Figures the console shows, computed in the background (services.figures).
    op.create_table(
        "archive_figure",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("computed_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_archive_figure")),
    )


def downgrade() -> None:
    op.drop_table("archive_figure")
    op.drop_index("ix_disclosure_study", table_name="disclosure")
    op.drop_table("directory_version")
    op.drop_index(op.f("ix_directory_node_organization"), table_name="directory_node")
    op.drop_table("directory_node")
    op.drop_table("directory_organization")
