"""Prometheus metrics (served at /metrics, CONTRACT.md)."""

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
