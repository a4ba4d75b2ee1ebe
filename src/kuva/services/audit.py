"""The audit trail (DICOM PS3.15 A.5, IHE ATNA): what kuva records of what it does,
and the proof that the record was not changed afterwards.

Every audited event becomes a DICOM Audit Message (``render``: kuva.audit.message)
appended to the local trail (index.audit) - in the transaction of the change it
describes, where that change has one (a patient correction, a disclosure; docs/design.md
principles 3 and 7), else in a transaction of its own. Each record carries the
SHA-256 of the one before it (model.audit.record_hash), so ``verify`` finds every
record altered, removed or put in since.

With ``[audit] repository`` set, each record also gets an outbox task
(``DELIVERY_TASK``) in the same transaction that sends it to the audit record
repository by syslog (kuva.audit.syslog): a repository that is down gets the
message when it is back (retries with backoff, then ``kuva tasks retry``), and no
record is lost. The repository's copy is the trail's anchor outside kuva: the
local chain alone cannot show that its newest records were cut off, nor a
chain rewritten from some record on.

Records of events that change nothing - queries and the register holder's own
retrieves - are not written on the request path: ``record_later`` queues them for
a writer thread that appends them in batches (services.audit_writer, which says
what a kill can lose). Everything else is written before the request is answered.

What is audited (the builders of model.audit):

- the archive's start and stop (``application_started`` / ``_stopped``);
- the instances of each study received on a DICOM association, one message per
  study at the association's end (``instances_received``), or by a STOW-RS
  request (``instances_posted``);
- every C-FIND (``queried``), QIDO-RS (``web_queried``) and ITI-18
  (``stored_queried``) request, queued;
- every C-GET, C-MOVE, WADO-RS and WADO-URI request, per study of the requester's
  own organisation (110104 action R, ``dicom_retrieved`` / ``web_retrieved``),
  queued; the studies of other organisations are disclosures (below);
- every ITI-41 and ITI-42 submission (110107 Import, ``submission_imported``);
- every patient correction (services.patients), every disclosure
  (services.disclosure), in their own transactions (``record``); an HL7 message
  refused with AE after it was read (services.patients: Patient Record, outcome 4);
- a DICOM association refused for its AE titles (``association_rejected``);
- a connection to a mutual TLS listener refused: failed handshake (no or an
  untrusted client certificate), or a certificate of no organisation
  (``node_authentication_failed``).
- every destruction by retention (services.retention: 110105 DICOM Study
  Deleted), in the transaction that deletes the rows (``record``).
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from sqlalchemy import Engine

from kuva.config import Settings
from kuva.index.audit import AuditRecord
from kuva.index.outbox import Task
from kuva.index.uow import UnitOfWork
from kuva.model import audit as a
from kuva.model.clock import Clock, utcnow
from kuva.model.xua import RequestingUser
from kuva.services.audit_writer import Pending, QueuedWriter
from kuva.tasks.worker import PermanentFailure

if TYPE_CHECKING:
    from kuva.services.integrity import Finding

log = logging.getLogger(__name__)

DELIVERY_TASK = "audit-delivery"

# The EventIDs of kuva's messages by code, for operators (``kuva audit list``).
EVENT_IDS = {
    code.code: code
    for code in (
        a.APPLICATION_ACTIVITY,
        a.INSTANCES_TRANSFERRED,
        a.STUDY_DELETED,
        a.EXPORT,
        a.IMPORT,
        a.PATIENT_RECORD,
        a.QUERY,
        a.SECURITY_ALERT,
    )
}
OUTCOMES = {
    int(outcome): f"{int(outcome)} {outcome.name.lower().replace('_', ' ')}"
    for outcome in a.Outcome
}


def audit_failed(logger: logging.Logger, what: str, exc: BaseException) -> None:
    """Log that ``what`` could not be audited: the exception's type at ERROR, its
    traceback at DEBUG only (database errors quote their parameters: the message,
    with patient ids)."""
    logger.error("%s could not be audited: %s", what, type(exc).__name__)
    logger.debug("%s: audit failure", what, exc_info=exc)


class AuditRepositorySender(Protocol):
    """The adapter that hands a message to the audit record repository
    (kuva.audit.syslog.SyslogSender)."""

    def send(self, message: str, recorded_at: datetime) -> None:
        """Send the AuditMessage XML recorded at ``recorded_at``; raise when it could
        not be."""


@dataclass(frozen=True)
class ReceivedStudy:
    """What one association stored of one study."""

    study_instance_uid: str
    patient: tuple[str, str] | None  # Patient ID, issuer
    sop_classes: dict[str, int]  # SOP Class UID -> instances stored
    failures: int  # instances of the study that were refused


@dataclass(frozen=True)
class SentStudy:
    """What one retrieve request sent of one study of the requester's own
    organisation (services.retrieve ``RetrieveService.own_studies``)."""

    study_instance_uid: str
    sop_classes: dict[str, int]  # SOP Class UID -> instances sent (or to be sent)


@dataclass(frozen=True)
class Requester:
    """Who made an HTTP request, for its audit message: the organisation it acts for
    (kuva.web.identity; None = unknown) and the client's IP address."""

    organization: str | None
    address: str
    # The person, when a verified XUA assertion named one (kuva.xds.xua).
    user: RequestingUser | None = None


def human_requestor(user: RequestingUser) -> a.ActiveParticipant:
    """The person a verified XUA assertion names, as the human requestor (ITI TF-2b
    3.40.4.2): UserID its NameID, UserName ``alias<user@issuer>``, RoleIDCode its
    XSPA role."""
    return a.ActiveParticipant(
        user_id=user.name_id,
        requestor=True,
        roles=(user.role,) if user.role is not None else (),
        user_name=user.user_name(),
    )


def by_user(event: a.AuditEvent, user: RequestingUser | None) -> a.AuditEvent:
    """``event`` with the human requestor and the purpose of use of ``user`` (if any)."""
    if user is None:
        return event
    purposes = (user.purpose_of_use,) if user.purpose_of_use is not None else ()
    return replace(
        event,
        participants=(*event.participants, human_requestor(user)),
        purposes=event.purposes + purposes,
    )


@dataclass(frozen=True)
class ChainBreak:
    """A place where the trail is not as it was written.

    ``kind``: ``altered`` (the record's hash does not match its fields),
    ``deleted`` (records ``seq`` .. ``last`` are missing), ``inserted`` (a record
    whose hash matches its fields but that does not follow the record before it:
    put in, or the record before it altered and its hash computed anew)."""

    seq: int
    kind: str
    detail: str
    last: int | None = None


class AuditTrail:
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        *,
        render: Callable[[a.AuditEvent], str],
        sender: AuditRepositorySender | None = None,
        clock: Clock = utcnow,
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._render = render
        self._sender = sender
        self._clock = clock
        self.enabled = settings.audit.enabled
        # Records get a delivery task whenever a repository is configured, also
        # those written by other commands than ``kuva serve`` (which delivers them).
        self._deliver = bool(settings.audit.repository)
        self.on_enqueued: Callable[[int | None], None] | None = None
        self.source = a.AuditSource(
            source_id=settings.audit.source_id or settings.node_name,
            enterprise_site_id=settings.audit.enterprise_site_id,
        )
        self._host = socket.gethostname()
        audit = settings.audit
        self._writer = (
            QueuedWriter(
                self._write,
                capacity=audit.queue_size,
                batch_size=audit.batch_size,
                batch_seconds=audit.batch_seconds,
            )
            if audit.queue_size > 0 and self.enabled
            else None
        )

    # ------------------------------------------------------------------ queued writer

    @property
    def writer(self) -> QueuedWriter | None:
        return self._writer

    def start_writer(self) -> None:
        """Start the queued writer (the composition root, at start); until then
        ``record_later`` writes at once."""
        if self._writer is not None:
            self._writer.start()

    def stop_writer(self) -> None:
        """Write every queued record, then stop the writer (at stop)."""
        if self._writer is not None:
            self._writer.stop()

    # ------------------------------------------------------------------ participants

    def archive(
        self, *, roles: tuple[a.Code, ...] = (), requestor: bool = False
    ) -> a.ActiveParticipant:
        """kuva itself: its AE title, process id and host (PS3.15 A.5.2.1)."""
        return a.ActiveParticipant(
            user_id=self._settings.dicom.ae_title,
            requestor=requestor,
            roles=roles,
            alternative_user_id=str(os.getpid()),
            network_access_point=self._host,
            access_point_type=a.AccessPointType.MACHINE_NAME,
        )

    def endpoint(self, url: str, *, roles: tuple[a.Code, ...]) -> a.ActiveParticipant:
        """kuva as an HTTP endpoint (IHE ITI TF-2a 3.18.5.1.2, TF-2b 3.41.5.1.2: the
        web service endpoint URI), with its process id and host."""
        return a.ActiveParticipant(
            user_id=url,
            requestor=False,
            roles=roles,
            alternative_user_id=str(os.getpid()),
            network_access_point=self._host,
            access_point_type=a.AccessPointType.MACHINE_NAME,
        )

    @staticmethod
    def node(
        ae_title: str, address: str, *, roles: tuple[a.Code, ...], requestor: bool
    ) -> a.ActiveParticipant:
        """A DICOM node by its AE title and IP address."""
        return a.ActiveParticipant(
            user_id=ae_title, requestor=requestor, roles=roles, network_access_point=address
        )

    @staticmethod
    def client(
        requester: Requester, *, roles: tuple[a.Code, ...], requestor: bool = True
    ) -> a.ActiveParticipant:
        """An HTTP client by the organisation it acts for and its IP address."""
        return a.ActiveParticipant(
            user_id=requester.organization or "unknown",
            requestor=requestor,
            roles=roles,
            network_access_point=requester.address,
        )

    # ------------------------------------------------------------------ recording

    def record(self, uow: UnitOfWork, events: Iterable[a.AuditEvent]) -> list[int]:
        """Append ``events`` to the trail in ``uow``'s transaction, each with its
        delivery task when a repository is configured; their sequence numbers.
        Best called last in the transaction (appends are serialised)."""
        if not self.enabled:
            return []
        now = self._clock()
        sequence: list[int] = []
        for event in events:
            record = uow.audit.append(
                recorded_at=now,
                event_id=event.event_id.code,
                outcome=int(event.outcome),
                message=self._render(event),
            )
            sequence.append(record.seq)
            if self._deliver:
                uow.tasks.add(
                    DELIVERY_TASK,
                    subject=str(record.seq),
                    payload={"seq": record.seq},
                    now=now,
                    max_attempts=self._settings.tasks.max_attempts,
                )
        return sequence

    def record_now(self, events: Sequence[a.AuditEvent]) -> list[int]:
        """``record`` in a transaction of its own, committed when this returns."""
        if not self.enabled or not events:
            return []
        return self._write(events)

    def record_later(self, items: Sequence[Pending]) -> None:
        """Queue events that are part of no state change's transaction (queries,
        retrieves) for the writer thread (services.audit_writer): appended within
        ``[audit] batch_seconds``, lost only if the process is killed before. Written
        at once when no writer runs or its queue is full - never dropped."""
        if not self.enabled or not items:
            return
        rest = self._writer.offer(items) if self._writer is not None else list(items)
        if rest:
            self._write(rest)

    def _write(self, items: Sequence[Pending]) -> list[int]:
        """Append ``items`` in one transaction (the writer's batch, or ``record_now``)."""
        with UnitOfWork(self._engine) as uow:
            sequence: list[int] = []
            for item in items:
                events = [item] if isinstance(item, a.AuditEvent) else item(uow)
                sequence += self.record(uow, events)
            uow.commit()
        if sequence and self._deliver and self.on_enqueued is not None:
            self.on_enqueued(None)
        return sequence

    def application_started(self) -> None:
        self._application(started=True)

    def application_stopped(self) -> None:
        self._application(started=False)

    def _application(self, *, started: bool) -> None:
        try:
            launcher = getpass.getuser()
        except (KeyError, OSError):
            launcher = ""
        self.record_now(
            [
                a.application_activity(
                    started,
                    source=self.source,
                    application=self.archive(roles=(a.APPLICATION,)),
                    launcher=(
                        a.ActiveParticipant(
                            user_id=launcher, requestor=True, roles=(a.APPLICATION_LAUNCHER,)
                        )
                        if launcher
                        else None
                    ),
                    occurred_at=self._clock(),
                )
            ]
        )

    def instances_received(
        self, calling_ae: str, address: str, studies: Sequence[ReceivedStudy]
    ) -> None:
        """110104 for each study an association stored (or tried to), at its end:
        outcome 0 when all its instances were stored, 4 when some were refused, 8
        when none was."""
        sender = self.node(calling_ae, address, roles=(a.SOURCE,), requestor=True)
        self.record_now(self._received(sender, studies))

    def instances_posted(self, requester: Requester, studies: Sequence[ReceivedStudy]) -> None:
        """110104 for each study a STOW-RS request stored (or tried to), as for
        C-STORE: the HTTP client is the Source and requestor."""
        self.record_now(self._received(self.client(requester, roles=(a.SOURCE,)), studies))

    def _received(
        self, sender: a.ActiveParticipant, studies: Sequence[ReceivedStudy]
    ) -> list[a.AuditEvent]:
        now = self._clock()
        receiver = self.archive(roles=(a.DESTINATION,))
        events = []
        for study in studies:
            stored = sum(study.sop_classes.values())
            outcome = (
                a.Outcome.SUCCESS
                if not study.failures
                else a.Outcome.MINOR_FAILURE
                if stored
                else a.Outcome.SERIOUS_FAILURE
            )
            events.append(
                a.instances_transferred(
                    source=self.source,
                    sender=sender,
                    receiver=receiver,
                    study_instance_uid=study.study_instance_uid,
                    sop_classes=tuple(
                        a.SopClass(uid, count) for uid, count in sorted(study.sop_classes.items())
                    ),
                    patient=study.patient,
                    outcome=outcome,
                    occurred_at=now,
                )
            )
        return events

    def instances_sent(
        self,
        *,
        destination: a.ActiveParticipant,
        studies: Sequence[SentStudy],
        transaction: a.Code,
        outcome: a.Outcome = a.Outcome.SUCCESS,
        others: tuple[a.ActiveParticipant, ...] = (),
        user: RequestingUser | None = None,
    ) -> None:
        """110104, action R, for each study of its own that the register holder
        retrieved (disclosures to other organisations are Export messages,
        services.disclosure): kuva is the Source, ``destination`` the Destination
        (PS3.15 A.5.3.4). Queued; the studies' patients are read by the writer."""
        if not studies:
            return
        source = self.archive(roles=(a.SOURCE,))
        now = self._clock()

        def events(uow: UnitOfWork) -> list[a.AuditEvent]:
            patients = uow.disclosures.patients_of_studies(
                [study.study_instance_uid for study in studies]
            )
            return [
                by_user(
                    a.instances_transferred(
                        source=self.source,
                        sender=source,
                        receiver=destination,
                        study_instance_uid=study.study_instance_uid,
                        sop_classes=tuple(
                            a.SopClass(uid, count)
                            for uid, count in sorted(study.sop_classes.items())
                        ),
                        patient=patients.get(study.study_instance_uid),
                        outcome=outcome,
                        occurred_at=now,
                        action=a.Action.READ,
                        others=others,
                        transaction=transaction,
                    ),
                    user,
                )
                for study in studies
            ]

        self.record_later([events])

    def dicom_retrieved(
        self,
        calling_ae: str,
        address: str,
        studies: Sequence[SentStudy],
        *,
        outcome: a.Outcome,
        move_destination: tuple[str, str] | None = None,
    ) -> None:
        """A C-GET (the requester is the Destination) or a C-MOVE (the Move
        Destination, AE title and host, is; the requester takes part as requestor)."""
        requester_is_destination = move_destination is None
        requester = self.node(
            calling_ae,
            address,
            roles=(a.DESTINATION,) if requester_is_destination else (),
            requestor=True,
        )
        others: tuple[a.ActiveParticipant, ...] = ()
        if move_destination is None:
            destination = requester
        else:
            destination = self.node(*move_destination, roles=(a.DESTINATION,), requestor=False)
            others = (requester,)
        self.instances_sent(
            destination=destination,
            studies=studies,
            transaction=a.RAD_16,
            outcome=outcome,
            others=others,
        )

    def web_retrieved(
        self, requester: Requester, studies: Sequence[SentStudy], *, transaction: a.Code
    ) -> None:
        """A WADO-RS (RAD-107) or WADO-URI (RAD-55) retrieve: the client is the
        Destination and requestor."""
        self.instances_sent(
            destination=self.client(requester, roles=(a.DESTINATION,)),
            studies=studies,
            transaction=transaction,
            user=requester.user,
        )

    def queried(
        self,
        calling_ae: str,
        address: str,
        *,
        sop_class_uid: str,
        identifier: bytes,
        transfer_syntax: str,
        ok: bool,
    ) -> None:
        """110112 for one C-FIND request (queued)."""
        self.record_later(
            [
                a.query(
                    source=self.source,
                    requestor=self.node(calling_ae, address, roles=(a.SOURCE,), requestor=True),
                    responder=self.archive(roles=(a.DESTINATION,)),
                    sop_class_uid=sop_class_uid,
                    identifier=identifier,
                    transfer_syntax=transfer_syntax,
                    outcome=a.Outcome.of(ok),
                    occurred_at=self._clock(),
                )
            ]
        )

    def web_queried(self, requester: Requester, target: str, *, ok: bool) -> None:
        """110112 for one QIDO-RS request (queued); ``target``: its path and query
        string as received."""
        self.record_later(
            [
                a.web_query(
                    source=self.source,
                    requestor=self.client(requester, roles=(a.SOURCE,)),
                    responder=self.archive(roles=(a.DESTINATION,)),
                    target=target,
                    outcome=a.Outcome.of(ok),
                    occurred_at=self._clock(),
                )
            ]
        )

    def stored_queried(
        self,
        requester: Requester,
        endpoint: str,
        *,
        query_id: str,
        request: bytes,
        patient: str | None,
        ok: bool,
    ) -> None:
        """110112 / ITI-18 for one Registry Stored Query (queued)."""
        self.record_later(
            [
                by_user(
                    a.stored_query(
                        source=self.source,
                        consumer=self.client(requester, roles=(a.SOURCE,)),
                        registry=self.endpoint(endpoint, roles=(a.DESTINATION,)),
                        query_id=query_id,
                        request=request,
                        patient=patient,
                        outcome=a.Outcome.of(ok),
                        occurred_at=self._clock(),
                    ),
                    requester.user,
                )
            ]
        )

    def submission_imported(
        self,
        requester: Requester,
        endpoint: str,
        *,
        transaction: a.Code,
        submission_set: str,
        patient: str | None,
        ok: bool,
    ) -> None:
        """110107 Import for one ITI-41 or ITI-42 submission, written before the
        response: outcome 0 when it was stored, 4 when it was refused."""
        self.record_now(
            [
                by_user(
                    a.imported(
                        source=self.source,
                        document_source=self.client(requester, roles=(a.SOURCE,)),
                        recipient=self.endpoint(endpoint, roles=(a.DESTINATION,)),
                        transaction=transaction,
                        submission_set=submission_set,
                        patient=patient,
                        outcome=a.Outcome.of(ok),
                        occurred_at=self._clock(),
                    ),
                    requester.user,
                )
            ]
        )

    def association_rejected(self, calling_ae: str, address: str, reason: str) -> None:
        """110113 / 110126: a node that failed to authenticate by its AE titles."""
        self.record_now(
            [
                a.security_alert(
                    a.ALERT_REJECTED_ASSOCIATION,
                    source=self.source,
                    reporter=self.archive(),
                    offender=self.node(calling_ae, address, roles=(), requestor=True),
                    subject=f"{calling_ae}@{address}",
                    subject_type=a.NODE_ID,
                    description=reason,
                    occurred_at=self._clock(),
                )
            ]
        )

    def user_authentication_failed(self, address: str, claimed: str, reason: str) -> None:
        """110114 User Authentication / 110122 Login, failed (PS3.15 A.5.3.12): an XDS
        request refused for its XUA assertion (kuva.xds.xua) from IP ``address``;
        ``claimed``: the issuer and NameID the assertion claimed, if readable."""
        self.record_now(
            [
                a.user_authentication(
                    source=self.source,
                    user=a.ActiveParticipant(
                        user_id=claimed or "unknown",
                        requestor=True,
                        network_access_point=address,
                    ),
                    node=self.archive(),
                    description=reason,
                    occurred_at=self._clock(),
                )
            ]
        )

    def access_refused(self, requester: str, subject: str, description: str) -> None:
        """110113 / 110132: a request for material the access rules do not let the
        requesting organisation read (services.access); ``subject`` by UIDs only."""
        self.record_now(
            [
                a.security_alert(
                    a.ALERT_REFUSED_ACCESS,
                    source=self.source,
                    reporter=self.archive(),
                    offender=a.ActiveParticipant(user_id=requester or "unknown", requestor=True),
                    subject=subject,
                    subject_type=a.NODE_ID,
                    description=description,
                    occurred_at=self._clock(),
                )
            ]
        )

    def node_authentication_failed(
        self, listener: str, address: str, reason: str, certificate: str = ""
    ) -> None:
        """110113 / 110126: a peer refused on a mutual TLS listener (PS3.15 A.5.3.11,
        IHE ATNA node authentication failure) from IP ``address``. ``certificate``:
        its subject (RFC 4514) when it presented a verified one."""
        self.record_now(
            [
                a.security_alert(
                    a.ALERT_BAD_CERTIFICATE,
                    source=self.source,
                    reporter=self.archive(),
                    offender=a.ActiveParticipant(
                        user_id=certificate or address,
                        requestor=True,
                        network_access_point=address,
                    ),
                    subject=f"{listener}@{address}",
                    subject_type=a.NODE_ID,
                    description=reason + (f" (certificate {certificate})" if certificate else ""),
                    occurred_at=self._clock(),
                )
            ]
        )

    def resend_allowed(self, operator: str, study_uid: str, reason: str) -> a.AuditEvent:
        """110113 / 110135, informative: an operator let a destroyed study be archived
        again (services.retention; recorded in the allowance's transaction)."""
        return a.security_alert(
            a.ALERT_RESEND_ALLOWED,
            source=self.source,
            reporter=self.archive(),
            offender=a.ActiveParticipant(user_id=operator or "operator", requestor=True),
            subject=study_uid,
            subject_type=a.STUDY_INSTANCE_UID,
            description=f"destroyed study may be archived again: {reason}",
            occurred_at=self._clock(),
            outcome=a.Outcome.SUCCESS,
        )

    def directory_changed(
        self, operator: str, entry: str, key: str, before: str, after: str
    ) -> a.AuditEvent:
        """110113 / 110128 (a node) or 110129 (an organisation), informative: who
        changed which directory entry, from what to what (JSON; "" when added or
        removed). Recorded in the change's transaction (services.directory)."""
        return a.security_alert(
            a.ALERT_NETWORK_CONFIGURATION if entry == "node" else a.ALERT_SECURITY_CONFIGURATION,
            source=self.source,
            reporter=self.archive(),
            offender=a.ActiveParticipant(user_id=operator or "operator", requestor=True),
            subject=key,
            subject_type=a.NODE_ID if entry == "node" else a.ORGANIZATION_OID,
            description=f"directory {entry} {key}: before {before or '-'}; after {after or '-'}",
            occurred_at=self._clock(),
            outcome=a.Outcome.SUCCESS,
        )

    def integrity_finding(self, finding: Finding) -> None:
        """A problem the integrity check found (services.integrity), as a Security
        Alert: the ``on_problem`` hook of IntegrityService."""
        subject = finding.subject() if finding.blob is not None else f"blob {finding.key}"
        self.integrity_failure(subject, finding.description())

    def integrity_failure(self, subject: str, description: str) -> None:
        """110113 / ALERT_INTEGRITY: kuva found a stored object missing or altered
        (``subject`` by UIDs only, never patient data)."""
        self.record_now(
            [
                a.security_alert(
                    a.ALERT_INTEGRITY,
                    source=self.source,
                    reporter=self.archive(),
                    offender=self.archive(requestor=True),
                    subject=subject,
                    subject_type=a.NODE_ID,
                    description=description,
                    occurred_at=self._clock(),
                )
            ]
        )

    # ------------------------------------------------------------------ delivery

    def run_delivery(self, task: Task) -> None:
        """Outbox handler of ``DELIVERY_TASK``: send record ``seq`` to the repository."""
        if self._sender is None:
            raise PermanentFailure("no audit record repository is configured")
        seq = int(task.payload["seq"])
        with UnitOfWork(self._engine, write=False) as uow:
            record = uow.audit.get(seq)
        if record is None:
            raise PermanentFailure(f"audit record {seq} is not in the trail")
        self._sender.send(record.message, record.recorded_at)

    # ------------------------------------------------------------------ verification

    def verify(self) -> tuple[int, list[ChainBreak]]:
        """Walk the whole trail: the number of records and every break found."""
        with UnitOfWork(self._engine, write=False) as uow:
            records = uow.audit.walk()
            return count_and_breaks(records)

    def list(
        self,
        *,
        since: datetime | None,
        event_id: str | None,
        limit: int,
        before: int | None = None,
    ) -> list[AuditRecord]:
        with UnitOfWork(self._engine, write=False) as uow:
            return uow.audit.list(since=since, event_id=event_id, limit=limit, before=before)


def count_and_breaks(records: Iterator[AuditRecord]) -> tuple[int, list[ChainBreak]]:
    """Check a trail read in ``seq`` order (``AuditTrail.verify``)."""
    breaks: list[ChainBreak] = []
    count = 0
    prev_seq, prev_hash = 0, a.GENESIS_HASH
    for record in records:
        count += 1
        expected = a.record_hash(
            record.prev_hash,
            record.seq,
            record.recorded_at,
            record.event_id,
            record.outcome,
            record.message,
        )
        intact = expected == record.hash
        if not intact:
            breaks.append(ChainBreak(record.seq, "altered", "its hash does not match its fields"))
        if record.seq != prev_seq + 1:
            breaks.append(
                ChainBreak(
                    prev_seq + 1,
                    "deleted",
                    f"missing between record {prev_seq} and record {record.seq}"
                    if prev_seq
                    else f"missing before record {record.seq}",
                    last=record.seq - 1,
                )
            )
        elif record.prev_hash != prev_hash and intact:
            breaks.append(
                ChainBreak(
                    record.seq,
                    "inserted",
                    f"does not follow record {prev_seq}: put in, or record {prev_seq} "
                    "altered and its hash computed anew"
                    if prev_seq
                    else "does not start the trail",
                )
            )
        prev_seq, prev_hash = record.seq, record.hash
    return count, breaks
