"""xds.iti42: the Register Document Set-b transaction, from a parsed SOAP request to
its rs:RegistryResponse, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from lxml import etree
from lxml.etree import _Element as Element
from sqlalchemy import Engine

from kuva.audit.message import render
from kuva.config import LOCAL_ORGANIZATION_OID, Settings
from kuva.index.uow import UnitOfWork
from kuva.model.directory import NodeSettings
from kuva.model.xds import AvailabilityStatus, ErrorCode, ResponseStatus, Submission
from kuva.services.audit import AuditTrail
from kuva.services.registry import RegistryOutcome, RegistryService
from kuva.xds import ebrim
from kuva.xds.endpoint import soap_router
from kuva.xds.iti42 import PAYLOAD, register_document_set
from kuva.xds.messages import SoapRequest, Transaction
from kuva.xds.namespaces import NSMAP, REGISTER_DOCUMENT_SET, RESPONSE_ACTIONS, SOAP, WSA, q
from kuva.xds.schema import validate
from tests.unit.test_ebrim import sample_payload
from tests.unit.test_registry_service import REPOSITORY, fill

SCHEMAS = Path(ebrim.__file__).parent / "schemas"


@pytest.fixture(scope="module")
def schemas() -> dict[str, etree.XMLSchema]:
    return {
        name: etree.XMLSchema(etree.parse(str(SCHEMAS / f"{name}.xsd"))) for name in ("lcm", "rs")
    }


@pytest.fixture
def service(engine: Engine) -> RegistryService:
    return RegistryService(
        engine, trusted_assigning_authorities=["1.2.246.21"], render=ebrim.render
    )


@pytest.fixture
def transaction(service: RegistryService) -> Transaction:
    return register_document_set(service, Settings())


def request(body: Element, organization: str | None = LOCAL_ORGANIZATION_OID) -> SoapRequest:
    """As the endpoint hands it over, for a client acting for ``organization``."""
    return SoapRequest(
        action=REGISTER_DOCUMENT_SET,
        message_id="urn:uuid:1",
        body=body,
        client_organization=organization,
    )


def submit_objects(name: str, *, original: str = "") -> Element:
    """The lcm:SubmitObjectsRequest of a sample, filled in; that of an ITI-41 sample
    with the slots its Document Repository adds (ITI TF-2b 3.41.4.1.3)."""
    payload = fill(sample_payload(name))
    if payload.tag != PAYLOAD:
        found = payload.find(PAYLOAD)
        assert found is not None
        payload = found
    for element in payload.iter():
        for attribute, value in element.attrib.items():
            if value == "$original_doc_uuid$":
                element.set(attribute, original)
    for entry in payload.iter(q("rim", "ExtrinsicObject")):
        have = {slot.get("name") for slot in entry.findall("rim:Slot", NSMAP)}
        for name, value in (
            ("hash", "da39a3ee5e6b4b0d3255bfef95601890afd80709"),
            ("size", "0"),
            ("repositoryUniqueId", REPOSITORY),
        ):
            if name not in have:
                slot = etree.Element(q("rim", "Slot"), name=name)
                etree.SubElement(
                    etree.SubElement(slot, q("rim", "ValueList")), q("rim", "Value")
                ).text = value
                entry.insert(0, slot)
    return payload


def status_and_errors(body: Element) -> tuple[str, list[tuple[str, str]]]:
    errors = [
        (e.get("errorCode", ""), e.get("location", ""))
        for e in body.iterfind("rs:RegistryErrorList/rs:RegistryError", NSMAP)
    ]
    return body.get("status", ""), errors


def test_transaction_is_itself(transaction: Transaction) -> None:
    assert transaction.action == REGISTER_DOCUMENT_SET
    assert (
        transaction.payload == "{urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0}SubmitObjectsRequest"
    )


def test_register_and_replace(
    engine: Engine, transaction: Transaction, schemas: dict[str, etree.XMLSchema]
) -> None:
    """The ITI-42 sample is registered (Success); the RPLC sample's metadata replaces
    it and the original is Deprecated."""
    body = submit_objects("iti42-RegisterDocumentSet-b-request.xml")
    schemas["lcm"].assertValid(body)
    response = transaction.handle(request(body))
    assert response.action == RESPONSE_ACTIONS[REGISTER_DOCUMENT_SET]
    schemas["rs"].assertValid(response.body)
    assert status_and_errors(response.body) == (ResponseStatus.SUCCESS.value, [])
    assert response.body.find("rs:RegistryErrorList", NSMAP) is None

    unique_id = body.find(
        ".//rim:ExternalIdentifier[@identificationScheme='urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab']",
        NSMAP,
    )
    assert unique_id is not None
    with UnitOfWork(engine, write=False) as uow:
        (original,) = uow.registry.find_by_unique_ids([unique_id.get("value", "")])
    assert original.status is AvailabilityStatus.APPROVED

    replacement = submit_objects("iti41-PnR-replace-RPLC-request.xml", original=original.entry_uuid)
    schemas["lcm"].assertValid(replacement)
    response = transaction.handle(request(replacement))
    assert status_and_errors(response.body) == (ResponseStatus.SUCCESS.value, [])
    with UnitOfWork(engine, write=False) as uow:
        found = uow.registry.find([original.entry_uuid])
    assert found[original.entry_uuid].status is AvailabilityStatus.DEPRECATED


@pytest.mark.parametrize(
    ("name", "code", "location"),
    [
        (
            "invalid-iti41-pnr-bad-classification-uplink.xml",
            ErrorCode.REGISTRY_METADATA_ERROR,
            "id_2",
        ),
        (
            "invalid-iti41-pnr-association-to-self.xml",
            ErrorCode.REGISTRY_METADATA_ERROR,
            "ID_6144893_1",
        ),
        ("iti41-PnR-KOS-manifest-request.xml", ErrorCode.REGISTRY_METADATA_ERROR, "id_101"),
    ],
)
def test_refused_samples(
    transaction: Transaction,
    schemas: dict[str, etree.XMLSchema],
    name: str,
    code: str,
    location: str,
) -> None:
    response = transaction.handle(request(submit_objects(name)))
    schemas["rs"].assertValid(response.body)
    status, errors = status_and_errors(response.body)
    assert status == ResponseStatus.FAILURE.value
    assert (code, location) in errors


@pytest.mark.parametrize(
    "name",
    [
        "iti41-ProvideAndRegister-soap12-request.xml",
        "iti41-ProvideAndRegister-mtom-xop-http-body.txt",
        "rad68-iti41-PnR-KOS-captured-mime-body.txt",
    ],
)
def test_provide_and_register_metadata_accepted(transaction: Transaction, name: str) -> None:
    response = transaction.handle(request(submit_objects(name)))
    assert status_and_errors(response.body) == (ResponseStatus.SUCCESS.value, [])


def test_unknown_patient(engine: Engine) -> None:
    strict = RegistryService(engine, trusted_assigning_authorities=[], render=ebrim.render)
    transaction = register_document_set(strict, Settings())
    response = transaction.handle(
        request(submit_objects("iti42-RegisterDocumentSet-b-request.xml"))
    )
    status, errors = status_and_errors(response.body)
    assert status == ResponseStatus.FAILURE.value
    assert errors == [(ErrorCode.UNKNOWN_PATIENT_ID, "SubmissionSet01")]


def test_schema_problems_answered_as_metadata_errors(
    transaction: Transaction, schemas: dict[str, etree.XMLSchema]
) -> None:
    """The element-order sample breaks rim.xsd: one XDSRegistryMetadataError per problem."""
    body = submit_objects("invalid-iti41-pnr-element-order-soap12.xml")
    problems = validate(body)  # as the endpoint does before a transaction sees it
    assert problems
    response = transaction.invalid(request(body), problems)
    schemas["rs"].assertValid(response.body)
    status, errors = status_and_errors(response.body)
    assert status == ResponseStatus.FAILURE.value
    assert errors == [(ErrorCode.REGISTRY_METADATA_ERROR, "")] * len(problems)
    assert response.action == RESPONSE_ACTIONS[REGISTER_DOCUMENT_SET]
    assert status_and_errors(transaction.invalid(request(body), []).body)[1] == [
        (ErrorCode.REGISTRY_METADATA_ERROR, "")
    ]


def test_no_register_holder(service: RegistryService) -> None:
    """A client acting for no organisation (no client certificate, and with nodes
    configured no http.organization): submissions are refused."""
    settings = Settings(nodes=[NodeSettings(ae_title="PACS1")])
    transaction = register_document_set(service, settings)
    response = transaction.handle(
        request(submit_objects("iti42-RegisterDocumentSet-b-request.xml"), None)
    )
    assert status_and_errors(response.body) == (
        ResponseStatus.FAILURE.value,
        [(ErrorCode.REGISTRY_ERROR, "")],
    )


def test_payload_without_metadata(transaction: Transaction) -> None:
    body = etree.Element(PAYLOAD)
    status, errors = status_and_errors(transaction.handle(request(body)).body)
    assert (status, errors) == (
        ResponseStatus.FAILURE.value,
        [(ErrorCode.REGISTRY_METADATA_ERROR, "")],
    )


class Failing(RegistryService):
    def register(self, submission: Submission, *, organization_oid: str) -> RegistryOutcome:
        raise RuntimeError("database gone")


def test_internal_error_is_a_registry_error(engine: Engine) -> None:
    failing = Failing(engine, trusted_assigning_authorities=[], render=ebrim.render)
    transaction = register_document_set(failing, Settings())
    response = transaction.handle(
        request(submit_objects("iti42-RegisterDocumentSet-b-request.xml"))
    )
    body = etree.tostring(response.body).decode()
    assert status_and_errors(response.body) == (
        ResponseStatus.FAILURE.value,
        [(ErrorCode.REGISTRY_ERROR, "")],
    )
    assert "database gone" not in body


def test_through_the_soap_endpoint(transaction: Transaction) -> None:
    """The transaction served by the SOAP 1.2 endpoint: envelope in, RegistryResponse out."""
    app = FastAPI()
    app.include_router(soap_router({"/xds/registry": [transaction]}, max_request_bytes=1 << 20))
    app.state.default_organization = LOCAL_ORGANIZATION_OID  # as the composition root sets it
    envelope = etree.Element(f"{{{SOAP}}}Envelope", nsmap={"soap": SOAP, "wsa": WSA})
    header = etree.SubElement(envelope, f"{{{SOAP}}}Header")
    etree.SubElement(header, f"{{{WSA}}}Action").text = REGISTER_DOCUMENT_SET
    etree.SubElement(
        header, f"{{{WSA}}}MessageID"
    ).text = "urn:uuid:5f3c2a5e-1b1e-4b4a-9a55-1d1f9e3c0a01"
    etree.SubElement(envelope, f"{{{SOAP}}}Body").append(
        submit_objects("iti42-RegisterDocumentSet-b-request.xml")
    )
    with TestClient(app) as client:
        reply = client.post(
            "/xds/registry",
            content=etree.tostring(envelope),
            headers={"Content-Type": "application/soap+xml; charset=utf-8"},
        )
    assert reply.status_code == 200, reply.text
    answer = etree.fromstring(reply.content)
    action = answer.find(f"{{{SOAP}}}Header/{{{WSA}}}Action")
    assert action is not None and action.text == RESPONSE_ACTIONS[REGISTER_DOCUMENT_SET]
    body = answer.find(f"{{{SOAP}}}Body/rs:RegistryResponse", NSMAP)
    assert body is not None
    assert status_and_errors(body) == (ResponseStatus.SUCCESS.value, [])


def test_submissions_are_audited_as_imports(engine: Engine, service: RegistryService) -> None:
    """110107 Import with event type ITI-42 before the answer: the submission set and
    patient of a registered submission (outcome 0); a refused one (outcome 4)."""
    trail = AuditTrail(engine, Settings(), render=render)
    transaction = register_document_set(service, Settings(), trail)
    body = submit_objects("iti42-RegisterDocumentSet-b-request.xml")
    sent = request(body)
    sent.client_address, sent.endpoint = "10.0.0.9", "http://kuva.test/xds/registry"
    assert status_and_errors(transaction.handle(sent).body)[0] == ResponseStatus.SUCCESS.value
    refused = request(submit_objects("invalid-iti41-pnr-association-to-self.xml"))
    assert status_and_errors(transaction.handle(refused).body)[0] == ResponseStatus.FAILURE.value
    with UnitOfWork(engine, write=False) as uow:
        records = list(reversed(uow.audit.list(event_id="110107", limit=10)))
    registered, failed = (etree.fromstring(r.message.encode()) for r in records)
    assert [r.outcome for r in records] == [0, 4]
    assert registered.find("EventIdentification/EventTypeCode").get("csd-code") == "ITI-42"  # type: ignore[union-attr]
    source, destination = registered.iter("ActiveParticipant")
    assert (source.get("UserID"), source.get("NetworkAccessPointID")) == (
        LOCAL_ORGANIZATION_OID,
        "10.0.0.9",
    )
    assert destination.get("UserID") == "http://kuva.test/xds/registry"
    patient, submission_set = registered.iter("ParticipantObjectIdentification")
    submission = ebrim.parse_submission(body).submission_set
    assert submission is not None
    assert patient.get("ParticipantObjectID") == submission.patient_id
    assert submission_set.get("ParticipantObjectID") == submission.unique_id
    assert failed.find("EventIdentification").get("EventOutcomeIndicator") == "4"  # type: ignore[union-attr]
