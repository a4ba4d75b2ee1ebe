"""Query/Retrieve SCP, retrieve side: C-GET (PS3.4 C.4.3) and C-MOVE (PS3.4 C.4.2).

Patient Root and Study Root information models, hierarchical retrieve. The request
is resolved by services.retrieve; every match then goes out as a C-STORE
sub-operation: on the same association for C-GET (the peer proposed the storage
SOP classes with the SCP role, SCP/SCU Role Selection, PS3.7 D.3.3.4), on a new
association to the Move Destination for C-MOVE (configured ``[[nodes]]`` only).

**Streaming.** An object whose stored transfer syntax the peer accepted goes out as
stored, without being decoded: the blob is read a chunk at a time in the handler's
thread and the engine sends it with backpressure, so a slow peer does not make the
file pile up in memory. An object whose patient was corrected (HL7 merge or
update) goes out with a corrected header spliced onto its stored pixel data
(kuva.codec.outgoing), unless the node is configured ``as_received``. Otherwise
the object is converted (kuva.codec.transcode) to a syntax the peer accepted;
when that is impossible the sub-operation fails and the reason is logged.

Statuses (PS3.4 C.4.2.1.5 for C-MOVE, C.4.3.1.4 for C-GET): Pending 0xFF00 after
each sub-operation with the Remaining/Completed/Failed/Warning counts; final 0x0000
when all completed; 0xB000 when some failed or had warnings; 0xA702 when all
failed; 0xFE00 after a C-CANCEL; 0xA900 for a malformed identifier; 0xA701 when
the matches cannot be counted; 0xA801 for an unknown Move Destination. Failure,
warning and cancel responses carry the Failed SOP Instance UID List.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from kuva.codec.outgoing import encoded
from kuva.codec.transcode import TranscodeError, choose
from kuva.config import Settings
from kuva.dicom import datasets
from kuva.dicom.contexts import (
    PATIENT_ROOT_GET,
    PATIENT_ROOT_MOVE,
    STUDY_ROOT_GET,
    STUDY_ROOT_MOVE,
)
from kuva.dicom.net import Association, CommandField, Request, Response, Value
from kuva.dicom.scu import open_association
from kuva.dicom.status import SUCCESS
from kuva.index.instances import StoredInstance
from kuva.model.access import AccessScope
from kuva.model.audit import Outcome
from kuva.model.directory import NodeSettings
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
_UNCOMPRESSED: tuple[str, ...] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


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
    """Sends the C-GET-RSP / C-MOVE-RSP messages of one request."""

    def __init__(self, assoc: Association, req: Request) -> None:
        self._assoc = assoc
        self._req = req
        self._last_pending: float | None = None

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
        self._assoc.respond(
            self._req,
            PENDING,
            number_of_remaining_suboperations=progress.remaining,
            number_of_completed_suboperations=progress.completed,
            number_of_failed_suboperations=progress.failed,
            number_of_warning_suboperations=progress.warning,
        )

    def final(self, status: int, progress: _Progress | None = None, comment: str = "") -> None:
        fields: dict[str, Value] = {}
        if comment:
            fields["error_comment"] = comment
        data_set = None
        if progress is not None:
            fields.update(self._counts(progress))
            if status == CANCEL:
                fields["number_of_remaining_suboperations"] = progress.remaining
            if status in (CANCEL, SUB_OPERATIONS_WARNING, UNABLE_TO_PERFORM_SUB_OPERATIONS):
                identifier = Dataset()
                identifier.FailedSOPInstanceUIDList = list(progress.failed_uids)
                data_set = datasets.encode(identifier, self._req.context.transfer_syntax)
        self._assoc.respond(self._req, status, data_set=data_set, **fields)

    @staticmethod
    def _counts(progress: _Progress) -> dict[str, Value]:
        return {
            "number_of_completed_suboperations": progress.completed,
            "number_of_failed_suboperations": progress.failed,
            "number_of_warning_suboperations": progress.warning,
        }


# -- sub-operations ------------------------------------------------------------------


def _without_file_meta(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The data set of a Part 10 object given as chunks: what follows its preamble,
    ``DICM`` and File Meta Information group (PS3.10 7.1), as a C-STORE sends it
    (PS3.7 9.3.1.1: the data set alone, in the context's transfer syntax)."""
    head = b""
    meta_end: int | None = None
    it = iter(chunks)
    for chunk in it:
        head += chunk
        if meta_end is None and len(head) >= 144:
            # (0002,0000) UL group length is the first element after the preamble.
            meta_end = 144 + int.from_bytes(head[140:144], "little")
        if meta_end is not None and len(head) >= meta_end:
            if len(head) > meta_end:
                yield head[meta_end:]
            yield from it
            return
    raise ValueError("object shorter than its File Meta Information")


def _store_outcome(response: Response) -> tuple[str, str]:
    code = response.status
    if code is None:
        return "failed", "no C-STORE response (timeout or association lost)"
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
        accepted = self.assoc.accepted_syntaxes(instance.sop_class_uid, as_scu=True)
        if not accepted:
            return "failed", f"no presentation context accepted for {instance.sop_class_uid}"
        target = choose(instance.transfer_syntax_uid, accepted)
        if target is None:
            return "failed", (
                f"cannot convert {instance.transfer_syntax_uid} to any accepted "
                f"transfer syntax ({', '.join(accepted)})"
            )
        context = self.assoc.context_for(instance.sop_class_uid, [target], as_scu=True)
        if context is None:  # pragma: no cover - target is one of the accepted syntaxes
            return "failed", f"no presentation context for {target}"
        obj = self._service.open(instance, as_received=self._as_received)
        try:
            chunks, _ = encoded(obj, target)
            response = self.assoc.c_store(
                context,
                instance.sop_instance_uid,
                _without_file_meta(chunks),
                message_id=msg_id,
                move_originator=self._originator,
            )
        except TranscodeError as exc:
            return "failed", str(exc)
        except Exception as exc:  # one unreadable object must not end the whole retrieve
            return "failed", f"{type(exc).__name__}: {exc}"
        return _store_outcome(response)


def move_contexts(instances: Sequence[StoredInstance]) -> list[tuple[str, list[str]]]:
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
    exact = [(cls, [ts]) for cls, tss in by_class.items() for ts in tss]
    fallback = [(cls, list(_UNCOMPRESSED)) for cls in by_class]
    if len(exact) <= MAX_CONTEXTS:
        return exact + fallback[: MAX_CONTEXTS - len(exact)]
    return [
        (cls, list(dict.fromkeys([*tss, *_UNCOMPRESSED])))
        for cls, tss in list(by_class.items())[:MAX_CONTEXTS]
    ]


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

    def serve(self, assoc: Association, req: Request) -> None:
        """Answer one C-GET or C-MOVE request, sub-operations included."""
        responder = _Responder(assoc, req)
        is_move = req.command.command_field == CommandField.C_MOVE_RQ
        operation = "C-MOVE" if is_move else "C-GET"
        calling_ae = assoc.calling_ae
        model = req.context.abstract_syntax
        if model not in _MODELS:
            responder.final(
                IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
                comment=f"{operation} on a context of {model}",
            )
            return
        try:
            identifier = datasets.decode(req.data_set or b"", req.context.transfer_syntax)
            level, keys = parse_identifier(model, identifier)
        except RetrieveError as exc:
            log.warning("%s from %s refused: %s", operation, calling_ae, exc)
            responder.final(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, comment=str(exc))
            return
        except Exception as exc:
            log.warning("%s from %s: identifier cannot be parsed: %s", operation, calling_ae, exc)
            responder.final(UNABLE_TO_PROCESS, comment="identifier cannot be parsed")
            return

        node: NodeSettings | None = None
        if is_move:
            destination = req.command.move_destination.strip()
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
        interface = Interface.C_MOVE if is_move else Interface.C_GET
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
            requester = self._settings.node(calling_ae)
            sub_operations = _SubOperations(
                assoc, self._service, as_received=requester is not None and requester.as_received
            )
            progress = self._run(assoc, req, responder, sub_operations, instances)
        else:
            progress = self._move(assoc, req, responder, node, instances)
        self._audited(assoc, scope, instances, progress, node)
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
        try:
            self._audit.dicom_retrieved(
                assoc.calling_ae,
                assoc.peer_address[0],
                studies,
                outcome=outcome,
                move_destination=(node.ae_title, node.host) if node is not None else None,
            )
        except Exception as exc:
            audit_failed(log, f"the retrieve of {assoc.calling_ae}", exc)

    def _move(
        self,
        assoc: Association,
        req: Request,
        responder: _Responder,
        node: NodeSettings,
        instances: list[StoredInstance],
    ) -> _Progress:
        try:
            store_assoc = open_association(self._settings, node, move_contexts(instances))
        except ConnectionError as exc:
            log.warning("C-MOVE: %s", exc)  # names the node, its address and why
            progress = _Progress(remaining=len(instances))
            progress.fail_rest([i.sop_instance_uid for i in instances])
            responder.final(
                UNABLE_TO_PERFORM_SUB_OPERATIONS,
                progress,
                comment=f"cannot associate with {node.ae_title}",
            )
            return progress
        try:
            # The Move Originator (PS3.7 9.3.1.1): who asked, and the request's Message ID.
            originator = (assoc.calling_ae, req.command.message_id)
            return self._run(
                assoc,
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
        assoc: Association,
        req: Request,
        responder: _Responder,
        sub_operations: _SubOperations,
        instances: list[StoredInstance],
    ) -> _Progress:
        """The C-STORE sub-operations, a Pending response after each, then the final one."""
        progress = _Progress(remaining=len(instances))
        request_id = req.command.message_id
        same_association = sub_operations.assoc is assoc
        for index, instance in enumerate(instances):
            if req.cancelled.is_set():
                log.info("retrieve %d cancelled by the peer (C-CANCEL)", request_id)
                responder.final(CANCEL, progress)
                return progress
            if not assoc.is_established:
                return progress  # the requester went away: nobody to answer
            # Sub-operation Message IDs differ from the request's on the same association.
            msg_id = ((request_id + index + 1) % 65536 or 1) if same_association else index + 1
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
        return progress
