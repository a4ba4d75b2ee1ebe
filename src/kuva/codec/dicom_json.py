"""DICOM JSON (PS3.18 F.2) of a received data set, for the index.

Every C-STORE and STOW-RS instance's header is kept in the index as DICOM JSON, so
that metadata responses never open a blob. pydicom builds it by converting each
element to Python values first (``DataElement.to_json_dict``), about 1.2 ms for a CT
header: the largest piece of CPU a C-STORE costs kuva. Most header elements are
plain: ASCII text, numbers, small binary values. Those are written here straight
from the element's raw bytes (``Dataset.get_item``), with exactly the values pydicom
would give (tests/unit/test_dicom_json.py checks this on generated data sets);
everything else (sequences, text in other character sets or with escape sequences,
person names with component groups, numbers pydicom would have to interpret, UN,
ambiguous VRs) goes through pydicom as before.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import struct
from collections.abc import Callable
from typing import Any

from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID

log = logging.getLogger(__name__)

# Binary values longer than this (in base64) are left out of the index's DICOM JSON
# and referenced instead (PS3.18 F.2.6 BulkDataURI).
BULK_DATA_THRESHOLD = 1024
_INLINE_MAX = (BULK_DATA_THRESHOLD // 4) * 3  # bytes whose base64 fits the threshold

# Character sets whose bytes below 0x80 decode to ASCII (ISO 2022 switches with
# ESC, refused below; ISO_IR 13 puts a yen sign at 0x5C and is not here).
_ASCII_COMPATIBLE = {
    "iso8859",  # pydicom's name for the default repertoire, ISO_IR 6
    "latin_1",
    "iso8859_2",
    "iso8859_3",
    "iso8859_4",
    "iso_ir_126",
    "iso_ir_127",
    "iso_ir_138",
    "iso_ir_144",
    "iso_ir_148",
    "iso_ir_166",
    "UTF8",
    "GB18030",
    "GBK",
}

# SV and UV go through pydicom: it passes 64-bit values through a float.
_STRUCT = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d"}
_BINARY = {"OB", "OD", "OF", "OL", "OV", "OW"}
# At most 12 characters (PS3.5 6.2); pydicom may pass longer ones through a float.
_IS = re.compile(r"(?=.{1,12}$) *[+-]?[0-9]+ *")
_DS = re.compile(r" *[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)? *")

Json = dict[str, Any]


def _bulk_uri(element: DataElement) -> str:
    return f"bulk:{element.tag:08X}"


def dataset_json(ds: Dataset) -> str:
    """DICOM JSON of ``ds`` with bulk data as ``bulk:<tag>`` references.

    An element whose value cannot be converted is left out (and logged at DEBUG):
    the stored bytes keep it; the JSON is the index's copy for metadata responses.
    """
    plain = ascii_compatible(ds)
    result: Json = {}
    for tag in sorted(ds.keys()):
        key = f"{tag:08X}"
        try:
            raw = ds.get_item(tag)
            element = _from_raw(raw, plain) if isinstance(raw, RawDataElement) else None
            if element is None:
                element = ds[tag].to_json_dict(
                    bulk_data_element_handler=_bulk_uri, bulk_data_threshold=BULK_DATA_THRESHOLD
                )
            result[key] = element
        except Exception as exc:
            log.debug("element %s left out of the index JSON: %s", key, exc)
    if "Rows" in ds and "7FE00010" not in result:
        # Read with stop_before_pixels: the pixel data is referenced, never copied.
        try:
            wide = ds.get("BitsAllocated", 8) > 8 and not _compressed(ds)
        except Exception:  # an unreadable Bits Allocated or transfer syntax
            wide = False
        result["7FE00010"] = {"vr": "OW" if wide else "OB", "BulkDataURI": "bulk:7FE00010"}
    return json.dumps(result, separators=(",", ":"), ensure_ascii=False)


def _compressed(ds: Dataset) -> bool:
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    return bool(ts is not None and UID(ts).is_compressed)


def ascii_compatible(ds: Dataset) -> bool:
    """Whether ASCII text of ``ds`` decodes as ASCII in its character set."""
    try:
        encodings = ds.original_character_set
    except AttributeError:
        return True  # never read from bytes: pydicom's default repertoire
    if isinstance(encodings, str):
        encodings = [encodings]
    return all(encoding in _ASCII_COMPATIBLE for encoding in encodings)


def _from_raw(raw: RawDataElement, plain_text: bool) -> Json | None:
    """The JSON of ``raw`` as pydicom would give it, or None to leave it to pydicom."""
    if raw.tag.is_private or raw.value is None:
        return None
    vr = raw.VR
    if vr is None:  # implicit VR: the dictionary's
        try:
            vr = dictionary_VR(raw.tag)
        except KeyError:
            return None
    value: bytes = raw.value
    handler = _HANDLERS.get(vr)
    if handler is None:
        return None
    if handler is _text and not plain_text:
        return None
    if not value:
        return {"vr": vr}
    values = handler(value, vr, raw.is_little_endian)
    if values is None:
        return None
    if isinstance(values, dict):
        return values
    return {"vr": vr, "Value": values} if values else {"vr": vr}


def _ascii(value: bytes) -> str | None:
    if not value.isascii() or b"\x1b" in value:
        return None
    return value.decode("ascii")


def _strings(value: bytes, vr: str, little: bool) -> list[Any] | None:
    """AS, CS, DA, DT, TM (pydicom's convert_string), UI."""
    text = _ascii(value)
    if text is None or (vr in ("DA", "DT", "TM") and pydicom_config.datetime_conversion):
        return None
    text = text.rstrip(" \x00")
    if not text:
        return []
    if vr == "UI":  # pydicom's UID strips each
        return [part.strip() for part in text.split("\\")]
    return text.split("\\")


def _ae(value: bytes, vr: str, little: bool) -> list[Any] | None:
    text = _ascii(value)
    if text is None:
        return None
    values = [part.strip() for part in text.split("\\")]
    return [] if values == [""] else values


def _ur(value: bytes, vr: str, little: bool) -> list[Any] | None:
    text = _ascii(value)
    if text is None:
        return None
    text = text.rstrip()
    return [text] if text else []


def _text(value: bytes, vr: str, little: bool) -> list[Any] | None:
    """SH, LO, UC (split at backslashes), ST, LT, UT (not), PN without component
    groups; only ASCII text in an ASCII-compatible character set."""
    text = _ascii(value)
    if text is None:
        return None
    if vr in ("ST", "LT", "UT"):
        text = text.rstrip("\0 ")
        return [text] if text else []
    if vr == "PN":
        text = value.rstrip(b"\x00 ").decode("ascii")
        if not text:
            return []
        names = text.split("\\")
        if "=" in text or "" in names:
            return None  # component groups, empty names: pydicom's PersonName
        return [{"Alphabetic": name} for name in names]
    values = [part.rstrip("\0 ") for part in text.split("\\")]
    return [] if values == [""] else values


def _decimal_strings(value: bytes, vr: str, little: bool) -> list[Any] | None:
    """IS as ints, DS as floats, when every value is in its plain DICOM form."""
    if vr == "DS" and (pydicom_config.use_DS_decimal or pydicom_config.use_DS_numpy):
        return None
    text = _ascii(value)
    if text is None:
        return None
    if vr == "DS":  # pydicom strips DS at both ends, IS at the end only
        text = text.strip()
    text = text.rstrip(" \x00")
    if not text:
        return []
    parts = text.split("\\")
    pattern, convert = (_IS, int) if vr == "IS" else (_DS, float)
    if not all(pattern.fullmatch(part) for part in parts):
        return None
    return [convert(part) for part in parts]


def _numbers(value: bytes, vr: str, little: bool) -> list[Any] | None:
    code = _STRUCT[vr]
    size = struct.calcsize("=" + code)
    if len(value) % size:
        return None
    return list(struct.unpack(f"{'<' if little else '>'}{len(value) // size}{code}", value))


def _binary(value: bytes, vr: str, little: bool) -> Json | None:
    if len(value) > _INLINE_MAX:
        return None  # a BulkDataURI: pydicom's handler names it
    return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}


_Handler = Callable[[bytes, str, bool], "list[Any] | Json | None"]
_HANDLERS: dict[str, _Handler] = {
    **dict.fromkeys(("AS", "CS", "DA", "DT", "TM", "UI"), _strings),
    "AE": _ae,
    "UR": _ur,
    **dict.fromkeys(("SH", "LO", "UC", "ST", "LT", "UT", "PN"), _text),
    "IS": _decimal_strings,
    "DS": _decimal_strings,
    **dict.fromkeys(_STRUCT, _numbers),
    **dict.fromkeys(_BINARY, _binary),
}
