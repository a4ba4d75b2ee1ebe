"""Repository of the outbox: the durable task table (docs/design.md principle 3).

A task is added in the same transaction as the change that causes it. Workers
claim due tasks with row locks (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite
has a single writer), under a lease: a task whose worker died is claimed again
when its lease runs out. Failure schedules a retry with exponential backoff until
``max_attempts`` (or, for a task with ``retry_until``, until that time), after
which the task stays ``failed`` for an operator.

Tasks that name the same ``queue`` run one at a time and in the order they were
added: a task is not claimed while an earlier task of its queue is not finished
(pending, running, or failed and waiting for an operator). This is what keeps the
registrations of a study in order. Where only the newest task of a queue matters
(the IANs of a study to one node: each tells the whole current state), the newer
one *supersedes* the older ones still waiting (``supersede``, and ``fail`` with
``superseded_if_newer`` for one that was running meanwhile), so that a task that
keeps failing never holds back the rest of its queue.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    literal,
    or_,
    select,
    update,
)

from kuva.index.schema import UtcDateTime, task

PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"
SUPERSEDED = "superseded"  # a newer task of its queue does its work
STATUSES = (PENDING, RUNNING, DONE, FAILED, SUPERSEDED)
FINISHED = (DONE, SUPERSEDED)
UNDELIVERED = (PENDING, RUNNING, FAILED)


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
    retry_until: datetime | None = None
    destination: str | None = None
    # The node and process (``node/pid``) that holds the task's lease or last ran
    # it: kept when it completes or fails, so each task names who did it.
    run_by: str | None = None


# Subjects per statement of ``schedule_once_many`` (bound parameters are capped).
_SUBJECT_CHUNK = 500


def _restart(status: str, *, revive: bool) -> Any:
    """The waiting tasks of a kind and subjects start over (``schedule_once_many``,
    whose one-subject case every C-STORE runs: built once, not per instance; the
    subjects are an expanding IN parameter)."""
    values: dict[str, Any] = {
        "status": PENDING,
        "next_attempt_at": bindparam("b_run_at", type_=UtcDateTime()),
        "payload": bindparam("b_payload"),
        "updated_at": bindparam("b_now", type_=UtcDateTime()),
    }
    if revive:
        values |= {"attempts": 0, "last_error": None}
    return (
        update(task)
        .where(
            task.c.kind == bindparam("b_kind"),
            task.c.status == status,
            task.c.subject.in_(bindparam("b_subjects", expanding=True)),
        )
        .values(values)
        .returning(task.c.subject, task.c.pk)
    )


_RESTART = {PENDING: _restart(PENDING, revive=False), FAILED: _restart(FAILED, revive=True)}

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
    task.c.retry_until,
    task.c.destination,
    task.c.locked_by,
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
        destination: str | None = None,
        retry_until: datetime | None = None,
    ) -> int:
        """A new pending task; with ``retry_until``, retried until then whatever
        ``max_attempts`` (give 0)."""
        result = self.conn.execute(
            task.insert()
            .values(
                kind=kind,
                subject=subject,
                queue=queue,
                destination=destination,
                retry_until=retry_until,
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
        failed, so that a task never gets more than ``max_attempts`` (or attempts
        after its ``retry_until``)."""
        exhausted = or_(
            and_(task.c.retry_until.is_(None), task.c.attempts >= task.c.max_attempts),
            # Not NULL-safe without is_not: ``~exhausted`` must be true or false.
            and_(task.c.retry_until.is_not(None), task.c.retry_until <= now),
        )
        self.conn.execute(
            update(task)
            .where(task.c.status == RUNNING, task.c.locked_until < now, exhausted)
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
            and_(task.c.status == RUNNING, task.c.locked_until < now, ~exhausted),
        )
        earlier = task.alias("earlier")
        waiting = exists().where(
            earlier.c.queue == task.c.queue,
            earlier.c.pk < task.c.pk,
            earlier.c.status.not_in(FINISHED),
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
            query.values(status=DONE, locked_until=None, last_error=None, updated_at=now)
        )
        return bool(result.rowcount)

    def purge_done(self, *, before: datetime, limit: int = 10_000) -> int:
        """Delete up to ``limit`` tasks done or superseded before ``before``; how
        many. A finished task fell due before it finished (``supersede`` sees to
        it), so the (status, next_attempt_at) index finds them without a scan of the
        table."""
        doomed = (
            select(task.c.pk)
            .where(
                task.c.status.in_(FINISHED),
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
        superseded_if_newer: bool = False,
    ) -> str | None:
        """Record a failed attempt: retry at ``retry_at``, or give up when None;
        with ``superseded_if_newer``, neither when a later task of its queue is
        waiting: the task is superseded. The status recorded, or None when
        ``worker`` no longer held the task."""
        values: dict[str, Any] = {
            "locked_until": None,
            "last_error": error[:4000],
            "updated_at": now,
        }
        if superseded_if_newer and self._newer_waiting(pk):
            values["status"] = SUPERSEDED
            values["next_attempt_at"] = now
        elif retry_at is None:
            values["status"] = FAILED
        else:
            values["status"] = PENDING
            values["next_attempt_at"] = retry_at
        query = update(task).where(task.c.pk == pk)
        if worker is not None:
            query = query.where(task.c.locked_by == worker)
        recorded = self.conn.execute(query.values(**values)).rowcount
        return str(values["status"]) if recorded else None

    def _newer_waiting(self, pk: int) -> bool:
        """Whether a task added after ``pk`` to its queue is not finished."""
        this = task.alias("this")
        later = (
            select(task.c.pk)
            .join(this, this.c.queue == task.c.queue)
            .where(this.c.pk == pk, task.c.pk > pk, task.c.status.not_in(FINISHED))
            .limit(1)
        )
        return self.conn.execute(later).first() is not None

    def supersede(self, queue: str, *, newer: int, now: datetime) -> list[int]:
        """The tasks of ``queue`` added before task ``newer`` and still waiting
        (pending or failed) are superseded by it: they will not run. A running one
        is left to finish (``fail`` with ``superseded_if_newer`` ends it if it
        fails). The keys superseded."""
        result = self.conn.execute(
            update(task)
            .where(task.c.queue == queue, task.c.pk < newer, task.c.status.in_((PENDING, FAILED)))
            .values(
                status=SUPERSEDED,
                next_attempt_at=now,
                locked_by=None,
                locked_until=None,
                updated_at=now,
            )
            .returning(task.c.pk)
        )
        return sorted(int(pk) for pk in result.scalars())

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
        keys: dict[str, int] = {}
        unique = list(dict.fromkeys(subjects))
        for i in range(0, len(unique), _SUBJECT_CHUNK):
            chunk = unique[i : i + _SUBJECT_CHUNK]
            # At most one task of a kind and subject is pending or failed.
            for status in (PENDING, FAILED):  # a failed one from its first attempt
                left = [subject for subject in chunk if subject not in keys]
                if not left:
                    break
                # Only while it is waiting: a worker may have claimed it meanwhile.
                moved = self.conn.execute(
                    _RESTART[status],
                    {
                        "b_kind": kind,
                        "b_subjects": left,
                        "b_run_at": run_at,
                        "b_payload": body,
                        "b_now": now,
                    },
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
        self,
        *,
        now: datetime,
        pks: Sequence[int] | None = None,
        kind: str | None = None,
        destination: str | None = None,
        windows: Mapping[str, timedelta] | None = None,
    ) -> int:
        """Operator retry: failed tasks (all, by key, by kind) become due now, their
        attempts starting over; with ``destination``, every undelivered task to that
        node, pending ones waiting out a backoff as well as failed ones (the node is
        back). A task of a kind in ``windows`` that retries until a time gets a new
        one, ``now`` + its window. How many."""
        waiting = (PENDING, FAILED) if destination is not None else (FAILED,)
        query = update(task).where(task.c.status.in_(waiting))
        if pks is not None:
            query = query.where(task.c.pk.in_(pks))
        if kind is not None:
            query = query.where(task.c.kind == kind)
        if destination is not None:
            query = query.where(task.c.destination == destination)
        values: dict[str, Any] = {
            "status": PENDING,
            "attempts": 0,
            "next_attempt_at": now,
            "updated_at": now,
        }
        if windows:
            values["retry_until"] = case(
                *(
                    (
                        and_(task.c.kind == k, task.c.retry_until.is_not(None)),
                        literal(now + window, UtcDateTime()),
                    )
                    for k, window in windows.items()
                ),
                else_=task.c.retry_until,
            )
        return int(self.conn.execute(query.values(**values)).rowcount)

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
        destination: str | None = None,
        limit: int = 100,
        before: int | None = None,
    ) -> list[Task]:
        """Newest first; ``before``: only tasks with a lower key (the next page)."""
        query = select(*_COLUMNS)
        if before is not None:
            query = query.where(task.c.pk < before)
        if status is not None:
            query = query.where(task.c.status == status)
        if kind is not None:
            query = query.where(task.c.kind == kind)
        if subject is not None:
            query = query.where(task.c.subject == subject)
        if destination is not None:
            query = query.where(task.c.destination == destination)
        query = query.order_by(task.c.pk.desc()).limit(limit)
        return [_task(row) for row in self.conn.execute(query)]

    def counts(self) -> dict[tuple[str, str], int]:
        """Number of tasks by (kind, status)."""
        rows = self.conn.execute(
            select(task.c.kind, task.c.status, func.count()).group_by(task.c.kind, task.c.status)
        )
        return {(kind, status): int(n) for kind, status, n in rows}

    def oldest_undelivered(self, kind: str) -> dict[str, datetime]:
        """Per destination, when its oldest undelivered (pending, running or failed)
        task of ``kind`` was added (index on kind, status)."""
        rows = self.conn.execute(
            select(task.c.destination, func.min(task.c.created_at))
            .where(
                task.c.kind == kind,
                task.c.status.in_(UNDELIVERED),
                task.c.destination.is_not(None),
            )
            .group_by(task.c.destination)
        )
        return {str(destination): oldest for destination, oldest in rows}
