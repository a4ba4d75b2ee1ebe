"""Repository of Storage Commitment requests (PS3.4 J.3)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select, update

from kuva.index.dialect import insert_ignoring_conflict
from kuva.index.schema import storage_commitment


@dataclass(frozen=True)
class CommitmentRecord:
    transaction_uid: str
    requester_ae: str
    organization_oid: str
    requested_at: datetime
    instance_count: int
    outcome: str
    failed_count: int
    verified_at: datetime | None
    result: dict[str, Any] | None
    reported_at: datetime | None


class CommitmentRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def add(
        self,
        *,
        transaction_uid: str,
        requester_ae: str,
        organization_oid: str,
        requested_at: datetime,
        instance_count: int,
    ) -> bool:
        """Record a request; False when the Transaction UID was already used."""
        pk = insert_ignoring_conflict(
            self.conn,
            storage_commitment,
            {
                "transaction_uid": transaction_uid,
                "requester_ae": requester_ae,
                "organization_oid": organization_oid,
                "requested_at": requested_at,
                "instance_count": instance_count,
            },
            ["transaction_uid"],
        )
        return pk is not None

    def get(self, transaction_uid: str) -> CommitmentRecord | None:
        c = storage_commitment.c
        row = self.conn.execute(
            select(
                c.transaction_uid,
                c.requester_ae,
                c.organization_oid,
                c.requested_at,
                c.instance_count,
                c.outcome,
                c.failed_count,
                c.verified_at,
                c.result_json,
                c.reported_at,
            ).where(c.transaction_uid == transaction_uid)
        ).one_or_none()
        if row is None:
            return None
        values = list(row)
        values[8] = json.loads(values[8]) if values[8] else None
        return CommitmentRecord(*values)

    def record_result(
        self,
        transaction_uid: str,
        *,
        outcome: str,
        failed_count: int,
        result: dict[str, Any],
        verified_at: datetime,
    ) -> None:
        self.conn.execute(
            update(storage_commitment)
            .where(storage_commitment.c.transaction_uid == transaction_uid)
            .values(
                outcome=outcome,
                failed_count=failed_count,
                verified_at=verified_at,
                result_json=json.dumps(result, separators=(",", ":")),
            )
        )

    def mark_reported(self, transaction_uid: str, *, reported_at: datetime) -> None:
        self.conn.execute(
            update(storage_commitment)
            .where(storage_commitment.c.transaction_uid == transaction_uid)
            .values(reported_at=reported_at)
        )
