"""HL7 corrections act for the organisation that sent them: ``patient.organization_oid``
("" = the record as received, shared; else the organisation whose corrections the
record carries), part of the patient's unique key

SQLite changes a table constraint only by copying the table, and the copy drops
``patient``, which other tables reference: that runs with foreign keys off, which
SQLite allows only outside a transaction (https://www.sqlite.org/lang_altertable.html,
"Making Other Kinds Of Table Schema Changes"). The copy is its own transaction,
checked with ``PRAGMA foreign_key_check``; an upgrade interrupted before the version
stamp finds the column there and does nothing again.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06 05:00:00
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def _has_column() -> bool:
    columns = sa.inspect(op.get_bind()).get_columns("patient")
    return any(column["name"] == "organization_oid" for column in columns)


def _copying_patient(change: Callable[[], None]) -> None:
    """Run ``change``; on SQLite in a transaction of its own with foreign keys off."""
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        change()
        return
    bind.exec_driver_sql("COMMIT")
    bind.exec_driver_sql("PRAGMA foreign_keys=OFF")
    bind.exec_driver_sql("BEGIN IMMEDIATE")
    try:
        change()
        broken = bind.exec_driver_sql("PRAGMA foreign_key_check").all()
        if broken:
            raise RuntimeError(f"patient copy broke {len(broken)} foreign key(s)")
        bind.exec_driver_sql("COMMIT")
    except BaseException:
        bind.exec_driver_sql("ROLLBACK")
        raise
    finally:
        bind.exec_driver_sql("PRAGMA foreign_keys=ON")
        bind.exec_driver_sql("BEGIN IMMEDIATE")  # for the version stamp


def _upgrade() -> None:
    with op.batch_alter_table("patient") as batch:
        batch.add_column(
            sa.Column("organization_oid", sa.String(length=64), server_default="", nullable=False)
        )
        batch.drop_constraint("uq_patient_patient_id_issuer", type_="unique")
        batch.create_unique_constraint(
            "uq_patient_patient_id_issuer_organization_oid",
            ["patient_id", "issuer", "organization_oid"],
        )


def _downgrade() -> None:
    # Only without organisations' own records: the shared key must be unique again.
    with op.batch_alter_table("patient") as batch:
        batch.drop_constraint("uq_patient_patient_id_issuer_organization_oid", type_="unique")
        batch.create_unique_constraint("uq_patient_patient_id_issuer", ["patient_id", "issuer"])
        batch.drop_column("organization_oid")


def upgrade() -> None:
    if not _has_column():
        _copying_patient(_upgrade)


def downgrade() -> None:
    if _has_column():
        _copying_patient(_downgrade)
