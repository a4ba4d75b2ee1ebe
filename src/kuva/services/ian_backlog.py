"""The Instance Availability Notifications each node has not taken yet: how long
the oldest has waited, as the metric ``kuva_ian_undelivered_oldest_seconds{node}``
(0 for a node that has every IAN), and a log line when a node falls behind: a
WARNING once its oldest undelivered IAN is an hour old, an ERROR once a day old
(each once per crossing, not at every check), INFO when none is an hour old any
more. The age is that of the oldest IAN task still to be sent: one superseded by
a newer IAN of its study (services.registration) no longer counts.

Read from the outbox (the oldest pending, running or failed IAN task of each
destination; services.registration adds them), every CHECK_SECONDS and at each
scrape of /metrics. Every kuva node of a cluster watches the shared outbox and
logs for itself. No patient data: node names, ages and counts only.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from sqlalchemy import Engine

from kuva import metrics
from kuva.config import Settings
from kuva.index.uow import UnitOfWork
from kuva.model.clock import Clock, utcnow
from kuva.services.registration import IAN_TASK
from kuva.tasks.periodic import Periodic

log = logging.getLogger(__name__)

CHECK_SECONDS = 60.0
# Levels of a node's backlog: the age its oldest undelivered IAN has reached.
WARN_AFTER = timedelta(hours=1)
ERROR_AFTER = timedelta(hours=24)
_CAUGHT_UP, _WARNED, _ERRED = 0, 1, 2


class IanBacklog:
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        *,
        clock: Clock = utcnow,
        interval: float = CHECK_SECONDS,
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._clock = clock
        self._levels: dict[str, int] = {}
        self._lock = threading.Lock()
        self._periodic = Periodic(
            "kuva-ian-backlog",
            self.check,
            interval,
            failure="could not read the nodes' undelivered IANs",
        )

    def check(self) -> dict[str, timedelta]:
        """Measure every node's backlog now, set the metric, log a crossing; the age
        of each node's oldest undelivered IAN (zero: none)."""
        now = self._clock()
        with UnitOfWork(self._engine, write=False) as uow:
            oldest = uow.tasks.oldest_undelivered(IAN_TASK)
        ages = {node.ae_title: timedelta(0) for node in self._settings.directory.nodes if node.ian}
        ages.update({node: max(now - added, timedelta(0)) for node, added in oldest.items()})
        with self._lock:
            for gone in set(self._levels) - set(ages):
                metrics.ian_undelivered_oldest.remove(gone)
                del self._levels[gone]
            for node, age in sorted(ages.items()):
                metrics.ian_undelivered_oldest.labels(node).set(age.total_seconds())
                self._crossed(node, age)
        return ages

    def _crossed(self, node: str, age: timedelta) -> None:
        level = _ERRED if age >= ERROR_AFTER else _WARNED if age >= WARN_AFTER else _CAUGHT_UP
        before = self._levels.get(node, _CAUGHT_UP)
        self._levels[node] = level
        hours = age.total_seconds() / 3600
        if level > before:
            log.log(
                logging.ERROR if level == _ERRED else logging.WARNING,
                "node %s has not taken an IAN for %.1f h (the oldest undelivered); "
                "`kuva tasks list --node %s` shows them, `kuva tasks retry --node %s` "
                "sends them once it is back",
                node,
                hours,
                node,
                node,
            )
        elif level == _CAUGHT_UP and before != _CAUGHT_UP:
            # Taken, or superseded by a newer IAN of its study: none is that old now.
            log.info("node %s has no undelivered IAN older than an hour any more", node)

    def start(self) -> None:
        self._periodic.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._periodic.stop(timeout)
