"""The XDS.b Document Repository's transactions: Provide and Register Document Set-b
[ITI-41] (also RAD-68) and Retrieve Document Set [ITI-43] (ITI TF-2b 3.41, 3.43).

ITI-41: the payload is an ``xdsb:ProvideAndRegisterDocumentSetRequest``
(3.41.4.1.2): its ``lcm:SubmitObjectsRequest`` is read by kuva.xds.ebrim and each
``xdsb:Document`` - inline base64 or an MTOM/XOP part (``SoapRequest.binary``) -
becomes the content of the DocumentEntry its ``id`` names. kuva.services.repository
stores and registers them; the answer is an ``rs:RegistryResponse`` (3.41.4.2):
Success, or Failure with the errors found. A payload that breaks the XDS schemas is
answered Failure with one XDSRepositoryMetadataError per schema problem; malformed
base64 or a missing MTOM part is a SOAP Sender fault (the transport's). The
documents are stored for the register holder the HTTP request acts for
(``SoapRequest.client_organization``: the client certificate's organisation with
mutual TLS, else ``[http] organization``; kuva.web.identity).

ITI-43: the payload is an ``xdsb:RetrieveDocumentSetRequest`` (3.43.4.1.2); the
answer an ``xdsb:RetrieveDocumentSetResponse`` (3.43.4.2.2): the rs:RegistryResponse
with Success / PartialSuccess / Failure and the errors, then one
``xdsb:DocumentResponse`` per returned document whose ``xdsb:Document`` is an
``xop:Include`` of an MTOM attachment streamed from the document's blob (ITI TF-2x
V.3.6: MTOM for the response of ITI-43). A payload that breaks the schemas is
answered Failure with XDSRepositoryError per schema problem (ITI-43 has no code
for a malformed request of its own; a SOAP fault is not sent for it).

The requesting organisation, for access rules and the disclosure log, is the
client certificate's, else the verified XUA assertion's (kuva.xds.xua), else the
HTTP organisation (``requesting_organization``): RAD-69 (kuva.xds.rad69) and ITI-18
take it from here too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from lxml import etree
from lxml.etree import _Element as Element

from kuva.config import Settings
from kuva.model import audit as a
from kuva.model.access import AccessScope
from kuva.model.xds import ErrorCode, RegistryError, ResponseStatus
from kuva.services.access import AccessPolicy
from kuva.services.audit import AuditTrail, Requester
from kuva.services.repository import (
    DocumentRequest,
    DocumentSetResult,
    ProvidedDocument,
    ProvidedSubmission,
    RepositoryService,
    RetrievedDocument,
)
from kuva.xds import ebrim
from kuva.xds.audited import audited_submission
from kuva.xds.messages import Attachment, SoapRequest, SoapResponse, Transaction
from kuva.xds.mtom import new_content_id, xop_include
from kuva.xds.namespaces import (
    PROVIDE_AND_REGISTER,
    RESPONSE_ACTIONS,
    RETRIEVE_DOCUMENT_SET,
    XDSB,
    q,
)
from kuva.xds.rs import registry_response

log = logging.getLogger(__name__)

PROVIDE_PAYLOAD = q("xdsb", "ProvideAndRegisterDocumentSetRequest")
RETRIEVE_PAYLOAD = q("xdsb", "RetrieveDocumentSetRequest")


def requesting_organization(request: SoapRequest) -> str:
    """The organisation a request comes from, as access rules and the disclosure log
    see it ("" = unknown):

    - over mutual TLS, the organisation of the client certificate (a verified
      assertion must name the same one, kuva.xds.xua);
    - otherwise the organization id of the request's verified XUA assertion, when
      it names one (an unverified assertion is never taken);
    - otherwise the organisation configured for HTTP clients (kuva.web.identity).
    """
    if request.authenticated and request.client_organization:
        return request.client_organization
    if request.user is not None and request.user.organization:
        return request.user.organization
    return request.client_organization or ""


def requester_of(request: SoapRequest) -> Requester:
    """Who made the request, for its audit message."""
    return Requester(requesting_organization(request), request.client_address, request.user)


def requesting_scope(access: AccessPolicy | None, request: SoapRequest) -> AccessScope | None:
    """What the request may read (services.access); None = everything."""
    if access is None:
        return None
    return access.scope(requesting_organization(request) or None)


# ---------------------------------------------------------------------- ITI-41


def _registry_answer(status: ResponseStatus, errors: Iterable[RegistryError] = ()) -> SoapResponse:
    return SoapResponse(
        action=RESPONSE_ACTIONS[PROVIDE_AND_REGISTER], body=registry_response(status, errors)
    )


def _failure(code: str, context: str) -> SoapResponse:
    return _registry_answer(ResponseStatus.FAILURE, [RegistryError(code, context)])


def provided_documents(body: Element, request: SoapRequest) -> tuple[ProvidedDocument, ...]:
    """The ``xdsb:Document`` elements of a ProvideAndRegisterDocumentSetRequest."""
    return tuple(
        ProvidedDocument(element.get("id", ""), request.binary(element))
        for element in body.iterfind(q("xdsb", "Document"))
    )


def provide_and_register(
    service: RepositoryService, settings: Settings, audit: AuditTrail | None = None
) -> Transaction:
    """The ITI-41 transaction of the repository endpoint."""

    def submit(request: SoapRequest) -> SoapResponse:
        organization = request.client_organization
        if organization is None:
            return _failure(
                ErrorCode.REPOSITORY_ERROR,
                "no organisation (register holder) is configured for XDS submissions",
            )
        try:
            submission = ebrim.parse_submission(request.body)
        except ebrim.EbrimError as exc:
            return _failure(ErrorCode.REPOSITORY_METADATA_ERROR, str(exc))
        provided = ProvidedSubmission(submission, provided_documents(request.body, request))
        try:
            outcome = service.provide_and_register(provided, organization_oid=organization)
        except OSError as exc:
            log.error(
                "ITI-41 (message %s): a document could not be stored: %s",
                request.message_id,
                exc.strerror or type(exc).__name__,
            )
            return _failure(
                ErrorCode.REPOSITORY_ERROR, "the document could not be stored; try again"
            )
        except Exception as exc:
            # Database errors quote their parameters (patient ids): the traceback
            # goes to DEBUG only.
            log.error("ITI-41 (message %s) failed: %s", request.message_id, type(exc).__name__)
            log.debug("ITI-41 failure", exc_info=True)
            return _failure(ErrorCode.REPOSITORY_ERROR, "internal error of the repository")
        return _registry_answer(outcome.status, outcome.errors)

    def invalid(request: SoapRequest, problems: list[str]) -> SoapResponse:
        errors = [
            RegistryError(ErrorCode.REPOSITORY_METADATA_ERROR, problem) for problem in problems
        ]
        return _registry_answer(
            ResponseStatus.FAILURE,
            errors
            or [
                RegistryError(ErrorCode.REPOSITORY_METADATA_ERROR, "the request breaks the schema")
            ],
        )

    return Transaction(
        action=PROVIDE_AND_REGISTER,
        payload=PROVIDE_PAYLOAD,
        handle=audited_submission(submit, audit, a.ITI_41),
        invalid=invalid,
    )


# ---------------------------------------------------------------------- ITI-43


def _text(parent: Element, local: str) -> str | None:
    child = parent.find(q("xdsb", local))
    return None if child is None else (child.text or "").strip()


def parse_retrieve(body: Element) -> list[DocumentRequest]:
    """The DocumentRequests of a RetrieveDocumentSetRequest, in document order."""
    return [
        DocumentRequest(
            repository_unique_id=_text(element, "RepositoryUniqueId") or "",
            document_unique_id=_text(element, "DocumentUniqueId") or "",
            home_community_id=_text(element, "HomeCommunityId") or None,
        )
        for element in body.iterfind(q("xdsb", "DocumentRequest"))
    ]


def _retrieve_response(status: ResponseStatus, errors: Iterable[RegistryError]) -> Element:
    root = etree.Element(q("xdsb", "RetrieveDocumentSetResponse"), nsmap={"xdsb": XDSB})
    root.append(registry_response(status, errors))
    return root


def _document_response(parent: Element, document: RetrievedDocument) -> Attachment:
    """One xdsb:DocumentResponse (ITI TF-2b 3.43.4.2.2), its Document an XOP Include."""
    response = etree.SubElement(parent, q("xdsb", "DocumentResponse"))
    if document.home_community_id:
        etree.SubElement(response, q("xdsb", "HomeCommunityId")).text = document.home_community_id
    etree.SubElement(response, q("xdsb", "RepositoryUniqueId")).text = document.repository_unique_id
    etree.SubElement(response, q("xdsb", "DocumentUniqueId")).text = document.document_unique_id
    etree.SubElement(response, q("xdsb", "mimeType")).text = document.mime_type
    content_id = new_content_id("document")
    xop_include(etree.SubElement(response, q("xdsb", "Document")), content_id)
    return Attachment(
        content_id=content_id,
        content_type=document.mime_type,
        chunks=document.chunks,
        length=document.size,
    )


def retrieve_response(result: DocumentSetResult) -> SoapResponse:
    """The RetrieveDocumentSetResponse of a result, one attachment per document."""
    root = _retrieve_response(result.status, result.errors)
    attachments = [_document_response(root, document) for document in result.documents]
    return SoapResponse(
        action=RESPONSE_ACTIONS[RETRIEVE_DOCUMENT_SET], body=root, attachments=attachments
    )


def retrieve_document_set(service: RepositoryService, settings: Settings) -> Transaction:
    """The ITI-43 transaction of the repository endpoint.

    ``settings`` is taken for the shape every XDS transaction factory shares; the
    service holds the ids it answers for.
    """

    def handle(request: SoapRequest) -> SoapResponse:
        result = service.retrieve_document_set(
            parse_retrieve(request.body),
            recipient=requesting_organization(request),
            scope=requesting_scope(service.access, request),
            user=request.user,
        )
        return retrieve_response(result)

    def invalid(request: SoapRequest, problems: list[str]) -> SoapResponse:
        errors = [
            RegistryError(ErrorCode.REPOSITORY_ERROR, f"RetrieveDocumentSetRequest: {problem}")
            for problem in problems
        ] or [RegistryError(ErrorCode.REPOSITORY_ERROR, "RetrieveDocumentSetRequest is not valid")]
        return SoapResponse(
            action=RESPONSE_ACTIONS[RETRIEVE_DOCUMENT_SET],
            body=_retrieve_response(ResponseStatus.FAILURE, errors),
        )

    return Transaction(
        action=RETRIEVE_DOCUMENT_SET, payload=RETRIEVE_PAYLOAD, handle=handle, invalid=invalid
    )
