"""Media types and transfer syntaxes of DICOMweb responses (PS3.18 8.7).

A client says what it accepts in the ``Accept`` header (RFC 9110 12.5.1): for
WADO-RS retrieval a list of ``multipart/related; type="..."; transfer-syntax=...``
entries, each optionally weighted with ``q``. This module turns that header into
an ordered list of ``Acceptable`` entries and answers, for one stored object,
which transfer syntax to send it in.

Defaults (PS3.18 8.7.3.5.2 and Table 8.7.3-4/-5): a part of type
``application/dicom`` without a ``transfer-syntax`` parameter is sent in Explicit
VR Little Endian; an uncompressed frame or bulk data part is
``application/octet-stream`` (Explicit VR Little Endian bytes). ``transfer-syntax=*``
means "as stored": the archive's bytes go out unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pydicom.uid import UID, ExplicitVRLittleEndian

from kuva.codec.transcode import choose

DICOM = "application/dicom"
OCTET_STREAM = "application/octet-stream"
ANY = "*/*"
AS_STORED = "*"

# Media types of compressed frames, by transfer syntax (PS3.18 Table 8.7.3-5).
FRAME_MEDIA_TYPES: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}
_ALIASES = {"image/x-dicom-rle": "image/dicom-rle", "image/x-jls": "image/jls"}


class NotAcceptable(Exception):
    """Nothing the client accepts can be produced (HTTP 406)."""


@dataclass(frozen=True)
class Acceptable:
    """One entry of an Accept header.

    ``part_type``: the media type of the parts (the ``type`` parameter of
    multipart/related), or the media type itself for a single-part entry.
    ``transfer_syntax``: None when not given, ``"*"`` for "as stored", else a UID.
    """

    media_type: str
    part_type: str
    transfer_syntax: str | None
    quality: float

    def accepts_part(self, part_type: str) -> bool:
        if self.part_type == ANY:
            return True
        if self.part_type.endswith("/*"):
            return part_type.startswith(self.part_type[:-1])
        return self.part_type == part_type


def _split_header(value: str) -> list[str]:
    """Split on commas outside quoted strings."""
    items: list[str] = []
    current: list[str] = []
    quoted = False
    for char in value:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    items.append("".join(current))
    return [item.strip() for item in items if item.strip()]


def _parameters(fields: Iterable[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for field in fields:
        name, sep, value = field.partition("=")
        if not sep:
            continue
        params[name.strip().lower()] = value.strip().strip('"')
    return params


def parse_accept(header: str | None, default_part_type: str) -> list[Acceptable]:
    """The Accept header's entries, best first (RFC 9110 12.5.1).

    A missing header, ``*/*`` and ``multipart/related`` without ``type`` mean
    ``default_part_type``. Entries with ``q=0`` are left out. Raises ValueError
    for an entry that cannot be read.
    """
    if header is None or not header.strip():
        return [Acceptable("multipart/related", default_part_type, None, 1.0)]
    entries: list[tuple[float, int, Acceptable]] = []
    for position, item in enumerate(_split_header(header)):
        media_type, *fields = (part.strip() for part in item.split(";"))
        media_type = media_type.lower()
        if "/" not in media_type:
            raise ValueError(f"Accept: {media_type!r} is not a media type")
        params = _parameters(fields)
        try:
            quality = float(params.get("q", "1"))
        except ValueError as exc:
            raise ValueError(f"Accept: bad q value in {item!r}") from exc
        if quality <= 0:
            continue
        syntax = params.get("transfer-syntax")
        if media_type in ("multipart/related", "multipart/*"):
            part_type = params.get("type", default_part_type).lower()
        elif media_type == ANY:
            part_type = default_part_type
        else:
            part_type = media_type
        part_type = _ALIASES.get(part_type, part_type)
        entries.append((-quality, position, Acceptable(media_type, part_type, syntax, quality)))
    entries.sort(key=lambda entry: (entry[0], entry[1]))
    return [entry[2] for entry in entries]


def dicom_transfer_syntax(stored: str, accepted: list[Acceptable]) -> UID:
    """The transfer syntax to send an application/dicom part in (PS3.18 8.7.3.5.2).

    The first acceptable entry that can be met wins: ``*`` is the stored syntax,
    a missing parameter means Explicit VR Little Endian, a UID means that syntax;
    anything other than the stored one means converting (kuva.codec.transcode),
    which is possible only where a decoder and a lossless encoder exist.
    """
    for entry in accepted:
        if not entry.accepts_part(DICOM):
            continue
        if entry.transfer_syntax == AS_STORED:
            return UID(stored)
        wanted = entry.transfer_syntax or ExplicitVRLittleEndian
        target = choose(stored, [wanted])
        if target is not None:
            return target
    raise NotAcceptable(f"no acceptable transfer syntax for an object stored as {UID(stored).name}")


@dataclass(frozen=True)
class FrameEncoding:
    """How frames go out: as stored (compressed) or decoded to native bytes."""

    media_type: str  # the part's media type
    transfer_syntax: str  # the transfer-syntax parameter of each part
    as_stored: bool  # True: the stored (compressed or native) frame bytes unchanged


def frame_encoding(stored: str, compressed: bool, accepted: list[Acceptable]) -> FrameEncoding:
    """How to send the frames (or pixel bulk data) of an object stored as ``stored``.

    Compressed frames go out as stored when the client accepts their media type
    (PS3.18 Table 8.7.3-5) or ``transfer-syntax=*``; otherwise they are decoded to
    ``application/octet-stream``. Uncompressed frames are always octet-stream.
    """
    native = FRAME_MEDIA_TYPES.get(stored) if compressed else None
    for entry in accepted:
        syntax = entry.transfer_syntax
        as_is = syntax in (None, AS_STORED, stored)
        if native is not None and entry.accepts_part(native) and as_is:
            return FrameEncoding(native, stored, as_stored=True)
        if entry.accepts_part(OCTET_STREAM) and (
            syntax in (None, ExplicitVRLittleEndian) or (syntax == AS_STORED and native is None)
        ):
            return FrameEncoding(OCTET_STREAM, ExplicitVRLittleEndian, as_stored=native is None)
    raise NotAcceptable(
        f"frames of an object stored as {UID(stored).name} can be sent as "
        f"{native or OCTET_STREAM} or {OCTET_STREAM} only"
    )
