"""Patient corrections on the way out: the Original Attributes Sequence, the
character set, and the three ways out of kuva.codec.outgoing (verbatim, a corrected
header spliced onto the stored pixel data, decoded and converted)."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from kuva.codec.outgoing import encoded
from kuva.index.database import make_engine
from kuva.index.instances import StoredInstance
from kuva.services.retrieve import RetrieveService, StoredObject, apply_correction
from kuva.storage.filesystem import FileBlobStore
from tests.support.synthetic import make_ct_series

CURRENT = {
    "PatientID": "010181-900C",
    "IssuerOfPatientID": "1.2.246.21",
    "PatientName": "Äijälä^Öljymäki",
    "PatientBirthDate": "19810101",
    "PatientSex": "F",
}
ORG = "1.2.246.10.99.1"


def _received(charset: str = "ISO_IR 192") -> Dataset:
    (ds,) = make_ct_series(
        1, rows=8, cols=8, patient_id="020202-900E", specific_character_set=charset
    )
    ds.PatientName = "Testinen^Maija"
    ds.ReferringPhysicianName = "Lääkäri^Liisa" if charset != "" else "Laakari^Liisa"
    return ds


def test_correction_records_the_values_as_stored() -> None:
    ds = _received()
    assert apply_correction(ds, CURRENT, ORG)
    assert ds.PatientID == "010181-900C" and str(ds.PatientName) == "Äijälä^Öljymäki"
    (item,) = ds.OriginalAttributesSequence
    (original,) = item.ModifiedAttributesSequence
    assert original.PatientID == "020202-900E"
    assert str(original.PatientName) == "Testinen^Maija"
    assert item.ReasonForTheAttributeModification == "CORRECT"
    assert item.ModifyingSystem == "kuva" and item.SourceOfPreviousValues == ORG
    assert item.AttributeModificationDateTime.endswith("+0000")
    # a second correction adds an item, the first stays
    again = dict(CURRENT, PatientName="Virtanen^Ville")
    assert apply_correction(ds, again, ORG)
    assert len(ds.OriginalAttributesSequence) == 2
    assert ds.OriginalAttributesSequence[1].ModifiedAttributesSequence[0].PatientName == (
        "Äijälä^Öljymäki"
    )


def test_no_change_when_the_object_carries_the_current_values() -> None:
    ds = _received()
    for keyword, value in CURRENT.items():
        setattr(ds, keyword, value)
    assert not apply_correction(ds, CURRENT, ORG)
    assert "OriginalAttributesSequence" not in ds


def test_character_set_kept_when_the_values_fit_it_else_utf8() -> None:
    latin = _received("ISO_IR 100")
    apply_correction(latin, CURRENT, ORG)
    assert latin.SpecificCharacterSet == "ISO_IR 100"

    plain = _received("")
    apply_correction(plain, CURRENT, ORG)
    assert plain.SpecificCharacterSet == "ISO_IR 192"
    original = plain.OriginalAttributesSequence[0].ModifiedAttributesSequence[0]
    assert original.SpecificCharacterSet == ""
    # written and read back: every name decodes
    out = io.BytesIO()
    plain.save_as(out, enforce_file_format=True)
    back = pydicom.dcmread(io.BytesIO(out.getvalue()))
    assert str(back.PatientName) == "Äijälä^Öljymäki"
    assert str(back.ReferringPhysicianName) == "Laakari^Liisa"


@pytest.fixture
def service(tmp_path: Path) -> RetrieveService:
    return RetrieveService(
        make_engine(f"sqlite:///{tmp_path / 'i.sqlite'}"), FileBlobStore(tmp_path)
    )


def _stored(service: RetrieveService, data: bytes, syntax: str) -> StoredInstance:
    with service.blobs.open_writer() as writer:
        writer.write(data)
        ref = writer.commit()
    return StoredInstance(
        pk=1,
        sop_instance_uid="1.2.3",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        series_instance_uid="1.2.3.1",
        study_instance_uid="1.2.3.2",
        transfer_syntax_uid=syntax,
        blob_key=ref.key,
        size=len(data),
        sha256=ref.sha256,
        organization_oid=ORG,
    )


def _object(service: RetrieveService, data: bytes, syntax: str, corrected: bool) -> StoredObject:
    instance = _stored(service, data, syntax)
    return StoredObject(
        instance=instance,
        path=service.blobs.local_path(instance.blob_key),
        correction=CURRENT if corrected else None,
        _service=service,
    )


def _sent(obj: StoredObject, target: str) -> tuple[bytes, int]:
    chunks, length = encoded(obj, pydicom.uid.UID(target))
    return b"".join(chunks), length


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm"])
def test_spliced_header_keeps_the_stored_pixel_data(service: RetrieveService, name: str) -> None:
    path = get_testdata_file(name)
    assert path is not None
    data = Path(path).read_bytes()
    stored = pydicom.dcmread(io.BytesIO(data))
    syntax = stored.file_meta.TransferSyntaxUID
    obj = _object(service, data, syntax, corrected=True)
    sent, length = _sent(obj, syntax)
    assert len(sent) == length
    out = pydicom.dcmread(io.BytesIO(sent))
    assert out.PatientID == "010181-900C"
    assert out.OriginalAttributesSequence[0].ModifiedAttributesSequence[0].PatientID == (
        stored.PatientID
    )
    assert out.PixelData == stored.PixelData
    # the stored pixel data element and what follows it are the stored bytes
    tail = data[data.rindex(b"\xe0\x7f\x10\x00") :]
    assert sent.endswith(tail)


def test_verbatim_and_already_current_objects_go_out_as_stored(
    service: RetrieveService,
) -> None:
    ds = _received()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    data = out.getvalue()
    assert (
        _sent(
            _object(service, data, ExplicitVRLittleEndian, corrected=False),
            ds.file_meta.TransferSyntaxUID,
        )[0]
        == data
    )
    for keyword, value in CURRENT.items():
        setattr(ds, keyword, value)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    current = out.getvalue()
    obj = _object(service, current, ExplicitVRLittleEndian, corrected=True)
    assert _sent(obj, ExplicitVRLittleEndian) == (current, len(current))


@pytest.mark.parametrize(
    ("stored_syntax", "target"),
    [
        (ExplicitVRLittleEndian, ImplicitVRLittleEndian),
        (ExplicitVRLittleEndian, RLELossless),
        (DeflatedExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian),
    ],
)
def test_converted_objects_are_corrected_too(
    service: RetrieveService, stored_syntax: str, target: str
) -> None:
    ds = _received()
    ds.file_meta.TransferSyntaxUID = stored_syntax
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    obj = _object(service, out.getvalue(), stored_syntax, corrected=True)
    sent, length = _sent(obj, target)
    assert len(sent) == length
    back = pydicom.dcmread(io.BytesIO(sent))
    assert back.file_meta.TransferSyntaxUID == target
    assert back.PatientID == "010181-900C"
    assert back.OriginalAttributesSequence[0].ModifiedAttributesSequence[0].PatientID == (
        "020202-900E"
    )


def test_header_read_from_bytes_is_re_encoded_whole_in_utf8() -> None:
    """Elements read from a file stay raw bytes in their character set until decoded:
    switching an ISO_IR 100 header to ISO_IR 192 must re-encode every one of them."""
    latin = _received("ISO_IR 100")
    out = io.BytesIO()
    latin.save_as(out, enforce_file_format=True)
    header = pydicom.dcmread(io.BytesIO(out.getvalue()), stop_before_pixels=True)
    assert apply_correction(header, dict(CURRENT, PatientName="Łukasiewicz^Ärrä"), ORG)
    assert header.SpecificCharacterSet == "ISO_IR 192"
    again = io.BytesIO()
    header.save_as(again, enforce_file_format=True)
    back = pydicom.dcmread(io.BytesIO(again.getvalue()))
    assert str(back.PatientName) == "Łukasiewicz^Ärrä"
    assert str(back.ReferringPhysicianName) == "Lääkäri^Liisa"
    original = back.OriginalAttributesSequence[0].ModifiedAttributesSequence[0]
    assert original.SpecificCharacterSet == "ISO_IR 100"
    assert str(original.PatientName) == "Testinen^Maija"


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
@pytest.mark.parametrize("charset", ["ISO_IR 192", "ISO_IR 100", ""])
def test_byte_level_edit_equals_a_whole_rewrite(
    service: RetrieveService, syntax: str, charset: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The corrected elements written into the stored header give the same object as
    pydicom writing the whole corrected header, and every other byte stays."""
    ds = _received(charset)
    ds.file_meta.TransferSyntaxUID = syntax
    del ds.PatientSex  # absent when stored: inserted at its place
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    data = out.getvalue()
    if charset:  # the byte-level edit, not pydicom writing the whole header

        def no_rewrite(*args: object, **kwargs: object) -> None:
            raise AssertionError("the whole header was written")

        monkeypatch.setattr(Dataset, "save_as", no_rewrite)
    sent, length = _sent(_object(service, data, syntax, corrected=True), syntax)
    monkeypatch.undo()
    assert len(sent) == length
    expected = pydicom.dcmread(io.BytesIO(data))
    apply_correction(expected, CURRENT, ORG)
    back = pydicom.dcmread(io.BytesIO(sent))
    assert back.file_meta.TransferSyntaxUID == syntax
    item = back.OriginalAttributesSequence[0]
    expected_item = expected.OriginalAttributesSequence[0]
    expected_item.AttributeModificationDateTime = item.AttributeModificationDateTime
    assert back == expected
    assert str(back.PatientName) == CURRENT["PatientName"]
    assert back.PatientSex == "F"
    # the pixel data are the stored bytes; so is what precedes the patient module,
    # unless the name needed another character set (the whole header re-encoded)
    stored_pixels = data[data.rindex(b"\xe0\x7f\x10\x00") :]
    assert sent.endswith(stored_pixels)
    first_patient = data.index(b"\x10\x00\x10\x00")
    assert (sent[:first_patient] == data[:first_patient]) is (charset != "")
