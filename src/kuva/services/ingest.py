"""Ingest: archive one received instance, durably, exactly as received.

The adapter has already streamed the object's bytes into a blob writer (hashing on
the way). Here the archive decides:

* an instance that breaks the rules (model.validation) is refused, nothing stored;
  with ``for_registry`` (registration on, the default) so is one whose patient
  the XDS registry would not take (model.identity): it could be archived but
  never registered, and its sender would never learn of it;
* the same SOP Instance UID again with the same bytes is a success, nothing new;
* the same SOP Instance UID with other bytes is refused: stored objects are never
  replaced, corrections go through IOCM (rejection + replacement instances);
* an instance of a study another organisation archived is refused: a study has one
  register holder;
* an instance that starts a study the archive destroyed (retention, or an IOCM
  113039 note) is refused until an operator allows the study to be sent again
  (``kuva retention allow-resend``): what was destroyed stays destroyed;
* IOCM (services.iocm) screens it: a rejected instance sent again is refused or
  ignored, a rejection note from another organisation than the register holder is
  refused; a rejection note is applied, and an instance a note named before it
  arrived is marked rejected, in the transaction that indexes it;
* otherwise the blob is made durable (fsync) while its index row is written, the
  row is committed (group commit) only after the blob is durable, and only then
  is success reported (docs/design.md principle 2).

All of this is decided in the one write transaction that indexes the instance:
whether the index holds its SOP Instance UID already is answered by the insert
itself (``Screened`` undoes what was written), so a new instance pays for no
separate read.

``on_indexed`` runs inside the transaction that indexes a new instance, and
``on_changed`` there too when IOCM changed what studies hold, so that the work they
cause commits with it (the study's registration, services.registration).
``on_added`` there too, with where the instance went (the study's expiry,
services.retention), and ``on_retention_expired`` when an IOCM 113039 rejection
note is applied (its instances' destruction, services.retention). A 113039 note
whose instances retention keeps (a legal hold, an expiry ahead) is stored and
applied, answered with a warning (``NOT_DESTROYED``). An instance a 113039 note
named before it arrived is not kept when its destruction is due: its indexing is
undone, its new blob deleted, and it is answered as ignored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from kuva import metrics
from kuva.index.group_commit import GroupCommitter
from kuva.index.instances import (
    AddedTree,
    ForeignStudy,
    NewInstance,
    StoredInstance,
    StudyDestroying,
    TreeConflict,
)
from kuva.index.retention import DestructionRecord
from kuva.index.uow import UnitOfWork
from kuva.model.clock import Clock, utcnow
from kuva.model.directory import OrganizationState
from kuva.model.identity import TESTING_RULE, is_test_identity_code
from kuva.model.instance import InstanceAttributes
from kuva.model.validation import instance_problems
from kuva.services import iocm
from kuva.storage import BlobRef, BlobStore, BlobWriter

log = logging.getLogger(__name__)


class StoreStatus(Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"  # same instance, same bytes: success, nothing new
    INVALID = "invalid"  # breaks the rules: nothing stored
    CONFLICT = "conflict"  # same SOP Instance UID, other content: refused
    REJECTED = "rejected"  # rejected by IOCM (113037, 113038) and sent again: refused
    # rejected by IOCM (113001, 113039) and sent again, or arriving after a 113039
    # note named it: not stored, a warning
    IGNORED = "ignored"
    # a rejection note from another organisation, or an instance of a study another
    # organisation archived: refused
    FOREIGN = "foreign"
    DESTROYED = "destroyed"  # of a study destroyed, no resend allowed: refused
    # a 113039 rejection note stored and applied whose instances retention keeps
    # (legal hold, expiry ahead): rejected, not destroyed; a warning
    NOT_DESTROYED = "not-destroyed"
    FAILED = "failed"  # the archive could not store it (disk, database)
    # the sending organisation's state forbids it (testing: test identity codes only)
    NOT_AUTHORIZED = "not-authorized"


@dataclass(frozen=True)
class IncomingInstance:
    attributes: InstanceAttributes
    blob: BlobWriter  # the object's bytes, written but not yet committed
    source_ae: str
    organization_oid: str


@dataclass(frozen=True)
class StoreOutcome:
    status: StoreStatus
    message: str = ""
    sha256: str = ""

    @property
    def ok(self) -> bool:
        return self.status in (StoreStatus.STORED, StoreStatus.DUPLICATE, StoreStatus.NOT_DESTROYED)


# Fits the 64 characters of a DICOM Error Comment. Corrections are a rejection
# note (IOCM) plus a new instance with a new SOP Instance UID.
CONFLICT_MESSAGE = "SOP Instance already archived, other content; correct via IOCM"


class StudyDestroyed(Exception):
    """The instance starts a study the archive destroyed, and no operator allowed it
    to be archived again. Raised inside the indexing transaction, which is undone."""

    def __init__(self, record: DestructionRecord) -> None:
        when = (record.destroyed_at or record.decided_at).date().isoformat()
        how = "IOCM 113039" if record.rejection_note_uid else "retention"
        # Fits the 64 characters of an Error Comment.
        super().__init__(f"study destroyed {when} ({how}); needs allow-resend")


class Screened(Exception):
    """Not indexed after all (raised inside the indexing transaction, which is
    undone): the index holds the SOP Instance UID already (``held``), or IOCM refuses
    the instance (``screening``), or both."""

    def __init__(self, held: StoredInstance | None, screening: iocm.Screening | None) -> None:
        super().__init__("instance not indexed")
        self.held = held
        self.screening = screening


# (unit of work, Study Instance UID, SOP Instance UID, received at)
IndexedHook = Callable[[UnitOfWork, str, str, datetime], None]
# (unit of work, the instance, where it went)
AddedHook = Callable[[UnitOfWork, NewInstance, AddedTree], None]

_VERDICTS = {
    iocm.Verdict.REFUSED: StoreStatus.REJECTED,
    iocm.Verdict.IGNORED: StoreStatus.IGNORED,
    iocm.Verdict.FOREIGN: StoreStatus.FOREIGN,
}


# What each refusal of the study tree is answered with.
_TREE_REFUSALS: dict[type[Exception], StoreStatus] = {
    TreeConflict: StoreStatus.INVALID,
    ForeignStudy: StoreStatus.FOREIGN,
    StudyDestroyed: StoreStatus.DESTROYED,
    StudyDestroying: StoreStatus.FAILED,  # being destroyed: try again later
}


class IngestService:
    def __init__(
        self,
        blobs: BlobStore,
        committer: GroupCommitter,
        clock: Clock = utcnow,
        *,
        for_registry: bool = False,
        organization_state: Callable[[str | None], OrganizationState] | None = None,
    ) -> None:
        """``organization_state``: the state of a sending organisation now
        (Settings.organization_state); None: every organisation is active."""
        self._organization_state = organization_state
        self._blobs = blobs
        self._committer = committer
        self._clock = clock
        self._for_registry = for_registry
        self.on_indexed: IndexedHook | None = None
        self.on_changed: iocm.ChangedHook | None = None
        self.on_added: AddedHook | None = None
        self.on_retention_expired: iocm.RetentionHook | None = None

    def store(self, incoming: IncomingInstance) -> StoreOutcome:
        started = time.perf_counter()
        outcome = self._store(incoming)
        metrics.instances_received.labels(outcome.status.value).inc()
        if outcome.status is StoreStatus.STORED:
            metrics.store_seconds.observe(time.perf_counter() - started)
        return outcome

    def state_refusal(self, organization: str, patient_id: str) -> str | None:
        """Why the organisation's state forbids archiving this patient's instance, or
        None: suspended and terminated organisations archive nothing, one in
        testing test identity codes only (services.directory)."""
        if self._organization_state is None:
            return None
        state = self._organization_state(organization)
        if state is OrganizationState.TESTING and not is_test_identity_code(patient_id):
            return TESTING_RULE
        if state in (OrganizationState.SUSPENDED, OrganizationState.TERMINATED):
            return f"organisation {state}"
        return None

    def _store(self, incoming: IncomingInstance) -> StoreOutcome:
        attrs = incoming.attributes
        blob = incoming.blob
        refusal = self.state_refusal(incoming.organization_oid, attrs.patient.patient_id)
        if refusal is not None:
            blob.discard()
            log.warning(
                "refused instance %s from %s (%s): %s",
                attrs.sop_instance_uid or "(no SOP Instance UID)",
                incoming.source_ae,
                incoming.organization_oid,
                refusal,
            )
            return StoreOutcome(StoreStatus.NOT_AUTHORIZED, refusal)
        problems = instance_problems(attrs, for_registry=self._for_registry)
        if problems:
            blob.discard()
            log.warning(
                "refused instance %s from %s: %s",
                attrs.sop_instance_uid or "(no SOP Instance UID)",
                incoming.source_ae,
                "; ".join(problems),
            )
            return StoreOutcome(StoreStatus.INVALID, "; ".join(problems))

        # The blob is made durable (fsync, link, folder fsync) while the index
        # statements run; the index transaction commits only after it succeeded.
        digest = blob.hexdigest()
        pending = blob.commit_soon()
        new = NewInstance(
            attributes=attrs,
            blob_key=blob.key,
            size=blob.size,
            sha256=digest,
            received_at=self._clock(),
            source_ae=incoming.source_ae,
            organization_oid=incoming.organization_oid,
        )
        try:
            indexed = self._committer.run(lambda uow: self._index(uow, new), durable=pending)
        except Screened as exc:
            # Held already, or refused by IOCM: nothing of it was written.
            return self._screened(incoming, exc, pending, digest)
        except (TreeConflict, ForeignStudy, StudyDestroyed, StudyDestroying) as exc:
            # The tree refused it: nothing of it is kept (its indexing was undone).
            self._forget_when_stored(pending)
            status = _TREE_REFUSALS[type(exc)]
            log.warning(
                "refused instance %s from %s (%s): %s",
                attrs.sop_instance_uid,
                incoming.source_ae,
                incoming.organization_oid,
                exc,
            )
            if status is StoreStatus.INVALID:
                return StoreOutcome(status, f"{exc}; corrections go through IOCM")
            return StoreOutcome(status, str(exc))
        except iocm.DestroyedOnArrival as exc:
            self._forget_when_stored(pending)
            log.warning(
                "ignored instance %s from %s: %s", attrs.sop_instance_uid, incoming.source_ae, exc
            )
            return StoreOutcome(StoreStatus.IGNORED, str(exc))
        except Exception as exc:
            if pending.done() and pending.exception() is exc:
                # The blob could not be made durable (disk, a name taken by other bytes).
                log.error("could not store blob of %s: %s", attrs.sop_instance_uid, exc)
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                return StoreOutcome(StoreStatus.FAILED, f"storage failure: {reason}")
            log.exception("could not index instance %s", attrs.sop_instance_uid)
            self._forget_when_stored(pending)
            return StoreOutcome(StoreStatus.FAILED, f"index failure: {type(exc).__name__}")
        ref = pending.result()
        if ref.created:
            metrics.bytes_stored.inc(ref.size)
        log.info(
            "stored %s (%d bytes, %s) from %s",
            attrs.sop_instance_uid,
            ref.size,
            ref.sha256[:12],
            incoming.source_ae,
        )
        if indexed.not_destroyed is not None:
            return StoreOutcome(StoreStatus.NOT_DESTROYED, indexed.not_destroyed, ref.sha256)
        return StoreOutcome(StoreStatus.STORED, sha256=ref.sha256)

    def _forget_when_stored(self, pending: Future[BlobRef]) -> None:
        """Delete the blob being committed once it is, as no row references it (an
        instance not kept after all, or whose index commit failed); one that was
        there before stays."""
        try:
            ref = pending.result()
        except Exception:
            return  # never stored
        if not ref.created:
            return
        try:
            self._blobs.delete(ref.key)
        except OSError as exc:  # an orphan then, which kuva verify reports
            log.error("could not delete the unkept blob %s: %s", ref.key, exc)

    def _index(self, uow: UnitOfWork, new: NewInstance) -> iocm.Applied:
        """Index a new instance, with what IOCM and the hooks do with it. Raises
        ``Screened`` (its savepoint undone) when IOCM refuses it or the index holds
        its SOP Instance UID already: that question costs a new instance nothing,
        as the insert itself answers it."""
        attrs = new.attributes
        organization = new.organization_oid
        if attrs.rejection_note is not None:
            screening = iocm.screen(uow, attrs, organization, held=False)
            if screening is not None:
                raise Screened(None, screening)
        try:
            pk = uow.instances.add(new)
        except (TreeConflict, ForeignStudy, StudyDestroying):
            # A SOP Instance UID held already is a resend, whatever its tree says.
            held = uow.instances.get(attrs.sop_instance_uid)
            if held is not None:
                raise Screened(held, iocm.screen(uow, attrs, organization, held=True)) from None
            raise
        if pk is None:  # held already (sent before, or by another association meanwhile)
            held = uow.instances.get(attrs.sop_instance_uid)
            if held is None:  # pragma: no cover - a row found by the insert cannot vanish
                raise RuntimeError("instance row vanished while being indexed")
            raise Screened(held, iocm.screen(uow, attrs, organization, held=True))
        added = uow.instances.last_added
        if added is not None and added.new_study:
            # Only a study the index does not hold can have been destroyed: the
            # instances of held studies pay nothing for this.
            barring = uow.retention.barring_resend(attrs.study.study_instance_uid)
            if barring is not None:
                raise StudyDestroyed(barring)
        if self.on_added is not None and added is not None:
            self.on_added(uow, new, added)
        if self.on_indexed is not None:
            self.on_indexed(
                uow, attrs.study.study_instance_uid, attrs.sop_instance_uid, new.received_at
            )
        applied = iocm.apply(uow, new, pk, self.on_retention_expired)
        if applied.changed and self.on_changed is not None:
            self.on_changed(uow, applied.changed, new.received_at)
        return applied

    def _screened(
        self, incoming: IncomingInstance, screened: Screened, pending: Future[BlobRef], digest: str
    ) -> StoreOutcome:
        """An instance not indexed: IOCM refused it, or its SOP Instance UID is held."""
        screening = screened.screening
        if screening is not None:
            if screened.held is None or screened.held.sha256 != digest:
                self._forget_when_stored(pending)  # no row names these bytes
            log.warning(
                "%s instance %s from %s: %s",
                "ignored" if screening.verdict is iocm.Verdict.IGNORED else "refused",
                incoming.attributes.sop_instance_uid,
                incoming.source_ae,
                screening.message,
            )
            return StoreOutcome(_VERDICTS[screening.verdict], screening.message)
        assert screened.held is not None
        outcome = self._resent(incoming, screened.held, digest)
        if outcome.status is StoreStatus.CONFLICT:
            self._forget_when_stored(pending)  # no row names these bytes
        return outcome

    def _resent(
        self, incoming: IncomingInstance, existing: StoredInstance, sha256: str
    ) -> StoreOutcome:
        uid = existing.sop_instance_uid
        if existing.sha256 == sha256:
            log.info("instance %s received again from %s, identical: kept", uid, incoming.source_ae)
            return StoreOutcome(StoreStatus.DUPLICATE, sha256=sha256)
        log.warning(
            "refused instance %s from %s: already archived with other content "
            "(stored sha256 %s, received %s)",
            uid,
            incoming.source_ae,
            existing.sha256[:12],
            sha256[:12],
        )
        return StoreOutcome(StoreStatus.CONFLICT, CONFLICT_MESSAGE, sha256=sha256)
