"""The node's membership of its cluster: a heartbeat in the shared index.

Every ``kuva serve`` sharing one index (PostgreSQL; docs/deployment.md) has a name
(``[archive] node_name``, default host:port of its DICOM listener). Its main process
beats every ``[archive] heartbeat_seconds``: its version, process id, start time and
the duties it runs. ``kuva cluster status`` lists the nodes; one whose last beat is
older than three intervals is gone. Nothing waits on a gone node: every duty that
must run once across the cluster is held under a lease in the index (outbox tasks,
the integrity walk's position, registration), which runs out, and another node
takes it up.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

from sqlalchemy import Engine

from kuva import __version__
from kuva.index.uow import UnitOfWork
from kuva.model.clock import Clock, utcnow
from kuva.tasks.periodic import Periodic

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(
        self,
        engine: Engine,
        name: str,
        interval: float,
        duties: Callable[[], Sequence[str]],
        clock: Clock = utcnow,
    ) -> None:
        self._engine = engine
        self.name = name
        self._interval = interval
        self._duties = duties
        self._clock = clock
        self._pid = os.getpid()
        self._started_at = clock()
        self._periodic = Periodic(
            "kuva-heartbeat",
            self.beat,
            interval,
            first=interval,
            failure="the node's heartbeat could not be written",
        )

    def beat(self) -> None:
        with UnitOfWork(self._engine) as uow:
            uow.cluster.beat(
                self.name,
                version=__version__,
                pid=self._pid,
                started_at=self._started_at,
                interval_seconds=self._interval,
                duties=self._duties(),
                now=self._clock(),
            )
            uow.commit()

    def take(self, duty: str, seconds: float) -> bool:
        """Whether this node runs ``duty`` now: it holds it for ``seconds`` (renewed
        at each of its runs); another node takes it over only once that has passed,
        so a duty run every N seconds runs once per N across the cluster."""
        try:
            with UnitOfWork(self._engine) as uow:
                taken = uow.cluster.take_duty(duty, self.name, now=self._clock(), seconds=seconds)
                uow.commit()
        except Exception:
            log.exception("could not take the %s duty", duty)
            return False
        if not taken:
            log.debug("%s: another node holds this duty", duty)
        return taken

    def start(self) -> None:
        self.beat()  # listed at once, not an interval later
        self._periodic.start()
        log.info("node %s joined its cluster (heartbeat every %s s)", self.name, self._interval)

    def stop(self) -> None:
        self._periodic.stop()
        try:
            with UnitOfWork(self._engine) as uow:
                uow.cluster.leave(self.name, self._pid)
                uow.commit()
        except Exception:
            log.exception("node %s could not leave its cluster's list", self.name)
