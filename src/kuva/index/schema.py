"""The index schema: patient -> study -> series -> instance, and the outbox.

Every attribute a C-FIND matches on (PS3.4 C.6.1 / C.6.2 key tables) is a real
column with an index where it is a usual search key; the full attribute set of each
instance is kept as DICOM JSON (PS3.18 F.2, bulk data left out) so that metadata
responses never open a blob. Times are UTC.

Migrations (index/migrations) are the source of truth for the database; this module
must describe the same schema (a test compares them).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)


class UtcDateTime(TypeDecorator[datetime]):
    """A UTC instant: stored as naive UTC, returned timezone-aware (UTC)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        instant: datetime = value
        return instant.replace(tzinfo=UTC) if instant.tzinfo is None else instant.astimezone(UTC)


metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

UID = String(64)
# 64-bit keys on PostgreSQL; INTEGER PRIMARY KEY (the rowid) on SQLite.
PK = BigInteger().with_variant(Integer, "sqlite")

patient = Table(
    "patient",
    metadata,
    Column("pk", PK, primary_key=True),
    Column("patient_id", String(64), nullable=False),
    # Issuer of Patient ID (0010,0021); "" when the sender gave none.
    Column("issuer", String(64), nullable=False, server_default=""),
    Column("patient_name", String(324), nullable=False, server_default=""),
    # Upper-cased, for case-insensitive person name matching (PS3.4 C.2.2.2.1).
    Column("patient_name_norm", String(324), nullable=False, server_default=""),
    Column("birth_date", String(8), nullable=False, server_default=""),
    Column("sex", String(16), nullable=False, server_default=""),
    Column("created_at", UtcDateTime(), nullable=False),
    # Set when the patient was merged into another (HL7 A40); queries and new
    # instances resolve it to the survivor. An unlink clears it.
    Column("merged_into_pk", PK, nullable=True, index=True),
    # Set when the patient's identity or demographics were corrected (HL7 A08, A31,
    # A47): objects of its studies go out with the current values (services.retrieve).
    Column("corrected_at", UtcDateTime(), nullable=True),
    # Patient Death Date (HL7 PID-29, its date part; YYYYMMDD), "" when unknown: an
    # anchor of retention periods (model.retention).
    Column("death_date", String(8), nullable=False, server_default=""),
    # "" for the patient's record as received, shared by every register holder; an
    # organisation's OID for the record its own HL7 corrections apply to, split off
    # when other organisations' studies use the shared one (services.patients).
    Column("organization_oid", String(64), nullable=False, server_default=""),
    UniqueConstraint("patient_id", "issuer", "organization_oid"),
    # Pattern operators on PostgreSQL: a name prefix (``ÄIJ*``, LIKE 'ÄIJ%') uses the
    # index under any database collation, and equality still does.
    Index(None, "patient_name_norm", postgresql_ops={"patient_name_norm": "varchar_pattern_ops"}),
)

study = Table(
    "study",
    metadata,
    Column("pk", PK, primary_key=True),
    Column("study_instance_uid", UID, nullable=False, unique=True),
    Column("patient_pk", ForeignKey("patient.pk"), nullable=False, index=True),
    # The patient the study was received for; ``patient_pk`` is the current one
    # (a merge moves studies, an unlink moves them back).
    Column("received_patient_pk", PK, nullable=True, index=True),
    Column("study_date", String(8), nullable=False, server_default=""),
    Column("study_time", String(16), nullable=False, server_default=""),
    Column("accession_number", String(16), nullable=False, server_default=""),
    Column("study_id", String(16), nullable=False, server_default=""),
    Column("study_description", String(64), nullable=False, server_default=""),
    Column("referring_physician_name", String(324), nullable=False, server_default=""),
    # Register holder: the organisation whose node archived the study.
    Column("organization_oid", String(64), nullable=False),
    # Kept with every insert (same transaction), so that C-FIND / QIDO-RS answer
    # NumberOfStudyRelated* and ModalitiesInStudy without counting (PS3.4 C.3.4).
    Column("number_of_series", Integer, nullable=False, server_default="0"),
    Column("number_of_instances", Integer, nullable=False, server_default="0"),
    Column("modalities_in_study", String(64), nullable=False, server_default=""),
    # SOP Classes in Study (0008,0062), backslash-separated: kept the same way.
    Column("sop_classes_in_study", Text, nullable=False, server_default=""),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("last_received_at", UtcDateTime(), nullable=False),
    # Retention (services.retention): the day the study may be destroyed and the
    # policy that sets it, kept up to date when its content or its patient's birth
    # or death date changes; NULL = kept (no policy covers it, or no anchor known).
    Column("expires_on", Date, nullable=True),
    Column("retention_policy", String(64), nullable=True),
    # Set in the committed first step of its destruction: the study has left every
    # outgoing path and is being destroyed (a re-run finishes it).
    Column("destroying_at", UtcDateTime(), nullable=True),
    Index(None, "study_date"),
    Index(None, "accession_number", postgresql_ops={"accession_number": "varchar_pattern_ops"}),
    Index(None, "organization_oid"),
    Index(None, "last_received_at"),
    # "What has expired" is one range scan of this index.
    Index(None, "expires_on"),
)

series = Table(
    "series",
    metadata,
    Column("pk", PK, primary_key=True),
    Column("series_instance_uid", UID, nullable=False, unique=True),
    Column("study_pk", ForeignKey("study.pk"), nullable=False, index=True),
    Column("modality", String(16), nullable=False, server_default=""),
    Column("series_number", Integer, nullable=True),
    Column("series_description", String(64), nullable=False, server_default=""),
    Column("body_part_examined", String(16), nullable=False, server_default=""),
    Column("series_date", String(8), nullable=False, server_default=""),
    Column("series_time", String(16), nullable=False, server_default=""),
    Column("institution_name", String(64), nullable=False, server_default=""),
    Column("station_name", String(16), nullable=False, server_default=""),
    Column("number_of_instances", Integer, nullable=False, server_default="0"),
    Column("created_at", UtcDateTime(), nullable=False),
    Index(None, "modality"),
)

instance = Table(
    "instance",
    metadata,
    Column("pk", PK, primary_key=True),
    Column("sop_instance_uid", UID, nullable=False, unique=True),
    Column("series_pk", ForeignKey("series.pk"), nullable=False, index=True),
    Column("sop_class_uid", UID, nullable=False, index=True),
    Column("instance_number", Integer, nullable=True),
    Column("content_date", String(8), nullable=False, server_default=""),
    Column("content_time", String(16), nullable=False, server_default=""),
    Column("number_of_frames", Integer, nullable=True),
    Column("rows", Integer, nullable=True),
    Column("columns", Integer, nullable=True),
    Column("transfer_syntax_uid", UID, nullable=False),
    # The stored object: kuva's canonical file meta + the data set as received.
    Column("blob_key", String(128), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("received_at", UtcDateTime(), nullable=False),
    Column("source_ae", String(16), nullable=False),
    Column("organization_oid", String(64), nullable=False),
    # DICOM JSON (PS3.18 F.2) of the data set, bulk data as BulkDataURI references.
    Column("dataset_json", Text, nullable=False),
    # The IOCM rejection code (model.rejection) while the instance is rejected:
    # left out of every outgoing path and of the study's counters. NULL = current.
    Column("rejection_code", String(16), nullable=True),
    # Set when the instance is itself a rejection note: its Document Title code.
    # Notes stay retrievable and queryable but are not listed in manifests.
    Column("rejection_note_code", String(16), nullable=True),
    Index(None, "received_at"),
    # Which rows reference a blob: the orphan walk and repairs (services.integrity).
    Index(None, "blob_key"),
)

# IOCM rejections in force (model.rejection), one per rejected SOP Instance UID,
# also for instances not received yet (they are rejected on arrival). A revoked
# rejection is deleted; its history stays in ``correction``.
rejection = Table(
    "rejection",
    metadata,
    Column("pk", PK, primary_key=True),
    Column("sop_instance_uid", UID, nullable=False, unique=True),
    Column("series_instance_uid", UID, nullable=False),
    Column("study_instance_uid", UID, nullable=False, index=True),
    Column("sop_class_uid", UID, nullable=False),
    Column("code", String(16), nullable=False),
    Column("note_sop_instance_uid", UID, nullable=False, index=True),
    Column("organization_oid", String(64), nullable=False),
    Column("rejected_at", UtcDateTime(), nullable=False),
)

# The history of corrections: every rejection, revocation, merge and update, with
# what it changed (JSON), where it came from and when. Never updated or deleted.
correction = Table(
    "correction",
    metadata,
    Column("pk", PK, primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("subject", String(128), nullable=False, index=True),
    Column("detail", Text, nullable=False),
    Column("source", String(64), nullable=False),
    Column("applied_at", UtcDateTime(), nullable=False),
)

# Storage Commitment Push Model requests (PS3.4 J.3). One row per Transaction UID.
storage_commitment = Table(
    "storage_commitment",
    metadata,
    Column("pk", PK, primary_key=True),
    Column("transaction_uid", UID, nullable=False, unique=True),
    Column("requester_ae", String(16), nullable=False),
    Column("organization_oid", String(64), nullable=False),
    Column("requested_at", UtcDateTime(), nullable=False),
    Column("instance_count", Integer, nullable=False),
    # "pending" until verified, then "success" (event type 1) or "failure" (type 2).
    Column("outcome", String(16), nullable=False, server_default="pending"),
    Column("failed_count", Integer, nullable=False, server_default="0"),
    Column("verified_at", UtcDateTime(), nullable=True),
    # JSON: {"success": [[class, instance], ...], "failed": [[class, instance, reason]...]}
    Column("result_json", Text, nullable=True),
    Column("reported_at", UtcDateTime(), nullable=True),
)

# The outbox (docs/design.md principle 3): follow-up work committed with its cause.
task = Table(
    "task",
    metadata,
    Column("pk", PK, primary_key=True),
    Column("kind", String(64), nullable=False),
    # What the task is about (a study UID, a transaction UID ...), for operators.
    Column("subject", String(128), nullable=False, server_default=""),
    Column("payload", Text, nullable=False, server_default="{}"),
    # Tasks with the same queue run one at a time, in the order they were added
    # (index.outbox); NULL = no ordering.
    Column("queue", String(200), nullable=True),
    # pending -> running -> done | failed (out of attempts) | superseded (a newer task
    # of its queue says it all, index.outbox); failed -> pending on retry.
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    # Unused (0) when retry_until is set.
    Column("max_attempts", Integer, nullable=False),
    # When set, failed attempts are retried until this time, however many they are
    # (IANs ride out a node's outage), instead of up to max_attempts.
    Column("retry_until", UtcDateTime(), nullable=True),
    # The remote node (AE title) a delivery sends to: an IAN's, a storage commitment
    # report's; NULL for other work (``kuva tasks retry --node``).
    Column("destination", String(64), nullable=True),
    Column("next_attempt_at", UtcDateTime(), nullable=False),
    Column("locked_by", String(64), nullable=True),
    Column("locked_until", UtcDateTime(), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    Index(None, "status", "next_attempt_at"),
    Index(None, "kind", "status"),
    Index(None, "subject"),
    Index(None, "queue", "pk"),
    Index(None, "destination", "status"),
)

# --- XDS.b Document Registry (ITI TF-3 4.1-4.3; kuva.index.registry) ---
#
# Every registry object (DocumentEntry, SubmissionSet, Folder, Association) is a
# row of xds_object, with its ebRIM XML as registered (answers of ITI-18 LeafClass
# queries are made of it) and what the registry's rules look it up by. The
# attributes the stored queries match on (ITI TF-2a 3.18.4.1.2.3.7) are columns
# of one table per kind, sharing xds_object's pk; multi-valued ones are rows of
# child tables. FindDocuments (patient, and often classCode and a creationTime
# range) reads one composite index led by the patient id. Status values, object
# types and association types are the full URNs of the standard. DTM attributes
# are 14 digits, UTC, the first second of the period sent (model.xds.dtm_instant),
# so that they order as instants.

LONG_NAME = 256  # ebRIM 3.0 LongName (rim.xsd): codes, schemes, slot values
OID = 64
UUID_URN = 64  # "urn:uuid:" + 36
DTM = 14

xds_object = Table(
    "xds_object",
    metadata,
    Column("pk", PK, primary_key=True),
    Column("entry_uuid", String(UUID_URN), nullable=False, unique=True),
    # DocumentEntry | SubmissionSet | Folder | Association (model.xds.ObjectKind).
    Column("kind", String(16), nullable=False),
    Column("object_type", String(128), nullable=False),  # ebRIM objectType
    Column("logical_id", String(UUID_URN), nullable=False),
    Column("version", Integer, nullable=False),
    Column("status", String(64), nullable=False),  # availabilityStatus URN
    Column("unique_id", String(128), nullable=True),  # not for Associations
    # CX.1 and the CX.4 OID of patientId; NULL for Associations.
    Column("patient_id", String(64), nullable=True),
    Column("patient_authority", String(OID), nullable=True),
    Column("organization_oid", String(OID), nullable=False),  # register holder
    Column("ebxml", Text, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Index("ix_xds_object_unique_id", "unique_id"),
    Index("ix_xds_object_patient", "patient_id", "patient_authority", "kind"),
)

xds_document_entry = Table(
    "xds_document_entry",
    metadata,
    Column("pk", PK, ForeignKey("xds_object.pk"), primary_key=True),
    Column("patient_id", String(64), nullable=False),
    Column("patient_authority", String(OID), nullable=False),
    Column("class_code", String(LONG_NAME), nullable=False),
    Column("class_code_scheme", String(LONG_NAME), nullable=False),
    Column("type_code", String(LONG_NAME), nullable=False),
    Column("type_code_scheme", String(LONG_NAME), nullable=False),
    Column("practice_setting_code", String(LONG_NAME), nullable=False),
    Column("practice_setting_code_scheme", String(LONG_NAME), nullable=False),
    Column("healthcare_facility_type_code", String(LONG_NAME), nullable=False),
    Column("healthcare_facility_type_code_scheme", String(LONG_NAME), nullable=False),
    Column("format_code", String(LONG_NAME), nullable=False),
    Column("format_code_scheme", String(LONG_NAME), nullable=False),
    Column("creation_time", String(DTM), nullable=False),
    Column("service_start_time", String(DTM), nullable=True),
    Column("service_stop_time", String(DTM), nullable=True),
    Column("mime_type", String(LONG_NAME), nullable=False),
    Column("hash", String(40), nullable=False),  # SHA-1, lower-case hex
    Column("size", BigInteger, nullable=False),
    Column("repository_unique_id", String(OID), nullable=False),
    Column("document_availability", String(64), nullable=False),
    Column("language_code", String(LONG_NAME), nullable=False),
    Index(
        "ix_xds_document_entry_find",
        "patient_id",
        "patient_authority",
        "class_code",
        "creation_time",
    ),
)

# Multi-valued codes: eventCodeList and confidentialityCode of DocumentEntries,
# codeList of Folders; ``kind`` is the attribute's name.
xds_code = Table(
    "xds_code",
    metadata,
    Column("pk", PK, primary_key=True),
    Column("object_pk", ForeignKey("xds_object.pk"), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("code", String(LONG_NAME), nullable=False),
    Column("scheme", String(LONG_NAME), nullable=False),
    Index("ix_xds_code_object", "object_pk", "kind", "code"),
)

# authorPerson of DocumentEntries and SubmissionSets (one row per author).
xds_author = Table(
    "xds_author",
    metadata,
    Column("pk", PK, primary_key=True),
    Column("object_pk", ForeignKey("xds_object.pk"), nullable=False),
    Column("person", String(LONG_NAME), nullable=False),
    Index("ix_xds_author_object", "object_pk"),
)

# referenceIdList values (CXi, ITI TF-3 4.2.3.2.28), as sent.
xds_reference_id = Table(
    "xds_reference_id",
    metadata,
    Column("pk", PK, primary_key=True),
    Column("object_pk", ForeignKey("xds_object.pk"), nullable=False),
    Column("value", String(LONG_NAME), nullable=False),
    Index("ix_xds_reference_id_object", "object_pk"),
    Index("ix_xds_reference_id_value", "value"),
)

xds_submission_set = Table(
    "xds_submission_set",
    metadata,
    Column("pk", PK, ForeignKey("xds_object.pk"), primary_key=True),
    Column("submission_time", String(DTM), nullable=False),
    Column("source_id", String(OID), nullable=False),
    Column("content_type_code", String(LONG_NAME), nullable=False),
    Column("content_type_code_scheme", String(LONG_NAME), nullable=False),
)

xds_folder = Table(
    "xds_folder",
    metadata,
    Column("pk", PK, ForeignKey("xds_object.pk"), primary_key=True),
    # Set by the registry when the Folder is created and whenever a document is
    # added to it (ITI TF-3 4.2.3.4.5).
    Column("last_update_time", String(DTM), nullable=False),
)

xds_association = Table(
    "xds_association",
    metadata,
    Column("pk", PK, ForeignKey("xds_object.pk"), primary_key=True),
    Column("association_type", String(128), nullable=False),
    Column("source_object", String(UUID_URN), nullable=False),
    Column("target_object", String(UUID_URN), nullable=False),
    Column("submission_set_status", String(16), nullable=True),
    Index("ix_xds_association_source", "source_object", "association_type"),
    Index("ix_xds_association_target", "target_object", "association_type"),
)

# --- XDS.b Document Repository (ITI TF-2b 3.41, 3.43; kuva.index.repository) ---
#
# One row per document the repository holds, by its uniqueId: the bytes are a blob
# (content-addressed, so a KOS manifest stored as a DICOM instance shares the
# instance's blob), ``sha1`` is the registry's hash slot (ITI TF-3 4.2.3.2.11) and
# ``sha256`` the blob's own address. ``organization_oid`` is the register holder;
# the patient (CX.1 and the CX.4 OID) and, when known, the study are kept for the
# disclosure log.

xds_document = Table(
    "xds_document",
    metadata,
    Column("pk", PK, primary_key=True),
    Column("unique_id", String(128), nullable=False, unique=True),
    Column("repository_unique_id", String(OID), nullable=False),
    Column("mime_type", String(LONG_NAME), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("sha1", String(40), nullable=False),  # lower-case hex
    Column("sha256", String(64), nullable=False),  # lower-case hex
    Column("blob_key", String(128), nullable=False),
    Column("organization_oid", String(OID), nullable=False),  # register holder
    Column("patient_id", String(64), nullable=False),
    Column("patient_authority", String(OID), nullable=False),
    Column("study_instance_uid", UID, nullable=True),
    Column("stored_at", UtcDateTime(), nullable=False),
    Index(None, "study_instance_uid"),
    Index(None, "blob_key"),
)

# Disclosures reported by customers (services.notices): one row per disclosure
# notice (POST /disclosures/notices) or ATNA Export message (POST /audit/messages,
# the syslog listener) recorded. ``reporter`` is the reporting organisation (the
# register holder of its records); ``notice_id`` the client's idempotency key (a
# UUID) or, for an ATNA message, ``sha256:`` + the digest of its bytes; None =
# none given. ``digest``: SHA-256 of the notice's content, telling a retry from
# another notice under the same id. ``source``: notice, atna.

disclosure_notice = Table(
    "disclosure_notice",
    metadata,
    Column("pk", PK, primary_key=True),
    Column("reporter", String(OID), nullable=False),
    Column("notice_id", String(80), nullable=True),
    Column("digest", String(64), nullable=False),
    Column("source", String(16), nullable=False),
    Column("received_at", UtcDateTime(), nullable=False),
    Column("record_count", Integer, nullable=False),
    UniqueConstraint("reporter", "notice_id"),
)

# The disclosure log (luovutusloki; docs/design.md principle 7): one row per document or
# image handed out to another organisation than its register holder, written in
# the transaction that decides the disclosure. ``recipient_organization`` "" =
# unknown (no XUA assertion named one). ``patient_authority`` is the issuer of the
# patient id as the index holds it. ``interface``: ITI-43, RAD-69 (kuva's own),
# notice, ATNA-Export (reported). ``source``: archive (kuva handed it out),
# notice (a customer's disclosure notice), atna (a customer's ATNA Export
# message); the reported ones name their ``disclosure_notice`` (``notice_pk``),
# the channel the customer gave and, optionally, the receiving person or role.

disclosure = Table(
    "disclosure",
    metadata,
    Column("pk", PK, primary_key=True),
    Column("disclosed_at", UtcDateTime(), nullable=False),
    Column("recipient_organization", String(OID), nullable=False, server_default=""),
    Column("register_holder", String(OID), nullable=False),
    Column("patient_id", String(64), nullable=False),
    Column("patient_authority", String(64), nullable=False, server_default=""),
    Column("study_instance_uid", UID, nullable=True),
    Column("document_unique_id", String(128), nullable=False),
    Column("interface", String(16), nullable=False),
    Column("basis", Text, nullable=False),
    Column("source", String(16), nullable=False, server_default="archive"),
    Column("channel", String(128), nullable=True),
    Column("recipient_person", String(128), nullable=True),
    Column("notice_pk", ForeignKey("disclosure_notice.pk"), nullable=True, index=True),
    # The user of a verified XUA assertion (kuva.xds.xua): Subject NameID, the XSPA
    # role code and purpose-of-use code; recipient_person holds their name.
    Column("recipient_user", String(256), nullable=True),
    Column("recipient_role", String(64), nullable=True),
    Column("purpose_of_use", String(64), nullable=True),
    Index("ix_disclosure_patient", "patient_id", "patient_authority", "disclosed_at"),
    Index("ix_disclosure_disclosed_at", "disclosed_at"),
    # A study's disclosures (the console's study page).
    Index("ix_disclosure_study", "study_instance_uid"),
)

# XUA assertions seen (services.assertions): the SHA-256 of an assertion's ID (with
# the request's wsa:MessageID when [xds] xua_assertion_reuse), kept until the
# assertion expires, so that a replay is refused on every node of the index.
xua_assertion = Table(
    "xua_assertion",
    metadata,
    Column("digest", String(64), primary_key=True),
    Column("expires_at", UtcDateTime(), nullable=False, index=True),
)

# Disclosure prohibitions (services.access): a patient's material stays with the
# register holder that archived it, whatever the access rules that honour it say.
# One row per patient; lifting the prohibition deletes it (its history is in the
# audit trail).
disclosure_prohibition = Table(
    "disclosure_prohibition",
    metadata,
    Column("pk", PK, primary_key=True),
    Column("patient_pk", ForeignKey("patient.pk"), nullable=False, unique=True),
    Column("set_at", UtcDateTime(), nullable=False),
    Column("set_by", String(LONG_NAME), nullable=False, server_default=""),
    Column("reason", Text, nullable=False, server_default=""),
)

# HL7 v2 messages applied (services.patients): an already-seen control id (per
# sending application and facility) is answered with its ACK again, not applied twice.
hl7_message = Table(
    "hl7_message",
    metadata,
    Column("pk", PK, primary_key=True),
    Column("sending_application", String(180), nullable=False),
    Column("sending_facility", String(180), nullable=False),
    Column("control_id", String(199), nullable=False),
    Column("message_type", String(16), nullable=False),
    Column("ack", Text, nullable=False),
    Column("received_at", UtcDateTime(), nullable=False),
    UniqueConstraint("sending_application", "sending_facility", "control_id"),
)

# The local audit trail (services.audit; PS3.15 A.5 messages): append-only and
# hash-chained. ``seq`` counts up from 1 without gaps; ``hash`` is SHA-256 over
# ``prev_hash`` and the record's own fields (model.audit.record_hash). Appends are
# serialised (index.audit), so the chain never forks.
audit_record = Table(
    "audit_record",
    metadata,
    Column("seq", PK, primary_key=True, autoincrement=False),
    Column("recorded_at", UtcDateTime(), nullable=False),
    # EventID code (PS3.15 A.5.3, e.g. 110110 Patient Record).
    Column("event_id", String(16), nullable=False),
    # EventOutcomeIndicator: 0, 4, 8, 12.
    Column("outcome", Integer, nullable=False),
    # The AuditMessage XML (PS3.15 A.5.1) as recorded and sent.
    Column("message", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Index("ix_audit_record_recorded_at", "recorded_at"),
)

# Where the continuous integrity check of ``kuva serve`` is in its walk over the
# blobs (services.integrity): one row. ``phase`` "instance" or "document", the
# walk resumes after ``after_pk`` of that table; nodes sharing the index share
# the walk, each taking the next batch under the row's lock.
integrity_scrub = Table(
    "integrity_scrub",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("phase", String(16), nullable=False),
    Column("after_pk", BigInteger, nullable=False),
    Column("pass_started_at", UtcDateTime(), nullable=True),
    Column("last_pass_at", UtcDateTime(), nullable=True),
)

# Legal holds (retention): a study, or every study of a patient (current or as
# received), that is never destroyed while the hold is in force, whatever its
# expiry. Releasing deletes the row; both steps stay in ``correction``.
legal_hold = Table(
    "legal_hold",
    metadata,
    Column("pk", PK, primary_key=True),
    Column("study_instance_uid", UID, nullable=True, index=True),
    Column("patient_pk", ForeignKey("patient.pk"), nullable=True, index=True),
    Column("reason", Text, nullable=False),
    Column("held_by", String(64), nullable=False),
    Column("held_at", UtcDateTime(), nullable=False),
)

# What retention destroyed (services.retention): one row per destroyed study, or per
# set of instances destroyed for an IOCM 113039 rejection note, kept after the data
# is gone. ``destroyed_at`` NULL: the destruction was decided and is under way (a
# re-run finishes it). ``sha256_list``: the SHA-256 of every destroyed object, one
# per line, sorted; ``sha256_digest`` the SHA-256 of that text.
destruction = Table(
    "destruction",
    metadata,
    Column("pk", PK, primary_key=True),
    Column("study_instance_uid", UID, nullable=False, index=True),
    Column("organization_oid", String(64), nullable=False),
    Column("patient_id", String(64), nullable=False),
    Column("patient_issuer", String(64), nullable=False, server_default=""),
    Column("policy", String(64), nullable=False),
    Column("expires_on", Date, nullable=True),
    Column("rejection_note_uid", UID, nullable=True, index=True),
    Column("reason", Text, nullable=False),
    Column("destroyed_by", String(64), nullable=False),
    Column("decided_at", UtcDateTime(), nullable=False),
    Column("destroyed_at", UtcDateTime(), nullable=True),
    Column("instances", Integer, nullable=False, server_default="0"),
    Column("sha256_digest", String(64), nullable=False, server_default=""),
    Column("sha256_list", Text, nullable=False, server_default=""),
    # Set by an operator (``kuva retention allow-resend``): the study's instances may
    # be archived again. NULL: what was destroyed stays destroyed (services.ingest).
    Column("resend_allowed_at", UtcDateTime(), nullable=True),
    Column("resend_allowed_by", String(64), nullable=True),
    Column("resend_reason", Text, nullable=True),
    Index(None, "destroyed_at"),
)

# The nodes of a cluster sharing this index (services.cluster): each kuva serve's main
# process beats here every [archive] heartbeat_seconds; a node whose beat is older
# than three intervals is gone (its task leases run out and others finish its work).
cluster_node = Table(
    "cluster_node",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("version", String(32), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", UtcDateTime(), nullable=False),
    Column("heartbeat_at", UtcDateTime(), nullable=False),
    Column("interval_seconds", Float, nullable=False),
    # What the node runs, comma-separated (task workers, retention, integrity walk ...).
    Column("duties", Text, nullable=False, server_default=""),
)

# A duty that runs on one node of the cluster at a time (the retention run, the purge
# of done tasks): the node holding it until ``until`` runs it; another takes it over
# only once that has passed (services.cluster).
cluster_duty = Table(
    "cluster_duty",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("node", String(128), nullable=False),
    Column("until", UtcDateTime(), nullable=False),
)

# The directory: the customer organisations and their DICOM nodes (services.directory).
# ``[[organizations]]`` and ``[[nodes]]`` seed it at start (origin "config": kept in
# step with the file); a change by CLI or admin API makes a row "runtime" (the file
# no longer touches it). Every change bumps directory_version, which every node polls
# to put the new directory in force within seconds.
directory_organization = Table(
    "directory_organization",
    metadata,
    Column("oid", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("business_id", String(32), nullable=False, server_default=""),
    Column("state", String(16), nullable=False),
    Column("contacts", Text, nullable=False, server_default="[]"),  # JSON list
    Column("certificates", Text, nullable=False, server_default="[]"),  # JSON list
    # model.directory.OrganizationLimits as JSON ({} = none).
    Column("limits", Text, nullable=False, server_default="{}"),
    Column("notice_date", Date, nullable=True),
    Column("termination_date", Date, nullable=True),
    Column("origin", String(16), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
)

directory_node = Table(
    "directory_node",
    metadata,
    Column("ae_title", String(16), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("port", Integer, nullable=False),
    Column("organization", String(64), nullable=False, server_default=""),
    Column("ian", Boolean, nullable=False),
    Column("as_received", Boolean, nullable=False),
    Column("tls", Boolean, nullable=False),
    Column("default_issuer", String(64), nullable=False, server_default=""),
    Column("default_character_set", String(64), nullable=False, server_default=""),
    Column("origin", String(16), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    Index(None, "organization"),
)

directory_version = Table(
    "directory_version",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),  # always 1
    Column("version", BigInteger, nullable=False),
)

# Figures the operator console shows that no request may compute (each a read of a
# whole table): the storage used and the audit chain's last verification, computed
# in the background by one node at a time (services.figures) and kept here by name.
archive_figure = Table(
    "archive_figure",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),  # JSON
    Column("computed_at", UtcDateTime(), nullable=False),
)
