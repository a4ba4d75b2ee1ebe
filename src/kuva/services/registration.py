"""Registration of studies and Instance Availability Notification: where the DICOM
side of the archive hands a study over to the XDS side and tells the customer.

A pipeline of outbox tasks (docs/design.md principle 3), so that no step is lost when
the process dies, a peer is down or a study keeps growing:

1. **Trigger.** Every instance a customer stores schedules its study's
   registration task ``[registration] stable_seconds`` after its arrival, in the
   transaction that indexes it (``instance_indexed``; the one waiting task of a
   study is moved, not multiplied). A storage commitment that covers every
   instance of the study brings the task forward to now (``commitment_verified``).
   A study that grows after its registration gets a new task: it is registered
   again.
2. **Registration task** (``REGISTRATION_TASK``). When one of the study's
   modalities is on ``[registration] modalities`` (or that list is empty), the
   study's XDS-I.b manifest is stored and registered
   (``ManifestPublisher.publish_manifest``; an earlier manifest of the study is
   replaced, RPLC, and Deprecated). Otherwise the study stays archived and
   retrievable but unpublished, and the decision is logged. Either way, one IAN
   task per node of the study's organisation with ``ian = true`` is added in the
   same transaction as the registration, naming the instances it covers (those up
   to the newest one when the registration ran).
3. **IAN task** (``IAN_TASK``): the N-CREATE of PS3.4 Annex R to that node. A
   node may be down for a weekend's maintenance: a failure is retried with the
   outbox's exponential backoff, capped at ``[registration]
   ian_backoff_max_seconds``, until ``ian_retry_hours`` after the IAN was made
   (``ian_retry_policy``), then waits as a failed task for ``kuva tasks retry``
   (``--node AE`` once the node is back). A node that took no association is not
   called again for a moment (UNREACHABLE_PAUSE). services.ian_backlog watches
   the age of each node's oldest undelivered IAN.

What the registry would not take never gets this far: while registration is on,
ingest refuses an instance whose patient cannot be an XDS patient id (no OID
Issuer of Patient ID, a Finnish identity code with a wrong check character;
model.identity, the rule the manifest's patient id is made by), so that no
instance is archived that could never be registered, with no word to its sender.
A node's ``default_issuer`` supplies a missing issuer (kuva.codec.part10).

Order: the registrations of a study run one at a time, in order (outbox queue
``registration:<study>``), and so do the IANs of a study to one node (queue
``ian:<node>:<study>``). An IAN tells the study's whole current state, so a newer
one supersedes the undelivered older ones of its queue (``add_ian``; one being
sent is let finish, and superseded if it fails): a node that was down receives
the current state of each study once, and a study whose IAN keeps failing holds
back no other study's, nor its own later ones.

Exactly once where it matters: the registration task keeps its manifest's SOP
Instance UID in its payload before storing it, and marks itself done in the
registering transaction, so a crash at any point leaves one manifest and one set
of IAN tasks. An IAN may be delivered twice if the process dies between the
peer's answer and the commit that records it (at least once, like every task).

IANs list instances as ONLINE, and those rejected by IOCM (services.iocm) as
UNAVAILABLE; a rejection registers the study again at once (``content_changed``),
and when nothing current is left its manifest is withdrawn (Deprecated, none to
replace it). Rejection notes are announced but not listed in manifests. kuva's own
manifests are never listed.

A study destroyed by retention (services.retention) is announced once more, every
instance UNAVAILABLE, to the nodes that got its IANs (``announce_destroyed``; so
are the instances a 113039 rejection note destroyed): that IAN carries its
instance list, since the index holds nothing of them any more; it supersedes the
study's IANs still waiting. Its registration tasks still waiting then have
nothing to do and end as done.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import Engine

from kuva import metrics
from kuva.config import Settings
from kuva.index.manifests import HeldInstance, StudyHoldings
from kuva.index.outbox import Task
from kuva.index.uow import UnitOfWork
from kuva.model.availability import ONLINE, UNAVAILABLE, AvailableInstance
from kuva.model.clock import Clock, utcnow
from kuva.model.directory import NodeSettings
from kuva.model.uids import made_by_kuva, new_uid
from kuva.services.imaging_document_source import UnknownStudy
from kuva.services.manifest_metadata import ManifestPublishError
from kuva.services.manifest_publishing import ManifestPublisher, PublishedManifest
from kuva.tasks.worker import PermanentFailure, RetryPolicy

log = logging.getLogger(__name__)

REGISTRATION_TASK = "study-registration"
IAN_TASK = "instance-availability"
# Schedules the registration of many studies at once (``register_again``).
REGISTRATION_BATCH_TASK = "study-registration-batch"
# A correction of more studies than this (a merge of a patient with years of
# studies) adds one batch task instead of a registration task per study, so that
# its own transaction costs the same whatever the patient holds (bench/merge.py
# --registration); the batch task schedules them a moment later.
DIRECT_REGISTRATIONS = 16


class NodeUnreachable(Exception):
    """The node took no association: every IAN to it would fail alike for now."""


class AvailabilityNotifier(Protocol):
    """The DICOM adapter that sends an IAN (kuva.dicom.ian.IanSender)."""

    def notify(
        self, node: NodeSettings, study_instance_uid: str, instances: list[AvailableInstance]
    ) -> None:
        """Deliver the notification; raise when the node did not take it
        (NodeUnreachable when it took no association)."""


# After an association to a node failed, this process's IANs to it fail at once,
# without a connection attempt, for this long (at most [registration]
# ian_backoff_max_seconds): a node that is down, or drops connections until a
# timeout, does not hold every worker while each of its studies' IANs waits out
# its own attempt - the other nodes' IANs and the other tasks keep flowing.
UNREACHABLE_PAUSE = timedelta(seconds=60)


def _registration_queue(study_uid: str) -> str:
    return f"registration:{study_uid}"


def _ian_queue(node: str, study_uid: str) -> str:
    return f"ian:{node}:{study_uid}"


def ian_retry_policy(settings: Settings) -> RetryPolicy:
    """IANs are tried for ``ian_retry_hours``, however many attempts that takes, and
    a newer one of the study to the node ends an older one that failed."""
    return RetryPolicy(
        window=timedelta(hours=settings.registration.ian_retry_hours),
        backoff_max_seconds=settings.registration.ian_backoff_max_seconds,
        superseded_by_newer=True,
    )


def retry_policies(settings: Settings) -> dict[str, RetryPolicy]:
    """The task kinds of this module retried otherwise than ``[tasks]`` says."""
    return {IAN_TASK: ian_retry_policy(settings)}


def add_ian(
    settings: Settings,
    uow: UnitOfWork,
    study_uid: str,
    node: str,
    payload: dict[str, Any],
    now: datetime,
) -> int:
    """An IAN task of the study to ``node``, superseding the older ones of the
    study to the node not yet delivered (pending or failed). Its key."""
    queue = _ian_queue(node, study_uid)
    pk = uow.tasks.add(
        IAN_TASK,
        subject=study_uid,
        queue=queue,
        destination=node,
        payload={"node": node, **payload},
        now=now,
        max_attempts=0,
        retry_until=now + ian_retry_policy(settings).window,
    )
    superseded = uow.tasks.supersede(queue, newer=pk, now=now)
    if superseded:
        log.info(
            "IAN of study %s to %s: task %d supersedes undelivered task(s) %s",
            study_uid,
            node,
            pk,
            ", ".join(map(str, superseded)),
        )
    return pk


def customer_instances(holdings: StudyHoldings) -> list[HeldInstance]:
    """The instances customers stored, without kuva's own manifests."""
    return [held for held in holdings.instances if not made_by_kuva(held.sop_instance_uid)]


def schedule_registration(
    settings: Settings, uow: UnitOfWork, study_uids: list[str], now: datetime, run_at: datetime
) -> None:
    """The studies' one waiting registration task each now falls due at ``run_at``
    (added, moved or revived: ``TaskRepository.schedule_once_many``)."""
    uow.tasks.schedule_once_many(
        REGISTRATION_TASK,
        subjects=study_uids,
        queue_of=_registration_queue,
        payload={},
        now=now,
        run_at=run_at,
        max_attempts=settings.tasks.max_attempts,
    )


def register_again(
    settings: Settings, uow: UnitOfWork, study_uids: list[str], at: datetime
) -> None:
    """Inside the transaction that rejected or restored instances (IOCM) or corrected
    the studies' patient (services.patients): the studies are registered again now (a
    new manifest, an IAN with UNAVAILABLE ones). Beyond DIRECT_REGISTRATIONS studies,
    through one REGISTRATION_BATCH_TASK."""
    if len(study_uids) <= DIRECT_REGISTRATIONS:
        schedule_registration(settings, uow, study_uids, at, at)
        return
    uow.tasks.add(
        REGISTRATION_BATCH_TASK,
        subject=f"{len(study_uids)} studies",
        payload={"studies": sorted(set(study_uids))},
        now=at,
        max_attempts=settings.tasks.max_attempts,
    )


def announce_destroyed(
    settings: Settings,
    uow: UnitOfWork,
    study_uid: str,
    organization_oid: str,
    instances: list[AvailableInstance],
    now: datetime,
) -> list[str]:
    """Inside the transaction that destroys a study: an IAN task, every instance
    UNAVAILABLE, to each node that got an IAN of the study (as long as its tasks are
    kept) and each node of its register holder that wants IANs now. The nodes."""
    nodes = {node.ae_title for node in settings.ian_nodes(organization_oid)}
    for earlier in uow.tasks.list(kind=IAN_TASK, subject=study_uid, limit=1000):
        node = settings.node(str(earlier.payload.get("node", "")))
        if node is not None and node.ian:
            nodes.add(node.ae_title)
    listed = [
        [held.series_instance_uid, held.sop_class_uid, held.sop_instance_uid, UNAVAILABLE]
        for held in instances
        if not made_by_kuva(held.sop_instance_uid)
    ]
    for ae_title in sorted(nodes):
        add_ian(
            settings,
            uow,
            study_uid,
            ae_title,
            {
                "manifest_uid": None,
                "destroyed": True,
                "instances": listed,
                "last_received_at": now.isoformat(),
            },
            now,
        )
    return sorted(nodes)


class RegistrationService:
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        manifests: ManifestPublisher,
        notifier: AvailabilityNotifier,
        *,
        clock: Clock = utcnow,
        on_enqueued: Callable[[int | None], None] | None = None,
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._manifests = manifests
        self._notifier = notifier
        self._clock = clock
        self.on_enqueued = on_enqueued
        # Node AE title -> until when its IANs fail at once (UNREACHABLE_PAUSE).
        self._unreachable: dict[str, datetime] = {}

    # ------------------------------------------------------------------ triggers

    def instance_indexed(self, uow: UnitOfWork, study_uid: str, sop_uid: str, at: datetime) -> None:
        """Ingest hook, inside the transaction that indexes an instance: the study's
        registration falls due ``stable_seconds`` after this arrival."""
        if made_by_kuva(sop_uid):
            return  # kuva's own manifest: registering it must not register again
        # From now, not from ``at``: the time an instance spent between its arrival
        # and this commit (fsync, the group-commit queue) must not shorten the wait,
        # or a study whose instances each took long would be registered half-sent.
        now = max(at, self._clock())
        stable = timedelta(seconds=self._settings.registration.stable_seconds)
        schedule_registration(self._settings, uow, [study_uid], now, now + stable)

    def content_changed(self, uow: UnitOfWork, study_uids: list[str], at: datetime) -> None:
        """IOCM and patient correction hook (the ChangedHook of services.iocm and
        services.patients): ``register_again``."""
        register_again(self._settings, uow, study_uids, at)

    def commitment_verified(self, uow: UnitOfWork, committed: Iterable[str]) -> None:
        """Storage commitment hook, inside the transaction that records its result:
        a study all of whose instances are committed is registered now."""
        now = self._clock()
        committed_uids = set(committed)
        studies = {
            stored.study_instance_uid for stored in uow.instances.get_many(committed_uids).values()
        }
        for study_uid in sorted(studies):
            holdings = uow.manifests.holdings(study_uid)
            if holdings is None or not self._covered(holdings, committed_uids):
                continue
            if uow.tasks.bring_forward(REGISTRATION_TASK, subject=study_uid, now=now):
                log.info("study %s: storage commitment covers it, registering now", study_uid)

    @staticmethod
    def _covered(holdings: StudyHoldings, committed: Collection[str]) -> bool:
        return all(held.sop_instance_uid in committed for held in customer_instances(holdings))

    # ------------------------------------------------------------------ registration

    def run_registration_batch(self, task: Task) -> None:
        """Outbox handler of ``REGISTRATION_BATCH_TASK``: each study's registration
        falls due now."""
        now = self._clock()
        with UnitOfWork(self._engine) as uow:
            schedule_registration(self._settings, uow, list(task.payload["studies"]), now, now)
            uow.commit()
        if self.on_enqueued is not None:
            self.on_enqueued(None)

    def run_registration(self, task: Task) -> None:
        """Outbox handler of ``REGISTRATION_TASK``."""
        if task.payload.get("done"):
            return  # an earlier attempt committed its registration, then died
        study_uid = task.subject
        with UnitOfWork(self._engine, write=False) as uow:
            holdings = uow.manifests.holdings(study_uid)
            destroyed = holdings is None and uow.retention.is_destroyed(study_uid)
        if destroyed:
            log.info("study %s was destroyed (retention): nothing to register", study_uid)
            return
        if holdings is None:
            raise PermanentFailure(f"no study {study_uid} in the index")
        held = customer_instances(holdings)
        if not held:
            log.info("study %s holds nothing to register", study_uid)
            return
        current = [h for h in held if h.rejection_code is None and h.rejection_note_code is None]
        modalities = sorted({h.modality for h in current if h.modality})
        covered = {
            "up_to": max(h.pk for h in held),
            "last_received_at": max(h.received_at for h in held).isoformat(),
        }
        wanted = self._settings.registration.modalities
        if not current:
            # Every image was rejected (IOCM): no manifest lists nothing; the last
            # one is withdrawn, and the IANs say UNAVAILABLE.
            self._manifests.withdraw_manifests(
                study_uid, within=lambda uow: self._registered(uow, task, holdings, covered, None)
            )
            metrics.registrations.labels("withdrawn").inc()
            self._woken()
            return
        if wanted and not set(modalities) & set(wanted):
            log.info(
                "study %s (%s) not published: no modality on the registration list (%s); "
                "archived and retrievable, IAN only",
                study_uid,
                "/".join(modalities) or "no modality",
                "/".join(wanted),
            )
            metrics.registrations.labels("unpublished").inc()
            with UnitOfWork(self._engine) as uow:
                self._registered(uow, task, holdings, covered, None)
                uow.commit()
            self._woken()
            return
        manifest_uid = task.payload.get("manifest_uid")
        if manifest_uid is None:
            # Kept before the manifest is stored: a retry registers that same one.
            manifest_uid = new_uid()
            with UnitOfWork(self._engine) as uow:
                uow.tasks.set_payload(task.pk, {**task.payload, "manifest_uid": manifest_uid})
                uow.commit()

        def within(uow: UnitOfWork, published: PublishedManifest) -> None:
            self._registered(uow, task, holdings, covered, published.document_unique_id)

        try:
            self._manifests.publish_manifest(study_uid, manifest_uid=manifest_uid, within=within)
        except (UnknownStudy, ManifestPublishError) as exc:
            # Refused by the registry's rules or not listable: trying again will not
            # help until the study or the configuration changes (a new instance
            # takes the task up again; so does ``kuva tasks retry``).
            metrics.registrations.labels("refused").inc()
            raise PermanentFailure(str(exc)) from exc
        metrics.registrations.labels("published").inc()
        self._woken()

    def _registered(
        self,
        uow: UnitOfWork,
        task: Task,
        holdings: StudyHoldings,
        covered: dict[str, Any],
        manifest_uid: str | None,
    ) -> None:
        """In the registering transaction: the IAN tasks, and this task marked done."""
        now = self._clock()
        study_uid = holdings.study_instance_uid
        nodes = self._settings.ian_nodes(holdings.organization_oid)
        for node in nodes:
            add_ian(
                self._settings,
                uow,
                study_uid,
                node.ae_title,
                {"manifest_uid": manifest_uid, **covered},
                now,
            )
        payload = {**task.payload, "done": True}
        if manifest_uid is not None:
            payload["manifest_uid"] = manifest_uid  # the claimed copy predates it
        uow.tasks.set_payload(task.pk, payload)
        log.info(
            "study %s registered (%d instances); IAN to %s",
            study_uid,
            len(customer_instances(holdings)),
            ", ".join(node.ae_title for node in nodes) or "no node",
        )

    def _woken(self) -> None:
        if self.on_enqueued is not None:
            self.on_enqueued(None)

    # ------------------------------------------------------------------ IAN

    def run_ian(self, task: Task) -> None:
        """Outbox handler of ``IAN_TASK``: notify one node of one registration."""
        payload = task.payload
        study_uid = task.subject
        node = self._settings.node(payload["node"])
        if node is None or not node.ian:
            raise PermanentFailure(f"node {payload['node']} is no longer configured for IAN")
        if "instances" in payload:  # the study was destroyed: the list is here
            instances = [AvailableInstance(*listed) for listed in payload["instances"]]
        else:
            with UnitOfWork(self._engine, write=False) as uow:
                holdings = uow.manifests.holdings(study_uid)
                destroyed = holdings is None and uow.retention.is_destroyed(study_uid)
            if destroyed:
                log.info("study %s was destroyed: its destruction's IAN says so", study_uid)
                return
            if holdings is None:
                raise PermanentFailure(f"no study {study_uid} in the index")
            up_to = int(payload["up_to"])
            instances = [
                AvailableInstance(
                    h.series_instance_uid,
                    h.sop_class_uid,
                    h.sop_instance_uid,
                    UNAVAILABLE if h.rejection_code else ONLINE,
                )
                for h in customer_instances(holdings)
                if h.pk <= up_to
            ]
        self._notify(node, study_uid, instances)
        latency = self._clock() - datetime.fromisoformat(payload["last_received_at"])
        metrics.registration_latency.observe(max(latency.total_seconds(), 0.0))
        log.info(
            "IAN of study %s (%d instances) acknowledged by %s, %.1f s after its last instance",
            study_uid,
            len(instances),
            node.ae_title,
            latency.total_seconds(),
        )

    def _notify(
        self, node: NodeSettings, study_uid: str, instances: list[AvailableInstance]
    ) -> None:
        """Send, unless the node was unreachable moments ago (UNREACHABLE_PAUSE)."""
        paused = self._unreachable.get(node.ae_title)
        if paused is not None and self._clock() < paused:
            raise NodeUnreachable(
                f"{node.ae_title} took no association at the last attempt; "
                f"not tried again before {paused.isoformat(timespec='seconds')}"
            )
        try:
            self._notifier.notify(node, study_uid, instances)
        except NodeUnreachable:
            pause = min(
                UNREACHABLE_PAUSE,
                timedelta(seconds=self._settings.registration.ian_backoff_max_seconds),
            )
            self._unreachable[node.ae_title] = self._clock() + pause
            raise
        self._unreachable.pop(node.ae_title, None)
