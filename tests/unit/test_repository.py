"""The XDS.b Document Repository (ITI-41, RAD-68, ITI-43), the disclosure log, and the
publication of a study's XDS-I.b manifest, on SQLite and PostgreSQL.

The NIST samples are filled in as the XDS Toolkit does (the test's patient, fresh
uniqueIds, see tests.unit.test_registry_service) and get the ``xdsb:Document``
elements their templates leave out. The raw MTOM bodies go through the SOAP
router as sent, only their patient ids replaced.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import io
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from lxml import etree
from lxml.etree import _Element as Element
from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import Engine, Table, func, select

from kuva.audit.message import render
from kuva.codec.part10 import Part10Rewriter, extract_attributes
from kuva.config import LOCAL_ORGANIZATION_OID, Settings
from kuva.index import schema
from kuva.index.group_commit import GroupCommitter
from kuva.index.repository import Disclosure
from kuva.index.uow import UnitOfWork
from kuva.model.xds import AvailabilityStatus, ObjectKind, PatientId, ResponseStatus
from kuva.services.audit import AuditTrail
from kuva.services.disclosure import (
    BASIS_NO_ACCESS_RULES,
    DisclosureLog,
    Handout,
    Interface,
    is_disclosure,
    recipient_of,
)
from kuva.services.imaging_document_source import ImagingDocumentSource, UnknownStudy
from kuva.services.ingest import IncomingInstance, IngestService
from kuva.services.manifest_metadata import DICOM_MIME_TYPE, ManifestPublishError
from kuva.services.manifest_publishing import ManifestPublisher
from kuva.services.registry import RegistryService
from kuva.services.repository import DocumentRequest, RepositoryService, study_instance_uid_of
from kuva.storage import blob_key
from kuva.storage.filesystem import FileBlobStore
from kuva.xds import ebrim
from kuva.xds.endpoint import soap_router
from kuva.xds.messages import SoapRequest, SoapResponse, Transaction
from kuva.xds.mtom import content_id_from_href, parse_mtom
from kuva.xds.namespaces import (
    NSMAP,
    PROVIDE_AND_REGISTER,
    RESPONSE_ACTIONS,
    RETRIEVE_DOCUMENT_SET,
    SOAP,
    WSA,
    XDSB,
    XOP,
    q,
)
from kuva.xds.repository import (
    provide_and_register,
    requesting_organization,
    retrieve_document_set,
)
from kuva.xds.schema import validate
from tests.support.synthetic import make_ct_series
from tests.support.xua import User, security_header, site_idp, verified
from tests.unit.test_ebrim import sample_payload
from tests.unit.test_registry_service import PATIENT, fill, new_oid

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "xds" / "samples"
SETTINGS = Settings()
REPOSITORY_ID = SETTINGS.xds.repository_unique_id
HOME = SETTINGS.xds.home_community_id
HOLDER = LOCAL_ORGANIZATION_OID  # the register holder on the embedded default
OTHER_ORGANIZATION = "1.2.246.10.12345678.10"
SUCCESS = ResponseStatus.SUCCESS.value
PARTIAL = ResponseStatus.PARTIAL_SUCCESS.value
FAILURE = ResponseStatus.FAILURE.value
CDA = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<ClinicalDocument xmlns="urn:hl7-org:v3">'
    b"<title>Thorax CT</title><component><section><text>Ei l\xc3\xb6yd\xc3\xb6ksi\xc3\xa4."
    b"</text></section></component></ClinicalDocument>"
)
SUBMISSION_SAMPLE = "iti42-RegisterDocumentSet-b-request.xml"  # one entry, symbolic id
SOAP_XML = "application/soap+xml; charset=UTF-8"


# ---------------------------------------------------------------------- wire helpers


def saml_security(organization: str) -> str:
    """A wsse:Security header with an XUA assertion naming ``organization``, signed
    by the identity provider every test server trusts (tests.support.xua)."""
    assertion = site_idp().assertion(User(organization_id=organization))
    return etree.tostring(security_header(assertion)).decode()


def soap_envelope(action: str, payload: Element | bytes, organization: str | None = None) -> bytes:
    """A SOAP 1.2 envelope with WS-Addressing (and an XUA assertion when asked)."""
    body = payload if isinstance(payload, bytes) else etree.tostring(payload)
    security = saml_security(organization) if organization is not None else ""
    return (
        f'<soap:Envelope xmlns:soap="{SOAP}" xmlns:wsa="{WSA}"><soap:Header>'
        f"<wsa:Action>{action}</wsa:Action>"
        f"<wsa:MessageID>urn:uuid:{uuid.uuid4()}</wsa:MessageID>{security}"
        f"</soap:Header><soap:Body>".encode()
        + body
        + b"</soap:Body></soap:Envelope>"
    )


def mtom_request(envelope: bytes, parts: Mapping[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    """An MTOM/XOP request body built by hand (XOP 1.0, RFC 2387): the envelope,
    then each part (Content-ID -> (media type, bytes)); its Content-Type."""
    boundary = f"MIMEBoundary_test_{uuid.uuid4().hex}"
    chunks = [
        f"--{boundary}\r\n"
        'Content-Type: application/xop+xml; charset=UTF-8; type="application/soap+xml"\r\n'
        "Content-Transfer-Encoding: binary\r\nContent-ID: <root.message@test>\r\n\r\n".encode(),
        envelope,
        b"\r\n",
    ]
    for content_id, (media_type, content) in parts.items():
        chunks += [
            f"--{boundary}\r\nContent-Type: {media_type}\r\n"
            f"Content-Transfer-Encoding: binary\r\nContent-ID: <{content_id}>\r\n\r\n".encode(),
            content,
            b"\r\n",
        ]
    chunks.append(f"--{boundary}--\r\n".encode())
    content_type = (
        f'multipart/related; boundary="{boundary}"; type="application/xop+xml"; '
        'start="<root.message@test>"; start-info="application/soap+xml"'
    )
    return b"".join(chunks), content_type


def with_documents(
    payload: Element, contents: Mapping[str, bytes], *, mtom: bool = False
) -> tuple[Element, dict[str, bytes]]:
    """``payload`` (a ProvideAndRegisterDocumentSetRequest) with an xdsb:Document per
    entry id, inline base64 or an xop:Include; the MTOM parts by Content-ID."""
    parts: dict[str, bytes] = {}
    for document_id, content in contents.items():
        element = etree.SubElement(payload, q("xdsb", "Document"))
        element.set("id", document_id)
        if mtom:
            content_id = f"{uuid.uuid4().hex}@test"
            include = etree.SubElement(element, f"{{{XOP}}}Include", nsmap={"xop": XOP})
            include.set("href", f"cid:{content_id}")
            parts[content_id] = content
        else:
            element.text = base64.b64encode(content).decode()
    return payload, parts


def entry_ids(payload: Element) -> list[str]:
    return [e.get("id", "") for e in payload.iter(q("rim", "ExtrinsicObject"))]


def unique_id_of(payload: Element, entry_id: str) -> str:
    for identifier in payload.iter(q("rim", "ExternalIdentifier")):
        if (
            identifier.get("identificationScheme")
            == ("urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab")
            and identifier.get("registryObject") == entry_id
        ):
            return identifier.get("value", "")
    raise AssertionError(f"no uniqueId for {entry_id}")


def wrapped(payload: Element) -> Element:
    """A Register sample's SubmitObjectsRequest as a Document Source's ITI-41 request:
    inside a ProvideAndRegisterDocumentSetRequest, without the slots a repository adds."""
    if payload.tag == q("xdsb", "ProvideAndRegisterDocumentSetRequest"):
        return payload
    wrapper = etree.Element(q("xdsb", "ProvideAndRegisterDocumentSetRequest"))
    wrapper.append(payload)
    for entry in wrapper.iter(q("rim", "ExtrinsicObject")):
        for slot in entry.findall(q("rim", "Slot")):
            if slot.get("name") in ("hash", "size", "repositoryUniqueId"):
                entry.remove(slot)
    return wrapper


def pnr(name: str = SUBMISSION_SAMPLE, **contents: bytes) -> Element:
    """A sample as a ProvideAndRegisterDocumentSetRequest, filled in, with documents
    (entry id -> content; by default the CDA for every entry)."""
    payload = wrapped(fill(sample_payload(name)))
    with_documents(payload, contents or dict.fromkeys(entry_ids(payload), CDA))
    return payload


def set_slot(payload: Element, entry_id: str, name: str, value: str) -> None:
    for entry in payload.iter(q("rim", "ExtrinsicObject")):
        if entry.get("id") == entry_id:
            slot = etree.Element(q("rim", "Slot"), name=name)
            etree.SubElement(
                etree.SubElement(slot, q("rim", "ValueList")), q("rim", "Value")
            ).text = value
            entry.insert(0, slot)


def retrieve_request(*documents: tuple[str, str] | tuple[str, str, str]) -> Element:
    """A RetrieveDocumentSetRequest: (repository, document[, home community]) each."""
    root = etree.Element(q("xdsb", "RetrieveDocumentSetRequest"), nsmap={"xdsb": XDSB})
    for document in documents:
        request = etree.SubElement(root, q("xdsb", "DocumentRequest"))
        if len(document) == 3:
            etree.SubElement(request, q("xdsb", "HomeCommunityId")).text = document[2]
        etree.SubElement(request, q("xdsb", "RepositoryUniqueId")).text = document[0]
        etree.SubElement(request, q("xdsb", "DocumentUniqueId")).text = document[1]
    return root


def status_and_errors(registry_response: Element) -> tuple[str, list[tuple[str, str]]]:
    errors = [
        (e.get("errorCode", ""), e.get("location", ""))
        for e in registry_response.iterfind("rs:RegistryErrorList/rs:RegistryError", NSMAP)
    ]
    return registry_response.get("status", ""), errors


def documents_of(response: SoapResponse) -> dict[str, bytes]:
    """DocumentUniqueId -> content of an ITI-43 answer made in-process."""
    by_cid = {a.content_id: b"".join(a.chunks()) for a in response.attachments}
    found: dict[str, bytes] = {}
    for answer in response.body.iterfind("xdsb:DocumentResponse", NSMAP):
        include = answer.find("xdsb:Document/xop:Include", NSMAP)
        assert include is not None
        cid = content_id_from_href(include.get("href", ""))
        found[answer.findtext("xdsb:DocumentUniqueId", "", NSMAP)] = by_cid[cid or ""]
    return found


def post(app: FastAPI, path: str, content: bytes, content_type: str = SOAP_XML) -> httpx.Response:
    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://kuva.test") as client:
            return await client.post(path, content=content, headers={"content-type": content_type})

    return asyncio.run(send())


def answer_of(response: httpx.Response) -> tuple[Element, dict[str, bytes]]:
    """The payload of a SOAP answer and its MTOM parts by Content-ID."""
    media = response.headers["content-type"]
    if media.startswith("multipart/related"):
        message = parse_mtom(response.content, media)
        envelope, parts = etree.fromstring(message.root), dict(message.parts)
    else:
        envelope, parts = etree.fromstring(response.content), {}
    body = envelope.find(f"{{{SOAP}}}Body")
    assert body is not None
    return body[0], parts


def mtom_documents(payload: Element, parts: Mapping[str, bytes]) -> dict[str, bytes]:
    """DocumentUniqueId -> content of a RetrieveDocumentSetResponse received as MTOM."""
    found: dict[str, bytes] = {}
    for answer in payload.iterfind("xdsb:DocumentResponse", NSMAP):
        include = answer.find("xdsb:Document/xop:Include", NSMAP)
        assert include is not None
        found[answer.findtext("xdsb:DocumentUniqueId", "", NSMAP)] = parts[
            content_id_from_href(include.get("href", "")) or ""
        ]
    return found


# ---------------------------------------------------------------------- fixtures


@dataclasses.dataclass
class Repo:
    engine: Engine
    blobs: FileBlobStore
    service: RepositoryService
    provide: Transaction
    retrieve: Transaction
    app: FastAPI

    def provide_request(
        self, payload: Element, parts: Mapping[str, bytes] | None = None
    ) -> SoapRequest:
        return SoapRequest(
            action=PROVIDE_AND_REGISTER,
            message_id="urn:uuid:1",
            body=payload,
            mtom=bool(parts),
            attachments=dict(parts or {}),
            client_organization=HOLDER,
        )

    def submit(self, payload: Element, parts: Mapping[str, bytes] | None = None) -> Element:
        assert not validate(payload), validate(payload)
        response = self.provide.handle(self.provide_request(payload, parts))
        assert response.action == RESPONSE_ACTIONS[PROVIDE_AND_REGISTER]
        assert not validate(response.body)
        return response.body

    def get(
        self, *documents: tuple[str, str] | tuple[str, str, str], organization: str | None = None
    ) -> SoapResponse:
        body = retrieve_request(*documents)
        response = self.retrieve.handle(
            SoapRequest(
                action=RETRIEVE_DOCUMENT_SET,
                message_id="urn:uuid:2",
                body=body,
                user=verified(organization) if organization is not None else None,
            )
        )
        assert response.action == RESPONSE_ACTIONS[RETRIEVE_DOCUMENT_SET]
        assert not validate(response.body), validate(response.body)
        return response


def repository_service(
    engine: Engine, blobs: FileBlobStore, disclosures: DisclosureLog | None = None
) -> RepositoryService:
    registry = RegistryService(
        engine, trusted_assigning_authorities=["1.2.246.21"], render=ebrim.render
    )
    return RepositoryService(
        engine,
        blobs,
        registry,
        repository_unique_id=REPOSITORY_ID,
        home_community_id=HOME,
        with_slots=ebrim.with_slots,
        disclosures=disclosures or DisclosureLog(engine),
    )


@pytest.fixture
def blobs(tmp_path: Path) -> Iterator[FileBlobStore]:
    store = FileBlobStore(tmp_path / "blobs")
    yield store
    store.sync_pool.shutdown()


@pytest.fixture
def repo(engine: Engine, blobs: FileBlobStore) -> Repo:
    service = repository_service(engine, blobs)
    provide = provide_and_register(service, SETTINGS)
    retrieve = retrieve_document_set(service, SETTINGS)
    app = FastAPI()
    app.include_router(soap_router({"/xds/repository": [provide, retrieve]}, 1 << 24))
    app.state.default_organization = HOLDER  # as the composition root sets it
    return Repo(engine, blobs, service, provide, retrieve, app)


def count(engine: Engine, table: Table) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def disclosures(engine: Engine) -> list[Disclosure]:
    with UnitOfWork(engine, write=False) as uow:
        return list(reversed(uow.disclosures.list()))


# ---------------------------------------------------------------------- ITI-41


def test_provide_and_register_stores_and_registers(repo: Repo) -> None:
    """The document is stored as a blob, its entry registered with the SHA-1, size and
    repositoryUniqueId the repository computed (ITI TF-2b 3.41.4.1.3)."""
    payload = pnr()
    (entry_id,) = entry_ids(payload)
    unique_id = unique_id_of(payload, entry_id)
    assert status_and_errors(repo.submit(payload)) == (SUCCESS, [])

    with UnitOfWork(repo.engine, write=False) as uow:
        stored = uow.documents.find([unique_id])[unique_id]
        (registered,) = uow.registry.find_by_unique_ids([unique_id])
        (xml,) = uow.registry.stored([registered.entry_uuid])
    assert stored.sha1 == hashlib.sha1(CDA).hexdigest()
    assert stored.sha256 == hashlib.sha256(CDA).hexdigest()
    assert (stored.size, stored.mime_type) == (len(CDA), "text/plain")
    assert (stored.organization_oid, stored.repository_unique_id) == (HOLDER, REPOSITORY_ID)
    assert (stored.patient_id, stored.patient_authority) == (PATIENT.id, PATIENT.authority)
    assert repo.blobs.path_of(stored.blob_key).read_bytes() == CDA
    assert (registered.hash, registered.size) == (stored.sha1, len(CDA))
    entry = etree.fromstring(xml.ebxml.encode())
    slots = {
        slot.get("name"): slot.findtext("rim:ValueList/rim:Value", "", NSMAP)
        for slot in entry.iterfind("rim:Slot", NSMAP)
    }
    assert slots["hash"] == stored.sha1
    assert slots["size"] == str(len(CDA))
    assert slots["repositoryUniqueId"] == REPOSITORY_ID


def test_submissions_through_the_endpoint_are_audited_as_imports(
    engine: Engine, blobs: FileBlobStore
) -> None:
    """110107 Import / ITI-41 before the answer (ITI TF-2b 3.41.5.1.2): the client
    (its organisation and address) as Source, the endpoint URL as Destination, the
    patient and the submission set; a refused submission has outcome 4."""
    trail = AuditTrail(engine, SETTINGS, render=render)
    service = repository_service(engine, blobs)
    app = FastAPI()
    app.include_router(
        soap_router({"/xds/repository": [provide_and_register(service, SETTINGS, trail)]}, 1 << 24)
    )
    app.state.default_organization = HOLDER
    payload = pnr()
    answer, _ = answer_of(
        post(app, "/xds/repository", soap_envelope(PROVIDE_AND_REGISTER, payload))
    )
    assert status_and_errors(answer) == (SUCCESS, [])
    refused = pnr()
    set_slot(refused, entry_ids(refused)[0], "size", str(len(CDA) + 1))
    answer, _ = answer_of(
        post(app, "/xds/repository", soap_envelope(PROVIDE_AND_REGISTER, refused))
    )
    assert status_and_errors(answer)[0] == ResponseStatus.FAILURE.value
    with UnitOfWork(engine, write=False) as uow:
        records = list(reversed(uow.audit.list(event_id="110107", limit=10)))
    assert [r.outcome for r in records] == [0, 4]
    root = etree.fromstring(records[0].message.encode())
    assert root.find("EventIdentification/EventTypeCode").get("csd-code") == "ITI-41"  # type: ignore[union-attr]
    source, destination = root.iter("ActiveParticipant")
    assert (source.get("UserID"), source.get("UserIsRequestor")) == (HOLDER, "true")
    assert source.get("NetworkAccessPointID")  # the client's address
    assert destination.get("UserID") == "http://kuva.test/xds/repository"
    patient, submission_set = root.iter("ParticipantObjectIdentification")
    submission = ebrim.parse_submission(payload).submission_set
    assert submission is not None
    assert patient.get("ParticipantObjectID") == submission.patient_id
    assert submission_set.get("ParticipantObjectID") == submission.unique_id


def test_a_document_by_mtom_is_stored_the_same(repo: Repo) -> None:
    wrapper = wrapped(fill(sample_payload(SUBMISSION_SAMPLE)))
    (entry_id,) = entry_ids(wrapper)
    wrapper, parts = with_documents(wrapper, {entry_id: CDA}, mtom=True)
    assert status_and_errors(repo.submit(wrapper, parts)) == (SUCCESS, [])
    unique_id = unique_id_of(wrapper, entry_id)
    assert documents_of(repo.get((REPOSITORY_ID, unique_id))) == {unique_id: CDA}


def test_every_entry_needs_its_document_and_every_document_its_entry(repo: Repo) -> None:
    """XDSMissingDocument / XDSMissingDocumentMetadata (ITI TF-3 Table 4.2.4.1-2);
    the metadata-only sample is refused as it is, accepted with its documents."""
    name = "iti41-ProvideAndRegister-soap12-request.xml"
    bare = fill(sample_payload(name))
    status, errors = status_and_errors(repo.submit(bare))
    assert status == FAILURE
    assert sorted(errors) == [
        ("XDSMissingDocument", "Document01"),
        ("XDSMissingDocument", "Document02"),
    ]
    extra = pnr(SUBMISSION_SAMPLE)
    with_documents(extra, {"NotAnEntry": b"x"})
    status, errors = status_and_errors(repo.submit(extra))
    assert (status, errors) == (FAILURE, [("XDSMissingDocumentMetadata", "NotAnEntry")])
    assert count(repo.engine, schema.xds_document) == 0
    assert count(repo.engine, schema.xds_object) == 0

    complete = pnr(name, Document01=CDA, Document02=b"second document")
    assert status_and_errors(repo.submit(complete)) == (SUCCESS, [])
    assert count(repo.engine, schema.xds_document) == 2


@pytest.mark.parametrize(
    ("slot", "value", "ok"),
    [
        ("hash", hashlib.sha1(CDA).hexdigest().upper(), True),
        ("hash", "da39a3ee5e6b4b0d3255bfef95601890afd80709", False),
        ("size", str(len(CDA)), True),
        ("size", str(len(CDA) + 1), False),
        ("repositoryUniqueId", "1.2.3.4", True),  # replaced by the repository's own
    ],
)
def test_hash_and_size_the_source_sent_must_be_right(
    repo: Repo, slot: str, value: str, ok: bool
) -> None:
    payload = pnr()
    (entry_id,) = entry_ids(payload)
    set_slot(payload, entry_id, slot, value)
    status, errors = status_and_errors(repo.submit(payload))
    if ok:
        assert (status, errors) == (SUCCESS, [])
        with UnitOfWork(repo.engine, write=False) as uow:
            (found,) = uow.documents.find([unique_id_of(payload, entry_id)]).values()
        assert found.repository_unique_id == REPOSITORY_ID
    else:
        assert (status, errors) == (FAILURE, [("XDSRepositoryMetadataError", entry_id)])
        assert count(repo.engine, schema.xds_document) == 0


def test_a_refused_registration_leaves_no_document_row(repo: Repo) -> None:
    """All or nothing: the registry's refusal rolls the repository's rows back; the
    blob written stays, content-addressed and referenced by nothing."""
    unknown = PatientId("010181-900C", "1.2.246.10.99999999.22.2026")
    wrapper = wrapped(fill(sample_payload(SUBMISSION_SAMPLE), unknown))
    content = b"an orphan " + uuid.uuid4().bytes
    with_documents(wrapper, dict.fromkeys(entry_ids(wrapper), content))
    status, errors = status_and_errors(repo.submit(wrapper))
    assert status == FAILURE
    assert ("XDSUnknownPatientId", errors[0][1]) in errors
    assert count(repo.engine, schema.xds_document) == 0
    assert count(repo.engine, schema.xds_object) == 0
    assert repo.blobs.exists(blob_key(hashlib.sha256(content).hexdigest()))


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("invalid-iti41-pnr-bad-classification-uplink.xml", "XDSRegistryMetadataError"),
        ("invalid-iti41-pnr-association-to-self.xml", "XDSRegistryMetadataError"),
        # A defect of its own (SOURCES.md, "Note added in kuva").
        ("iti41-PnR-KOS-manifest-request.xml", "XDSRegistryMetadataError"),
    ],
)
def test_invalid_samples_are_refused_with_the_registry_code(
    repo: Repo, name: str, code: str
) -> None:
    payload = pnr(name)
    status, errors = status_and_errors(repo.submit(payload))
    assert status == FAILURE
    assert errors and {c for c, _ in errors} == {code}
    assert count(repo.engine, schema.xds_document) == 0


def test_the_schema_invalid_sample_gets_a_repository_metadata_error(repo: Repo) -> None:
    data = (SAMPLES / "invalid-iti41-pnr-element-order-soap12.xml").read_bytes()
    root = etree.fromstring(data)
    header = root.find(f"{{{SOAP}}}Header")
    assert header is not None
    etree.SubElement(header, f"{{{WSA}}}MessageID").text = "urn:uuid:1"
    response = post(repo.app, "/xds/repository", etree.tostring(root))
    assert response.status_code == 200
    payload, _ = answer_of(response)
    status, errors = status_and_errors(payload)
    assert status == FAILURE
    assert errors and {c for c, _ in errors} == {"XDSRepositoryMetadataError"}


def test_replacement_deprecates_the_original(repo: Repo) -> None:
    original = pnr()
    (entry_id,) = entry_ids(original)
    assert status_and_errors(repo.submit(original))[0] == SUCCESS
    with UnitOfWork(repo.engine, write=False) as uow:
        (first,) = uow.registry.find_by_unique_ids([unique_id_of(original, entry_id)])
    replacement = fill(sample_payload("iti41-PnR-replace-RPLC-request.xml"))
    for element in replacement.iter():
        for attribute, value in element.attrib.items():
            if value == "$original_doc_uuid$":
                element.set(attribute, first.entry_uuid)
    with_documents(replacement, dict.fromkeys(entry_ids(replacement), b"corrected report"))
    assert status_and_errors(repo.submit(replacement)) == (SUCCESS, [])
    with UnitOfWork(repo.engine, write=False) as uow:
        (again,) = uow.registry.find([first.entry_uuid]).values()
    assert again.status is AvailabilityStatus.DEPRECATED
    # The repository still holds and serves the original.
    unique_id = unique_id_of(original, entry_id)
    assert documents_of(repo.get((REPOSITORY_ID, unique_id))) == {unique_id: CDA}


def test_the_same_document_again(repo: Repo) -> None:
    """A uniqueId resubmitted with the same bytes is accepted (one repository row);
    with other bytes it is refused by the registry (XDSNonIdenticalHash)."""
    payload = pnr()
    (entry_id,) = entry_ids(payload)
    unique_id = unique_id_of(payload, entry_id)
    assert status_and_errors(repo.submit(payload))[0] == SUCCESS

    def again(content: bytes) -> Element:
        wrapper = wrapped(fill(sample_payload(SUBMISSION_SAMPLE)))
        for identifier in wrapper.iter(q("rim", "ExternalIdentifier")):
            if identifier.get("identificationScheme") == (
                "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"
            ):
                identifier.set("value", unique_id)
        with_documents(wrapper, dict.fromkeys(entry_ids(wrapper), content))
        return repo.submit(wrapper)

    assert status_and_errors(again(CDA)) == (SUCCESS, [])
    status, errors = status_and_errors(again(b"other bytes"))
    assert status == FAILURE
    assert [code for code, _ in errors] == ["XDSNonIdenticalHash"]
    assert count(repo.engine, schema.xds_document) == 1
    assert documents_of(repo.get((REPOSITORY_ID, unique_id))) == {unique_id: CDA}


def raw_sample(name: str) -> tuple[bytes, str, str]:
    """A raw MIME body of the samples filled in as the toolkit does (the test's
    patient, fresh uniqueIds where the sample's are not OIDs); its Content-Type
    (SOURCES.md) and the mime type of its document."""
    replaced, content_type, mime_type = RAW_SAMPLES[name]
    data = (SAMPLES / name).read_bytes()
    cx = str(PATIENT).replace("&", "&amp;")
    for old in replaced:
        assert old.encode() in data
        new = cx if "^" in old else new_oid()
        data = data.replace(old.encode(), new.encode())
    return data, content_type, mime_type


RAW_SAMPLES = {
    "iti41-ProvideAndRegister-mtom-xop-http-body.txt": (
        ["SR7^^^&amp;1.2.260&amp;ISO", "1.42.20160705093311.6", "1.42.20160705093311.7"],
        "multipart/related;"
        ' boundary="MIMEBoundary_95b57d7287e4fa4b528a8f050c41f8ad829c20332f23b48d";'
        ' type="application/xop+xml"; start-info="application/soap+xml";'
        ' action="urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"',
        "text/plain",
    ),
    "rad68-iti41-PnR-KOS-captured-mime-body.txt": (
        ["IDS-AD027-a^^^&amp;1.3.6.1.4.1.21367.2005.13.20.1000&amp;ISO"],
        'multipart/related; boundary="uuid:376733a6-6a2d-4583-a687-04c08acf6a49+id=17";'
        ' type="application/xop+xml"; start-info="application/soap+xml";'
        ' action="urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"',
        DICOM_MIME_TYPE,
    ),
}


@pytest.mark.parametrize("name", sorted(RAW_SAMPLES))
def test_raw_mtom_samples_are_stored_and_retrieved(repo: Repo, name: str) -> None:
    """The MTOM sample and the captured RAD-68 submission (a KOS from an outside
    Imaging Document Source, inline base64): Success, and ITI-43 returns the bytes."""
    body, content_type, mime_type = raw_sample(name)
    response = post(repo.app, "/xds/repository", body, content_type)
    assert response.status_code == 200, response.text
    payload, _ = answer_of(response)
    assert status_and_errors(payload) == (SUCCESS, [])
    with UnitOfWork(repo.engine, write=False) as uow:
        (row,) = uow.documents.find(
            r[0] for r in uow.conn.execute(select(schema.xds_document.c.unique_id))
        ).values()
    assert row.mime_type == mime_type
    content = repo.blobs.path_of(row.blob_key).read_bytes()
    if mime_type == DICOM_MIME_TYPE:  # the KOS as received, not ingested as an instance
        assert dcmread(io.BytesIO(content)).SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.59"
        assert count(repo.engine, schema.instance) == 0
    else:
        assert content.startswith(b"This is my document.")
    request = soap_envelope(RETRIEVE_DOCUMENT_SET, retrieve_request((REPOSITORY_ID, row.unique_id)))
    answer = post(repo.app, "/xds/repository", request)
    assert answer.headers["content-type"].startswith("multipart/related")
    payload, parts = answer_of(answer)
    registry = payload.find("rs:RegistryResponse", NSMAP)
    assert registry is not None
    assert status_and_errors(registry) == (SUCCESS, [])
    assert mtom_documents(payload, parts) == {row.unique_id: content}


# ---------------------------------------------------------------------- ITI-43


def test_retrieve_outcomes(repo: Repo) -> None:
    """Success, PartialSuccess and Failure with the error per document (ITI TF-2b
    3.43.4.2.3; ITI TF-3 Table 4.2.4.1-2)."""
    payload = pnr()
    (entry_id,) = entry_ids(payload)
    unique_id = unique_id_of(payload, entry_id)
    repo.submit(payload)
    unknown = new_oid()

    def outcome(response: SoapResponse) -> tuple[str, list[tuple[str, str]]]:
        registry = response.body.find("rs:RegistryResponse", NSMAP)
        assert registry is not None
        return status_and_errors(registry)

    found = repo.get((REPOSITORY_ID, unique_id, HOME))
    assert outcome(found) == (SUCCESS, [])
    assert documents_of(found) == {unique_id: CDA}
    (answer,) = found.body.iterfind("xdsb:DocumentResponse", NSMAP)
    assert answer.findtext("xdsb:HomeCommunityId", "", NSMAP) == HOME
    assert answer.findtext("xdsb:mimeType", "", NSMAP) == "text/plain"
    assert found.attachments[0].length == len(CDA)

    partial = repo.get((REPOSITORY_ID, unique_id), (REPOSITORY_ID, unknown))
    assert outcome(partial) == (PARTIAL, [("XDSDocumentUniqueIdError", unknown)])
    assert documents_of(partial) == {unique_id: CDA}

    failed = repo.get(
        ("1.2.3.4", unique_id),
        (REPOSITORY_ID, unique_id, "urn:oid:1.2.3"),
        (REPOSITORY_ID, unknown),
    )
    assert outcome(failed) == (
        FAILURE,
        [
            ("XDSUnknownRepositoryId", unique_id),
            ("XDSUnknownCommunity", unique_id),
            ("XDSDocumentUniqueIdError", unknown),
        ],
    )
    assert failed.attachments == []


def test_a_missing_blob_is_a_repository_error(repo: Repo) -> None:
    content = b"vanishing " + uuid.uuid4().bytes
    wrapper = wrapped(fill(sample_payload(SUBMISSION_SAMPLE)))
    with_documents(wrapper, dict.fromkeys(entry_ids(wrapper), content))
    repo.submit(wrapper)
    unique_id = unique_id_of(wrapper, entry_ids(wrapper)[0])
    with UnitOfWork(repo.engine, write=False) as uow:
        key = uow.documents.find([unique_id])[unique_id].blob_key
    path = repo.blobs.path_of(key)
    path.chmod(0o644)
    path.unlink()
    response = repo.get((REPOSITORY_ID, unique_id))
    registry = response.body.find("rs:RegistryResponse", NSMAP)
    assert registry is not None
    assert status_and_errors(registry) == (FAILURE, [("XDSRepositoryError", unique_id)])
    assert disclosures(repo.engine) == []


def test_the_invalid_retrieve_sample_is_answered_with_a_failure(repo: Repo) -> None:
    for name, code in (
        ("invalid-iti43-retrieve-element-order-soap12.xml", "XDSRepositoryError"),
        ("iti43-RetrieveDocumentSet-soap12-request.xml", "XDSUnknownRepositoryId"),
    ):
        response = post(repo.app, "/xds/repository", (SAMPLES / name).read_bytes())
        assert response.status_code == 200, name
        payload, _ = answer_of(response)
        assert payload.tag == q("xdsb", "RetrieveDocumentSetResponse")
        registry = payload.find("rs:RegistryResponse", NSMAP)
        assert registry is not None
        status, errors = status_and_errors(registry)
        assert status == FAILURE
        assert errors and {c for c, _ in errors} == {code}, name


# ---------------------------------------------------------------------- disclosure log


def test_disclosures_of_iti43(repo: Repo) -> None:
    """One record per document handed to another organisation, or to an unknown one;
    none when the register holder itself retrieves."""
    payload = pnr("iti41-ProvideAndRegister-soap12-request.xml", Document01=CDA, Document02=b"2")
    repo.submit(payload)
    ids = [unique_id_of(payload, e) for e in ("Document01", "Document02")]
    both = [(REPOSITORY_ID, uid) for uid in ids]

    repo.get(*both, organization=HOLDER)
    repo.get(*both, organization=f"urn:oid:{HOLDER}")
    assert disclosures(repo.engine) == []

    repo.get(*both, organization=OTHER_ORGANIZATION)
    records = disclosures(repo.engine)
    assert [(r.recipient_organization, r.document_unique_id) for r in records] == [
        (OTHER_ORGANIZATION, ids[0]),
        (OTHER_ORGANIZATION, ids[1]),
    ]
    for record in records:
        assert record.register_holder == HOLDER
        assert (record.patient_id, record.patient_authority) == (PATIENT.id, PATIENT.authority)
        assert record.interface == "ITI-43"
        assert record.basis == BASIS_NO_ACCESS_RULES
        assert record.study_instance_uid is None
        assert record.disclosed_at.tzinfo is not None

    repo.get(both[0], (REPOSITORY_ID, new_oid()))  # no assertion: unknown recipient
    unknown = disclosures(repo.engine)[2:]
    assert [(r.recipient_organization, r.document_unique_id) for r in unknown] == [("", ids[0])]


def test_nothing_is_handed_out_without_its_record(engine: Engine, blobs: FileBlobStore) -> None:
    class Broken(DisclosureLog):
        def record(self, recipient: str, handouts: object, interface: Interface) -> int:
            raise RuntimeError("the index is gone")

    service = repository_service(engine, blobs, Broken(engine))
    provide = provide_and_register(service, SETTINGS)
    payload = pnr()
    provide.handle(
        SoapRequest(PROVIDE_AND_REGISTER, "urn:uuid:1", payload, client_organization=HOLDER)
    )
    unique_id = unique_id_of(payload, entry_ids(payload)[0])
    result = service.retrieve_document_set(
        [DocumentRequest(REPOSITORY_ID, unique_id)], recipient=OTHER_ORGANIZATION
    )
    assert result.status is ResponseStatus.FAILURE
    assert [(e.code, e.location) for e in result.errors] == [("XDSRepositoryError", unique_id)]
    assert result.documents == ()


def test_the_disclosure_rule() -> None:
    assert is_disclosure(OTHER_ORGANIZATION, HOLDER)
    assert is_disclosure("", HOLDER)
    assert not is_disclosure(HOLDER, HOLDER)
    assert recipient_of(None) == ""
    assert recipient_of("  ") == ""
    assert recipient_of(f" URN:OID:{HOLDER} ") == HOLDER
    assert len(recipient_of("1." * 100)) == 64
    request = SoapRequest(
        RETRIEVE_DOCUMENT_SET, "urn:uuid:1", etree.Element("x"), user=verified(OTHER_ORGANIZATION)
    )
    assert requesting_organization(request) == OTHER_ORGANIZATION
    # An assertion that was not verified (no user) is never taken.
    claimed = site_idp().assertion(User(organization_id=OTHER_ORGANIZATION))
    unverified = SoapRequest(
        RETRIEVE_DOCUMENT_SET,
        "urn:uuid:1",
        etree.Element("x"),
        security=security_header(claimed),
        client_organization=HOLDER,
    )
    assert requesting_organization(unverified) == HOLDER


def test_disclosure_records_look_up_the_patient_of_an_image(engine: Engine) -> None:
    log = DisclosureLog(engine, clock=lambda: datetime(2026, 5, 1, 8, 0, tzinfo=UTC))
    assert log.record(HOLDER, [Handout("1.2.3", HOLDER, "1.2.3.4")], Interface.RAD_69) == 0
    assert log.record("", [Handout("1.2.3.5", HOLDER, "9.9.9")], Interface.RAD_69) == 1
    (record,) = disclosures(engine)
    assert (record.patient_id, record.study_instance_uid, record.interface) == (
        "",
        "9.9.9",
        "RAD-69",
    )
    assert record.disclosed_at == datetime(2026, 5, 1, 8, 0, tzinfo=UTC)


# ---------------------------------------------------------------------- manifests


def store_datasets(
    ingest: IngestService, blobs: FileBlobStore, datasets: list[Dataset], organization: str
) -> None:
    """Archive data sets as STOW-RS would (kuva's file meta, then the data set)."""
    for ds in datasets:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        data = buffer.getvalue()
        writer = Part10Rewriter(blobs.open_writer())
        writer.write(data)
        header = dcmread(io.BytesIO(data), stop_before_pixels=True)
        outcome = ingest.store(
            IncomingInstance(
                extract_attributes(header, writer.transfer_syntax_uid),
                writer.blob,
                "TEST",
                organization,
            )
        )
        assert outcome.ok, outcome.message


@dataclasses.dataclass
class Imaging:
    engine: Engine
    blobs: FileBlobStore
    publisher: ManifestPublisher
    repository: RepositoryService
    ingest: IngestService


@pytest.fixture
def imaging(engine: Engine, blobs: FileBlobStore) -> Iterator[Imaging]:
    committer = GroupCommitter(engine)
    ingest = IngestService(blobs, committer)
    repository = repository_service(engine, blobs)
    publisher = ManifestPublisher(
        engine, ImagingDocumentSource(engine, SETTINGS), ingest, repository, blobs, SETTINGS
    )
    yield Imaging(engine, blobs, publisher, repository, ingest)
    committer.close()


def test_publish_a_manifest(imaging: Imaging) -> None:
    """The manifest is stored as an instance of the study and registered as a
    DocumentEntry whose document is that instance's blob; publishing again replaces
    it (RPLC) and the first one becomes Deprecated."""
    when = datetime(2026, 7, 1, 10, 30, 15)  # EEST, UTC+3
    series = make_ct_series(3, rows=8, cols=8, accession_number="A2026", study_datetime=when)
    study_uid = series[0].StudyInstanceUID
    store_datasets(imaging.ingest, imaging.blobs, series, HOLDER)
    now = datetime(2026, 7, 2, 12, 0, 0, tzinfo=UTC)

    first = imaging.publisher.publish_manifest(study_uid, now=now)
    assert (first.instances, first.replaced, first.study_instance_uid) == (3, (), study_uid)
    with UnitOfWork(imaging.engine, write=False) as uow:
        document = uow.documents.find([first.document_unique_id])[first.document_unique_id]
        instance = uow.instances.get(first.document_unique_id)
        (entry,) = uow.registry.find([first.entry_uuid]).values()
        (stored,) = uow.registry.stored([first.entry_uuid])
        assert uow.registry.find([first.submission_set_uuid])
    assert instance is not None and instance.blob_key == document.blob_key
    assert (document.mime_type, document.study_instance_uid) == (DICOM_MIME_TYPE, study_uid)
    assert (document.organization_oid, document.patient_authority) == (HOLDER, "1.2.246.21")
    content = imaging.blobs.path_of(document.blob_key).read_bytes()
    assert hashlib.sha1(content).hexdigest() == document.sha1 == entry.hash
    manifest = dcmread(io.BytesIO(content))
    assert len(manifest.ContentSequence) == 3
    # one offset for every date and time: the study's (Helsinki, summer), and the
    # manifest's own creation in it (12:00 UTC is 15:00 there)
    assert manifest.TimezoneOffsetFromUTC == "+0300"
    assert (manifest.StudyDate, manifest.StudyTime) == ("20260701", "103015")
    assert (manifest.ContentDate, manifest.ContentTime) == ("20260702", "150000")
    assert manifest.SOPInstanceUID == first.document_unique_id
    assert entry.kind is ObjectKind.DOCUMENT_ENTRY
    assert entry.patient == PatientId(series[0].PatientID, "1.2.246.21")

    xml = etree.fromstring(stored.ebxml.encode())
    slots = {
        slot.get("name"): [v.text or "" for v in slot.iterfind("rim:ValueList/rim:Value", NSMAP)]
        for slot in xml.iterfind("rim:Slot", NSMAP)
    }
    assert slots["urn:ihe:iti:xds:2013:referenceIdList"] == [
        "A2026^^^^urn:ihe:iti:xds:2013:accession",
        f"{study_uid}^^^^urn:ihe:iti:xds:2016:studyInstanceUID",
    ]
    assert slots["serviceStartTime"] == ["20260701073015"]
    assert slots["creationTime"] == ["20260702120000"]
    assert slots["repositoryUniqueId"] == [REPOSITORY_ID]
    assert xml.get("mimeType") == DICOM_MIME_TYPE
    codes = {
        c.get("classificationScheme"): (
            c.get("nodeRepresentation"),
            c.findtext("rim:Slot/rim:ValueList/rim:Value", "", NSMAP),
        )
        for c in xml.iterfind("rim:Classification", NSMAP)
    }
    assert codes["urn:uuid:a09d5840-386c-46f2-b5ad-9c3699a4309d"] == (
        "1.2.840.10008.5.1.4.1.1.88.59",
        "1.2.840.10008.2.6.1",
    )
    assert codes["urn:uuid:2c6b8cb7-8b2a-4051-b291-b1ae6a575ef4"] == ("CT", "1.2.840.10008.2.16.4")
    assert study_instance_uid_of(slots["urn:ihe:iti:xds:2013:referenceIdList"]) == study_uid

    # ITI-43 hands out the manifest as stored.
    result = imaging.repository.retrieve_document_set(
        [DocumentRequest(REPOSITORY_ID, first.document_unique_id)], recipient=HOLDER
    )
    assert b"".join(result.documents[0].chunks()) == content

    second = imaging.publisher.publish_manifest(study_uid)
    assert second.replaced == (first.entry_uuid,)
    assert second.instances == 3  # the first manifest is not listed
    with UnitOfWork(imaging.engine, write=False) as uow:
        statuses = {
            u: o.status for u, o in uow.registry.find([first.entry_uuid, second.entry_uuid]).items()
        }
    assert statuses == {
        first.entry_uuid: AvailabilityStatus.DEPRECATED,
        second.entry_uuid: AvailabilityStatus.APPROVED,
    }


def test_a_manifest_needs_an_oid_issuer(imaging: Imaging) -> None:
    series = make_ct_series(1, rows=8, cols=8, patient_id="020292-9188")
    for ds in series:
        ds.IssuerOfPatientID = "KANTA"
    store_datasets(imaging.ingest, imaging.blobs, series, HOLDER)
    with pytest.raises(ManifestPublishError, match=r"\(0010,0021\) not an OID"):
        imaging.publisher.publish_manifest(series[0].StudyInstanceUID)
    with pytest.raises(UnknownStudy):
        imaging.publisher.publish_manifest("1.2.3.4.5")
    assert count(imaging.engine, schema.xds_object) == 0
    assert count(imaging.engine, schema.instance) == 1  # nothing stored for the manifest
