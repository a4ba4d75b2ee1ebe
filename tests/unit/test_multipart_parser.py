"""The streaming multipart parser (RFC 2046 5.1.1, RFC 2387) fed in every possible way."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable

import pytest

from kuva.dicomweb.multipart_parser import (
    ContentType,
    MultipartError,
    MultipartParser,
    PartData,
    PartEnd,
    PartEvent,
    PartHeaders,
    PartStart,
    parse_content_type,
    valid_boundary,
)

BOUNDARY = "0f3cf5c0-70e0-41ef-baef-c6f9f65ec3e1"
Part = tuple[PartHeaders, bytes]


def body(
    parts: Iterable[tuple[list[str], bytes]],
    boundary: str = BOUNDARY,
    preamble: bytes = b"",
    epilogue: bytes = b"",
) -> bytes:
    """A multipart body as RFC 2046 writes it: each delimiter starts with CRLF."""
    out = bytearray(preamble + b"\r\n" if preamble else b"")
    first = True
    for headers, content in parts:
        out += (b"" if first else b"\r\n") + b"--" + boundary.encode() + b"\r\n"
        first = False
        for header in headers:
            out += header.encode("latin-1") + b"\r\n"
        out += b"\r\n" + content
    out += (b"" if first else b"\r\n") + b"--" + boundary.encode() + b"--"
    if epilogue:
        out += b"\r\n" + epilogue
    return bytes(out)


def collect(events: Iterable[PartEvent], parts: list[Part], current: list[object]) -> None:
    """Fold events into complete parts; ``current`` is [headers, bytearray] of the open one."""
    for event in events:
        if isinstance(event, PartStart):
            assert not current, "a part started inside another"
            current.extend([event.headers, bytearray()])
        elif isinstance(event, PartData):
            assert current, "data outside a part"
            assert event.data, "empty data event"
            content = current[1]
            assert isinstance(content, bytearray)
            content += event.data
        elif isinstance(event, PartEnd):
            assert current, "end outside a part"
            headers, content = current
            assert isinstance(headers, PartHeaders) and isinstance(content, bytearray)
            parts.append((headers, bytes(content)))
            current.clear()


def parse(chunks: Iterable[bytes], boundary: str = BOUNDARY) -> list[Part]:
    parser = MultipartParser(boundary)
    parts: list[Part] = []
    current: list[object] = []
    for chunk in chunks:
        collect(parser.feed(chunk), parts, current)
    parser.finish()
    assert not current
    assert parser.complete
    return parts


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


def random_chunks(data: bytes, rng: random.Random, largest: int) -> list[bytes]:
    chunks: list[bytes] = []
    position = 0
    while position < len(data):
        size = rng.randint(1, largest)
        chunks.append(data[position : position + size])
        position += size
    return chunks


# Contents chosen to tempt a parser: CRLFs, dashes, a boundary that is not at the
# start of a line, a boundary prefix, bytes of every value.
TRICKY = [
    (["Content-Type: application/dicom"], b"\x00" * 128 + b"DICM" + bytes(range(256)) * 3),
    (["Content-Type: application/dicom", "X-Note: two"], b"\r\n\r\n--\r\n-" + b"\r"),
    ([], b"--" + BOUNDARY.encode() + b" not at the start of a line"),
    (["Content-Type: application/dicom"], b"\r\n--" + BOUNDARY[:-1].encode() + b"\n"),
    (["Content-Type: application/dicom"], b""),
    (["Content-Type: application/dicom"], b"\r"),
    (["Content-Type: application/dicom"], b"\r\n"),
]


def expected(parts: list[tuple[list[str], bytes]]) -> list[tuple[list[tuple[str, str]], bytes]]:
    out: list[tuple[list[tuple[str, str]], bytes]] = []
    for headers, content in parts:
        fields = [(name, value) for name, _, value in (h.partition(": ") for h in headers)]
        out.append((fields, content))
    return out


def as_plain(parts: list[Part]) -> list[tuple[list[tuple[str, str]], bytes]]:
    return [(list(headers.fields), content) for headers, content in parts]


def test_whole_body_in_one_chunk() -> None:
    data = body(TRICKY, preamble=b"This is a preamble.", epilogue=b"and an epilogue\r\n")
    assert as_plain(parse([data])) == expected(TRICKY)


def test_every_split_point() -> None:
    """Two chunks, cut at every byte: every delimiter is split every way once."""
    data = body(TRICKY, preamble=b"preamble", epilogue=b"epilogue")
    want = expected(TRICKY)
    for cut in range(len(data) + 1):
        assert as_plain(parse(split_at(data, [cut]))) == want, f"cut at {cut}"


def test_one_byte_at_a_time() -> None:
    data = body(TRICKY, preamble=b"preamble --" + BOUNDARY.encode(), epilogue=b"x")
    assert as_plain(parse(data[i : i + 1] for i in range(len(data)))) == expected(TRICKY)


@pytest.mark.parametrize("seed", range(25))
def test_random_chunk_sizes(seed: int) -> None:
    rng = random.Random(seed)
    parts = [
        (["Content-Type: application/dicom"], rng.randbytes(rng.randint(0, 5000)))
        for _ in range(rng.randint(1, 6))
    ]
    # Plant near-delimiters inside the content.
    near = b"\r\n--" + BOUNDARY.encode()[: rng.randint(0, len(BOUNDARY) - 1)]
    parts.append((["Content-Type: application/dicom"], near + rng.randbytes(100) + near))
    data = body(parts, preamble=rng.randbytes(rng.randint(0, 300)).replace(b"\r", b""))
    assert as_plain(parse(random_chunks(data, rng, rng.choice([1, 7, 100, 4096])))) == expected(
        parts
    )


def test_large_part_streams_without_holding_it() -> None:
    """Data comes out as it goes in; the parser keeps back at most a delimiter's length."""
    parser = MultipartParser(BOUNDARY)
    head = b"--" + BOUNDARY.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n"
    events = parser.feed(head)
    assert events == [PartStart(PartHeaders((("Content-Type", "application/dicom"),)))]
    chunk = b"\x01" * 65536
    out = 0
    for fed in range(1, 65):
        for event in parser.feed(chunk):
            assert isinstance(event, PartData)
            out += len(event.data)
        assert 0 <= fed * 65536 - out < len(BOUNDARY) + 4
    assert out == 64 * 65536  # no CR in the content: nothing needs keeping back
    tail = parser.feed(b"\r\n--" + BOUNDARY.encode() + b"--")
    assert tail == [PartEnd()]
    parser.finish()


def test_preamble_epilogue_and_no_leading_crlf() -> None:
    parts = [(["Content-Type: application/dicom"], b"abc")]
    plain = body(parts)
    assert plain.startswith(b"--")  # the first dash-boundary opens the body
    assert as_plain(parse([plain])) == expected(parts)
    # dicomweb-client starts the body with CRLF: an empty preamble, then the delimiter.
    assert as_plain(parse([b"\r\n" + plain])) == expected(parts)
    # A boundary that does not start a line is preamble text (RFC 2046 5.1.1).
    with_noise = b"ignored --" + BOUNDARY.encode() + b" mid-line\r\n" + plain
    assert as_plain(parse([with_noise])) == expected(parts)
    assert as_plain(parse([plain + b"\r\nepilogue\r\n--" + BOUNDARY.encode() + b"\r\n"])) == (
        expected(parts)
    )


def test_transport_padding_and_headers() -> None:
    data = (
        b"--" + BOUNDARY.encode() + b" \t \r\n"
        b"Content-Type: application/dicom;\r\n transfer-syntax=1.2.840.10008.1.2.1\r\n"
        b"content-id: <1@kuva>\r\n"
        b"\r\n"
        b"payload"
        b"\r\n--" + BOUNDARY.encode() + b"\t\r\n"
        b"\r\n"
        b"no headers"
        b"\r\n--" + BOUNDARY.encode() + b"--  \r\n"
    )
    parts = parse(data[i : i + 3] for i in range(0, len(data), 3))
    first, second = parts
    assert first[0].get("content-type") == (
        "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"
    )
    assert first[0].get("Content-ID") == "<1@kuva>"
    assert first[0].get("Content-Length") is None
    assert first[1] == b"payload"
    assert second == (PartHeaders(), b"no headers")


def test_empty_multipart_has_no_parts() -> None:
    assert parse([b"--" + BOUNDARY.encode() + b"--\r\n"]) == []


def test_lf_only_line_ends_are_not_delimiters() -> None:
    """RFC 2046 delimiters need CRLF; a bare LF before the boundary is content."""
    data = (
        b"--" + BOUNDARY.encode() + b"\r\n\r\n"
        b"a\n--" + BOUNDARY.encode() + b"\nb"
        b"\r\n--" + BOUNDARY.encode() + b"--"
    )
    [(_, content)] = parse([data])
    assert content == b"a\n--" + BOUNDARY.encode() + b"\nb"


def feed_all(data: bytes, chunk: int = 5) -> tuple[MultipartParser, list[PartEvent]]:
    parser = MultipartParser(BOUNDARY)
    events: list[PartEvent] = []
    for i in range(0, len(data), chunk):
        events += parser.feed(data[i : i + chunk])
    return parser, events


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "no multipart boundary"),
        (b"just some text, no boundary at all", "no multipart boundary"),
        (b"--" + BOUNDARY.encode() + b"\r\nContent-Type: x\r\n", "before its closing"),
        (b"--" + BOUNDARY.encode() + b"\r\n\r\ncut off inside a part", "ends inside a part"),
        (
            b"--" + BOUNDARY.encode() + b"\r\n\r\nx\r\n--" + BOUNDARY.encode(),
            "before its closing",
        ),
        (b"--" + BOUNDARY.encode(), "before its closing"),
    ],
)
def test_truncated_bodies(data: bytes, message: str) -> None:
    parser, _ = feed_all(data)
    with pytest.raises(MultipartError, match=message):
        parser.finish()


def test_truncated_part_keeps_what_was_complete() -> None:
    dash_boundary = b"--" + BOUNDARY.encode()
    data = dash_boundary + b"\r\n\r\none\r\n" + dash_boundary + b"\r\n\r\ntwo, cut"
    parser, events = feed_all(data)
    parts: list[Part] = []
    current: list[object] = []
    collect(events, parts, current)
    assert [content for _, content in parts] == [b"one"]
    assert parser.in_part and parser.parts == 2
    with pytest.raises(MultipartError):
        parser.finish()


@pytest.mark.parametrize(
    "data",
    [
        b"--" + BOUNDARY.encode() + b"garbage\r\n\r\nx\r\n--" + BOUNDARY.encode() + b"--",
        b"--" + BOUNDARY.encode() + b"-x\r\n",
        b"--" + BOUNDARY.encode() + b"\r\nno colon here\r\n\r\nx",
        b"--" + BOUNDARY.encode() + b"\r\n continuation first\r\n\r\nx",
        b"--" + BOUNDARY.encode() + b"\r\nBad Name: x\r\n\r\nx",
        b"--" + BOUNDARY.encode() + b"\r\nX: " + b"a" * 20000 + b"\r\n\r\nx",
        b"--" + BOUNDARY.encode() + b"\r\nX: " + b"a" * 20000,
        b"--" + BOUNDARY.encode() + b" " * 2000 + b"\r\n",
    ],
)
def test_malformed_bodies(data: bytes) -> None:
    with pytest.raises(MultipartError):
        feed_all(data, chunk=len(data))
    with pytest.raises(MultipartError):
        feed_all(data, chunk=1)


def test_error_keeps_events_before_it_and_stays_failed() -> None:
    data = body([([], b"complete")])[:-2] + b"garbage"
    parser = MultipartParser(BOUNDARY)
    with pytest.raises(MultipartError) as caught:
        parser.feed(data)
    assert caught.value.events == [PartStart(PartHeaders()), PartData(b"complete"), PartEnd()]
    with pytest.raises(MultipartError):
        parser.feed(b"more")
    with pytest.raises(MultipartError):
        parser.finish()


def test_data_after_close_is_epilogue() -> None:
    parser = MultipartParser(BOUNDARY)
    parser.feed(body([([], b"x")]))
    assert parser.complete
    assert parser.feed(b"\r\n--" + BOUNDARY.encode() + b"\r\n\r\nignored") == []
    parser.finish()


def test_parse_content_type() -> None:
    assert parse_content_type(
        'Multipart/Related; type="application/dicom"; boundary=abc'
    ) == ContentType("multipart/related", {"type": "application/dicom", "boundary": "abc"})
    assert parse_content_type(
        'multipart/related;boundary="a b:c=d;e";TYPE=application/dicom;'
    ) == ContentType("multipart/related", {"boundary": "a b:c=d;e", "type": "application/dicom"})
    assert parse_content_type('x/y; a="q\\"uote"').parameters == {"a": 'q"uote'}
    assert parse_content_type("application/dicom").parameters == {}
    assert parse_content_type("*/*; q=0.5").media_type == "*/*"
    for bad in ("", "multipart", "multipart/related; boundary", "a/b; c=d e", "a/b; =x"):
        with pytest.raises(ValueError):
            parse_content_type(bad)


def test_boundary_rules() -> None:
    assert valid_boundary(BOUNDARY)
    assert valid_boundary("a" * 70)
    assert valid_boundary("with space inside")
    assert not valid_boundary("")
    assert not valid_boundary("a" * 71)
    assert not valid_boundary("ends with space ")
    assert not valid_boundary('quote"')
    with pytest.raises(ValueError):
        MultipartParser("")
