"""Storage Commitment (PS3.4 Annex J, Push Model): where the archive takes over
legal responsibility for the images.

A request is recorded together with its report task in one transaction and
answered at once. The task then reads every referenced object back from the blob
store, recomputes its SHA-256 and checks its SOP Class, and only an object that
passed is reported as committed; with a replica, both copies must pass. The
report goes out through a ``ReportSender`` (the DICOM adapter: N-EVENT-REPORT on
the requesting association, or a new one); delivery is retried from the outbox
until it succeeds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import Engine

from kuva import metrics
from kuva.index.outbox import Task
from kuva.index.uow import UnitOfWork
from kuva.model.clock import Clock, utcnow
from kuva.services import integrity
from kuva.storage import BlobStore

log = logging.getLogger(__name__)

TASK_KIND = "storage-commitment"

# Failure Reason (0008,1197) values, PS3.4 J.3.3 / C.4.2.1.1 status codes.
PROCESSING_FAILURE = 0x0110  # read back failed, or the bytes no longer match their hash
NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119


@dataclass(frozen=True)
class Reference:
    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class CommitmentRequest:
    transaction_uid: str
    requester_ae: str
    organization_oid: str
    references: tuple[Reference, ...]


@dataclass(frozen=True)
class FailedReference:
    sop_class_uid: str
    sop_instance_uid: str
    reason: int


@dataclass(frozen=True)
class CommitmentReport:
    """The content of the N-EVENT-REPORT (PS3.4 J.3.3)."""

    transaction_uid: str
    requester_ae: str
    committed: tuple[Reference, ...]
    failed: tuple[FailedReference, ...] = field(default=())

    @property
    def event_type(self) -> int:
        """1: all committed; 2: failures exist (PS3.4 J.3.3.1)."""
        return 2 if self.failed else 1

    def to_json(self) -> dict[str, Any]:
        return {
            "success": [[r.sop_class_uid, r.sop_instance_uid] for r in self.committed],
            "failed": [[f.sop_class_uid, f.sop_instance_uid, f.reason] for f in self.failed],
        }

    @classmethod
    def from_json(
        cls, transaction_uid: str, requester_ae: str, data: dict[str, Any]
    ) -> CommitmentReport:
        return cls(
            transaction_uid=transaction_uid,
            requester_ae=requester_ae,
            committed=tuple(Reference(c, i) for c, i in data["success"]),
            failed=tuple(FailedReference(c, i, int(r)) for c, i, r in data["failed"]),
        )


class ReportSender(Protocol):
    def send_commitment_report(self, report: CommitmentReport) -> None:
        """Deliver the report to the requester; raise when it could not be delivered."""


class CommitmentService:
    def __init__(
        self,
        engine: Engine,
        blobs: BlobStore,
        *,
        max_attempts: int,
        clock: Clock = utcnow,
        on_enqueued: Callable[[int], None] | None = None,
    ) -> None:
        self._engine = engine
        self._blobs = blobs
        self._max_attempts = max_attempts
        self._clock = clock
        self.on_enqueued = on_enqueued
        self.sender: ReportSender | None = None
        # Runs in the transaction that records a verification, with the SOP
        # Instance UIDs it committed (services.registration registers the studies
        # it covers at once).
        self.on_verified: Callable[[UnitOfWork, list[str]], None] | None = None

    def request(self, request: CommitmentRequest) -> int:
        """Record the request and its report task (one transaction); return the task key.

        A Transaction UID seen before is answered again with a fresh verification.
        """
        now = self._clock()
        with UnitOfWork(self._engine) as uow:
            first = uow.commitments.add(
                transaction_uid=request.transaction_uid,
                requester_ae=request.requester_ae,
                organization_oid=request.organization_oid,
                requested_at=now,
                instance_count=len(request.references),
            )
            if not first:
                log.info(
                    "storage commitment %s requested again by %s",
                    request.transaction_uid,
                    request.requester_ae,
                )
            task_pk = uow.tasks.add(
                TASK_KIND,
                subject=request.transaction_uid,
                payload={
                    "transaction_uid": request.transaction_uid,
                    "requester_ae": request.requester_ae,
                    "organization_oid": request.organization_oid,
                    "references": [
                        [r.sop_class_uid, r.sop_instance_uid] for r in request.references
                    ],
                },
                now=now,
                max_attempts=self._max_attempts,
                destination=request.requester_ae,
            )
            uow.commit()
        log.info(
            "storage commitment %s from %s: %d instance(s) to verify",
            request.transaction_uid,
            request.requester_ae,
            len(request.references),
        )
        if self.on_enqueued is not None:
            self.on_enqueued(task_pk)
        return task_pk

    def verify(self, request: CommitmentRequest) -> CommitmentReport:
        """Read back every referenced object and check it against the index."""
        with UnitOfWork(self._engine, write=False) as uow:
            stored = uow.instances.get_many(r.sop_instance_uid for r in request.references)
        committed: list[Reference] = []
        failed: list[FailedReference] = []
        for ref in request.references:
            instance = stored.get(ref.sop_instance_uid)
            reason: int | None = None
            if instance is None or instance.organization_oid != request.organization_oid:
                # Another organisation's instance is not this requester's to commit.
                reason = NO_SUCH_OBJECT_INSTANCE
            elif instance.sop_class_uid != ref.sop_class_uid:
                reason = CLASS_INSTANCE_CONFLICT
            elif not self._intact(instance.blob_key, instance.sha256, instance.size):
                reason = PROCESSING_FAILURE
            if reason is None:
                committed.append(ref)
            else:
                failed.append(FailedReference(ref.sop_class_uid, ref.sop_instance_uid, reason))
        return CommitmentReport(
            transaction_uid=request.transaction_uid,
            requester_ae=request.requester_ae,
            committed=tuple(committed),
            failed=tuple(failed),
        )

    def _intact(self, key: str, sha256: str, size: int) -> bool:
        """Every copy (the primary and, when configured, the replica) reads back with
        its recorded hash and size (docs/design.md principle 2)."""
        bad = integrity.copy_problems(self._blobs, key, sha256, size)
        for name, _copy, problem, detail in bad:
            log.error("integrity: %s copy of blob %s is %s (%s)", name, key, problem.value, detail)
        return not bad

    def run_task(self, task: Task) -> None:
        """Outbox handler: verify once, record the result, deliver the report."""
        payload = task.payload
        request = CommitmentRequest(
            transaction_uid=payload["transaction_uid"],
            requester_ae=payload["requester_ae"],
            organization_oid=payload["organization_oid"],
            references=tuple(Reference(c, i) for c, i in payload["references"]),
        )
        report = self._verified_report(task, request)
        if self.sender is None:
            raise RuntimeError("no report sender configured")
        self.sender.send_commitment_report(report)
        with UnitOfWork(self._engine) as uow:
            uow.commitments.mark_reported(request.transaction_uid, reported_at=self._clock())
            uow.commit()
        log.info(
            "storage commitment %s reported to %s (event type %d)",
            request.transaction_uid,
            request.requester_ae,
            report.event_type,
        )

    def _verified_report(self, task: Task, request: CommitmentRequest) -> CommitmentReport:
        # The result of a verification is kept with the task: a retried delivery
        # sends the same report instead of verifying again.
        if "result" in task.payload:
            return CommitmentReport.from_json(
                request.transaction_uid, request.requester_ae, task.payload["result"]
            )
        report = self.verify(request)
        outcome = "failure" if report.failed else "success"
        metrics.commitments.labels(outcome).inc()
        with UnitOfWork(self._engine) as uow:
            uow.commitments.record_result(
                request.transaction_uid,
                outcome=outcome,
                failed_count=len(report.failed),
                result=report.to_json(),
                verified_at=self._clock(),
            )
            uow.tasks.set_payload(task.pk, {**task.payload, "result": report.to_json()})
            if self.on_verified is not None and report.committed:
                self.on_verified(uow, [ref.sop_instance_uid for ref in report.committed])
            uow.commit()
        if report.failed:
            log.warning(
                "storage commitment %s: %d of %d instance(s) failed",
                request.transaction_uid,
                len(report.failed),
                len(request.references),
            )
        return report
