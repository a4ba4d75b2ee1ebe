"""Disclosures customers report, and the disclosure query (the patient's right to know).

Recording (``NoticeService.record``): the disclosures a register holder made from
its own systems (model.disclosure.ReportedDisclosure, from a disclosure notice or an
ATNA Export message) land in the disclosure log, one row per study and per
document, with ``register_holder`` = the reporting organisation and ``source``
notice or atna, so they never mix with kuva's own (source archive, ITI-43 /
RAD-69). All the notices of one request commit in one transaction or none do.

Idempotency: a notice with an id (the client's UUID; for an ATNA message the
digest of its bytes) is recorded once per reporter (a unique constraint on
``disclosure_notice``). Sent again with the same content it is answered as
recorded before (``created`` False), nothing is added; with other content under
the same id it is a conflict (``NoticeConflict``) and nothing of the request is
written. Two identical requests racing: the loser's insert violates the unique
constraint, and the whole request is tried once more, finding the winner's rows.

The query (``NoticeService.disclosures``): every record of a patient in a period,
kuva's and reported, newest first. A patient's identity may have been merged
(HL7 A40; index.patients): the records kept under the identifiers merged into the
patient's surviving identity are the same person's and are included (the chain is
one recursive query; each identity is then one equality on ``ix_disclosure_patient``).
Who sees what is the adapter's ``viewer``: an organisation sees the records where
it is the register holder or the recipient; None (the operator) sees all.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from kuva.index.repository import Disclosure, NewDisclosure
from kuva.index.uow import UnitOfWork
from kuva.model.clock import Clock, utcnow
from kuva.model.disclosure import NoticeOutcome, ReportedDisclosure
from kuva.model.patient import PatientKey

__all__ = ["Disclosure", "DisclosurePage", "NoticeConflict", "NoticeService"]

log = logging.getLogger(__name__)

# The most identities one patient's query follows through merges.
MAX_IDENTITIES = 100
MAX_PAGE = 1000


class NoticeConflict(Exception):
    """A notice id the reporter used already, for a notice with other content."""

    def __init__(self, index: int, notice_id: str) -> None:
        super().__init__(
            f"notice {index}: notice_id {notice_id} was recorded before with other content"
        )
        self.index = index
        self.notice_id = notice_id


@dataclass(frozen=True)
class DisclosurePage:
    """One page of a patient's disclosures; ``identities``: the patient identifiers
    (Patient ID, authority) whose records were searched, the asked one first."""

    records: list[Disclosure]
    identities: list[tuple[str, str]]


class NoticeService:
    def __init__(self, engine: Engine, *, clock: Clock = utcnow) -> None:
        self._engine = engine
        self._clock = clock

    def record(self, notices: Sequence[ReportedDisclosure]) -> list[NoticeOutcome]:
        """Record ``notices`` in one transaction, committed when this returns; one
        outcome per notice, in order. Raises NoticeConflict (nothing written), or
        on a database failure (nothing written)."""
        try:
            return self._record(notices)
        except IntegrityError:
            # A concurrent request recorded the same notice id first: once more,
            # now finding it.
            log.info("disclosure notice recorded concurrently; trying the request again")
            return self._record(notices)

    def _record(self, notices: Sequence[ReportedDisclosure]) -> list[NoticeOutcome]:
        outcomes: list[NoticeOutcome] = []
        seen: dict[tuple[str, str], tuple[str, int]] = {}
        now = self._clock()
        with UnitOfWork(self._engine) as uow:
            asked: dict[str, set[str]] = {}
            for notice in notices:
                if notice.notice_id is not None:
                    asked.setdefault(notice.reporter, set()).add(notice.notice_id)
            for reporter, notice_ids in asked.items():  # one lookup per reporter
                for notice_id, stored in uow.disclosures.find_notices(reporter, notice_ids).items():
                    seen[(reporter, notice_id)] = (stored.digest, stored.record_count)
            for index, notice in enumerate(notices):
                digest = notice.digest()
                if notice.notice_id is not None:
                    earlier = seen.get((notice.reporter, notice.notice_id))
                    if earlier is not None:
                        if earlier[0] != digest:
                            raise NoticeConflict(index, notice.notice_id)
                        outcomes.append(NoticeOutcome(notice.notice_id, earlier[1], False))
                        continue
                count = _count(notice)
                notice_pk = uow.disclosures.add_notice(
                    reporter=notice.reporter,
                    notice_id=notice.notice_id,
                    digest=digest,
                    source=notice.source.value,
                    received_at=now,
                    record_count=count,
                )
                uow.disclosures.add(_rows(notice, notice_pk))
                if notice.notice_id is not None:
                    seen[(notice.reporter, notice.notice_id)] = (digest, count)
                outcomes.append(NoticeOutcome(notice.notice_id, count, True))
            uow.commit()
        created = [o for o in outcomes if o.created]
        if notices:
            log.info(
                "%s: %d reported disclosure(s) of %s recorded (%d record(s)), %d known already",
                notices[0].source.value,
                len(created),
                notices[0].reporter,
                sum(o.records for o in created),
                len(outcomes) - len(created),
            )
        return outcomes

    def of_organization(
        self,
        organization: str,
        *,
        start: datetime,
        end: datetime,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Disclosure]:
        """The disclosures where ``organization`` is the register holder or the
        recipient, in [start, end), newest first."""
        limit = max(1, min(limit, MAX_PAGE))
        with UnitOfWork(self._engine, write=False) as uow:
            return uow.disclosures.of_organization(
                organization, start=start, end=end, limit=limit, offset=offset
            )

    def disclosures(
        self,
        patient: PatientKey,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        viewer: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> DisclosurePage:
        """The disclosures of ``patient`` (and of the identities merged into it)
        disclosed in [start, end), newest first. ``viewer``: see the module's doc."""
        limit = max(1, min(limit, MAX_PAGE))
        with UnitOfWork(self._engine, write=False) as uow:
            identities = [(patient.patient_id, patient.issuer)]
            known = uow.patients.find(patient)
            if known is not None:
                survivor = uow.patients.get(uow.patients.survivor(known.pk))
                family = [survivor, *uow.patients.merged_into_this(survivor.pk)]
                for member in family[:MAX_IDENTITIES]:
                    identity = (member.key.patient_id, member.key.issuer)
                    if identity not in identities:
                        identities.append(identity)
            records = uow.disclosures.of_patients(
                identities, start=start, end=end, viewer=viewer, limit=limit, offset=max(0, offset)
            )
        return DisclosurePage(records, identities)


def _count(notice: ReportedDisclosure) -> int:
    return len(set(notice.studies)) + len(set(notice.documents))


def _rows(notice: ReportedDisclosure, notice_pk: int) -> list[NewDisclosure]:
    """One record per study and per document the notice names (each once)."""
    items: list[tuple[str | None, str]] = [(uid, "") for uid in dict.fromkeys(notice.studies)]
    items.extend((None, uid) for uid in dict.fromkeys(notice.documents))
    return [
        NewDisclosure(
            disclosed_at=notice.disclosed_at,
            recipient_organization=notice.recipient_organization,
            register_holder=notice.reporter,
            patient_id=notice.patient.patient_id,
            patient_authority=notice.patient.issuer,
            study_instance_uid=study_uid,
            document_unique_id=document_uid,
            interface=notice.interface,
            basis=notice.basis,
            source=notice.source.value,
            channel=notice.channel,
            recipient_person=notice.recipient_person,
            notice_pk=notice_pk,
        )
        for study_uid, document_uid in items
    ]
