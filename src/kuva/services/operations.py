"""What the operator console shows and does beyond the other services: the
overview's figures, the outbox's failed and pending tasks, and their retry (as
``kuva tasks retry``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from kuva.config import Settings
from kuva.index.cluster import ClusterNode
from kuva.index.corrections import Correction
from kuva.index.integrity import INSTANCE
from kuva.index.outbox import Task
from kuva.index.overview import StudyFacts
from kuva.index.uow import UnitOfWork
from kuva.model.clock import Clock, utcnow
from kuva.model.xds import ObjectKind
from kuva.services.registration import IAN_TASK, retry_policies


@dataclass(frozen=True)
class Overview:
    now: datetime
    received_last_hour: int
    received_last_day: int
    tasks: dict[tuple[str, str], int]  # (kind, status) -> count
    oldest_undelivered_ian: datetime | None
    nodes: list[ClusterNode] = field(default_factory=list)
    associations_open: int | None = None  # on the DICOM port, every process serving it
    integrity: str = ""  # the continuous check: "" off, "ok", or why it is paused
    # The integrity walk: its phase (instances, then documents), how far through the
    # instances' keys it is (0-1), when its last whole pass ended.
    walk_phase: str = ""
    walk_progress: float | None = None
    last_pass_at: datetime | None = None
    # Computed in the background (services.figures): name -> (value, computed at).
    figures: dict[str, tuple[dict[str, Any], datetime]] = field(default_factory=dict)

    @property
    def failed_tasks(self) -> int:
        return sum(n for (_, status), n in self.tasks.items() if status == "failed")


@dataclass(frozen=True)
class StudyView:
    facts: StudyFacts | None
    tasks: list[Task]
    manifests: list[tuple[str, str]]  # uniqueId, registry status (approved, deprecated)
    corrections: list[Correction]  # the study's history: rejections, holds, revocations


class Operations:
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        clock: Clock = utcnow,
        *,
        associations: Callable[[], int] | None = None,
        integrity: Callable[[], None] | None = None,
    ) -> None:
        """``associations``: how many DICOM associations are open (all processes);
        ``integrity``: the continuous check's health (raises while it is paused)."""
        self._engine = engine
        self._settings = settings
        self._clock = clock
        self._associations = associations
        self._integrity = integrity

    def _integrity_state(self) -> str:
        if self._integrity is None:
            return ""
        try:
            self._integrity()
        except Exception as exc:
            return str(exc) or type(exc).__name__
        return "ok"

    def overview(self) -> Overview:
        now = self._clock()
        with UnitOfWork(self._engine, write=False) as uow:
            undelivered = uow.tasks.oldest_undelivered(IAN_TASK)
            position = uow.integrity.scrub_position(lock=False)
            last_pk = uow.overview.last_instance_pk()
            progress = (
                min(1.0, position.after_pk / last_pk)
                if position.phase == INSTANCE and last_pk
                else None
            )
            return Overview(
                now=now,
                received_last_hour=uow.overview.received_since(now - timedelta(hours=1)),
                received_last_day=uow.overview.received_since(now - timedelta(days=1)),
                tasks=uow.tasks.counts(),
                oldest_undelivered_ian=min(undelivered.values()) if undelivered else None,
                nodes=list(uow.cluster.nodes()),
                associations_open=self._associations() if self._associations else None,
                integrity=self._integrity_state(),
                figures=uow.overview.figures(),
                walk_phase=position.phase,
                walk_progress=progress,
                last_pass_at=position.last_pass_at,
            )

    def study(self, study_uid: str) -> StudyView:
        """The study's facts (holder, expiry, holds, rejections, disclosures), its
        tasks (registration, IAN deliveries: by the task's subject) and its XDS-I.b
        manifests with their registry status."""
        with UnitOfWork(self._engine, write=False) as uow:
            ours = [d.unique_id for d in uow.documents.of_study(study_uid, "application/dicom")]
            manifests = [
                (found.unique_id or "", found.status.name.lower())
                for found in uow.registry.find_by_unique_ids(ours)
                if found.kind is ObjectKind.DOCUMENT_ENTRY
            ]
            return StudyView(
                uow.overview.study_facts(study_uid),
                uow.tasks.list(subject=study_uid),
                manifests,
                uow.corrections.of_subject(study_uid),
            )

    def tasks(
        self, status: str, *, limit: int = 100, kind: str | None = None, before: int | None = None
    ) -> list[Task]:
        """Tasks of ``status``, newest first; ``before``: the page after that key."""
        with UnitOfWork(self._engine, write=False) as uow:
            return uow.tasks.list(status=status, kind=kind, limit=limit, before=before)

    def retry(
        self,
        *,
        pks: list[int] | None = None,
        node: str | None = None,
        kind: str | None = None,
    ) -> int:
        """Failed tasks (these, of ``kind``, or all) due again now; with ``node`` every
        undelivered task to that AE title (``kuva tasks retry`` and the console)."""
        windows = {name: p.window for name, p in retry_policies(self._settings).items()}
        with UnitOfWork(self._engine) as uow:
            count = uow.tasks.retry(
                now=self._clock(), pks=pks or None, kind=kind, destination=node, windows=windows
            )
            uow.commit()
        return count
