"""The bytes of an outgoing object in the transfer syntax it goes out in.

Shared by every path that sends whole objects (C-MOVE, C-GET, WADO-RS, WADO-URI,
RAD-69). Three ways out, cheapest first:

* verbatim: no correction applies and the stored transfer syntax is accepted, the
  blob is streamed as it is;
* spliced: a patient correction applies (kuva.model.outgoing): only the header up
  to the pixel data is decoded, corrected and encoded again; the pixel data and
  whatever follows it are streamed from the blob unchanged, so a corrected 2 GB
  object still goes out in constant memory;
* converted: another transfer syntax is asked for (or the stored one is deflated,
  where the header cannot be re-encoded alone): the object is decoded, corrected
  and converted (kuva.codec.transcode), one object in memory at a time.

An object is anything of the shape ``OutgoingObject`` (services.retrieve's
StoredObject): this codec reads its bytes and has it apply its correction, and
knows neither the index nor the blob store.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import BinaryIO, Protocol

from pydicom import dcmread
from pydicom.charset import convert_encodings
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.tag import Tag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

from kuva.codec.transcode import transcode
from kuva.model.outgoing import CORRECTED_KEYWORDS

CHUNK = 1024 * 1024


class StoredBytes(Protocol):
    """What the codec needs to know of the stored bytes: their length and the
    transfer syntax they are in (PS3.5 10)."""

    @property
    def size(self) -> int: ...

    @property
    def transfer_syntax_uid(self) -> str: ...


class OutgoingObject(Protocol):
    """A stored object on its way out, as the codec sees it.

    ``instance``: its stored bytes' length and transfer syntax. ``verbatim``: no
    correction applies.
    ``stream``: the stored Part 10 bytes (the caller closes the stream).
    ``coerce``: apply the correction to a data set (the whole object or its header
    up to the pixel data), in place; whether anything changed. ``dataset``: the
    whole object decoded with its correction applied.
    """

    @property
    def instance(self) -> StoredBytes: ...

    @property
    def verbatim(self) -> bool: ...

    def stream(self) -> BinaryIO: ...

    def coerce(self, dataset: Dataset) -> bool: ...

    def dataset(self) -> Dataset: ...


def _chunks(stream: BinaryIO, first: bytes = b"") -> Iterator[bytes]:
    with stream:
        if first:
            yield first
        while chunk := stream.read(CHUNK):
            yield chunk


# Top-level elements a correction writes: the Patient Module attributes of
# kuva.model.outgoing.CORRECTED_KEYWORDS and Original Attributes Sequence.
_PATIENT_TAGS = tuple(Tag(keyword) for keyword in CORRECTED_KEYWORDS)
_ORIGINAL_ATTRIBUTES = Tag("OriginalAttributesSequence")
_CORRECTED_TAGS = (*_PATIENT_TAGS, _ORIGINAL_ATTRIBUTES)


def _start(element: RawDataElement) -> int:
    """Where a raw top-level element's header begins (PS3.5 7.1.1 and 7.1.2)."""
    if element.is_implicit_VR or element.VR not in EXPLICIT_VR_LENGTH_32:
        return element.value_tell - 8
    return element.value_tell - 12


def _layout(header: Dataset, rest: int) -> dict[int, tuple[int | None, int | None]]:
    """Start and end of each top-level element in the stored bytes, where they can be
    told: from a raw element's value position and length; for one pydicom already
    decoded while reading (it keeps no length), from its neighbours (elements are
    contiguous, in tag order). An unknown bound is None."""
    tags = sorted(header.keys())
    starts: list[int | None] = []
    ends: list[int | None] = []
    for tag in tags:
        element = header.get_item(tag)
        if isinstance(element, RawDataElement):
            starts.append(_start(element))
            defined = element.length != 0xFFFFFFFF
            ends.append(element.value_tell + element.length if defined else None)
        else:
            starts.append(None)
            ends.append(None)
    for i in range(len(tags)):
        if starts[i] is None and i > 0:
            starts[i] = ends[i - 1]
        if ends[i] is None:
            ends[i] = starts[i + 1] if i + 1 < len(tags) else rest
    return dict(zip(tags, zip(starts, ends, strict=True), strict=True))


def _raw_edits(header: Dataset, rest: int) -> list[tuple[int, int, int]] | None:
    """Where each corrected element goes in the stored bytes, before the header is
    corrected: (start, end, tag) to replace bytes start:end (an insertion when they
    are equal). None when the stored header does not allow a byte-level edit: big
    endian, a group length of an edited group, an Original Attributes Sequence
    already there, elements out of tag order, or a bound that cannot be told."""
    if header.original_encoding[1] is not True or _ORIGINAL_ATTRIBUTES in header:
        return None
    if Tag(0x0010, 0x0000) in header or Tag(0x0400, 0x0000) in header:
        return None
    layout = _layout(header, rest)
    known = [start for start, _ in layout.values() if start is not None]
    if known != sorted(known):
        return None
    edits: list[tuple[int, int, int]] = []
    for tag in _CORRECTED_TAGS:
        if tag in layout:
            start, end = layout[tag]
        else:
            later = next((t for t in layout if t > tag), None)
            start = end = rest if later is None else layout[later][0]
        if start is None or end is None:
            return None
        edits.append((start, end, tag))
    return sorted(edits)


def _edited_header(stored: bytes, header: Dataset, edits: list[tuple[int, int, int]]) -> bytes:
    """The stored header bytes with the corrected elements written in place, each
    encoded alone in the stored transfer syntax and character set (the caller
    checked that the correction kept the character set)."""
    encodings = convert_encodings(header.get("SpecificCharacterSet") or "ISO_IR 6")
    parts: list[bytes] = []
    done = 0
    for start, end, tag in edits:
        parts.append(stored[done:start])
        if tag in header:
            fp = DicomBytesIO()
            fp.is_little_endian = True
            fp.is_implicit_VR = header.original_encoding[0] is True
            write_data_element(fp, header[tag], encodings)
            parts.append(fp.getvalue())
        done = end
    parts.append(stored[done:])
    return b"".join(parts)


def _spliced(obj: OutgoingObject) -> tuple[Iterator[bytes], int]:
    """The corrected header followed by the stored bytes from the pixel data on.

    pydicom stops before (7FE0,0010) (or float / double float pixel data) and
    leaves the stream at the start of that element: what follows is top-level
    elements in the same transfer syntax, valid after any re-encoded header.
    Usually only the corrected elements are encoded, into the stored header bytes;
    when that cannot be done (``_raw_edits``) or the character set changes, pydicom
    writes the whole corrected header.
    """
    stream = obj.stream()
    try:
        header = dcmread(stream, stop_before_pixels=True)
        rest = stream.tell()
        edits = _raw_edits(header, rest)
        charset = header.get("SpecificCharacterSet")
        if not obj.coerce(header):  # the object already carries the current values
            stream.seek(0)
            return _chunks(stream), obj.instance.size
        data = None
        if edits is not None and header.get("SpecificCharacterSet") == charset:
            stream.seek(0)
            data = _edited_header(stream.read(rest), header, edits)
        if data is None:
            out = io.BytesIO()
            header.save_as(out, enforce_file_format=True)
            data = out.getvalue()
        stream.seek(rest)
    except BaseException:
        stream.close()
        raise
    return _chunks(stream, data), len(data) + obj.instance.size - rest


def encoded(obj: OutgoingObject, target: UID) -> tuple[Iterator[bytes], int]:
    """The Part 10 object as it goes out in ``target``: its chunks and its length.

    Raises TranscodeError when it cannot be converted, OSError when the blob
    cannot be read.
    """
    stored = obj.instance.transfer_syntax_uid
    if target == stored:
        if obj.verbatim:
            return _chunks(obj.stream()), obj.instance.size
        if stored != DeflatedExplicitVRLittleEndian:
            return _spliced(obj)
    ds = transcode(obj.dataset(), target)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    data = out.getvalue()
    return iter((data,)), len(data)
