"""C-FIND (PS3.4 C.4.1) against a running kuva with dcmtk's findscu."""

from __future__ import annotations

import datetime as dt

import pytest
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import CTImageStorage, SecondaryCaptureImageStorage

from kuva.bench_support import synthetic_instance
from kuva.index.database import make_engine
from kuva.index.uow import UnitOfWork
from tests.support.peers import dcmtk_available
from tests.support.query_data import ALICE_ID, BOB_ID, FINNISH_NAME, Archive

pytestmark = [
    pytest.mark.dcmtk,
    pytest.mark.skipif(not dcmtk_available(), reason="dcmtk not installed"),
]


def as_list(value: object) -> list[object]:
    return list(value) if isinstance(value, MultiValue) else [value]


def uids(responses: list[Dataset], keyword: str = "StudyInstanceUID") -> set[str]:
    return {str(r.get(keyword)) for r in responses}


def test_study_level_by_patient_id_with_computed_attributes(archive: Archive) -> None:
    responses, _ = archive.find(
        "-S",
        "QueryRetrieveLevel=STUDY",
        f"PatientID={ALICE_ID}",
        "StudyInstanceUID",
        "NumberOfStudyRelatedInstances",
        "NumberOfStudyRelatedSeries",
        "ModalitiesInStudy",
        "AccessionNumber",
        "PatientComments",
    )
    by_accession = {r.AccessionNumber: r for r in responses}
    assert set(by_accession) == {"ACC001", "ACC002"}
    mr = by_accession["ACC002"]
    assert mr.NumberOfStudyRelatedInstances == 3
    assert mr.NumberOfStudyRelatedSeries == 2
    assert set(mr.ModalitiesInStudy) == {"MR", "OT"}
    assert mr.RetrieveAETitle == "KUVA"
    assert "PatientComments" in mr and mr.PatientComments in ("", None)  # unknown: empty


def test_sop_classes_in_study_and_instance_availability(archive: Archive) -> None:
    """SOP Classes in Study (PS3.4 C.6.2.1.2) at STUDY level, matched as a UID list;
    Instance Availability ONLINE in every answer at every level (C.4.1.1.3.2)."""
    responses, _ = archive.find(
        "-S", "QueryRetrieveLevel=STUDY", f"PatientID={ALICE_ID}", "AccessionNumber",
        "SOPClassesInStudy",
    )  # fmt: skip
    by_accession = {r.AccessionNumber: r for r in responses}
    assert {str(u) for u in as_list(by_accession["ACC002"].SOPClassesInStudy)} == {
        CTImageStorage,
        SecondaryCaptureImageStorage,
    }
    assert as_list(by_accession["ACC001"].SOPClassesInStudy) == [CTImageStorage]
    responses, _ = archive.find(
        "-S", "QueryRetrieveLevel=STUDY", f"SOPClassesInStudy={SecondaryCaptureImageStorage}",
        "AccessionNumber",
    )  # fmt: skip
    assert [r.AccessionNumber for r in responses] == ["ACC002"]

    study = archive.studies["mr"][0].StudyInstanceUID
    for model, level, keys in (
        ("-P", "PATIENT", ("PatientID",)),
        ("-S", "STUDY", ("StudyInstanceUID",)),
        ("-S", "SERIES", (f"StudyInstanceUID={study}", "SeriesInstanceUID")),
        ("-S", "IMAGE", (f"StudyInstanceUID={study}", "SOPInstanceUID")),
    ):
        responses, _ = archive.find(model, f"QueryRetrieveLevel={level}", *keys)
        assert responses, level
        assert {r.InstanceAvailability for r in responses} == {"ONLINE"}, level


def test_person_name_wildcards_case_insensitive(archive: Archive) -> None:
    responses, _ = archive.find(
        "-S", "QueryRetrieveLevel=STUDY", "PatientName=testinen*", "StudyInstanceUID"
    )
    assert uids(responses) == {archive.studies["bob"][0].StudyInstanceUID}
    responses, _ = archive.find(
        "-S", "QueryRetrieveLevel=STUDY", "PatientName=T?STINEN^MATTI", "StudyInstanceUID"
    )
    assert len(responses) == 1


def test_finnish_name_in_utf8(archive: Archive) -> None:
    responses, _ = archive.find(
        "-S",
        "SpecificCharacterSet=ISO_IR 192",
        "QueryRetrieveLevel=STUDY",
        "PatientName=äijälä*".encode(),
        "StudyInstanceUID",
    )
    assert len(responses) == 2
    assert {str(r.PatientName) for r in responses} == {FINNISH_NAME}


def test_finnish_name_in_latin1(archive: Archive) -> None:
    responses, _ = archive.find(
        "-S",
        "SpecificCharacterSet=ISO_IR 100",
        "QueryRetrieveLevel=STUDY",
        "PatientName=ÄIJÄLÄ^ÖLJY".encode("latin-1"),
        "StudyInstanceUID",
    )
    assert len(responses) == 2
    assert all(r.SpecificCharacterSet == "ISO_IR 100" for r in responses)
    assert {str(r.PatientName) for r in responses} == {FINNISH_NAME}


@pytest.mark.parametrize(
    ("dates", "expected"),
    [
        ("20240101-20240331", {"ct"}),
        ("-20231231", {"bob"}),
        ("20240601-", {"mr"}),
        ("20240115", {"ct"}),
        ("20231201-20240620", {"ct", "mr", "bob"}),
    ],
)
def test_study_date_ranges(archive: Archive, dates: str, expected: set[str]) -> None:
    responses, _ = archive.find(
        "-S", "QueryRetrieveLevel=STUDY", f"StudyDate={dates}", "StudyInstanceUID"
    )
    assert uids(responses) == {archive.studies[n][0].StudyInstanceUID for n in expected}


def test_uid_list_and_accession(archive: Archive) -> None:
    ct, bob = archive.studies["ct"][0].StudyInstanceUID, archive.studies["bob"][0].StudyInstanceUID
    responses, _ = archive.find("-S", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={ct}\\{bob}")
    assert uids(responses) == {ct, bob}
    responses, _ = archive.find(
        "-S", "QueryRetrieveLevel=STUDY", "AccessionNumber=ACC003", "StudyInstanceUID"
    )
    assert uids(responses) == {bob}


def test_series_and_image_levels(archive: Archive) -> None:
    study = archive.studies["mr"][0].StudyInstanceUID
    responses, _ = archive.find(
        "-S",
        "QueryRetrieveLevel=SERIES",
        f"StudyInstanceUID={study}",
        "Modality=MR",
        "SeriesInstanceUID",
        "NumberOfSeriesRelatedInstances",
    )
    [series] = responses
    assert series.SeriesInstanceUID == archive.studies["mr"][0].SeriesInstanceUID
    assert series.NumberOfSeriesRelatedInstances == 2

    ct = archive.studies["ct"]
    responses, _ = archive.find(
        "-S",
        "QueryRetrieveLevel=IMAGE",
        f"StudyInstanceUID={ct[0].StudyInstanceUID}",
        f"SeriesInstanceUID={ct[0].SeriesInstanceUID}",
        "SOPInstanceUID",
        "InstanceNumber",
        "SliceThickness",
        "ImageType",
    )
    assert uids(responses, "SOPInstanceUID") == {ds.SOPInstanceUID for ds in ct}
    for response in responses:
        sent = next(ds for ds in ct if ds.SOPInstanceUID == response.SOPInstanceUID)
        assert response.InstanceNumber == sent.InstanceNumber
        # Not an index column: answered from the DICOM JSON kept in the index.
        assert float(response.SliceThickness) == float(sent.SliceThickness)
        assert list(response.ImageType) == list(sent.ImageType)


def test_patient_root(archive: Archive) -> None:
    responses, _ = archive.find(
        "-P",
        "QueryRetrieveLevel=PATIENT",
        "PatientName=*",
        "PatientID",
        "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedInstances",
    )
    by_id = {r.PatientID: r for r in responses}
    assert by_id[ALICE_ID].NumberOfPatientRelatedStudies == 2
    assert by_id[ALICE_ID].NumberOfPatientRelatedInstances == 6
    assert by_id[BOB_ID].NumberOfPatientRelatedStudies == 1
    responses, _ = archive.find(
        "-P", "QueryRetrieveLevel=STUDY", f"PatientID={BOB_ID}", "StudyInstanceUID"
    )
    assert uids(responses) == {archive.studies["bob"][0].StudyInstanceUID}


def test_bad_queries_refused(archive: Archive) -> None:
    refused = "DataSetDoesNotMatchSOPClass"
    for keys in (
        ("QueryRetrieveLevel=PATIENT", "PatientID"),  # no PATIENT level in Study Root
        ("QueryRetrieveLevel=STUDY", "Modality=CT"),  # a SERIES key at STUDY level
        ("QueryRetrieveLevel=STUDY", "StudyDate=2024x"),  # not a date
        ("QueryRetrieveLevel=WARD", "PatientID"),
    ):
        responses, text = archive.find("-S", *keys, extra=("-v",))
        assert responses == [], keys
        assert refused in text, (keys, text)


def test_cancel(fresh_archive: Archive, database_url: str) -> None:
    """C-CANCEL after the first response ends the search with status Cancel (0xFE00)."""
    # 3,000 more instances, written straight into the server's index (no pixels to
    # send), so that the search is still running when the cancel arrives.
    engine = make_engine(database_url)
    base = dt.datetime(2021, 1, 1, tzinfo=dt.UTC)
    with UnitOfWork(engine) as uow:
        for n in range(3000):
            uow.instances.add(synthetic_instance(n, base))
        uow.commit()
    engine.dispose()
    responses, text = fresh_archive.find(
        "-S",
        "QueryRetrieveLevel=IMAGE",
        "Modality=CT",
        "SOPInstanceUID",
        extra=("--cancel", "1", "-v"),
    )
    assert 1 <= len(responses) < 3000
    assert "Received Final Find Response (Cancel" in text, text[-2000:]
