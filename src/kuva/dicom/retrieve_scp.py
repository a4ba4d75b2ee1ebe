"""Query/Retrieve SCP, retrieve side: C-GET (PS3.4 C.4.3) and C-MOVE (PS3.4 C.4.2).

Patient Root and Study Root information models, hierarchical retrieve. The request
is resolved by services.retrieve; every match then goes out as a C-STORE
sub-operation: on the same association for C-GET (the peer proposed the storage
SOP classes with the SCP role, SCP/SCU Role Selection, PS3.7 D.3.3.4), on a new
association to the Move Destination for C-MOVE (configured ``[[nodes]]`` only).

**Streaming.** An object whose stored transfer syntax the peer accepted goes out as
stored, without being decoded: pynetdicom's chunked send mode
(``_config.STORE_SEND_CHUNKED_DATASET``) reads the blob file one PDU at a time,
and the association's send queue is bounded (``bound_send_queue``) so that a slow
peer does not make the file pile up in memory. An object whose patient was
corrected (HL7 merge or update) goes out with a corrected header spliced onto its
stored pixel data (dicom.outgoing), unless the node is configured ``as_received``.
Otherwise the object is converted (dicom.transcode) to a syntax the peer accepted,
written to a temporary file and sent from there; when that is impossible the
sub-operation fails and the reason is logged.

**Why not pynetdicom's handlers.** pynetdicom's own C-GET/C-MOVE loop
(``QueryRetrieveServiceClass._get_scp`` / ``_move_scp``, reached through
EVT_C_GET / EVT_C_MOVE) sends only in-memory data sets, opens the C-MOVE
association without TCP_NODELAY and with the listener's contexts, names kuva as
the Move Originator and answers an unknown destination without an Error Comment.
So ``install_retrieve`` routes the GET and MOVE SOP classes of a kuva AE to
``RetrieveSCP.serve`` instead, by replacing the name ``uid_to_service_class`` in
``pynetdicom.association`` (pinned to pynetdicom 3.x in pyproject.toml); any other
AE in the process keeps pynetdicom's behaviour.

Statuses (PS3.4 C.4.2.1.5 for C-MOVE, C.4.3.1.4 for C-GET): Pending 0xFF00 after
each sub-operation with the Remaining/Completed/Failed/Warning counts; final 0x0000
when all completed; 0xB000 when some failed or had warnings; 0xA702 when all
failed; 0xFE00 after a C-CANCEL; 0xA900 for a malformed identifier; 0xA701 when
the matches cannot be counted; 0xA801 for an unknown Move Destination. Failure,
warning and cancel responses carry the Failed SOP Instance UID List.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any, cast

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config, evt
from pynetdicom import association as _association
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_GET, C_MOVE
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu_primitives import P_DATA, MaximumLengthNotification
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.service_class import QueryRetrieveServiceClass

from kuva.config import NodeSettings, Settings
from kuva.dicom.codec.outgoing import as_file
from kuva.dicom.codec.transcode import TranscodeError, choose
from kuva.dicom.contexts import (
    PATIENT_ROOT_GET,
    PATIENT_ROOT_MOVE,
    STUDY_ROOT_GET,
    STUDY_ROOT_MOVE,
)
from kuva.dicom.network import busy_polling, set_nodelay_handler
from kuva.dicom.status import ERROR_COMMENT_MAX, SUCCESS
from kuva.index.instances import StoredInstance
from kuva.model.access import AccessScope
from kuva.model.audit import Outcome
from kuva.model.query import QueryLevel
from kuva.services.access import AccessPolicy
from kuva.services.audit import AuditTrail, audit_failed
from kuva.services.disclosure import Interface
from kuva.services.retrieve import (
    KeyValue,
    RetrieveError,
    RetrieveService,
    TooManyMatches,
)

log = logging.getLogger(__name__)

# C-GET / C-MOVE statuses (PS3.4 Table C.4-2 and C.4-3).
PENDING = 0xFF00
CANCEL = 0xFE00  # Sub-operations terminated due to Cancel Indication
SUB_OPERATIONS_WARNING = 0xB000  # Sub-operations Complete - One or more Failures or Warnings
UNABLE_TO_CALCULATE_MATCHES = 0xA701  # Refused: Out of Resources
UNABLE_TO_PERFORM_SUB_OPERATIONS = 0xA702  # Refused: Out of Resources
MOVE_DESTINATION_UNKNOWN = 0xA801
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
UNABLE_TO_PROCESS = 0xC000

# Query/Retrieve Levels each information model has (PS3.4 C.6.1.1, C.6.2.1).
_PATIENT_ROOT_LEVELS = frozenset(QueryLevel)
_STUDY_ROOT_LEVELS = frozenset({QueryLevel.STUDY, QueryLevel.SERIES, QueryLevel.IMAGE})
_MODELS: dict[str, tuple[str, frozenset[QueryLevel]]] = {
    PATIENT_ROOT_GET: ("Patient Root", _PATIENT_ROOT_LEVELS),
    PATIENT_ROOT_MOVE: ("Patient Root", _PATIENT_ROOT_LEVELS),
    STUDY_ROOT_GET: ("Study Root", _STUDY_ROOT_LEVELS),
    STUDY_ROOT_MOVE: ("Study Root", _STUDY_ROOT_LEVELS),
}
_PATIENT_KEYS = ("PatientID", "IssuerOfPatientID")
_UID_KEYS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")

# At most this many bytes of P-DATA wait in an association's send queue.
SEND_QUEUE_BYTES = 8 * 1024 * 1024
# A presentation context ID is an odd number 1-255 (PS3.8 9.3.2.2).
MAX_CONTEXTS = 128
_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)

# Attribute on pynetdicom's ApplicationEntity naming the RetrieveSCP that serves it.
_AE_RETRIEVE_SCP = "_kuva_retrieve_scp"
_ORIGINAL_UID_TO_SERVICE_CLASS = getattr(_association, "uid_to_service_class")  # noqa: B009
_install_lock = threading.Lock()


# -- plumbing ------------------------------------------------------------------------


class _KuvaQueryRetrieveServiceClass(QueryRetrieveServiceClass):
    """C-GET and C-MOVE of a kuva AE go to its RetrieveSCP; all else to pynetdicom."""

    def SCP(self, req: Any, context: PresentationContext) -> None:
        scp = getattr(self.ae, _AE_RETRIEVE_SCP, None)
        if (
            isinstance(scp, RetrieveSCP)
            and isinstance(req, C_GET | C_MOVE)
            and context.abstract_syntax in _MODELS
        ):
            scp.serve(self, req, context)
            return
        super().SCP(req, context)


def _uid_to_service_class(uid: str) -> Any:
    if uid in _MODELS:
        return _KuvaQueryRetrieveServiceClass
    return _ORIGINAL_UID_TO_SERVICE_CLASS(uid)


def install_retrieve(ae: Any, scp: RetrieveSCP) -> None:
    """Make C-GET and C-MOVE requests to ``ae`` run ``scp.serve``."""
    with _install_lock:
        _config.STORE_SEND_CHUNKED_DATASET = True
        setattr(_association, "uid_to_service_class", _uid_to_service_class)  # noqa: B010
    setattr(ae, _AE_RETRIEVE_SCP, scp)


class _BoundedSendQueue(queue.Queue[Any]):
    """pynetdicom's DUL send queue, made to hold back P-DATA producers when full."""

    _kuva_limit: int
    _kuva_dul: Any

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if isinstance(item, P_DATA):
            with self.not_full:
                while self._qsize() >= self._kuva_limit and self._kuva_dul.is_alive():
                    self.not_full.wait(0.5)
        super().put(item, block, timeout)


def _peer_max_pdu(assoc: Association) -> int:
    peer = assoc.acceptor if assoc.is_requestor else assoc.requestor
    return int(peer.maximum_length or 0)


def bound_send_queue(assoc: Association, max_pdu: int) -> None:
    """Give ``assoc`` backpressure: at most SEND_QUEUE_BYTES of P-DATA waiting to go.

    pynetdicom queues every P-DATA of a message for its network thread without a
    bound, so a file read faster than the peer takes it would pile up in memory.
    The queue object stays the same (its class is narrowed), so messages put by
    other threads meanwhile are not lost. A peer that announced no maximum PDU
    length (0, unlimited) is sent PDUs of ``max_pdu``: pynetdicom would otherwise
    read a whole file into one PDU.
    """
    if _peer_max_pdu(assoc) == 0:
        peer = assoc.acceptor if assoc.is_requestor else assoc.requestor
        for item in peer.user_information:
            if isinstance(item, MaximumLengthNotification):
                item.maximum_length_received = max_pdu
    send_queue = assoc.dul.to_provider_queue
    if type(send_queue) is not queue.Queue:
        return
    bounded = cast(_BoundedSendQueue, send_queue)
    bounded._kuva_limit = max(2, SEND_QUEUE_BYTES // max(_peer_max_pdu(assoc), 1))
    bounded._kuva_dul = assoc.dul
    send_queue.__class__ = _BoundedSendQueue


class _HeldCheckpoint(threading.Event):
    """An association's reactor checkpoint that keeps its reactor paused.

    pynetdicom's reactor thread and a ``send_*()`` caller share a pause handshake
    with a window: the reactor may pass its checkpoint just before the caller
    clears it and still look paused, then take the caller's response off the DIMSE
    queue ("Received unexpected C-STORE service message") and leave the caller
    waiting out the DIMSE timeout. Under load this failed C-MOVE sub-operations.
    While held, ``set()`` (what each ``send_c_store`` does at its end) keeps the
    reactor where it waits, so a kuva thread alone reads the sub-operation
    association's responses; ``entered`` tells that the reactor is waiting.
    """

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.entered.set()
        return super().wait(timeout)

    def set(self) -> None:
        pass  # held: see the class docstring

    def let_go(self) -> None:
        super().set()


@contextlib.contextmanager
def reactor_held(assoc: Association, timeout: float = 5.0) -> Iterator[None]:
    """Keep ``assoc``'s reactor paused (``_HeldCheckpoint``) while the caller alone
    sends on it; given back before the association is released or aborted."""
    original = assoc._reactor_checkpoint
    held = _HeldCheckpoint()
    assoc._reactor_checkpoint = held
    if not held.entered.wait(timeout):
        log.warning("the reactor of an outgoing association did not pause")
    try:
        yield
    finally:
        assoc._reactor_checkpoint = original
        original.set()
        held.let_go()


# -- results -------------------------------------------------------------------------


@dataclass
class _Progress:
    """Counts of the C-STORE sub-operations (PS3.7 9.1.3.1 / 9.1.4.1)."""

    remaining: int
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: list[str] = field(default_factory=list)

    def record(self, outcome: str, uid: str) -> None:
        self.remaining -= 1
        if outcome == "completed":
            self.completed += 1
        elif outcome == "warning":
            self.warning += 1
        else:
            self.failed += 1
            self.failed_uids.append(uid)

    def fail_rest(self, uids: Sequence[str]) -> None:
        for uid in uids:
            self.record("failed", uid)

    @property
    def total(self) -> int:
        return self.remaining + self.completed + self.failed + self.warning

    def final_status(self) -> int:
        if self.failed == 0 and self.warning == 0:
            return SUCCESS
        if self.failed == self.total:
            return UNABLE_TO_PERFORM_SUB_OPERATIONS
        return SUB_OPERATIONS_WARNING


# Least time between two Pending C-GET/C-MOVE responses (seconds).
PENDING_INTERVAL = 0.25


class _Responder:
    """Builds and sends the C-GET-RSP / C-MOVE-RSP messages of one request."""

    def __init__(
        self, service: QueryRetrieveServiceClass, req: C_GET | C_MOVE, context: PresentationContext
    ) -> None:
        self._dimse = service.dimse
        self._req = req
        self._context_id = cast(int, context.context_id)
        self._syntax = UID(context.transfer_syntax[0])
        self._last_pending: float | None = None

    def _response(self, status: int) -> C_GET | C_MOVE:
        rsp: C_GET | C_MOVE = C_MOVE() if isinstance(self._req, C_MOVE) else C_GET()
        rsp.MessageID = self._req.MessageID
        rsp.MessageIDBeingRespondedTo = self._req.MessageID
        rsp.AffectedSOPClassUID = self._req.AffectedSOPClassUID
        rsp.Status = status
        return rsp

    def pending(self, progress: _Progress) -> None:
        """A Pending response with the counts so far (PS3.4 C.4.2.3.1, C.4.3.3.1).

        Pending responses are optional; kuva sends one after the first sub-operation
        and then at most every PENDING_INTERVAL seconds, so that a retrieve of
        hundreds of small objects does not spend its time on progress messages
        while the requester still sees progress several times a second.
        """
        now = time.monotonic()
        if self._last_pending is not None and now - self._last_pending < PENDING_INTERVAL:
            return
        self._last_pending = now
        rsp = self._response(PENDING)
        rsp.NumberOfRemainingSuboperations = progress.remaining
        self._counts(rsp, progress)
        self._dimse.send_msg(rsp, self._context_id)

    def final(self, status: int, progress: _Progress | None = None, comment: str = "") -> None:
        rsp = self._response(status)
        if comment:
            rsp.ErrorComment = cast(Any, comment[:ERROR_COMMENT_MAX])
        if progress is not None:
            self._counts(rsp, progress)
            if status == CANCEL:
                rsp.NumberOfRemainingSuboperations = progress.remaining
            if status in (CANCEL, SUB_OPERATIONS_WARNING, UNABLE_TO_PERFORM_SUB_OPERATIONS):
                identifier = Dataset()
                identifier.FailedSOPInstanceUIDList = list(progress.failed_uids)
                encoded = encode(
                    identifier,
                    self._syntax.is_implicit_VR,
                    self._syntax.is_little_endian,
                    self._syntax.is_deflated,
                )
                rsp.Identifier = BytesIO(encoded or b"")
        self._dimse.send_msg(rsp, self._context_id)

    @staticmethod
    def _counts(rsp: C_GET | C_MOVE, progress: _Progress) -> None:
        rsp.NumberOfCompletedSuboperations = progress.completed
        rsp.NumberOfFailedSuboperations = progress.failed
        rsp.NumberOfWarningSuboperations = progress.warning


# -- sub-operations ------------------------------------------------------------------


def _accepted_syntaxes(assoc: Association, sop_class_uid: str) -> list[str]:
    """Transfer syntaxes of the contexts on which ``assoc`` may send this SOP class."""
    return [
        str(cx.transfer_syntax[0])
        for cx in assoc.accepted_contexts
        if cx.abstract_syntax == sop_class_uid and cx.as_scu
    ]


def _store_outcome(status: Dataset) -> tuple[str, str]:
    code = status.get("Status")
    if code is None:
        return "failed", "no C-STORE response (timeout or association lost)"
    code = int(code)
    if code == SUCCESS:
        return "completed", ""
    if code == 0x0001 or code & 0xF000 == 0xB000:
        return "warning", f"C-STORE warning 0x{code:04X}"
    return "failed", f"C-STORE status 0x{code:04X}"


class _SubOperations:
    """Sends stored objects as C-STORE requests on one association."""

    def __init__(
        self,
        assoc: Association,
        service: RetrieveService,
        move_originator: tuple[str, int] | None = None,
        *,
        as_received: bool = False,
    ) -> None:
        self.assoc = assoc
        self._service = service
        self._originator = move_originator
        self._as_received = as_received

    def store(self, instance: StoredInstance, msg_id: int) -> tuple[str, str]:
        """Send one object; ("completed" | "warning" | "failed", reason)."""
        accepted = _accepted_syntaxes(self.assoc, instance.sop_class_uid)
        if not accepted:
            return "failed", f"no presentation context accepted for {instance.sop_class_uid}"
        target = choose(instance.transfer_syntax_uid, accepted)
        if target is None:
            return "failed", (
                f"cannot convert {instance.transfer_syntax_uid} to any accepted "
                f"transfer syntax ({', '.join(accepted)})"
            )
        obj = self._service.open(instance, as_received=self._as_received)
        try:
            with as_file(obj, target) as path:
                status = self._send(path, msg_id)
        except TranscodeError as exc:
            return "failed", str(exc)
        except Exception as exc:  # one unreadable object must not end the whole retrieve
            return "failed", f"{type(exc).__name__}: {exc}"
        return _store_outcome(status)

    def _send(self, path: Path, msg_id: int) -> Dataset:
        originator_ae, originator_id = self._originator or (None, None)
        return self.assoc.send_c_store(
            path, msg_id=msg_id, originator_aet=originator_ae, originator_id=originator_id
        )


def move_contexts(instances: Sequence[StoredInstance]) -> list[PresentationContext]:
    """Presentation contexts to propose to a Move Destination for ``instances``.

    One context per SOP class and stored transfer syntax (the object goes out as
    stored when the destination accepts it) and one per SOP class with Explicit and
    Implicit VR Little Endian to convert to when it does not. Beyond 128 contexts
    the conversion contexts are left out first, then each SOP class gets a single
    context listing all its syntaxes.
    """
    by_class: dict[str, list[str]] = {}
    for inst in instances:
        syntaxes = by_class.setdefault(inst.sop_class_uid, [])
        if inst.transfer_syntax_uid not in syntaxes:
            syntaxes.append(inst.transfer_syntax_uid)
    exact = [build_context(cls, [ts]) for cls, tss in by_class.items() for ts in tss]
    fallback = [build_context(cls, list(_UNCOMPRESSED)) for cls in by_class]
    if len(exact) <= MAX_CONTEXTS:
        return exact + fallback[: MAX_CONTEXTS - len(exact)]
    merged = []
    for cls, tss in list(by_class.items())[:MAX_CONTEXTS]:
        merged.append(build_context(cls, list(dict.fromkeys([*tss, *_UNCOMPRESSED]))))
    return merged


# -- the SCP -------------------------------------------------------------------------


def _key_value(identifier: Dataset, keyword: str) -> KeyValue:
    if keyword not in identifier:
        return None
    value = identifier[keyword].value
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return [str(v) for v in value]
    return str(value)


def parse_identifier(
    sop_class_uid: str, identifier: Dataset
) -> tuple[QueryLevel, dict[str, KeyValue]]:
    """Query/Retrieve Level and unique keys of a C-GET / C-MOVE identifier.

    The Study Root model has no patient level (PS3.4 C.6.2.1): there the
    identifier's Patient ID, if any, is not a key.
    """
    model, levels = _MODELS[sop_class_uid]
    raw = str(identifier.get("QueryRetrieveLevel", "") or "").strip()
    try:
        level = QueryLevel(raw)
    except ValueError:
        raise RetrieveError(
            f"QueryRetrieveLevel {raw!r} invalid" if raw else "QueryRetrieveLevel missing"
        ) from None
    if level not in levels:
        raise RetrieveError(f"{level.value} level is not part of the {model} model")
    keywords = _UID_KEYS if model == "Study Root" else _PATIENT_KEYS + _UID_KEYS
    return level, {kw: _key_value(identifier, kw) for kw in keywords}


class RetrieveSCP:
    def __init__(
        self,
        settings: Settings,
        service: RetrieveService,
        access: AccessPolicy | None = None,
        audit: AuditTrail | None = None,
    ) -> None:
        self._settings = settings
        self._service = service
        # What each calling node may read (services.access); None = everything.
        self._access = access
        self._audit = audit

    def serve(
        self, service: QueryRetrieveServiceClass, req: C_GET | C_MOVE, context: PresentationContext
    ) -> None:
        """Answer one C-GET or C-MOVE request, sub-operations included."""
        assoc = service.assoc
        responder = _Responder(service, req, context)
        operation = "C-MOVE" if isinstance(req, C_MOVE) else "C-GET"
        calling_ae = assoc.requestor.ae_title
        try:
            identifier = decode(
                cast(BytesIO, req.Identifier),
                context.transfer_syntax[0].is_implicit_VR,
                context.transfer_syntax[0].is_little_endian,
                context.transfer_syntax[0].is_deflated,
            )
            level, keys = parse_identifier(str(context.abstract_syntax), identifier)
        except RetrieveError as exc:
            log.warning("%s from %s refused: %s", operation, calling_ae, exc)
            responder.final(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, comment=str(exc))
            return
        except Exception as exc:
            log.warning("%s from %s: identifier cannot be parsed: %s", operation, calling_ae, exc)
            responder.final(UNABLE_TO_PROCESS, comment="identifier cannot be parsed")
            return

        node: NodeSettings | None = None
        if isinstance(req, C_MOVE):
            destination = str(req.MoveDestination or "").strip()
            node = self._settings.node(destination)
            if node is None:
                log.warning(
                    "C-MOVE from %s refused: Move Destination %r is not a configured node",
                    calling_ae,
                    destination,
                )
                responder.final(
                    MOVE_DESTINATION_UNKNOWN,
                    comment=f"Move Destination {destination} is not a configured node",
                )
                return
            if self._settings.organization_of(node.ae_title) != self._settings.organization_of(
                calling_ae
            ):
                # A move to another organisation's node would disclose to it on the
                # caller's word: the recipient asks for itself.
                log.warning(
                    "C-MOVE from %s refused: Move Destination %s belongs to another organisation",
                    calling_ae,
                    destination,
                )
                responder.final(
                    MOVE_DESTINATION_UNKNOWN,
                    comment=f"Move Destination {destination} belongs to another organisation",
                )
                return

        scope = None if self._access is None else self._access.scope_of_node(calling_ae)
        interface = Interface.C_MOVE if isinstance(req, C_MOVE) else Interface.C_GET
        try:
            instances = self._service.resolve(level, keys, scope=scope, interface=interface)
        except TooManyMatches as exc:
            responder.final(UNABLE_TO_CALCULATE_MATCHES, comment=str(exc))
            return
        except RetrieveError as exc:
            log.warning("%s from %s refused: %s", operation, calling_ae, exc)
            responder.final(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, comment=str(exc))
            return
        except Exception:
            log.exception("%s from %s: index lookup failed", operation, calling_ae)
            responder.final(UNABLE_TO_CALCULATE_MATCHES, comment="index failure")
            return

        if not instances:
            log.info("%s from %s (%s level): no match", operation, calling_ae, level.value)
            responder.final(SUCCESS, _Progress(remaining=0))
            return

        if node is None:
            bound_send_queue(assoc, self._settings.dicom.max_pdu)
            requester = self._settings.node(calling_ae)
            sub_operations = _SubOperations(
                assoc, self._service, as_received=requester is not None and requester.as_received
            )
            progress = self._run(service, req, responder, sub_operations, instances)
        else:
            progress = self._move(service, cast(C_MOVE, req), responder, node, instances)
        self._audited(assoc, scope, instances, progress, node)
        if assoc.is_established:
            log.info(
                "%s from %s (%s level)%s: %d completed, %d failed, %d warning",
                operation,
                calling_ae,
                level.value,
                f" to {node.ae_title}" if node is not None else "",
                progress.completed,
                progress.failed,
                progress.warning,
            )

    def _audited(
        self,
        assoc: Association,
        scope: AccessScope | None,
        instances: list[StoredInstance],
        progress: _Progress,
        node: NodeSettings | None,
    ) -> None:
        """110104, action R, per study of the requester's own organisation (queued;
        the others were disclosures, audited as Export): outcome 0 when every
        sub-operation completed, 4 when some failed, 8 when none completed."""
        if self._audit is None:
            return
        studies = RetrieveService.own_studies(scope, instances)
        if not studies:
            return
        done = progress.completed + progress.warning
        outcome = (
            Outcome.SUCCESS
            if not progress.failed and not progress.remaining
            else Outcome.MINOR_FAILURE
            if done
            else Outcome.SERIOUS_FAILURE
        )
        requestor = assoc.requestor
        try:
            self._audit.dicom_retrieved(
                requestor.ae_title,
                str(requestor.address),
                studies,
                outcome=outcome,
                move_destination=(node.ae_title, node.host) if node is not None else None,
            )
        except Exception as exc:
            audit_failed(log, f"the retrieve of {requestor.ae_title}", exc)

    def _move(
        self,
        service: QueryRetrieveServiceClass,
        req: C_MOVE,
        responder: _Responder,
        node: NodeSettings,
        instances: list[StoredInstance],
    ) -> _Progress:
        dicom = self._settings.dicom
        ae = AE(ae_title=dicom.ae_title)
        ae.acse_timeout = dicom.acse_timeout
        ae.dimse_timeout = dicom.dimse_timeout
        ae.network_timeout = dicom.network_timeout
        store_assoc = ae.associate(
            node.host,
            node.port,
            contexts=move_contexts(instances),
            ae_title=node.ae_title,
            max_pdu=dicom.max_pdu,
            evt_handlers=[(evt.EVT_CONN_OPEN, set_nodelay_handler)],
        )
        if not store_assoc.is_established:
            log.warning(
                "C-MOVE: association to %s at %s:%d failed", node.ae_title, node.host, node.port
            )
            progress = _Progress(remaining=len(instances))
            progress.fail_rest([i.sop_instance_uid for i in instances])
            responder.final(
                UNABLE_TO_PERFORM_SUB_OPERATIONS,
                progress,
                comment=f"cannot associate with {node.ae_title}",
            )
            return progress
        try:
            bound_send_queue(store_assoc, dicom.max_pdu)
            originator = (service.assoc.requestor.ae_title, int(req.MessageID or 0))
            with reactor_held(store_assoc):
                return self._run(
                    service,
                    req,
                    responder,
                    _SubOperations(
                        store_assoc, self._service, originator, as_received=node.as_received
                    ),
                    instances,
                )
        finally:
            if store_assoc.is_established:
                store_assoc.release()
            else:
                store_assoc.abort()

    def _run(
        self,
        service: QueryRetrieveServiceClass,
        req: C_GET | C_MOVE,
        responder: _Responder,
        sub_operations: _SubOperations,
        instances: list[StoredInstance],
    ) -> _Progress:
        """The C-STORE sub-operations, a Pending response after each, then the final one."""
        progress = _Progress(remaining=len(instances))
        with busy_polling(service.assoc, sub_operations.assoc):
            self._sub_operations(service, req, responder, sub_operations, instances, progress)
        return progress

    def _sub_operations(
        self,
        service: QueryRetrieveServiceClass,
        req: C_GET | C_MOVE,
        responder: _Responder,
        sub_operations: _SubOperations,
        instances: list[StoredInstance],
        progress: _Progress,
    ) -> None:
        assoc = service.assoc
        request_id = int(req.MessageID or 0)
        same_association = sub_operations.assoc is assoc
        for index, instance in enumerate(instances):
            if service.is_cancelled(request_id):
                log.info("retrieve %d cancelled by the peer (C-CANCEL)", request_id)
                responder.final(CANCEL, progress)
                return
            if not assoc.is_established:
                return  # the requester went away: nobody to answer
            # Sub-operation Message IDs differ from the request's on the same association.
            msg_id = (request_id + index + 1) % 65536 if same_association else index + 1
            outcome, reason = sub_operations.store(instance, msg_id)
            if outcome != "completed":
                log.warning(
                    "C-STORE sub-operation for %s: %s (%s)",
                    instance.sop_instance_uid,
                    outcome,
                    reason,
                )
            progress.record(outcome, instance.sop_instance_uid)
            if progress.remaining and assoc.is_established:
                responder.pending(progress)
        if assoc.is_established:
            responder.final(progress.final_status(), progress)
