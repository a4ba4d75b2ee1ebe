"""Patient identity corrections (HL7 v2 ADT; IHE PAM): merge, update, identifier
change and unlink, applied to the index as an overlay (docs/design.md principle 1:
stored objects never change; the index says who a study belongs to now).

Each message is applied in one transaction together with the record of its control
id, so a message sent again is answered with the same acknowledgement and not
applied twice. Every change is appended to the correction history with the values
it replaced, so that it can be undone (A37 unlink for a merge).

Every study whose current patient identity changed (it moved to another patient,
or its patient's identifier or demographics changed) is registered again in the
same transaction (``on_changed``: services.registration.register_again when
``[registration] enabled``): its new XDS-I.b manifest carries the current patientId
and sourcePatientInfo, and an IAN goes out again (docs/design.md principle 3).

An operator makes the same corrections (``kuva patients merge`` / ``unmerge``)
through ``merge`` and ``unmerge``: the same rules, the same history, with the
operator as its source.

A study's retention expiry depends on its patient's birth and death dates (HL7
PID-7, PID-29): ``on_retention`` (services.retention) recomputes it, in the same
transaction, for the studies of a patient whose dates changed and for studies a
merge, unlink or identifier change moved. A death date alone does not make the
patient corrected (it goes out with no object) and registers nothing again.

Every correction applied is audited in its transaction (services.audit): a 110110
Patient Record message, action U, naming the patients it changed (the surviving
or changed identity first) and the HL7 message control id, with the sending
application and facility (or the operator) as requestor.

An HL7 message acts for the organisation that sent it (``Senders``): MSH-4 Sending
Facility names it by its universal id (HD.2, the organisation's OID), which must
be a configured organisation and, on ``[hl7] tls``, the client certificate's; else
the message is refused as a whole (ACK AR with ERR, audited, not recorded as
seen). On the embedded default (no ``[[nodes]]``) a message naming no configured
organisation acts for the local one, as every calling AE title does.

A correction changes only the sending organisation's studies (a register holder
owns what it archived). Patient records are shared - one per Patient ID and
issuer, whoever sent the studies - so a correction acts on the sender's own
record of the patient: the shared record itself while no other organisation's
study belongs to it or was received for it (a single-organisation archive never
has more), else a record split off for the sender (index.patients ``split``: a
copy of the shared one, the sender's studies moved onto it, their received
patient unchanged so that disclosure prohibitions and legal holds of the patient
still cover them). From then on the sender's new studies of the patient go to its
own record (index.instances), queries read each study's current record, and
retrieve coerces the sender's objects to it (``corrected_patient``) while the
other organisations' studies keep the shared record, untouched. The operator's
``merge`` / ``unmerge`` act on the shared records, for every organisation.

What each message does when the sender archives no study of the patient: A08/A31
change nothing and answer AA with an ERR warning (severity W, 204) saying so; an
A47 is refused (AE 204) like an unknown identifier; an A40 still records the merge
for the sender's own record (its later studies go to the survivor), as for a
patient the archive does not hold; an A37 finds no merge of the sender's to undo
(AE 204). A record used only by the sender is corrected whole: a study another
organisation sends later for the patient joins it as corrected.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Engine

from kuva.config import LOCAL_ORGANIZATION_OID, Settings
from kuva.index.corrections import Correction
from kuva.index.patients import PatientRow, PatientStudy
from kuva.index.uow import UnitOfWork
from kuva.model import audit as a
from kuva.model.clock import Clock, utcnow
from kuva.model.directory import OrganizationState
from kuva.model.identity import TESTING_RULE, is_test_identity_code
from kuva.model.patient import (
    ChangeIdentifier,
    Demographics,
    DuplicateMessage,
    MergePatients,
    PatientCommand,
    PatientCorrectionError,
    PatientKey,
    SenderRefused,
    UnlinkPatients,
    UpdatePatient,
)
from kuva.services.audit import AuditTrail

log = logging.getLogger(__name__)

# HL7 table 0357 message error condition codes.
UNKNOWN_KEY = "204"
DUPLICATE_KEY = "205"
APPLICATION_ERROR = "207"

OPERATOR = "operator"
IDENTIFIER_CHANGE = "identifier change"

# (unit of work, Study Instance UIDs whose patient identity changed, when): called
# inside the correcting transaction.
ChangedHook = Callable[[UnitOfWork, list[str], datetime], None]


REQUIRED_FIELD = "101"
NO_STUDY = "the sending organisation archives no study of this patient"


@dataclass(frozen=True)
class MessageRef:
    """What identifies a message for de-duplication (MSH-3, MSH-4, MSH-10) and its
    type; ``sending_organization`` the universal id of MSH-4 (HD.2)."""

    sending_application: str
    sending_facility: str
    control_id: str
    message_type: str
    sending_organization: str = ""

    @property
    def facility_key(self) -> str:
        """MSH-4 as messages are told apart: the namespace and the universal id, so
        that one organisation's control ids never answer for another's."""
        if not self.sending_organization:
            return self.sending_facility
        return f"{self.sending_facility}^{self.sending_organization}"[:180]


# (error or None, note): the ACK; a note (nothing applied) goes with an AA.
AckRenderer = Callable[..., str]


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def sender_networks(settings: Settings) -> dict[str, tuple[IPNetwork, ...]]:
    """``[[hl7.senders]]`` as networks by organisation (read once: the file's)."""
    networks: dict[str, list[IPNetwork]] = {}
    for sender in settings.hl7.senders:
        for text in sender.addresses:
            networks.setdefault(sender.organization, []).append(
                ipaddress.ip_network(text, strict=False)
            )
    return {org: tuple(found) for org, found in networks.items()}


@dataclass(frozen=True)
class Senders:
    """The organisations HL7 messages may act for (module docstring)."""

    organizations: frozenset[str]
    open_access: bool = False
    # Organisations whose state refuses their messages (suspended, terminated), with
    # the reason; those in testing, whose messages name test identity codes only.
    refused: Mapping[str, str] = field(default_factory=dict)
    testing: frozenset[str] = frozenset()
    # [[hl7.senders]]: the networks each organisation may send from on plain MLLP;
    # empty: MSH-4 is taken as sent.
    networks: Mapping[str, tuple[IPNetwork, ...]] = field(default_factory=dict)

    @classmethod
    def of(
        cls, settings: Settings, networks: Mapping[str, tuple[IPNetwork, ...]] | None = None
    ) -> Senders:
        """The senders of the directory now (services.directory)."""
        states = {org.oid: org.state for org in settings.directory.organizations}
        return cls(
            settings.organization_oids(),
            settings.open_access,
            refused={
                oid: f"organisation {oid} {state}"
                for oid, state in states.items()
                if state in (OrganizationState.SUSPENDED, OrganizationState.TERMINATED)
            },
            testing=frozenset(o for o, s in states.items() if s is OrganizationState.TESTING),
            networks=sender_networks(settings) if networks is None else networks,
        )

    def check(self, organization: str, commands: Sequence[PatientCommand]) -> None:
        """SenderRefused when ``organization``'s state refuses these commands: it is
        suspended or terminated, or in testing and a patient is not named by a test
        identity code (model.identity)."""
        if organization in self.refused:
            raise SenderRefused(self.refused[organization], field="MSH-4", code=APPLICATION_ERROR)
        if organization in self.testing:
            for command in commands:
                for key in vars(command).values():
                    if isinstance(key, PatientKey) and not is_test_identity_code(key.patient_id):
                        raise SenderRefused(TESTING_RULE, field="PID-3", code=APPLICATION_ERROR)

    def check_address(self, organization: str, address: str) -> None:
        """SenderRefused when ``[[hl7.senders]]`` lists senders and none of
        ``organization``'s covers ``address`` (a plain MLLP connection's peer)."""
        if not self.networks:
            return
        try:
            peer = ipaddress.ip_address(address)
        except ValueError:
            peer = None
        allowed = self.networks.get(organization, ())
        if peer is None or not any(peer in network for network in allowed):
            raise SenderRefused(
                f"MSH-4 organisation {organization} may not send from {address or 'here'} "
                "([[hl7.senders]])",
                field="MSH-4",
                code=UNKNOWN_KEY,
            )

    def organization(self, universal_id: str, certified: str | None = None) -> str:
        """The organisation a message whose MSH-4 universal id is ``universal_id``
        acts for; ``certified``: the client certificate's (``[hl7] tls``).
        SenderRefused (HL7 table 0357: 101 required field missing, 204 unknown key
        identifier) when it may act for none."""
        if certified is None and self.open_access:
            # The embedded default: what names no configured organisation is the
            # local one's, as every calling AE title is.
            return universal_id if universal_id in self.organizations else LOCAL_ORGANIZATION_OID
        if not universal_id:
            raise SenderRefused(
                "MSH-4.2 (sending facility universal id, the organisation OID) missing",
                field="MSH-4",
                code=REQUIRED_FIELD,
            )
        if certified is not None and universal_id != certified:
            raise SenderRefused(
                f"MSH-4 names organisation {universal_id}, "
                f"the client certificate organisation {certified}",
                field="MSH-4",
                code=UNKNOWN_KEY,
            )
        if certified is None and universal_id not in self.organizations:
            raise SenderRefused(
                f"MSH-4 organisation {universal_id} is not configured",
                field="MSH-4",
                code=UNKNOWN_KEY,
            )
        return universal_id


@dataclass(frozen=True)
class Corrected:
    """What corrections did: ``changed`` false when there was nothing to do (merged
    already, the same demographics); ``studies`` those whose current patient
    identity changed (each registered again when registration is on)."""

    changed: bool
    studies: tuple[str, ...]
    notes: tuple[str, ...] = ()  # why a command changed nothing, for the sender


@dataclass(frozen=True)
class PatientView:
    """A patient as an operator sees it (``kuva patients show``)."""

    chain: list[PatientRow]  # the patient asked for, those it is merged into, the survivor last
    merged: list[PatientRow]  # the patients merged into the survivor
    studies: list[PatientStudy]  # the survivor's studies
    history: list[Correction]  # corrections of these identities, oldest first

    @property
    def current(self) -> PatientRow:
        return self.chain[-1]


class PatientService:
    def __init__(
        self,
        engine: Engine,
        *,
        strict: bool = False,
        clock: Clock = utcnow,
        on_changed: ChangedHook | None = None,
        audit: AuditTrail | None = None,
        on_retention: ChangedHook | None = None,
        senders: Senders | Callable[[], Senders] | None = None,
        rate_limit: Callable[[str | None], float] | None = None,
    ) -> None:
        """``senders`` None: HL7 messages act for every organisation, as the
        operator's commands do (tools and tests, never ``kuva serve``); a callable:
        asked at each message, so that the directory's changes count at once.
        ``rate_limit``: counts a message of an organisation against its requests per
        second (services.limits): 0.0, or the seconds to wait when it is over."""
        self._engine = engine
        self._senders = senders
        self._rate_limit = rate_limit
        self._strict = strict
        self._clock = clock
        self.on_changed = on_changed
        self.on_retention = on_retention
        self._audit = audit

    # ------------------------------------------------------------------ HL7

    def handle(
        self,
        ref: MessageRef,
        commands: Sequence[PatientCommand],
        render_ack: AckRenderer,
        *,
        certified: str | None = None,
        address: str = "",
    ) -> str:
        """Apply ``commands`` (all or nothing) for the sending organisation unless the
        message was seen; its ACK. ``certified``: the organisation of the
        connection's client certificate (``[hl7] tls``); ``address``: the peer's IP
        address on a plain connection (``[[hl7.senders]]``)."""
        organization: str | None = None
        senders = self._senders() if callable(self._senders) else self._senders
        if senders is not None:
            try:
                organization = senders.organization(ref.sending_organization, certified)
                if certified is None:
                    senders.check_address(organization, address)
                senders.check(organization, commands)
            except SenderRefused as refused:
                return self._refuse_sender(ref, commands, render_ack, refused)
        wait = self._rate_limit(organization) if self._rate_limit is not None else 0.0
        if wait:
            # Not recorded as seen: the same message sent again later is applied.
            log.warning(
                "HL7 %s %s refused: organisation %s over its requests per second",
                ref.message_type,
                ref.control_id,
                organization,
            )
            busy = f"organisation message rate limit exceeded; retry in {wait:.1f} s"
            return render_ack(PatientCorrectionError(busy, field="MSH-4", code="207"))
        seen = self._seen(ref)
        if seen is not None:
            log.info("HL7 message %s seen before: answered again, not applied", ref.control_id)
            return seen
        try:
            try:
                with UnitOfWork(self._engine) as uow:
                    done = self._correct(
                        uow,
                        commands,
                        f"HL7 {ref.message_type} {ref.sending_application}",
                        requestor=f"{ref.sending_application}|{ref.facility_key}",
                        control_id=ref.control_id,
                        organization=organization,
                    )
                    if done.notes:
                        ack = render_ack(None, "; ".join(done.notes))
                    else:
                        ack = render_ack(None)
                    self._record(uow, ref, ack)
                    uow.commit()
                return ack
            except PatientCorrectionError as error:
                log.warning(
                    "HL7 %s %s not applied: %s (%s)",
                    ref.message_type,
                    ref.control_id,
                    error,
                    error.field,
                )
                ack = render_ack(error)
                with UnitOfWork(self._engine) as uow:
                    self._record(uow, ref, ack)
                    if self._audit is not None:
                        self._audit.record(
                            uow, self._refused(self._audit, ref, commands, str(error))
                        )
                    uow.commit()
                return ack
        except DuplicateMessage:
            # The same message on another connection at the same moment: its answer.
            seen = self._seen(ref)
            if seen is None:
                raise
            return seen

    def _refuse_sender(
        self,
        ref: MessageRef,
        commands: Sequence[PatientCommand],
        render_ack: AckRenderer,
        refused: SenderRefused,
    ) -> str:
        """The AR of a message from no organisation it may act for, audited; not
        recorded as seen (sent again once configured, it is applied)."""
        log.warning("HL7 %s %s refused: %s", ref.message_type, ref.control_id, refused)
        if self._audit is not None:
            with UnitOfWork(self._engine) as uow:
                self._audit.record(uow, self._refused(self._audit, ref, commands, str(refused)))
                uow.commit()
        return render_ack(refused)

    def _seen(self, ref: MessageRef) -> str | None:
        with UnitOfWork(self._engine, write=False) as uow:
            return uow.patients.seen_message(
                ref.sending_application, ref.facility_key, ref.control_id
            )

    def _record(self, uow: UnitOfWork, ref: MessageRef, ack: str) -> None:
        uow.patients.record_message(
            ref.sending_application,
            ref.facility_key,
            ref.control_id,
            ref.message_type,
            ack,
            self._clock(),
        )

    # ------------------------------------------------------------------ operator

    def merge(self, source: PatientKey, target: PatientKey, *, by: str = OPERATOR) -> Corrected:
        """``source`` merged into ``target`` as by ADT^A40; both must be known."""
        with UnitOfWork(self._engine) as uow:
            if uow.patients.find(source) is None:
                raise PatientCorrectionError(
                    "the patient to merge is unknown", field="MRG-1", code=UNKNOWN_KEY
                )
            if uow.patients.find(target) is None:
                raise PatientCorrectionError(
                    "the surviving patient is unknown", field="PID-3", code=UNKNOWN_KEY
                )
            done = self._correct(
                uow, [MergePatients(target=target, source=source)], by, requestor=by
            )
            uow.commit()
        return done

    def unmerge(self, source: PatientKey, *, by: str = OPERATOR) -> tuple[PatientKey, Corrected]:
        """Undo the merge of ``source`` into the patient it is merged into, as by
        ADT^A37; that patient and the outcome."""
        with UnitOfWork(self._engine) as uow:
            row = uow.patients.find(source)
            if row is None:
                raise PatientCorrectionError(
                    "the patient is unknown", field="PID-3", code=UNKNOWN_KEY
                )
            if row.merged_into_pk is None:
                raise PatientCorrectionError(
                    "the patient is not merged into another", field="PID-3", code=UNKNOWN_KEY
                )
            target = uow.patients.get(row.merged_into_pk).key
            done = self._correct(
                uow, [UnlinkPatients(target=target, source=source)], by, requestor=by
            )
            uow.commit()
        return target, done

    def show(self, key: PatientKey) -> PatientView | None:
        """The patient, its survivor chain, the survivor's studies and the history of
        every identity involved (None: unknown)."""
        with UnitOfWork(self._engine, write=False) as uow:
            row = uow.patients.find(key)
            if row is None:
                return None
            chain = uow.patients.chain(row.pk)
            merged = uow.patients.merged_into_this(chain[-1].pk)
            studies = uow.patients.studies(chain[-1].pk)
            subjects = {str(p.key) for p in (*chain, *merged)}
            history = uow.corrections.naming(subjects)
            while True:  # identifiers these patients had before an identifier change
                former = {
                    c.subject
                    for c in history
                    if c.kind == IDENTIFIER_CHANGE and c.detail.get("new") in subjects
                } - subjects
                if not former:
                    break
                subjects |= former
                history = uow.corrections.naming(subjects)
        return PatientView(chain, merged, studies, history)

    # ------------------------------------------------------------------ commands

    def _correct(
        self,
        uow: UnitOfWork,
        commands: Sequence[PatientCommand],
        source: str,
        *,
        requestor: str,
        control_id: str = "",
        organization: str | None = None,
    ) -> Corrected:
        """Apply ``commands`` in ``uow`` for ``organization`` (None: every one),
        register again the studies they changed and audit each command applied
        (``requestor``: who asked, for the audit)."""
        changed = False
        studies: dict[str, None] = {}  # ordered, each once
        applied: list[PatientCommand] = []
        scope = _Scope(organization)
        for command in commands:
            done = self._apply(uow, command, source, scope)
            if done is not None:
                changed = True
                applied.append(command)
                studies.update(dict.fromkeys(done))
        if studies and self.on_changed is not None:
            self.on_changed(uow, list(studies), self._clock())
        retention = list(dict.fromkeys([*studies, *scope.dated]))
        if retention and self.on_retention is not None:
            self.on_retention(uow, retention, self._clock())
        if applied and self._audit is not None:
            self._audit.record(uow, self._audited(self._audit, applied, requestor, control_id))
        return Corrected(changed, tuple(studies), tuple(dict.fromkeys(scope.notes)))

    def _audited(
        self,
        audit: AuditTrail,
        commands: list[PatientCommand],
        requestor: str,
        control_id: str,
    ) -> list[a.AuditEvent]:
        """A Patient Record message (PS3.15 A.5.3.9) for each command applied."""
        who = a.ActiveParticipant(user_id=requestor, requestor=True, roles=(a.SOURCE,))
        archive = audit.archive(roles=(a.DESTINATION,))
        now = self._clock()
        return [
            a.patient_record(
                source=audit.source,
                requestor=who,
                archive=archive,
                patients=tuple((key.patient_id, key.issuer) for key in keys),
                description=description,
                message_control_id=control_id,
                occurred_at=now,
            )
            for description, keys in map(_named, commands)
        ]

    def _refused(
        self,
        audit: AuditTrail,
        ref: MessageRef,
        commands: Sequence[PatientCommand],
        reason: str,
    ) -> list[a.AuditEvent]:
        """A Patient Record message with outcome 4 (minor failure: not done) for an
        HL7 message refused with ACK AE although it was well formed (an unknown
        patient, a forbidden merge...): the patients it names, the refusal as the
        description (IHE ITI TF-2b 3.8.5 read with PS3.15 A.5.3.9)."""
        who = a.ActiveParticipant(
            user_id=f"{ref.sending_application}|{ref.facility_key}",
            requestor=True,
            roles=(a.SOURCE,),
        )
        named: dict[PatientKey, None] = {}
        for command in commands:
            named.update(dict.fromkeys(_named(command)[1]))
        return [
            a.patient_record(
                source=audit.source,
                requestor=who,
                archive=audit.archive(roles=(a.DESTINATION,)),
                patients=tuple((key.patient_id, key.issuer) for key in named),
                description=f"{ref.message_type} refused: {reason}",
                message_control_id=ref.control_id,
                occurred_at=self._clock(),
                outcome=a.Outcome.MINOR_FAILURE,
            )
        ]

    def _apply(
        self, uow: UnitOfWork, command: PatientCommand, source: str, scope: _Scope
    ) -> list[str] | None:
        """The studies whose patient identity the command changed; None: nothing done."""
        if isinstance(command, MergePatients):
            return self._merge(uow, command, source, scope)
        if isinstance(command, UpdatePatient):
            return self._update(uow, command, source, scope)
        if isinstance(command, ChangeIdentifier):
            return self._change(uow, command, source, scope)
        return self._unlink(uow, command, source, scope)

    @staticmethod
    def _record_of(uow: UnitOfWork, key: PatientKey, scope: _Scope) -> PatientRow | None:
        """The record of ``key`` a correction of ``scope`` starts from: the sending
        organisation's own, else the shared one."""
        if scope.organization is not None:
            own = uow.patients.find(key, scope.organization)
            if own is not None:
                return own
        return uow.patients.find(key, "")

    def _own(self, uow: UnitOfWork, row: PatientRow, scope: _Scope) -> PatientRow:
        """The record the correction changes: ``row`` unless other organisations'
        studies use it, else the sender's own record split off it."""
        organization = scope.organization
        if (
            organization is None
            or row.organization_oid == organization
            or not uow.patients.used_by_others(row, organization)
        ):
            return row
        own = uow.patients.split(row.pk, organization, self._clock())
        log.info("patient record split off for the sending organisation's studies")
        return uow.patients.get(own)

    def _known(self, uow: UnitOfWork, key: PatientKey, scope: _Scope) -> PatientRow:
        row = self._record_of(uow, key, scope)
        if row is not None:
            return row
        return uow.patients.get(uow.patients.create(key, self._clock()))

    def _merge(
        self, uow: UnitOfWork, command: MergePatients, source: str, scope: _Scope
    ) -> list[str] | None:
        target = self._known(uow, command.target, scope)
        merged = self._record_of(uow, command.source, scope)
        if merged is None:
            if self._strict:
                raise PatientCorrectionError(
                    "the patient to merge is unknown", field="MRG-1", code=UNKNOWN_KEY
                )
            merged = self._known(uow, command.source, scope)
        if merged.pk == target.pk:
            raise PatientCorrectionError(
                "a patient cannot be merged into itself", field="MRG-1", code=APPLICATION_ERROR
            )
        if merged.merged_into_pk == target.pk:
            return None  # merged already: nothing to do
        if merged.merged_into_pk is not None:
            raise PatientCorrectionError(
                "the patient to merge is already merged into another",
                field="MRG-1",
                code=APPLICATION_ERROR,
            )
        if uow.patients.survivor(target.pk) == merged.pk:
            raise PatientCorrectionError(
                "circular merge refused: the surviving patient is merged into this one",
                field="MRG-1",
                code=APPLICATION_ERROR,
            )
        merged = self._own(uow, merged, scope)
        moved = uow.patients.merge(merged.pk, target.pk)
        uow.corrections.append(
            "merge",
            str(command.source),
            scope.detail({"into": str(command.target), "studies_moved": len(moved)}),
            source,
            self._clock(),
        )
        log.info("patient merged (%d studies moved)", len(moved))
        return moved

    def _update(
        self, uow: UnitOfWork, command: UpdatePatient, source: str, scope: _Scope
    ) -> list[str] | None:
        row = self._record_of(uow, command.patient, scope)
        if row is None or (
            scope.organization is not None
            and not uow.patients.holds_studies(row.pk, scope.organization)
        ):
            log.info("patient update for a patient the sender has no study of: nothing to do")
            if scope.organization is not None:
                scope.notes.append(f"{NO_STUDY}: nothing changed")
            return None
        new = command.demographics
        pairs = ((new.name, row.name), (new.birth_date, row.birth_date), (new.sex, row.sex))
        corrected = any(after is not None and after != held for after, held in pairs)
        died = new.death_date is not None and new.death_date != row.death_date
        if not corrected and not died:
            log.info("patient update changes nothing the archive holds")
            return None
        if not corrected:  # the same demographics: only the death date is taken
            new = Demographics(death_date=new.death_date)
        now = self._clock()
        row = self._own(uow, row, scope)
        uow.patients.update(row.pk, new, now)
        before = {"name": row.name, "birth_date": row.birth_date, "sex": row.sex}
        after = {"name": new.name, "birth_date": new.birth_date, "sex": new.sex}
        if died:
            before["death_date"] = row.death_date
            after["death_date"] = new.death_date
        uow.corrections.append(
            "update",
            str(command.patient),
            scope.detail({"before": before, "after": after}),
            source,
            now,
        )
        studies = uow.patients.study_uids(row.pk)
        born = new.birth_date is not None and new.birth_date != row.birth_date
        if born or died:
            scope.dated.extend(studies)
        return studies if corrected else []

    def _change(
        self, uow: UnitOfWork, command: ChangeIdentifier, source: str, scope: _Scope
    ) -> list[str]:
        row = self._record_of(uow, command.old, scope)
        if row is None:
            raise PatientCorrectionError(
                "the patient identifier to change is unknown", field="MRG-1", code=UNKNOWN_KEY
            )
        if scope.organization is not None and not uow.patients.holds_studies(
            row.pk, scope.organization
        ):
            raise PatientCorrectionError(NO_STUDY, field="MRG-1", code=UNKNOWN_KEY)
        if self._record_of(uow, command.new, scope) is not None:
            raise PatientCorrectionError(
                "the new patient identifier is already in use (merge instead)",
                field="PID-3",
                code=DUPLICATE_KEY,
            )
        now = self._clock()
        row = self._own(uow, row, scope)
        uow.patients.change_identifier(row.pk, command.new, now)
        # The old identifier stays known, merged into the patient it now names: its
        # late instances go there, and XDS entries registered under it are found
        # by the new one (the registry overlay follows merges of shared records).
        alias = uow.patients.create(command.old, now, row.organization_oid)
        uow.patients.merge(alias, row.pk)
        uow.corrections.append(
            IDENTIFIER_CHANGE,
            str(command.old),
            scope.detail({"new": str(command.new)}),
            source,
            now,
        )
        return uow.patients.study_uids(row.pk)

    def _unlink(
        self, uow: UnitOfWork, command: UnlinkPatients, source: str, scope: _Scope
    ) -> list[str]:
        target = self._record_of(uow, command.target, scope)
        merged = self._record_of(uow, command.source, scope)
        if target is None or merged is None or merged.merged_into_pk != target.pk:
            raise PatientCorrectionError(
                "no merge of these two patients to undo", field="PID-3", code=UNKNOWN_KEY
            )
        merged = self._own(uow, merged, scope)
        moved = uow.patients.unmerge(merged.pk)
        uow.corrections.append(
            "unlink",
            str(command.source),
            scope.detail({"from": str(command.target), "studies_moved": len(moved)}),
            source,
            self._clock(),
        )
        return moved


@dataclass
class _Scope:
    """One message's corrections: the organisation they act for (None: every one),
    the studies whose patient's birth or death date changed, and notes for the
    sender on commands that changed nothing."""

    organization: str | None
    dated: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def detail(self, values: dict[str, object]) -> dict[str, object]:
        """A correction's history detail, naming the organisation it acted for."""
        if self.organization is None:
            return values
        return {**values, "organization": self.organization}


def _named(command: PatientCommand) -> tuple[str, tuple[PatientKey, ...]]:
    """What a command does and the patients it names, the one that remains first."""
    if isinstance(command, MergePatients):
        return "merge", (command.target, command.source)
    if isinstance(command, UpdatePatient):
        return "update", (command.patient,)
    if isinstance(command, ChangeIdentifier):
        return IDENTIFIER_CHANGE, (command.new, command.old)
    return "unlink", (command.source, command.target)
