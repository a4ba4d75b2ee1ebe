"""MTOM/XOP: SOAP 1.2 messages packaged as MIME multipart/related.

An XOP package (W3C XML-binary Optimized Packaging 1.0, section 4 "MIME
Multipart/Related XOP Packages") is a ``multipart/related`` message (RFC 2387)
whose *root part* holds the XML (media type ``application/xop+xml``, its ``type``
parameter ``application/soap+xml`` for SOAP 1.2) and whose other parts hold the
binary content of ``xs:base64Binary`` elements, each replaced in the XML by an
``xop:Include href="cid:..."`` naming the part by its Content-ID (RFC 2392). SOAP
Message Transmission Optimization Mechanism (SOAP MTOM, W3C 2005) and its HTTP
binding use exactly this package as the HTTP body; IHE uses it for documents and
images (ITI TF-2x V.3.6 "MTOM", ITI-41, ITI-43, RAD-69).

Requests are parsed by kuva's streaming multipart parser
(:mod:`kuva.dicomweb.multipart_parser`): :class:`MtomReader` is fed the body while
it arrives and hands back the root part and the other parts by Content-ID.
Responses are written by :func:`mtom_body` part after part, each attachment's
chunks consumed while they are sent (never joined in memory).
"""

from __future__ import annotations

import base64
import binascii
import io
import secrets
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

from lxml import etree
from lxml.etree import _Element as Element

from kuva.dicomweb.multipart_parser import (
    ContentType,
    MultipartError,
    MultipartParser,
    PartData,
    PartEnd,
    PartHeaders,
    PartStart,
    parse_content_type,
    valid_boundary,
)
from kuva.xds.messages import Attachment
from kuva.xds.namespaces import XOP

__all__ = [
    "SOAP_MEDIA_TYPE",
    "XOP_MEDIA_TYPE",
    "MtomBody",
    "MtomError",
    "MtomMessage",
    "MtomReader",
    "cid_href",
    "content_id_from_href",
    "mtom_body",
    "new_content_id",
    "parse_mtom",
    "strip_angle_brackets",
    "xop_include",
]

XOP_MEDIA_TYPE = "application/xop+xml"
SOAP_MEDIA_TYPE = "application/soap+xml"

# Characters RFC 2392 / RFC 3986 leave as they are in a cid: URL (the addr-spec of
# a Content-ID, with everything else percent-encoded).
_CID_SAFE = "!$&'()*+,;=:@-._~"
_TRANSFER_ENCODINGS = {"", "binary", "8bit", "7bit", "base64", "quoted-printable"}


class MtomError(ValueError):
    """The body is not a well-formed MTOM/XOP package (the sender's fault)."""


@dataclass(frozen=True)
class MtomMessage:
    """A parsed XOP package: the root part (the SOAP envelope) and the other parts.

    ``root_content_type`` is the root part's own Content-Type (``application/xop+xml``
    with ``type`` and perhaps ``action`` parameters); ``parts`` holds the content of
    every other part by Content-ID (angle brackets removed), transfer-decoded.
    """

    root: bytes
    root_content_type: ContentType
    parts: Mapping[str, bytes] = field(default_factory=dict)
    part_types: Mapping[str, str] = field(default_factory=dict)

    @property
    def action(self) -> str | None:
        """The ``action`` parameter of the root part's ``type`` (SOAP 1.2 MTOM), if any."""
        inner = self.root_content_type.parameters.get("type")
        if not inner:
            return None
        try:
            return parse_content_type(inner).parameters.get("action") or None
        except ValueError:
            return None


def strip_angle_brackets(value: str) -> str:
    """A Content-ID or ``start`` value without its surrounding ``<`` ``>`` (RFC 2392)."""
    value = value.strip()
    if value.startswith("<") and value.endswith(">"):
        return value[1:-1].strip()
    return value


def content_id_from_href(href: str) -> str | None:
    """The Content-ID a ``cid:`` URL names (RFC 2392: percent-decoded), else None."""
    href = href.strip()
    if href[:4].lower() != "cid:":
        return None
    return unquote(href[4:])


def cid_href(content_id: str) -> str:
    """The ``cid:`` URL (RFC 2392) that names the part with ``content_id``."""
    return "cid:" + quote(content_id, safe=_CID_SAFE)


def new_content_id(prefix: str = "part") -> str:
    """A fresh, globally unique Content-ID (addr-spec form, no angle brackets)."""
    return f"{prefix}.{uuid.uuid4().hex}@kuva"


def xop_include(element: Element, content_id: str) -> Element:
    """Make ``element`` (an xs:base64Binary element) refer to the part ``content_id``.

    XOP 1.0 3.2: the element's character content is replaced by a single
    ``xop:Include`` child whose ``href`` is the part's ``cid:`` URL.
    """
    element.text = None
    for child in list(element):
        element.remove(child)
    include = etree.SubElement(element, f"{{{XOP}}}Include", nsmap={"xop": XOP})
    include.set("href", cid_href(content_id))
    return include


# --------------------------------------------------------------------- reading


class MtomReader:
    """Incremental reader of an MTOM/XOP request body (XOP 1.0 section 4).

    ``content_type`` is the HTTP Content-Type of the request: ``multipart/related``
    with a ``boundary``, ``type="application/xop+xml"`` and optionally ``start``
    (the Content-ID of the root part; without it the root is the first part).
    ``feed`` the body as it arrives, then ``finish`` for the parsed message. Parts
    are transfer-decoded (binary, 8bit, 7bit as they are; base64 and
    quoted-printable decoded). Raises :class:`MtomError` on a malformed package.

    RFC 2046 requires CRLF line breaks in the MIME framing. Some SOAP stacks, and
    captures that passed through text-mode tools, use bare LF; when the framing
    has no CRLF delimiter but an LF one, the body is read with LF framing instead
    (the content of the parts is never altered).
    """

    def __init__(self, content_type: ContentType | str, *, max_parts: int = 10_000) -> None:
        if isinstance(content_type, str):
            try:
                content_type = parse_content_type(content_type)
            except ValueError as exc:
                raise MtomError(f"malformed Content-Type: {exc}") from exc
        if content_type.media_type != "multipart/related":
            raise MtomError(f"an MTOM message is multipart/related, not {content_type.media_type}")
        package_type = content_type.parameters.get("type", XOP_MEDIA_TYPE).strip().lower()
        if package_type != XOP_MEDIA_TYPE:
            raise MtomError(
                f'the type parameter of an MTOM message is "{XOP_MEDIA_TYPE}", not {package_type!r}'
            )
        boundary = content_type.parameters.get("boundary", "")
        if not valid_boundary(boundary):
            raise MtomError("multipart/related without a valid boundary parameter")
        start = content_type.parameters.get("start")
        self.content_type = content_type
        self._boundary = boundary
        self._start = strip_angle_brackets(start) if start else None
        self._max_parts = max_parts
        self._parser: MultipartParser | None = MultipartParser(boundary)
        # The body as received, kept only until the first part opens with CRLF
        # framing (it is needed to read a bare-LF body once that turns out).
        self._raw: bytearray | None = bytearray()
        self._parts: list[tuple[PartHeaders, bytes]] = []
        self._headers: PartHeaders | None = None
        # BytesIO hands its buffer over in getvalue(): a part is never held twice.
        self._content = io.BytesIO()
        self._started = False

    def feed(self, chunk: bytes) -> None:
        """Parse the next piece of the body."""
        if self._raw is not None:
            self._raw += chunk
        if self._parser is None:
            return
        try:
            events = self._parser.feed(chunk)
        except MultipartError as exc:
            opened = any(isinstance(event, PartStart) for event in exc.events)
            if not self._started and not opened:  # not CRLF framing: try LF at the end
                self._parser = None
                return
            raise MtomError(f"malformed multipart body: {exc}") from exc
        for event in events:
            if isinstance(event, PartStart):
                self._started = True
                self._raw = None
                if len(self._parts) >= self._max_parts:
                    raise MtomError(f"more than {self._max_parts} MIME parts")
                self._headers = event.headers
                self._content = io.BytesIO()
            elif isinstance(event, PartData):
                self._content.write(event.data)
            elif isinstance(event, PartEnd):
                assert self._headers is not None
                self._parts.append((self._headers, self._content.getvalue()))
                self._headers = None
                self._content = io.BytesIO()

    def finish(self) -> MtomMessage:
        """The body has ended: the parsed package."""
        if self._parser is not None and self._started:
            try:
                self._parser.finish()
            except MultipartError as exc:
                raise MtomError(f"malformed multipart body: {exc}") from exc
            parts = self._parts
        else:
            raw = bytes(self._raw or b"")
            self._raw = None
            parts = _split_bare_lf(raw, self._boundary)
            if len(parts) > self._max_parts:
                raise MtomError(f"more than {self._max_parts} MIME parts")
        return self._package(parts)

    def _package(self, parts: list[tuple[PartHeaders, bytes]]) -> MtomMessage:
        if not parts:
            raise MtomError("the multipart body holds no parts")
        root_index = 0
        if self._start is not None:
            for index, (headers, _) in enumerate(parts):
                content_id = headers.get("content-id")
                if content_id is not None and strip_angle_brackets(content_id) == self._start:
                    root_index = index
                    break
            else:
                raise MtomError(f"no MIME part has the start Content-ID {self._start!r}")
        root_headers, root_content = parts[root_index]
        try:
            root_type = parse_content_type(root_headers.get("content-type") or "")
        except ValueError as exc:
            raise MtomError(f"the root part has no valid Content-Type: {exc}") from exc
        if root_type.media_type != XOP_MEDIA_TYPE:
            raise MtomError(
                f"the root part of an MTOM message is {XOP_MEDIA_TYPE}, not {root_type.media_type}"
            )
        found: dict[str, bytes] = {}
        types: dict[str, str] = {}
        for index, (headers, content) in enumerate(parts):
            if index == root_index:
                continue
            raw_id = headers.get("content-id")
            if not raw_id or not strip_angle_brackets(raw_id):
                raise MtomError(f"MIME part {index + 1} has no Content-ID")
            content_id = strip_angle_brackets(raw_id)
            if content_id in found:
                raise MtomError(f"two MIME parts have the Content-ID {content_id!r}")
            found[content_id] = _decode(headers, content)
            types[content_id] = headers.get("content-type") or "application/octet-stream"
        return MtomMessage(_decode(root_headers, root_content), root_type, found, types)


def parse_mtom(body: bytes, content_type: ContentType | str) -> MtomMessage:
    """Parse a whole MTOM/XOP body held in memory (see :class:`MtomReader`)."""
    reader = MtomReader(content_type)
    reader.feed(body)
    return reader.finish()


def _decode(headers: PartHeaders, content: bytes) -> bytes:
    """A part's content with its Content-Transfer-Encoding (RFC 2045 6) undone."""
    encoding = (headers.get("content-transfer-encoding") or "").strip().lower()
    if encoding not in _TRANSFER_ENCODINGS:
        raise MtomError(f"unsupported Content-Transfer-Encoding {encoding!r}")
    if encoding == "base64":
        try:
            return base64.b64decode(b"".join(content.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise MtomError("malformed base64 in a MIME part") from exc
    if encoding == "quoted-printable":
        return binascii.a2b_qp(content)
    return content


def _split_bare_lf(body: bytes, boundary: str) -> list[tuple[PartHeaders, bytes]]:
    """The parts of a body framed with bare LF line breaks instead of CRLF.

    The same grammar as RFC 2046 5.1.1 with LF in place of CRLF: the LF before a
    delimiter belongs to the delimiter; a part's header block ends at an empty line.
    """
    dash = b"--" + boundary.encode("ascii")
    delimiter = b"\n" + dash
    if body.startswith(dash):
        position = len(dash)
    else:
        index = body.find(delimiter)
        if index < 0:
            raise MtomError("no multipart boundary delimiter found in the body")
        position = index + len(delimiter)
    parts: list[tuple[PartHeaders, bytes]] = []
    while True:
        if body.startswith(b"--", position):
            return parts
        line_end = body.find(b"\n", position)
        if line_end < 0:
            raise MtomError("the body ends before its closing delimiter")
        if body[position:line_end].strip(b" \t\r"):
            raise MtomError("boundary delimiter followed by unexpected characters")
        start = line_end + 1
        end = body.find(delimiter, start)
        if end < 0:
            raise MtomError("the body ends inside a part (no closing delimiter)")
        part = body[start:end]
        if part[:1] == b"\n" or part[:2] == b"\r\n":
            block, content = b"", part[part.find(b"\n") + 1 :]
        else:
            header_end = part.find(b"\n\n")
            crlf_end = part.find(b"\r\n\r\n")
            if crlf_end >= 0 and (header_end < 0 or crlf_end < header_end):
                block, content = part[:crlf_end], part[crlf_end + 4 :]
            elif header_end >= 0:
                block, content = part[:header_end], part[header_end + 2 :]
            else:
                raise MtomError("a part's header block does not end")
        parts.append((_header_lines(block), content))
        position = end + len(delimiter)


def _header_lines(block: bytes) -> PartHeaders:
    """Header fields of one part (RFC 5322 2.2, folded lines unfolded)."""
    fields: list[tuple[str, str]] = []
    for raw in block.split(b"\n"):
        line = raw.rstrip(b"\r").decode("latin-1")
        if not line:
            continue
        if line[:1] in (" ", "\t"):
            if not fields:
                raise MtomError("part header block starts with a continuation line")
            name, value = fields[-1]
            fields[-1] = (name, f"{value} {line.strip()}")
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise MtomError("malformed part header line (no field name and colon)")
        fields.append((name, value.strip()))
    return PartHeaders(tuple(fields))


# --------------------------------------------------------------------- writing


@dataclass(frozen=True)
class MtomBody:
    """An MTOM response: its HTTP Content-Type and its body, produced while sent."""

    content_type: str
    chunks: Iterator[bytes]


def _header_safe(value: str, what: str) -> str:
    if any(ch in value for ch in "\r\n\0") or not value.isascii():
        raise ValueError(f"{what} is not a valid MIME header value: {value!r}")
    return value


def mtom_body(
    envelope: bytes,
    attachments: Sequence[Attachment] = (),
    *,
    boundary: str | None = None,
    root_content_id: str | None = None,
) -> MtomBody:
    """Write ``envelope`` (serialised SOAP 1.2 XML) and ``attachments`` as an XOP package.

    The root part (``application/xop+xml; type="application/soap+xml"``) comes first
    and is named by the ``start`` parameter; each attachment follows with its
    Content-Type and Content-ID, ``Content-Transfer-Encoding: binary``. An
    attachment's ``chunks()`` is called when its part is reached and consumed
    piece by piece. A wrong declared ``length`` raises ``MtomError`` while writing
    (the body is then cut short, which the receiver sees as a malformed package).

    Header values are checked here, before anything is sent (ValueError).
    """
    boundary = boundary or f"MIMEBoundary_kuva_{secrets.token_hex(20)}"
    if not valid_boundary(boundary):
        raise ValueError(f"not a valid multipart boundary: {boundary!r}")
    root_id = root_content_id or new_content_id("root")
    _header_safe(root_id, "the root Content-ID")
    seen = {root_id}
    for attachment in attachments:
        _header_safe(attachment.content_id, "an attachment Content-ID")
        _header_safe(attachment.content_type, "an attachment Content-Type")
        if attachment.content_id in seen or "<" in attachment.content_id:
            raise ValueError(f"duplicate or malformed Content-ID {attachment.content_id!r}")
        seen.add(attachment.content_id)
    content_type = (
        f'multipart/related; type="{XOP_MEDIA_TYPE}"; start="<{root_id}>"; '
        f'start-info="{SOAP_MEDIA_TYPE}"; boundary="{boundary}"'
    )
    return MtomBody(content_type, _write(envelope, list(attachments), boundary, root_id))


def _write(
    envelope: bytes, attachments: list[Attachment], boundary: str, root_id: str
) -> Iterator[bytes]:
    delimiter = f"--{boundary}\r\n".encode("ascii")
    yield (
        delimiter
        + (
            f'Content-Type: {XOP_MEDIA_TYPE}; charset=UTF-8; type="{SOAP_MEDIA_TYPE}"\r\n'
            "Content-Transfer-Encoding: binary\r\n"
            f"Content-ID: <{root_id}>\r\n\r\n"
        ).encode("ascii")
        + envelope
        + b"\r\n"
    )
    for attachment in attachments:
        yield delimiter + (
            f"Content-Type: {attachment.content_type}\r\n"
            "Content-Transfer-Encoding: binary\r\n"
            f"Content-ID: <{attachment.content_id}>\r\n\r\n"
        ).encode("ascii")
        written = 0
        chunks: Iterable[bytes] = attachment.chunks()
        for chunk in chunks:
            if chunk:
                written += len(chunk)
                yield chunk
        if attachment.length is not None and written != attachment.length:
            raise MtomError(
                f"attachment <{attachment.content_id}> declared {attachment.length} bytes "
                f"but produced {written}"
            )
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode("ascii")
