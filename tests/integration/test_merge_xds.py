"""A patient merge seen through XDS, against a real ``kuva serve`` on SQLite and
PostgreSQL (issue 6).

Studies of two Finnish test patients are stored with dcmtk's storescu and their
XDS-I.b manifests published with ``kuva xds publish``; python-hl7's ``mllp_send``
merges MERGED into SURVIVOR (ADT^A40). ITI-18 FindDocuments over SOAP for the
survivor then finds both manifests with the survivor's patientId (sourcePatientId
as submitted), the merged id finds nothing; ITI-43 returns the merged patient's
manifest and RAD-69, built from its evidence, its images. An A37 unlink puts
everything back. Merged again, the study's manifest published again is registered
under the survivor and replaces the one registered under the merged id.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest
from lxml.etree import _Element as Element

from kuva.index.database import make_engine
from kuva.index.uow import UnitOfWork
from kuva.model.xds import DocumentEntryScheme, PatientId, SlotName
from kuva.xds.namespaces import (
    NSMAP,
    REGISTRY_STORED_QUERY,
    RETRIEVE_DOCUMENT_SET,
    RETRIEVE_IMAGING_DOCUMENT_SET,
    q,
)
from tests.integration.test_xds import (
    OTHER,
    REPOSITORY_ID,
    SUCCESS,
    part10_dataset,
    rad69_request,
)
from tests.support.hl7 import MERGED, SURVIVOR, THIRD, Hl7Site, adt, mrg, msa, pid
from tests.support.peers import dcmtk_available
from tests.support.server import KuvaServer
from tests.support.synthetic import FINNISH_PIC_ISSUER
from tests.unit.test_ebrim import sample_payload
from tests.unit.test_repository import (
    answer_of,
    mtom_documents,
    retrieve_request,
    soap_envelope,
    status_and_errors,
)

pytestmark = [
    pytest.mark.dcmtk,
    pytest.mark.skipif(not dcmtk_available(), reason="dcmtk not installed"),
]

KEPT = PatientId(SURVIVOR, FINNISH_PIC_ISSUER)
GONE = PatientId(MERGED, FINNISH_PIC_ISSUER)


@dataclass(frozen=True)
class Found:
    """A DocumentEntry as ITI-18 answered it."""

    unique_id: str
    patient_id: str
    source_patient_id: str


@dataclass
class MergeSite:
    hl7: Hl7Site
    client: httpx.Client

    def post(self, path: str, body: bytes) -> tuple[Element, dict[str, bytes]]:
        response = self.client.post(
            self.hl7.server.http + path,
            content=body,
            headers={"content-type": "application/soap+xml; charset=UTF-8"},
        )
        assert response.status_code == 200, response.text
        return answer_of(response)

    def publish(self, study_uid: str) -> str:
        """The study's manifest published: its entryUUID."""
        published = self.hl7.server.kuva("xds", "publish", study_uid)
        entry = published.stdout.strip()
        assert entry.startswith("urn:uuid:"), published.stdout + published.stderr
        return entry

    def find_documents(self, patient: PatientId) -> dict[str, Found]:
        """ITI-18 FindDocuments (Approved) over SOAP: entryUUID -> what it says."""
        query = sample_payload("iti18-FindDocuments-request.xml")
        for value in query.iter(q("rim", "Value")):
            if value.text and "$patient_id$" in value.text:
                value.text = value.text.replace("$patient_id$", str(patient))
        payload, _ = self.post("/xds/registry", soap_envelope(REGISTRY_STORED_QUERY, query))
        assert payload.get("status") == SUCCESS
        found = {}
        for element in payload.iterfind("rim:RegistryObjectList/rim:ExtrinsicObject", NSMAP):
            identifiers = {
                e.get("identificationScheme"): e.get("value", "")
                for e in element.iterfind("rim:ExternalIdentifier", NSMAP)
            }
            source = element.findtext(
                f"rim:Slot[@name='{SlotName.SOURCE_PATIENT_ID}']/rim:ValueList/rim:Value",
                "",
                NSMAP,
            )
            found[element.get("id", "")] = Found(
                identifiers[DocumentEntryScheme.UNIQUE_ID],
                identifiers[DocumentEntryScheme.PATIENT_ID],
                source,
            )
        return found

    def merge(self, control: str) -> None:
        message = adt("A40", pid(SURVIVOR), mrg(MERGED), control=control, structure="ADT_A39")
        assert msa(self.hl7.mllp_send(message)) == ("AA", control)

    def unlink(self, control: str) -> None:
        message = adt("A37", pid(SURVIVOR), pid(MERGED), control=control)
        assert msa(self.hl7.mllp_send(message)) == ("AA", control)


@pytest.fixture
def site(
    kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path
) -> Iterator[MergeSite]:
    with httpx.Client(trust_env=False, timeout=30) as client:
        yield MergeSite(Hl7Site(kuva_server(), database_url, tmp_path), client)


def test_merged_patients_manifests_are_found_retrieved_and_unlinked(site: MergeSite) -> None:
    kept_study = site.hl7.store(SURVIVOR)
    merged_study = site.hl7.store(MERGED, n=3)
    kept = site.publish(kept_study)
    merged = site.publish(merged_study)
    assert set(site.find_documents(KEPT)) == {kept}
    assert set(site.find_documents(GONE)) == {merged}

    # --- A40: the survivor's query finds both manifests, as the survivor's
    site.merge("MERGE-XDS-1")
    found = site.find_documents(KEPT)
    assert set(found) == {kept, merged}
    assert {f.patient_id for f in found.values()} == {str(KEPT)}
    assert found[merged].source_patient_id == str(GONE)  # as submitted
    assert found[kept].source_patient_id == str(KEPT)
    assert site.find_documents(GONE) == {}  # no current patient

    # --- ITI-43: the merged patient's manifest, found by the survivor's query
    manifest_uid = found[merged].unique_id
    payload, parts = site.post(
        "/xds/repository",
        soap_envelope(
            RETRIEVE_DOCUMENT_SET, retrieve_request((REPOSITORY_ID, manifest_uid)), OTHER
        ),
    )
    assert status(payload) == (SUCCESS, [])
    manifest = pydicom.dcmread(io.BytesIO(mtom_documents(payload, parts)[manifest_uid]))
    (evidence,) = manifest.CurrentRequestedProcedureEvidenceSequence
    assert evidence.StudyInstanceUID == merged_study
    listed = [
        (merged_study, series.SeriesInstanceUID, item.ReferencedSOPInstanceUID)
        for series in evidence.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    ]
    assert len(listed) == 3

    # --- RAD-69 from the manifest's evidence: every image, as the survivor's now
    payload, parts = site.post(
        "/xds/imaging",
        soap_envelope(RETRIEVE_IMAGING_DOCUMENT_SET, rad69_request(listed), OTHER),
    )
    assert status(payload) == (SUCCESS, [])
    images = mtom_documents(payload, parts)
    assert sorted(images) == sorted(uid for _, _, uid in listed)
    for content in images.values():
        image = pydicom.dcmread(io.BytesIO(part10_dataset(content)), force=True)
        assert image.StudyInstanceUID == merged_study
        assert image.PatientID == SURVIVOR
        assert image.OriginalAttributesSequence[-1].ModifiedAttributesSequence[0].PatientID == (
            MERGED
        )
    # both disclosures name the patient as the index knows it now
    for interface in ("ITI-43", "RAD-69"):
        logged = [d for d in disclosures(site) if d[0] == interface]
        assert logged and {d[1] for d in logged} == {SURVIVOR}, interface

    # --- A37: everything goes back
    site.unlink("UNLINK-XDS-1")
    assert set(site.find_documents(KEPT)) == {kept}
    back = site.find_documents(GONE)
    assert set(back) == {merged}
    assert back[merged].patient_id == str(GONE)

    # --- merged again, the study registered again: its new manifest is registered
    # under the survivor's id and replaces (RPLC) the one registered under MERGED
    site.merge("MERGE-XDS-2")
    again = site.publish(merged_study)
    assert set(site.find_documents(KEPT)) == {kept, again}

    # --- A47: the survivor is known by a new identifier; its entries, registered
    # under the old one, are found by the new one and carry it
    change = adt("A47", pid(THIRD), mrg(SURVIVOR), control="A47-XDS", structure="ADT_A30")
    assert msa(site.hl7.mllp_send(change)) == ("AA", "A47-XDS")
    renamed = site.find_documents(PatientId(THIRD, FINNISH_PIC_ISSUER))
    assert set(renamed) == {kept, again}
    assert {f.patient_id for f in renamed.values()} == {str(PatientId(THIRD, FINNISH_PIC_ISSUER))}
    assert site.find_documents(KEPT) == {}


def status(payload: Element) -> tuple[str, list[tuple[str, str]]]:
    """Status and errors of the RegistryResponse of an ITI-43 / RAD-69 answer."""
    response = payload.find("rs:RegistryResponse", NSMAP)
    assert response is not None
    return status_and_errors(response)


def disclosures(site: MergeSite) -> list[tuple[str, str]]:
    """(interface, patient id) of each disclosure record."""
    engine = make_engine(site.hl7.database_url)
    try:
        with UnitOfWork(engine, write=False) as uow:
            return [(r.interface, r.patient_id) for r in uow.disclosures.list(limit=1000)]
    finally:
        engine.dispose()
