"""Integrity: every stored blob is read back and compared with the SHA-256 and size
the index recorded when it arrived (docs/design.md principle 1: bytes never change, so
any difference is damage).

A blob is *missing* (no such file), *corrupt* (other size or other hash, or
unreadable) or *orphaned* (stored, but no row of the index references it). With a
replica (storage.mirror) each copy is checked, and a bad copy can be repaired from
a good one; storage commitment requires every copy to be good (``intact``).

``kuva verify`` runs a check once, over everything, a random sample or a study;
``Scrubber`` runs it continuously in ``kuva serve`` at a low byte rate, repairing
what it can, with a metric and an ERROR line per problem. Problems also go to
``IntegrityService.on_problem``: the hook for the ATNA Security Alert of the
audit trail.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from enum import Enum

from sqlalchemy import Engine

from kuva import metrics
from kuva.index.integrity import DOCUMENT, INSTANCE, IndexedBlob, ScrubPosition
from kuva.index.uow import UnitOfWork
from kuva.model.clock import Clock, utcnow
from kuva.storage import BlobCopy, BlobEntry, BlobStore

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
# Rows per index query of a walk (keyset pagination: memory stays flat).
BATCH = 200
# Store keys per "which of these are referenced" query of the orphan walk.
ORPHAN_BATCH = 500
# A blob is written before the index row that references it commits: a younger
# unreferenced blob may be one whose row is on its way, so it is not an orphan yet.
ORPHAN_GRACE = timedelta(minutes=15)


class Problem(Enum):
    MISSING = "missing"
    CORRUPT = "corrupt"
    ORPHANED = "orphaned"


@dataclass(frozen=True)
class Finding:
    kind: Problem
    copy: str  # "primary" or "replica"
    key: str
    blob: IndexedBlob | None  # None for an orphan
    detail: str
    repaired: bool = False

    def subject(self) -> str:
        """What the blob is, by UIDs only (never patient data)."""
        blob = self.blob
        if blob is None:
            return "no index row"
        study = f" (study {blob.study_instance_uid})" if blob.study_instance_uid else ""
        if blob.table == INSTANCE:
            return f"instance {blob.sop_instance_uid}{study}"
        return f"document {blob.document_unique_id}{study}"

    def description(self) -> str:
        """What was found, for the audit trail's Security Alert."""
        repaired = " (repaired)" if self.repaired else ""
        return f"{self.kind.value} {self.copy} copy of blob {self.key}: {self.detail}{repaired}"


@dataclass(frozen=True)
class Selection:
    """What to check: everything (the default), a random sample, or one study."""

    sample: int | None = None
    study_uid: str | None = None

    @property
    def everything(self) -> bool:
        return self.sample is None and self.study_uid is None


@dataclass(frozen=True)
class Plan:
    selection: Selection
    objects: int
    bytes: int  # of one copy
    sampled: tuple[IndexedBlob, ...] | None = None


@dataclass
class Summary:
    objects: int = 0
    bytes: int = 0  # read, every copy
    problems: Counter[Problem] = field(default_factory=Counter)
    repaired: int = 0

    @property
    def unrepaired(self) -> int:
        return sum(self.problems.values()) - self.repaired

    def add(self, findings: list[Finding]) -> None:
        for finding in findings:
            self.problems[finding.kind] += 1
            self.repaired += finding.repaired


ReadHook = Callable[[int], None]  # bytes just read


def check_copy(
    copy: BlobCopy, key: str, sha256: str, size: int, on_read: ReadHook | None = None
) -> tuple[Problem, str] | None:
    """Read one copy of a blob in chunks and compare it with the index; None = good."""
    digest = hashlib.sha256()
    read = 0
    try:
        for chunk in copy.iter_chunks(key, CHUNK):
            digest.update(chunk)
            read += len(chunk)
            if on_read is not None:
                on_read(len(chunk))
    except FileNotFoundError:
        return Problem.MISSING, "no such blob"
    except OSError as exc:
        return Problem.CORRUPT, f"unreadable: {exc.strerror or exc}"
    finally:
        metrics.integrity_checked_bytes.inc(read)
    metrics.integrity_checked.inc()
    if read != size:
        return Problem.CORRUPT, f"{read} bytes, the index says {size}"
    actual = digest.hexdigest()
    if actual != sha256:
        return Problem.CORRUPT, f"sha256 {actual[:16]}..., the index says {sha256[:16]}..."
    return None


def copy_problems(
    blobs: BlobStore, key: str, sha256: str, size: int, on_read: ReadHook | None = None
) -> list[tuple[str, BlobCopy, Problem, str]]:
    """(copy name, copy, problem, detail) of each copy of a blob that is not good."""
    found = []
    for name, copy in blobs.copies():
        problem = check_copy(copy, key, sha256, size, on_read)
        if problem is not None:
            found.append((name, copy, *problem))
    return found


class IntegrityService:
    def __init__(
        self,
        engine: Engine,
        blobs: BlobStore,
        *,
        clock: Clock = utcnow,
        rng: random.Random | None = None,
    ) -> None:
        self._engine = engine
        self._blobs = blobs
        self._clock = clock
        self._rng = rng or random.SystemRandom()
        # Called with every problem found: the audit trail's ATNA Security Alert.
        self.on_problem: Callable[[Finding], None] | None = None

    @property
    def replicated(self) -> bool:
        return len(self._blobs.copies()) > 1

    def copies(self) -> tuple[tuple[str, BlobCopy], ...]:
        return self._blobs.copies()

    def plan(self, selection: Selection) -> Plan:
        """What a check of ``selection`` reads (a sample is drawn here)."""
        with UnitOfWork(self._engine, write=False) as uow:
            if selection.sample is not None:
                sampled = uow.integrity.sample(selection.sample, self._rng)
                size = sum(blob.size for blob in sampled)
                return Plan(selection, len(sampled), size, tuple(sampled))
            objects, size = uow.integrity.totals(selection.study_uid)
        return Plan(selection, objects, size)

    def verify(
        self,
        plan: Plan,
        *,
        repair: bool = False,
        on_read: ReadHook | None = None,
        on_checked: Callable[[IndexedBlob, list[Finding]], None] | None = None,
    ) -> Summary:
        """Check every blob of ``plan`` (each once, every copy) and, with ``repair``,
        restore bad copies from a good one."""
        summary = Summary()

        def read(count: int) -> None:
            summary.bytes += count
            if on_read is not None:
                on_read(count)

        for batch in self._batches(plan):
            for blob in batch:
                findings = self.check(blob, repair=repair, on_read=read)
                summary.objects += 1
                summary.add(findings)
                if on_checked is not None:
                    on_checked(blob, findings)
        return summary

    def _batches(self, plan: Plan) -> Iterator[list[IndexedBlob]]:
        if plan.sampled is not None:
            yield list(plan.sampled)
            return
        for table in (INSTANCE, DOCUMENT):
            after = 0
            while True:
                # A short read transaction per batch: nothing is held across the walk.
                with UnitOfWork(self._engine, write=False) as uow:
                    batch = uow.integrity.blobs(table, after, BATCH, plan.selection.study_uid)
                if not batch:
                    break
                yield batch
                after = batch[-1].pk

    def check(
        self,
        blob: IndexedBlob,
        *,
        repair: bool = False,
        on_read: ReadHook | None = None,
        report: bool = True,
    ) -> list[Finding]:
        """Check every copy of one blob; with ``repair``, restore bad copies from a good
        one. ``report=False``: the caller reports the findings (``report``) itself."""
        bad = copy_problems(self._blobs, blob.blob_key, blob.sha256, blob.size, on_read)
        if not bad:
            return []
        bad_names = {name for name, *_ in bad}
        good = next((c for n, c in self._blobs.copies() if n not in bad_names), None)
        findings = []
        for name, copy, problem, detail in bad:
            repaired = False
            if repair and good is None:
                detail += "; no good copy to repair from"
            elif repair and good is not None:
                try:
                    copy.restore(
                        blob.blob_key, good.iter_chunks(blob.blob_key), blob.sha256, blob.size
                    )
                    repaired = True
                    metrics.integrity_repairs.inc()
                except (OSError, ValueError) as exc:
                    detail += f"; repair failed: {exc}"
            findings.append(Finding(problem, name, blob.blob_key, blob, detail, repaired))
        if report:
            for finding in findings:
                self.report(finding)
        return findings

    def orphans(self) -> Iterator[Finding]:
        """Blobs of every copy that no index row references (older than ORPHAN_GRACE).

        The store is listed in key order and asked about in batches: memory stays
        flat. Orphans are reported, never deleted: removing bytes is not a repair.
        """
        cutoff = (self._clock() - ORPHAN_GRACE).timestamp()
        for name, copy in self._blobs.copies():
            batch: list[BlobEntry] = []
            for entry in copy.iter_keys():
                batch.append(entry)
                if len(batch) == ORPHAN_BATCH:
                    yield from self._unreferenced(name, batch, cutoff)
                    batch = []
            yield from self._unreferenced(name, batch, cutoff)

    def _unreferenced(
        self, name: str, entries: list[BlobEntry], cutoff: float
    ) -> Iterator[Finding]:
        if not entries:
            return
        with UnitOfWork(self._engine, write=False) as uow:
            referenced = uow.integrity.referenced(entry.key for entry in entries)
        for entry in entries:
            if entry.key not in referenced and entry.modified < cutoff:
                finding = Finding(Problem.ORPHANED, name, entry.key, None, f"{entry.size} bytes")
                self.report(finding)
                yield finding

    def report(self, finding: Finding) -> None:
        """Count ``finding`` and raise its alert (``on_problem``)."""
        metrics.integrity_failures.labels(finding.kind.value).inc()
        if self.on_problem is not None:
            self.on_problem(finding)


class _Stopped(Exception):
    """The scrubber is stopping: leave the blob being read."""


def _unreachable(finding: Finding) -> bool:
    """Missing or unreadable: what a store that is out gives for every object."""
    if finding.repaired:
        return False  # the store took the good copy: it is there
    return finding.kind is Problem.MISSING or finding.detail.startswith("unreadable")


class Scrubber:
    """The continuous check of ``kuva serve``: walks every blob the index references,
    again and again, reading at most ``bytes_per_second`` (every copy counts) and
    repairing bad copies from a good one. At the end of a pass, at most every
    ``orphan_seconds`` (0 = never), the node that ended it also lists every copy's
    blobs for orphans (``IntegrityService.orphans``: names and sizes only, no
    reading, one index lookup per batch of keys); each is reported, never deleted.

    Its position is kept in the index (``integrity_scrub``), so a restart resumes
    where the walk stopped; nodes sharing the index take batches of one walk in
    turn under the row's lock. A batch holds about ``BATCH_SECONDS`` of reading.
    """

    BATCH_SECONDS = 10.0
    # Between passes, and after an index error: an archive of a few small objects
    # is not re-read in a busy loop.
    PAUSE_SECONDS = 2.0
    # Each object costs at least this much of the byte rate, so the pace limits
    # objects per second too (a missing object has no bytes to count).
    OBJECT_BYTES = 64 * 1024
    # This many objects in a row whose copy in one store is missing or unreadable:
    # that store is out (a lost mount, a bucket gone, S3 down), not the objects bad.
    # One alert, /healthz degraded, the walk pauses and retries after OUTAGE_SECONDS.
    OUTAGE_RUN = 20
    OUTAGE_SECONDS = 60.0

    def __init__(
        self,
        service: IntegrityService,
        engine: Engine,
        bytes_per_second: int,
        *,
        orphan_seconds: float = 0.0,
        clock: Clock = utcnow,
    ) -> None:
        self._service = service
        self._engine = engine
        self._rate = float(bytes_per_second)
        self._orphan_seconds = orphan_seconds
        self._orphans_walked: float | None = None  # time.monotonic() of the last walk
        self._clock = clock
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_read = 0.0
        # Per copy: the findings of the objects in a row missing or unreadable there,
        # held back until a good object shows they are the objects' own problems.
        self._suspect: dict[str, list[Finding]] = {}
        # Per copy whose store is out: what was found.
        self._outages: dict[str, str] = {}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="kuva-integrity", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        log.info("integrity check running at %d bytes/s", self._rate)
        while not self._stopping.is_set():
            try:
                batch = self._claim()
            except Exception:
                log.exception("integrity check: cannot read its position in the index")
                batch = None
            if batch is None:
                self._walk_orphans()
                self._stopping.wait(self.PAUSE_SECONDS)
                continue
            try:
                self.check_batch(batch)
            except _Stopped:
                return

    def check_batch(self, batch: list[IndexedBlob]) -> None:
        """Check each blob of a claimed batch at the rate; a store found out pauses
        the walk (``OUTAGE_SECONDS`` at a time) until it answers again."""
        for blob in batch:
            self._throttle(self.OBJECT_BYTES)
            try:
                findings = self._service.check(
                    blob, repair=not self._outages, on_read=self._throttle, report=False
                )
            except _Stopped:
                raise
            except Exception:
                log.exception("integrity check of %s failed", blob.blob_key)
                continue
            self._sort(findings)
            while self._outages and not self._stopping.is_set():
                if self._stopping.wait(self.OUTAGE_SECONDS):
                    raise _Stopped
                self._retry_stores()

    def health(self) -> None:
        """For /healthz: raises while a store is found out by the walk."""
        if self._outages:
            raise OSError(
                "; ".join(f"{copy} store: {what}" for copy, what in self._outages.items())
            )

    def _sort(self, findings: list[Finding]) -> None:
        """Report an object's own problems; hold back a copy's missing or unreadable
        ones until they are known not to be its store's outage."""
        held = {f.copy for f in findings if _unreachable(f)}
        for copy in [c for c in self._suspect if c not in held]:
            for finding in self._suspect.pop(copy):  # a good object came: real findings
                self._report(finding)
        for finding in findings:
            if finding.copy not in held:
                self._report(finding)
                continue
            run = self._suspect.setdefault(finding.copy, [])
            run.append(finding)
            if len(run) >= self.OUTAGE_RUN:
                self._declare_outage(finding.copy, self._suspect.pop(finding.copy))

    def _report(self, finding: Finding) -> None:
        log.error(
            "integrity: %s copy of %s is %s (%s)%s",
            finding.copy,
            finding.subject(),
            finding.kind.value,
            finding.detail,
            ", repaired from the other copy" if finding.repaired else "",
        )
        self._service.report(finding)

    def _declare_outage(self, copy: str, run: list[Finding]) -> None:
        what = (
            f"{len(run)} objects in a row missing or unreadable ({run[-1].detail}); "
            f"the walk pauses and retries every {self.OUTAGE_SECONDS:.0f} s"
        )
        self._outages[copy] = what
        log.error("integrity: the %s copy's store looks unavailable: %s", copy, what)
        # One alert for the lot, not one per object.
        self._service.report(
            Finding(Problem.MISSING, copy, f"{run[0].key} .. {run[-1].key}", None, what)
        )

    def _retry_stores(self) -> None:
        for copy_name, copy in self._service.copies():
            if copy_name not in self._outages:
                continue
            try:
                copy.check()
            except Exception as exc:
                log.warning("integrity: the %s copy's store is still out: %s", copy_name, exc)
                continue
            log.info("integrity: the %s copy's store answers again: the walk goes on", copy_name)
            del self._outages[copy_name]

    def _walk_orphans(self) -> None:
        """After a pass: the orphan walk, when it is due."""
        if self._orphan_seconds <= 0:
            return
        now = time.monotonic()
        if self._orphans_walked is not None and now - self._orphans_walked < self._orphan_seconds:
            return
        self._orphans_walked = now
        try:
            for finding in self._service.orphans():
                log.error(
                    "integrity: %s copy of blob %s is orphaned (%s): no index row refers to it",
                    finding.copy,
                    finding.key,
                    finding.detail,
                )
                if self._stopping.is_set():
                    return
        except Exception:
            log.exception("integrity check: the orphan walk failed")

    def _claim(self) -> list[IndexedBlob] | None:
        """Take the next batch of the walk and move the position past it.

        None when a pass has just ended; [] when the walk moved to the next table.
        """
        now = self._clock()
        copies = 2 if self._service.replicated else 1
        budget = self._rate * self.BATCH_SECONDS / copies
        with UnitOfWork(self._engine) as uow:
            position = uow.integrity.scrub_position()
            if position.last_pass_at is not None:
                metrics.integrity_last_pass.set(position.last_pass_at.timestamp())
            started = position.pass_started_at or now
            batch = uow.integrity.blobs(position.phase, position.after_pk, BATCH)
            if batch:
                kept: list[IndexedBlob] = []
                size = 0
                for blob in batch:  # at least one, however large
                    if kept and size + blob.size > budget:
                        break
                    kept.append(blob)
                    size += blob.size
                moved = ScrubPosition(position.phase, kept[-1].pk, started, position.last_pass_at)
                uow.integrity.move_scrub(moved)
                uow.commit()
                return kept
            if position.phase == INSTANCE:
                uow.integrity.move_scrub(ScrubPosition(DOCUMENT, 0, started, position.last_pass_at))
                uow.commit()
                return []
            uow.integrity.move_scrub(ScrubPosition(INSTANCE, 0, None, now))
            uow.commit()
        metrics.integrity_last_pass.set(now.timestamp())
        log.debug("integrity check: a pass over every blob finished (started %s)", started)
        return None

    def _throttle(self, read: int) -> None:
        """Called after each chunk: wait so that reading stays at the rate."""
        now = time.monotonic()
        self._next_read = max(self._next_read, now) + read / self._rate
        if self._stopping.wait(max(self._next_read - now, 0.0)):
            raise _Stopped
