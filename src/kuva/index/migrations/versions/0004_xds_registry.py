"""XDS.b Document Registry: registry objects, document entries, submission sets,
folders, associations and their multi-valued attributes (index.schema, "XDS.b
Document Registry")

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_LONG_NAME = 256


def _object_fk(table: str, column: str = "object_pk") -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column], ["xds_object.pk"], name=op.f(f"fk_{table}_{column}_xds_object")
    )


def upgrade() -> None:
    op.create_table(
        "xds_object",
        sa.Column("pk", _PK, nullable=False),
        sa.Column("entry_uuid", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("object_type", sa.String(length=128), nullable=False),
        sa.Column("logical_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=64), nullable=False),
        sa.Column("unique_id", sa.String(length=128), nullable=True),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("patient_authority", sa.String(length=64), nullable=True),
        sa.Column("organization_oid", sa.String(length=64), nullable=False),
        sa.Column("ebxml", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_xds_object")),
        sa.UniqueConstraint("entry_uuid", name=op.f("uq_xds_object_entry_uuid")),
    )
    op.create_index(
        "ix_xds_object_patient", "xds_object", ["patient_id", "patient_authority", "kind"]
    )
    op.create_index("ix_xds_object_unique_id", "xds_object", ["unique_id"])

    op.create_table(
        "xds_document_entry",
        sa.Column("pk", _PK, nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("patient_authority", sa.String(length=64), nullable=False),
        sa.Column("class_code", sa.String(length=_LONG_NAME), nullable=False),
        sa.Column("class_code_scheme", sa.String(length=_LONG_NAME), nullable=False),
        sa.Column("type_code", sa.String(length=_LONG_NAME), nullable=False),
        sa.Column("type_code_scheme", sa.String(length=_LONG_NAME), nullable=False),
        sa.Column("practice_setting_code", sa.String(length=_LONG_NAME), nullable=False),
        sa.Column("practice_setting_code_scheme", sa.String(length=_LONG_NAME), nullable=False),
        sa.Column("healthcare_facility_type_code", sa.String(length=_LONG_NAME), nullable=False),
        sa.Column(
            "healthcare_facility_type_code_scheme", sa.String(length=_LONG_NAME), nullable=False
        ),
        sa.Column("format_code", sa.String(length=_LONG_NAME), nullable=False),
        sa.Column("format_code_scheme", sa.String(length=_LONG_NAME), nullable=False),
        sa.Column("creation_time", sa.String(length=14), nullable=False),
        sa.Column("service_start_time", sa.String(length=14), nullable=True),
        sa.Column("service_stop_time", sa.String(length=14), nullable=True),
        sa.Column("mime_type", sa.String(length=_LONG_NAME), nullable=False),
        sa.Column("hash", sa.String(length=40), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("repository_unique_id", sa.String(length=64), nullable=False),
        sa.Column("document_availability", sa.String(length=64), nullable=False),
        sa.Column("language_code", sa.String(length=_LONG_NAME), nullable=False),
        _object_fk("xds_document_entry", "pk"),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_xds_document_entry")),
    )
    op.create_index(
        "ix_xds_document_entry_find",
        "xds_document_entry",
        ["patient_id", "patient_authority", "class_code", "creation_time"],
    )

    op.create_table(
        "xds_code",
        sa.Column("pk", _PK, nullable=False),
        sa.Column("object_pk", _PK, nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("code", sa.String(length=_LONG_NAME), nullable=False),
        sa.Column("scheme", sa.String(length=_LONG_NAME), nullable=False),
        _object_fk("xds_code"),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_xds_code")),
    )
    op.create_index("ix_xds_code_object", "xds_code", ["object_pk", "kind", "code"])

    op.create_table(
        "xds_author",
        sa.Column("pk", _PK, nullable=False),
        sa.Column("object_pk", _PK, nullable=False),
        sa.Column("person", sa.String(length=_LONG_NAME), nullable=False),
        _object_fk("xds_author"),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_xds_author")),
    )
    op.create_index("ix_xds_author_object", "xds_author", ["object_pk"])

    op.create_table(
        "xds_reference_id",
        sa.Column("pk", _PK, nullable=False),
        sa.Column("object_pk", _PK, nullable=False),
        sa.Column("value", sa.String(length=_LONG_NAME), nullable=False),
        _object_fk("xds_reference_id"),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_xds_reference_id")),
    )
    op.create_index("ix_xds_reference_id_object", "xds_reference_id", ["object_pk"])
    op.create_index("ix_xds_reference_id_value", "xds_reference_id", ["value"])

    op.create_table(
        "xds_submission_set",
        sa.Column("pk", _PK, nullable=False),
        sa.Column("submission_time", sa.String(length=14), nullable=False),
        sa.Column("source_id", sa.String(length=64), nullable=False),
        sa.Column("content_type_code", sa.String(length=_LONG_NAME), nullable=False),
        sa.Column("content_type_code_scheme", sa.String(length=_LONG_NAME), nullable=False),
        _object_fk("xds_submission_set", "pk"),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_xds_submission_set")),
    )

    op.create_table(
        "xds_folder",
        sa.Column("pk", _PK, nullable=False),
        sa.Column("last_update_time", sa.String(length=14), nullable=False),
        _object_fk("xds_folder", "pk"),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_xds_folder")),
    )

    op.create_table(
        "xds_association",
        sa.Column("pk", _PK, nullable=False),
        sa.Column("association_type", sa.String(length=128), nullable=False),
        sa.Column("source_object", sa.String(length=64), nullable=False),
        sa.Column("target_object", sa.String(length=64), nullable=False),
        sa.Column("submission_set_status", sa.String(length=16), nullable=True),
        _object_fk("xds_association", "pk"),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_xds_association")),
    )
    op.create_index(
        "ix_xds_association_source", "xds_association", ["source_object", "association_type"]
    )
    op.create_index(
        "ix_xds_association_target", "xds_association", ["target_object", "association_type"]
    )


def downgrade() -> None:
    for table in (
        "xds_association",
        "xds_folder",
        "xds_submission_set",
        "xds_reference_id",
        "xds_author",
        "xds_code",
        "xds_document_entry",
    ):
        op.drop_table(table)  # its indexes go with it
    op.drop_table("xds_object")
