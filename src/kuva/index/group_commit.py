"""Group commit: many concurrent writers share one transaction and one fsync.

Each C-STORE handler thread hands its index work to the committer. The first to
arrive while no batch is being committed leads: it runs whatever is queued (its own
work first) inside one transaction (each piece of work in its own SAVEPOINT, so one
failure does not undo the others), commits once and wakes every waiter; work handed
over meanwhile waits, and the first of it leads the next batch (leader/follower
group commit, as in database logs). Nothing is acknowledged before that commit
returned (docs/design.md principle 2), yet concurrent associations do not pay one
fsync each, and SQLite never sees two writers of one process competing for its lock.
A lone writer (one association) runs its work in its own thread: no hand-over to
another thread and back on the path of every C-STORE.

A piece of work may come with a ``durable`` future: what its rows reference (an
object's blob) being made durable meanwhile. Its statements run first, then the
future is awaited before its savepoint is released; if the future failed, the
savepoint is rolled back and the caller gets that error. So the index work of an
object overlaps the fsyncs of its blob, and no row ever commits before the bytes
it names are durable.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import Engine

from kuva.index.uow import UnitOfWork

log = logging.getLogger(__name__)

T = TypeVar("T")
Work = Callable[[UnitOfWork], Any]


@dataclass(eq=False)
class _Item:
    work: Work
    durable: Future[Any] | None
    future: Future[Any] = field(default_factory=Future)


class CommitterClosed(RuntimeError):
    """Work handed to a committer after ``close``."""


class GroupCommitter:
    def __init__(self, engine: Engine, *, max_batch: int = 64) -> None:
        self._engine = engine
        self._max_batch = max_batch
        self._cond = threading.Condition()
        self._queue: deque[_Item] = deque()
        self._leading = False
        self._closed = False

    def run(
        self,
        work: Callable[[UnitOfWork], T],
        timeout: float | None = 120.0,
        *,
        durable: Future[Any] | None = None,
    ) -> T:
        """Run ``work`` in a shared transaction; return once it is committed (and
        ``durable`` has succeeded: it is awaited before ``work``'s rows commit).

        ``TimeoutError`` after ``timeout`` seconds of waiting for other batches;
        the work then still runs in its turn."""
        item = _Item(work, durable)
        batch: list[_Item] = []
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            if self._closed:
                raise CommitterClosed("the index committer is closed")
            self._queue.append(item)
            while not item.future.done() and (self._leading or self._queue[0] is not item):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError("the index commit did not run in time")
                self._cond.wait(left)
            if not item.future.done():
                self._leading = True
                count = min(len(self._queue), self._max_batch)
                batch = [self._queue.popleft() for _ in range(count)]
        if not item.future.done():
            try:
                self._commit(batch)
            finally:
                with self._cond:
                    self._leading = False
                    self._cond.notify_all()
        return item.future.result()  # type: ignore[no-any-return]

    def waiting(self) -> int:
        """How many pieces of work wait for a batch."""
        with self._cond:
            return len(self._queue)

    def close(self, timeout: float = 30.0) -> None:
        """Refuse new work; wait (up to ``timeout`` seconds) for queued work to commit."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._closed = True
            while (self._queue or self._leading) and time.monotonic() < deadline:
                self._cond.wait(deadline - time.monotonic())

    def _commit(self, batch: list[_Item]) -> None:
        results: list[tuple[Future[Any], bool, Any]] = []
        try:
            with UnitOfWork(self._engine) as uow:
                for item in batch:
                    savepoint = uow.conn.begin_nested()
                    try:
                        value = item.work(uow)
                        if item.durable is not None:
                            item.durable.result()
                    except Exception as exc:  # handed to the waiting caller
                        savepoint.rollback()
                        results.append((item.future, False, exc))
                    else:
                        savepoint.commit()
                        results.append((item.future, True, value))
                uow.commit()
        except Exception as exc:
            log.exception("index commit failed for a batch of %d", len(batch))
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        for future, ok, value in results:
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
