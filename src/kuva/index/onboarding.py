"""The index's side of an organisation's acceptance test (services.onboarding): what
its systems did against the archive since a time, read where the archive recorded
it (the audit trail's part is AuditRepository.of_events_since). Every read is
bounded and goes by an indexed column: organisation, reporter or destination."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, select

from kuva.index.schema import (
    directory_organization,
    disclosure_notice,
    rejection,
    storage_commitment,
    task,
)


@dataclass(frozen=True)
class Commitment:
    transaction_uid: str
    requester_ae: str
    requested_at: datetime
    outcome: str  # pending, success, failure
    failed_count: int
    reported_at: datetime | None


@dataclass(frozen=True)
class Rejection:
    note_sop_instance_uid: str
    code: str
    rejected_at: datetime


@dataclass(frozen=True)
class Delivery:
    pk: int
    destination: str
    status: str
    last_error: str | None
    updated_at: datetime


@dataclass(frozen=True)
class Notice:
    pk: int
    received_at: datetime


class OnboardingEvidence:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def since(self, oid: str) -> datetime | None:
        """When the organisation entered the directory (its acceptance test's start)."""
        found = self.conn.execute(
            select(directory_organization.c.created_at).where(directory_organization.c.oid == oid)
        ).scalar_one_or_none()
        return found if isinstance(found, datetime) else None

    def commitments(self, oid: str, since: datetime, *, limit: int) -> list[Commitment]:
        query = (
            select(
                storage_commitment.c.transaction_uid,
                storage_commitment.c.requester_ae,
                storage_commitment.c.requested_at,
                storage_commitment.c.outcome,
                storage_commitment.c.failed_count,
                storage_commitment.c.reported_at,
            )
            .where(
                storage_commitment.c.organization_oid == oid,
                storage_commitment.c.requested_at >= since,
            )
            .order_by(storage_commitment.c.requested_at.desc())
            .limit(limit)
        )
        return [Commitment(*row) for row in self.conn.execute(query)]

    def rejections(self, oid: str, since: datetime, *, limit: int) -> list[Rejection]:
        query = (
            select(rejection.c.note_sop_instance_uid, rejection.c.code, rejection.c.rejected_at)
            .where(rejection.c.organization_oid == oid, rejection.c.rejected_at >= since)
            .order_by(rejection.c.rejected_at.desc())
            .limit(limit)
        )
        return [Rejection(*row) for row in self.conn.execute(query)]

    def deliveries(
        self, kind: str, destinations: Sequence[str], since: datetime, *, limit: int
    ) -> list[Delivery]:
        """Outbox tasks of ``kind`` to ``destinations`` (AE titles) added since."""
        if not destinations:
            return []
        query = (
            select(
                task.c.pk, task.c.destination, task.c.status, task.c.last_error, task.c.updated_at
            )
            .where(
                task.c.destination.in_(destinations),
                task.c.kind == kind,
                task.c.created_at >= since,
            )
            .order_by(task.c.pk.desc())
            .limit(limit)
        )
        return [Delivery(*row) for row in self.conn.execute(query)]

    def notices(self, oid: str, since: datetime, *, limit: int) -> list[Notice]:
        query = (
            select(disclosure_notice.c.pk, disclosure_notice.c.received_at)
            .where(disclosure_notice.c.reporter == oid, disclosure_notice.c.received_at >= since)
            .order_by(disclosure_notice.c.pk.desc())
            .limit(limit)
        )
        return [Notice(*row) for row in self.conn.execute(query)]
