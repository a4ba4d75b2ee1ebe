"""cluster: the nodes sharing this index, their heartbeats, and the duties one node at
a time runs (services.cluster)

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06 14:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cluster_node",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("version", sa.String(length=32), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=False),
        sa.Column("interval_seconds", sa.Float(), nullable=False),
        sa.Column("duties", sa.Text(), server_default="", nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_cluster_node")),
    )
    op.create_table(
        "cluster_duty",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("node", sa.String(length=128), nullable=False),
        sa.Column("until", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_cluster_duty")),
    )


def downgrade() -> None:
    op.drop_table("cluster_duty")
    op.drop_table("cluster_node")
