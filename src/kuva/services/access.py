"""Access control by register holder: the one place that decides who reads what.

Every study, image and XDS entry belongs to its register holder, the organisation
whose node archived it. ``AccessPolicy.scope`` turns the configured rules
(``[[access.rules]]``, model.access) into what one requesting organisation may read;
every read path asks it and hands the scope to the service that reads:

- C-FIND and QIDO-RS (services.query), WADO-RS metadata included;
- C-MOVE, C-GET, WADO-RS and WADO-URI (services.retrieve);
- ITI-18 (services.stored_query), ITI-43 (services.repository), RAD-69
  (services.retrieve_imaging_document_set).

The index applies the scope as a condition of the statement that reads
(kuva.index.access), so what a requester may not read is never fetched: for it, the
material does not exist (no match, not an error that would tell it is there).

Every read of another organisation's material that the scope allowed is a
disclosure: ``AccessPolicy.disclosures`` picks them out of what is about to be
handed out, with the basis of each, and the reading service records them in the
disclosure log (services.disclosure) before anything is sent.

Patient-level answers (a PATIENT level C-FIND or QIDO /patients) list only the
patients that have a study of the requester's own: another organisation's patients
are found, and disclosed, study by study.

Disclosure prohibitions (``DisclosureProhibitions``) are set and lifted by the
operator (``kuva patients prohibit|permit``) or over the admin API; each change is
audited as a patient record update.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine

from kuva.config import LOCAL_ORGANIZATION_OID, Settings
from kuva.index.uow import UnitOfWork
from kuva.model import audit as a
from kuva.model.access import ANY, AccessRule, AccessScope, Basis, scope_of
from kuva.model.clock import Clock, utcnow
from kuva.model.patient import PatientKey
from kuva.services.audit import AuditTrail
from kuva.services.disclosure import Handout

log = logging.getLogger(__name__)

UNRESTRICTED = AccessScope(LOCAL_ORGANIZATION_OID, unrestricted=True)


@dataclass(frozen=True)
class Read:
    """Something about to be handed out: a study's images or metadata, or an XDS
    document, of ``register_holder``."""

    register_holder: str
    study_instance_uid: str | None = None
    document_unique_id: str = ""
    patient: tuple[str, str] | None = None


class AccessPolicy:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._rules = [
            AccessRule(
                rule.register_holder,
                rule.recipient,
                Basis(rule.basis, honour_prohibition=rule.honour_prohibition),
            )
            for rule in settings.access.rules
        ]
        self._scopes: dict[tuple[str | None, frozenset[str]], AccessScope] = {}

    def scope(self, organization: str | None) -> AccessScope:
        """What ``organization`` (None = an unknown requester) may read."""
        if self._settings.open_access:
            # The embedded default: one local organisation holds everything.
            return UNRESTRICTED
        # Organisations in testing keep their material apart (services.directory).
        apart = self._settings.directory.testing
        found = self._scopes.get((organization, apart))
        if found is None:
            found = scope_of(organization, self._rules, apart)
            self._scopes[(organization, apart)] = found
        return found

    def scope_of_node(self, ae_title: str) -> AccessScope:
        """What a calling DICOM node may read: its organisation's scope."""
        return self.scope(self._settings.organization_of(ae_title))

    @staticmethod
    def disclosures(scope: AccessScope, reads: Iterable[Read]) -> list[Handout]:
        """The disclosures among ``reads``: those of another register holder, with
        the basis that allowed each (a study or document once)."""
        handouts: dict[tuple[str | None, str], Handout] = {}
        for read in reads:
            if scope.is_own(read.register_holder):
                continue
            basis = scope.basis_for(read.register_holder)
            key = (read.study_instance_uid, read.document_unique_id)
            if key in handouts:
                continue
            handouts[key] = Handout(
                document_unique_id=read.document_unique_id,
                register_holder=read.register_holder,
                study_instance_uid=read.study_instance_uid,
                patient=read.patient,
                basis=basis.text if basis is not None else "",
            )
        return list(handouts.values())


def basis_text(scope: AccessScope | None, register_holder: str) -> str:
    """The basis the disclosure log records for reading ``register_holder``'s
    material under ``scope`` ("" = none: no rules apply, or it is the requester's own)."""
    if scope is None:
        return ""
    basis = scope.basis_for(register_holder)
    return basis.text if basis is not None else ""


def recipient(scope: AccessScope) -> str:
    """The recipient organisation as the disclosure log records it ("" = unknown)."""
    return scope.organization or ""


class DisclosureProhibitions:
    """A patient's disclosure prohibition: set, lift, look up (audited)."""

    def __init__(
        self, engine: Engine, *, audit: AuditTrail | None = None, clock: Clock = utcnow
    ) -> None:
        self._engine = engine
        self._audit = audit
        self._clock = clock

    def prohibit(self, key: PatientKey, *, by: str, reason: str) -> bool:
        """Prohibit disclosing ``key``'s material to other organisations than the
        register holders that archived it; the patient's record is made when the index
        does not hold it yet. False when a prohibition was already in force."""
        return self._change(key, by=by, reason=reason, prohibit=True)

    def permit(self, key: PatientKey, *, by: str) -> bool:
        """Lift the prohibition; False when there was none."""
        return self._change(key, by=by, reason="", prohibit=False)

    def current(self, key: PatientKey) -> tuple[datetime, str, str] | None:
        """(set at, by, reason) of ``key``'s prohibition, or None."""
        with UnitOfWork(self._engine, write=False) as uow:
            row = uow.patients.find(key)
            return None if row is None else uow.prohibitions.get(row.pk)

    def _change(self, key: PatientKey, *, by: str, reason: str, prohibit: bool) -> bool:
        now = self._clock()
        with UnitOfWork(self._engine) as uow:
            row = uow.patients.find(key)
            if row is None and not prohibit:
                return False
            pk = row.pk if row is not None else uow.patients.create(key, now)
            if prohibit:
                changed = uow.prohibitions.prohibit(pk, at=now, by=by, reason=reason)
            else:
                changed = uow.prohibitions.lift(pk)
            if changed and self._audit is not None:
                what = "disclosure prohibition set" if prohibit else "disclosure prohibition lifted"
                self._audit.record(
                    uow,
                    [
                        a.patient_record(
                            source=self._audit.source,
                            requestor=a.ActiveParticipant(user_id=by or "operator", requestor=True),
                            archive=self._audit.archive(),
                            patients=((key.patient_id, key.issuer),),
                            description=what + (f": {reason}" if reason else ""),
                            message_control_id="",
                            occurred_at=now,
                        )
                    ],
                )
            uow.commit()
        log.info("disclosure prohibition %s (by %s)", "set" if prohibit else "lifted", by or "?")
        return changed


__all__ = [
    "ANY",
    "UNRESTRICTED",
    "AccessPolicy",
    "DisclosureProhibitions",
    "Read",
    "basis_text",
    "recipient",
]
