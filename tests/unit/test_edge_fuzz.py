"""Fuzzing the parsers at the edge (issue 19), bounded for CI: whatever bytes a peer
sends, each parser answers a value or its documented error, never another exception,
and never memory out of proportion to the input. The contracts and the checks are
in tests/support/fuzzing.py (also used by fuzz/run.py for longer runs); DICOM PDUs
and command sets in test_net_fuzz.py, the parsers of DICOM data in test_edge_fuzz_dicom.py.

Inputs are valid messages mutated (bits flipped, bytes set, inserted, deleted,
duplicated, cut off, a format's tokens spliced in, numbers and length fields that
lie), random bytes, and messages generated from a format's pieces."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta, timezone
from functools import partial
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from kuva.audit.listener import syslog_msg
from kuva.hl7 import adt
from kuva.hl7.mllp import END, START
from kuva.model.patient import PatientKey
from kuva.services.patients import PatientService
from tests.support import fuzzing as f
from tests.support.fuzzing import bounded_memory, mutate
from tests.unit.test_patients import store

FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# The engine fixture (SQLite, PostgreSQL) lives for the test, shared by its examples.
WITH_ENGINE = settings(
    FUZZ, suppress_health_check=[*FUZZ.suppress_health_check, HealthCheck.function_scoped_fixture]
)


def mutated(seeds: Sequence[bytes], tokens: Sequence[bytes] = ()) -> st.SearchStrategy[bytes]:
    """A seed with 1-4 mutations (fuzzing.mutate, its choices drawn by hypothesis)."""
    return st.builds(
        lambda seed, rng: mutate(rng, seed, tokens),
        st.sampled_from(list(seeds)),
        st.randoms(use_true_random=False),
    )


CUTS = st.lists(st.integers(1, 300), max_size=4)


# ============================================================================ HL7 v2


@pytest.fixture(scope="module")
def hl7_service() -> Iterator[adt.Handler]:
    with f.patient_service() as apply:
        yield apply


FIELD_VALUES = ["ADT^A08", "ADT^A40^ADT_A39", "ADT", "A47", "2.5", "2.3.1", '""', "UNICODE UTF-8",
                "8859/1", "010181-900C^^^&1.2.246.21&ISO", "TESTSAIRAALA^1.2.246.10.0.10^ISO",
                "19810101", "F"]  # fmt: skip
FIELD = st.one_of(
    st.text('AZaz09 .-^~\\&|"äö\x00\n', max_size=12),
    st.sampled_from(FIELD_VALUES),
    st.text("AZ09.", min_size=150, max_size=400),  # past what the index keeps
)
SEGMENT_NAMES = st.sampled_from(["EVN", "PID", "MRG", "PV1", "MSH", "ERR", "", "P1D"])


@st.composite
def er7_messages(draw: st.DrawFn) -> bytes:
    """An ADT-shaped message from random fields: MSH (sometimes with other delimiters),
    then random segments."""
    separator = draw(st.sampled_from(["|", "|", "#", "^", "\\"]))
    encoding = draw(st.sampled_from(["^~\\&", "^~\\&", "", "^", "^~\\&#%", "^~\\I&", "P~\\&"]))
    msh = draw(st.lists(FIELD, min_size=0, max_size=18))
    segments = [separator.join(["MSH", encoding, *msh])]
    for _ in range(draw(st.integers(0, 5))):
        fields = draw(st.lists(FIELD, max_size=30))
        segments.append(separator.join([draw(SEGMENT_NAMES), *fields]))
    terminator = draw(st.sampled_from(["\r", "\r", "\n", "\r\n"]))
    codec = draw(st.sampled_from(["utf-8", "iso-8859-1"]))
    return terminator.join(segments).encode(codec, "replace")


@st.composite
def fields_replaced(draw: st.DrawFn) -> bytes:
    """A seed message with one to three of its fields replaced by random values."""
    seed = draw(st.sampled_from(f.HL7_SEEDS)).decode("latin-1")
    segments = [segment.split("|") for segment in seed.split("\r") if segment]
    for _ in range(draw(st.integers(1, 3))):
        fields = draw(st.one_of(st.just(segments[0]), st.sampled_from(segments)))  # MSH often
        index = draw(st.integers(1, len(fields) + 2))
        fields.extend([""] * (index + 1 - len(fields)))
        fields[index] = draw(FIELD)
    text = "\r".join("|".join(fields) for fields in segments) + "\r"
    return text.encode(draw(st.sampled_from(["utf-8", "iso-8859-1"])), "replace")


@FUZZ
@given(st.one_of(mutated(f.HL7_SEEDS, f.HL7_TOKENS), fields_replaced()))
def test_mutated_adt_messages_are_acknowledged(hl7_service: adt.Handler, frame: bytes) -> None:
    """kuva's patient service on SQLite behind the handler, as the listener runs it."""
    f.check_hl7(frame, hl7_service)


@pytest.fixture
def seeded_service(engine: Engine) -> adt.Handler:
    """kuva's patient service on an index holding a study of each seed patient, so
    that updates, merges and unlinks are applied (not only answered)."""
    for number, patient_id in enumerate(["010181-900C", "020202-900E", "030303-9005"], 1):
        store(engine, PatientKey(patient_id, "1.2.246.21"), number)
    service = PatientService(engine)
    return f.unique_control_ids(partial(service.handle, certified=None, address="127.0.0.1"))


@WITH_ENGINE
@given(st.one_of(er7_messages(), fields_replaced(), mutated(f.HL7_SEEDS, f.HL7_TOKENS)))
def test_adt_messages_are_applied_or_refused_on_each_database(
    seeded_service: adt.Handler, frame: bytes
) -> None:
    """Also on PostgreSQL, whose columns have lengths SQLite does not enforce."""
    f.check_hl7(frame, seeded_service)


def test_every_field_too_long_on_each_database(seeded_service: adt.Handler) -> None:
    """Each field of each seed in turn 400 characters long (past every column the
    index has for what HL7 sets), and each MSH field 150 (within some columns, past
    others: an MSH-3 that long once overflowed the correction log's source), an ACK
    each time, on SQLite and PostgreSQL."""
    for seed in f.HL7_SEEDS:
        segments = [segment.split("|") for segment in seed.decode("latin-1").split("\r") if segment]
        for number, fields in enumerate(segments):
            for index in range(1, len(fields) + 2):
                long = ["A" * 200 + "^" + "B" * 200] + (["C" * 150] if number == 0 else [])
                for value in long:
                    changed = [list(s) for s in segments]
                    changed[number].extend([""] * (index + 1 - len(fields)))
                    changed[number][index] = value
                    text = "\r".join("|".join(s) for s in changed) + "\r"
                    f.check_hl7(text.encode("latin-1"), seeded_service)


@FUZZ
@given(st.one_of(st.binary(max_size=300), st.binary(max_size=200).map(lambda b: b"MSH" + b)))
def test_random_bytes_are_acknowledged(frame: bytes) -> None:
    f.check_hl7(frame, f.render_only)


@FUZZ
@given(
    st.lists(
        st.one_of(
            st.sampled_from(f.HL7_SEEDS).map(lambda m: START + m + END),
            st.binary(max_size=40),
            st.sampled_from([START, END, b"\x1c", b"\r", START * 3]),
        ),
        max_size=8,
    ).map(b"".join),
    CUTS,
    st.sampled_from([64, 512, 4096]),
)
def test_mllp_streams(stream: bytes, cuts: list[int], max_bytes: int) -> None:
    """Frames out, every byte accounted for, the buffer within the limit."""
    f.check_mllp(stream, cuts, max_bytes, f.render_only)


def test_mllp_without_frame_end_stays_within_the_limit() -> None:
    """A peer that opens a frame and never ends it: FrameTooLong once past the limit,
    nothing kept above it; garbage outside frames is dropped as it comes."""
    unended, garbage = START + b"x" * (4 << 20), b"\x00" * (4 << 20)
    with bounded_memory(0, slack=512 << 10):
        assert f.check_mllp(unended, [65536], 64 << 10) == "too-long"
        assert f.check_mllp(garbage, [65536], 64 << 10) == "framed"


# ============================================================================ SOAP, MTOM

NAMESPACES = ["http://www.w3.org/2005/08/addressing", "urn:x",
              "http://www.w3.org/2003/05/soap-envelope",
              "http://schemas.xmlsoap.org/soap/envelope/",
              "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd",
              "", "http://example.fi/ä", "urn:x y"]  # fmt: skip
ATTRIBUTE_VALUES = ["true", "1", "0", "false", "maybe", "cid:x", "",
                    "http://www.w3.org/2003/05/soap-envelope/role/next"]  # fmt: skip
TEXTS = ["", "urn:uuid:1", " ", "http://www.w3.org/2005/08/addressing/anonymous", "&amp;"]
LOCALS = ["Action", "MessageID", "ReplyTo", "FaultTo", "To", "RelatesTo", "Security", "Address",
          "Envelope", "Header", "Body", "Include", "x"]  # fmt: skip


@st.composite
def xml_elements(draw: st.DrawFn, depth: int = 2) -> str:
    namespace = draw(st.sampled_from(NAMESPACES))
    local = draw(st.sampled_from(LOCALS))
    attributes = "".join(
        f' {name}="{value}"'
        for name, value in draw(
            st.dictionaries(
                st.sampled_from(["s:mustUnderstand", "s:role", "href", "Name", "a"]),
                st.sampled_from(ATTRIBUTE_VALUES),
                max_size=3,
            )
        ).items()
    )
    text = draw(st.sampled_from(TEXTS))
    children = "".join(draw(st.lists(xml_elements(depth - 1), max_size=3))) if depth else ""
    return f'<n:{local} xmlns:n="{namespace}"{attributes}>{text}{children}</n:{local}>'


@st.composite
def envelopes(draw: st.DrawFn) -> bytes:
    """SOAP envelopes from random header blocks and body elements."""
    soap = draw(st.sampled_from(NAMESPACES[2:4]))
    header = "".join(draw(st.lists(xml_elements(), max_size=5)))
    body = "".join(draw(st.lists(xml_elements(), max_size=2)))
    parts = [f"<s:Header>{header}</s:Header>"] if draw(st.booleans()) else []
    parts.append(f"<s:Body>{body}</s:Body>")
    return f'<s:Envelope xmlns:s="{soap}">{"".join(parts)}</s:Envelope>'.encode()


@FUZZ
@given(mutated(f.soap_seeds(), f.XML_TOKENS), st.sampled_from([None, "urn:x", ""]))
def test_mutated_soap_envelopes(data: bytes, action: str | None) -> None:
    f.check_soap(data, action)


@FUZZ
@given(st.one_of(envelopes(), st.binary(max_size=300)))
def test_generated_soap_envelopes(data: bytes) -> None:
    f.check_soap(data)


MIME_HEADERS = ['Content-Type: application/xop+xml; type="application/soap+xml"',
                "Content-Type: text/plain", "Content-ID: <a@b>", "Content-ID: <\x01>",
                "Content-ID: <>", "Content-ID: a@b", "Content-Transfer-Encoding: base64",
                "Content-Transfer-Encoding: quoted-printable", "Content-Transfer-Encoding: x-\x7f",
                " folded", "Broken header", "Content-ID: <root@test>"]  # fmt: skip


def mime_parts() -> st.SearchStrategy[bytes]:
    header = st.sampled_from(MIME_HEADERS)
    content = st.one_of(
        st.sampled_from(f.soap_seeds()[:3]), st.binary(max_size=40), st.just(b"aGVsbG8=")
    )
    return st.builds(
        lambda headers, body: ("\r\n".join(headers) + "\r\n\r\n").encode("latin-1") + body,
        st.lists(header, max_size=4),
        content,
    )


@st.composite
def mtom_packages(draw: st.DrawFn) -> tuple[str, bytes]:
    """multipart/related bodies of random parts, CRLF or LF framing, start or not."""
    boundary = "MIMEBoundary_fuzz"
    parts = draw(st.lists(mime_parts(), max_size=4))
    body = b"".join(b"--" + boundary.encode() + b"\r\n" + part + b"\r\n" for part in parts)
    body += b"--" + boundary.encode() + b"--\r\n"
    if draw(st.booleans()):
        body = body.replace(b"\r\n", b"\n")
    start = draw(st.sampled_from(["", '; start="<root@test>"', "; start=<\x01>"]))
    return f'multipart/related; type="application/xop+xml"; boundary={boundary}{start}', body


@FUZZ
@given(
    st.one_of(
        st.tuples(st.sampled_from(f.mtom_seeds())).flatmap(
            lambda seed: st.tuples(
                st.just(seed[0][0]), mutated([seed[0][1]], f.MIME_TOKENS + f.XML_TOKENS)
            )
        ),
        mtom_packages(),
    ),
    CUTS,
)
def test_mutated_mtom_packages(package: tuple[str, bytes], cuts: list[int]) -> None:
    content_type, body = package
    f.check_mtom(content_type, body, cuts)


@FUZZ
@given(
    st.one_of(
        mutated([ct.encode() for ct, _ in f.mtom_seeds()], [b";", b"=", b'"', b"\\"]),
        st.binary(max_size=120),
    ).map(lambda b: b.decode("latin-1")),
    st.sampled_from([body for _, body in f.mtom_seeds()]),
)
def test_mutated_mtom_content_types(content_type: str, body: bytes) -> None:
    f.check_mtom(content_type, body)


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.text(min_size=1, max_size=12).filter(lambda s: s == s.strip()),
            st.sampled_from(["text/plain", "application/dicom", "a\r\nb", "é"]),
            st.binary(max_size=60),
        ),
        max_size=3,
    ),
    st.one_of(st.none(), st.text(max_size=72)),
)
def test_mtom_writer_refuses_or_round_trips(
    parts: list[tuple[str, str, bytes]], boundary: str | None
) -> None:
    envelope = f.soap_seeds()[0]
    f.check_mtom_writer(envelope, parts, boundary)


def test_soap_entity_expansion_and_depth_stay_small() -> None:
    """A billion laughs, a DOCTYPE after a long prolog, deep nesting: faults, little memory."""
    laughs = (
        b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
        + b"".join(
            f'<!ENTITY {chr(98 + n)} "{("&" + chr(97 + n) + ";") * 10}">'.encode() for n in range(9)
        )
        + b']><s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body>&j;</s:Body>'
        b"</s:Envelope>"
    )
    late_doctype = b"<!--" + b"x" * (70 << 10) + b'--><!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>'
    deep = b"<a>" * 100_000 + b"</a>" * 100_000
    for data in (laughs, late_doctype, deep):
        with bounded_memory(len(data)):
            assert f.check_soap(data) == "fault-Sender"


def test_mtom_memory_is_a_multiple_of_the_body() -> None:
    """A 2 MB document in the captured package: read in 64 KB pieces, with bare LF
    framing (as captured, the body kept whole once) and with CRLF framing."""
    content_type, body = f.mtom_seeds()[0]
    f.check_mtom(content_type, body)  # the XDS schemas compiled before memory is counted
    big = body.replace(b"This is my document.", b"x" * (2 << 20))
    assert len(big) > 2 << 20
    crlf = big.replace(b"\n", b"\r\n")
    for package in (big, crlf):
        with bounded_memory(len(package), factor=4):
            assert f.check_mtom(content_type, package, [65536]) == "valid"


def test_faults_from_mime_headers_can_be_written() -> None:
    """Content-IDs are text of the sender's: a fault naming one is still XML."""
    body = (
        b"--b\r\nContent-Type: application/xop+xml\r\n\r\n<a/>\r\n"
        b"--b\r\nContent-ID: <\x01\x1b>\r\n\r\nx\r\n--b\r\nContent-ID: <\x01\x1b>\r\n\r\ny\r\n--b--"
    )
    assert f.check_mtom('multipart/related; type="application/xop+xml"; boundary=b', body) == (
        "mtom-error"
    )
    f.check_mtom('multipart/related; type="application/xop+xml"; boundary=b; start=<\x02>', body)


@pytest.mark.parametrize(
    "data",
    [  # namespace names libxml2 let through: an undeclared prefix, as the longer runs found
        b'<?l?><s:Envelope s=""><s:Header><a:ReplyTo><a:Address></a:Address></a:ReplyTo>'
        b'<a:ReplyTo></a:ReplyTo><a:To></a:To></s:Header><s:Body><R xmlns="7"></R></s:Body>'
        b"</s:Envelope>",
        b'<s:Envelope s=""><s:Header><a:R><a:A></a:A></a:R><a:R></a:R><a:T></a:T></s:Header>'
        b'<s:Body><R xmlns="7"></R></s:Body></s:Envelope>',
    ],
)
def test_envelopes_with_undeclared_prefixes(data: bytes) -> None:
    assert f.check_soap(data) == "fault-Sender"


# ============================================================================ notices

ODD_TIMES = ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "2026-11-27",
             "2026-11-27T10:00:00", "2026-02-30T10:00:00Z", "T", ""]  # fmt: skip
TIMES = st.one_of(
    st.datetimes(
        min_value=datetime(1, 1, 1),
        max_value=datetime(9999, 12, 31, 23, 59),
        timezones=st.sampled_from(
            [UTC, timezone(timedelta(hours=14)), timezone(-timedelta(hours=14, minutes=59))]
        ),
    ).map(datetime.isoformat),
    st.sampled_from(ODD_TIMES),
)
JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20), TIMES),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
NOTICE_FIELDS = ["recipient", "patient", "studies", "documents", "disclosed_at", "channel",
                 "basis", "notice_id", "extra"]  # fmt: skip


@st.composite
def notice_bodies(draw: st.DrawFn) -> bytes:
    """The seed notices with fields replaced by random JSON values and times."""
    notices: list[dict[str, Any]] = [dict(n) for n in f._notices()]
    for body in notices:
        for name in draw(st.lists(st.sampled_from(NOTICE_FIELDS), max_size=3)):
            body[name] = draw(st.one_of(TIMES, JSON_VALUES))
        body["disclosed_at"] = draw(st.one_of(st.just(body["disclosed_at"]), TIMES))
    value: Any = notices if draw(st.booleans()) else notices[0]
    return json.dumps(value, ensure_ascii=draw(st.booleans())).encode()


@FUZZ
@given(st.one_of(mutated(f.NOTICE_SEEDS, f.JSON_TOKENS), notice_bodies(), st.binary(max_size=80)))
def test_disclosure_notices(body: bytes) -> None:
    f.check_notices(body)


# ============================================================================ syslog


@st.composite
def audit_messages(draw: st.DrawFn) -> bytes:
    """Export AuditMessages from random pieces: codes, times, identifiers."""
    code = st.sampled_from(["110106", "110180", "9", "110152", "1", "2", "", "x"])
    text = st.text("ab1.^&;\"'<>", max_size=70).map(
        lambda s: s.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;")
    )
    ids = st.one_of(text, st.sampled_from(["1.2.3", "010181-900C^^^&1.2.246.21&ISO",
                                            "x^^^&1.2.03&ISO", "urn:oid:1.2.3"]))  # fmt: skip
    objects = "".join(
        f'<ParticipantObjectIdentification ParticipantObjectID="{draw(ids)}" '
        f'ParticipantObjectTypeCode="{draw(code)}" ParticipantObjectTypeCodeRole="{draw(code)}">'
        f'<ParticipantObjectIDTypeCode csd-code="{draw(code)}"/></ParticipantObjectIdentification>'
        for _ in range(draw(st.integers(0, 4)))
    )
    participants = "".join(
        f'<ActiveParticipant UserID="{draw(ids)}" AlternativeUserID="{draw(ids)}">'
        f'<RoleIDCode code="{draw(code)}"/></ActiveParticipant>'
        for _ in range(draw(st.integers(0, 3)))
    )
    return (
        f'<AuditMessage><EventIdentification EventDateTime="{draw(TIMES)}" '
        f'EventOutcomeIndicator="{draw(st.sampled_from(["0", "4", ""]))}">'
        f'<EventID csd-code="{draw(code)}"/><EventTypeCode code="{draw(code)}" '
        f'originalText="{draw(text)}"/><PurposeOfUse code="{draw(code)}"/></EventIdentification>'
        f'{participants}<AuditSourceIdentification AuditSourceID="{draw(text)}" '
        f'AuditEnterpriseSiteID="{draw(ids)}"/>{objects}</AuditMessage>'
    ).encode()


@FUZZ
@given(
    st.one_of(mutated(f.SYSLOG_SEEDS, f.SYSLOG_TOKENS), audit_messages(), st.binary(max_size=200))
)
def test_syslog_messages(message: bytes) -> None:
    f.check_export(message)


@FUZZ
@given(mutated(f.SYSLOG_STREAM_SEEDS, f.SYSLOG_TOKENS))
def test_syslog_frames(stream: bytes) -> None:
    f.check_syslog_stream(stream)


def test_audit_message_with_an_undeclared_prefix() -> None:
    message = (
        b'<?l?><a:AuditMessage s=""><a:H><a:R><a:A></a:A></a:R><a:R></a:R><a:T></a:T></a:H>'
        b'<a:B><R xmlns="7"></R></a:B></a:AuditMessage>'
    )
    assert f.check_export(message) == "MalformedMessage"


def test_syslog_frames_that_lie_about_their_length() -> None:
    """A frame announcing 10 GB or more than the limit ends the connection unread."""
    with bounded_memory(0, slack=256 << 10):
        for head in (b"9999999999 ", b"65537 ", b"99999999999 ", b"0 ", b" ", b"12x"):
            assert f.check_syslog_stream(head + b"<x/>" * 1000) == "frames-0"
    assert syslog_msg(b"<85>1 " + b"[" * 100_000) is not None
