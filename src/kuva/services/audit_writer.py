"""The audit trail's queued writer: audit records of events that change nothing,
written off the request path.

A query (C-FIND, QIDO-RS, ITI-18), a retrieve by the register holder itself and a
stored instance's transfer message describe an event whose own result is already
durable or that changed nothing, so their record need not be in the request's
transaction. ``AuditTrail.record_later`` hands them to ``QueuedWriter.offer``: they
wait on a bounded in-process queue, and one thread appends them to the trail in
batches (up to ``[audit] batch_size`` records, or what arrived within
``[audit] batch_seconds`` of the first), one transaction per batch with each
record's delivery task.

Durability trade-off (documented in docs/operations.md "Audit trail"): records
still queued when the process is killed (SIGKILL, power loss) are lost - at most
the last ``batch_seconds`` of query and retrieve records. ``stop`` (SIGTERM,
SIGINT) drains the queue before the process exits. State changes (corrections,
disclosures, destruction) never come here: they write their record in their own
transaction. A full queue never drops: ``offer`` gives back what did not fit and
the caller writes it at once (``AuditTrail.record_now``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeAlias

from kuva import metrics
from kuva.index.uow import UnitOfWork
from kuva.model import audit as a

log = logging.getLogger(__name__)

# What is queued: an event, or a function that makes events in the writer's
# transaction (reading the index, e.g. the patients of the studies retrieved).
Pending: TypeAlias = a.AuditEvent | Callable[[UnitOfWork], Sequence[a.AuditEvent]]

_STOP = object()
# A batch the index does not take is tried again this many times (backoff 0.5 s,
# 1 s, 2 s ... at most 10 s) before it is given up and its loss logged.
ATTEMPTS = 8


class QueuedWriter:
    def __init__(
        self,
        write: Callable[[Sequence[Pending]], object],
        *,
        capacity: int,
        batch_size: int,
        batch_seconds: float,
        retry_seconds: float = 0.5,
    ) -> None:
        self._write = write
        self._queue: queue.Queue[object] = queue.Queue(maxsize=capacity)
        self._batch_size = batch_size
        self._batch_seconds = batch_seconds
        self._retry_seconds = retry_seconds
        self._lock = threading.Lock()
        self._accepting = False
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._last_full_warning = 0.0
        self._held = 0  # records of the batch being collected or written
        self.written = 0  # records written by the thread (for tests and metrics)
        self.batches = 0
        self.overflowed = 0  # records the caller wrote itself because the queue was full

    def pending(self) -> int:
        """Records not written yet: queued, or in the batch being collected."""
        return self._queue.qsize() + self._held

    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="kuva-audit", daemon=True)
            self._accepting = True
        self._thread.start()

    def offer(self, items: Sequence[Pending]) -> list[Pending]:
        """Queue ``items``; those not queued (no writer running, or the queue full),
        for the caller to write itself."""
        with self._lock:
            if not self._accepting:
                return list(items)
            for index, item in enumerate(items):
                try:
                    self._queue.put_nowait(item)
                except queue.Full:
                    rest = list(items[index:])
                    self.overflowed += len(rest)
                    metrics.audit_overflows.inc(len(rest))
                    self._warn_full()
                    return rest
        return []

    def stop(self, timeout: float = 60.0) -> None:
        """Write everything queued, then end the thread (at most ``timeout`` s)."""
        with self._lock:
            thread = self._thread
            if thread is None:
                return
            self._accepting = False
            self._thread = None
        self._stopping.set()
        self._queue.put(_STOP)  # after every queued record: nothing is offered now
        thread.join(timeout)
        if thread.is_alive():
            log.error(
                "audit writer: %d queued record(s) not written within %.0f s at stop",
                self._queue.qsize(),
                timeout,
            )

    def _warn_full(self) -> None:
        now = time.monotonic()
        if now - self._last_full_warning >= 60:
            self._last_full_warning = now
            log.warning(
                "audit queue full (%d): records written on the request path meanwhile",
                self._queue.maxsize,
            )

    def _run(self) -> None:
        done = False
        while not done:
            first = self._queue.get()
            if first is _STOP:
                return
            batch: list[Pending] = [first]  # type: ignore[list-item]
            self._held = 1
            deadline = time.monotonic() + self._batch_seconds
            while len(batch) < self._batch_size:
                remaining = deadline - time.monotonic()
                try:
                    item = (
                        self._queue.get(timeout=remaining)
                        if remaining > 0
                        else self._queue.get_nowait()
                    )
                except queue.Empty:
                    break
                if item is _STOP:
                    done = True
                    break
                batch.append(item)  # type: ignore[arg-type]
                self._held = len(batch)
            self._write_batch(batch)
            self._held = 0

    def _write_batch(self, batch: list[Pending]) -> None:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                self._write(batch)
            except Exception as exc:
                # Database errors quote their parameters (messages with patient
                # ids): the traceback goes to DEBUG only.
                log.debug("audit writer: batch not written", exc_info=exc)
                if attempt == ATTEMPTS:
                    log.error(
                        "audit writer: %d record(s) could not be written and are lost: %s",
                        len(batch),
                        type(exc).__name__,
                    )
                    metrics.audit_lost.inc(len(batch))
                    return
                log.warning(
                    "audit writer: a batch of %d record(s) not written (attempt %d: %s), "
                    "tried again",
                    len(batch),
                    attempt,
                    type(exc).__name__,
                )
                pause = min(self._retry_seconds * 2 ** (attempt - 1), 10.0)
                if self._stopping.is_set():
                    pause = min(pause, 1.0)  # stopping: do not hold the exit long
                time.sleep(pause)
                continue
            self.written += len(batch)
            self.batches += 1
            return
