"""QIDO-RS (PS3.18 10.6) against a running kuva with dicomweb-client and raw HTTP."""

from __future__ import annotations

import httpx
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import CTImageStorage, SecondaryCaptureImageStorage

from tests.support.query_data import ALICE_ID, BOB_ID, FINNISH_NAME, Archive


def client(archive: Archive) -> DICOMwebClient:
    return DICOMwebClient(url=f"{archive.server.http}/dicom-web")


def value(result: dict[str, object], tag: str) -> object:
    element = result[tag]
    assert isinstance(element, dict)
    values = element.get("Value")
    return values[0] if values else None


def test_search_for_studies(archive: Archive) -> None:
    web = client(archive)
    studies = web.search_for_studies(search_filters={"PatientID": ALICE_ID})
    accessions = {value(s, "00080050") for s in studies}
    assert accessions == {"ACC001", "ACC002"}
    mr = next(s for s in studies if value(s, "00080050") == "ACC002")
    assert value(mr, "00201208") == 3  # NumberOfStudyRelatedInstances
    assert set(mr["00080061"]["Value"]) == {"MR", "OT"}  # type: ignore[index]
    assert value(mr, "00100010") == {"Alphabetic": FINNISH_NAME}
    assert str(value(mr, "00081190")).endswith(f"/dicom-web/studies/{value(mr, '0020000D')}")


def test_sop_classes_in_study_and_instance_availability(archive: Archive) -> None:
    web = client(archive)
    studies = web.search_for_studies(search_filters={"PatientID": ALICE_ID})
    by_accession = {value(s, "00080050"): s for s in studies}
    mr, ct = by_accession["ACC002"], by_accession["ACC001"]
    assert mr["00080062"]["vr"] == "UI"  # type: ignore[index]
    assert set(mr["00080062"]["Value"]) == {CTImageStorage, SecondaryCaptureImageStorage}  # type: ignore[index]
    assert ct["00080062"]["Value"] == [CTImageStorage]  # type: ignore[index]
    assert {value(s, "00080056") for s in studies} == {"ONLINE"}
    # asked for by tag, and matched on
    found = web.search_for_studies(
        search_filters={"00080062": SecondaryCaptureImageStorage}, fields=["00080062"]
    )
    assert [value(s, "00080050") for s in found] == ["ACC002"]
    instances = web.search_for_instances(study_instance_uid=value(mr, "0020000D"))
    assert len(instances) == 3
    assert {value(i, "00080056") for i in instances} == {"ONLINE"}


def test_same_matching_as_c_find(archive: Archive) -> None:
    web = client(archive)
    by_name = web.search_for_studies(search_filters={"PatientName": "äijälä*"})
    assert len(by_name) == 2
    by_date = web.search_for_studies(search_filters={"StudyDate": "20240101-20240331"})
    assert [value(s, "0020000D") for s in by_date] == [archive.studies["ct"][0].StudyInstanceUID]
    by_tag = web.search_for_studies(search_filters={"00100020": BOB_ID})
    assert len(by_tag) == 1
    by_modality = web.search_for_studies(search_filters={"ModalitiesInStudy": "MR"})
    assert [value(s, "00080050") for s in by_modality] == ["ACC002"]


def test_series_and_instances(archive: Archive) -> None:
    web = client(archive)
    study = archive.studies["mr"][0].StudyInstanceUID
    series = web.search_for_series(study_instance_uid=study)
    assert {value(s, "00080060") for s in series} == {"MR", "OT"}
    mr_series = archive.studies["mr"][0].SeriesInstanceUID
    instances = web.search_for_instances(study_instance_uid=study, series_instance_uid=mr_series)
    assert {value(i, "00080018") for i in instances} == {
        ds.SOPInstanceUID for ds in archive.studies["mr"] if ds.Modality == "MR"
    }
    everything = web.search_for_instances(
        study_instance_uid=study, series_instance_uid=mr_series, fields=["all"]
    )
    assert all("00180050" in i for i in everything)  # SliceThickness, from the index JSON
    assert all("7FE00010" not in i for i in everything)  # no bulk data in QIDO answers


def test_limit_offset_includefield(archive: Archive) -> None:
    web = client(archive)
    first = web.search_for_studies(limit=2, offset=0)
    rest = web.search_for_studies(limit=2, offset=2)
    assert len(first) == 2 and len(rest) == 1
    assert {value(s, "0020000D") for s in first}.isdisjoint({value(s, "0020000D") for s in rest})
    with_description = web.search_for_studies(fields=["StudyDescription"], limit=1)
    assert "00081030" in with_description[0]
    fuzzy = web.search_for_studies(search_filters={"PatientName": "testinen*"}, fuzzymatching=True)
    assert len(fuzzy) == 1


def test_errors(archive: Archive) -> None:
    base = f"{archive.server.http}/dicom-web"
    for query, parameter in (
        ("StudyDate=2024-01", "StudyDate"),
        ("NoSuchAttribute=1", "NoSuchAttribute"),
        ("limit=-1", "limit"),
        ("fuzzymatching=maybe", "fuzzymatching"),
        ("Modality=CT", "Modality"),
    ):
        response = httpx.get(f"{base}/studies?{query}")
        assert response.status_code == 400, query
        assert response.headers["content-type"].startswith("application/problem+json")
        body = response.json()
        assert body["status"] == 400 and body["parameter"] == parameter, (query, body)
    missing = httpx.get(f"{base}/studies/1.2.3.999/series")
    assert missing.status_code == 404
    assert missing.json()["status"] == 404
    nothing = httpx.get(f"{base}/studies?PatientID=nobody")
    assert nothing.status_code == 200 and nothing.json() == []


def test_metadata_from_the_index(archive: Archive) -> None:
    """WADO-RS /metadata: every instance's attributes, bulk data as URLs, no blob read."""
    web = client(archive)
    ct = archive.studies["ct"]
    blobs = archive.server.blob_dir / "sha256"
    blobs.rename(blobs.with_name("away"))  # metadata must not need the stored objects
    try:
        study = web.retrieve_study_metadata(ct[0].StudyInstanceUID)
        series = web.retrieve_series_metadata(ct[0].StudyInstanceUID, ct[0].SeriesInstanceUID)
        instance = web.retrieve_instance_metadata(
            ct[0].StudyInstanceUID, ct[0].SeriesInstanceUID, ct[0].SOPInstanceUID
        )
    finally:
        blobs.with_name("away").rename(blobs)
    assert len(study) == len(series) == 3
    assert {value(i, "00080018") for i in study} == {ds.SOPInstanceUID for ds in ct}
    assert value(instance, "00180050") is not None or "00180050" in instance
    assert value(instance, "00100010") == {"Alphabetic": FINNISH_NAME}
    pixel = instance["7FE00010"]
    assert pixel["BulkDataURI"].endswith(  # type: ignore[index]
        f"/instances/{ct[0].SOPInstanceUID}/bulk/7FE00010"
    )
    missing = httpx.get(f"{archive.server.http}/dicom-web/studies/1.2.3.4/metadata")
    assert missing.status_code == 404
