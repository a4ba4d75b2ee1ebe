"""kuva.codec.dicom_json: the index's DICOM JSON is exactly pydicom's, on generated
data sets of every VR, both VR encodings and several character sets; only the plain
elements take the raw path."""

from __future__ import annotations

import io
import json
import struct
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.datadict import DicomDictionary
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from kuva.codec.dicom_json import BULK_DATA_THRESHOLD, _from_raw, dataset_json
from kuva.codec.part10 import canonical_file_meta

EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
CT = "1.2.840.10008.5.1.4.1.1.2"

# A few public tags of each VR (not retired, not in a repeating group, VM kept as the
# dictionary gives it: the raw path does not care).
VRS = [
    "AE", "AS", "CS", "DA", "DT", "TM", "UI", "UR", "SH", "LO", "UC", "ST", "LT", "UT",
    "PN", "IS", "DS", "US", "SS", "UL", "SL", "FL", "FD", "SV", "UV", "OB", "OW", "OF",
    "OD", "OL", "OV", "AT", "UN",
]  # fmt: skip
TAGS: dict[str, list[int]] = {
    vr: [
        tag
        for tag, entry in sorted(DicomDictionary.items())
        if entry[0] == vr and not entry[3] and tag > 0x00080005 and tag < 0x7FE00000
    ][:4]
    for vr in VRS
}
CHARACTER_SETS = [None, "ISO_IR 100", "ISO_IR 192", "ISO 2022 IR 6\\ISO 2022 IR 87", "ISO_IR 13"]
TEXT = "abcXYZ019 ^=\\.-+eE\x00\x1bäöå漢"


def encode_element(tag: int, vr: str, value: bytes, *, implicit: bool) -> bytes:
    if len(value) % 2:
        value += b"\x00" if vr in ("UI", "OB", "UN") else b" "
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if implicit:
        return head + struct.pack("<L", len(value)) + value
    if vr in ("OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"):
        return head + vr.encode() + b"\0\0" + struct.pack("<L", len(value)) + value
    if len(value) > 0xFFFF:
        value = value[:0xFFFE]
    return head + vr.encode() + struct.pack("<H", len(value)) + value


@st.composite
def values(draw: st.DrawFn, vr: str, encoding: str) -> bytes:
    if vr in ("US", "SS", "UL", "SL", "FL", "FD", "SV", "UV", "AT", "OF", "OD", "OL", "OV"):
        return draw(st.binary(max_size=40))
    if vr in ("OB", "OW", "UN"):
        size = draw(st.sampled_from([0, 2, 10, BULK_DATA_THRESHOLD, BULK_DATA_THRESHOLD * 2]))
        return draw(st.binary(min_size=size, max_size=size))
    if vr in ("IS", "DS"):
        return draw(st.text(" 0123456789.eE+-\\", max_size=30)).encode()
    text = draw(st.text(TEXT, max_size=40))
    return text.encode(encoding, errors="replace")


@st.composite
def data_sets(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """The same data set twice (each reader converts what it reads, in place)."""
    implicit = draw(st.booleans())
    charset = draw(st.sampled_from(CHARACTER_SETS))
    encoding = {"ISO_IR 100": "latin-1", "ISO_IR 13": "shift_jis"}.get(charset or "", "utf-8")
    elements: dict[int, bytes] = {}
    if charset is not None:
        elements[0x00080005] = encode_element(0x00080005, "CS", charset.encode(), implicit=implicit)
    for vr in draw(st.lists(st.sampled_from(VRS), min_size=1, max_size=25)):
        if not TAGS[vr]:
            continue
        tag = draw(st.sampled_from(TAGS[vr]))
        value = draw(values(vr, encoding))
        elements[tag] = encode_element(tag, vr, value, implicit=implicit)
    body = b"".join(elements[tag] for tag in sorted(elements))
    meta = canonical_file_meta(CT, "1.2.3.4", IMPLICIT if implicit else EXPLICIT)
    return meta + body, meta + body


def read(data: bytes) -> Dataset:
    return dcmread(io.BytesIO(data), stop_before_pixels=True)


def reference(ds: Dataset) -> str:
    """The JSON as pydicom alone makes it, element by element; an element pydicom
    cannot convert is left out."""
    result: dict[str, Any] = {}
    for tag in sorted(ds.keys()):
        try:
            result[f"{tag:08X}"] = ds[tag].to_json_dict(
                bulk_data_element_handler=lambda e: f"bulk:{e.tag:08X}",
                bulk_data_threshold=BULK_DATA_THRESHOLD,
            )
        except Exception:
            continue
    if "Rows" in ds:  # read without its pixel data, which the index refers to
        vr = "OW" if ds.get("BitsAllocated", 8) > 8 else "OB"
        result.setdefault("7FE00010", {"vr": vr, "BulkDataURI": "bulk:7FE00010"})
    return json.dumps(result, separators=(",", ":"), ensure_ascii=False)


@settings(
    max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(data=data_sets())
def test_the_json_is_pydicoms(data: tuple[bytes, bytes]) -> None:
    ours, theirs = data
    assert dataset_json(read(ours)) == reference(read(theirs))


def test_a_ct_header_takes_the_raw_path_and_matches() -> None:
    """A typical header: every element but the sequence is written from its bytes."""
    implicit = False
    elements = [
        (0x00080005, "CS", b"ISO_IR 100"),
        (0x00080008, "CS", b"ORIGINAL\\PRIMARY\\AXIAL"),
        (0x00080018, "UI", b"1.2.3.4"),
        (0x00080020, "DA", b"20260314"),
        (0x00080030, "TM", b"090000.123"),
        (0x00080060, "CS", b"CT"),
        (0x00080090, "PN", "Lääkäri^Liisa".encode("latin-1")),
        (0x00100010, "PN", b"Testinen^Matti"),
        (0x00100020, "LO", b"010181-900C"),
        (0x00181050, "DS", b"0.5\\0.5"),
        (0x00200013, "IS", b" 12"),
        (0x00280010, "US", struct.pack("<H", 512)),
        (0x00281050, "DS", b"40"),
        (0x00281052, "DS", b"-1024"),
    ]
    body = b"".join(encode_element(t, vr, v, implicit=implicit) for t, vr, v in elements)
    data = canonical_file_meta(CT, "1.2.3.4", EXPLICIT) + body
    ds = read(data)
    raw = {tag: ds.get_item(tag) for tag in ds.keys()}  # noqa: SIM118 - iterating ds converts
    raw = {tag: element for tag, element in raw.items() if isinstance(element, RawDataElement)}
    fast = {tag for tag, element in raw.items() if _from_raw(element, True) is not None}
    # Only the Latin-1 name goes through pydicom (and the character set, read already).
    assert fast == set(raw) - {0x00080090}
    assert 0x00080005 not in raw
    got = json.loads(dataset_json(ds))
    assert json.loads(reference(read(data))) == got
    assert got["00080090"] == {"vr": "PN", "Value": [{"Alphabetic": "Lääkäri^Liisa"}]}
    assert got["00181050"] == {"vr": "DS", "Value": [0.5, 0.5]}
    assert got["00200013"] == {"vr": "IS", "Value": [12]}
