"""kuva.codec.part10.extract_attributes reads plain values straight from their
bytes: its answers are exactly those pydicom's conversions give (``_text``,
``_int``), on generated values of the keywords it reads, in both VR encodings and
several character sets."""

from __future__ import annotations

import io

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from kuva.codec.part10 import _int, _text, canonical_file_meta, extract_attributes
from tests.unit.test_dicom_json import CHARACTER_SETS, CT, EXPLICIT, IMPLICIT, encode_element

TEXT_KEYWORDS = [
    "SOPClassUID", "SOPInstanceUID", "PatientID", "PatientName", "PatientBirthDate",
    "PatientSex", "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID",
    "StudyDescription", "ReferringPhysicianName", "SeriesInstanceUID", "Modality",
    "SeriesDescription", "BodyPartExamined", "SeriesDate", "SeriesTime", "InstitutionName",
    "StationName", "ContentDate", "ContentTime",
]  # fmt: skip
INT_KEYWORDS = ["SeriesNumber", "InstanceNumber", "NumberOfFrames", "Rows", "Columns"]
# Printable ASCII, padding, control characters, the backslash, non-ASCII letters.
TEXT = "abcXYZ019 ^=\\.-+\x00\t\x1bäö漢"


@st.composite
def headers(draw: st.DrawFn) -> bytes:
    implicit = draw(st.booleans())
    charset = draw(st.sampled_from(CHARACTER_SETS))
    encoding = {"ISO_IR 100": "latin-1", "ISO_IR 13": "shift_jis"}.get(charset or "", "utf-8")
    elements: dict[int, bytes] = {}
    if charset is not None:
        elements[0x00080005] = encode_element(0x00080005, "CS", charset.encode(), implicit=implicit)
    for keyword in draw(st.lists(st.sampled_from(TEXT_KEYWORDS + INT_KEYWORDS), max_size=12)):
        tag = tag_for_keyword(keyword)
        assert tag is not None
        vr = dictionary_VR(tag)
        if vr == "US":
            value = draw(st.binary(min_size=0, max_size=4))
        elif vr == "IS":
            value = draw(st.text(" 0123456789+-\\\x00", max_size=14)).encode()
        else:
            value = draw(st.text(TEXT, max_size=30)).encode(encoding, errors="replace")
        elements[tag] = encode_element(tag, vr, value, implicit=implicit)
    body = b"".join(elements[tag] for tag in sorted(elements))
    return canonical_file_meta(CT, "1.2.3.4", IMPLICIT if implicit else EXPLICIT) + body


def read(data: bytes) -> Dataset:
    return dcmread(io.BytesIO(data), stop_before_pixels=True)


@settings(
    max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(data=headers())
def test_values_read_from_bytes_are_pydicoms(data: bytes) -> None:
    attrs = extract_attributes(read(data), EXPLICIT)
    reference = read(data)
    problems: list[str] = []
    expected_text = {keyword: _text(reference, keyword) for keyword in TEXT_KEYWORDS}
    expected_int = {keyword: _int(reference, keyword, problems) for keyword in INT_KEYWORDS}
    got_text = {
        "SOPClassUID": attrs.sop_class_uid,
        "SOPInstanceUID": attrs.sop_instance_uid,
        "PatientID": attrs.patient.patient_id,
        "PatientName": attrs.patient.name,
        "PatientBirthDate": attrs.patient.birth_date,
        "PatientSex": attrs.patient.sex,
        "StudyInstanceUID": attrs.study.study_instance_uid,
        "StudyDate": attrs.study.study_date,
        "StudyTime": attrs.study.study_time,
        "AccessionNumber": attrs.study.accession_number,
        "StudyID": attrs.study.study_id,
        "StudyDescription": attrs.study.description,
        "ReferringPhysicianName": attrs.study.referring_physician_name,
        "SeriesInstanceUID": attrs.series.series_instance_uid,
        "Modality": attrs.series.modality,
        "SeriesDescription": attrs.series.description,
        "BodyPartExamined": attrs.series.body_part_examined,
        "SeriesDate": attrs.series.series_date,
        "SeriesTime": attrs.series.series_time,
        "InstitutionName": attrs.series.institution_name,
        "StationName": attrs.series.station_name,
        "ContentDate": attrs.content_date,
        "ContentTime": attrs.content_time,
    }
    got_int = {
        "SeriesNumber": attrs.series.series_number,
        "InstanceNumber": attrs.instance_number,
        "NumberOfFrames": attrs.number_of_frames,
        "Rows": attrs.rows,
        "Columns": attrs.columns,
    }
    assert got_text == expected_text
    assert got_int == expected_int
    assert list(attrs.parse_problems) == problems


def test_a_plain_header_is_read_without_pydicom_converting_it() -> None:
    """Plain values stay raw (pydicom converts an element in place when asked for it)."""
    elements = [
        (0x00080005, "CS", b"ISO_IR 192"),
        (0x00080018, "UI", b"1.2.3.4\x00"),
        (0x00100010, "PN", b"Testinen^Matti "),
        (0x00100020, "LO", b"010181-900C "),
        (0x00200011, "IS", b" 3"),
        (0x00280010, "US", b"\x00\x02"),
    ]
    data = canonical_file_meta(CT, "1.2.3.4", EXPLICIT) + b"".join(
        encode_element(tag, vr, value, implicit=False) for tag, vr, value in elements
    )
    ds = read(data)
    attrs = extract_attributes(ds, EXPLICIT)
    assert (attrs.patient.name, attrs.patient.patient_id) == ("Testinen^Matti", "010181-900C")
    assert (attrs.series.series_number, attrs.rows) == (3, 512)
    for tag in (0x00100010, 0x00100020, 0x00200011, 0x00280010):
        assert isinstance(ds.get_item(tag), RawDataElement), f"{tag:08X} was converted"
