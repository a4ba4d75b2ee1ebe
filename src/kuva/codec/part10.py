"""DICOM file format (PS3.10) as kuva stores it, and reading what the index needs.

A stored object is kuva's *canonical* File Meta Information followed by the data
set exactly as received (never re-encoded). The file meta holds only what is fixed
by the object itself (SOP Class, SOP Instance, Transfer Syntax) and kuva's fixed
implementation identity, so the same data set always gives the same bytes and
the same SHA-256, whichever association, version or interface brought it.
"""

from __future__ import annotations

import io
import logging
import re
import struct
from pathlib import Path

from pydicom import dcmread
from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from kuva.codec.dicom_json import ascii_compatible, dataset_json
from kuva.model.instance import (
    InstanceAttributes,
    PatientAttributes,
    SeriesAttributes,
    StudyAttributes,
)
from kuva.model.rejection import (
    CODING_SCHEME,
    REJECTION_TITLES,
    RejectedReference,
    RejectionNote,
)
from kuva.model.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from kuva.model.xds import oid_problem
from kuva.storage import BlobWriter

log = logging.getLogger(__name__)

PREAMBLE = b"\x00" * 128 + b"DICM"


def _element(group_element: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element with a 16-bit length (PS3.5 7.1.2)."""
    return (
        (group_element >> 16).to_bytes(2, "little")
        + (group_element & 0xFFFF).to_bytes(2, "little")
        + vr
        + len(value).to_bytes(2, "little")
        + value
    )


def _ui(uid: str) -> bytes:
    value = uid.encode("ascii")
    return value + b"\x00" if len(value) % 2 else value


_VERSION = b"\x02\x00\x01\x00OB\x00\x00" + (2).to_bytes(4, "little") + b"\x00\x01"
_IMPLEMENTATION = _element(0x00020012, b"UI", _ui(IMPLEMENTATION_CLASS_UID)) + _element(
    0x00020013,
    b"SH",
    IMPLEMENTATION_VERSION_NAME.encode("ascii")
    + (b" " if len(IMPLEMENTATION_VERSION_NAME) % 2 else b""),
)


def canonical_file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information group (PS3.10 7.1).

    Encoded by hand (explicit VR little endian, elements in tag order, UIDs padded
    with NUL, SH with a space): this runs for every received object, and is the
    same encoding pydicom's ``write_file_meta_info`` gives (a unit test holds it).
    """
    body = (
        _VERSION
        + _element(0x00020002, b"UI", _ui(sop_class_uid))
        + _element(0x00020003, b"UI", _ui(sop_instance_uid))
        + _element(0x00020010, b"UI", _ui(transfer_syntax))
        + _IMPLEMENTATION
    )
    group_length = b"\x02\x00\x00\x00UL\x04\x00" + len(body).to_bytes(4, "little")
    return PREAMBLE + group_length + body


class Part10Rewriter:
    """A file-like that a Part 10 object is written into (a STOW-RS part, kuva's own
    manifests): the sender's File Meta Information is replaced by kuva's canonical
    one and everything streams into a ``BlobWriter``, which hashes on the way. The
    object is stored in one pass with no copy in memory. (C-STORE data sets carry no
    file meta: dicom.storage_scp writes the canonical one before them itself.)
    """

    def __init__(self, blob: BlobWriter) -> None:
        self.blob = blob
        self.name = blob.name
        self._head = bytearray()
        self._meta_end: int | None = None  # offset where the data set starts
        self._passthrough = False
        self.sop_class_uid = ""
        self.sop_instance_uid = ""
        self.transfer_syntax_uid = ""

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._passthrough:
            return self.blob.write(data)
        self._head += data
        if self._meta_end is None and len(self._head) >= 144:
            # (0002,0000) UL group length is the first element after the preamble.
            group_length = int.from_bytes(self._head[140:144], "little")
            self._meta_end = 144 + group_length
        if self._meta_end is not None and len(self._head) >= self._meta_end:
            self._rewrite_meta()
        return len(data)

    def _rewrite_meta(self) -> None:
        assert self._meta_end is not None
        meta = dcmread(io.BytesIO(bytes(self._head[: self._meta_end])), force=True).file_meta
        self.sop_class_uid = str(meta.MediaStorageSOPClassUID)
        self.sop_instance_uid = str(meta.MediaStorageSOPInstanceUID)
        self.transfer_syntax_uid = str(meta.TransferSyntaxUID)
        self.blob.write(
            canonical_file_meta(self.sop_class_uid, self.sop_instance_uid, self.transfer_syntax_uid)
        )
        rest = self._head[self._meta_end :]
        if rest:
            self.blob.write(rest)
        self._head = bytearray()
        self._passthrough = True

    @property
    def complete(self) -> bool:
        """True once the file meta was replaced (every data set byte reached the blob)."""
        return self._passthrough

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.blob.close()


def read_header(path: Path | str) -> Dataset:
    """Read a stored or received object up to (not including) its pixel data."""
    return dcmread(path, stop_before_pixels=True)


def _text(ds: Dataset, keyword: str) -> str:
    try:
        value = ds.get(keyword)
    except Exception:
        return ""
    if value is None:
        return ""
    return str(value).strip()


def patient_issuer(ds: Dataset) -> str:
    """Issuer of Patient ID: (0010,0021) when it is an OID; else the Universal Entity
    ID of type ISO in Issuer of Patient ID Qualifiers Sequence (0010,0024), the
    issuer's OID (PS3.3 C.7.1.1.1.1); else (0010,0021) as given ("" when absent)."""
    issuer = _text(ds, "IssuerOfPatientID")
    if issuer and oid_problem(issuer) is None:
        return issuer
    try:
        qualifiers = ds.get("IssuerOfPatientIDQualifiersSequence") or []
        for item in qualifiers:
            entity = _text(item, "UniversalEntityID")
            if entity and _text(item, "UniversalEntityIDType") == "ISO":
                return entity
    except Exception:  # an unreadable sequence: (0010,0021) alone
        pass
    return issuer


def undeclared_character_set(ds: Dataset) -> bool:
    """True when ``ds`` has no Specific Character Set (0008,0005), or an empty one."""
    try:
        return not ds.get("SpecificCharacterSet")
    except Exception:
        return False


def apply_sender_defaults(ds: Dataset, *, issuer: str = "", character_set: str = "") -> None:
    """What a node declares for what its data sets leave out ([[nodes]]
    default_character_set, default_issuer), put into the data set in memory before
    any text of it is read: its text is decoded with ``character_set`` when it has no
    Specific Character Set (PS3.5 6.1.2.2), and ``issuer`` is its Issuer of Patient
    ID when it has none (``patient_issuer``). The received bytes stay as they are."""
    if character_set and undeclared_character_set(ds):
        ds.pop(0x00080005, None)  # an empty one, perhaps of another VR: replaced whole
        ds.SpecificCharacterSet = character_set
        implicit, little = ds.original_encoding
        ds.set_original_encoding(implicit, little, convert_encodings([character_set]))
    if issuer and not patient_issuer(ds):
        ds.pop(0x00100021, None)  # one that cannot be read counts as none (not converted)
        ds.IssuerOfPatientID = issuer


def _int(ds: Dataset, keyword: str, problems: list[str]) -> int | None:
    try:
        value = ds.get(keyword)
    except Exception:
        problems.append(f"{keyword} unreadable")
        return None
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# A value read straight from its bytes: printable ASCII but the backslash (one
# value), then padding.
_PLAIN_VALUE = re.compile(rb"([\x20-\x5b\x5d-\x7e]*)[ \x00]*")
_PLAIN_INTEGER = re.compile(rb" *([+-]?[0-9]{1,9}) *")
_US = struct.Struct("<H")


class _HeaderReader:
    """The values ``extract_attributes`` reads, as ``_text`` and ``_int`` give them.

    A plain value (one value of printable ASCII, in a character set where ASCII is
    ASCII) is read straight from the element's raw bytes, without pydicom converting
    it (about 20 µs each, a fifth of a C-STORE header's parse); anything else goes
    through pydicom. tests/unit/test_part10.py checks both give the same answers."""

    def __init__(self, ds: Dataset) -> None:
        self._ds = ds
        self._plain = ascii_compatible(ds)

    def _raw(self, keyword: str) -> RawDataElement | None:
        if not self._plain:
            return None
        tag = _TAGS.get(keyword)
        if tag is None:
            tag = _TAGS[keyword] = tag_for_keyword(keyword) or 0
        try:
            raw = self._ds.get_item(tag)
        except Exception:
            return None
        return raw if isinstance(raw, RawDataElement) else None

    def text(self, keyword: str) -> str:
        raw = self._raw(keyword)
        if raw is not None:
            if raw.value is None:
                return _text(self._ds, keyword)
            match = _PLAIN_VALUE.fullmatch(raw.value)
            if match is not None:
                return match.group(1).decode("ascii").strip()
        return _text(self._ds, keyword)

    def integer(self, keyword: str, problems: list[str]) -> int | None:
        raw = self._raw(keyword)
        if raw is not None and raw.value:
            vr = raw.VR or dictionary_VR(raw.tag)
            if vr == "IS":
                match = _PLAIN_INTEGER.fullmatch(raw.value.rstrip(b"\x00"))
                if match is not None:
                    return int(match.group(1))
            elif vr == "US" and len(raw.value) == 2 and raw.is_little_endian:
                return int(_US.unpack(raw.value)[0])
        return _int(self._ds, keyword, problems)


_TAGS: dict[str, int] = {}


def extract_attributes(ds: Dataset, transfer_syntax_uid: str) -> InstanceAttributes:
    """What the index keeps of ``ds``, at every level of the study tree."""
    problems: list[str] = []
    reader = _HeaderReader(ds)
    text = reader.text
    try:
        json_text = dataset_json(ds)
    except Exception as exc:  # pragma: no cover - dataset_json guards each element
        log.warning("could not build DICOM JSON: %s", exc)
        json_text = "{}"
    return InstanceAttributes(
        sop_class_uid=text("SOPClassUID"),
        sop_instance_uid=text("SOPInstanceUID"),
        transfer_syntax_uid=transfer_syntax_uid,
        patient=PatientAttributes(
            patient_id=text("PatientID"),
            issuer=patient_issuer(ds),
            name=text("PatientName"),
            birth_date=text("PatientBirthDate"),
            sex=text("PatientSex"),
        ),
        study=StudyAttributes(
            study_instance_uid=text("StudyInstanceUID"),
            study_date=text("StudyDate"),
            study_time=text("StudyTime"),
            accession_number=text("AccessionNumber"),
            study_id=text("StudyID"),
            description=text("StudyDescription"),
            referring_physician_name=text("ReferringPhysicianName"),
        ),
        series=SeriesAttributes(
            series_instance_uid=text("SeriesInstanceUID"),
            modality=text("Modality"),
            series_number=reader.integer("SeriesNumber", problems),
            description=text("SeriesDescription"),
            body_part_examined=text("BodyPartExamined"),
            series_date=text("SeriesDate"),
            series_time=text("SeriesTime"),
            institution_name=text("InstitutionName"),
            station_name=text("StationName"),
        ),
        instance_number=reader.integer("InstanceNumber", problems),
        content_date=text("ContentDate"),
        content_time=text("ContentTime"),
        number_of_frames=reader.integer("NumberOfFrames", problems),
        rows=reader.integer("Rows", problems),
        columns=reader.integer("Columns", problems),
        dataset_json=json_text,
        parse_problems=tuple(problems),
        rejection_note=rejection_note(ds, problems),
    )


# Key Object Selection Document Storage (PS3.4 B.5): the SOP Class of rejection notes.
KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"


def rejection_note(ds: Dataset, problems: list[str]) -> RejectionNote | None:
    """The IOCM rejection note ``ds`` is, if it is one: a KOS whose Document Title
    is a CID 7011 code; the instances of its Current Requested Procedure Evidence
    Sequence (PS3.3 C.17.2). A note that lists nothing is a problem."""
    if _text(ds, "SOPClassUID") != KEY_OBJECT_SELECTION:
        return None
    try:
        (title,) = ds.ConceptNameCodeSequence
        code, scheme = str(title.CodeValue), str(title.CodingSchemeDesignator)
    except Exception:
        return None  # not a well-formed title: an ordinary KOS
    if scheme != CODING_SCHEME or code not in REJECTION_TITLES:
        return None
    references: list[RejectedReference] = []
    try:
        for study in ds.get("CurrentRequestedProcedureEvidenceSequence", []):
            for series in study.get("ReferencedSeriesSequence", []):
                for item in series.get("ReferencedSOPSequence", []):
                    references.append(
                        RejectedReference(
                            study_instance_uid=str(study.StudyInstanceUID),
                            series_instance_uid=str(series.SeriesInstanceUID),
                            sop_class_uid=str(item.ReferencedSOPClassUID),
                            sop_instance_uid=str(item.ReferencedSOPInstanceUID),
                        )
                    )
    except Exception as exc:
        problems.append(f"rejection note evidence unreadable ({type(exc).__name__})")
        return None
    if not references:
        problems.append("rejection note lists no instances")
    return RejectionNote(code, tuple(references))
