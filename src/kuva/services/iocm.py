"""IOCM: rejection notes applied as corrections in the index (IHE RAD TF-1/TF-2
Imaging Object Change Management; PS3.16 CID 7011).

Stored bytes never change (docs/design.md principle 1). A rejection note (a KOS titled
113001, 113037, 113038 or 113039, model.rejection) is stored like any instance and,
in the same transaction, records a rejection for every instance it lists. A held
instance is marked rejected at once; one not received yet is marked when it
arrives. Rejected instances leave every outgoing path (C-FIND, QIDO-RS, C-MOVE,
C-GET, WADO, RAD-69, manifests) and are reported UNAVAILABLE in IANs; the studies
concerned are registered again at once. A rejection note is refused when a study it
names is held for another organisation (only the register holder corrects its
studies). A rejected instance sent again is refused (113037, 113038) or ignored
with a warning (113001, 113039). An operator can revoke a note (``kuva iocm revoke``),
which puts its instances back; the history of both stays in ``correction``.

Instances rejected with 113039 (Data Retention Policy Expired) may be destroyed,
not only hidden, but retention wins over the note (``RetentionHook``:
services.retention decides by ``model.rejection.standing_of``):

* no study they belong to is under legal hold (on the study or its patient) and
  the archive's own policy has expired or none covers it: the transaction that
  applies the note adds their destruction, which deletes their blobs and rows and
  writes a destruction record naming the note;
* a study's expiry is still ahead: hidden like any rejection, destroyed with the
  study when it expires (the retention run);
* a study is held: hidden, not destroyed; the note is answered with a warning
  (``NOT_DESTROYED``, 0xB410), the correction history records it, and releasing the hold
  destroys them when they are then due.

An instance such a note names that arrives afterwards (first, or again after its
destruction) is not stored at all when the destruction is due: ignored with a
warning, like a resend (``DestroyedOnArrival``); otherwise it is kept, rejected.
The rejection rows stay. The other three codes destroy nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Protocol

from sqlalchemy import Engine

from kuva.index.instances import NewInstance
from kuva.index.uow import UnitOfWork
from kuva.model.clock import Clock, utcnow
from kuva.model.instance import InstanceAttributes
from kuva.model.rejection import Standing, eligible_for_destruction, refuses_resend

log = logging.getLogger(__name__)

# (unit of work, Study Instance UIDs whose content changed, when)
ChangedHook = Callable[[UnitOfWork, list[str], datetime], None]


class RetentionHook(Protocol):
    """Retention's say on instances a 113039 note rejects (services.retention)."""

    def standing(self, uow: UnitOfWork, study_uids: Collection[str]) -> Standing:
        """Whether their destruction is due now, waits for the studies' expiry, or
        a legal hold keeps them."""

    def schedule_rejected(self, uow: UnitOfWork, note_uid: str, at: datetime) -> None:
        """Add the destruction of the note's rejected instances to the transaction."""


class Verdict(Enum):
    REFUSED = "rejected"  # a rejected instance sent again: refused
    IGNORED = "ignored"  # a rejected instance sent again: not stored, a warning
    FOREIGN = "foreign"  # a rejection note from another organisation than the holder


class DestroyedOnArrival(Exception):
    """An arriving instance a 113039 note rejected (its retention ended; it may have
    been destroyed already): it is not stored, and answered as ignored. Raised
    inside the indexing transaction, which the caller undoes."""

    def __init__(self, code: str) -> None:
        super().__init__(f"instance rejected ({code}), ignored")
        self.code = code


@dataclass(frozen=True)
class Applied:
    changed: list[str]  # Study Instance UIDs whose content changed
    # a 113039 note whose instances are kept, not destroyed: why (the warning's
    # Error Comment, 64 characters); None otherwise
    not_destroyed: str | None = None


@dataclass(frozen=True)
class Screening:
    verdict: Verdict
    message: str  # for the DICOM Error Comment (64 characters) and the log


def screen(
    uow: UnitOfWork, attrs: InstanceAttributes, organization_oid: str, held: bool
) -> Screening | None:
    """Before storing: what IOCM says of an incoming instance (None: go on)."""
    note = attrs.rejection_note
    if note is not None:
        studies = {ref.study_instance_uid for ref in note.references}
        holders = uow.rejections.holders(studies)
        if any(holder != organization_oid for holder in holders.values()):
            return Screening(
                Verdict.FOREIGN, "rejection note refused: not the study's register holder"
            )
        return None
    if not held:
        return None  # a rejection that names it is applied when it is indexed
    rejection = uow.rejections.get(attrs.sop_instance_uid)
    if rejection is None:
        return None
    if refuses_resend(rejection.code):
        return Screening(Verdict.REFUSED, f"instance rejected ({rejection.code}), refused")
    return Screening(Verdict.IGNORED, f"instance rejected ({rejection.code}), ignored")


# The warning's Error Comment (64 characters) when a 113039 note destroys nothing now.
NOT_DESTROYED = {
    Standing.HELD: "study under legal hold: rejected, not destroyed",
    Standing.AT_EXPIRY: "retention not expired: rejected, destroyed when it expires",
}


def apply(
    uow: UnitOfWork, new: NewInstance, pk: int, retention: RetentionHook | None = None
) -> Applied:
    """Inside the transaction that indexed instance ``pk``: apply the rejection note it
    is, or the rejection that names it."""
    attrs = new.attributes
    note = attrs.rejection_note
    if note is None:
        study_pk = uow.rejections.mark_on_arrival(pk, attrs.sop_instance_uid, new.organization_oid)
        if study_pk is None:
            return Applied([])
        changed = uow.rejections.study_uids([study_pk])
        rejected = uow.rejections.get(attrs.sop_instance_uid)
        if (
            rejected is not None
            and eligible_for_destruction(rejected.code)
            and (retention is None or retention.standing(uow, changed) is Standing.DUE)
        ):
            # Its retention ended: it is not kept (the caller's savepoint is undone).
            raise DestroyedOnArrival(rejected.code)
        log.info("instance %s arrived already rejected", attrs.sop_instance_uid)
        return Applied(changed)
    added = uow.rejections.record(
        note, attrs.sop_instance_uid, new.organization_oid, new.received_at
    )
    changed = uow.rejections.study_uids(uow.rejections.mark(added))
    detail: dict[str, object] = {
        "code": note.code,
        "listed": len(note.references),
        "newly_rejected": len(added),
        "studies": sorted({ref.study_instance_uid for ref in note.references}),
    }
    warning = None
    if retention is not None and added and eligible_for_destruction(note.code):
        newly = set(added)
        studies = {r.study_instance_uid for r in note.references if r.sop_instance_uid in newly}
        standing = retention.standing(uow, studies)
        detail["retention"] = standing.value
        if standing is Standing.DUE:
            retention.schedule_rejected(uow, attrs.sop_instance_uid, new.received_at)
        else:
            warning = NOT_DESTROYED[standing]
            log.warning(
                "rejection note %s (%s): %s; %d instance(s) rejected, not destroyed",
                attrs.sop_instance_uid,
                note.code,
                standing.value,
                len(added),
            )
    uow.corrections.append(
        "rejection", attrs.sop_instance_uid, detail, new.source_ae, new.received_at
    )
    log.info(
        "rejection note %s (%s): %d of %d listed instance(s) newly rejected",
        attrs.sop_instance_uid,
        note.code,
        len(added),
        len(note.references),
    )
    return Applied(changed, warning)


class RejectionService:
    """The operator's side: revoking a rejection note."""

    def __init__(
        self, engine: Engine, *, clock: Clock = utcnow, on_changed: ChangedHook | None = None
    ) -> None:
        self._engine = engine
        self._clock = clock
        self.on_changed = on_changed

    def revoke(self, note_uid: str, *, by: str) -> int:
        """Undo a rejection note: its instances are current again. Returns how many
        rejections were revoked (0: the note rejected nothing, is unknown, or its
        instances are destroyed or being destroyed by retention)."""
        now = self._clock()
        with UnitOfWork(self._engine) as uow:
            if uow.retention.blocks_revocation(note_uid):
                log.warning(
                    "rejection note %s not revoked: its instances are destroyed or being "
                    "destroyed (retention)",
                    note_uid,
                )
                return 0
            uids = uow.rejections.delete_note(note_uid)
            if not uids:
                return 0
            changed = uow.rejections.study_uids(uow.rejections.unmark(uids))
            uow.corrections.append(
                "revocation", note_uid, {"instances": len(uids), "studies": changed}, by, now
            )
            if self.on_changed is not None and changed:
                self.on_changed(uow, changed, now)
            uow.commit()
        log.info(
            "rejection note %s revoked by %s: %d instance(s) current again", note_uid, by, len(uids)
        )
        return len(uids)
