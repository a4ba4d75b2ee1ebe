"""Register Document Set-b [ITI-42], the Document Registry's side (ITI TF-2b 3.42).

The payload is an ``lcm:SubmitObjectsRequest`` (3.42.4.1.2); kuva.xds.ebrim reads
its metadata, kuva.services.registry applies the registry's rules and stores it,
and the answer is an ``rs:RegistryResponse`` (3.42.4.2): Success, or Failure with
the errors found (ITI TF-3 4.2.4). A payload that breaks the XDS schemas is
answered Failure with one XDSRegistryMetadataError per schema problem.

The objects are stored for the register holder the HTTP request acts for
(``SoapRequest.client_organization``: the client certificate's organisation with
mutual TLS, else ``[http] organization``; kuva.web.identity); none: Failure.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from kuva.config import Settings
from kuva.model import audit as a
from kuva.model.xds import ErrorCode, RegistryError, ResponseStatus
from kuva.services.audit import AuditTrail
from kuva.services.registry import RegistryService
from kuva.xds import ebrim
from kuva.xds.audited import audited_submission
from kuva.xds.messages import SoapRequest, SoapResponse, Transaction
from kuva.xds.namespaces import REGISTER_DOCUMENT_SET, RESPONSE_ACTIONS, q
from kuva.xds.rs import registry_response

log = logging.getLogger(__name__)

PAYLOAD = q("lcm", "SubmitObjectsRequest")


def _answer(status: ResponseStatus, errors: Iterable[RegistryError] = ()) -> SoapResponse:
    return SoapResponse(
        action=RESPONSE_ACTIONS[REGISTER_DOCUMENT_SET], body=registry_response(status, errors)
    )


def register_document_set(
    service: RegistryService, settings: Settings, audit: AuditTrail | None = None
) -> Transaction:
    """The ITI-42 transaction of the registry endpoint."""

    def submit(request: SoapRequest) -> SoapResponse:
        organization = request.client_organization
        if organization is None:
            return _answer(
                ResponseStatus.FAILURE,
                [
                    RegistryError(
                        ErrorCode.REGISTRY_ERROR,
                        "no organisation (register holder) is configured for XDS submissions",
                    )
                ],
            )
        try:
            submission = ebrim.parse_submission(request.body)
        except ebrim.EbrimError as exc:
            return _answer(
                ResponseStatus.FAILURE,
                [RegistryError(ErrorCode.REGISTRY_METADATA_ERROR, str(exc))],
            )
        try:
            outcome = service.register(submission, organization_oid=organization)
        except Exception as exc:
            # Database errors quote their parameters (patient ids): the traceback
            # goes to DEBUG only.
            log.error(
                "ITI-42 registration failed (message %s): %s",
                request.message_id,
                type(exc).__name__,
            )
            log.debug("ITI-42 registration failure", exc_info=True)
            return _answer(
                ResponseStatus.FAILURE,
                [RegistryError(ErrorCode.REGISTRY_ERROR, "internal error of the registry")],
            )
        return _answer(outcome.status, outcome.errors)

    def invalid(request: SoapRequest, problems: list[str]) -> SoapResponse:
        errors = [RegistryError(ErrorCode.REGISTRY_METADATA_ERROR, p) for p in problems]
        if not errors:
            errors = [
                RegistryError(ErrorCode.REGISTRY_METADATA_ERROR, "the request breaks the schema")
            ]
        return _answer(ResponseStatus.FAILURE, errors)

    return Transaction(
        action=REGISTER_DOCUMENT_SET,
        payload=PAYLOAD,
        handle=audited_submission(submit, audit, a.ITI_42),
        invalid=invalid,
    )
