"""organization limits: what one organisation may use of a node at once
(model.directory.OrganizationLimits, services.limits), kept with it in the directory

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-06 20:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "directory_organization",
        sa.Column("limits", sa.Text(), server_default="{}", nullable=False),
    )


def downgrade() -> None:
    with op.batch_alter_table("directory_organization") as batch:
        batch.drop_column("limits")
