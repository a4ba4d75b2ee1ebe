"""Repository of the outbox: the durable task table (docs/design.md principle 3).

A task is added in the same transaction as the change that causes it. Workers
claim due tasks with row locks (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite
has a single writer), under a lease: a task whose worker died is claimed again
when its lease runs out. Failure schedules a retry with exponential backoff until
``max_attempts``, after which the task stays ``failed`` for an operator.

Tasks that name the same ``queue`` run one at a time and in the order they were
added: a task is not claimed while an earlier task of its queue is not done
(pending, running, or failed and waiting for an operator). This is what keeps the
registrations of a study, and its IANs to one node, in order.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, delete, exists, func, or_, select, update

from kuva.index.schema import task

PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"
STATUSES = (PENDING, RUNNING, DONE, FAILED)


@dataclass(frozen=True)
class Task:
    pk: int
    kind: str
    subject: str
    payload: dict[str, Any]
    status: str
    attempts: int
    max_attempts: int
    next_attempt_at: datetime
    last_error: str | None
    created_at: datetime
    updated_at: datetime


# Subjects per statement of ``schedule_once_many`` (bound parameters are capped).
_SUBJECT_CHUNK = 500

_COLUMNS = (
    task.c.pk,
    task.c.kind,
    task.c.subject,
    task.c.payload,
    task.c.status,
    task.c.attempts,
    task.c.max_attempts,
    task.c.next_attempt_at,
    task.c.last_error,
    task.c.created_at,
    task.c.updated_at,
)


def _task(row: Any) -> Task:
    values = list(row)
    values[3] = json.loads(values[3])
    return Task(*values)


class TaskRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def add(
        self,
        kind: str,
        *,
        subject: str,
        payload: dict[str, Any],
        now: datetime,
        max_attempts: int,
        run_at: datetime | None = None,
        queue: str | None = None,
    ) -> int:
        result = self.conn.execute(
            task.insert()
            .values(
                kind=kind,
                subject=subject,
                queue=queue,
                payload=json.dumps(payload, separators=(",", ":")),
                status=PENDING,
                attempts=0,
                max_attempts=max_attempts,
                next_attempt_at=run_at or now,
                created_at=now,
                updated_at=now,
            )
            .returning(task.c.pk)
        )
        return int(result.scalar_one())

    def claim(
        self,
        *,
        worker: str,
        now: datetime,
        lease: timedelta,
        limit: int,
        kinds: Sequence[str] | None = None,
        pk: int | None = None,
    ) -> list[Task]:
        """Take up to ``limit`` due tasks for ``worker``, locked for ``lease``.

        A running task whose lease ran out (its worker died, or its attempt outlasted
        the lease) is taken again, unless that was its last attempt: then it is left
        failed, so that a task never gets more than ``max_attempts``."""
        self.conn.execute(
            update(task)
            .where(
                task.c.status == RUNNING,
                task.c.locked_until < now,
                task.c.attempts >= task.c.max_attempts,
            )
            .values(
                status=FAILED,
                locked_by=None,
                locked_until=None,
                last_error="the lease ran out during the last attempt",
                updated_at=now,
            )
        )
        due = or_(
            and_(task.c.status == PENDING, task.c.next_attempt_at <= now),
            and_(
                task.c.status == RUNNING,
                task.c.locked_until < now,
                task.c.attempts < task.c.max_attempts,
            ),
        )
        earlier = task.alias("earlier")
        waiting = exists().where(
            earlier.c.queue == task.c.queue, earlier.c.pk < task.c.pk, earlier.c.status != DONE
        )
        query = select(task.c.pk).where(due, or_(task.c.queue.is_(None), ~waiting))
        if kinds is not None:
            query = query.where(task.c.kind.in_(kinds))
        if pk is not None:
            query = query.where(task.c.pk == pk)
        query = (
            query.order_by(task.c.next_attempt_at, task.c.pk)
            .limit(limit)
            .with_for_update(skip_locked=True, of=task)
        )
        pks = list(self.conn.execute(query).scalars())
        if not pks:
            return []
        self.conn.execute(
            update(task)
            .where(task.c.pk.in_(pks))
            .values(
                status=RUNNING,
                locked_by=worker,
                locked_until=now + lease,
                attempts=task.c.attempts + 1,
                updated_at=now,
            )
        )
        rows = self.conn.execute(select(*_COLUMNS).where(task.c.pk.in_(pks)).order_by(task.c.pk))
        return [_task(row) for row in rows]

    def complete(self, pk: int, *, now: datetime, worker: str | None = None) -> bool:
        """Mark done; with ``worker``, only while that worker still holds the task."""
        query = update(task).where(task.c.pk == pk)
        if worker is not None:
            query = query.where(task.c.locked_by == worker)
        result = self.conn.execute(
            query.values(
                status=DONE, locked_by=None, locked_until=None, last_error=None, updated_at=now
            )
        )
        return bool(result.rowcount)

    def purge_done(self, *, before: datetime, limit: int = 10_000) -> int:
        """Delete up to ``limit`` tasks done before ``before``; how many. A done task
        fell due before it finished, so the (status, next_attempt_at) index finds
        them without a scan of the table."""
        doomed = (
            select(task.c.pk)
            .where(
                task.c.status == DONE,
                task.c.next_attempt_at < before,
                task.c.updated_at < before,
            )
            .limit(limit)
        )
        result = self.conn.execute(delete(task).where(task.c.pk.in_(doomed.scalar_subquery())))
        return int(result.rowcount)

    def fail(
        self,
        pk: int,
        *,
        error: str,
        now: datetime,
        retry_at: datetime | None,
        worker: str | None = None,
    ) -> bool:
        """Record a failed attempt: retry at ``retry_at``, or give up when None."""
        values: dict[str, Any] = {
            "locked_by": None,
            "locked_until": None,
            "last_error": error[:4000],
            "updated_at": now,
        }
        if retry_at is None:
            values["status"] = FAILED
        else:
            values["status"] = PENDING
            values["next_attempt_at"] = retry_at
        query = update(task).where(task.c.pk == pk)
        if worker is not None:
            query = query.where(task.c.locked_by == worker)
        return bool(self.conn.execute(query.values(**values)).rowcount)

    def schedule_once(
        self,
        kind: str,
        *,
        subject: str,
        queue: str,
        payload: dict[str, Any],
        now: datetime,
        run_at: datetime,
        max_attempts: int,
    ) -> int:
        """``schedule_once_many`` for one subject; returns its task's key."""
        keys = self.schedule_once_many(
            kind,
            subjects=[subject],
            queue_of=lambda _: queue,
            payload=payload,
            now=now,
            run_at=run_at,
            max_attempts=max_attempts,
        )
        return keys[subject]

    def schedule_once_many(
        self,
        kind: str,
        *,
        subjects: Sequence[str],
        queue_of: Callable[[str], str],
        payload: dict[str, Any],
        now: datetime,
        run_at: datetime,
        max_attempts: int,
    ) -> dict[str, int]:
        """Debounce: the one waiting task of ``kind`` for each subject now runs at ``run_at``.

        A pending task is moved; a failed one is taken up again from its first
        attempt; either starts over with ``payload``. With neither (none yet, or
        the last one running or done) a new task is added in ``queue_of(subject)``.
        A running task keeps running: the new one waits behind it in its queue.
        Set-based: a few statements per 500 subjects, whatever their number (one
        UPDATE in the usual case of a single subject that has a waiting task).
        Returns each subject's task key.
        """
        body = json.dumps(payload, separators=(",", ":"))
        restart = {"status": PENDING, "next_attempt_at": run_at, "payload": body, "updated_at": now}
        keys: dict[str, int] = {}
        unique = list(dict.fromkeys(subjects))
        for i in range(0, len(unique), _SUBJECT_CHUNK):
            chunk = unique[i : i + _SUBJECT_CHUNK]
            # At most one task of a kind and subject is pending or failed.
            for status, values in (
                (PENDING, restart),
                (FAILED, {**restart, "attempts": 0, "last_error": None}),
            ):
                left = [subject for subject in chunk if subject not in keys]
                if not left:
                    break
                # Only while it is waiting: a worker may have claimed it meanwhile.
                moved = self.conn.execute(
                    update(task)
                    .where(task.c.kind == kind, task.c.status == status)
                    .where(task.c.subject.in_(left) if len(left) > 1 else task.c.subject == left[0])
                    .values(**values)
                    .returning(task.c.subject, task.c.pk)
                )
                keys.update({row.subject: int(row.pk) for row in moved})
            new = [subject for subject in chunk if subject not in keys]
            if new:
                added = self.conn.execute(
                    task.insert().returning(
                        task.c.subject, task.c.pk, sort_by_parameter_order=True
                    ),
                    [
                        {
                            "kind": kind,
                            "subject": subject,
                            "queue": queue_of(subject),
                            "payload": body,
                            "status": PENDING,
                            "attempts": 0,
                            "max_attempts": max_attempts,
                            "next_attempt_at": run_at,
                            "created_at": now,
                            "updated_at": now,
                        }
                        for subject in new
                    ],
                )
                keys.update({row.subject: int(row.pk) for row in added})
        return keys

    def bring_forward(self, kind: str, *, subject: str, now: datetime) -> bool:
        """A pending task of ``kind`` for ``subject`` due later becomes due now."""
        result = self.conn.execute(
            update(task)
            .where(
                task.c.kind == kind,
                task.c.subject == subject,
                task.c.status == PENDING,
                task.c.next_attempt_at > now,
            )
            .values(next_attempt_at=now, updated_at=now)
        )
        return bool(result.rowcount)

    def next_due(self, after: datetime) -> datetime | None:
        """When the earliest pending task due after ``after`` falls due (index on
        status, next_attempt_at). Tasks already due are left out: those a worker
        could not claim wait for an earlier task of their queue."""
        return self.conn.execute(
            select(func.min(task.c.next_attempt_at)).where(
                task.c.status == PENDING, task.c.next_attempt_at > after
            )
        ).scalar()

    def retry(
        self, *, now: datetime, pks: Sequence[int] | None = None, kind: str | None = None
    ) -> int:
        """Operator retry: failed tasks (all, by key or by kind) become due now."""
        query = update(task).where(task.c.status == FAILED)
        if pks is not None:
            query = query.where(task.c.pk.in_(pks))
        if kind is not None:
            query = query.where(task.c.kind == kind)
        result = self.conn.execute(
            query.values(status=PENDING, attempts=0, next_attempt_at=now, updated_at=now)
        )
        return int(result.rowcount)

    def set_payload(self, pk: int, payload: dict[str, Any]) -> None:
        self.conn.execute(
            update(task)
            .where(task.c.pk == pk)
            .values(payload=json.dumps(payload, separators=(",", ":")))
        )

    def get(self, pk: int) -> Task | None:
        row = self.conn.execute(select(*_COLUMNS).where(task.c.pk == pk)).one_or_none()
        return _task(row) if row is not None else None

    def list(
        self,
        *,
        status: str | None = None,
        kind: str | None = None,
        subject: str | None = None,
        limit: int = 100,
    ) -> list[Task]:
        query = select(*_COLUMNS)
        if status is not None:
            query = query.where(task.c.status == status)
        if kind is not None:
            query = query.where(task.c.kind == kind)
        if subject is not None:
            query = query.where(task.c.subject == subject)
        query = query.order_by(task.c.pk.desc()).limit(limit)
        return [_task(row) for row in self.conn.execute(query)]

    def counts(self) -> dict[tuple[str, str], int]:
        """Number of tasks by (kind, status)."""
        rows = self.conn.execute(
            select(task.c.kind, task.c.status, func.count()).group_by(task.c.kind, task.c.status)
        )
        return {(kind, status): int(n) for kind, status, n in rows}
