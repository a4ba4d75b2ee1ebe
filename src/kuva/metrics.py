"""Prometheus metrics (served at /metrics, docs/contract.md)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

instances_received = Counter(
    "kuva_instances_received",
    "Instances received, by outcome (stored, duplicate, invalid, conflict, failed)",
    ["outcome"],
    registry=REGISTRY,
)
bytes_stored = Counter("kuva_bytes_stored", "Bytes of new blobs made durable", registry=REGISTRY)
store_seconds = Histogram(
    "kuva_store_seconds",
    "Time from the end of a C-STORE data set to its durable index row",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
associations = Counter(
    "kuva_associations", "DICOM associations, by result", ["result"], registry=REGISTRY
)
associations_open = Gauge(
    "kuva_dicom_associations_open", "DICOM associations open now, both roles", registry=REGISTRY
)
dicom_pdus = Counter(
    "kuva_dicom_pdus",
    "DICOM PDUs, by direction (in, out) and type (PS3.8 9.3: associate_rq ... abort)",
    ["direction", "type"],
    registry=REGISTRY,
)
dicom_bytes = Counter(
    "kuva_dicom_bytes",
    "Bytes of DICOM PDUs, by direction (in, out)",
    ["direction"],
    registry=REGISTRY,
)
cstore_seconds = Histogram(
    "kuva_cstore_seconds",
    "C-STORE as the archive answers it: from the C-STORE-RQ command to the response sent",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
commitments = Counter(
    "kuva_storage_commitments",
    "Storage commitment results, by outcome (success, failure)",
    ["outcome"],
    registry=REGISTRY,
)
tasks = Gauge(
    "kuva_tasks", "Outbox tasks by kind and status", ["kind", "status"], registry=REGISTRY
)
task_runs = Counter(
    "kuva_task_runs", "Task attempts, by kind and result", ["kind", "result"], registry=REGISTRY
)
registrations = Counter(
    "kuva_registrations",
    "Study registrations, by outcome (published, unpublished: modality not on the list, "
    "withdrawn: every image rejected, refused by the registry)",
    ["outcome"],
    registry=REGISTRY,
)
destructions = Counter(
    "kuva_destructions",
    "Destructions finished by retention, by kind (study: an expired study; iocm: the "
    "instances of a 113039 rejection note)",
    ["kind"],
    registry=REGISTRY,
)
registration_latency = Histogram(
    "kuva_registration_latency_seconds",
    "Time from a study's last instance to an IAN of it acknowledged by a node",
    buckets=(0.5, 1, 2, 3, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 21600, 86400),
    registry=REGISTRY,
)
ian_undelivered_oldest = Gauge(
    "kuva_ian_undelivered_oldest_seconds",
    "Age of the oldest Instance Availability Notification a node has not taken yet "
    "(pending, being sent or failed); 0 when it has every one",
    ["node"],
    registry=REGISTRY,
)
integrity_checked = Counter(
    "kuva_integrity_checked",
    "Blob copies read back and compared with their SHA-256 (services.integrity)",
    registry=REGISTRY,
)
integrity_checked_bytes = Counter(
    "kuva_integrity_checked_bytes",
    "Bytes read back by integrity checks",
    registry=REGISTRY,
)
integrity_failures = Counter(
    "kuva_integrity_failures",
    "Integrity problems found, by kind (missing, corrupt, orphaned)",
    ["kind"],
    registry=REGISTRY,
)
integrity_repairs = Counter(
    "kuva_integrity_repairs",
    "Blob copies repaired from a good copy (missing or corrupt before)",
    registry=REGISTRY,
)
integrity_last_pass = Gauge(
    "kuva_integrity_last_full_pass_timestamp_seconds",
    "When the continuous integrity check last finished a pass over every blob (Unix time)",
    registry=REGISTRY,
)
audit_queued = Gauge(
    "kuva_audit_queued",
    "Audit records waiting for the audit trail's writer thread (services.audit_writer)",
    registry=REGISTRY,
)
audit_overflows = Counter(
    "kuva_audit_queue_overflows",
    "Audit records written on the request path because the writer's queue was full",
    registry=REGISTRY,
)
audit_lost = Counter(
    "kuva_audit_records_lost",
    "Queued audit records given up after the index refused their batch repeatedly",
    registry=REGISTRY,
)

# Per organisation (services.limits): what each one asks of this process, and what
# its limits refused.
organization_requests = Counter(
    "kuva_organization_requests",
    "Requests of each organisation, by protocol (http, dimse, hl7)",
    ["organization", "protocol"],
    registry=REGISTRY,
)
organization_limited = Counter(
    "kuva_organization_limited",
    "Requests and associations refused by an organisation's limits, by limit",
    ["organization", "limit"],
    registry=REGISTRY,
)
organization_associations = Gauge(
    "kuva_organization_associations",
    "DICOM associations of each organisation open now in this process",
    ["organization"],
    registry=REGISTRY,
)
