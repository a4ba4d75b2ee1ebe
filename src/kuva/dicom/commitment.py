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

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from kuva.config import Settings
from kuva.dicom import datasets
from kuva.dicom import status as st
from kuva.dicom.contexts import (
    BASIC_TRANSFER_SYNTAXES,
    STORAGE_COMMITMENT_PUSH_MODEL,
    STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE,
)
from kuva.dicom.net import Association, Request, RoleSelection
from kuva.dicom.scu import open_association
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
    def handle_n_action(self, assoc: Association, req: Request) -> None:
        code, comment = self._n_action(assoc, req)
        if comment:
            assoc.respond(req, code, error_comment=comment)
        else:
            assoc.respond(req, code)

    def _n_action(self, assoc: Association, req: Request) -> tuple[int, str]:
        command = req.command
        calling_ae = assoc.calling_ae
        if command.requested_sop_class_uid != STORAGE_COMMITMENT_PUSH_MODEL:
            return st.PROCESSING_FAILURE, "not a storage commitment request"
        if command.action_type_id != REQUEST_STORAGE_COMMITMENT:
            return st.NO_SUCH_ACTION_TYPE, "Action Type ID must be 1"
        try:
            info = datasets.decode(req.data_set or b"", req.context.transfer_syntax)
        except datasets.DataSetError:
            return st.PROCESSING_FAILURE, "Action Information cannot be parsed"
        parsed = parse_action_information(info)
        if isinstance(parsed[0], int):
            code, comment = parsed
            log.warning("storage commitment request from %s refused: %s", calling_ae, comment)
            return int(code), str(comment)
        transaction_uid, references = parsed
        organization = self._settings.organization_of(calling_ae)
        if organization is None:
            return st.PROCESSING_FAILURE, "calling AE title not recognized"
        with self._lock:
            self._open[str(transaction_uid)] = assoc
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
            return st.PROCESSING_FAILURE, "request could not be recorded"
        return st.SUCCESS, ""

    def forget_association(self, assoc: Association) -> None:
        """The association ended: it can no longer carry reports."""
        with self._lock:
            for uid in [uid for uid, open_ in self._open.items() if open_ is assoc]:
                del self._open[uid]

    # -- N-EVENT-REPORT (PS3.4 J.3.3) ------------------------------------------
    def send_commitment_report(self, report: CommitmentReport) -> None:
        info = event_information(report, self._settings.dicom.ae_title)
        with self._lock:
            assoc = self._open.get(report.transaction_uid)
        if assoc is not None and assoc.is_established:
            try:
                self._send(assoc, report, info)
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
        # The SCP role for the Push Model: kuva sends the N-EVENT-REPORT (PS3.4 J.3.3).
        new_assoc = open_association(
            self._settings,
            node,
            [(STORAGE_COMMITMENT_PUSH_MODEL, BASIC_TRANSFER_SYNTAXES)],
            roles=[RoleSelection(STORAGE_COMMITMENT_PUSH_MODEL, scu_role=False, scp_role=True)],
        )
        try:
            self._send(new_assoc, report, info)
        finally:
            new_assoc.release()

    def _send(self, assoc: Association, report: CommitmentReport, info: Dataset) -> None:
        """The N-EVENT-REPORT on ``assoc``; raises ConnectionError unless it is answered
        with Success."""
        context = assoc.context_for(STORAGE_COMMITMENT_PUSH_MODEL, as_scu=False)
        if context is None:
            context = assoc.context_for(STORAGE_COMMITMENT_PUSH_MODEL)
        if context is None:
            raise ConnectionError("no presentation context for the Storage Commitment Push Model")
        response = assoc.n_event_report(
            context,
            STORAGE_COMMITMENT_PUSH_MODEL,
            STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE,
            report.event_type,
            datasets.encode(info, context.transfer_syntax),
        )
        if response.status is None:
            raise ConnectionError("no N-EVENT-REPORT response")
        if response.status != st.SUCCESS:
            raise ConnectionError(f"N-EVENT-REPORT answered with status 0x{response.status:04X}")
