"""Storage Commitment Push Model SCP (PS3.4 Annex J): N-ACTION in, N-EVENT-REPORT out.

The N-ACTION is recorded (services.commitment) and answered at once. The report is
sent by an outbox task: on the requesting association while it is still open,
otherwise on a new association to the requester's configured node, proposing the
SCP role for the Storage Commitment Push Model (PS3.4 J.3.3, SCP/SCU Role
Selection, PS3.7 D.3.3.4).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, cast

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import N_ACTION
from pynetdicom.events import Event

from kuva.config import Settings
from kuva.dicom import status as st
from kuva.dicom.contexts import (
    BASIC_TRANSFER_SYNTAXES,
    STORAGE_COMMITMENT_PUSH_MODEL,
    STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE,
)
from kuva.dicom.network import set_nodelay_handler
from kuva.model.uids import uid_problem
from kuva.services.commitment import (
    CommitmentReport,
    CommitmentRequest,
    CommitmentService,
    Reference,
)

log = logging.getLogger(__name__)

REQUEST_STORAGE_COMMITMENT = 1  # Action Type ID (PS3.4 J.3.2)


def parse_action_information(ds: Dataset) -> tuple[str, list[Reference]] | tuple[int, str]:
    """Transaction UID and references of a request, or (status, comment) when malformed."""
    transaction_uid = str(ds.get("TransactionUID", "") or "").strip()
    problem = uid_problem(transaction_uid)
    if problem == "missing":
        return st.MISSING_ATTRIBUTE, "TransactionUID missing"
    if problem is not None:
        return st.INVALID_ARGUMENT_VALUE, f"TransactionUID {problem}"
    items = ds.get("ReferencedSOPSequence")
    if not items:
        return st.MISSING_ATTRIBUTE, "ReferencedSOPSequence missing or empty"
    references: list[Reference] = []
    for number, item in enumerate(items, start=1):
        sop_class = str(item.get("ReferencedSOPClassUID", "") or "").strip()
        sop_instance = str(item.get("ReferencedSOPInstanceUID", "") or "").strip()
        for label, value in (
            ("ReferencedSOPClassUID", sop_class),
            ("ReferencedSOPInstanceUID", sop_instance),
        ):
            problem = uid_problem(value)
            if problem is not None:
                code = st.MISSING_ATTRIBUTE if problem == "missing" else st.INVALID_ARGUMENT_VALUE
                return code, f"item {number}: {label} {problem}"
        references.append(Reference(sop_class, sop_instance))
    return transaction_uid, references


def event_information(report: CommitmentReport, retrieve_ae: str) -> Dataset:
    """The Event Information of the N-EVENT-REPORT (PS3.4 J.3.3.1)."""
    ds = Dataset()
    ds.TransactionUID = report.transaction_uid
    ds.RetrieveAETitle = retrieve_ae
    if report.committed:
        ds.ReferencedSOPSequence = Sequence()
        for ref in report.committed:
            item = Dataset()
            item.ReferencedSOPClassUID = ref.sop_class_uid
            item.ReferencedSOPInstanceUID = ref.sop_instance_uid
            ds.ReferencedSOPSequence.append(item)
    if report.failed:
        ds.FailedSOPSequence = Sequence()
        for failed in report.failed:
            item = Dataset()
            item.ReferencedSOPClassUID = failed.sop_class_uid
            item.ReferencedSOPInstanceUID = failed.sop_instance_uid
            item.FailureReason = failed.reason
            ds.FailedSOPSequence.append(item)
    return ds


class StorageCommitmentSCP:
    """N-ACTION handler and the report sender (``services.commitment.ReportSender``)."""

    def __init__(self, settings: Settings, service: CommitmentService) -> None:
        self._settings = settings
        self._service = service
        self._open: dict[str, Association] = {}
        self._lock = threading.Lock()

    # -- N-ACTION (PS3.4 J.3.2) ------------------------------------------------
    def handle_n_action(self, event: Event) -> tuple[Dataset | int, Dataset | None]:
        request = cast(N_ACTION, event.request)
        calling_ae = event.assoc.requestor.ae_title
        if str(request.RequestedSOPClassUID) != STORAGE_COMMITMENT_PUSH_MODEL:
            return st.status(st.PROCESSING_FAILURE, "not a storage commitment request"), None
        if request.ActionTypeID != REQUEST_STORAGE_COMMITMENT:
            return st.status(st.NO_SUCH_ACTION_TYPE, "Action Type ID must be 1"), None
        try:
            info = event.action_information
        except Exception:
            return st.status(st.PROCESSING_FAILURE, "Action Information cannot be parsed"), None
        parsed = parse_action_information(info)
        if isinstance(parsed[0], int):
            code, comment = parsed
            log.warning("storage commitment request from %s refused: %s", calling_ae, comment)
            return st.status(int(code), str(comment)), None
        transaction_uid, references = parsed
        organization = self._settings.organization_of(calling_ae)
        if organization is None:
            return st.status(st.PROCESSING_FAILURE, "calling AE title not recognized"), None
        with self._lock:
            self._open[str(transaction_uid)] = event.assoc
        try:
            self._service.request(
                CommitmentRequest(
                    transaction_uid=str(transaction_uid),
                    requester_ae=calling_ae,
                    organization_oid=organization,
                    references=tuple(references),
                )
            )
        except Exception:
            log.exception("could not record storage commitment %s", transaction_uid)
            with self._lock:
                self._open.pop(str(transaction_uid), None)
            return st.status(st.PROCESSING_FAILURE, "request could not be recorded"), None
        return st.status(st.SUCCESS), None

    def forget_association(self, event: Event) -> None:
        """EVT_RELEASED / EVT_ABORTED: the association can no longer carry reports."""
        with self._lock:
            for uid in [uid for uid, assoc in self._open.items() if assoc is event.assoc]:
                del self._open[uid]

    # -- N-EVENT-REPORT (PS3.4 J.3.3) ------------------------------------------
    def send_commitment_report(self, report: CommitmentReport) -> None:
        info = event_information(report, self._settings.dicom.ae_title)
        with self._lock:
            assoc = self._open.get(report.transaction_uid)
        if assoc is not None and assoc.is_established:
            try:
                if self._send(assoc, report, info):
                    with self._lock:
                        self._open.pop(report.transaction_uid, None)
                    return
            except Exception as exc:  # the peer released meanwhile: use a new association
                log.info(
                    "report %s: requesting association unusable (%s)", report.transaction_uid, exc
                )
        node = self._settings.node(report.requester_ae)
        if node is None:
            raise ConnectionError(
                f"{report.requester_ae} released its association and is not a configured "
                "node: no address to send the report to"
            )
        ae = AE(ae_title=self._settings.dicom.ae_title)
        ae.acse_timeout = self._settings.dicom.acse_timeout
        ae.dimse_timeout = self._settings.dicom.dimse_timeout
        ae.network_timeout = self._settings.dicom.network_timeout
        ae.add_requested_context(STORAGE_COMMITMENT_PUSH_MODEL, list(BASIC_TRANSFER_SYNTAXES))
        role = build_role(STORAGE_COMMITMENT_PUSH_MODEL, scp_role=True)
        new_assoc = ae.associate(
            node.host,
            node.port,
            ae_title=node.ae_title,
            ext_neg=[role],
            evt_handlers=[(evt.EVT_CONN_OPEN, set_nodelay_handler)],
        )
        if not new_assoc.is_established:
            raise ConnectionError(
                f"association to {node.ae_title} at {node.host}:{node.port} failed"
            )
        try:
            if not self._send(new_assoc, report, info):
                raise ConnectionError(f"{node.ae_title} did not accept the report")
        finally:
            new_assoc.release()

    def _send(self, assoc: Association, report: CommitmentReport, info: Dataset) -> bool:
        status, _reply = assoc.send_n_event_report(
            info,
            report.event_type,
            STORAGE_COMMITMENT_PUSH_MODEL,
            STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE,
        )
        code: Any = getattr(status, "Status", None)
        if code is None:
            raise ConnectionError("no N-EVENT-REPORT response")
        if code != st.SUCCESS:
            raise ConnectionError(f"N-EVENT-REPORT answered with status 0x{int(code):04X}")
        return True
