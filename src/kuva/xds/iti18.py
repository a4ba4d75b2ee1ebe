"""Registry Stored Query [ITI-18], the Document Registry's side (ITI TF-2a 3.18).

The payload is a ``query:AdhocQueryRequest`` (3.18.4.1.2): ``query:ResponseOption``
(``returnType`` LeafClass or ObjectRef) and ``rim:AdhocQuery`` whose ``id`` names
the stored query and whose ``rim:Slot`` elements are its parameters.
kuva.services.stored_query checks and runs it; the answer is a
``query:AdhocQueryResponse`` (3.18.4.1.3): its ``status``, an
``rs:RegistryErrorList`` when there are errors, and the ``rim:RegistryObjectList``
(always present, rs/query.xsd) holding the registered objects as stored, with
their current status, ``home`` = the home community id
(``settings.xds.home_community_id``) and, for a patient merged into another, the
current patientId - or ``rim:ObjectRef`` elements. Objects are written as
registered, so each carries its ``objectType``.

A payload that breaks the XDS schemas, or a request without ``rim:AdhocQuery``,
is answered Failure with XDSRegistryError (one per schema problem).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from lxml import etree
from lxml.etree import _Element as Element

from kuva.config import Settings
from kuva.model.xds import ErrorCode, RegistryError, ResponseStatus
from kuva.services.audit import AuditTrail, audit_failed
from kuva.services.stored_query import (
    QueryParameter,
    ReturnType,
    StoredQueryRequest,
    StoredQueryResult,
    StoredQueryService,
)
from kuva.xds import ebrim
from kuva.xds.messages import SoapRequest, SoapResponse, Transaction
from kuva.xds.namespaces import QUERY, REGISTRY_STORED_QUERY, RESPONSE_ACTIONS, RIM, RS, q
from kuva.xds.repository import requester_of, requesting_scope
from kuva.xds.rs import error_list

log = logging.getLogger(__name__)

PAYLOAD = q("query", "AdhocQueryRequest")
RESPONSE = q("query", "AdhocQueryResponse")


class _Unreadable(ValueError):
    pass


def adhoc_query_response(
    status: ResponseStatus,
    errors: Iterable[RegistryError] = (),
    objects: Iterable[Element] = (),
) -> Element:
    """query:AdhocQueryResponse: status, rs:RegistryErrorList when any, and the
    rim:RegistryObjectList of ``objects`` (rim elements)."""
    response = etree.Element(RESPONSE, nsmap={"query": QUERY, "rs": RS, "rim": RIM})
    response.set("status", status.value)
    listing = error_list(errors)
    if listing is not None:
        response.append(listing)
    response.append(ebrim.object_list(objects))
    return response


def read_request(body: Element) -> StoredQueryRequest:
    """The stored query of an AdhocQueryRequest (schema-valid, so its parts are in
    order). Raises _Unreadable when there is no AdhocQuery."""
    option = body.find(q("query", "ResponseOption"))
    query = body.find(q("rim", "AdhocQuery"))
    if query is None:
        raise _Unreadable("the request holds no rim:AdhocQuery")
    parameters = tuple(
        QueryParameter(
            name=slot.get("name", ""),
            values=tuple(
                value.text or ""
                for value in slot.iterfind(f"{q('rim', 'ValueList')}/{q('rim', 'Value')}")
            ),
        )
        for slot in query.iterfind(q("rim", "Slot"))
    )

    def integer(name: str) -> int | None:
        value = body.get(name)
        if value is None:
            return None
        try:
            return int(value)
        except ValueError:
            return None

    return StoredQueryRequest(
        query_id=query.get("id", ""),
        parameters=parameters,
        return_type=option.get("returnType") if option is not None else None,
        start_index=integer("startIndex"),
        max_results=integer("maxResults"),
    )


def response_body(result: StoredQueryResult, home: str | None) -> Element:
    """The AdhocQueryResponse of a stored query's result."""
    if result.return_type is ReturnType.LEAF_CLASS:
        elements = ebrim.leaf_class(result.objects, home=home, patients=result.patients)
    else:
        elements = ebrim.object_refs(result.references, home=home)
    return adhoc_query_response(result.status, result.errors, elements)


def _answer(body: Element) -> SoapResponse:
    return SoapResponse(action=RESPONSE_ACTIONS[REGISTRY_STORED_QUERY], body=body)


def _failure(errors: Iterable[RegistryError]) -> SoapResponse:
    return _answer(adhoc_query_response(ResponseStatus.FAILURE, errors))


def queried_patient(query: StoredQueryRequest) -> str | None:
    """The patient a stored query names (its first patient id parameter, quotes
    removed), for its audit message (ITI TF-2a 3.18.5.1.2)."""
    for parameter in query.parameters:
        if parameter.name in _PATIENT_PARAMETERS and parameter.values:
            value = parameter.values[0].strip().strip("('").rstrip("')").strip()
            if value:
                return value
    return None


_PATIENT_PARAMETERS = frozenset(
    {
        "$XDSDocumentEntryPatientId",
        "$XDSSubmissionSetPatientId",
        "$XDSFolderPatientId",
        "$patientId",
    }
)


def registry_stored_query(
    service: StoredQueryService, settings: Settings, audit: AuditTrail | None = None
) -> Transaction:
    """The ITI-18 transaction of the registry endpoint; each request is audited
    (110112 Query, event type ITI-18, queued; services.audit)."""
    home = settings.xds.home_community_id or None

    def handle(request: SoapRequest) -> SoapResponse:
        query: StoredQueryRequest | None = None
        ok = False
        try:
            query = read_request(request.body)
            response, ok = answer(request, query)
            return response
        except _Unreadable as exc:
            return _failure([RegistryError(ErrorCode.REGISTRY_ERROR, str(exc))])
        finally:
            if audit is not None:
                try:
                    audit.stored_queried(
                        requester_of(request),
                        request.endpoint,
                        query_id=query.query_id if query is not None else "",
                        request=etree.tostring(request.body),
                        patient=queried_patient(query) if query is not None else None,
                        ok=ok,
                    )
                except Exception as exc:
                    audit_failed(log, "an ITI-18 request", exc)

    def answer(request: SoapRequest, query: StoredQueryRequest) -> tuple[SoapResponse, bool]:
        try:
            result = service.query(
                query, scope=requesting_scope(service.access, request), user=request.user
            )
            return (
                _answer(response_body(result, home)),
                result.status is not ResponseStatus.FAILURE,
            )
        except Exception as exc:
            # Database errors quote their parameters (patient ids): the traceback
            # goes to DEBUG only.
            log.error(
                "ITI-18 query failed (message %s): %s", request.message_id, type(exc).__name__
            )
            log.debug("ITI-18 query failure", exc_info=True)
            return (
                _failure(
                    [RegistryError(ErrorCode.REGISTRY_ERROR, "internal error of the registry")]
                ),
                False,
            )

    def invalid(request: SoapRequest, problems: list[str]) -> SoapResponse:
        errors = [RegistryError(ErrorCode.REGISTRY_ERROR, p) for p in problems]
        return _failure(
            errors or [RegistryError(ErrorCode.REGISTRY_ERROR, "the request breaks the schema")]
        )

    return Transaction(
        action=REGISTRY_STORED_QUERY, payload=PAYLOAD, handle=handle, invalid=invalid
    )
