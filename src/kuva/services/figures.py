"""Figures of the whole archive that no request may compute, because each reads a
whole table: the storage used (instances and their bytes) and the audit chain's
verification. ``FiguresJob`` computes them in ``kuva serve`` in the background, one
node of a cluster at a time (the "figures" duty, services.cluster), and keeps them in
the index (``archive_figure``) with the time they were computed; the operator
console shows them with that time.

Storage is counted every ``STORAGE_HOURS``; the audit chain is verified every
``CHAIN_HOURS`` (a walk of the whole trail).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import Engine

from kuva.index.uow import UnitOfWork
from kuva.model.clock import Clock, utcnow
from kuva.services.audit import AuditTrail, ChainBreak
from kuva.tasks.periodic import Periodic

log = logging.getLogger(__name__)

STORAGE = "storage"
AUDIT_CHAIN = "audit-chain"
STORAGE_HOURS = 1.0
CHAIN_HOURS = 24.0
FIRST_DELAY_SECONDS = 600.0


class FiguresJob:
    def __init__(
        self,
        engine: Engine,
        audit: AuditTrail,
        *,
        duty: Callable[[float], bool] | None = None,
        clock: Clock = utcnow,
    ) -> None:
        """``duty(seconds)``: whether this node computes the figures now (held for
        ``seconds``); None: always."""
        self._engine = engine
        self.audit = audit
        self._duty = duty
        self._clock = clock
        interval = STORAGE_HOURS * 3600
        self._periodic = Periodic(
            "kuva-figures",
            self.run,
            interval,
            first=FIRST_DELAY_SECONDS,
            failure="the archive's figures could not be computed",
        )

    def run(self) -> None:
        if self._duty is not None and not self._duty(STORAGE_HOURS * 3600 * 1.5):
            return
        now = self._clock()
        self.count_storage(now)
        with UnitOfWork(self._engine, write=False) as uow:
            chain = uow.overview.figures().get(AUDIT_CHAIN)
        if chain is None or now - chain[1] >= timedelta(hours=CHAIN_HOURS):
            self.verify_chain(now)

    def count_storage(self, now: datetime | None = None) -> None:
        with UnitOfWork(self._engine) as uow:
            count, size = uow.overview.storage_used()
            uow.overview.put_figure(
                STORAGE, {"instances": count, "bytes": size}, now or self._clock()
            )
            uow.commit()

    def verify_chain(self, now: datetime | None = None) -> tuple[int, list[ChainBreak]]:
        """Verify the whole audit trail and keep the result; the records and breaks."""
        count, breaks = self.audit.verify()
        first = f"record {breaks[0].seq} ({breaks[0].kind})" if breaks else ""
        if breaks:
            log.error("audit trail broken: %d break(s), the first at %s", len(breaks), first)
        with UnitOfWork(self._engine) as uow:
            uow.overview.put_figure(
                AUDIT_CHAIN,
                {"records": count, "breaks": len(breaks), "first": first},
                now or self._clock(),
            )
            uow.commit()
        return count, breaks

    def start(self) -> None:
        self._periodic.start()

    def stop(self) -> None:
        self._periodic.stop()
