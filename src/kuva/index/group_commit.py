"""Group commit: many concurrent writers share one transaction and one fsync.

Each C-STORE thread hands its index work to the committer and waits. The
committer runs whatever is queued inside one transaction (each piece of work in
its own SAVEPOINT, so one failure does not undo the others), commits once and
wakes every waiter. Nothing is acknowledged before that commit returned
(docs/design.md principle 2), yet concurrent associations do not pay one fsync each,
and SQLite never sees two writers competing for its lock.

A piece of work may come with a ``durable`` future: what its rows reference (an
object's blob) being made durable meanwhile. Its statements run first, then the
future is awaited before its savepoint is released; if the future failed, the
savepoint is rolled back and the caller gets that error. So the index work of an
object overlaps the fsyncs of its blob, and no row ever commits before the bytes
it names are durable.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from sqlalchemy import Engine

from kuva.index.uow import UnitOfWork

log = logging.getLogger(__name__)

T = TypeVar("T")
Work = Callable[[UnitOfWork], Any]

_STOP = object()


class GroupCommitter:
    def __init__(self, engine: Engine, *, max_batch: int = 64) -> None:
        self._engine = engine
        self._max_batch = max_batch
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="kuva-group-commit", daemon=True)
        self._thread.start()

    def run(
        self,
        work: Callable[[UnitOfWork], T],
        timeout: float | None = 120.0,
        *,
        durable: Future[Any] | None = None,
    ) -> T:
        """Run ``work`` in a shared transaction; return once it is committed (and
        ``durable`` has succeeded: it is awaited before ``work``'s rows commit)."""
        future: Future[T] = Future()
        self._queue.put((work, future, durable))
        return future.result(timeout=timeout)

    def close(self) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            stop = False
            while len(batch) < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
            self._commit(batch)
            if stop:
                return

    def _commit(self, batch: list[tuple[Work, Future[Any], Future[Any] | None]]) -> None:
        results: list[tuple[Future[Any], bool, Any]] = []
        try:
            with UnitOfWork(self._engine) as uow:
                for work, future, durable in batch:
                    savepoint = uow.conn.begin_nested()
                    try:
                        value = work(uow)
                        if durable is not None:
                            durable.result()
                    except Exception as exc:  # handed to the waiting caller
                        savepoint.rollback()
                        results.append((future, False, exc))
                    else:
                        savepoint.commit()
                        results.append((future, True, value))
                uow.commit()
        except Exception as exc:
            log.exception("index commit failed for a batch of %d", len(batch))
            for _work, future, _durable in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for future, ok, value in results:
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
