"""The XDS-I.b manifest (Key Object Selection Document, PS3.3 A.35.4) kuva builds.

Checked for structure, with dicom3tools' dciodvfy (no Error lines) and dcmtk's
dsrdump where installed, and by a pydicom round trip.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    EncapsulatedPDFStorage,
    EnhancedSRStorage,
    ExplicitVRLittleEndian,
    SegmentationStorage,
    TwelveLeadECGWaveformStorage,
)

from kuva.codec.kos import (
    KEY_OBJECT_SELECTION_DOCUMENT_STORAGE,
    ManifestError,
    ManifestInstance,
    ManifestStudy,
    build_manifest,
    new_uid,
    value_type,
)
from kuva.model.instance import PatientAttributes, StudyAttributes
from kuva.model.uids import IMPLEMENTATION_CLASS_UID, KUVA_UID_ROOT, is_valid_uid

STUDY = "1.2.246.10.99.1.1"
SERIES_A = "1.2.246.10.99.1.1.1"
SERIES_B = "1.2.246.10.99.1.1.2"
LOCATION = "1.2.246.10.0.10.1.2"
NAME = "Äijälä^Öljy"
NOW = datetime(2024, 3, 5, 10, 20, 30, tzinfo=UTC)

INSTANCES = [
    ManifestInstance(SERIES_A, CTImageStorage, "1.2.246.10.99.1.1.1.1", has_pixel_data=True),
    ManifestInstance(SERIES_A, CTImageStorage, "1.2.246.10.99.1.1.1.2", has_pixel_data=True),
    ManifestInstance(SERIES_B, EnhancedSRStorage, "1.2.246.10.99.1.1.2.1"),
    ManifestInstance(SERIES_B, TwelveLeadECGWaveformStorage, "1.2.246.10.99.1.1.2.2"),
    ManifestInstance(SERIES_B, EncapsulatedPDFStorage, "1.2.246.10.99.1.1.2.3"),
    ManifestInstance(SERIES_A, CTImageStorage, "1.2.246.10.99.1.1.1.3", has_pixel_data=True),
]


def study(
    instances: list[ManifestInstance] = INSTANCES, accession: str = "T20240305001"
) -> ManifestStudy:
    return ManifestStudy(
        patient=PatientAttributes(
            patient_id="010181-900C",
            issuer="1.2.246.21",
            name=NAME,
            birth_date="19810101",
            sex="F",
        ),
        study=StudyAttributes(
            study_instance_uid=STUDY,
            study_date="20240304",
            study_time="141516.123",
            accession_number=accession,
            study_id="4711",
            description="TT keuhkot",
            referring_physician_name="Lääkäri^Ville",
        ),
        instances=instances,
    )


def manifest(
    source: ManifestStudy | None = None,
    *,
    retrieve_location_uid: str = LOCATION,
    retrieve_url: str | None = None,
    now: datetime = NOW,
    offset: timezone = UTC,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> Dataset:
    return build_manifest(
        source or study(),
        retrieve_ae_title="KUVA",
        retrieve_location_uid=retrieve_location_uid,
        retrieve_url=retrieve_url,
        now=now,
        offset=offset,
        series_instance_uid=series_instance_uid,
        sop_instance_uid=sop_instance_uid,
    )


def part10(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_kos_document_title_series_and_uids() -> None:
    ds = manifest()
    assert ds.SOPClassUID == KEY_OBJECT_SELECTION_DOCUMENT_STORAGE
    assert ds.Modality == "KO"
    [title] = ds.ConceptNameCodeSequence
    assert (title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning) == (
        "113030",
        "DCM",
        "Manifest",
    )
    assert ds.ValueType == "CONTAINER"
    assert ds.ContinuityOfContent == "SEPARATE"
    [template] = ds.ContentTemplateSequence
    assert (template.MappingResource, template.TemplateIdentifier) == ("DCMR", "2010")
    # Same study, its own series and instance under kuva's root.
    assert ds.StudyInstanceUID == STUDY
    for uid in (ds.SeriesInstanceUID, ds.SOPInstanceUID):
        assert uid.startswith(KUVA_UID_ROOT + ".")
        assert is_valid_uid(uid)
    assert ds.SeriesInstanceUID != ds.SOPInstanceUID
    assert ds.SeriesInstanceUID not in (SERIES_A, SERIES_B)
    assert ds.InstanceNumber == 1
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    # The manifest's own time, UTC and said so.
    assert (ds.ContentDate, ds.ContentTime) == ("20240305", "102030")
    assert (ds.InstanceCreationDate, ds.InstanceCreationTime) == ("20240305", "102030")
    assert ds.TimezoneOffsetFromUTC == "+0000"
    # Given UIDs are used.
    given = manifest(series_instance_uid="1.2.246.10.99.2", sop_instance_uid="1.2.246.10.99.3")
    assert (given.SeriesInstanceUID, given.SOPInstanceUID) == ("1.2.246.10.99.2", "1.2.246.10.99.3")
    # A local time is written as UTC.
    helsinki = manifest(now=datetime(2024, 3, 5, 12, 20, 30, tzinfo=timezone(timedelta(hours=2))))
    assert helsinki.ContentTime == "102030"
    # In the study's offset, every date and time of the manifest is in that offset
    # (PS3.3 C.12.1.1.8); the study's own are as received.
    eet = manifest(offset=timezone(timedelta(hours=2)))
    assert eet.TimezoneOffsetFromUTC == "+0200"
    assert (eet.ContentDate, eet.ContentTime) == ("20240305", "122030")
    assert (eet.InstanceCreationDate, eet.InstanceCreationTime) == ("20240305", "122030")
    assert (eet.StudyDate, eet.StudyTime) == (ds.StudyDate, ds.StudyTime)


def test_patient_and_study_as_given() -> None:
    ds = manifest()
    assert str(ds.PatientName) == NAME
    assert (ds.PatientID, ds.IssuerOfPatientID) == ("010181-900C", "1.2.246.21")
    [qualifiers] = ds.IssuerOfPatientIDQualifiersSequence
    assert (qualifiers.UniversalEntityID, qualifiers.UniversalEntityIDType) == (
        "1.2.246.21",
        "ISO",
    )
    assert (ds.PatientBirthDate, ds.PatientSex) == ("19810101", "F")
    assert (ds.StudyDate, ds.StudyTime) == ("20240304", "141516.123")
    assert (ds.AccessionNumber, ds.StudyID) == ("T20240305001", "4711")
    assert str(ds.ReferringPhysicianName) == "Lääkäri^Ville"
    [request] = ds.ReferencedRequestSequence
    assert (request.StudyInstanceUID, request.AccessionNumber) == (STUDY, "T20240305001")
    # No accession number: no request to refer to.
    assert "ReferencedRequestSequence" not in manifest(study(accession=""))


def test_evidence_lists_every_instance_by_series_with_retrieve_location() -> None:
    ds = manifest()
    [evidence] = ds.CurrentRequestedProcedureEvidenceSequence
    assert evidence.StudyInstanceUID == STUDY
    listed = {
        item.SeriesInstanceUID: (
            item.RetrieveAETitle,
            item.RetrieveLocationUID,
            [
                (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID)
                for ref in item.ReferencedSOPSequence
            ],
        )
        for item in evidence.ReferencedSeriesSequence
    }
    assert list(listed) == [SERIES_A, SERIES_B]
    for series_uid, (ae, location, refs) in listed.items():
        assert (ae, location) == ("KUVA", LOCATION)
        assert refs == [
            (i.sop_class_uid, i.sop_instance_uid)
            for i in INSTANCES
            if i.series_instance_uid == series_uid
        ]
    assert all("RetrieveURL" not in item for item in evidence.ReferencedSeriesSequence)
    with_url = manifest(retrieve_url="https://kuva.example/dicom-web/")
    [evidence] = with_url.CurrentRequestedProcedureEvidenceSequence
    assert evidence.ReferencedSeriesSequence[0].RetrieveURL == (
        f"https://kuva.example/dicom-web/studies/{STUDY}/series/{SERIES_A}"
    )


def test_content_tree_one_reference_per_instance() -> None:
    ds = manifest()
    items = ds.ContentSequence
    assert len(items) == len(INSTANCES)
    for item, instance in zip(items, INSTANCES, strict=True):
        assert item.RelationshipType == "CONTAINS"
        assert "ConceptNameCodeSequence" not in item
        [ref] = item.ReferencedSOPSequence
        assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (
            instance.sop_class_uid,
            instance.sop_instance_uid,
        )
    assert [item.ValueType for item in items] == [
        "IMAGE",
        "IMAGE",
        "COMPOSITE",
        "WAVEFORM",
        "COMPOSITE",
        "IMAGE",
    ]


def test_value_types() -> None:
    def of(sop_class: str, pixels: bool = False) -> str:
        return value_type(ManifestInstance(SERIES_A, sop_class, "1.2.3", pixels))

    assert of(CTImageStorage) == "IMAGE"  # by SOP class, even without Rows known
    assert of(SegmentationStorage, pixels=True) == "IMAGE"
    assert of(SegmentationStorage) == "COMPOSITE"
    assert of(TwelveLeadECGWaveformStorage) == "WAVEFORM"
    assert of(EncapsulatedPDFStorage) == "COMPOSITE"
    assert of(KEY_OBJECT_SELECTION_DOCUMENT_STORAGE) == "COMPOSITE"
    assert of("1.2.246.10.99.12345") == "COMPOSITE"  # a private SOP class


def test_refuses_nothing_to_list_and_malformed_uids() -> None:
    with pytest.raises(ManifestError, match="no instances"):
        manifest(study(instances=[]))
    with pytest.raises(ManifestError, match="malformed UID"):
        manifest(study(instances=[ManifestInstance(SERIES_A, CTImageStorage, "1.2.03")]))
    with pytest.raises(ManifestError, match="malformed UID"):
        manifest(retrieve_location_uid="not-an-oid")


def test_new_uids_are_valid_and_distinct() -> None:
    uids = {new_uid() for _ in range(2000)}
    assert len(uids) == 2000
    for uid in uids:
        assert is_valid_uid(uid) and len(uid) <= 64
        assert uid.startswith(KUVA_UID_ROOT + ".")
        assert uid != IMPLEMENTATION_CLASS_UID


def test_pydicom_round_trip_in_explicit_vr_little_endian_utf8() -> None:
    ds = manifest()
    data = part10(ds)
    assert data[128:132] == b"DICM"
    # Finnish letters as UTF-8 on the wire (ISO_IR 192).
    assert NAME.encode("utf-8") in data
    assert "Lääkäri^Ville".encode() in data
    back = pydicom.dcmread(io.BytesIO(data))
    assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert back.file_meta.MediaStorageSOPClassUID == KEY_OBJECT_SELECTION_DOCUMENT_STORAGE
    assert back.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert back.file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert str(back.PatientName) == NAME
    assert back.ConceptNameCodeSequence[0].CodeMeaning == "Manifest"
    refs = [
        ref.ReferencedSOPInstanceUID
        for series in back.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    ]
    assert sorted(refs) == sorted(i.sop_instance_uid for i in INSTANCES)
    assert back == ds


def _dciodvfy(path: Path) -> list[str]:
    result = subprocess.run(
        ["dciodvfy", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    return (result.stdout + result.stderr).splitlines()


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools not installed")
@pytest.mark.parametrize(
    "source",
    [
        pytest.param(study(), id="full"),
        pytest.param(study(accession=""), id="no-accession"),
        pytest.param(
            ManifestStudy(
                PatientAttributes(patient_id="X1"),
                StudyAttributes(study_instance_uid=STUDY),
                INSTANCES[:1],
            ),
            id="bare",
        ),
    ],
)
def test_dciodvfy_finds_no_errors(tmp_path: Path, source: ManifestStudy) -> None:
    path = tmp_path / "manifest.dcm"
    manifest(source).save_as(path, enforce_file_format=True)
    lines = _dciodvfy(path)
    assert "KeyObjectSelectionDocument" in lines
    errors = [line for line in lines if line.startswith("Error")]
    assert errors == [], "\n".join(lines)


@pytest.mark.skipif(shutil.which("dsrdump") is None, reason="dcmtk not installed")
def test_dcmtk_reads_the_content_tree(tmp_path: Path) -> None:
    path = tmp_path / "manifest.dcm"
    manifest().save_as(path, enforce_file_format=True)
    result = subprocess.run(
        ["dsrdump", "-Ee", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "Key Object Selection Document" in result.stdout
    assert '<CONTAINER:(,,"Manifest")=SEPARATE>' in result.stdout
    assert result.stdout.count("<contains IMAGE:") == 3
    assert "E:" not in result.stderr
