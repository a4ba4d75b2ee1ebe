"""xua: XUA assertions seen (replays are refused on every node) and the verified
user of a disclosure (NameID, role, purpose of use)

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-06 19:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "xua_assertion",
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("digest", name=op.f("pk_xua_assertion")),
    )
    op.create_index(op.f("ix_xua_assertion_expires_at"), "xua_assertion", ["expires_at"])
    op.add_column("disclosure", sa.Column("recipient_user", sa.String(length=256), nullable=True))
    op.add_column("disclosure", sa.Column("recipient_role", sa.String(length=64), nullable=True))
    op.add_column("disclosure", sa.Column("purpose_of_use", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("disclosure") as batch:
        batch.drop_column("purpose_of_use")
        batch.drop_column("recipient_role")
        batch.drop_column("recipient_user")
    op.drop_index(op.f("ix_xua_assertion_expires_at"), table_name="xua_assertion")
    op.drop_table("xua_assertion")
