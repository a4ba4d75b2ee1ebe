"""The outbox on SQLite and PostgreSQL: TaskRepository and the worker loop."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, column, insert, select, table, update

from kuva.config import TaskSettings
from kuva.index import schema
from kuva.index.database import downgrade, make_engine, migrate
from kuva.index.outbox import DONE, FAILED, PENDING, RUNNING, SUPERSEDED, Task
from kuva.index.uow import UnitOfWork
from kuva.tasks.worker import (
    PermanentFailure,
    RetryPolicy,
    TaskWorkers,
    backoff_delay,
    purge_done,
)

START = datetime(2026, 3, 14, 9, 0, tzinfo=UTC)
NEW_COLUMNS = {"retry_until", "destination"}  # migration 0017
LEASE = timedelta(minutes=5)


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def add_task(
    engine: Engine,
    kind: str = "demo",
    *,
    subject: str = "s",
    now: datetime = START,
    max_attempts: int = 3,
    run_at: datetime | None = None,
    payload: dict[str, Any] | None = None,
    queue: str | None = None,
    destination: str | None = None,
    retry_until: datetime | None = None,
) -> int:
    """Add one task in its own transaction."""
    with UnitOfWork(engine) as uow:
        pk = uow.tasks.add(
            kind,
            subject=subject,
            payload=payload or {"n": 1},
            now=now,
            max_attempts=max_attempts,
            run_at=run_at,
            queue=queue,
            destination=destination,
            retry_until=retry_until,
        )
        uow.commit()
    return pk


def claim(
    engine: Engine,
    now: datetime,
    *,
    limit: int = 10,
    kinds: list[str] | None = None,
    worker: str = "w1",
) -> list[Task]:
    """Claim due tasks in their own transaction."""
    with UnitOfWork(engine) as uow:
        tasks = uow.tasks.claim(worker=worker, now=now, lease=LEASE, limit=limit, kinds=kinds)
        uow.commit()
    return tasks


def get(engine: Engine, pk: int) -> Task:
    """The task with key ``pk`` (it must exist)."""
    with UnitOfWork(engine, write=False) as uow:
        task = uow.tasks.get(pk)
    assert task is not None
    return task


def test_add_and_get(engine: Engine) -> None:
    """A new task is pending, due at once, with its payload round-tripped."""
    pk = add_task(engine, subject="1.2.3", payload={"uids": ["1.2.3"], "ä": "ö"})
    task = get(engine, pk)
    assert task.kind == "demo"
    assert task.subject == "1.2.3"
    assert task.payload == {"uids": ["1.2.3"], "ä": "ö"}
    assert task.status == PENDING
    assert task.attempts == 0
    assert task.max_attempts == 3
    assert task.next_attempt_at == START
    assert task.created_at == START == task.updated_at
    assert task.last_error is None
    with UnitOfWork(engine, write=False) as uow:
        assert uow.tasks.get(pk + 1000) is None


def test_claim_only_due_tasks(engine: Engine) -> None:
    """Claim takes due tasks only, marks them running and counts the attempt."""
    due = add_task(engine)
    later = add_task(engine, run_at=START + timedelta(minutes=2))
    claimed = claim(engine, START)
    assert [t.pk for t in claimed] == [due]
    assert claimed[0].status == RUNNING
    assert claimed[0].attempts == 1
    assert get(engine, later).status == PENDING
    assert claim(engine, START + timedelta(minutes=1)) == []  # the running one is leased
    claimed = claim(engine, START + timedelta(minutes=2))  # the first is still leased
    assert [t.pk for t in claimed] == [later]


def test_claim_orders_and_limits(engine: Engine) -> None:
    """The longest-due tasks come first, at most ``limit`` at a time."""
    pks = [add_task(engine, run_at=START - timedelta(minutes=n)) for n in range(4)]
    first = claim(engine, START, limit=2)
    assert {t.pk for t in first} == {pks[3], pks[2]}
    second = claim(engine, START, limit=10)
    assert {t.pk for t in second} == {pks[1], pks[0]}


def test_expired_lease_is_claimed_again(engine: Engine) -> None:
    """A running task whose worker vanished is claimed again after its lease."""
    pk = add_task(engine)
    assert [t.pk for t in claim(engine, START, worker="dead")] == [pk]
    assert claim(engine, START + LEASE - timedelta(seconds=1), worker="w2") == []
    again = claim(engine, START + LEASE + timedelta(seconds=1), worker="w2")
    assert [t.pk for t in again] == [pk]
    assert again[0].attempts == 2
    assert again[0].status == RUNNING


def test_a_lease_run_out_on_the_last_attempt_leaves_the_task_failed(engine: Engine) -> None:
    """A task never gets more than max_attempts: one whose lease ran out during its
    last attempt (a worker died, or the attempt outlasted the lease) is failed, not
    taken a third time; the slow worker's late outcome changes nothing."""
    pk = add_task(engine, max_attempts=2)
    claim(engine, START, worker="slow")
    later = START + LEASE + timedelta(seconds=1)
    assert [t.attempts for t in claim(engine, later, worker="w2")] == [2]
    latest = later + LEASE + timedelta(seconds=1)
    assert claim(engine, latest, worker="w3") == []
    task = get(engine, pk)
    assert (task.status, task.attempts) == (FAILED, 2)
    assert task.last_error == "the lease ran out during the last attempt"
    with UnitOfWork(engine) as uow:
        assert not uow.tasks.complete(pk, now=latest, worker="slow")
        uow.commit()
    assert get(engine, pk).status == FAILED


def test_complete(engine: Engine) -> None:
    """A completed task is done and never claimed again."""
    pk = add_task(engine)
    claim(engine, START)
    with UnitOfWork(engine) as uow:
        uow.tasks.complete(pk, now=START + timedelta(seconds=2))
        uow.commit()
    task = get(engine, pk)
    assert task.status == DONE
    assert task.updated_at == START + timedelta(seconds=2)
    assert claim(engine, START + timedelta(days=1)) == []


def test_fail_with_retry_schedules_later(engine: Engine) -> None:
    """fail() with retry_at makes the task pending, not claimable before then."""
    pk = add_task(engine)
    claim(engine, START)
    retry_at = START + timedelta(seconds=30)
    with UnitOfWork(engine) as uow:
        uow.tasks.fail(pk, error="peer refused", now=START, retry_at=retry_at)
        uow.commit()
    task = get(engine, pk)
    assert task.status == PENDING
    assert task.next_attempt_at == retry_at
    assert task.last_error == "peer refused"
    assert claim(engine, retry_at - timedelta(seconds=1)) == []
    claimed = claim(engine, retry_at)
    assert [t.pk for t in claimed] == [pk]
    assert claimed[0].attempts == 2


def test_fail_for_good(engine: Engine) -> None:
    """fail() without retry_at leaves the task failed; long errors are cut."""
    pk = add_task(engine)
    claim(engine, START)
    with UnitOfWork(engine) as uow:
        uow.tasks.fail(pk, error="x" * 5000, now=START, retry_at=None)
        uow.commit()
    task = get(engine, pk)
    assert task.status == FAILED
    assert task.last_error == "x" * 4000
    assert claim(engine, START + timedelta(days=365)) == []


def test_retry_failed_tasks(engine: Engine) -> None:
    """Operator retry makes failed tasks pending and due now, attempts reset."""
    failed = [add_task(engine, kind=k) for k in ("a", "a", "b")]
    untouched = add_task(engine, kind="a", run_at=START + timedelta(days=1))
    claim(engine, START)
    with UnitOfWork(engine) as uow:
        for pk in failed:
            uow.tasks.fail(pk, error="boom", now=START, retry_at=None)
        uow.commit()
    later = START + timedelta(hours=2)
    with UnitOfWork(engine) as uow:
        assert uow.tasks.retry(now=later, pks=[failed[0]]) == 1
        assert uow.tasks.retry(now=later, kind="b") == 1
        assert uow.tasks.retry(now=later) == 1
        assert uow.tasks.retry(now=later) == 0
        uow.commit()
    for pk in failed:
        task = get(engine, pk)
        assert (task.status, task.attempts, task.next_attempt_at) == (PENDING, 0, later)
    assert get(engine, untouched).next_attempt_at == START + timedelta(days=1)
    assert {t.pk for t in claim(engine, later)} == set(failed)


def test_kinds_filter(engine: Engine) -> None:
    """Claim with kinds takes only tasks of those kinds."""
    a = add_task(engine, kind="a")
    b = add_task(engine, kind="b")
    c = add_task(engine, kind="c")
    assert [t.pk for t in claim(engine, START, kinds=["b"])] == [b]
    assert {t.pk for t in claim(engine, START, kinds=["a", "c"])} == {a, c}
    assert claim(engine, START, kinds=["b"]) == []


def test_concurrent_claims_take_each_task_once(engine: Engine) -> None:
    """Workers claiming at the same time never get the same task."""
    pks = {add_task(engine) for _ in range(40)}
    claimed: list[int] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while True:
            tasks = claim(engine, START, limit=2, worker=name)
            if not tasks:
                return
            with lock:
                claimed.extend(t.pk for t in tasks)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(claimed) == sorted(pks)
    with UnitOfWork(engine, write=False) as uow:
        assert uow.tasks.counts() == {("demo", RUNNING): 40}
        assert {t.attempts for t in uow.tasks.list(limit=100)} == {1}


def test_claim_by_pk(engine: Engine) -> None:
    """A specific task can be claimed by its key."""
    add_task(engine)
    wanted = add_task(engine)
    with UnitOfWork(engine) as uow:
        claimed = uow.tasks.claim(worker="w", now=START, lease=LEASE, limit=5, pk=wanted)
        uow.commit()
    assert [t.pk for t in claimed] == [wanted]


def test_list_and_counts(engine: Engine) -> None:
    """list() filters by status, kind and subject, newest first; counts() groups."""
    a1 = add_task(engine, kind="a", subject="x")
    a2 = add_task(engine, kind="a", subject="y")
    b1 = add_task(engine, kind="b", subject="x")
    claim(engine, START, kinds=["b"])
    with UnitOfWork(engine, write=False) as uow:
        assert [t.pk for t in uow.tasks.list()] == [b1, a2, a1]
        assert [t.pk for t in uow.tasks.list(status=PENDING)] == [a2, a1]
        assert [t.pk for t in uow.tasks.list(kind="a", subject="x")] == [a1]
        assert [t.pk for t in uow.tasks.list(subject="x")] == [b1, a1]
        assert [t.pk for t in uow.tasks.list(limit=1)] == [b1]
        assert uow.tasks.counts() == {("a", PENDING): 2, ("b", RUNNING): 1}


def test_set_payload(engine: Engine) -> None:
    """A handler can keep state in the payload."""
    pk = add_task(engine, payload={"a": 1})
    with UnitOfWork(engine) as uow:
        uow.tasks.set_payload(pk, {"a": 1, "result": [1, 2]})
        uow.commit()
    assert get(engine, pk).payload == {"a": 1, "result": [1, 2]}


# The worker loop ----------------------------------------------------------------------


SETTINGS = TaskSettings(
    workers=1,
    poll_seconds=0.01,
    backoff_base_seconds=2.0,
    backoff_max_seconds=60.0,
    lease_seconds=300.0,
)


def workers(
    engine: Engine, handlers: dict[str, Callable[[Task], None]], clock: FakeClock
) -> TaskWorkers:
    """Task workers (not started: the test calls run_once)."""
    return TaskWorkers(engine, SETTINGS, handlers, clock=clock)


def test_run_once_success(engine: Engine) -> None:
    """A handler that returns marks the task done."""
    clock = FakeClock()
    seen: list[Task] = []
    pk = add_task(engine, payload={"x": 42})
    w = workers(engine, {"demo": seen.append}, clock)
    assert w.run_once() is True
    assert [(t.pk, t.payload, t.attempts) for t in seen] == [(pk, {"x": 42}, 1)]
    task = get(engine, pk)
    assert task.status == DONE
    assert task.last_error is None
    assert w.run_once() is False


def test_run_once_nothing_due(engine: Engine) -> None:
    """With nothing due, run_once returns False and calls no handler."""
    clock = FakeClock()
    calls: list[Task] = []
    add_task(engine, run_at=START + timedelta(minutes=1))
    add_task(engine, kind="other")  # no handler for this kind
    w = workers(engine, {"demo": calls.append}, clock)
    assert w.run_once() is False
    assert calls == []
    clock.advance(minutes=1)
    assert w.run_once() is True
    assert len(calls) == 1


def failing(message: str = "peer unreachable") -> Callable[[Task], None]:
    """A handler that always raises ConnectionError."""

    def handler(task: Task) -> None:
        raise ConnectionError(message)

    return handler


def test_failure_is_retried_later(engine: Engine) -> None:
    """A raising handler leaves the task pending with a later attempt and the error."""
    clock = FakeClock()
    pk = add_task(engine, max_attempts=3)
    w = workers(engine, {"demo": failing()}, clock)
    assert w.run_once() is True
    task = get(engine, pk)
    assert task.status == PENDING
    assert task.attempts == 1
    assert task.last_error == "ConnectionError: peer unreachable"
    delay = (task.next_attempt_at - START).total_seconds()
    assert 0.9 * 2.0 <= delay <= 1.1 * 2.0
    assert w.run_once() is False  # not due yet
    clock.now = task.next_attempt_at
    assert w.run_once() is True
    task = get(engine, pk)
    assert task.attempts == 2
    delay = (task.next_attempt_at - clock.now).total_seconds()
    assert 0.9 * 4.0 <= delay <= 1.1 * 4.0


def test_failed_after_max_attempts(engine: Engine) -> None:
    """After max_attempts failed attempts the task is failed for good."""
    clock = FakeClock()
    pk = add_task(engine, max_attempts=3)
    w = workers(engine, {"demo": failing()}, clock)
    for attempt in (1, 2, 3):
        assert w.run_once() is True
        task = get(engine, pk)
        assert task.attempts == attempt
        clock.now = task.next_attempt_at + timedelta(seconds=1)
    task = get(engine, pk)
    assert task.status == FAILED
    assert task.last_error == "ConnectionError: peer unreachable"
    clock.advance(days=30)
    assert w.run_once() is False


def test_permanent_failure_fails_at_once(engine: Engine) -> None:
    """PermanentFailure ends the task on its first attempt."""
    clock = FakeClock()
    pk = add_task(engine, max_attempts=10)

    def handler(task: Task) -> None:
        raise PermanentFailure("unknown peer")

    w = workers(engine, {"demo": handler}, clock)
    assert w.run_once() is True
    task = get(engine, pk)
    assert (task.status, task.attempts) == (FAILED, 1)
    assert task.last_error == "PermanentFailure: unknown peer"


def test_retry_after_failure_runs_again(engine: Engine) -> None:
    """An operator retry of a failed task lets the worker run it again."""
    clock = FakeClock()
    pk = add_task(engine, max_attempts=1)
    outcomes: list[bool] = [False, True]

    def handler(task: Task) -> None:
        if not outcomes.pop(0):
            raise ConnectionError("down")

    w = workers(engine, {"demo": handler}, clock)
    w.run_once()
    assert get(engine, pk).status == FAILED
    with UnitOfWork(engine) as uow:
        uow.tasks.retry(now=clock())
        uow.commit()
    assert w.run_once() is True
    assert get(engine, pk).status == DONE


def test_started_workers_drain_due_tasks(engine: Engine) -> None:
    """Started worker threads run due tasks without run_once being called."""
    clock = FakeClock()
    done: list[int] = []
    pks = {add_task(engine) for _ in range(3)}
    w = workers(engine, {"demo": lambda task: done.append(task.pk)}, clock)
    w.start()
    try:
        deadline = datetime.now(UTC) + timedelta(seconds=20)
        while len(done) < 3 and datetime.now(UTC) < deadline:
            w.wake()
            time.sleep(0.01)
    finally:
        w.stop()
    assert set(done) == pks
    assert {get(engine, pk).status for pk in pks} == {DONE}


def test_backoff_grows_exponentially_and_is_capped() -> None:
    """base * 2^(attempts-1) with +-10 % jitter, never beyond the cap (+ jitter)."""
    settings = TaskSettings(backoff_base_seconds=2.0, backoff_max_seconds=100.0)
    rng = random.Random(7)
    for attempts, nominal in [(0, 2.0), (1, 2.0), (2, 4.0), (3, 8.0), (5, 32.0), (6, 64.0)]:
        delay = backoff_delay(attempts, settings, rng)
        assert 0.9 * nominal <= delay <= 1.1 * nominal, (attempts, delay)
    for attempts in (7, 10, 50, 1000):
        delay = backoff_delay(attempts, settings, rng)
        assert 90.0 <= delay <= 110.0, (attempts, delay)


def test_backoff_jitter_is_reproducible() -> None:
    """The jitter comes from the given random generator."""
    settings = TaskSettings()
    first = [backoff_delay(n, settings, random.Random(1)) for n in range(1, 6)]
    second = [backoff_delay(n, settings, random.Random(1)) for n in range(1, 6)]
    assert first == second
    assert first == sorted(first)


# ----------------------------------------------------------------------------- queues


def finish(engine: Engine, pk: int, *, failed_for_good: bool = False) -> None:
    with UnitOfWork(engine) as uow:
        if failed_for_good:
            uow.tasks.fail(pk, error="refused", now=START, retry_at=None)
        else:
            uow.tasks.complete(pk, now=START)
        uow.commit()


def test_a_queue_runs_one_task_at_a_time_in_order(engine: Engine) -> None:
    first = add_task(engine, queue="ian:RIS:1.2.3")
    second = add_task(engine, queue="ian:RIS:1.2.3")
    other = add_task(engine, queue="ian:RIS:1.2.4")
    loose = add_task(engine)
    assert {t.pk for t in claim(engine, START)} == {first, other, loose}
    assert claim(engine, START) == []  # second waits for first, which is running
    finish(engine, first)
    assert [t.pk for t in claim(engine, START)] == [second]


def test_a_failed_task_holds_back_its_queue_until_retried(engine: Engine) -> None:
    first = add_task(engine, queue="q", max_attempts=1)
    second = add_task(engine, queue="q")
    (claimed,) = claim(engine, START)
    finish(engine, claimed.pk, failed_for_good=True)
    assert get(engine, first).status == FAILED
    assert claim(engine, START + timedelta(hours=1)) == []  # in order, even after a failure
    with UnitOfWork(engine) as uow:
        assert uow.tasks.retry(now=START, pks=[first]) == 1
        uow.commit()
    assert [t.pk for t in claim(engine, START)] == [first]
    finish(engine, first)
    assert [t.pk for t in claim(engine, START)] == [second]


def test_an_expired_lease_in_a_queue_is_taken_again_first(engine: Engine) -> None:
    first = add_task(engine, queue="q")
    add_task(engine, queue="q")
    claim(engine, START, worker="dead")
    later = START + LEASE + timedelta(seconds=1)
    assert [t.pk for t in claim(engine, later, worker="w2")] == [first]


def schedule(engine: Engine, at: datetime, *, payload: dict[str, Any] | None = None) -> int:
    return schedule_subject(engine, "1.2.3", at, payload=payload)


def schedule_subject(
    engine: Engine, subject: str, at: datetime, *, payload: dict[str, Any] | None = None
) -> int:
    with UnitOfWork(engine) as uow:
        pk = uow.tasks.schedule_once(
            "registration",
            subject=subject,
            queue=f"registration:{subject}",
            payload=payload or {},
            now=at,
            run_at=at + timedelta(seconds=60),
            max_attempts=3,
        )
        uow.commit()
    return pk


def test_schedule_once_moves_the_waiting_task(engine: Engine) -> None:
    pk = schedule(engine, START)
    assert schedule(engine, START + timedelta(seconds=30)) == pk
    task = get(engine, pk)
    assert (task.status, task.next_attempt_at) == (PENDING, START + timedelta(seconds=90))
    assert claim(engine, START + timedelta(seconds=89)) == []
    assert [t.pk for t in claim(engine, START + timedelta(seconds=90))] == [pk]


def test_schedule_once_adds_behind_a_running_task_and_revives_a_failed_one(
    engine: Engine,
) -> None:
    running = schedule(engine, START)
    claim(engine, START + timedelta(minutes=2))
    waiting = schedule(engine, START + timedelta(minutes=3), payload={"fresh": True})
    assert waiting != running
    assert claim(engine, START + timedelta(minutes=5)) == []  # behind the running one
    with UnitOfWork(engine) as uow:
        uow.tasks.set_payload(waiting, {"manifest_uid": "2.25.1"})
        uow.commit()
    finish(engine, running)
    (taken,) = claim(engine, START + timedelta(minutes=10))
    finish(engine, taken.pk, failed_for_good=True)
    # New arrivals take the failed task up again, from its first attempt, afresh.
    assert schedule(engine, START + timedelta(minutes=20)) == waiting
    task = get(engine, waiting)
    assert (task.status, task.attempts, task.payload) == (PENDING, 0, {})


def test_schedule_once_many_moves_revives_and_adds(engine: Engine) -> None:
    """1,200 studies (three chunks of statements): one with a failed task, one with a
    running task, one with a waiting task, the rest with none."""
    subjects = [f"1.2.3.{n}" for n in range(1200)]
    failed = schedule_subject(engine, subjects[1], START)
    running = schedule_subject(engine, subjects[2], START)
    assert {t.pk for t in claim(engine, START + timedelta(minutes=2))} == {failed, running}
    finish(engine, failed, failed_for_good=True)
    waiting = schedule_subject(engine, subjects[0], START)
    later = START + timedelta(minutes=5)
    with UnitOfWork(engine) as uow:
        keys = uow.tasks.schedule_once_many(
            "registration",
            subjects=[*subjects, subjects[0]],  # a repeat is scheduled once
            queue_of=lambda subject: f"registration:{subject}",
            payload={},
            now=later,
            run_at=later,
            max_attempts=3,
        )
        uow.commit()
    assert len(keys) == 1200
    assert keys[subjects[0]] == waiting and keys[subjects[1]] == failed
    assert keys[subjects[2]] != running  # a new task, queued behind the running one
    assert (get(engine, failed).status, get(engine, failed).attempts) == (PENDING, 0)
    due = claim(engine, later, limit=2000)
    assert len(due) == 1199  # all but the one behind the running task
    assert {t.subject for t in due} == {s for s in subjects if s != subjects[2]}


def test_bring_forward_and_next_due(engine: Engine) -> None:
    pk = schedule(engine, START)
    with UnitOfWork(engine) as uow:
        assert uow.tasks.next_due(after=START) == START + timedelta(seconds=60)
        assert uow.tasks.bring_forward("registration", subject="1.2.3", now=START)
        assert not uow.tasks.bring_forward("registration", subject="1.2.3", now=START)
        assert uow.tasks.next_due(after=START) is None  # due now: left to the claim
        uow.commit()
    assert [t.pk for t in claim(engine, START)] == [pk]


def test_purge_done_deletes_only_tasks_done_before_the_cut(engine: Engine) -> None:
    old_done = [add_task(engine, subject=f"old-{n}") for n in range(5)]
    for pk in old_done:
        claim(engine, START, limit=1)
        finish(engine, pk)
    failed = add_task(engine, subject="failed")
    claim(engine, START, limit=1)
    finish(engine, failed, failed_for_good=True)
    pending = add_task(engine, subject="pending")
    later = START + timedelta(days=40)
    recent = add_task(engine, subject="recent")
    with UnitOfWork(engine) as uow:  # done long after the others
        assert uow.tasks.claim(worker="w1", now=later, lease=LEASE, limit=10)
        uow.tasks.complete(recent, now=later)
        uow.commit()
    cut = START + timedelta(days=10)
    assert purge_done(engine, cut) == 5
    assert purge_done(engine, cut) == 0
    for pk in old_done:
        with UnitOfWork(engine, write=False) as uow:
            assert uow.tasks.get(pk) is None
    assert get(engine, failed).status == "failed"
    assert get(engine, pending).status == "running"  # claimed above, never deleted
    assert get(engine, recent).status == "done"
    with UnitOfWork(engine) as uow:
        assert uow.tasks.purge_done(before=later + timedelta(seconds=1), limit=1) == 1
        uow.commit()


# ------------------------------------------------ supersession, retry deadlines, nodes


def supersede(engine: Engine, queue: str, newer: int, now: datetime = START) -> list[int]:
    with UnitOfWork(engine) as uow:
        superseded = uow.tasks.supersede(queue, newer=newer, now=now)
        uow.commit()
    return superseded


def fail(engine: Engine, pk: int, retry_at: datetime | None, *, worker: str = "w1") -> str | None:
    """A failed attempt of a claimed task, superseded when a newer one waits."""
    with UnitOfWork(engine) as uow:
        recorded = uow.tasks.fail(
            pk,
            error="refused",
            now=START,
            retry_at=retry_at,
            worker=worker,
            superseded_if_newer=True,
        )
        uow.commit()
    return recorded


def test_a_newer_task_supersedes_the_waiting_ones_of_its_queue(engine: Engine) -> None:
    """Pending and failed tasks of a queue are superseded by a newer one, which then
    runs at once: an older one that keeps failing holds nothing back. Other queues
    are untouched; superseded tasks are purged like done ones."""
    failed = add_task(engine, queue="ian:RIS:1.2.3")
    assert [t.pk for t in claim(engine, START)] == [failed]
    assert fail(engine, failed, retry_at=None) == FAILED
    pending = add_task(engine, queue="ian:RIS:1.2.3", run_at=START + timedelta(minutes=15))
    other = add_task(engine, queue="ian:RIS:1.2.4", run_at=START + timedelta(minutes=15))
    # The failed one holds back its queue, not another one.
    assert [t.pk for t in claim(engine, START + timedelta(hours=1))] == [other]
    newest = add_task(engine, queue="ian:RIS:1.2.3")
    assert supersede(engine, "ian:RIS:1.2.3", newest) == [failed, pending]
    assert supersede(engine, "ian:RIS:1.2.3", newest) == []
    assert [get(engine, pk).status for pk in (failed, pending, other)] == [
        SUPERSEDED,
        SUPERSEDED,
        RUNNING,
    ]
    assert get(engine, pending).next_attempt_at == START  # purged with the done ones
    assert get(engine, failed).last_error == "refused"  # what became of it, for operators
    assert [t.pk for t in claim(engine, START)] == [newest]
    with UnitOfWork(engine) as uow:
        assert uow.tasks.purge_done(before=START + timedelta(seconds=1)) == 2
        uow.commit()


def test_a_running_task_finishes_and_is_superseded_only_if_it_fails(engine: Engine) -> None:
    """A task being sent is not superseded: the newer one waits behind it. If it
    fails, it is superseded instead of retried and the newer runs; if it succeeds,
    the newer still runs after it. Without a newer one, a failure is retried."""
    running = add_task(engine, queue="q")
    assert [t.pk for t in claim(engine, START)] == [running]
    newer = add_task(engine, queue="q")
    assert supersede(engine, "q", newer) == []
    assert claim(engine, START) == []  # behind the running one
    assert fail(engine, running, retry_at=START + timedelta(minutes=1)) == SUPERSEDED
    assert [t.pk for t in claim(engine, START)] == [newer]
    assert fail(engine, newer, retry_at=START + timedelta(minutes=1)) == PENDING
    assert fail(engine, newer, retry_at=None, worker="gone") is None  # not held: no change
    third = add_task(engine, queue="q")
    assert supersede(engine, "q", third) == [newer]
    assert [t.pk for t in claim(engine, START)] == [third]
    fourth = add_task(engine, queue="q")
    finish(engine, third)
    assert [t.pk for t in claim(engine, START)] == [fourth]


def test_a_task_with_retry_until_is_tried_until_then_whatever_its_attempts(
    engine: Engine,
) -> None:
    """max_attempts does not limit a task with retry_until; its time does, also for
    a lease that ran out."""
    until = START + timedelta(hours=1)
    pk = add_task(engine, max_attempts=0, retry_until=until)
    for attempt in range(1, 4):
        now = START + LEASE * attempt * 1.1
        (claimed,) = claim(engine, now)  # its worker died each time
        assert (claimed.pk, claimed.attempts, claimed.retry_until) == (pk, attempt, until)
    assert claim(engine, until + LEASE) == []
    task = get(engine, pk)
    assert (task.status, task.attempts) == (FAILED, 3)
    assert task.last_error == "the lease ran out during the last attempt"


POLICY = RetryPolicy(
    window=timedelta(minutes=10), backoff_max_seconds=30.0, superseded_by_newer=True
)


def test_a_policy_retries_until_the_deadline_with_its_own_backoff_cap(engine: Engine) -> None:
    """Under a RetryPolicy a task is retried past any attempt count, its backoff
    capped by the policy (not by [tasks]), the last attempt at retry_until, then
    failed; a kind without a policy keeps max_attempts."""
    clock = FakeClock()
    until = START + POLICY.window
    pk = add_task(engine, "ian", max_attempts=0, retry_until=until)
    w = TaskWorkers(
        engine,
        SETTINGS,
        {"ian": failing(), "demo": failing()},
        policies={"ian": POLICY},
        clock=clock,
    )
    delays = []
    while (task := get(engine, pk)).status != FAILED:
        clock.now = max(clock.now, task.next_attempt_at)
        assert w.run_once() is True
        after = get(engine, pk)
        if after.status == PENDING:
            delays.append((after.next_attempt_at - clock.now).total_seconds())
    assert task.attempts > 20 and clock.now == until
    assert max(delays) <= POLICY.backoff_max_seconds < SETTINGS.backoff_max_seconds
    assert delays[:3] == sorted(delays[:3])  # exponential at first
    demo = add_task(engine, max_attempts=2, now=clock.now)
    for _ in range(2):
        assert w.run_once() is True
        clock.now = get(engine, demo).next_attempt_at
    assert get(engine, demo).status == FAILED


def test_retry_of_a_node_makes_its_undelivered_tasks_due_now(engine: Engine) -> None:
    """``kuva tasks retry --node``: the node's pending (in backoff) and failed tasks
    are due now with their attempts starting over, a new window for a kind with
    one; running ones, other nodes' and other kinds' are left alone."""
    later = START + timedelta(minutes=15)
    backoff = add_task(engine, "ian", destination="RIS", run_at=later, retry_until=START)
    failed = add_task(engine, "ian", destination="RIS", max_attempts=1)
    running = add_task(engine, "commitment", destination="RIS", run_at=later)
    other = add_task(engine, "ian", destination="PACS", run_at=later)
    assert [t.pk for t in claim(engine, START)] == [failed]
    finish(engine, failed, failed_for_good=True)
    assert [t.pk for t in claim(engine, later, kinds=["commitment"])] == [running]
    now = START + timedelta(minutes=5)
    with UnitOfWork(engine) as uow:
        count = uow.tasks.retry(now=now, destination="RIS", windows={"ian": timedelta(hours=72)})
        listed = uow.tasks.list(destination="RIS")
        uow.commit()
    assert count == 2
    assert {t.pk for t in listed} == {backoff, failed, running}
    for pk, until in ((backoff, now + timedelta(hours=72)), (failed, None)):
        task = get(engine, pk)
        assert (task.status, task.attempts, task.next_attempt_at) == (PENDING, 0, now)
        assert task.retry_until == until
    assert get(engine, running).status == RUNNING
    assert get(engine, other).next_attempt_at == later
    assert [t.pk for t in claim(engine, now)] == [backoff, failed]


def test_oldest_undelivered_per_destination(engine: Engine) -> None:
    """When each node's oldest pending, running or failed task of a kind was added;
    done and superseded tasks are delivered (or need not be)."""
    done = add_task(engine, "ian", destination="RIS", now=START - timedelta(hours=9))
    finish(engine, done)
    gone = add_task(engine, "ian", destination="RIS", now=START - timedelta(hours=8), queue="q")
    newer = add_task(engine, "ian", destination="RIS", now=START - timedelta(hours=1), queue="q")
    supersede(engine, "q", newer)
    add_task(engine, "ian", destination="PACS", now=START - timedelta(hours=3))
    add_task(engine, "ian", destination="PACS", now=START - timedelta(hours=2))
    add_task(engine, "commitment", destination="MOD", now=START - timedelta(hours=5))
    add_task(engine, "ian", now=START - timedelta(hours=6))  # no destination
    with UnitOfWork(engine, write=False) as uow:
        oldest = uow.tasks.oldest_undelivered("ian")
    assert oldest == {"RIS": START - timedelta(hours=1), "PACS": START - timedelta(hours=3)}
    assert get(engine, gone).status == SUPERSEDED


def test_migration_0017_gives_undelivered_deliveries_their_destination(
    database_url: str,
) -> None:
    """Undelivered IAN and storage commitment report tasks learn their node from the
    payload; a downgrade ends superseded tasks as done (before, queues waited on
    every task not done)."""
    engine = make_engine(database_url)
    try:
        migrate(engine, "0016")
        old = table("task", *(column(c.name) for c in schema.task.c if c.name not in NEW_COLUMNS))
        rows = [
            ("instance-availability", {"node": "RIS"}, "pending"),
            ("instance-availability", {"node": "RIS"}, "done"),
            ("storage-commitment", {"requester_ae": "MOD"}, "failed"),
            ("demo", {"node": "X"}, "pending"),
        ]
        with engine.begin() as conn:
            for kind, payload, status in rows:
                conn.execute(
                    insert(old).values(
                        kind=kind,
                        subject="1.2.3",
                        payload=json.dumps(payload),
                        status=status,
                        attempts=0,
                        max_attempts=3,
                        next_attempt_at=START.replace(tzinfo=None),
                        created_at=START.replace(tzinfo=None),
                        updated_at=START.replace(tzinfo=None),
                    )
                )
        migrate(engine)
        with UnitOfWork(engine) as uow:
            listed = sorted(uow.tasks.list(), key=lambda t: t.pk)
            assert [(t.destination, t.retry_until) for t in listed] == [
                ("RIS", None),
                (None, None),
                ("MOD", None),
                (None, None),
            ]
            uow.conn.execute(update(schema.task).values(status=SUPERSEDED))
            uow.commit()
        downgrade(engine, "0016")
        with engine.connect() as conn:
            statuses = conn.execute(select(old.c.status)).scalars().all()
        assert set(statuses) == {DONE}
    finally:
        engine.dispose()
