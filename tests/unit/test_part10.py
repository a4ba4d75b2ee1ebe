"""kuva.codec.part10: kuva's canonical file meta, the streaming rewriter and attributes."""

from __future__ import annotations

import hashlib
import io
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
)
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID
from pynetdicom.dsutils import create_file_meta

from kuva.codec.dicom_json import BULK_DATA_THRESHOLD
from kuva.codec.part10 import (
    PREAMBLE,
    Part10Rewriter,
    apply_sender_defaults,
    canonical_file_meta,
    dataset_json,
    extract_attributes,
    patient_issuer,
    read_header,
)
from kuva.model.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from kuva.storage.filesystem import FileBlobStore
from tests.support.synthetic import without_specific_character_set

ROOT = "2.25.2222222222"
STUDY_UID = f"{ROOT}.1"
SERIES_UID = f"{ROOT}.1.1"
SOP_UID = f"{ROOT}.1.1.1"
FINNISH_NAME = "Äijälä^Öljy"


def ct_dataset(*, charset: str = "ISO_IR 192", name: str = FINNISH_NAME) -> Dataset:
    """A small synthetic CT image with every attribute the index reads."""
    ds = Dataset()
    ds.SpecificCharacterSet = charset
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = SOP_UID
    ds.StudyDate = "20260314"
    ds.SeriesDate = "20260314"
    ds.ContentDate = "20260314"
    ds.StudyTime = "092653"
    ds.SeriesTime = "092700"
    ds.ContentTime = "092701.123456"
    ds.AccessionNumber = "A20260314"
    ds.Modality = "CT"
    ds.InstitutionName = "Testisairaala"
    ds.ReferringPhysicianName = "Lääkäri^Testi"
    ds.StationName = "CT01"
    ds.StudyDescription = "TT thorax"
    ds.SeriesDescription = "Aksiaali"
    ds.PatientName = name
    ds.PatientID = "010181-900C"
    ds.IssuerOfPatientID = "1.2.246.21"
    ds.PatientBirthDate = "19810101"
    ds.PatientSex = "F"
    ds.BodyPartExamined = "CHEST"
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = SERIES_UID
    ds.StudyID = "1"
    ds.SeriesNumber = 3
    ds.InstanceNumber = 7
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = 64
    ds.Columns = 32
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    pixels = (np.arange(64 * 32, dtype=np.uint16) % 4096).reshape(64, 32)
    ds.PixelData = pixels.tobytes()
    return ds


def encode(ds: Dataset, *, implicit: bool = False) -> bytes:
    """The data set as it travels in C-STORE (no preamble, no file meta)."""
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = implicit
    write_dataset(buffer, ds)
    return buffer.getvalue()


def pynetdicom_stream(dataset_bytes: bytes, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    """What pynetdicom writes to its receive file: preamble, its own meta, the data set."""
    meta = DicomBytesIO()
    write_file_meta_info(
        meta,
        create_file_meta(
            sop_class_uid=CTImageStorage,
            sop_instance_uid=UID(SOP_UID),
            transfer_syntax=UID(transfer_syntax),
        ),
    )
    return b"\x00" * 128 + b"DICM" + meta.getvalue() + dataset_bytes


def group_length_ok(meta: bytes) -> None:
    """(0002,0000) is first and counts exactly the remaining file meta bytes."""
    assert meta[132:140] == b"\x02\x00\x00\x00UL\x04\x00"
    (length,) = struct.unpack("<I", meta[140:144])
    assert length == len(meta) - 144
    # The next element after the group is not group 0002 any more.
    assert meta[144:].startswith(b"\x02\x00\x01\x00OB")


def test_canonical_file_meta_is_deterministic() -> None:
    """The same object always gets the same bytes."""
    first = canonical_file_meta(CTImageStorage, SOP_UID, ExplicitVRLittleEndian)
    second = canonical_file_meta(str(CTImageStorage), SOP_UID, str(ExplicitVRLittleEndian))
    assert first == second
    other = canonical_file_meta(CTImageStorage, SOP_UID + "1", ExplicitVRLittleEndian)
    assert other != first


@pytest.mark.parametrize(
    "transfer_syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless]
)
def test_canonical_file_meta_is_valid_part10(transfer_syntax: str) -> None:
    """Preamble, DICM and a file meta group pydicom reads, with kuva's identity."""
    meta = canonical_file_meta(CTImageStorage, SOP_UID, transfer_syntax)
    assert meta[:128] == b"\x00" * 128
    assert meta[128:132] == b"DICM"
    assert meta.startswith(PREAMBLE)
    group_length_ok(meta)
    assert len(meta) % 2 == 0
    implicit = transfer_syntax == ImplicitVRLittleEndian
    ds = dcmread(io.BytesIO(meta + encode(ct_dataset(), implicit=implicit)))
    fm = ds.file_meta
    assert fm.FileMetaInformationVersion == b"\x00\x01"
    assert fm.MediaStorageSOPClassUID == CTImageStorage
    assert fm.MediaStorageSOPInstanceUID == SOP_UID
    assert fm.TransferSyntaxUID == transfer_syntax
    assert fm.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert fm.ImplementationVersionName == IMPLEMENTATION_VERSION_NAME
    assert fm.FileMetaInformationGroupLength == len(meta) - 144
    assert ds.SOPInstanceUID == SOP_UID


def feed(rewriter: Part10Rewriter, stream: bytes, chunk: int) -> None:
    """Write ``stream`` into ``rewriter`` in pieces of ``chunk`` bytes."""
    for start in range(0, len(stream), chunk):
        piece = stream[start : start + chunk]
        assert rewriter.write(piece) == len(piece)


def commit(rewriter: Part10Rewriter, store: FileBlobStore) -> bytes:
    """Commit the rewriter's blob and return the stored bytes."""
    ref = rewriter.blob.commit()
    content = store.path_of(ref.key).read_bytes()
    assert ref.sha256 == hashlib.sha256(content).hexdigest()
    return content


def test_rewriter_replaces_another_implementations_meta(tmp_path: Path) -> None:
    """Preamble, DICM, another implementation's file meta (pynetdicom's, written by
    pydicom) and data set fragments become canonical meta + data set."""
    store = FileBlobStore(tmp_path)
    dataset_bytes = encode(ct_dataset())
    rewriter = Part10Rewriter(store.open_writer())
    rewriter.write(b"\x00" * 128)
    rewriter.write(b"DICM")
    assert not rewriter.complete
    meta = create_file_meta(
        sop_class_uid=CTImageStorage,
        sop_instance_uid=UID(SOP_UID),
        transfer_syntax=ExplicitVRLittleEndian,
    )
    assert meta.ImplementationClassUID == PYNETDICOM_IMPLEMENTATION_UID
    fp: Any = rewriter  # pydicom writes the meta into any file-like
    write_file_meta_info(fp, meta)
    assert rewriter.complete
    assert rewriter.sop_class_uid == CTImageStorage
    assert rewriter.sop_instance_uid == SOP_UID
    assert rewriter.transfer_syntax_uid == ExplicitVRLittleEndian
    for start in range(0, len(dataset_bytes), 1000):
        rewriter.write(dataset_bytes[start : start + 1000])
    content = commit(rewriter, store)
    expected_meta = canonical_file_meta(CTImageStorage, SOP_UID, ExplicitVRLittleEndian)
    assert content == expected_meta + dataset_bytes
    stored = dcmread(io.BytesIO(content))
    assert stored.file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert stored.PatientName == FINNISH_NAME


@pytest.mark.parametrize("chunk", [1, 7, 131, 140, 143, 144, 145, 199, 4096, 1 << 20])
def test_rewriter_any_split(tmp_path: Path, chunk: int) -> None:
    """Fragment boundaries anywhere (also inside the file meta) give the same bytes."""
    store = FileBlobStore(tmp_path)
    dataset_bytes = encode(ct_dataset())
    rewriter = Part10Rewriter(store.open_writer())
    feed(rewriter, pynetdicom_stream(dataset_bytes), chunk)
    assert rewriter.complete
    content = commit(rewriter, store)
    assert (
        content
        == canonical_file_meta(CTImageStorage, SOP_UID, ExplicitVRLittleEndian) + dataset_bytes
    )


def test_rewriter_implicit_vr_data_set(tmp_path: Path) -> None:
    """The transfer syntax of the data set is kept in the canonical meta."""
    store = FileBlobStore(tmp_path)
    dataset_bytes = encode(ct_dataset(), implicit=True)
    rewriter = Part10Rewriter(store.open_writer())
    feed(rewriter, pynetdicom_stream(dataset_bytes, ImplicitVRLittleEndian), 333)
    content = commit(rewriter, store)
    assert (
        content
        == canonical_file_meta(CTImageStorage, SOP_UID, ImplicitVRLittleEndian) + dataset_bytes
    )
    assert dcmread(io.BytesIO(content)).PatientID == "010181-900C"


def test_same_data_set_same_blob(tmp_path: Path) -> None:
    """Whatever meta the sender wrote, the same data set gives the same blob."""
    store = FileBlobStore(tmp_path)
    dataset_bytes = encode(ct_dataset())
    first = Part10Rewriter(store.open_writer())
    feed(first, pynetdicom_stream(dataset_bytes), 512)
    ref1 = first.blob.commit()

    meta = create_file_meta(
        sop_class_uid=CTImageStorage,
        sop_instance_uid=UID(SOP_UID),
        transfer_syntax=ExplicitVRLittleEndian,
        implementation_uid=UID("1.2.3.4.5.6"),
        implementation_version="OTHER_SCU_9",
    )
    other_meta = DicomBytesIO()
    write_file_meta_info(other_meta, meta)
    second = Part10Rewriter(store.open_writer())
    feed(second, PREAMBLE + other_meta.getvalue() + dataset_bytes, 100)
    ref2 = second.blob.commit()
    assert ref2.key == ref1.key
    assert ref2.created is False


def test_incomplete_stream_is_not_complete(tmp_path: Path) -> None:
    """A stream cut inside the file meta never reaches the blob; close discards it."""
    store = FileBlobStore(tmp_path)
    rewriter = Part10Rewriter(store.open_writer())
    stream = pynetdicom_stream(encode(ct_dataset()))
    rewriter.write(stream[:150])
    assert not rewriter.complete
    assert rewriter.blob.size == 0
    assert Path(rewriter.name).parent == store.tmp_dir
    rewriter.close()
    assert list(store.tmp_dir.iterdir()) == []


def stored_file(tmp_path: Path, ds: Dataset) -> Path:
    """A Part 10 file as kuva stores it: canonical meta + the data set."""
    path = tmp_path / "object.dcm"
    path.write_bytes(
        canonical_file_meta(ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRLittleEndian) + encode(ds)
    )
    return path


def test_extract_attributes(tmp_path: Path) -> None:
    """UIDs and the patient, study, series and instance attributes are read."""
    header = read_header(stored_file(tmp_path, ct_dataset()))
    assert "PixelData" not in header
    attrs = extract_attributes(header, ExplicitVRLittleEndian)
    assert attrs.sop_class_uid == CTImageStorage
    assert attrs.sop_instance_uid == SOP_UID
    assert attrs.transfer_syntax_uid == ExplicitVRLittleEndian
    p = attrs.patient
    assert (p.patient_id, p.issuer, p.name, p.birth_date, p.sex) == (
        "010181-900C",
        "1.2.246.21",
        FINNISH_NAME,
        "19810101",
        "F",
    )
    s = attrs.study
    assert s.study_instance_uid == STUDY_UID
    assert (s.study_date, s.study_time, s.accession_number, s.study_id) == (
        "20260314",
        "092653",
        "A20260314",
        "1",
    )
    assert s.description == "TT thorax"
    assert s.referring_physician_name == "Lääkäri^Testi"
    r = attrs.series
    assert r.series_instance_uid == SERIES_UID
    assert (r.modality, r.series_number, r.description, r.body_part_examined) == (
        "CT",
        3,
        "Aksiaali",
        "CHEST",
    )
    assert (r.series_date, r.series_time, r.institution_name, r.station_name) == (
        "20260314",
        "092700",
        "Testisairaala",
        "CT01",
    )
    assert attrs.instance_number == 7
    assert (attrs.content_date, attrs.content_time) == ("20260314", "092701.123456")
    assert (attrs.rows, attrs.columns, attrs.number_of_frames) == (64, 32, None)
    assert attrs.parse_problems == ()


def test_finnish_letters_utf8(tmp_path: Path) -> None:
    """ISO_IR 192 (UTF-8) names are decoded, on the wire as UTF-8 bytes."""
    path = stored_file(tmp_path, ct_dataset(charset="ISO_IR 192"))
    assert "Äijälä".encode() in path.read_bytes()
    attrs = extract_attributes(read_header(path), ExplicitVRLittleEndian)
    assert attrs.patient.name == FINNISH_NAME
    doc = json.loads(attrs.dataset_json)
    assert doc["00100010"]["Value"] == [{"Alphabetic": FINNISH_NAME}]


def test_finnish_letters_latin1(tmp_path: Path) -> None:
    """ISO_IR 100 (Latin-1) names are decoded as well."""
    path = stored_file(tmp_path, ct_dataset(charset="ISO_IR 100"))
    assert "Äijälä".encode("latin-1") in path.read_bytes()
    attrs = extract_attributes(read_header(path), ExplicitVRLittleEndian)
    assert attrs.patient.name == FINNISH_NAME
    assert attrs.study.referring_physician_name == "Lääkäri^Testi"


@pytest.mark.parametrize(("charset", "codec"), [("ISO_IR 192", "utf-8"), ("ISO_IR 100", "latin-1")])
def test_undeclared_character_set_read_in_the_sender_default(
    tmp_path: Path, charset: str, codec: str
) -> None:
    """A data set without (0008,0005) is read in the node's default character set;
    without a default, as pydicom reads it (the default repertoire, Latin-1 leniently)."""
    path = stored_file(tmp_path, ct_dataset(charset=charset))
    path.write_bytes(without_specific_character_set(path.read_bytes()))
    assert FINNISH_NAME.encode(codec) in path.read_bytes()
    header = read_header(path)
    apply_sender_defaults(header, character_set=charset)
    attrs = extract_attributes(header, ExplicitVRLittleEndian)
    assert attrs.patient.name == FINNISH_NAME
    assert attrs.study.referring_physician_name == "Lääkäri^Testi"
    assert json.loads(attrs.dataset_json)["00080005"]["Value"] == [charset]
    plain = extract_attributes(read_header(path), ExplicitVRLittleEndian)
    assert (plain.patient.name == FINNISH_NAME) is (codec == "latin-1")


def test_declared_character_set_wins_over_the_sender_default(tmp_path: Path) -> None:
    header = read_header(stored_file(tmp_path, ct_dataset(charset="ISO_IR 192")))
    apply_sender_defaults(header, character_set="ISO_IR 100")
    assert header.SpecificCharacterSet == "ISO_IR 192"
    assert extract_attributes(header, ExplicitVRLittleEndian).patient.name == FINNISH_NAME


def test_issuer_from_the_qualifiers_sequence_or_the_sender_default() -> None:
    """(0010,0021) when an OID, else the ISO Universal Entity ID of (0010,0024), else
    (0010,0021) as given; the node's default_issuer only when there is none."""
    ds = ct_dataset()
    del ds.IssuerOfPatientID
    assert patient_issuer(ds) == ""
    apply_sender_defaults(ds, issuer="1.2.246.10.12345678.22.2026")
    assert patient_issuer(ds) == "1.2.246.10.12345678.22.2026"

    qualifier = Dataset()
    qualifier.UniversalEntityID = "1.2.246.21"
    qualifier.UniversalEntityIDType = "ISO"
    named = ct_dataset()
    named.IssuerOfPatientID = "DVV"
    named.IssuerOfPatientIDQualifiersSequence = [qualifier]
    assert patient_issuer(named) == "1.2.246.21"
    apply_sender_defaults(named, issuer="1.2.3")
    assert extract_attributes(named, ExplicitVRLittleEndian).patient.issuer == "1.2.246.21"
    assert named.IssuerOfPatientID == "DVV"  # present: no default put in

    qualifier.UniversalEntityIDType = "DNS"
    assert patient_issuer(named) == "DVV"
    assert patient_issuer(ct_dataset()) == "1.2.246.21"


def test_missing_attributes_are_empty() -> None:
    """Absent attributes become "" or None, not errors."""
    ds = Dataset()
    ds.SOPInstanceUID = SOP_UID
    attrs = extract_attributes(ds, ExplicitVRLittleEndian)
    assert attrs.sop_class_uid == ""
    assert attrs.patient.patient_id == ""
    assert attrs.study.study_instance_uid == ""
    assert attrs.series.series_number is None
    assert attrs.instance_number is None
    assert attrs.rows is None


@pytest.mark.parametrize("transfer_syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_dataset_json_pixel_data_is_bulk_data(transfer_syntax: str) -> None:
    """Pixel data read with the data set is referenced by BulkDataURI, never inlined."""
    implicit = transfer_syntax == ImplicitVRLittleEndian
    content = canonical_file_meta(CTImageStorage, SOP_UID, transfer_syntax) + encode(
        ct_dataset(), implicit=implicit
    )
    ds = dcmread(io.BytesIO(content))
    assert len(ds.PixelData) == 64 * 32 * 2
    doc = json.loads(dataset_json(ds))
    assert doc["7FE00010"] == {"vr": "OW", "BulkDataURI": "bulk:7FE00010"}
    assert "InlineBinary" not in json.dumps(doc)
    assert doc["0020000D"] == {"vr": "UI", "Value": [STUDY_UID]}
    assert doc["00280010"] == {"vr": "US", "Value": [64]}


def test_dataset_json_after_stop_before_pixels(tmp_path: Path) -> None:
    """A header read without pixel data still references the pixel data."""
    header = read_header(stored_file(tmp_path, ct_dataset()))
    doc = json.loads(extract_attributes(header, ExplicitVRLittleEndian).dataset_json)
    assert doc["7FE00010"] == {"vr": "OW", "BulkDataURI": "bulk:7FE00010"}


def test_dataset_json_large_binary_values() -> None:
    """Large binary values are BulkDataURI; small ones stay inline."""
    ds = Dataset()
    ds.SOPInstanceUID = SOP_UID
    ds.add_new(0x00090010, "LO", "KUVA TEST")
    ds.add_new(0x00091010, "OB", b"\x01" * (BULK_DATA_THRESHOLD + 2))
    ds.add_new(0x00091011, "OB", b"\x02" * 16)
    doc = json.loads(dataset_json(ds))
    assert doc["00091010"] == {"vr": "OB", "BulkDataURI": "bulk:00091010"}
    assert "InlineBinary" in doc["00091011"]
    assert "7FE00010" not in doc  # no image, no pixel data reference
