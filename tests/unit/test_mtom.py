"""MTOM/XOP packages (XOP 1.0 section 4, SOAP MTOM): reading requests, writing responses."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from lxml import etree
from requests_toolbelt.multipart.decoder import MultipartDecoder

from kuva.xds.messages import Attachment
from kuva.xds.mtom import (
    MtomError,
    MtomReader,
    cid_href,
    content_id_from_href,
    mtom_body,
    new_content_id,
    parse_mtom,
    strip_angle_brackets,
    xop_include,
)
from kuva.xds.namespaces import XOP

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "xds" / "samples"
# The HTTP Content-Type of each raw MTOM body, as tests/data/xds/samples/SOURCES.md gives it.
PNR_XOP_BODY = SAMPLES / "iti41-ProvideAndRegister-mtom-xop-http-body.txt"
PNR_XOP_TYPE = (
    'multipart/related; boundary="MIMEBoundary_95b57d7287e4fa4b528a8f050c41f8ad829c20332f23b48d";'
    ' type="application/xop+xml"; start-info="application/soap+xml";'
    ' action="urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"'
)
KOS_BODY = SAMPLES / "rad68-iti41-PnR-KOS-captured-mime-body.txt"
KOS_TYPE = (
    'multipart/related; boundary="uuid:376733a6-6a2d-4583-a687-04c08acf6a49+id=17";'
    ' type="application/xop+xml"; start-info="application/soap+xml";'
    ' action="urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"'
)
BOUNDARY = "MIMEBoundary_test_0123456789"
CONTENT_TYPE = (
    f'multipart/related; type="application/xop+xml"; start="<root@test>"; '
    f'start-info="application/soap+xml"; boundary="{BOUNDARY}"'
)
ROOT_HEADERS = [
    'Content-Type: application/xop+xml; charset=UTF-8; type="application/soap+xml"',
    "Content-Transfer-Encoding: binary",
    "Content-ID: <root@test>",
]
ENVELOPE = b'<?xml version="1.0"?><e:Envelope xmlns:e="http://www.w3.org/2003/05/soap-envelope"/>'


def package(parts: list[tuple[list[str], bytes]], boundary: str = BOUNDARY) -> bytes:
    """A multipart body with CRLF framing (RFC 2046 5.1.1)."""
    out = bytearray()
    for headers, content in parts:
        out += f"--{boundary}\r\n".encode()
        out += "".join(f"{header}\r\n" for header in headers).encode() + b"\r\n"
        out += content + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out)


def read_in_pieces(body: bytes, content_type: str, size: int) -> dict[str, bytes]:
    reader = MtomReader(content_type)
    for start in range(0, len(body), size):
        reader.feed(body[start : start + size])
    message = reader.finish()
    return {"<root>": message.root, **message.parts}


# ------------------------------------------------------------------ the samples


def test_the_pnr_xop_sample_parses_with_its_attachment() -> None:
    message = parse_mtom(PNR_XOP_BODY.read_bytes(), PNR_XOP_TYPE)
    assert message.root.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<soapenv:Envelope')
    assert message.root.rstrip().endswith(b"</soapenv:Envelope>")
    assert message.root_content_type.media_type == "application/xop+xml"
    assert message.parts == {
        "1.b5b57d7287e4fa4b528a8f050c41f8ad829c20332f23b48d@apache.org": (
            b"This is my document.\n\nIt is great!\n\n"
        )
    }
    assert message.part_types == {
        "1.b5b57d7287e4fa4b528a8f050c41f8ad829c20332f23b48d@apache.org": "text/plain"
    }


def test_the_captured_kos_sample_is_a_single_part_package() -> None:
    message = parse_mtom(KOS_BODY.read_bytes(), KOS_TYPE)
    assert message.root.startswith(b"<s:Envelope ")
    assert message.root.endswith(b"</s:Envelope>")
    assert message.parts == {}


@pytest.mark.parametrize("size", [1, 7, 100, 4096])
@pytest.mark.parametrize(
    ("path", "content_type"), [(PNR_XOP_BODY, PNR_XOP_TYPE), (KOS_BODY, KOS_TYPE)]
)
def test_the_samples_read_the_same_in_any_pieces(path: Path, content_type: str, size: int) -> None:
    # Both samples have bare LF framing (they went through text-mode tools).
    body = path.read_bytes()
    whole = parse_mtom(body, content_type)
    assert read_in_pieces(body, content_type, size) == {"<root>": whole.root, **whole.parts}


def test_the_samples_with_crlf_framing_read_the_same() -> None:
    body = PNR_XOP_BODY.read_bytes().replace(b"\n", b"\r\n")
    message = parse_mtom(body, PNR_XOP_TYPE)
    (content,) = message.parts.values()
    assert content == b"This is my document.\r\n\r\nIt is great!\r\n\r\n"


# ------------------------------------------------------------------ reading


def test_start_names_the_root_part_even_when_it_is_not_first() -> None:
    body = package(
        [
            (["Content-Type: image/png", "Content-ID: <img@test>"], b"\x89PNG\r\n--\r\n"),
            (ROOT_HEADERS, ENVELOPE),
        ]
    )
    message = parse_mtom(body, CONTENT_TYPE)
    assert message.root == ENVELOPE
    assert message.parts == {"img@test": b"\x89PNG\r\n--\r\n"}


def test_without_start_the_first_part_is_the_root() -> None:
    body = package([(ROOT_HEADERS, ENVELOPE), (["Content-ID: <a@b>"], b"x")])
    content_type = f'multipart/related; type="application/xop+xml"; boundary={BOUNDARY}'
    assert parse_mtom(body, content_type).root == ENVELOPE


@pytest.mark.parametrize(
    ("encoding", "encoded", "decoded"),
    [
        ("binary", b"\x00\xff\r\n\x01", b"\x00\xff\r\n\x01"),
        ("8bit", "ä".encode(), "ä".encode()),
        ("7bit", b"plain", b"plain"),
        ("BASE64", base64.encodebytes(bytes(range(256)) * 4), bytes(range(256)) * 4),
        ("quoted-printable", b"a=3Db=\r\nc", b"a=bc"),
    ],
)
def test_transfer_encodings_are_undone(encoding: str, encoded: bytes, decoded: bytes) -> None:
    body = package(
        [
            (ROOT_HEADERS, ENVELOPE),
            ([f"Content-Transfer-Encoding: {encoding}", "Content-ID: <p@test>"], encoded),
        ]
    )
    assert parse_mtom(body, CONTENT_TYPE).parts == {"p@test": decoded}


def test_a_part_in_base64_must_be_valid_base64() -> None:
    body = package(
        [
            (ROOT_HEADERS, ENVELOPE),
            (["Content-Transfer-Encoding: base64", "Content-ID: <p@test>"], b"not*base64"),
        ]
    )
    with pytest.raises(MtomError, match="base64"):
        parse_mtom(body, CONTENT_TYPE)


@pytest.mark.parametrize(
    ("parts", "content_type", "message"),
    [
        ([], CONTENT_TYPE, "no parts"),
        (
            [([*ROOT_HEADERS[:2], "Content-ID: <other@test>"], ENVELOPE)],
            CONTENT_TYPE,
            "start Content-ID",
        ),
        (
            [(["Content-Type: application/soap+xml", "Content-ID: <root@test>"], ENVELOPE)],
            CONTENT_TYPE,
            "root part",
        ),
        (
            [(ROOT_HEADERS, ENVELOPE), (["Content-Type: text/plain"], b"x")],
            CONTENT_TYPE,
            "Content-ID",
        ),
        (
            [(ROOT_HEADERS, ENVELOPE), (["Content-ID: <a@b>"], b"1"), (["Content-ID: a@b"], b"2")],
            CONTENT_TYPE,
            "two MIME parts",
        ),
        (
            [
                (ROOT_HEADERS, ENVELOPE),
                (["Content-ID: <a@b>", "Content-Transfer-Encoding: x-gzip"], b""),
            ],
            CONTENT_TYPE,
            "Content-Transfer-Encoding",
        ),
        (
            [(ROOT_HEADERS, ENVELOPE)],
            CONTENT_TYPE.replace("application/xop+xml", "application/soap+xml", 1),
            "type parameter",
        ),
        ([(ROOT_HEADERS, ENVELOPE)], 'multipart/related; type="application/xop+xml"', "boundary"),
        ([(ROOT_HEADERS, ENVELOPE)], "application/soap+xml", "multipart/related"),
    ],
)
def test_malformed_packages_are_refused(
    parts: list[tuple[list[str], bytes]], content_type: str, message: str
) -> None:
    with pytest.raises(MtomError, match=message):
        parse_mtom(package(parts), content_type)


@pytest.mark.parametrize("cut", [10, 60, 200])
def test_a_truncated_body_is_refused(cut: int) -> None:
    body = package([(ROOT_HEADERS, ENVELOPE), (["Content-ID: <a@b>"], b"x" * 100)])
    with pytest.raises(MtomError):
        parse_mtom(body[:cut], CONTENT_TYPE)


def test_a_body_without_any_delimiter_is_refused() -> None:
    with pytest.raises(MtomError, match="delimiter"):
        parse_mtom(b"just some text\r\n", CONTENT_TYPE)


def test_too_many_parts_are_refused() -> None:
    parts = [(ROOT_HEADERS, ENVELOPE)] + [([f"Content-ID: <{i}@t>"], b"") for i in range(5)]
    reader = MtomReader(CONTENT_TYPE, max_parts=3)
    with pytest.raises(MtomError, match="more than 3"):
        reader.feed(package(parts))


def test_content_ids_and_cid_urls() -> None:
    assert strip_angle_brackets(" <a@b> ") == "a@b"
    assert strip_angle_brackets("a@b") == "a@b"
    # RFC 2392: the cid: URL is the percent-encoded Content-ID.
    content_id = "doc 1/ä%@example.org"
    href = cid_href(content_id)
    assert href == "cid:doc%201%2F%C3%A4%25@example.org"
    assert content_id_from_href(href) == content_id
    assert content_id_from_href("CID:a%40b") == "a@b"
    assert content_id_from_href("http://example.org/a") is None
    assert new_content_id() != new_content_id()


def test_xop_include_replaces_the_content() -> None:
    element = etree.Element("{urn:ihe:iti:xds-b:2007}Document")
    element.text = "AAAA"
    include = xop_include(element, "d@kuva")
    assert element.text is None
    assert list(element) == [include]
    assert include.tag == f"{{{XOP}}}Include"
    assert include.get("href") == "cid:d@kuva"


# ------------------------------------------------------------------ writing


def test_a_written_package_reads_back() -> None:
    payload = bytes(range(256)) * 1000 + b"\r\n--" + b"\r\n"
    attachments = [
        Attachment("one@kuva", "application/dicom", lambda: [payload[:1000], payload[1000:]]),
        Attachment("two@kuva", "text/plain", lambda: iter([b"", b"second"]), length=6),
    ]
    written = mtom_body(ENVELOPE, attachments, root_content_id="root@kuva")
    assert written.content_type.startswith('multipart/related; type="application/xop+xml"; ')
    assert 'start="<root@kuva>"' in written.content_type
    assert 'start-info="application/soap+xml"' in written.content_type
    body = b"".join(written.chunks)
    message = parse_mtom(body, written.content_type)
    assert message.root == ENVELOPE
    assert message.root_content_type.parameters["type"] == "application/soap+xml"
    assert message.parts == {"one@kuva": payload, "two@kuva": b"second"}
    assert message.part_types == {"one@kuva": "application/dicom", "two@kuva": "text/plain"}


def test_a_written_package_reads_back_with_an_independent_decoder() -> None:
    """requests_toolbelt's MultipartDecoder (what zeep uses) reads kuva's MTOM."""
    content = b"\x00DICM" + bytes(range(256)) * 10 + b"\xff"
    written = mtom_body(ENVELOPE, [Attachment("a@kuva", "application/dicom", lambda: [content])])
    decoder = MultipartDecoder(b"".join(written.chunks), written.content_type)
    root, part = decoder.parts
    assert root.content == ENVELOPE
    assert part.content == content
    assert part.headers[b"Content-ID"] == b"<a@kuva>"
    assert part.headers[b"Content-Type"] == b"application/dicom"


def test_attachments_are_read_only_while_the_body_is_written() -> None:
    produced: list[int] = []

    def chunks() -> Iterator[bytes]:
        for index in range(3):
            produced.append(index)
            yield bytes([index]) * 10

    written = mtom_body(ENVELOPE, [Attachment("a@kuva", "application/octet-stream", chunks)])
    assert produced == []
    pieces = iter(written.chunks)
    next(pieces)  # the root part
    assert produced == []
    next(pieces)  # the attachment's headers
    assert produced == []
    assert next(pieces) == b"\x00" * 10
    assert produced == [0]
    rest = list(pieces)
    assert produced == [0, 1, 2]
    assert rest[-1].endswith(b"--\r\n")


def test_a_wrong_declared_length_fails_the_body() -> None:
    written = mtom_body(ENVELOPE, [Attachment("a@kuva", "text/plain", lambda: [b"abc"], length=4)])
    with pytest.raises(MtomError, match="declared 4 bytes but produced 3"):
        b"".join(written.chunks)


@pytest.mark.parametrize(
    "attachment",
    [
        Attachment("a@kuva\r\nX-Injected: 1", "text/plain", lambda: []),
        Attachment("a@kuva", "text/plain\r\nX-Injected: 1", lambda: []),
        Attachment("<a@kuva>", "text/plain", lambda: []),
    ],
)
def test_header_values_are_checked_before_writing(attachment: Attachment) -> None:
    with pytest.raises(ValueError):
        mtom_body(ENVELOPE, [attachment])


def test_duplicate_content_ids_are_refused() -> None:
    twice = [Attachment("a@kuva", "text/plain", lambda: []) for _ in range(2)]
    with pytest.raises(ValueError, match="duplicate"):
        mtom_body(ENVELOPE, twice)


def test_a_large_attachment_is_written_in_its_own_chunks() -> None:
    chunk = b"\xab" * (1 << 20)
    written = mtom_body(
        ENVELOPE, [Attachment("big@kuva", "application/dicom", lambda: (chunk for _ in range(16)))]
    )
    sizes = [len(piece) for piece in written.chunks]
    assert max(sizes) == 1 << 20  # never joined
    assert sizes.count(1 << 20) == 16
