"""Outbox worker threads (docs/design.md principle 3).

Each worker claims one due task at a time (row lock + lease, index/outbox), runs
the handler registered for its kind and records the result. A handler that raises
is retried with exponential backoff (base * 2^(attempt-1), capped, with jitter)
until the task's ``max_attempts``, or until its ``retry_until`` for a task that
has one; then the task stays ``failed`` until an operator retries it (``kuva
tasks retry``). A kind may have its own :class:`RetryPolicy` (another backoff cap;
superseded by a newer task of its queue instead of retried). Delivery is at least
once: handlers must be idempotent.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine

from kuva import metrics
from kuva.config import TaskSettings
from kuva.index.outbox import SUPERSEDED, Task
from kuva.index.uow import UnitOfWork
from kuva.model.clock import Clock, utcnow

# Done tasks are deleted at most this often per worker, this many per transaction.
PURGE_INTERVAL_SECONDS = 3600.0
PURGE_BATCH = 10_000

log = logging.getLogger(__name__)

Handler = Callable[[Task], None]


class PermanentFailure(Exception):
    """A handler's way of saying: retrying will not help."""


@dataclass(frozen=True)
class RetryPolicy:
    """How the tasks of one kind are retried when not as ``[tasks]`` says."""

    # Retried this long after being added (whoever adds the task sets its
    # ``retry_until``; ``kuva tasks retry`` gives a failed one a new window).
    window: timedelta
    # The backoff's cap instead of ``[tasks] backoff_max_seconds``.
    backoff_max_seconds: float
    # A failed attempt with a newer task waiting in its queue ends the task as
    # superseded instead of retrying it (index.outbox).
    superseded_by_newer: bool = False


def backoff_delay(
    attempts: int,
    settings: TaskSettings,
    rng: random.Random | None = None,
    *,
    cap: float | None = None,
) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt (at most ``cap``,
    default ``backoff_max_seconds``)."""
    limit = settings.backoff_max_seconds if cap is None else cap
    # 2 ** attempts overflows a float after about a thousand: a task retried for
    # days reaches the cap long before.
    delay = settings.backoff_base_seconds * 2 ** min(max(attempts - 1, 0), 64)
    jitter = (rng or random).uniform(0.9, 1.1)
    return float(min(delay * jitter, limit))


def purge_done(engine: Engine, before: datetime) -> int:
    """Delete every task done before ``before``, PURGE_BATCH per transaction; how many.
    Pending, running and failed tasks are never deleted."""
    purged = 0
    while True:
        with UnitOfWork(engine) as uow:
            count = uow.tasks.purge_done(before=before, limit=PURGE_BATCH)
            uow.commit()
        purged += count
        if count < PURGE_BATCH:
            break
    if purged:
        log.info("deleted %d task(s) done before %s", purged, before.isoformat())
    return purged


class TaskWorkers:
    def __init__(
        self,
        engine: Engine,
        settings: TaskSettings,
        handlers: dict[str, Handler],
        *,
        policies: Mapping[str, RetryPolicy] | None = None,
        clock: Clock = utcnow,
        node_name: str = "",
        purge_duty: Callable[[float], bool] | None = None,
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._handlers = handlers
        self._policies = dict(policies or {})
        self._clock = clock
        # Whether this node purges done tasks now (one node of a cluster at a time).
        self._purge_duty = purge_duty
        # Who holds a task's lease (task.locked_by): this node and process.
        self._name = f"{node_name or socket.gethostname()}/{os.getpid()}"[-64:]
        self._wake = threading.Condition()
        self._pending_wakes = 0
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for n in range(self._settings.workers):
            thread = threading.Thread(target=self._loop, name=f"kuva-task-worker-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def wake(self, _task_pk: int | None = None) -> None:
        """Look for due work now instead of at the next poll."""
        with self._wake:
            self._pending_wakes += 1
            self._wake.notify()

    def stop(self, timeout: float = 30.0) -> None:
        self._stopping.set()
        with self._wake:
            self._wake.notify_all()
        for thread in self._threads:
            thread.join(timeout=timeout)
        self._threads.clear()

    def _loop(self) -> None:
        next_purge = time.monotonic()
        while not self._stopping.is_set():
            try:
                worked = self.run_once()
            except Exception:
                log.exception("task worker: could not take work from the outbox")
                worked = False
            if not worked and time.monotonic() >= next_purge:
                next_purge = time.monotonic() + PURGE_INTERVAL_SECONDS
                self.purge_done()
            if not worked:
                idle = self._idle_seconds()
                with self._wake:
                    if self._pending_wakes == 0 and not self._stopping.is_set():
                        self._wake.wait(idle)
                    self._pending_wakes = 0

    def _idle_seconds(self) -> float:
        """Sleep until the next task falls due, at most ``poll_seconds``: a study
        registered ``stable_seconds`` after its last instance is not late by a poll."""
        poll = self._settings.poll_seconds
        now = self._clock()
        try:
            with UnitOfWork(self._engine, write=False) as uow:
                due = uow.tasks.next_due(after=now)
        except Exception:
            log.exception("task worker: could not read the next due time")
            return poll
        if due is None:
            return poll
        return min(poll, max((due - now).total_seconds(), 0.01))

    def purge_done(self) -> int:
        """Delete the tasks done more than ``keep_done_days`` ago (each worker when
        idle, at most hourly; deleting is idempotent)."""
        if self._settings.keep_done_days <= 0:
            return 0
        if self._purge_duty is not None and not self._purge_duty(PURGE_INTERVAL_SECONDS * 1.5):
            return 0
        before = self._clock() - timedelta(days=self._settings.keep_done_days)
        try:
            return purge_done(self._engine, before)
        except Exception:
            log.exception("task worker: could not delete done tasks")
            return 0

    def run_once(self, kinds: Sequence[str] | None = None) -> bool:
        """Claim and run one due task (of ``kinds``, default every kind this worker
        handles); False when there was none."""
        now = self._clock()
        with UnitOfWork(self._engine) as uow:
            claimed = uow.tasks.claim(
                worker=self._name,
                now=now,
                lease=timedelta(seconds=self._settings.lease_seconds),
                limit=1,
                kinds=list(kinds if kinds is not None else self._handlers),
            )
            uow.commit()
        if not claimed:
            return False
        self._run(claimed[0])
        return True

    def _run(self, task: Task) -> None:
        handler = self._handlers[task.kind]
        try:
            handler(task)
        except Exception as exc:
            policy = self._policies.get(task.kind)
            now = self._clock()
            retry_at = None if isinstance(exc, PermanentFailure) else self._retry_at(task, now)
            error = f"{type(exc).__name__}: {exc}"
            with UnitOfWork(self._engine) as uow:
                recorded = uow.tasks.fail(
                    task.pk,
                    error=error,
                    now=now,
                    retry_at=retry_at,
                    worker=self._name,
                    superseded_if_newer=policy is not None and policy.superseded_by_newer,
                )
                uow.commit()
            metrics.task_runs.labels(task.kind, "error").inc()
            if recorded is None:
                log.warning("task %d: lease lost to another worker; its result stands", task.pk)
            elif recorded == SUPERSEDED:
                log.info(
                    "task %d (%s %s) attempt %d failed; a newer task of its queue replaces it: %s",
                    task.pk,
                    task.kind,
                    task.subject,
                    task.attempts,
                    error,
                )
            elif retry_at is None:
                log.error(
                    "task %d (%s %s) failed for good after %d attempt(s): %s",
                    task.pk,
                    task.kind,
                    task.subject,
                    task.attempts,
                    error,
                )
            else:
                # A task retried for days (an IAN to a node that is down) says so at
                # its first failure; its node's backlog is watched (ian_backlog).
                quiet = task.retry_until is not None and task.attempts > 1
                log.log(
                    logging.INFO if quiet else logging.WARNING,
                    "task %d (%s %s) attempt %d failed, retry at %s: %s",
                    task.pk,
                    task.kind,
                    task.subject,
                    task.attempts,
                    retry_at.isoformat(timespec="seconds"),
                    error,
                )
            return
        with UnitOfWork(self._engine) as uow:
            completed = uow.tasks.complete(task.pk, now=self._clock(), worker=self._name)
            uow.commit()
        if not completed:
            log.warning("task %d done after its lease ran out; another worker had it", task.pk)
        metrics.task_runs.labels(task.kind, "done").inc()

    def _retry_at(self, task: Task, now: datetime) -> datetime | None:
        """When to try ``task`` again after a failed attempt; None: give up. A task
        with ``retry_until`` is tried until then (the last time at that instant),
        else up to ``max_attempts``."""
        policy = self._policies.get(task.kind)
        cap = policy.backoff_max_seconds if policy is not None else None
        retry_at = now + timedelta(seconds=backoff_delay(task.attempts, self._settings, cap=cap))
        if task.retry_until is not None:
            return min(retry_at, task.retry_until) if now < task.retry_until else None
        return retry_at if task.attempts < task.max_attempts else None
