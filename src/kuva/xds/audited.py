"""What the audit messages of the XDS transactions name (services.audit): the
submission set and patient of a submission (ITI-41, ITI-42; IHE ITI TF-2b
3.41.5.1.2, 3.42.5.1.2) and whether the response was a success."""

from __future__ import annotations

import logging
from collections.abc import Callable

from lxml.etree import _Element as Element

from kuva.model import audit as a
from kuva.model.xds import ResponseStatus
from kuva.services.audit import AuditTrail, Requester, audit_failed
from kuva.xds import ebrim
from kuva.xds.messages import SoapRequest, SoapResponse

log = logging.getLogger(__name__)

_FAILURE = ResponseStatus.FAILURE.value


def submission_of(body: Element) -> tuple[str, str | None]:
    """The submission set's uniqueId and patient id (a CX) of a submission's
    metadata; empty and None when it cannot be read."""
    try:
        submission = ebrim.parse_submission(body)
    except Exception:
        return "", None
    submission_set = submission.submission_set
    if submission_set is None:
        return "", None
    return submission_set.unique_id, submission_set.patient_id or None


def succeeded(response: Element) -> bool:
    """Whether a RegistryResponse (or AdhocQueryResponse) says Success or
    PartialSuccess."""
    return bool(response.get("status")) and response.get("status") != _FAILURE


def audited_submission(
    submit: Callable[[SoapRequest], SoapResponse],
    audit: AuditTrail | None,
    transaction: a.Code,
) -> Callable[[SoapRequest], SoapResponse]:
    """``submit`` (an ITI-41 or ITI-42 handler), each submission audited after its
    answer is made (110107 Import, services.audit), success or not."""

    def handle(request: SoapRequest) -> SoapResponse:
        response = submit(request)
        if audit is not None:
            submission_set, patient = submission_of(request.body)
            try:
                audit.submission_imported(
                    Requester(request.client_organization, request.client_address, request.user),
                    request.endpoint,
                    transaction=transaction,
                    submission_set=submission_set,
                    patient=patient,
                    ok=succeeded(response.body),
                )
            except Exception as exc:
                audit_failed(log, f"an {transaction.code} submission", exc)
        return response

    return handle
