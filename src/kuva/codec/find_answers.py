"""C-FIND answers' identifiers (PS3.4 C.4.1.1.3.2) encoded straight from index rows.

One ``FindAnswers`` per request: the requested keys' tags, VRs and element headers
are worked out once; each match (``QueryResult``) is then encoded as little endian
implicit or explicit VR bytes (PS3.5 7.1) by joining bytes, with no pydicom
Dataset per match.

The content is that of the C-FIND SCP's answer: every requested key, with the
index's value, the instance's DICOM JSON value, or empty (an empty sequence for
SQ keys); Specific Character Set (0008,0005) as asked when it can carry every
value, else ISO_IR 192 (PS3.5 6.1.2.3); Query/Retrieve Level (0008,0052),
Retrieve AE Title (0008,0054) and Instance Availability (0008,0056) ONLINE. The
bytes are exactly those pydicom's ``write_dataset`` gives for that Dataset
(kuva's identifiers have always gone out that way): text padded to even length
with a space, UIDs with NUL (PS3.5 6.2), values of a multi-valued element joined
by a backslash (PS3.5 6.4), the default repertoire's VRs written in ISO 8859-1 as
pydicom writes them.

A match whose values the byte path does not write exactly as pydicom would
(sequences or binary data from the DICOM JSON, values a VR's writer would refuse
or alter, ambiguous VRs) is encoded by building that Dataset and writing it with
pydicom, logged at DEBUG; pydicom's errors are then raised as they come.
"""

from __future__ import annotations

import logging
import struct
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, STANDARD_VR

from kuva.model.availability import ONLINE
from kuva.model.query import QueryLevel, QueryResult

log = logging.getLogger(__name__)

SPECIFIC_CHARACTER_SET = 0x00080005
QUERY_RETRIEVE_LEVEL = 0x00080052
RETRIEVE_AE_TITLE = 0x00080054
INSTANCE_AVAILABILITY = 0x00080056
UTF_8 = "ISO_IR 192"

# pydicom's writers by VR (pydicom.filewriter.writers):
# write_string: the default repertoire, ISO 8859-1 whatever the character set.
_STRING_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UR"})
# write_text: the answer's character set (PS3.5 6.1.2.3).
_TEXT_VRS = frozenset({"LO", "LT", "SH", "ST", "UC", "UT"})
# write_numbers; the C-FIND SCP answers an index value of these VRs (and IS) as int().
_BINARY_INTEGERS = {"US": struct.Struct("<H"), "UL": struct.Struct("<I")}
_BINARY_INTEGERS |= {"SS": struct.Struct("<h"), "SL": struct.Struct("<i")}
_INTEGER_VRS = frozenset({"IS", *_BINARY_INTEGERS})
_US = struct.Struct("<H")
_UL = struct.Struct("<I")
_JSON_VALUE_KEYS = frozenset({"Value", "BulkDataURI", "InlineBinary"})


class _Unsupported(Exception):
    """A value the byte path would not write as pydicom does: the match is encoded
    through pydicom. The message names tags and VRs only, never a value."""


def value_text(element: DataElement) -> str:
    """An element's value as one string (multiple values joined by a backslash)."""
    value = element.value
    if value is None:
        return ""
    if isinstance(value, MultiValue | list):
        return "\\".join(str(v) for v in value)
    if isinstance(value, bytes):
        return ""
    return str(value)


def _asked_character_set(query: Dataset) -> tuple[str, str | None]:
    """The identifier's Specific Character Set (its first value) and the codec that
    checks whether an answer's values fit it; None: they never do (answered in
    ISO_IR 192)."""
    asked = query.get("SpecificCharacterSet", "")
    asked = asked[0] if isinstance(asked, MultiValue | list) and asked else asked
    if asked in ("", "ISO_IR 6"):
        return (str(asked) if asked else ""), "ascii"
    if asked == "ISO_IR 100":
        return str(asked), "latin-1"
    return UTF_8, None


def _fitting_character_set(asked: str, codec: str | None, values: list[str]) -> str:
    if codec is None:
        return UTF_8
    try:
        for value in values:
            value.encode(codec)
    except UnicodeEncodeError:
        return UTF_8
    return asked


def answer_character_set(query: Dataset, values: list[str]) -> str:
    """The answer's Specific Character Set: the one asked for when it can carry every
    value, otherwise ISO_IR 192 (PS3.5 6.1.2.3); "" for the default repertoire."""
    return _fitting_character_set(*_asked_character_set(query), values)


def answer_dataset(
    query: Dataset,
    elements: list[DataElement],
    level: QueryLevel,
    result: QueryResult,
    retrieve_ae_title: str,
) -> Dataset:
    """The answer to one match as a Dataset (PS3.4 C.4.1.1.3.2): every requested key
    with the index's value, else the instance's DICOM JSON value, else empty."""
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
            if element.VR in _INTEGER_VRS:
                answer.add_new(element.tag, element.VR, int(value))
                continue
            text = str(value)
            texts.append(text)
            answer.add_new(element.tag, element.VR, text.split("\\") if "\\" in text else text)
        elif extra is not None and element.tag in extra:
            answer.add(extra[element.tag])
            texts.append(value_text(extra[element.tag]))
        elif element.VR == "SQ":
            answer.add_new(element.tag, "SQ", Sequence())
        else:
            answer.add_new(element.tag, element.VR, None)
    charset = answer_character_set(query, texts)
    if charset:
        answer.SpecificCharacterSet = charset
    answer.QueryRetrieveLevel = level.value
    answer.RetrieveAETitle = retrieve_ae_title
    # Every match at every level is on line (PS3.4 C.4.1.1.3.2).
    answer.InstanceAvailability = ONLINE
    return answer


def encode_dataset(dataset: Dataset, *, implicit_vr: bool) -> bytes:
    """``dataset`` in little endian implicit or explicit VR, by pydicom (PS3.5 7.1)."""
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = implicit_vr
    write_dataset(fp, dataset)
    return fp.getvalue()


@dataclass(frozen=True, slots=True)
class _Key:
    """A requested key: what the byte path needs of it."""

    tag: int
    keyword: str
    vr: str
    json_tag: str  # the name of its element in DICOM JSON (PS3.18 F.2)
    tag_bytes: bytes


# What the byte path writes for one element: its VR and its values (None = empty).
# Strings are the values as pydicom would hold them; binary integers as ints.
_Planned = tuple[_Key, str, list[str] | list[int] | None]


class FindAnswers:
    """Encodes C-FIND responses' identifiers (PS3.4 C.4.1.1.3.2) for one request."""

    def __init__(
        self,
        query: Dataset,
        elements: list[DataElement],
        level: QueryLevel,
        retrieve_ae_title: str,
        *,
        implicit_vr: bool,
    ) -> None:
        self._query = query
        self._elements = elements
        self._level = level
        self._retrieve_ae_title = retrieve_ae_title
        self._implicit = implicit_vr
        self._heads = _IMPLICIT_HEADS if implicit_vr else _EXPLICIT_HEADS
        self._asked, self._codec = _asked_character_set(query)
        self._keys = sorted(
            (
                _Key(
                    tag=int(e.tag),
                    keyword=e.keyword,
                    vr=str(e.VR),
                    json_tag=f"{e.tag:08X}",
                    tag_bytes=struct.pack("<HH", e.tag >> 16, e.tag & 0xFFFF),
                )
                for e in elements
            ),
            key=lambda k: k.tag,
        )
        tags = [k.tag for k in self._keys]
        self._fallback = self._unsupported_request(tags)
        # Where (0008,0005), (0008,0052), (0008,0054) and (0008,0056) go among the keys.
        self._positions = [
            bisect_left(tags, tag)
            for tag in (
                SPECIFIC_CHARACTER_SET,
                QUERY_RETRIEVE_LEVEL,
                RETRIEVE_AE_TITLE,
                INSTANCE_AVAILABILITY,
            )
        ]
        self._fixed: list[bytes] = []
        self._character_sets: dict[str, bytes] = {}
        if self._fallback is None:
            try:
                self._fixed = [
                    self._element(QUERY_RETRIEVE_LEVEL, "CS", [level.value], "latin-1"),
                    self._element(RETRIEVE_AE_TITLE, "AE", [retrieve_ae_title], "latin-1"),
                    self._element(INSTANCE_AVAILABILITY, "CS", [ONLINE], "latin-1"),
                ]
            except _Unsupported as why:
                self._fallback = str(why)

    def _unsupported_request(self, tags: list[int]) -> str | None:
        """Why no answer to this request can take the byte path, or None."""
        if config.use_DS_decimal or config.datetime_conversion:
            return "pydicom converts DS or date and time values"
        if len(set(tags)) != len(tags) or set(tags) & {
            SPECIFIC_CHARACTER_SET,
            QUERY_RETRIEVE_LEVEL,
            RETRIEVE_AE_TITLE,
            INSTANCE_AVAILABILITY,
        }:
            return "a key requested twice, or one the answer sets itself"
        for key in self._keys:
            if key.tag & 0xFFFF == 0 and key.tag >> 16 > 6:
                return f"group length ({key.json_tag}) requested"
            if key.vr not in STANDARD_VR:
                return f"VR {key.vr} of ({key.json_tag})"
        return None

    def encode(self, result: QueryResult) -> bytes:
        """The identifier of the answer to ``result`` (little endian, implicit or
        explicit VR as the presentation context says; PS3.5 7.1)."""
        reason = self._fallback
        if reason is None:
            try:
                return self._encode(result)
            except _Unsupported as why:
                reason = str(why)
        log.debug("C-FIND answer encoded by pydicom: %s", reason)
        answer = answer_dataset(
            self._query, self._elements, self._level, result, self._retrieve_ae_title
        )
        return encode_dataset(answer, implicit_vr=self._implicit)

    def _encode(self, result: QueryResult) -> bytes:
        values = result.values
        instance = result.dataset_json
        texts: list[str] = []
        planned: list[_Planned] = []
        for key in self._keys:
            if key.keyword in values:
                value = values[key.keyword]
                if value is None or value == "":
                    planned.append((key, key.vr, None))
                elif key.vr in _BINARY_INTEGERS:
                    planned.append((key, key.vr, [_integer(key, value)]))
                elif key.vr == "IS":
                    planned.append((key, key.vr, [str(_integer(key, value))]))
                else:
                    text = str(value)
                    texts.append(text)
                    planned.append((key, key.vr, text.split("\\")))
            elif instance is not None and key.json_tag in instance:
                vr, items = _json_values(key, instance[key.json_tag])
                if items and vr not in _BINARY_INTEGERS:
                    texts.append(_held_text(vr, items))
                planned.append((key, vr, items))
            else:
                planned.append((key, key.vr, None))
        charset = _fitting_character_set(self._asked, self._codec, texts)
        codec = "utf-8" if charset == UTF_8 else "latin-1"
        parts = [self._element_of(key, vr, items, codec) for key, vr, items in planned]
        inserted = [self._character_set_element(charset), *self._fixed]
        for position, element in reversed(list(zip(self._positions, inserted, strict=True))):
            parts.insert(position, element)
        return b"".join(parts)

    def _character_set_element(self, charset: str) -> bytes:
        """(0008,0005), absent for the default repertoire (PS3.5 6.1.2.2)."""
        if not charset:
            return b""
        element = self._character_sets.get(charset)
        if element is None:
            element = self._element(SPECIFIC_CHARACTER_SET, "CS", [charset], "latin-1")
            self._character_sets[charset] = element
        return element

    def _element(self, tag: int, vr: str, items: list[str], codec: str) -> bytes:
        key = _Key(tag, "", vr, f"{tag:08X}", struct.pack("<HH", tag >> 16, tag & 0xFFFF))
        return self._element_of(key, vr, items, codec)

    def _element_of(
        self, key: _Key, vr: str, items: list[str] | list[int] | None, codec: str
    ) -> bytes:
        """One data element (PS3.5 7.1.2 explicit, 7.1.3 implicit VR)."""
        value = b""
        if items is not None:
            writer = _WRITERS.get(vr)
            if writer is None:
                raise _Unsupported(f"VR {vr} of ({key.json_tag}) with a value")
            try:
                value = writer(items, codec)
            except (UnicodeEncodeError, struct.error, ValueError) as error:
                raise _Unsupported(f"a value of ({key.json_tag}) not written as {vr}") from error
        head, length = self._heads[vr]
        try:
            return key.tag_bytes + head + length.pack(len(value)) + value
        except struct.error:  # pydicom writes it as UN (PS3.5 6.2.2 note)
            raise _Unsupported(f"({key.json_tag}) too long for a 16-bit length") from None


def _integer(key: _Key, value: Any) -> int:
    """An index value of an integer VR key as the C-FIND SCP takes it: int()."""
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError) as error:
        # pydicom raises it, or another error of the answer first.
        raise _Unsupported(f"a value of ({key.json_tag}) not an integer") from error


def _even(value: bytes, padding: bytes) -> bytes:
    return value + padding if len(value) % 2 else value


# The value writers, as pydicom's for each VR writes a value (PS3.5 6.2, 6.4).


def _text(strings: list[str], codec: str) -> bytes:
    return _even("\\".join(strings).encode(codec), b" ")


def _person_name(strings: list[str], codec: str) -> bytes:
    # No trailing empty component groups (PS3.5 6.2.1.1).
    return _even("\\".join(s.rstrip("=") for s in strings).encode(codec), b" ")


def _string(strings: list[str], codec: str) -> bytes:
    return _even("\\".join(strings).encode("latin-1"), b" ")


def _uid(strings: list[str], codec: str) -> bytes:
    return _even("\\".join(s.strip() for s in strings).encode("latin-1"), b"\0")


def _numbers(strings: list[str], codec: str) -> bytes:
    return _even("\\".join(_number_string(s) for s in strings).encode("latin-1"), b" ")


def _binary(packer: struct.Struct) -> Callable[[list[int], str], bytes]:
    def write(numbers: list[int], codec: str) -> bytes:
        return b"".join(packer.pack(n) for n in numbers)

    return write


_WRITERS: dict[str, Callable[[Any, str], bytes]] = {
    **dict.fromkeys(_TEXT_VRS, _text),
    **dict.fromkeys(_STRING_VRS, _string),
    "PN": _person_name,
    "UI": _uid,
    "IS": _numbers,
    "DS": _numbers,
    **{vr: _binary(packer) for vr, packer in _BINARY_INTEGERS.items()},
}
# What follows the tag of an element of each VR, and how its length is written.
_IMPLICIT_HEADS: dict[str, tuple[bytes, struct.Struct]] = {
    str(vr): (b"", _UL) for vr in STANDARD_VR
}
_EXPLICIT_HEADS: dict[str, tuple[bytes, struct.Struct]] = {
    str(vr): (vr.encode() + b"\0\0", _UL) if vr in EXPLICIT_VR_LENGTH_32 else (vr.encode(), _US)
    for vr in STANDARD_VR
}


def _number_string(text: str) -> str:
    """An IS or DS value as pydicom holds one made from a string: stripped, and a
    number (a blank one stays as it is)."""
    if text.strip() == "":
        return text
    float(text)  # ValueError: pydicom refuses it
    return text.strip()


def _held_text(vr: str, items: list[str] | list[int]) -> str:
    """The value of a DICOM JSON element as the C-FIND SCP's text of it."""
    strings = [str(item) for item in items]
    if vr == "PN":
        return "\\".join(s.rstrip("=") for s in strings)
    if vr == "UI":
        return "\\".join(s.strip() for s in strings)
    return "\\".join(strings)


def _json_values(key: _Key, element: Any) -> tuple[str, list[str] | list[int] | None]:
    """The VR and values of a DICOM JSON element (PS3.18 F.2) as pydicom's
    ``Dataset.from_json`` makes them, for the VRs the byte path writes."""
    where = f"({key.json_tag}) in DICOM JSON"
    if not isinstance(element, dict):
        raise _Unsupported(f"{where} is not an element")
    vr = element.get("vr")
    if not isinstance(vr, str) or vr not in STANDARD_VR:
        raise _Unsupported(f"{where} has no standard VR")
    found = element.keys() & _JSON_VALUE_KEYS
    if not found:
        return vr, None
    raw = element.get("Value")
    if found != {"Value"} or not isinstance(raw, list):
        raise _Unsupported(f"{where} has bulk data or binary")
    if not raw:
        return vr, None
    try:
        if vr in _BINARY_INTEGERS:
            return vr, [_json_int(v) for v in raw]
        if vr == "IS":
            return vr, [str(_json_int(v)) for v in raw]
        if vr == "DS":
            return vr, [repr(_json_float(v)) for v in raw]
    except (TypeError, ValueError, OverflowError) as error:
        raise _Unsupported(f"{where} has a value pydicom does not take as {vr}") from error
    if vr == "PN":
        strings = [_json_person_name(where, v) for v in raw]
    elif vr in _TEXT_VRS or vr in _STRING_VRS or vr == "UI":
        strings = ["" if v is None else v for v in raw]
        if not all(isinstance(s, str) for s in strings):
            raise _Unsupported(f"{where} has a value that is not a string")
    else:
        raise _Unsupported(f"{where}: VR {vr}")
    # pydicom splits a value with a backslash into several (PS3.5 6.4).
    return vr, [part for s in strings for part in s.split("\\")]


def _json_int(value: Any) -> int:
    if value is None:  # pydicom would hold None among the numbers
        raise TypeError("an empty value among several")
    return int(value)


def _json_float(value: Any) -> float:
    if value is None:
        raise TypeError("an empty value among several")
    return float(value)


def _json_person_name(where: str, value: Any) -> str:
    """A PN value from its JSON object (PS3.18 F.2.2) as pydicom joins the groups."""
    if value is None:
        return ""
    if not isinstance(value, dict):
        raise _Unsupported(f"{where} has a person name that is not an object")
    groups = ["Alphabetic", "Ideographic", "Phonetic"]
    used = 3 if "Phonetic" in value else 2 if "Ideographic" in value else 1
    names = [value.get(group, "") for group in groups[:used]]
    if not all(isinstance(name, str) for name in names):
        raise _Unsupported(f"{where} has a person name group that is not a string")
    return "=".join(names)
