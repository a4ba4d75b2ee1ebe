"""C-FIND answers' identifiers encoded from index rows (PS3.4 C.4.1.1.3.2).

The reference is the answer the C-FIND SCP has built for a match (a pydicom
Dataset: ``FindSCP._answer``, copied below as it is) written by pydicom's
``write_dataset``, as pynetdicom encodes it: ``FindAnswers.encode`` must give the
same bytes, or fail where the reference fails, for any request and match.
"""

from __future__ import annotations

import contextlib
import logging
import struct
import warnings
from collections.abc import Callable, Iterator
from io import BytesIO
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from kuva.codec.find_answers import FindAnswers
from kuva.index.query import ATTRIBUTES, COMPUTED, LEVEL_ORDER
from kuva.model.availability import ONLINE
from kuva.model.query import QueryLevel, QueryResult
from kuva.services.query import vr_of

AE_TITLE = "KUVA"
_NOT_KEYS = {
    "QueryRetrieveLevel",
    "SpecificCharacterSet",
    "RetrieveAETitle",
    "InstanceAvailability",
}
FALLBACK = "C-FIND answer encoded by pydicom"

# --------------------------------------------------------------------------- reference
# kuva.dicom.find_scp as the C-FIND SCP answered on pynetdicom (_value_text, _charset,
# FindSCP._answer with the settings' AE title as a parameter).


def _value_text(element: DataElement) -> str:
    value = element.value
    if value is None:
        return ""
    if isinstance(value, MultiValue | list):
        return "\\".join(str(v) for v in value)
    if isinstance(value, bytes):
        return ""
    return str(value)


def _charset(query: Dataset, values: list[str]) -> str:
    asked = query.get("SpecificCharacterSet", "")
    asked = asked[0] if isinstance(asked, MultiValue | list) and asked else asked
    if asked in ("", "ISO_IR 6"):
        codec = "ascii"
    elif asked == "ISO_IR 100":
        codec = "latin-1"
    else:
        return "ISO_IR 192"
    try:
        for value in values:
            value.encode(codec)
    except UnicodeEncodeError:
        return "ISO_IR 192"
    return str(asked) if asked else ""


def reference_answer(
    query: Dataset,
    elements: list[DataElement],
    level: QueryLevel,
    result: QueryResult,
    ae_title: str,
) -> Dataset:
    answer = Dataset()
    texts: list[str] = []
    extra: Dataset | None = None
    if result.dataset_json is not None:
        wanted = {f"{e.tag:08X}" for e in elements if e.keyword not in result.values}
        extra = Dataset.from_json(
            {tag: v for tag, v in result.dataset_json.items() if tag in wanted}
        )
    for element in elements:
        if element.keyword in result.values:
            value = result.values[element.keyword]
            if value is None or value == "":
                answer.add_new(element.tag, element.VR, None)
                continue
            if element.VR in ("IS", "US", "UL", "SS", "SL"):
                answer.add_new(element.tag, element.VR, int(value))
                continue
            text = str(value)
            texts.append(text)
            answer.add_new(element.tag, element.VR, text.split("\\") if "\\" in text else text)
        elif extra is not None and element.tag in extra:
            answer.add(extra[element.tag])
            texts.append(_value_text(extra[element.tag]))
        elif element.VR == "SQ":
            answer.add_new(element.tag, "SQ", Sequence())
        else:
            answer.add_new(element.tag, element.VR, None)
    charset = _charset(query, texts)
    if charset:
        answer.SpecificCharacterSet = charset
    answer.QueryRetrieveLevel = level.value
    answer.RetrieveAETitle = ae_title
    answer.InstanceAvailability = ONLINE
    return answer


def reference_bytes(
    query: Dataset,
    elements: list[DataElement],
    level: QueryLevel,
    result: QueryResult,
    *,
    implicit_vr: bool,
) -> bytes:
    answer = reference_answer(query, elements, level, result, AE_TITLE)
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = implicit_vr
    write_dataset(fp, answer)
    return fp.getvalue()


def outcome(encode: Callable[[], bytes]) -> bytes | str:
    """The bytes, or the name of the exception raised (pydicom warns about values
    it takes anyway; those warnings are not the point here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return encode()
        except Exception as error:
            return type(error).__name__


# --------------------------------------------------------------------------- requests


def index_keys(level: QueryLevel) -> list[str]:
    """The keys the index answers at ``level`` (kuva.index.query)."""
    keys = [k for k, a in ATTRIBUTES.items() if LEVEL_ORDER[a.level] <= LEVEL_ORDER[level]]
    keys += [k for k, (_, levels) in COMPUTED.items() if level in levels]
    return [k for k in keys if k not in _NOT_KEYS]


# Keys beyond the index's columns: answered from the instance's DICOM JSON at the
# IMAGE level, empty elsewhere. Every VR the byte path writes, and some it leaves to
# pydicom (SQ, OB, ambiguous US or SS).
OTHER_KEYS = (
    "ImageType",  # CS
    "PixelSpacing",  # DS
    "SliceThickness",  # DS
    "OperatorsName",  # PN
    "BitsAllocated",  # US
    "SimpleFrameList",  # UL
    "ImageComments",  # LT
    "AcquisitionDateTime",  # DT
    "ReferencedImageSequence",  # SQ
    "ManufacturerModelName",  # LO
    "AcquisitionNumber",  # IS
    "FrameOfReferenceUID",  # UI
    "PatientAge",  # AS
    "RetrieveURL",  # UR
    "TimezoneOffsetFromUTC",  # SH
    "TextValue",  # UT
    "LongCodeValue",  # UC
    "QueryRetrieveView",  # CS, between (0008,0052) and (0008,0054)
    "EncapsulatedDocument",  # OB
    "SmallestImagePixelValue",  # US or SS
    "PatientComments",  # LT
    "OtherPatientIDsSequence",  # SQ
)

QUERY_CHARACTER_SETS: list[Any] = [
    None,
    "",
    "ISO_IR 6",
    "ISO_IR 100",
    "ISO_IR 192",
    "ISO 2022 IR 87",
    ["ISO 2022 IR 6", "ISO 2022 IR 87"],
    ["", "ISO 2022 IR 87"],
    "ISO_IR 144",
]
# Requested VRs other than the dictionary's (a peer's explicit VR identifier).
OTHER_VRS = ("LO", "SH", "UT", "UC", "CS", "PN", "UI", "DS", "IS", "US", "SS", "SL", "UL")
OTHER_VRS_REFUSED = ("UN", "OB", "FL", "AT", "SQ")

LETTERS = "AZaz09 .^=-*_äöåÄÖÅé山田太郎\u3000\u00a0"
texts = st.text(alphabet=st.sampled_from(list(LETTERS)), max_size=10)
uids = st.from_regex(r"\A[12](\.[0-9]{1,6}){1,6}\Z").map(str)


def multi(values: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """One value, or several joined by a backslash (PS3.5 6.4)."""
    return st.lists(values, min_size=1, max_size=3).map("\\".join)


def index_value(vr: str, *, tame: bool) -> st.SearchStrategy[Any]:
    """A value of the index for a key of ``vr``: None, "", text, ints, multi-values."""
    empty = st.sampled_from([None, ""])
    if vr in ("IS", "US"):
        numbers = st.integers(0, 65535) if tame else st.integers(-(2**33), 2**33)
        return st.one_of(empty, numbers, numbers.map(str))
    if vr == "UI":
        return st.one_of(empty, multi(uids) if tame else st.one_of(multi(uids), texts))
    if tame and vr in ("CS", "DA", "TM", "DT", "AE", "AS", "UR"):
        return st.one_of(empty, multi(st.from_regex(r"\A[A-Z0-9 ]{0,8}\Z")))
    return st.one_of(empty, texts, multi(texts), st.integers(0, 999))


def json_element(vr: str, *, tame: bool) -> st.SearchStrategy[dict[str, Any]]:
    """A DICOM JSON element (PS3.18 F.2) of ``vr`` as the index keeps one."""
    empty = st.sampled_from([{"vr": vr}, {"vr": vr, "Value": []}])
    values: st.SearchStrategy[Any]
    if vr in ("US", "UL"):
        values = st.integers(0, 65535)
    elif vr == "IS":
        values = st.integers(-(2**31), 2**31 - 1)
    elif vr == "DS":
        values = st.one_of(st.integers(-1000, 1000), st.floats(allow_nan=False, width=32))
    elif vr == "PN":
        group = texts.filter(lambda t: "=" not in t and "\\" not in t)
        values = st.one_of(
            st.fixed_dictionaries({"Alphabetic": group}),
            st.fixed_dictionaries({"Alphabetic": group, "Ideographic": group}),
            st.fixed_dictionaries({"Ideographic": group}),
            st.fixed_dictionaries({"Alphabetic": group, "Phonetic": group}),
        )
    elif vr == "UI":
        values = uids
    elif vr in ("CS", "DA", "TM", "DT", "AE", "AS", "UR"):
        values = st.from_regex(r"\A[A-Z0-9 ]{0,8}\Z")
    elif vr == "SQ":
        item = st.just({"00080100": {"vr": "SH", "Value": ["T-1"]}})
        items = st.lists(item, min_size=1, max_size=2)
        return empty if tame else st.one_of(empty, items.map(lambda i: {"vr": vr, "Value": i}))
    elif vr in ("OB", "US or SS"):
        return empty if tame else st.one_of(empty, st.just({"vr": "OB", "InlineBinary": "AAEC"}))
    else:
        values = texts
    if not tame:
        values = st.one_of(values, st.none())
    listed = st.lists(values, min_size=1, max_size=3).map(lambda v: {"vr": vr, "Value": v})
    return st.one_of(empty, listed)


@st.composite
def requests(draw: st.DrawFn, *, tame: bool = False) -> tuple[Dataset, QueryLevel]:
    """An identifier: a random subset of the keys at a level, with its character set."""
    level = draw(st.sampled_from(list(QueryLevel)))
    others = [k for k in OTHER_KEYS if not tame or " or " not in dictionary_VR(k)]
    pool = index_keys(level) + others
    keys = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=14, unique=True))
    query = Dataset()
    charset = draw(st.sampled_from(QUERY_CHARACTER_SETS))
    if charset is not None:
        query.SpecificCharacterSet = charset
    query.QueryRetrieveLevel = level.value
    for keyword in keys:
        tag = tag_for_keyword(keyword)
        assert tag is not None
        vr = dictionary_VR(tag)
        if not tame and draw(st.integers(0, 9)) == 0:
            vr = draw(st.sampled_from(OTHER_VRS + OTHER_VRS_REFUSED))
        if vr == "SQ":
            query.add_new(tag, vr, Sequence([Dataset()]) if draw(st.booleans()) else Sequence())
        elif vr in ("UN", "OB"):
            query.add_new(tag, vr, b"")
        else:
            query.add_new(tag, vr, None)
    return query, level


def requested(query: Dataset) -> list[DataElement]:
    """The keys as the C-FIND SCP passes them (every element but the four it sets)."""
    return [e for e in query if e.keyword and e.keyword not in _NOT_KEYS]


@st.composite
def matches(
    draw: st.DrawFn, query: Dataset, level: QueryLevel, *, tame: bool = False
) -> QueryResult:
    """What the query service gives for one match: the index's values of the index
    keys asked, and at the IMAGE level the instance's DICOM JSON."""
    values: dict[str, Any] = {}
    for element in requested(query):
        if element.keyword in index_keys(level):
            vr = vr_of(element.keyword)
            assert vr is not None
            values[element.keyword] = draw(index_value(vr, tame=tame))
    dataset_json = None
    if level is QueryLevel.IMAGE and draw(st.integers(0, 4)) > 0:
        dataset_json = {}
        for element in requested(query):
            if draw(st.integers(0, 4)) > 0:
                vr = dictionary_VR(element.tag)
                dataset_json[f"{element.tag:08X}"] = draw(json_element(vr, tame=tame))
    return QueryResult(values, dataset_json)


# --------------------------------------------------------------------------- properties


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def fallbacks() -> Iterator[list[logging.LogRecord]]:
    """The records of answers encoded through pydicom while the block runs."""
    handler = Records()
    logger = logging.getLogger("kuva.codec.find_answers")
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@settings(
    max_examples=600, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(data=st.data(), implicit_vr=st.booleans())
def test_the_bytes_are_pydicoms_encoding_of_the_answer(
    data: st.DataObject, implicit_vr: bool
) -> None:
    query, level = data.draw(requests())
    elements = requested(query)
    answers = FindAnswers(query, elements, level, AE_TITLE, implicit_vr=implicit_vr)
    for _ in range(2):  # one encoder serves every match of the request
        result = data.draw(matches(query, level))
        expected = outcome(
            lambda: reference_bytes(query, elements, level, result, implicit_vr=implicit_vr)  # noqa: B023
        )
        assert outcome(lambda: answers.encode(result)) == expected  # noqa: B023


@settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(data=st.data(), implicit_vr=st.booleans())
def test_index_rows_and_plain_json_values_take_the_byte_path(
    data: st.DataObject, implicit_vr: bool
) -> None:
    """Keys with their dictionary VRs, values a DICOM answer holds (text in any
    character set, numbers in range; JSON text, numbers, empty sequences and empty
    binary): no pydicom per match."""
    query, level = data.draw(requests(tame=True))
    elements = requested(query)
    result = data.draw(matches(query, level, tame=True))
    with fallbacks() as logged:
        got = FindAnswers(query, elements, level, AE_TITLE, implicit_vr=implicit_vr).encode(result)
    assert logged == []
    expected = outcome(
        lambda: reference_bytes(query, elements, level, result, implicit_vr=implicit_vr)
    )
    assert got == expected


# --------------------------------------------------------------------------- examples


def study_request(charset: str | None = None) -> tuple[Dataset, list[DataElement]]:
    query = Dataset()
    if charset is not None:
        query.SpecificCharacterSet = charset
    query.QueryRetrieveLevel = "STUDY"
    for keyword in ("StudyInstanceUID", "PatientName", "StudyDate", "ModalitiesInStudy"):
        setattr(query, keyword, "")
    query.add_new(0x00201208, "IS", None)  # NumberOfStudyRelatedInstances
    query.add_new(0x00081110, "SQ", Sequence())  # ReferencedStudySequence
    return query, requested(query)


def study_match(name: str) -> QueryResult:
    return QueryResult(
        {
            "StudyInstanceUID": "1.2.246.3",
            "PatientName": name,
            "StudyDate": "20240101",
            "ModalitiesInStudy": "CT\\MR",
            "NumberOfStudyRelatedInstances": 400,
        }
    )


def element(tag: int, vr: bytes, value: bytes, *, implicit: bool) -> bytes:
    header = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if implicit:
        return header + struct.pack("<I", len(value)) + value
    if vr in (b"SQ", b"UT", b"UC", b"UR", b"OB"):
        return header + vr + b"\0\0" + struct.pack("<I", len(value)) + value
    return header + vr + struct.pack("<H", len(value)) + value


@pytest.mark.parametrize("implicit", [True, False])
def test_a_study_answer_byte_by_byte(implicit: bool) -> None:
    query, elements = study_request("ISO_IR 100")
    result = study_match("Äikäs^Åke")
    answers = FindAnswers(query, elements, QueryLevel.STUDY, AE_TITLE, implicit_vr=implicit)
    got = answers.encode(result)
    assert got == b"".join(
        element(tag, vr, value, implicit=implicit)
        for tag, vr, value in [
            (0x00080005, b"CS", b"ISO_IR 100"),
            (0x00080020, b"DA", b"20240101"),
            (0x00080052, b"CS", b"STUDY "),
            (0x00080054, b"AE", b"KUVA"),
            (0x00080056, b"CS", b"ONLINE"),
            (0x00080061, b"CS", b"CT\\MR "),
            (0x00081110, b"SQ", b""),  # empty: explicit SQ, 0000, length 0
            (0x00100010, b"PN", "Äikäs^Åke ".encode("latin-1")),
            (0x0020000D, b"UI", b"1.2.246.3\0"),
            (0x00201208, b"IS", b"400 "),
        ]
    )
    assert got == reference_bytes(query, elements, QueryLevel.STUDY, result, implicit_vr=implicit)


@pytest.mark.parametrize(
    ("asked", "name", "answered"),
    [
        (None, "Virtanen^Matti", None),
        ("ISO_IR 100", "Virtanen^Matti", "ISO_IR 100"),
        (None, "Äikäs^Åke", "ISO_IR 192"),
        ("ISO_IR 100", "山田^太郎", "ISO_IR 192"),
        ("ISO 2022 IR 87", "山田^太郎=やまだ^たろう", "ISO_IR 192"),
        (["", "ISO 2022 IR 87"], "Yamada^Taro", None),
    ],
)
def test_the_character_set_is_the_asked_one_when_it_carries_every_value(
    asked: Any, name: str, answered: str | None
) -> None:
    """PS3.5 6.1.2.3: ISO 2022 requests are answered in UTF-8, so no answer needs
    code extensions."""
    query, elements = study_request(asked)
    for implicit in (True, False):
        answers = FindAnswers(query, elements, QueryLevel.STUDY, AE_TITLE, implicit_vr=implicit)
        got = answers.encode(study_match(name))
        assert got == reference_bytes(
            query, elements, QueryLevel.STUDY, study_match(name), implicit_vr=implicit
        )
        answer = read_dataset(BytesIO(got), is_implicit_VR=implicit, is_little_endian=True)
        assert answer.get("SpecificCharacterSet") == answered
        assert answer.PatientName == name


def test_a_sequence_from_the_instance_is_encoded_by_pydicom_and_logged_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.SOPInstanceUID = ""
    query.add_new(0x00081140, "SQ", Sequence())  # ReferencedImageSequence
    elements = requested(query)
    item = {"00081155": {"vr": "UI", "Value": ["1.2.3"]}}
    result = QueryResult({"SOPInstanceUID": "1.2.4"}, {"00081140": {"vr": "SQ", "Value": [item]}})
    answers = FindAnswers(query, elements, QueryLevel.IMAGE, AE_TITLE, implicit_vr=False)
    with caplog.at_level(logging.DEBUG, logger="kuva.codec.find_answers"):
        got = answers.encode(result)
    assert got == reference_bytes(query, elements, QueryLevel.IMAGE, result, implicit_vr=False)
    assert b"1.2.3" in got
    (record,) = [r for r in caplog.records if FALLBACK in r.getMessage()]
    assert record.levelno == logging.DEBUG
    assert "(00081140)" in record.getMessage()


def test_a_value_pydicom_refuses_fails_as_it_did() -> None:
    query, elements = study_request()
    result = study_match("X")
    result.values["NumberOfStudyRelatedInstances"] = "many"
    answers = FindAnswers(query, elements, QueryLevel.STUDY, AE_TITLE, implicit_vr=True)
    with pytest.raises(ValueError):
        answers.encode(result)


def test_a_value_too_long_for_a_16_bit_length_goes_as_pydicom_writes_it() -> None:
    """Explicit VR: pydicom writes an LO longer than 65535 bytes as UN (PS3.5 6.2.2)."""
    query, elements = study_request()
    query.StudyDescription = ""
    elements = requested(query)
    result = study_match("X")
    result.values["StudyDescription"] = "x" * 70_000
    answers = FindAnswers(query, elements, QueryLevel.STUDY, AE_TITLE, implicit_vr=False)
    with fallbacks() as logged:
        got = outcome(lambda: answers.encode(result))
    assert got == outcome(
        lambda: reference_bytes(query, elements, QueryLevel.STUDY, result, implicit_vr=False)
    )
    assert len(logged) == 1


def _with_group_length(elements: list[DataElement]) -> list[DataElement]:
    return [DataElement(0x00080000, "UL", 4), *elements]


def _twice(elements: list[DataElement]) -> list[DataElement]:
    return [*elements, elements[0]]


@pytest.mark.parametrize("change", [_with_group_length, _twice])
def test_key_lists_a_data_set_would_not_hold_are_encoded_by_pydicom(
    change: Callable[[list[DataElement]], list[DataElement]],
) -> None:
    query, elements = study_request()
    elements = change(elements)
    for implicit in (True, False):
        answers = FindAnswers(query, elements, QueryLevel.STUDY, AE_TITLE, implicit_vr=implicit)
        with fallbacks() as logged:
            got = answers.encode(study_match("X"))
        assert got == reference_bytes(
            query, elements, QueryLevel.STUDY, study_match("X"), implicit_vr=implicit
        )
        assert len(logged) == 1


@pytest.mark.parametrize(
    "setting", ["use_DS_decimal", "datetime_conversion"], ids=["DS as Decimal", "DA as date"]
)
def test_pydicom_converting_values_sends_every_answer_through_pydicom(setting: str) -> None:
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    for keyword in ("SOPInstanceUID", "ContentDate", "SliceThickness"):
        setattr(query, keyword, "")
    elements = requested(query)
    result = QueryResult(
        {"SOPInstanceUID": "1.2.4", "ContentDate": "20240101"},
        {"00180050": {"vr": "DS", "Value": [0.1]}},
    )
    before = getattr(config, setting)
    setattr(config, setting, True)
    try:
        answers = FindAnswers(query, elements, QueryLevel.IMAGE, AE_TITLE, implicit_vr=True)
        with fallbacks() as logged:
            got = outcome(lambda: answers.encode(result))
        expected = outcome(
            lambda: reference_bytes(query, elements, QueryLevel.IMAGE, result, implicit_vr=True)
        )
    finally:
        setattr(config, setting, before)
    assert got == expected
    assert len(logged) == 1
