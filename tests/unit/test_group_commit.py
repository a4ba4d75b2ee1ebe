"""index.group_commit.GroupCommitter on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError

from kuva.index.group_commit import CommitterClosed, GroupCommitter
from kuva.index.schema import task
from kuva.index.uow import UnitOfWork

NOW = datetime(2026, 3, 14, 9, 0, tzinfo=UTC)


@pytest.fixture
def committer(engine: Engine) -> Iterator[GroupCommitter]:
    """A running group committer, closed after the test."""
    committer = GroupCommitter(engine)
    yield committer
    committer.close()


def add_task(subject: str) -> Callable[[UnitOfWork], int]:
    """Work that adds one task row and returns its key."""

    def work(uow: UnitOfWork) -> int:
        return uow.tasks.add("demo", subject=subject, payload={}, now=NOW, max_attempts=1)

    return work


def subjects(engine: Engine) -> list[str]:
    """Subjects of every committed task, sorted."""
    with engine.connect() as conn:
        return sorted(conn.execute(select(task.c.subject)).scalars())


class HeldBatch:
    """Keeps the committer busy with a blocking piece of work.

    Work handed over meanwhile queues up behind it; ``release`` waits until
    ``waiting`` pieces are queued and lets the committer go on, so that they
    run as one batch.
    """

    def __init__(self, committer: GroupCommitter, waiting: int) -> None:
        self._committer = committer
        self._waiting = waiting
        self._event = threading.Event()
        self._started = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=1)
        self.blocker = self._pool.submit(committer.run, self._block)
        assert self._started.wait(30), "the committer did not take the blocking work"

    def _block(self, uow: UnitOfWork) -> str:
        self._started.set()
        self._event.wait(30)
        return "blocker"

    def release(self) -> None:
        deadline = time.monotonic() + 30
        while self._committer.waiting() < self._waiting and time.monotonic() < deadline:
            time.sleep(0.005)
        self._event.set()
        assert self.blocker.result(timeout=60) == "blocker"
        self._pool.shutdown()


def test_single_work_returns_value(engine: Engine, committer: GroupCommitter) -> None:
    """run() returns the work's value once it is committed."""
    pk = committer.run(add_task("one"))
    assert isinstance(pk, int)
    assert subjects(engine) == ["one"]


def test_many_threads_all_committed(engine: Engine, committer: GroupCommitter) -> None:
    """Work handed over from many threads at once is all committed."""
    n = 200
    with ThreadPoolExecutor(max_workers=32) as pool:
        pks = list(pool.map(lambda i: committer.run(add_task(f"s{i:03d}")), range(n)))
    assert len(set(pks)) == n
    assert subjects(engine) == [f"s{i:03d}" for i in range(n)]


def test_concurrent_work_shares_one_transaction(engine: Engine, committer: GroupCommitter) -> None:
    """Work queued while a commit is under way runs together, in one transaction."""
    n = 20
    seen: list[int] = []
    lock = threading.Lock()

    def work(i: int) -> Callable[[UnitOfWork], int]:
        def run(uow: UnitOfWork) -> int:
            with lock:
                seen.append(id(uow))
            return add_task(f"s{i:02d}")(uow)

        return run

    held = HeldBatch(committer, n)
    with ThreadPoolExecutor(max_workers=n) as pool:
        futures = [pool.submit(committer.run, work(i)) for i in range(n)]
        held.release()
        results = [f.result(timeout=60) for f in futures]
    assert len(set(results)) == n
    assert len(seen) == n
    assert len(set(seen)) == 1  # one unit of work for the whole batch
    assert subjects(engine) == [f"s{i:02d}" for i in range(n)]


def test_failure_raises_only_in_its_caller(engine: Engine, committer: GroupCommitter) -> None:
    """One failing piece of work raises for its caller; the rest of its batch commits."""
    n = 10
    bad = 4

    def failing(uow: UnitOfWork) -> int:
        add_task("written-by-failing-work")(uow)
        raise LookupError("this one is broken")

    held = HeldBatch(committer, n)
    with ThreadPoolExecutor(max_workers=n) as pool:
        futures = [
            pool.submit(committer.run, failing if i == bad else add_task(f"s{i}")) for i in range(n)
        ]
        held.release()
        outcomes: list[Any] = []
        for future in futures:
            try:
                outcomes.append(future.result(timeout=60))
            except LookupError as exc:
                outcomes.append(exc)
    assert isinstance(outcomes[bad], LookupError)
    assert str(outcomes[bad]) == "this one is broken"
    assert all(isinstance(o, int) for i, o in enumerate(outcomes) if i != bad)
    # The failing work's own write was rolled back with its savepoint.
    assert subjects(engine) == sorted(f"s{i}" for i in range(n) if i != bad)


def test_database_error_is_contained(engine: Engine, committer: GroupCommitter) -> None:
    """A statement the database refuses only undoes its own work, also on PostgreSQL."""
    n = 6
    bad = 2

    def violates_not_null(uow: UnitOfWork) -> None:
        add_task("written-before-the-error")(uow)
        uow.conn.execute(task.insert().values(kind="no-status"))

    held = HeldBatch(committer, n)
    with ThreadPoolExecutor(max_workers=n) as pool:
        futures = [
            pool.submit(committer.run, violates_not_null if i == bad else add_task(f"s{i}"))
            for i in range(n)
        ]
        held.release()
        errors = [f.exception(timeout=60) for f in futures]
    assert isinstance(errors[bad], IntegrityError)
    assert [e for i, e in enumerate(errors) if i != bad] == [None] * (n - 1)
    assert subjects(engine) == sorted(f"s{i}" for i in range(n) if i != bad)


def test_failure_alone(engine: Engine, committer: GroupCommitter) -> None:
    """A failing piece of work on its own raises and commits nothing; later work runs."""

    def failing(uow: UnitOfWork) -> None:
        add_task("never")(uow)
        raise RuntimeError("nope")

    with pytest.raises(RuntimeError, match="nope"):
        committer.run(failing)
    committer.run(add_task("after"))
    assert subjects(engine) == ["after"]


def test_batch_failure_reaches_every_caller(engine: Engine, committer: GroupCommitter) -> None:
    """When the shared transaction breaks, no waiter of the batch is told success."""

    def break_transaction(uow: UnitOfWork) -> None:
        # Closing the connection ends the shared transaction under the committer.
        uow.conn.close()

    held = HeldBatch(committer, 3)
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures: list[Future[Any]] = [
            pool.submit(committer.run, add_task("a")),
            pool.submit(committer.run, break_transaction),
            pool.submit(committer.run, add_task("b")),
        ]
        held.release()
        errors = [f.exception(timeout=60) for f in futures]
    assert all(isinstance(e, Exception) for e in errors)
    assert subjects(engine) == []
    # The committer goes on with later work.
    committer.run(add_task("c"))
    assert subjects(engine) == ["c"]


def test_close_waits_for_work_then_refuses(engine: Engine) -> None:
    """close() lets the batch under way commit, then refuses new work."""
    committer = GroupCommitter(engine)
    held = HeldBatch(committer, 1)
    with ThreadPoolExecutor(max_workers=2) as pool:
        queued = pool.submit(committer.run, add_task("queued"))
        closing = pool.submit(committer.close)
        held.release()
        assert isinstance(queued.result(timeout=60), int)
        closing.result(timeout=60)
    with pytest.raises(CommitterClosed):
        committer.run(add_task("too-late"))
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(task)).scalar_one() == 1


def test_lone_writer_runs_in_its_own_thread(engine: Engine, committer: GroupCommitter) -> None:
    """With nobody else committing, the caller's thread runs its work: no hand-over
    to another thread and back on the path of every C-STORE."""
    threads: list[int] = []

    def work(uow: UnitOfWork) -> int:
        threads.append(threading.get_ident())
        return add_task("alone")(uow)

    committer.run(work)
    assert threads == [threading.get_ident()]


def test_rows_wait_for_what_they_name(engine: Engine, committer: GroupCommitter) -> None:
    """Work with a ``durable`` future runs at once, but commits only after the future
    succeeded (an object's blob made durable meanwhile)."""
    durable: Future[None] = Future()
    ran = threading.Event()

    def work(uow: UnitOfWork) -> int:
        ran.set()
        return add_task("names-a-blob")(uow)

    with ThreadPoolExecutor(max_workers=1) as pool:
        result = pool.submit(committer.run, work, durable=durable)
        assert ran.wait(30), "the statements did not run before the blob was durable"
        time.sleep(0.05)
        assert not result.done()
        assert subjects(engine) == []
        durable.set_result(None)
        assert isinstance(result.result(timeout=30), int)
    assert subjects(engine) == ["names-a-blob"]


def test_failed_durable_undoes_only_its_work(engine: Engine, committer: GroupCommitter) -> None:
    """When what a piece of work names could not be made durable, its rows are rolled
    back and its caller gets that error; the rest of the batch commits."""
    n = 5
    bad = 1
    futures_durable: list[Future[None]] = [Future() for _ in range(n)]
    for i, durable in enumerate(futures_durable):
        if i == bad:
            durable.set_exception(OSError(28, "No space left on device"))
        else:
            durable.set_result(None)
    held = HeldBatch(committer, n)
    with ThreadPoolExecutor(max_workers=n) as pool:
        futures = [
            pool.submit(committer.run, add_task(f"s{i}"), durable=futures_durable[i])
            for i in range(n)
        ]
        held.release()
        errors = [f.exception(timeout=60) for f in futures]
    assert errors[bad] is futures_durable[bad].exception()
    assert [e for i, e in enumerate(errors) if i != bad] == [None] * (n - 1)
    assert subjects(engine) == sorted(f"s{i}" for i in range(n) if i != bad)
