"""Retention: each study's expiry kept in the index, legal holds, and the
destruction of what has expired (docs/design.md: keep for the legal period, then
destroy; the rules are configuration, model.retention).

**Expiry.** Stored per study (``study.expires_on`` and the policy that sets it),
computed in the transaction that changes what it depends on: at ingest when an
instance starts a study or a series (its modality) or is the first of its study of
a SOP class a policy names (``instance_added``; any other instance costs no
statement), when a patient's
birth or death date changes or a merge moves studies (``studies_changed``), and for
every study by ``kuva retention recompute`` after the policies change. What has
expired is then one range scan of ``ix_study_expires_on``.

**Legal hold.** On a study or a patient (its studies, current or as received); a
held study is never destroyed. Holds and releases are kept in ``correction``.

**Destruction** of a study, in an order that survives a crash at any point:

1. one committed transaction: the destruction record is written (decided, not
   finished), the study is marked ``destroying``, every instance rejected 113039
   and the counters emptied (so C-FIND, QIDO-RS, WADO, C-MOVE, C-GET, RAD-69 and
   the integrity check no longer see it), its XDS-I manifests Deprecated in the
   registry (the registry's own deprecation path);
2. every copy of every blob of the study deleted (storage ``delete``: unlink and
   folder fsync), except blobs another row still references;
3. one transaction: the rows of the instances, series, study, the study's kuva
   manifests in the repository, and the patient when nothing of it is left and
   nothing refers to it, deleted; the record finished (instances, SHA-256 list
   and its digest); an IAN with every instance UNAVAILABLE to the nodes that got
   the study's IANs; the 110105 DICOM Study Deleted audit event.

**What was destroyed stays destroyed.** An instance that would start a study again
whose destruction is recorded is refused (services.ingest) until an operator
allows it (``kuva retention allow-resend``, ``allow_resend``: the records say so,
with a correction and a Security Alert audit event); then the study is archived as
new. Instances a 113039 note destroyed stay answered by IOCM (not stored, a
warning) whatever the allowance: that note destroyed them, not their study.

A run first finishes what an earlier one left unfinished (records without
``destroyed_at``): step 2 again (deleting a deleted blob is no error), then step 3.
IOCM rejection notes titled 113039 (Data Retention Policy Expired) take the same
steps for the instances they reject (step 1 is the rejection itself), through an
outbox task added in the transaction that applies the note; their IAN lists the
destroyed instances UNAVAILABLE (the study's registration may not have announced
them before they went). Retention wins over such a note (``standing``): the task
is added only when no study of those instances is held and none has an expiry
ahead, and the task checks that again; a study with its expiry ahead loses them
with itself when it expires; releasing a hold adds the task for the notes whose
destruction the hold kept back.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from kuva import metrics
from kuva.config import Settings
from kuva.index.instances import AddedTree, NewInstance
from kuva.index.outbox import Task
from kuva.index.retention import DestructionRecord, DoomedInstance, ExpiredStudy, Hold
from kuva.index.uow import UnitOfWork
from kuva.model import audit as a
from kuva.model.availability import UNAVAILABLE, AvailableInstance
from kuva.model.clock import Clock, utcnow
from kuva.model.patient import PatientKey
from kuva.model.rejection import REJECTION_TITLES, RETENTION_EXPIRED, Standing, standing_of
from kuva.model.retention import Expiry, RetentionPolicy, StudyFacts, study_expiry
from kuva.model.uids import made_by_kuva
from kuva.services.audit import AuditTrail
from kuva.services.manifest_publishing import deprecate_manifests
from kuva.services.registration import announce_destroyed
from kuva.storage import BlobStore
from kuva.tasks.periodic import Periodic

log = logging.getLogger(__name__)

# Destroys the instances of a 113039 rejection note (subject: the note's UID).
REJECTED_DESTRUCTION_TASK = "retention-destroy-rejected"
# The policy a destruction record names for instances an IOCM note destroyed.
IOCM_POLICY = f"IOCM {RETENTION_EXPIRED}"
RECOMPUTE_BATCH = 500
# (study, SOP class) pairs remembered by the ingest hook (``instance_added``).
COUNTED_PAIRS = 100_000


class _Finished(Exception):
    """The destruction was finished meanwhile (by another node)."""


class RetentionError(Exception):
    """An operator's request that cannot be carried out (unknown study or patient)."""


@dataclass(frozen=True)
class Destroyed:
    study_instance_uid: str
    instances: int
    blobs_deleted: int


@dataclass(frozen=True)
class RunReport:
    expired: list[ExpiredStudy]  # what was found expired (listed by a dry run)
    destroyed: list[Destroyed]
    resumed: int  # unfinished destructions finished first
    failed: list[str] = field(default_factory=list)  # studies whose destruction failed


def digest_of(sha256s: Sequence[str]) -> tuple[str, str]:
    """(the sorted SHA-256 list, one per line; the SHA-256 of that text)."""
    text = "\n".join(sorted(sha256s))
    return text, hashlib.sha256(text.encode("ascii")).hexdigest()


class RetentionService:
    def __init__(
        self,
        engine: Engine,
        blobs: BlobStore,
        settings: Settings,
        *,
        audit: AuditTrail | None = None,
        clock: Clock = utcnow,
        on_enqueued: Callable[[int | None], None] | None = None,
    ) -> None:
        self._engine = engine
        self._blobs = blobs
        self._settings = settings
        self._audit = audit
        self._clock = clock
        self.on_enqueued = on_enqueued
        self.policies: list[RetentionPolicy] = settings.retention.rules()
        self._named_classes = frozenset(c for p in self.policies for c in p.sop_classes)
        self._by_classes = bool(self._named_classes)
        # (study key, SOP class) pairs whose expiry this process computed with that
        # class in the study: the next instances of the class need no statement
        # (a study's classes only grow at ingest). Bounded, least recent out.
        self._counted: OrderedDict[tuple[int, str], None] = OrderedDict()
        self._counted_lock = threading.Lock()

    # ------------------------------------------------------------------ expiry

    def instance_added(self, uow: UnitOfWork, new: NewInstance, added: AddedTree) -> None:
        """Ingest hook (``IngestService.on_added``), in the indexing transaction: the
        study's expiry again when the instance can change it (a new study or series,
        or a SOP class a policy names); no statement otherwise."""
        if not self.policies:
            return
        sop_class = new.attributes.sop_class_uid
        named = sop_class in self._named_classes
        if added.new_study or added.new_series or (named and not self._seen(added, sop_class)):
            self._recompute(uow, [added.study_pk])

    def _seen(self, added: AddedTree, sop_class: str) -> bool:
        with self._counted_lock:
            key = (added.study_pk, sop_class)
            if key in self._counted:
                self._counted.move_to_end(key)
                return True
            return False

    def _count(self, facts: dict[int, StudyFacts]) -> None:
        with self._counted_lock:
            for pk, study in facts.items():
                for sop_class in study.sop_classes & self._named_classes:
                    self._counted[(pk, sop_class)] = None
                    self._counted.move_to_end((pk, sop_class))
            while len(self._counted) > COUNTED_PAIRS:
                self._counted.popitem(last=False)

    def studies_changed(self, uow: UnitOfWork, study_uids: list[str], _at: datetime) -> None:
        """Patient hook (services.patients), in the correcting transaction: the
        studies' patient or its birth or death date changed."""
        if self.policies and study_uids:
            self._recompute(uow, uow.retention.study_pks(study_uids))

    def _recompute(self, uow: UnitOfWork, study_pks: list[int]) -> int:
        facts = uow.retention.facts(study_pks, sop_classes=self._by_classes)
        if self._by_classes:
            self._count(facts)
        expiries: dict[int, Expiry | None] = {
            pk: study_expiry(self.policies, study) for pk, study in facts.items()
        }
        uow.retention.set_expiry(expiries)
        return len(expiries)

    def recompute_all(self) -> int:
        """Every study's expiry under the policies now configured, a batch per
        transaction (keyset over the study key). How many studies."""
        after, done = 0, 0
        while True:
            with UnitOfWork(self._engine) as uow:
                pks = uow.retention.study_pks_after(after, RECOMPUTE_BATCH)
                if not pks:
                    return done
                facts = uow.retention.facts(pks, sop_classes=self._by_classes)
                uow.retention.set_expiry(
                    {pk: study_expiry(self.policies, study) for pk, study in facts.items()}
                )
                uow.commit()
            after, done = pks[-1], done + len(pks)

    def expiry_of(self, study_uid: str) -> tuple[date | None, str | None] | None:
        with UnitOfWork(self._engine, write=False) as uow:
            return uow.retention.expiry_of(study_uid)

    # ------------------------------------------------------------------ holds

    def hold(
        self,
        *,
        study_uid: str | None = None,
        patient: PatientKey | None = None,
        reason: str,
        by: str,
    ) -> int:
        now = self._clock()
        with UnitOfWork(self._engine) as uow:
            patient_pk = self._subject(uow, study_uid, patient)
            pk = uow.retention.add_hold(
                study_uid=study_uid, patient_pk=patient_pk, reason=reason, by=by, at=now
            )
            uow.corrections.append(
                "legal-hold", study_uid or str(patient), {"reason": reason}, by, now
            )
            uow.commit()
        log.info("legal hold %d placed by %s", pk, by)
        return pk

    def release(
        self, *, study_uid: str | None = None, patient: PatientKey | None = None, by: str
    ) -> int:
        now = self._clock()
        with UnitOfWork(self._engine) as uow:
            patient_pk = None if study_uid is not None else self._subject(uow, None, patient)
            count = uow.retention.release(study_uid=study_uid, patient_pk=patient_pk)
            if count:
                uow.corrections.append(
                    "legal-hold-release", study_uid or str(patient), {"holds": count}, by, now
                )
                self._destroy_kept_back(uow, study_uid, patient_pk, now)
            uow.commit()
        return count

    def _destroy_kept_back(
        self, uow: UnitOfWork, study_uid: str | None, patient_pk: int | None, now: datetime
    ) -> None:
        """After a release: the destruction of the 113039 notes' instances that the
        hold kept back and that is now due (no other hold, no expiry ahead)."""
        released = uow.retention.studies_held_by(study_uid=study_uid, patient_pk=patient_pk)
        for note_uid in uow.retention.pending_notes(released):
            if self.standing(uow, uow.retention.studies_of_note(note_uid)) is Standing.DUE:
                log.info("rejection note %s: destruction due after the hold's release", note_uid)
                self.schedule_rejected(uow, note_uid, now)

    def holds(self) -> list[Hold]:
        with UnitOfWork(self._engine, write=False) as uow:
            return uow.retention.holds()

    @staticmethod
    def _subject(uow: UnitOfWork, study_uid: str | None, patient: PatientKey | None) -> int | None:
        if study_uid is not None:
            if uow.retention.study_pk(study_uid) is None:
                raise RetentionError(f"no study {study_uid} in the archive")
            return None
        if patient is None:
            raise RetentionError("a study or a patient is needed")
        row = uow.patients.find(patient)
        if row is None:
            raise RetentionError("no such patient in the archive")
        return row.pk

    # ------------------------------------------------------------------ destruction

    def expired(self, limit: int | None = None) -> list[ExpiredStudy]:
        with UnitOfWork(self._engine, write=False) as uow:
            return uow.retention.expired(self._clock().date(), limit)

    def upcoming(self, days: int, limit: int) -> list[ExpiredStudy]:
        """Studies expiring within ``days`` (or expired), no hold keeping them,
        soonest first."""
        with UnitOfWork(self._engine, write=False) as uow:
            return uow.retention.expired(self._clock().date() + timedelta(days=days), limit)

    def run(
        self, *, by: str, dry_run: bool = False, limit: int | None = None, reason: str = ""
    ) -> RunReport:
        """Finish unfinished destructions, then destroy what has expired (at most
        ``limit`` studies). A dry run only lists what has expired."""
        if dry_run:
            return RunReport(self.expired(limit), [], 0)
        failed: list[str] = []
        resumed = self.resume(failed)
        expired = self.expired(limit)
        destroyed: list[Destroyed] = []
        for study in expired:
            try:
                done = self.destroy_study(study, by=by, reason=reason or "retention period ended")
            except Exception:  # the next study is independent; a later run resumes this one
                log.exception("destruction of study %s failed", study.study_instance_uid)
                failed.append(study.study_instance_uid)
                continue
            if done is not None:
                destroyed.append(done)
        return RunReport(expired, destroyed, resumed, failed)

    def resume(self, failed: list[str]) -> int:
        """Finish every destruction an interrupted run left; how many were tried. One
        that fails again is added to ``failed`` and left for a later run: it does not
        keep the others (nor the run's new destructions) from going on."""
        with UnitOfWork(self._engine, write=False) as uow:
            unfinished = uow.retention.unfinished()
        for record in unfinished:
            log.warning(
                "finishing the interrupted destruction of study %s", record.study_instance_uid
            )
            try:
                self._finish(record.pk)
            except Exception:
                log.exception(
                    "the interrupted destruction of study %s failed again",
                    record.study_instance_uid,
                )
                failed.append(record.study_instance_uid)
        return len(unfinished)

    def destroy_study(self, study: ExpiredStudy, *, by: str, reason: str) -> Destroyed | None:
        """Destroy one expired study (None: it is no longer due: held, destroyed
        meanwhile by another node, or its expiry moved)."""
        today = self._clock().date()
        return self._destroy(
            study.study_instance_uid,
            by=by,
            reason=reason,
            due=lambda row: row.expires_on is not None and row.expires_on <= today,
        )

    def purge_test_data(self, organization: str, *, by: str) -> list[Destroyed]:
        """Destroy every study ``organization`` holds, with a destruction record each:
        the test data of an organisation in testing (``kuva orgs purge-test``; the
        caller checks the state). A study under a legal hold is kept."""
        with UnitOfWork(self._engine, write=False) as uow:
            studies = uow.retention.studies_of(organization)
        reason = f"test data of organisation {organization} purged"
        destroyed = []
        for study_uid in studies:
            done = self._destroy(study_uid, by=by, reason=reason, policy="test data")
            if done is not None:
                destroyed.append(done)
        return destroyed

    def _destroy(
        self,
        study_uid: str,
        *,
        by: str,
        reason: str,
        due: Callable[[Any], bool] = lambda row: True,
        policy: str | None = None,
    ) -> Destroyed | None:
        """Destroy one study: its destruction record and the first step in one
        transaction, then the rest (``_finish``). None when it is held, being
        destroyed already, or not ``due``."""
        now = self._clock()
        with UnitOfWork(self._engine) as uow:
            row = uow.retention.lock_study(study_uid)
            if (
                row is None
                or row.destroying_at is not None
                or not due(row)
                or uow.retention.is_held(row.pk)
            ):
                return None
            record_pk = uow.retention.begin_record(
                {
                    "study_instance_uid": study_uid,
                    "organization_oid": row.organization_oid,
                    "patient_id": row.patient_id,
                    "patient_issuer": row.issuer,
                    "policy": policy or row.retention_policy or "",
                    "expires_on": row.expires_on,
                    "reason": reason,
                    "destroyed_by": by[:64],
                    "decided_at": now,
                }
            )
            uow.retention.mark_destroying(row.pk, now)
            deprecated = deprecate_manifests(uow, study_uid)
            uow.commit()
        log.info(
            "destroying study %s (%s; %d manifest(s) deprecated)",
            study_uid,
            reason,
            len(deprecated),
        )
        return self._finish(record_pk)

    def standing(self, uow: UnitOfWork, study_uids: Collection[str]) -> Standing:
        """IOCM hook (``IngestService.on_retention_expired``): whether instances a
        113039 note rejects in these studies are destroyed now, with their study at
        its expiry, or kept by a legal hold (retention wins over the note)."""
        return standing_of(uow.retention.standings(study_uids), self._clock().date())

    def schedule_rejected(self, uow: UnitOfWork, note_uid: str, at: datetime) -> None:
        """IOCM hook (``IngestService.on_retention_expired``), in the transaction that
        applied a 113039 note whose destruction is due (or that released the hold
        keeping it back): the destruction of the note's rejected instances."""
        uow.tasks.schedule_once(
            REJECTED_DESTRUCTION_TASK,
            subject=note_uid,
            queue=f"retention:{note_uid}",
            payload={},
            now=at,
            run_at=at,
            max_attempts=self._settings.tasks.max_attempts,
        )

    def run_rejected_task(self, task: Task) -> None:
        """Outbox handler of ``REJECTED_DESTRUCTION_TASK``."""
        self.destroy_rejected(task.subject, by="IOCM")
        if self.on_enqueued is not None:
            self.on_enqueued(None)

    def destroy_rejected(self, note_uid: str, *, by: str) -> Destroyed | None:
        """Destroy the instances a 113039 rejection note rejected (None: none left, or
        retention keeps them: a hold placed, or an expiry set, since the note came)."""
        now = self._clock()
        with UnitOfWork(self._engine, write=False) as uow:
            begun = uow.retention.unfinished_of_note(note_uid)
        if begun is not None:  # an earlier attempt decided it, then failed
            return self._finish(begun)
        with UnitOfWork(self._engine) as uow:
            doomed = uow.retention.instances_of_note(note_uid)
            where = uow.retention.study_of_note(note_uid) if doomed else None
            if where is None:
                return None
            standing = self.standing(uow, uow.retention.studies_of_note(note_uid))
            if standing is not Standing.DUE:
                log.warning(
                    "rejection note %s: instances not destroyed, %s", note_uid, standing.value
                )
                return None
            record_pk = uow.retention.begin_record(
                {
                    "study_instance_uid": where.study_instance_uid,
                    "organization_oid": where.organization_oid,
                    "patient_id": where.patient_id,
                    "patient_issuer": where.issuer,
                    "policy": IOCM_POLICY,
                    "expires_on": None,
                    "rejection_note_uid": note_uid,
                    "reason": f"rejection note {note_uid} ({REJECTION_TITLES[RETENTION_EXPIRED]})",
                    "destroyed_by": by[:64],
                    "decided_at": now,
                }
            )
            uow.commit()
        return self._finish(record_pk)

    def _doomed(
        self, uow: UnitOfWork, record: DestructionRecord
    ) -> tuple[int | None, list[DoomedInstance], list[tuple[int, str, str]]]:
        """(study key when the whole study goes, its instances, its kuva manifests
        in the repository)."""
        if record.rejection_note_uid is not None:
            return None, uow.retention.instances_of_note(record.rejection_note_uid), []
        study_pk = uow.retention.study_pk(record.study_instance_uid)
        if study_pk is None:
            return None, [], []
        documents = [
            doc
            for doc in uow.retention.documents_of_study(record.study_instance_uid)
            if made_by_kuva(doc[1])
        ]
        return study_pk, uow.retention.instances_of_study(study_pk), documents

    def _finish(self, record_pk: int) -> Destroyed | None:
        """Steps 2 and 3 of a decided destruction (idempotent). Step 3 reads what it
        deletes again; an object that arrived after step 2 read (on PostgreSQL, an
        ingest that read the study before step 1 committed) sends it back to step 2
        for its blob, so that no row goes without its blob going too."""
        handled: set[str] = set()  # blob keys step 2 decided on (deleted or kept)
        deleted = 0
        for _round in range(5):
            with UnitOfWork(self._engine, write=False) as uow:
                record = uow.retention.lock_record(record_pk, lock=False)
                if record is None or record.destroyed_at is not None:
                    return None
                _, doomed, documents = self._doomed(uow, record)
                keys = {d.blob_key for d in doomed} | {doc[2] for doc in documents}
                kept = uow.retention.referenced_elsewhere(
                    sorted(keys - handled), {d.pk for d in doomed}, {doc[0] for doc in documents}
                )
            for key in sorted(keys - kept - handled):
                deleted += self._blobs.delete(key)
            handled |= keys
            try:
                done = self._delete_rows(record_pk, handled)
            except _Finished:
                return None
            if done is not None:
                record, doomed, whole = done
                break
        else:
            raise RuntimeError(
                f"destruction {record_pk}: the study kept changing; the next run finishes it"
            )
        metrics.destructions.labels("study" if whole else "iocm").inc()
        if self.on_enqueued is not None:
            self.on_enqueued(None)
        log.info(
            "destroyed %d instance(s) of study %s (%d blob(s) deleted); record %d",
            len(doomed),
            record.study_instance_uid,
            deleted,
            record_pk,
        )
        return Destroyed(record.study_instance_uid, len(doomed), deleted)

    def _delete_rows(
        self, record_pk: int, handled: set[str]
    ) -> tuple[DestructionRecord, list[DoomedInstance], bool] | None:
        """Step 3, in one transaction: (the record, what was destroyed, whether the
        whole study went); None, changing nothing, when an object step 2 did not see
        is there now; ``_Finished`` when another node finished it."""
        now = self._clock()
        with UnitOfWork(self._engine) as uow:
            record = uow.retention.lock_record(record_pk)
            if record is None:
                raise RuntimeError(f"destruction record {record_pk} vanished")
            study_pk, doomed, documents = self._doomed(uow, record)
            if record.destroyed_at is not None:
                raise _Finished  # another node finished it meanwhile
            keys = {d.blob_key for d in doomed} | {doc[2] for doc in documents}
            if not keys <= handled:
                return None
            uow.retention.delete_instances([d.pk for d in doomed])
            uow.retention.delete_documents([doc[0] for doc in documents])
            patients: list[int | None] = []
            if study_pk is not None:
                patients.extend(uow.retention.delete_study(study_pk))
            elif doomed:
                uow.retention.delete_empty_series({d.series_pk for d in doomed})
            for patient_pk in dict.fromkeys(patients):
                if patient_pk is not None:
                    uow.retention.delete_patient_if_unreferenced(patient_pk)
            sha_list, digest = digest_of([d.sha256 for d in doomed])
            uow.retention.finish_record(
                record_pk, at=now, instances=len(doomed), digest=digest, sha256_list=sha_list
            )
            if doomed and self._settings.registration.enabled:
                announce_destroyed(
                    self._settings,
                    uow,
                    record.study_instance_uid,
                    record.organization_oid,
                    [
                        AvailableInstance(
                            d.series_instance_uid, d.sop_class_uid, d.sop_instance_uid, UNAVAILABLE
                        )
                        for d in doomed
                    ],
                    now,
                )
            if self._audit is not None:
                self._audit.record(uow, [self._deleted_event(record, doomed, now)])
            uow.commit()
        return record, doomed, record.rejection_note_uid is None

    def _deleted_event(
        self, record: DestructionRecord, doomed: list[DoomedInstance], now: datetime
    ) -> a.AuditEvent:
        assert self._audit is not None
        classes: dict[str, int] = {}
        for d in doomed:
            classes[d.sop_class_uid] = classes.get(d.sop_class_uid, 0) + 1
        return a.study_deleted(
            source=self._audit.source,
            deleter=self._audit.archive(requestor=True),
            study_instance_uid=record.study_instance_uid,
            sop_classes=tuple(a.SopClass(uid, n) for uid, n in sorted(classes.items())),
            patient=(record.patient_id, record.patient_issuer),
            occurred_at=now,
        )

    # ------------------------------------------------------------------ resend

    def allow_resend(self, study_uid: str, *, by: str, reason: str) -> int:
        """Let a destroyed study's instances be archived again (ingest refuses them
        until then): its destruction records say so, in one transaction with the
        correction history and the audit event. Returns how many records."""
        now = self._clock()
        with UnitOfWork(self._engine) as uow:
            count = uow.retention.allow_resend(study_uid, by=by, reason=reason, at=now)
            if not count:
                raise RetentionError(f"no destruction of study {study_uid} bars a resend")
            uow.corrections.append(
                "resend-allowed", study_uid, {"reason": reason, "records": count}, by, now
            )
            if self._audit is not None:
                self._audit.record(uow, [self._audit.resend_allowed(by, study_uid, reason)])
            uow.commit()
        log.info("resend of destroyed study %s allowed by %s", study_uid, by)
        return count

    # ------------------------------------------------------------------ records

    def sha256_list(self, record_pk: int) -> str:
        with UnitOfWork(self._engine, write=False) as uow:
            return uow.retention.sha256_list(record_pk)

    def destroyed(
        self, *, study_uid: str | None = None, since: datetime | None = None, limit: int = 100
    ) -> list[DestructionRecord]:
        with UnitOfWork(self._engine, write=False) as uow:
            return uow.retention.destroyed(study_uid=study_uid, since=since, limit=limit)


class RetentionScheduler:
    """``kuva serve``'s retention run every ``[retention] run_every_hours``: the first
    a minute after start (sooner when the interval is shorter), then at that
    interval. Of the nodes sharing the index, the one holding the "retention" duty
    runs (``duty``, services.cluster); were two to run all the same, each study is
    destroyed once (its row is locked and marked first)."""

    FIRST_DELAY_SECONDS = 60.0

    def __init__(
        self,
        service: RetentionService,
        hours: float,
        *,
        first_delay: float | None = None,
        duty: Callable[[float], bool] | None = None,
    ) -> None:
        self._service = service
        self._duty = duty
        interval = timedelta(hours=hours).total_seconds()
        self._interval = interval
        first = min(self.FIRST_DELAY_SECONDS, interval)
        self._periodic = Periodic(
            "kuva-retention",
            self._run,
            interval,
            first=first if first_delay is None else first_delay,
            failure=f"retention run failed; next in {interval / 3600:.1f} h",
        )

    def start(self) -> None:
        self._periodic.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._periodic.stop(timeout)

    def _run(self) -> None:
        # Held a half interval beyond the next run, so the holder renews it in time.
        if self._duty is not None and not self._duty(self._interval * 1.5):
            return
        report = self._service.run(by="kuva serve")
        if report.destroyed or report.resumed:
            log.info(
                "retention run: %d stud(y/ies) destroyed, %d resumed",
                len(report.destroyed),
                report.resumed,
            )
