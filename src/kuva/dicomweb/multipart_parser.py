"""A streaming parser of multipart bodies (RFC 2046 5.1, RFC 2387 multipart/related).

STOW-RS (PS3.18 10.5) requests carry DICOM objects as the body parts of a
``multipart/related`` message; a part may be gigabytes. This parser is fed the body
in chunks of any size, as they arrive, and hands back *events*: a part's headers,
pieces of its content, its end. It never holds more than a bounded amount of the
body: at most one delimiter's length of content is kept back (it might be the start
of a delimiter that straddles two chunks), and a part's header block is limited.

The grammar (RFC 2046 5.1.1)::

    multipart-body := [preamble CRLF]
                      dash-boundary transport-padding CRLF
                      body-part *encapsulation
                      close-delimiter transport-padding
                      [CRLF epilogue]
    dash-boundary  := "--" boundary
    delimiter      := CRLF dash-boundary
    encapsulation  := delimiter transport-padding CRLF body-part
    close-delimiter := delimiter "--"
    body-part      := MIME-part-headers [CRLF *OCTET]

The CRLF before a delimiter belongs to the delimiter, not to the content of the
part before it. Preamble and epilogue are ignored. A boundary delimiter must not
appear inside a part (RFC 2046 5.1.1), so ``CRLF--boundary`` followed by anything
other than ``--``, transport padding (spaces, tabs) or CRLF is an error, as is a
body that ends before its close delimiter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "MAX_BOUNDARY_LENGTH",
    "ContentType",
    "MultipartError",
    "MultipartParser",
    "PartData",
    "PartEnd",
    "PartEvent",
    "PartHeaders",
    "PartStart",
    "parse_content_type",
]

#: RFC 2046 5.1.1: a boundary is 1 to 70 characters.
MAX_BOUNDARY_LENGTH = 70
#: Characters allowed in a boundary (RFC 2046 5.1.1 ``bchars``); the last may not be a space.
_BCHARS = re.compile(r"^[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]$")
#: A media type parameter (RFC 9110 5.6.6): token "=" ( token / quoted-string ). An
#: unquoted value may also hold "/" (``type=application/dicom``, which clients send).
_PARAMETER = re.compile(
    r"""\s*;\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[!#$%&'*+./^_`|~0-9A-Za-z-]*)""",
)
# Transport padding (RFC 2046 5.1.1, linear white space) allowed after a delimiter.
_MAX_PADDING = 1024


class MultipartError(ValueError):
    """The body is not a valid multipart body.

    ``events`` holds what was parsed from the chunk before the error was found
    (for example the end of a part whose delimiter was complete), so that the
    caller can finish what it started.
    """

    def __init__(self, message: str, events: list[PartEvent] | None = None) -> None:
        super().__init__(message)
        self.events: list[PartEvent] = events or []


@dataclass(frozen=True)
class ContentType:
    """A parsed Content-Type header value (RFC 9110 8.3): lower-case type, parameters."""

    media_type: str
    parameters: dict[str, str]


def parse_content_type(value: str) -> ContentType:
    """Split a Content-Type value into its media type and parameters.

    Parameter names are lower-cased; quoted values are unquoted (RFC 9110 5.6.4).
    Raises ValueError on a value that does not have that shape.
    """
    media_type, _, rest = value.partition(";")
    media_type = media_type.strip().lower()
    if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9a-z-]+/[!#$%&'*+.^_`|~0-9a-z-]+", media_type):
        raise ValueError(f"not a media type: {media_type!r}")
    parameters: dict[str, str] = {}
    rest = ";" + rest if rest else ""
    position = 0
    while position < len(rest):
        match = _PARAMETER.match(rest, position)
        if match is None:
            if not rest[position:].strip(" \t;"):
                break
            raise ValueError(f"malformed media type parameters: {rest[position:]!r}")
        name, raw = match.group(1).lower(), match.group(2)
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        parameters.setdefault(name, raw)
        position = match.end()
    return ContentType(media_type, parameters)


def valid_boundary(boundary: str) -> bool:
    """True when ``boundary`` is a boundary RFC 2046 5.1.1 allows (1-70 ``bchars``)."""
    return bool(_BCHARS.match(boundary))


@dataclass(frozen=True)
class PartHeaders:
    """A part's header fields (RFC 2045/2046 MIME-part-headers), in order."""

    fields: tuple[tuple[str, str], ...] = ()

    def get(self, name: str) -> str | None:
        """The first field called ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        for key, value in self.fields:
            if key.lower() == wanted:
                return value
        return None


@dataclass(frozen=True)
class PartStart:
    """A body part begins; its headers are complete."""

    headers: PartHeaders


@dataclass(frozen=True)
class PartData:
    """The next piece of the current part's content (never empty)."""

    data: bytes


@dataclass(frozen=True)
class PartEnd:
    """The current part's content is complete (its closing delimiter was seen)."""


PartEvent = PartStart | PartData | PartEnd

_PREAMBLE, _AFTER_BOUNDARY, _HEADERS, _BODY, _EPILOGUE, _FAILED = range(6)


class MultipartParser:
    """Push parser: ``feed`` chunks, get events; ``finish`` at the end of the body.

    Example::

        parser = MultipartParser("b0undary")
        for chunk in body_chunks:
            for event in parser.feed(chunk):
                ...
        parser.finish()  # raises MultipartError when the body was cut short
    """

    def __init__(self, boundary: str, *, max_header_size: int = 16 * 1024) -> None:
        if not valid_boundary(boundary):
            raise ValueError(f"not a valid multipart boundary: {boundary!r}")
        self._delimiter = b"\r\n--" + boundary.encode("ascii")
        self._max_header_size = max_header_size
        # The first dash-boundary may open the body with no CRLF before it: a virtual
        # CRLF lets one search find it at the start and after a preamble alike.
        self._buffer = bytearray(b"\r\n")
        self._state = _PREAMBLE
        self._parts = 0

    @property
    def complete(self) -> bool:
        """True once the close delimiter was seen (what follows is epilogue)."""
        return self._state == _EPILOGUE

    @property
    def in_part(self) -> bool:
        """True between a part's PartStart and its PartEnd."""
        return self._state == _BODY

    @property
    def parts(self) -> int:
        """How many parts have started so far."""
        return self._parts

    def feed(self, data: bytes | bytearray | memoryview) -> list[PartEvent]:
        """Parse the next chunk of the body; returns the events it completes."""
        if self._state == _FAILED:
            raise MultipartError("the body was already found malformed")
        if self._state == _EPILOGUE:
            return []
        self._buffer += data
        events: list[PartEvent] = []
        try:
            while self._step(events):
                pass
        except MultipartError as exc:
            self._state = _FAILED
            self._buffer = bytearray()
            exc.events = events
            raise
        return events

    def finish(self) -> None:
        """The body has ended: raise MultipartError unless it was complete."""
        if self._state == _EPILOGUE:
            return
        state = self._state
        self._state = _FAILED
        self._buffer = bytearray()
        if state == _PREAMBLE:
            raise MultipartError("no multipart boundary delimiter found in the body")
        if state == _FAILED:
            raise MultipartError("the body was already found malformed")
        if state == _BODY:
            raise MultipartError("the body ends inside a part (no closing delimiter)")
        raise MultipartError("the body ends before its closing delimiter")

    # ------------------------------------------------------------------ states

    def _step(self, events: list[PartEvent]) -> bool:
        """Advance by one state transition if the buffer allows; False to wait for data."""
        if self._state == _PREAMBLE:
            return self._preamble()
        if self._state == _AFTER_BOUNDARY:
            return self._after_boundary()
        if self._state == _HEADERS:
            return self._headers(events)
        if self._state == _BODY:
            return self._body(events)
        if self._state == _EPILOGUE:
            self._buffer = bytearray()
        return False

    def _preamble(self) -> bool:
        index = self._buffer.find(self._delimiter)
        if index < 0:
            # Keep only what could be the start of the first delimiter.
            keep = len(self._delimiter) - 1
            if len(self._buffer) > keep:
                del self._buffer[: len(self._buffer) - keep]
            return False
        del self._buffer[: index + len(self._delimiter)]
        self._state = _AFTER_BOUNDARY
        return True

    def _after_boundary(self) -> bool:
        """After ``CRLF--boundary``: ``--`` closes the body; padding + CRLF opens a part."""
        buffer = self._buffer
        if not buffer:
            return False
        if buffer[:1] == b"-":
            if len(buffer) < 2:
                return False
            if buffer[:2] != b"--":
                raise MultipartError("boundary delimiter followed by unexpected characters")
            self._state = _EPILOGUE
            self._buffer = bytearray()
            return False
        position = 0
        while position < len(buffer) and buffer[position] in b" \t":
            position += 1
        if position > _MAX_PADDING:
            raise MultipartError("too much transport padding after a boundary delimiter")
        if position == len(buffer) or (
            position == len(buffer) - 1 and buffer[position : position + 1] == b"\r"
        ):
            return False
        if buffer[position : position + 2] != b"\r\n":
            raise MultipartError("boundary delimiter followed by unexpected characters")
        del buffer[: position + 2]
        self._state = _HEADERS
        self._parts += 1
        return True

    def _headers(self, events: list[PartEvent]) -> bool:
        buffer = self._buffer
        if buffer[:2] == b"\r\n":  # no header fields: the content starts after this CRLF
            del buffer[:2]
            events.append(PartStart(PartHeaders()))
            self._state = _BODY
            return True
        if len(buffer) < 2:
            return False
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > self._max_header_size:
                raise MultipartError(
                    f"part headers longer than {self._max_header_size} bytes or not ended"
                )
            return False
        if end > self._max_header_size:
            raise MultipartError(f"part headers longer than {self._max_header_size} bytes")
        block = bytes(buffer[:end])
        del buffer[: end + 4]
        events.append(PartStart(_parse_headers(block)))
        self._state = _BODY
        return True

    def _body(self, events: list[PartEvent]) -> bool:
        buffer = self._buffer
        index = buffer.find(self._delimiter)
        if index >= 0:
            if index:
                events.append(PartData(bytes(buffer[:index])))
            events.append(PartEnd())
            del buffer[: index + len(self._delimiter)]
            self._state = _AFTER_BOUNDARY
            return True
        # Hand out all but the tail that may be the start of a delimiter split
        # across chunks; a tail without CR cannot start one.
        keep = len(self._delimiter) - 1
        tail_start = max(len(buffer) - keep, 0)
        carriage_return = buffer.find(b"\r", tail_start)
        cut = len(buffer) if carriage_return < 0 else carriage_return
        if cut:
            events.append(PartData(bytes(buffer[:cut])))
            del buffer[:cut]
        return False


def _parse_headers(block: bytes) -> PartHeaders:
    """Header fields of one part (RFC 5322 2.2, with folded lines unfolded)."""
    fields: list[tuple[str, str]] = []
    for raw in block.split(b"\r\n"):
        line = raw.decode("latin-1")
        if line[:1] in (" ", "\t"):
            if not fields:
                raise MultipartError("part header block starts with a continuation line")
            name, value = fields[-1]
            fields[-1] = (name, f"{value} {line.strip()}")
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip() or " " in name:
            raise MultipartError("malformed part header line (no field name and colon)")
        fields.append((name, value.strip()))
    return PartHeaders(tuple(fields))
