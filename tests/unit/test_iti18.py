"""xds.iti18: the Registry Stored Query transaction, from a parsed SOAP request to its
query:AdhocQueryResponse, on SQLite and PostgreSQL; and one request through the SOAP
1.2 endpoint (kuva.xds.endpoint) in an ASGI app, with httpx.

The registry holds the objects of tests.unit.test_stored_query (``build_world``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from lxml import etree
from lxml.etree import _Element as Element
from sqlalchemy import Engine

from kuva.config import Settings
from kuva.model.xds import AvailabilityStatus, ErrorCode, ResponseStatus
from kuva.services.stored_query import StoredQueryId, StoredQueryRequest, StoredQueryResult
from kuva.services.stored_query import StoredQueryService as Service
from kuva.xds.endpoint import soap_router
from kuva.xds.iti18 import PAYLOAD, RESPONSE, registry_stored_query
from kuva.xds.messages import SoapRequest, Transaction
from kuva.xds.namespaces import NSMAP, REGISTRY_STORED_QUERY, RESPONSE_ACTIONS, SOAP, WSA, q
from kuva.xds.schema import validate
from tests.unit.test_stored_query import (
    APPROVED,
    PATIENT,
    SAMPLES,
    World,
    build_world,
    listed,
    quoted,
)

HOME = Settings().xds.home_community_id


@pytest.fixture
def world(engine: Engine) -> World:
    return build_world(engine)


@pytest.fixture
def transaction(engine: Engine) -> Transaction:
    return registry_stored_query(Service(engine), Settings())


def adhoc_query(query_id: str, *slots: tuple[str, str], return_type: str = "LeafClass") -> Element:
    request = etree.Element(PAYLOAD, nsmap={"query": NSMAP["query"], "rim": NSMAP["rim"]})
    etree.SubElement(
        request,
        q("query", "ResponseOption"),
        returnComposedObjects="true",
        returnType=return_type,
    )
    query = etree.SubElement(request, q("rim", "AdhocQuery"), id=query_id)
    for name, value in slots:
        slot = etree.SubElement(query, q("rim", "Slot"), name=name)
        etree.SubElement(
            etree.SubElement(slot, q("rim", "ValueList")), q("rim", "Value")
        ).text = value
    assert validate(request) == []
    return request


def find_documents(return_type: str = "LeafClass") -> Element:
    return adhoc_query(
        StoredQueryId.FIND_DOCUMENTS,
        ("$XDSDocumentEntryPatientId", quoted(PATIENT)),
        ("$XDSDocumentEntryStatus", listed(APPROVED)),
        return_type=return_type,
    )


def request(body: Element) -> SoapRequest:
    return SoapRequest(action=REGISTRY_STORED_QUERY, message_id="urn:uuid:1", body=body)


def status_and_errors(body: Element) -> tuple[str, list[tuple[str, str]]]:
    assert body.tag == RESPONSE
    errors = [
        (e.get("errorCode", ""), e.get("location", ""))
        for e in body.iterfind("rs:RegistryErrorList/rs:RegistryError", NSMAP)
    ]
    return body.get("status", ""), errors


def objects_of(body: Element) -> list[Element]:
    listing = body.find("rim:RegistryObjectList", NSMAP)
    assert listing is not None
    return list(listing)


def sample(name: str) -> Element:
    return etree.parse(str(SAMPLES / name)).getroot()


def test_transaction_is_itself(transaction: Transaction) -> None:
    assert transaction.action == REGISTRY_STORED_QUERY
    assert transaction.payload == "{urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0}AdhocQueryRequest"


def test_leaf_class_answer(world: World, transaction: Transaction) -> None:
    """FindDocuments LeafClass: built like the NIST LeafClass response sample."""
    response = transaction.handle(request(find_documents()))
    assert response.action == RESPONSE_ACTIONS[REGISTRY_STORED_QUERY]
    assert validate(response.body) == []
    assert status_and_errors(response.body) == (ResponseStatus.SUCCESS.value, [])
    assert response.body.find("rs:RegistryErrorList", NSMAP) is None
    found = objects_of(response.body)
    assert [e.get("id") for e in found] == [world.e2.id, world.e3.id]

    reference = sample("iti18-FindDocuments-LeafClass-response.xml")
    assert response.body.tag == reference.tag
    assert [c.tag for c in response.body] == [c.tag for c in reference]
    (expected,) = {e.tag for e in objects_of(reference)}
    wanted_attributes = set(objects_of(reference)[0].attrib) - {"isOpaque"}  # its default
    allowed_children = {c.tag for e in objects_of(reference) for c in e}
    for element in found:
        assert element.tag == expected
        assert wanted_attributes <= set(element.attrib)
        assert element.get("status") == AvailabilityStatus.APPROVED.value
        assert element.get("home") == HOME
        assert element.get("lid") == element.get("id")
        children = {c.tag for c in element}
        assert children <= allowed_children
        assert {q("rim", "Slot"), q("rim", "Classification"), q("rim", "ExternalIdentifier")} <= (
            children
        )


def test_object_ref_answer(world: World, transaction: Transaction) -> None:
    response = transaction.handle(request(find_documents("ObjectRef")))
    assert validate(response.body) == []
    assert status_and_errors(response.body) == (ResponseStatus.SUCCESS.value, [])
    reference = sample("iti18-ObjectRef-response.xml")
    assert [c.tag for c in response.body] == [c.tag for c in reference]
    found = objects_of(response.body)
    assert {e.tag for e in found} == {e.tag for e in objects_of(reference)}
    assert [(e.get("id"), e.get("home")) for e in found] == [
        (world.e2.id, HOME),
        (world.e3.id, HOME),
    ]
    assert all(set(e.attrib) == set(objects_of(reference)[0].attrib) for e in found)


def test_failure_answer(world: World, transaction: Transaction) -> None:
    """An error: Failure, rs:RegistryErrorList, then an empty rim:RegistryObjectList."""
    body = find_documents()
    query = body.find("rim:AdhocQuery", NSMAP)
    assert query is not None
    query.remove(query[1])  # the required status
    response = transaction.handle(request(body))
    assert validate(response.body) == []
    assert status_and_errors(response.body) == (
        ResponseStatus.FAILURE.value,
        [("XDSStoredQueryParamNumber", "$XDSDocumentEntryStatus")],
    )
    assert [etree.QName(c).localname for c in response.body] == [
        "RegistryErrorList",
        "RegistryObjectList",
    ]
    assert objects_of(response.body) == []
    unknown = transaction.handle(
        request(adhoc_query("urn:uuid:00000000-0000-4000-8000-000000000000"))
    )
    assert status_and_errors(unknown.body) == (
        ResponseStatus.FAILURE.value,
        [(ErrorCode.REGISTRY_ERROR, "AdhocQuery/@id")],
    )
    sample_body = sample("invalid-iti18-FindDocuments-unquoted-patientid.xml")
    refused = transaction.handle(request(sample_body))
    assert status_and_errors(refused.body) == (
        ResponseStatus.FAILURE.value,
        [(ErrorCode.REGISTRY_ERROR, "$XDSDocumentEntryPatientId")],
    )


def test_schema_problems_answered_as_registry_errors(transaction: Transaction) -> None:
    body = find_documents()
    body.insert(0, etree.Element(q("rim", "Slot"), name="misplaced"))
    problems = validate(body)  # as the endpoint does before a transaction sees it
    assert problems
    response = transaction.invalid(request(body), problems)
    assert validate(response.body) == []
    status, errors = status_and_errors(response.body)
    assert status == ResponseStatus.FAILURE.value
    assert errors == [(ErrorCode.REGISTRY_ERROR, "")] * len(problems)
    assert status_and_errors(transaction.invalid(request(body), []).body)[1] == [
        (ErrorCode.REGISTRY_ERROR, "")
    ]


def test_request_without_query(transaction: Transaction) -> None:
    body = etree.Element(PAYLOAD)
    etree.SubElement(body, q("query", "ResponseOption"), returnType="LeafClass")
    response = transaction.handle(request(body))
    assert status_and_errors(response.body) == (
        ResponseStatus.FAILURE.value,
        [(ErrorCode.REGISTRY_ERROR, "")],
    )


def test_paging_attributes_refused(world: World, transaction: Transaction) -> None:
    body = find_documents()
    body.set("maxResults", "10")
    response = transaction.handle(request(body))
    assert status_and_errors(response.body) == (
        ResponseStatus.FAILURE.value,
        [(ErrorCode.REGISTRY_ERROR, "AdhocQueryRequest")],
    )
    body.set("maxResults", "-1")
    body.set("startIndex", "0")
    response = transaction.handle(request(body))
    assert status_and_errors(response.body) == (ResponseStatus.SUCCESS.value, [])


class Failing(Service):
    def query(self, request: StoredQueryRequest) -> StoredQueryResult:
        raise RuntimeError(f"database gone: {PATIENT}")


def test_internal_error_is_a_registry_error(engine: Engine) -> None:
    transaction = registry_stored_query(Failing(engine), Settings())
    response = transaction.handle(request(find_documents()))
    assert validate(response.body) == []
    assert status_and_errors(response.body) == (
        ResponseStatus.FAILURE.value,
        [(ErrorCode.REGISTRY_ERROR, "")],
    )
    text = etree.tostring(response.body).decode()
    assert "database gone" not in text and PATIENT.id not in text


def post(app: FastAPI, content: bytes) -> httpx.Response:
    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://kuva.test") as client:
            return await client.post(
                "/xds/registry",
                content=content,
                headers={"content-type": "application/soap+xml; charset=utf-8"},
            )

    return asyncio.run(send())


def test_through_the_soap_endpoint(world: World, transaction: Transaction) -> None:
    """The NIST SOAP 1.2 FindDocuments sample (with a MessageID, the test patient and
    a classCode of the registry) through soap_router: envelope in, AdhocQueryResponse out."""
    text = Path(SAMPLES / "iti18-FindDocuments-soap12-request.xml").read_text()
    text = text.replace(
        "c4d77e21d0dd487^^^&amp;1.3.6.1.4.1.21367.2005.3.7&amp;ISO",
        str(PATIENT).replace("&", "&amp;"),
    ).replace("value^^scheme", "IMAGES^^1.3.6.1.4.1.19376.1.2.6.1")
    envelope = etree.fromstring(text.encode())
    header = envelope.find(f"{{{SOAP}}}Header")
    assert header is not None
    message_id = "urn:uuid:5f3c2a5e-1b1e-4b4a-9a55-1d1f9e3c0a18"
    etree.SubElement(header, f"{{{WSA}}}MessageID").text = message_id
    app = FastAPI()
    app.include_router(soap_router({"/xds/registry": [transaction]}, max_request_bytes=1 << 20))
    reply = post(app, etree.tostring(envelope))
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("application/soap+xml")
    answer = etree.fromstring(reply.content)
    action = answer.find(f"{{{SOAP}}}Header/{{{WSA}}}Action")
    assert action is not None and action.text == RESPONSE_ACTIONS[REGISTRY_STORED_QUERY]
    relates = answer.find(f"{{{SOAP}}}Header/{{{WSA}}}RelatesTo")
    assert relates is not None and relates.text == message_id
    body = answer.find(f"{{{SOAP}}}Body/query:AdhocQueryResponse", NSMAP)
    assert body is not None
    assert validate(body) == []
    assert status_and_errors(body) == (ResponseStatus.SUCCESS.value, [])
    assert [e.get("id") for e in objects_of(body)] == [world.e2.id]
