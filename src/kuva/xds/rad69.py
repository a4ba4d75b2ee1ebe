"""RAD-69 Retrieve Imaging Document Set: the SOAP payloads (RAD TF-3 4.69).

Request: ``xdsi:RetrieveImagingDocumentSetRequest`` (RAD TF-3 4.69.4.1.2), its
StudyRequest / SeriesRequest / xdsb:DocumentRequest tree and the
TransferSyntaxUIDList. Response: ``xdsb:RetrieveDocumentSetResponse`` as in ITI-43
(RAD TF-3 4.69.4.2.2, ITI TF-2b 3.43.4.2.2): the rs:RegistryResponse with the
status and errors, then one xdsb:DocumentResponse per returned instance whose
xdsb:Document is an ``xop:Include`` of an attachment that streams the object
(application/dicom). What is returned is decided by
kuva.services.retrieve_imaging_document_set, for the organisation the request's XUA assertion
names (kuva.xds.repository.requesting_organization), which the disclosure log
records.

A request that breaks the schema gets a Failure RegistryResponse with
XDSIRequestError (as the NIST XDS Toolkit's RAD-69 request validator answers), not
a SOAP fault.
"""

from __future__ import annotations

import logging
import uuid
from urllib.parse import quote

from lxml import etree
from lxml.etree import _Element as Element

from kuva.config import Settings
from kuva.model import audit as a
from kuva.model.xds import ErrorCode, RegistryError, ResponseStatus
from kuva.services.audit import AuditTrail, audit_failed
from kuva.services.retrieve_imaging_document_set import (
    DocumentRequest,
    ImagingDocument,
    ImagingDocumentSetRequest,
    ImagingDocumentSetResult,
    ImagingDocumentSetRetrieval,
    own_studies,
)
from kuva.xds.messages import Attachment, SoapRequest, SoapResponse, Transaction
from kuva.xds.namespaces import (
    RESPONSE_ACTIONS,
    RETRIEVE_IMAGING_DOCUMENT_SET,
    XDSB,
    XOP,
    q,
)
from kuva.xds.repository import requester_of, requesting_organization, requesting_scope
from kuva.xds.rs import registry_response

log = logging.getLogger(__name__)

PAYLOAD = q("xdsi", "RetrieveImagingDocumentSetRequest")
RESPONSE_ACTION = RESPONSE_ACTIONS[RETRIEVE_IMAGING_DOCUMENT_SET]


def _text(parent: Element, tag: str) -> str | None:
    child = parent.find(tag)
    if child is None:
        return None
    return (child.text or "").strip()


def parse_request(body: Element) -> ImagingDocumentSetRequest:
    """The request's documents, flattened in document order, and its transfer syntaxes."""
    documents: list[DocumentRequest] = []
    for study in body.iterfind(q("xdsi", "StudyRequest")):
        study_uid = (study.get("studyInstanceUID") or "").strip()
        for series in study.iterfind(q("xdsi", "SeriesRequest")):
            series_uid = (series.get("seriesInstanceUID") or "").strip()
            for request in series.iterfind(q("xdsb", "DocumentRequest")):
                documents.append(
                    DocumentRequest(
                        study_instance_uid=study_uid,
                        series_instance_uid=series_uid,
                        repository_unique_id=_text(request, q("xdsb", "RepositoryUniqueId")) or "",
                        document_unique_id=_text(request, q("xdsb", "DocumentUniqueId")) or "",
                        home_community_id=_text(request, q("xdsb", "HomeCommunityId")) or None,
                    )
                )
    syntaxes = tuple(
        (element.text or "").strip()
        for element in body.iterfind(
            f"{q('xdsi', 'TransferSyntaxUIDList')}/{q('xdsi', 'TransferSyntaxUID')}"
        )
    )
    return ImagingDocumentSetRequest(documents=tuple(documents), transfer_syntax_uids=syntaxes)


def _response(
    status: ResponseStatus, errors: tuple[RegistryError, ...] | list[RegistryError]
) -> Element:
    root = etree.Element(q("xdsb", "RetrieveDocumentSetResponse"), nsmap={"xdsb": XDSB})
    root.append(registry_response(status, errors))
    return root


def _document_response(parent: Element, document: ImagingDocument, content_id: str) -> None:
    """xdsb:DocumentResponse (ITI TF-2b 3.43.4.2.2), its Document an XOP Include."""
    response = etree.SubElement(parent, q("xdsb", "DocumentResponse"))
    if document.home_community_id:
        etree.SubElement(response, q("xdsb", "HomeCommunityId")).text = document.home_community_id
    etree.SubElement(response, q("xdsb", "RepositoryUniqueId")).text = document.repository_unique_id
    etree.SubElement(response, q("xdsb", "DocumentUniqueId")).text = document.document_unique_id
    etree.SubElement(response, q("xdsb", "mimeType")).text = document.mime_type
    content = etree.SubElement(response, q("xdsb", "Document"))
    include = etree.SubElement(content, q("xop", "Include"), nsmap={"xop": XOP})
    include.set("href", "cid:" + quote(content_id, safe="@.-_"))


def response_for(result: ImagingDocumentSetResult) -> SoapResponse:
    """The RetrieveDocumentSetResponse of a result, with one attachment per document."""
    root = _response(result.status, result.errors)
    attachments: list[Attachment] = []
    message = uuid.uuid4().hex
    for number, document in enumerate(result.documents, start=1):
        content_id = f"{number}.{message}@kuva"
        _document_response(root, document, content_id)
        attachments.append(
            Attachment(
                content_id=content_id,
                content_type=document.mime_type,
                chunks=document.chunks,
                length=document.length,
            )
        )
    return SoapResponse(action=RESPONSE_ACTION, body=root, attachments=attachments)


def retrieve_imaging_document_set(
    retrieval: ImagingDocumentSetRetrieval, settings: Settings, audit: AuditTrail | None = None
) -> Transaction:
    """The RAD-69 transaction an Imaging Document Source endpoint serves.

    ``settings`` is taken for the shape every XDS transaction factory shares;
    ``retrieval`` holds the ids it answers for and the access rules. What the
    register holder retrieves of its own is audited (110104, RAD-69); what goes to
    another organisation is a disclosure, audited as Export by the disclosure log.
    """

    def handle(request: SoapRequest) -> SoapResponse:
        recipient = requesting_organization(request)
        result = retrieval.retrieve(
            parse_request(request.body),
            recipient=recipient,
            scope=requesting_scope(retrieval.access, request),
            user=request.user,
        )
        own = own_studies(result, recipient)
        if audit is not None and own:
            try:
                audit.web_retrieved(requester_of(request), own, transaction=a.RAD_69)
            except Exception as exc:
                audit_failed(log, "a RAD-69 retrieve", exc)
        return response_for(result)

    def invalid(request: SoapRequest, messages: list[str]) -> SoapResponse:
        errors = [
            RegistryError(
                ErrorCode.IMAGING_REQUEST_ERROR, f"RetrieveImagingDocumentSetRequest: {message}"
            )
            for message in messages
        ] or [
            RegistryError(
                ErrorCode.IMAGING_REQUEST_ERROR, "RetrieveImagingDocumentSetRequest is not valid"
            )
        ]
        return SoapResponse(action=RESPONSE_ACTION, body=_response(ResponseStatus.FAILURE, errors))

    return Transaction(
        action=RETRIEVE_IMAGING_DOCUMENT_SET, payload=PAYLOAD, handle=handle, invalid=invalid
    )
