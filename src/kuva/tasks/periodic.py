"""A job run at an interval in a daemon thread of ``kuva serve`` (the retention run,
the nodes' IAN backlog): the first run after a delay, then one every interval until
``stop``. A run that fails is logged and the next comes at its time."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Periodic:
    def __init__(
        self,
        name: str,
        job: Callable[[], object],
        interval: float,
        *,
        first: float | None = None,
        failure: str = "periodic job failed",
    ) -> None:
        self._name = name
        self._job = job
        self._interval = interval
        self._first = interval if first is None else first
        self._failure = failure
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        wait = self._first
        while not self._stopping.wait(wait):
            wait = self._interval
            try:
                self._job()
            except Exception:
                log.exception("%s", self._failure)
