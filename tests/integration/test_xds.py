"""XDS end to end against a real ``kuva serve``, on SQLite and PostgreSQL.

A study of a Finnish test patient (Issuer of Patient ID 1.2.246.21) is stored with
dcmtk's storescu and its XDS-I.b manifest published with ``kuva xds publish``.
Imaging reports (small synthetic CDA documents) go in by ITI-41 as MTOM (a
multipart body the test writes itself) and with inline base64, and by ITI-42; ITI-43
returns the report and the manifest (read with pydicom: it lists every instance),
RAD-69 the whole study and a single instance, data sets byte for byte as sent; a
replacement (RPLC) deprecates the original; the disclosure log holds one record per
document handed to another organisation, none for the register holder's own
requests (nor for requests without an XUA assertion, which act for the local
organisation on the embedded default). zeep retrieves a report
as an independent SOAP client.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
import requests
import zeep
from lxml import etree
from lxml.etree import _Element as Element
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy import Engine

from kuva.config import LOCAL_ORGANIZATION_OID, Settings
from kuva.index.database import make_engine
from kuva.index.repository import Disclosure
from kuva.index.uow import UnitOfWork
from kuva.model.xds import AvailabilityStatus, ObjectKind, PatientId
from kuva.xds.namespaces import (
    NSMAP,
    PROVIDE_AND_REGISTER,
    REGISTER_DOCUMENT_SET,
    REGISTRY_STORED_QUERY,
    RETRIEVE_DOCUMENT_SET,
    RETRIEVE_IMAGING_DOCUMENT_SET,
    q,
)
from tests.support.archive import dataset_bytes
from tests.support.peers import LOOPBACK, dcmtk_available, storescu
from tests.support.server import KuvaServer
from tests.support.synthetic import (
    DEFAULT_PATIENT_ID,
    FINNISH_LETTERS_PATIENT_NAME,
    FINNISH_PIC_ISSUER,
    make_ct_series,
    write_series,
)
from tests.unit.test_ebrim import sample_payload
from tests.unit.test_registry_service import fill, new_oid
from tests.unit.test_repository import (
    answer_of,
    entry_ids,
    mtom_documents,
    mtom_request,
    retrieve_request,
    soap_envelope,
    status_and_errors,
    unique_id_of,
    with_documents,
    wrapped,
)

pytestmark = [
    pytest.mark.dcmtk,
    pytest.mark.skipif(not dcmtk_available(), reason="dcmtk not installed"),
]

SETTINGS = Settings()
REPOSITORY_ID = SETTINGS.xds.repository_unique_id
IMAGING_SOURCE_ID = SETTINGS.xds.imaging_source_unique_id
HOLDER = LOCAL_ORGANIZATION_OID  # the register holder on the embedded default
OTHER = "1.2.246.10.12345678.10"
PATIENT = PatientId(DEFAULT_PATIENT_ID, FINNISH_PIC_ISSUER)
ACCESSION = "T2026000042"
SUCCESS = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"
FAILURE = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Failure"
WSDL = Path(__file__).resolve().parents[1] / "data" / "xds" / "wsdl" / "iti43.wsdl"
BINDING = "{urn:ihe:iti:xds-b:2007}DocumentRepository_Binding_Soap12"


def cda(title: str) -> bytes:
    """A small synthetic CDA R2 imaging report (no CR/LF at either end)."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<ClinicalDocument xmlns="urn:hl7-org:v3">'
        '<typeId root="2.16.840.1.113883.1.3" extension="POCD_HD000040"/>'
        f'<id root="{new_oid()}"/><title>{title}</title>'
        '<recordTarget><patientRole><id root="1.2.246.21" extension="010181-900C"/>'
        "</patientRole></recordTarget>"
        "<component><structuredBody><component><section><text>"
        "Keuhkoissa ei löydöksiä.</text></section></component></structuredBody></component>"
        "</ClinicalDocument>"
    ).encode()


@dataclass
class Xds:
    server: KuvaServer
    engine: Engine
    client: httpx.Client
    study_uid: str
    sent: dict[str, Path]  # SOP Instance UID -> the file sent
    series: dict[str, list[str]]  # Series Instance UID -> SOP Instance UIDs

    def post(
        self, path: str, body: bytes, content_type: str = "application/soap+xml; charset=UTF-8"
    ) -> tuple[Element, dict[str, bytes]]:
        response = self.client.post(
            self.server.http + path, content=body, headers={"content-type": content_type}
        )
        assert response.status_code == 200, response.text
        return answer_of(response)

    def status(self, payload: Element) -> tuple[str, list[tuple[str, str]]]:
        registry = payload if payload.tag == q("rs", "RegistryResponse") else None
        registry = registry if registry is not None else payload.find("rs:RegistryResponse", NSMAP)
        assert registry is not None
        return status_and_errors(registry)

    def disclosures(self) -> list[Disclosure]:
        with UnitOfWork(self.engine, write=False) as uow:
            return list(reversed(uow.disclosures.list(limit=10_000)))


@pytest.fixture
def xds(kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path) -> Iterator[Xds]:
    server = kuva_server()
    study_uid = pydicom.uid.generate_uid()
    sent: dict[str, Path] = {}
    series: dict[str, list[str]] = {}
    files: list[Path] = []
    for number, size in ((1, 3), (2, 2)):
        datasets = make_ct_series(
            size,
            rows=16,
            cols=16,
            patient_id=DEFAULT_PATIENT_ID,
            patient_name=FINNISH_LETTERS_PATIENT_NAME,
            study_uid=study_uid,
            accession_number=ACCESSION,
            series_number=number,
            seed=number,
        )
        paths = write_series(datasets, tmp_path / f"series{number}")
        series[datasets[0].SeriesInstanceUID] = [ds.SOPInstanceUID for ds in datasets]
        sent.update({ds.SOPInstanceUID: p for ds, p in zip(datasets, paths, strict=True)})
        files.extend(paths)
    result = storescu(files, LOOPBACK, server.dicom_port, aec=server.ae_title)
    assert result.returncode == 0, result.stdout + result.stderr
    engine = make_engine(database_url)
    with httpx.Client(trust_env=False, timeout=30) as client:
        yield Xds(server, engine, client, study_uid, sent, series)
    engine.dispose()


def rad69_request(documents: list[tuple[str, str, str]]) -> Element:
    """(study, series, SOP Instance UID) each, Explicit VR Little Endian requested."""
    root = etree.Element(q("xdsi", "RetrieveImagingDocumentSetRequest"), nsmap=NSMAP)
    studies: dict[str, Element] = {}
    for study_uid, series_uid, sop_uid in documents:
        if study_uid not in studies:
            studies[study_uid] = etree.SubElement(
                root, q("xdsi", "StudyRequest"), studyInstanceUID=study_uid
            )
        series = studies[study_uid].find(
            f"xdsi:SeriesRequest[@seriesInstanceUID='{series_uid}']", NSMAP
        )
        if series is None:
            series = etree.SubElement(
                studies[study_uid], q("xdsi", "SeriesRequest"), seriesInstanceUID=series_uid
            )
        request = etree.SubElement(series, q("xdsb", "DocumentRequest"))
        etree.SubElement(request, q("xdsb", "RepositoryUniqueId")).text = IMAGING_SOURCE_ID
        etree.SubElement(request, q("xdsb", "DocumentUniqueId")).text = sop_uid
    syntaxes = etree.SubElement(root, q("xdsi", "TransferSyntaxUIDList"))
    etree.SubElement(syntaxes, q("xdsi", "TransferSyntaxUID")).text = ExplicitVRLittleEndian
    return root


def part10_dataset(content: bytes) -> bytes:
    assert content[128:132] == b"DICM"
    return content[144 + int.from_bytes(content[140:144], "little") :]


def zeep_retrieve(url: str, unique_id: str) -> Any:
    session = requests.Session()
    session.trust_env = False  # loopback: no proxies from the environment
    client: Any = zeep.Client  # zeep is untyped
    transport: Any = zeep.Transport
    service = client(str(WSDL), transport=transport(session=session)).create_service(BINDING, url)
    return service.DocumentRepository_RetrieveDocumentSet(
        DocumentRequest=[{"RepositoryUniqueId": REPOSITORY_ID, "DocumentUniqueId": unique_id}]
    )


def test_xds_end_to_end(xds: Xds) -> None:
    # --- the manifest, published by the operator's command
    published = xds.server.kuva("xds", "publish", xds.study_uid)
    manifest_entry = published.stdout.strip()
    assert manifest_entry.startswith("urn:uuid:"), published.stdout + published.stderr
    with UnitOfWork(xds.engine, write=False) as uow:
        (registered,) = uow.registry.find([manifest_entry]).values()
        manifest_uid = registered.unique_id
        assert manifest_uid is not None
        (manifest_row,) = uow.documents.find([manifest_uid]).values()
    assert registered.kind is ObjectKind.DOCUMENT_ENTRY
    assert registered.patient == PATIENT
    assert manifest_row.study_instance_uid == xds.study_uid

    # --- ITI-41 by MTOM: a raw multipart body built here
    report = cda("Thorax CT")
    payload = wrapped(fill(sample_payload("iti42-RegisterDocumentSet-b-request.xml")))
    (report_entry,) = entry_ids(payload)
    report_uid = unique_id_of(payload, report_entry)
    payload, parts = with_documents(payload, {report_entry: report}, mtom=True)
    envelope = soap_envelope(PROVIDE_AND_REGISTER, payload)
    body, content_type = mtom_request(
        envelope, {cid: ("text/xml", content) for cid, content in parts.items()}
    )
    answer, _ = xds.post("/xds/repository", body, content_type)
    assert xds.status(answer) == (SUCCESS, [])

    # --- ITI-41 with inline base64
    second_report = cda("Thorax CT, addendum")
    inline = wrapped(fill(sample_payload("iti42-RegisterDocumentSet-b-request.xml")))
    (inline_entry,) = entry_ids(inline)
    with_documents(inline, {inline_entry: second_report})
    answer, _ = xds.post("/xds/repository", soap_envelope(PROVIDE_AND_REGISTER, inline))
    assert xds.status(answer) == (SUCCESS, [])
    second_uid = unique_id_of(inline, inline_entry)

    # --- ITI-42: a report another repository stores, registered here
    registered_elsewhere = fill(sample_payload("iti42-RegisterDocumentSet-b-request.xml"))
    answer, _ = xds.post(
        "/xds/registry", soap_envelope(REGISTER_DOCUMENT_SET, registered_elsewhere)
    )
    assert xds.status(answer) == (SUCCESS, [])

    # --- ITI-43: the report and the manifest, to another organisation
    retrieve = retrieve_request((REPOSITORY_ID, report_uid), (REPOSITORY_ID, manifest_uid))
    answer, parts = xds.post(
        "/xds/repository", soap_envelope(RETRIEVE_DOCUMENT_SET, retrieve, OTHER)
    )
    assert xds.status(answer) == (SUCCESS, [])
    documents = mtom_documents(answer, parts)
    assert documents[report_uid] == report
    manifest = pydicom.dcmread(io.BytesIO(documents[manifest_uid]))
    assert manifest.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.59"
    assert manifest.ConceptNameCodeSequence[0].CodeValue == "113030"
    (evidence,) = manifest.CurrentRequestedProcedureEvidenceSequence
    listed = {
        item.SeriesInstanceUID: [ref.ReferencedSOPInstanceUID for ref in item.ReferencedSOPSequence]
        for item in evidence.ReferencedSeriesSequence
    }
    assert listed == xds.series
    assert {item.RetrieveLocationUID for item in evidence.ReferencedSeriesSequence} == {
        IMAGING_SOURCE_ID
    }
    records = xds.disclosures()
    assert [(r.recipient_organization, r.document_unique_id, r.interface) for r in records] == [
        (OTHER, report_uid, "ITI-43"),
        (OTHER, manifest_uid, "ITI-43"),
    ]
    assert records[1].study_instance_uid == xds.study_uid
    assert {(r.patient_id, r.patient_authority, r.register_holder) for r in records} == {
        (PATIENT.id, PATIENT.authority, HOLDER)
    }

    # The register holder's own requests are no disclosure, nor are those without an
    # XUA assertion: on plain HTTP they act for [http] organization, on the embedded
    # default the local organisation, the holder (kuva.web.identity).
    retrieve = retrieve_request((REPOSITORY_ID, second_uid))
    answer, parts = xds.post(
        "/xds/repository", soap_envelope(RETRIEVE_DOCUMENT_SET, retrieve, HOLDER)
    )
    assert mtom_documents(answer, parts) == {second_uid: second_report}
    assert len(xds.disclosures()) == 2
    answer, parts = xds.post("/xds/repository", soap_envelope(RETRIEVE_DOCUMENT_SET, retrieve))
    assert mtom_documents(answer, parts) == {second_uid: second_report}
    assert len(xds.disclosures()) == 2

    # --- RAD-69: the whole study, then one instance; data sets as sent
    everything = [
        (xds.study_uid, series_uid, sop_uid)
        for series_uid, sop_uids in xds.series.items()
        for sop_uid in sop_uids
    ]
    answer, parts = xds.post(
        "/xds/imaging",
        soap_envelope(RETRIEVE_IMAGING_DOCUMENT_SET, rad69_request(everything), OTHER),
    )
    assert xds.status(answer) == (SUCCESS, [])
    images = mtom_documents(answer, parts)
    assert sorted(images) == sorted(xds.sent)
    for sop_uid, content in images.items():
        assert part10_dataset(content) == dataset_bytes(xds.sent[sop_uid])
    one = everything[-1]
    answer, parts = xds.post(
        "/xds/imaging", soap_envelope(RETRIEVE_IMAGING_DOCUMENT_SET, rad69_request([one]), HOLDER)
    )
    assert xds.status(answer) == (SUCCESS, [])
    (content,) = mtom_documents(answer, parts).values()
    assert part10_dataset(content) == dataset_bytes(xds.sent[one[2]])
    rad69 = [r for r in xds.disclosures() if r.interface == "RAD-69"]
    assert sorted(r.document_unique_id for r in rad69) == sorted(xds.sent)  # not the holder's
    assert {(r.recipient_organization, r.patient_id, r.patient_authority) for r in rad69} == {
        (OTHER, PATIENT.id, PATIENT.authority)
    }
    assert {r.study_instance_uid for r in rad69} == {xds.study_uid}

    # --- replacement: the MTOM report is replaced, the original becomes Deprecated
    with UnitOfWork(xds.engine, write=False) as uow:
        (original,) = uow.registry.find_by_unique_ids([report_uid])
    replacement = fill(sample_payload("iti41-PnR-replace-RPLC-request.xml"))
    for element in replacement.iter():
        for attribute, value in element.attrib.items():
            if value == "$original_doc_uuid$":
                element.set(attribute, original.entry_uuid)
    with_documents(replacement, dict.fromkeys(entry_ids(replacement), cda("Thorax CT, corrected")))
    answer, _ = xds.post("/xds/repository", soap_envelope(PROVIDE_AND_REGISTER, replacement))
    assert xds.status(answer) == (SUCCESS, [])
    with UnitOfWork(xds.engine, write=False) as uow:
        (after,) = uow.registry.find([original.entry_uuid]).values()
        replacements = uow.registry.find_by_unique_ids(
            [unique_id_of(replacement, entry_ids(replacement)[0])]
        )
    assert after.status is AvailabilityStatus.DEPRECATED
    assert [r.status for r in replacements] == [AvailabilityStatus.APPROVED]
    approved = find_documents(xds)  # ITI-18 FindDocuments, Approved only
    assert original.entry_uuid not in approved
    assert replacements[0].entry_uuid in approved
    assert manifest_entry in approved
    # ITI-18 GetRelatedDocuments: the replaced entry and its replacement, by RPLC.
    assert related_documents(xds, original.entry_uuid) == {
        original.entry_uuid,
        replacements[0].entry_uuid,
    }

    # --- an unknown document for another organisation: Failure, nothing recorded
    unknown = new_oid()
    before = len(xds.disclosures())
    retrieve = retrieve_request((REPOSITORY_ID, unknown), (REPOSITORY_ID, "1.2.3"))
    answer, parts = xds.post(
        "/xds/repository", soap_envelope(RETRIEVE_DOCUMENT_SET, retrieve, OTHER)
    )
    assert xds.status(answer) == (
        FAILURE,
        [("XDSDocumentUniqueIdError", unknown), ("XDSDocumentUniqueIdError", "1.2.3")],
    )
    assert parts == {}
    assert len(xds.disclosures()) == before

    # --- zeep, an independent SOAP client, retrieves the inline report over MTOM
    result = zeep_retrieve(xds.server.http + "/xds/repository", second_uid)
    assert result.RegistryResponse.status == SUCCESS
    (document,) = result.DocumentResponse
    assert (document.DocumentUniqueId, document.Document) == (second_uid, second_report)


def related_documents(xds: Xds, entry_uuid: str) -> set[str]:
    """entryUUIDs ITI-18 GetRelatedDocuments answers for ``entry_uuid`` (LeafClass)."""
    query = sample_payload("iti18-GetRelatedDocuments-request.xml")
    for value in query.iter(q("rim", "Value")):
        if value.text and "urn:uuid:d90e5407" in value.text:
            value.text = f"'{entry_uuid}'"
    response = xds.client.post(
        xds.server.http + "/xds/registry",
        content=soap_envelope(REGISTRY_STORED_QUERY, query),
        headers={"content-type": "application/soap+xml; charset=UTF-8"},
    )
    assert response.status_code == 200, response.text
    payload, _ = answer_of(response)
    assert payload.get("status") == SUCCESS, response.text
    return {
        element.get("id", "")
        for element in payload.iterfind("rim:RegistryObjectList/rim:ExtrinsicObject", NSMAP)
    }


def find_documents(xds: Xds) -> set[str]:
    """entryUUIDs of the patient's Approved DocumentEntries by ITI-18 FindDocuments."""
    query = sample_payload("iti18-FindDocuments-request.xml")
    for value in query.iter(q("rim", "Value")):
        if value.text and "$patient_id$" in value.text:
            value.text = value.text.replace("$patient_id$", str(PATIENT))
    response = xds.client.post(
        xds.server.http + "/xds/registry",
        content=soap_envelope(REGISTRY_STORED_QUERY, query),
        headers={"content-type": "application/soap+xml; charset=UTF-8"},
    )
    assert response.status_code == 200, response.text
    payload, _ = answer_of(response)
    assert payload.get("status") == SUCCESS
    return {
        element.get("id", "")
        for element in payload.iterfind("rim:RegistryObjectList/rim:ExtrinsicObject", NSMAP)
    }
