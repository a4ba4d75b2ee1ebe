"""Fuzzing the parsers at kuva's edge (issue 19): valid seed inputs of each wire format,
mutations of them, and one check per parser that feeds it an input the way kuva's
adapter does and fails when the parser breaks its contract - an exception it does
not document, a malformed answer, memory out of proportion to the input.

Shared by tests/unit/test_edge_fuzz*.py (hypothesis, bounded, in CI), the longer
runs of fuzz/run.py (atheris, or the ``random`` engine below) and the burst of
tests/integration/test_malformed_burst.py. A check returns a short label of what
the parser made of the input (for the run's statistics).

The error contracts, from the parsers' own documentation:

* MLLP (kuva.hl7.mllp): ``MllpFramer.feed`` hands back frames or raises FrameTooLong;
  bytes outside frames are counted as garbage; nothing above the limit is kept.
* HL7 v2 (kuva.hl7.adt): ``handle`` answers every frame with an ACK - AA, or AE / AR
  with an ERR segment - and never raises.
* SOAP (kuva.xds.soap): ``parse_envelope`` raises SoapFault (DetailedFault) only, and
  every fault can be written as an HTTP answer (``fault_reply``).
* MTOM/XOP (kuva.xds.mtom): MtomReader raises MtomError only (the endpoint turns it
  into a Sender fault); ``mtom_body`` raises ValueError on bad header values and
  MtomError on a wrong declared length; what it writes reads back the same.
* multipart (kuva.dicomweb.multipart_parser): MultipartParser raises MultipartError
  (ValueError for a bad boundary); ``parse_content_type`` ValueError.
* STOW-RS (kuva.dicomweb.stow): StowReceiver never raises; a part that cannot be
  stored gets a Failure Reason, never 0110 Processing failure (an unexpected error).
* Part 10 / data sets (kuva.codec.part10, as C-STORE and STOW-RS read them): the
  header read may fail (any exception is answered "cannot be parsed"), but what was
  read goes through ``extract_attributes`` and ``dataset_json`` (kuva.codec.dicom_json:
  an element that cannot be converted is left out) without an exception.
* Disclosure notices (kuva.web.notices): ``parse_notices`` raises NoticeProblem only.
* Syslog (kuva.audit.listener, kuva.audit.export): octet-counted frames or None;
  ``syslog_msg`` never raises; ``export.parse`` raises MalformedMessage or
  UnusableExport only.
* DICOM PDUs (kuva.dicom.net): ``pdu.decode`` raises PduError only, ``decode_command``
  DimseError only (tests/unit/test_net_fuzz.py has the property tests).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import json
import random
import re
import tempfile
import tracemalloc
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache, partial
from pathlib import Path
from typing import Any

import hl7
import pydicom
import pydicom.uid
from lxml import etree
from pydicom import dcmread
from pydicom.dataset import Dataset

from kuva.audit import export
from kuva.audit.listener import SyslogListener, syslog_msg
from kuva.audit.syslog import syslog_message
from kuva.codec.dicom_json import dataset_json
from kuva.codec.part10 import apply_sender_defaults, canonical_file_meta, extract_attributes
from kuva.config import AuditSettings
from kuva.dicom.net import pdu
from kuva.dicom.net.dimse import DimseError, decode_command
from kuva.dicomweb.multipart_parser import (
    MultipartError,
    MultipartParser,
    PartData,
    PartEnd,
    PartEvent,
    PartStart,
    parse_content_type,
    valid_boundary,
)
from kuva.dicomweb.stow import PROCESSING_FAILURE, StowReceiver, store_response
from kuva.hl7 import adt
from kuva.hl7.mllp import END, START, FrameTooLong, MllpFramer
from kuva.model.disclosure import BASIS_LENGTH, CHANNEL_LENGTH, MAX_ITEMS, OID_LENGTH
from kuva.model.patient import PatientCommand
from kuva.services.ingest import IncomingInstance, IngestService, StoreOutcome, StoreStatus
from kuva.services.patients import AckRenderer, MessageRef
from kuva.storage.filesystem import FileBlobStore
from kuva.web.notices import MAX_NOTICES, NoticeProblem, parse_notices
from kuva.xds.messages import Attachment, SoapFault, SoapRequest
from kuva.xds.mtom import MtomError, MtomReader, mtom_body
from kuva.xds.schema import validate
from kuva.xds.soap import WSSE, build_envelope, fault_reply, parse_envelope, serialize
from tests.support.disclosures import REPORTER, kuva_export, notice, third_party_export
from tests.support.hl7 import adt as adt_message
from tests.support.hl7 import mrg, pid
from tests.support.synthetic import make_ct_series

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "xds" / "samples"
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
ORGANIZATION = "1.2.246.10.0.10"
CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
BOUNDARY = "kuva-fuzz-0f3cf5c0"
# What a check may allocate besides a multiple of its input (tracemalloc, bytes).
MEMORY_SLACK = 4 << 20


# --------------------------------------------------------------------------- mutations

# Bytes with a meaning in the formats, spliced in by the mutators.
HL7_TOKENS = [b"|", b"^", b"~", b"\\", b"&", b"\r", b"\n", b"MSH|^~\\&|", b"PID|", b"MRG|",
              b"EVN|", b"\x0b", b"\x1c\r", b'""', b"\\X0D\\", b"ADT^A40", b"2.5", b"\xc3\xa4",
              b"\xe4", b"UNICODE UTF-8", b"8859/1"]  # fmt: skip
XML_TOKENS = [b"<", b">", b"/>", b"</", b"&", b"&amp;", b"&#0;", b"&#x1F;", b"<![CDATA[", b"]]>",
              b"<!--", b"-->", b"<?pi x?>", b"<!DOCTYPE x [<!ENTITY a 'b'>]>", b'xmlns="',
              b"xmlns:soap=", b'mustUnderstand="true"', b"urn:uuid:", b"\x00", b"\xff\xfe",
              b'<xop:Include xmlns:xop="http://www.w3.org/2004/08/xop/include" href="cid:x"/>',
              b"\xef\xbb\xbf", b"\r\n"]  # fmt: skip
MIME_TOKENS = [b"\r\n", b"\n", b"--", b"\r\n--" + BOUNDARY.encode(), b"--" + BOUNDARY.encode(),
               b"Content-ID: <x@y>\r\n", b"Content-Type: application/xop+xml\r\n",
               b"Content-Transfer-Encoding: base64\r\n", b"\r\n\r\n", b" \t", b"\x00", b":",
               b"Content-Type: application/dicom\r\n", b"DICM", b"\x02\x00\x00\x00UL\x04\x00",
               b"\xff\xff\xff\xff"]  # fmt: skip
JSON_TOKENS = [b"{", b"}", b"[", b"]", b'"', b":", b",", b"null", b"true", b"1e999", b"-0",
               b'"\\u0000"', b'"\\ud800"', b"\xff", b"0001-01-01T00:00:00+14:00",
               b"9999-12-31T23:59:59-14:00", b'"studies":[]', b"1.2.3", b"\\"]  # fmt: skip
SYSLOG_TOKENS = [b" ", b"-", b"[", b"]", b'"', b"\\]", b"<85>1 ", b"\xef\xbb\xbf", b"9999999999 ",
                 b"0 ", *XML_TOKENS[:12]]  # fmt: skip
DICOM_TOKENS = [b"\xfe\xff\x00\xe0", b"\xfe\xff\xdd\xe0", b"\xfe\xff\x0d\xe0", b"\xff\xff\xff\xff",
                b"SQ\x00\x00", b"UN\x00\x00", b"OB\x00\x00", b"\x08\x00\x05\x00CS",
                b"ISO 2022 IR 87", b"\x1b$B", b"\x10\x00\x10\x00PN"]  # fmt: skip

KINDS = ["flip", "set", "insert", "delete", "truncate", "duplicate", "token", "number", "length"]


def mutate(rng: random.Random, seed: bytes, tokens: Sequence[bytes] = (), rounds: int = 0) -> bytes:
    """``seed`` with 1-4 (or ``rounds``) random mutations of the kinds in KINDS: a bit
    flipped, a byte set, bytes inserted, deleted or duplicated, the end cut off, a
    token of the format spliced in, a decimal number made huge or negative, or two or
    four bytes set to a length that lies."""
    data = bytearray(seed)
    for _ in range(rounds or rng.randint(1, 4)):
        kind = rng.choice(KINDS if tokens else [k for k in KINDS if k != "token"])
        pos = rng.randint(0, len(data))
        if kind == "flip" and pos < len(data):
            data[pos] ^= 1 << rng.randint(0, 7)
        elif kind == "set" and pos < len(data):
            data[pos] = rng.randint(0, 255)
        elif kind == "insert":
            data[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif kind == "delete":
            del data[pos : pos + rng.randint(1, 64)]
        elif kind == "truncate":
            del data[pos:]
        elif kind == "duplicate":
            start = rng.randint(0, len(data))
            data[pos:pos] = data[start : start + rng.randint(1, 256)]
        elif kind == "token":
            data[pos:pos] = rng.choice(tokens)
        elif kind == "number":
            digits = [m.span() for m in re.finditer(rb"[0-9]+", data)]
            if digits:
                start, end = rng.choice(digits)
                data[start:end] = str(rng.choice([0, -1, 2**31, 2**32 + 7, 10**20])).encode()
        elif kind == "length" and pos + 4 <= len(data):
            width = rng.choice([2, 4])
            value = rng.choice([0, 1, 0xFF, (1 << (8 * width)) - 1, rng.getrandbits(8 * width)])
            data[pos : pos + width] = value.to_bytes(width, rng.choice(["little", "big"]))
    return bytes(data)


def chunks(data: bytes, cuts: Sequence[int]) -> Iterator[bytes]:
    """``data`` in pieces of the sizes in ``cuts`` (cycled; empty: whole)."""
    if not cuts:
        yield data
        return
    position, index = 0, 0
    while position < len(data):
        size = max(1, cuts[index % len(cuts)])
        yield data[position : position + size]
        position += size
        index += 1


@contextlib.contextmanager
def bounded_memory(input_size: int, factor: int = 16, slack: int = MEMORY_SLACK) -> Iterator[None]:
    """Fails when the block allocates more than ``factor`` times the input plus
    ``slack`` at its peak (tracemalloc; started here unless it runs already)."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    try:
        yield
        peak = tracemalloc.get_traced_memory()[1] - base
        assert peak <= factor * input_size + slack, f"peak {peak} bytes for {input_size}"
    finally:
        if started:
            tracemalloc.stop()


def split_head(data: bytes) -> tuple[str, bytes]:
    """A fuzz input that carries a header value: its first line (latin-1) and the rest."""
    head, _, body = data.partition(b"\n")
    return head.decode("latin-1"), body


# --------------------------------------------------------------------------- HL7 v2

HL7_SEEDS: list[bytes] = [
    adt_message("A08", pid("010181-900C"), control="C-A08").encode(),
    adt_message(
        "A31", pid("010181-900C", "Virtanen^Matti^Olavi^Jr^Dr") + "||||||||||||||||||||20240101",
        control="C-A31", version="2.3.1",
    ).encode(),
    adt_message("A40", pid("010181-900C"), mrg("020202-900E"), pid("030303-9005"),
                mrg("020202-900E"), control="C-A40").encode(),
    adt_message("A47", pid("010181-900C"), mrg("020202-900E"), control="C-A47",
                structure="ADT_A30").encode(),
    adt_message("A37", pid("010181-900C"), pid("020202-900E"), control="C-A37").encode(),
    adt_message("A08", pid("010181-900C", "Äyräpää^Örjan"), control="C-8859", charset="8859/1",
                organization="").encode("iso-8859-1"),
    adt_message("A08", pid("010181-900C"), control="C-NOCS", charset="", version="2.4").encode(),
    b"MSH|^~\\&|RIS|HOSP|KUVA|KANTA|20261127120000||ORU^R01|C-ORU|P|2.5\rOBX|1|TX|||x\r",
]  # fmt: skip
ACK_SEGMENTS = ("MSH|", "MSA|", "ERR|")


def ack_code(reply: bytes) -> str:
    """MSA-1 of an ACK kuva wrote, after checking its shape: MSH, MSA, ERR segments
    only, one MSA, an ERR with AE and AR; python-hl7 reads it."""
    text = reply.decode("latin-1")
    segments = [segment for segment in text.split("\r") if segment]
    assert segments and segments[0].startswith("MSH|^~\\&|"), reply[:200]
    assert all(segment.startswith(ACK_SEGMENTS) for segment in segments), reply[:400]
    (msa,) = [segment for segment in segments if segment.startswith("MSA|")]
    code = msa.split("|")[1]
    assert code in ("AA", "AE", "AR"), msa
    if code != "AA":
        assert any(segment.startswith("ERR|") for segment in segments), reply[:400]
    hl7.parse(reply.decode(adt.charset_of(reply), "replace"))
    return code


def check_hl7(frame: bytes, apply: adt.Handler) -> str:
    """One MLLP frame through kuva's ADT handler: an ACK, never an exception."""
    return ack_code(adt.handle(frame, apply))


def render_only(ref: MessageRef, commands: list[PatientCommand], render: AckRenderer) -> str:
    """A patient service that applies whatever it is asked (no index)."""
    assert ref.control_id and commands
    return render(None)


def check_mllp(
    stream: bytes,
    cuts: Sequence[int] = (),
    max_bytes: int = 4096,
    apply: adt.Handler | None = None,
) -> str:
    """A byte stream through the MLLP framer as the listener reads it (``cuts``: the
    sizes of the reads); each frame through ``apply``'s ADT handler, if given.
    Every byte is accounted for (a frame, its framing, garbage, or the buffer),
    and the buffer never holds more than the limit."""
    framer = MllpFramer(max_bytes)
    fed = framed = 0
    for chunk in chunks(stream, cuts):
        try:
            frames = framer.feed(chunk)
        except FrameTooLong:
            return "too-long"
        fed += len(chunk)
        for message in frames:
            assert END not in message
            framed += len(message) + len(START) + len(END)
            if apply is not None:
                check_hl7(message, apply)
        buffered = len(framer._buffer)
        assert buffered <= max_bytes
        assert framer.garbage + framed + buffered == fed
    return "framed"


def unique_control_ids(apply: adt.Handler) -> adt.Handler:
    """``apply`` with each message's MSH-10 made unique (same length, or 12 longer
    when shorter than 12): mutants of one seed are applied, not answered as seen."""
    numbers = itertools.count()

    def unique(ref: MessageRef, commands: list[PatientCommand], render: AckRenderer) -> str:
        control_id, number = ref.control_id, f"{next(numbers):012d}"
        control_id = control_id[:-12] + number if len(control_id) >= 12 else control_id + number
        return apply(dataclasses.replace(ref, control_id=control_id), commands, render)

    return unique


@contextlib.contextmanager
def patient_service(url: str | None = None) -> Iterator[adt.Handler]:
    """kuva's patient service on a fresh index (SQLite in a temporary folder unless
    ``url``), as the ADT handler's ``apply`` the HL7 listener gives it."""
    from kuva.index.database import make_engine, migrate
    from kuva.services.patients import PatientService

    with tempfile.TemporaryDirectory() as folder:
        engine = make_engine(url or f"sqlite:///{folder}/index.sqlite")
        try:
            migrate(engine)
            service = PatientService(engine)
            yield unique_control_ids(partial(service.handle, certified=None, address="127.0.0.1"))
        finally:
            engine.dispose()


# --------------------------------------------------------------------------- SOAP, MTOM

WSA = "http://www.w3.org/2005/08/addressing"
SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
SAML2 = "urn:oasis:names:tc:SAML:2.0:assertion"
PNR_XOP_TYPE = (
    'multipart/related; boundary="MIMEBoundary_95b57d7287e4fa4b528a8f050c41f8ad829c20332f23b48d";'
    ' type="application/xop+xml"; start-info="application/soap+xml";'
    ' action="urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"'
)
KOS_TYPE = (
    'multipart/related; boundary="uuid:376733a6-6a2d-4583-a687-04c08acf6a49+id=17";'
    ' type="application/xop+xml"; start-info="application/soap+xml";'
    ' action="urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"'
)


def _is_envelope(data: bytes) -> bool:
    return b"Envelope" in data[:400]


def _wrapped(payload: bytes, action: str) -> bytes:
    """A payload sample in a SOAP 1.2 envelope that kuva reads (Action, MessageID,
    a XUA assertion, an anonymous ReplyTo)."""
    envelope = build_envelope(action, etree.fromstring(payload), message_id="urn:uuid:1-2-3")
    header = envelope[0]
    reply_to = etree.SubElement(header, f"{{{WSA}}}ReplyTo")
    etree.SubElement(reply_to, f"{{{WSA}}}Address").text = f"{WSA}/anonymous"
    header[0].set(f"{{{SOAP12}}}mustUnderstand", "true")
    security = etree.SubElement(header, f"{{{WSSE}}}Security")
    assertion = etree.SubElement(security, f"{{{SAML2}}}Assertion")
    statement = etree.SubElement(assertion, f"{{{SAML2}}}AttributeStatement")
    attribute = etree.SubElement(statement, f"{{{SAML2}}}Attribute", Name="urn:oasis:subject-id")
    etree.SubElement(attribute, f"{{{SAML2}}}AttributeValue").text = "Dr. Virtanen"
    return serialize(envelope)


@cache
def soap_seeds() -> list[bytes]:
    """The XDS samples: the envelopes as they are, each payload in an envelope."""
    seeds: list[bytes] = []
    for path in sorted(SAMPLES.glob("*.xml")):
        data = path.read_bytes()
        seeds.append(data if _is_envelope(data) else _wrapped(data, f"urn:kuva:{path.stem}"))
    return seeds


@cache
def mtom_seeds() -> list[tuple[str, bytes]]:
    """(Content-Type, body) of the two captured MTOM bodies and of one kuva writes."""
    seeds = [
        (PNR_XOP_TYPE, (SAMPLES / "iti41-ProvideAndRegister-mtom-xop-http-body.txt").read_bytes()),
        (KOS_TYPE, (SAMPLES / "rad68-iti41-PnR-KOS-captured-mime-body.txt").read_bytes()),
    ]
    envelope = _wrapped(
        b'<r xmlns:xop="http://www.w3.org/2004/08/xop/include">'
        b'<d><xop:Include href="cid:doc.1%40kuva"/></d></r>',
        "urn:kuva:mtom",
    )
    attachment = Attachment("doc.1@kuva", "text/plain", lambda: iter([b"report\r\n--x", b"!"]))
    package = mtom_body(envelope, [attachment], boundary="MIMEBoundary_kuva_fuzz")
    seeds.append((package.content_type, b"".join(package.chunks)))
    return seeds


def check_fault(fault: SoapFault) -> int:
    """The fault as kuva answers it over HTTP: written, and a 4xx for the sender's
    faults (500 only for the codes SOAP 1.2 Part 2 Table 20 gives it)."""
    reply = fault_reply(fault)
    etree.fromstring(reply.body)
    if fault.code == "Sender":
        assert 400 <= reply.status < 500, (reply.status, fault.reason)
    else:
        assert reply.status in (400, 500), (reply.status, fault.code)
    return reply.status


def _request_checked(request: SoapRequest) -> str:
    assert request.action and request.message_id
    assert isinstance(request.body.tag, str)
    problems = validate(request.body)
    return "invalid" if problems else "valid"


def check_soap(data: bytes, http_action: str | None = None) -> str:
    """An application/soap+xml body as the XDS endpoint reads it."""
    try:
        request = parse_envelope(data, http_action=http_action)
    except SoapFault as fault:
        check_fault(fault)
        return f"fault-{fault.code}"
    return _request_checked(request)


def check_mtom(content_type: str, body: bytes, cuts: Sequence[int] = ()) -> str:
    """A multipart/related body as the XDS endpoint reads it: fed while it arrives,
    then the root part's envelope with the other parts as attachments."""
    try:
        reader = MtomReader(content_type)
        for chunk in chunks(body, cuts):
            reader.feed(chunk)
        message = reader.finish()
    except MtomError as exc:
        check_fault(SoapFault("Sender", f"malformed MTOM/XOP request: {exc}"))
        return "mtom-error"
    action = message.action
    try:
        request = parse_envelope(
            message.root, http_action=action, attachments=message.parts, mtom=True
        )
    except SoapFault as fault:
        check_fault(fault)
        return f"fault-{fault.code}"
    return _request_checked(request)


def check_mtom_writer(
    envelope: bytes, parts: Sequence[tuple[str, str, bytes]], boundary: str | None = None
) -> str:
    """``mtom_body`` raises ValueError on header values it cannot write; what it
    writes reads back as the same parts."""
    attachments = [
        Attachment(content_id, content_type, partial(iter, [content]), len(content))
        for content_id, content_type, content in parts
    ]
    try:
        package = mtom_body(envelope, attachments, boundary=boundary)
    except ValueError as exc:
        assert not isinstance(exc, MtomError)
        return "refused"
    body = b"".join(package.chunks)
    reader = MtomReader(package.content_type)
    reader.feed(body)
    message = reader.finish()
    assert message.root == envelope
    assert dict(message.parts) == {content_id: content for content_id, _, content in parts}
    return "written"


# --------------------------------------------------------------------------- multipart, STOW-RS


def check_content_type(value: str) -> str:
    try:
        parsed = parse_content_type(value)
    except ValueError:
        return "refused"
    assert parsed.media_type == parsed.media_type.lower() and "/" in parsed.media_type
    assert all(name == name.lower() for name in parsed.parameters)
    return "parsed"


def check_multipart(boundary: str, body: bytes, cuts: Sequence[int] = ()) -> str:
    """A body through the streaming parser in reads of ``cuts``: events in order
    (a part's start, its data, its end), never more data out than in."""
    try:
        parser = MultipartParser(boundary)
    except ValueError:
        assert not valid_boundary(boundary)
        return "bad-boundary"
    in_part = False
    data_out = 0

    def follow(events: Iterable[PartEvent]) -> None:
        nonlocal in_part, data_out
        for event in events:
            if isinstance(event, PartStart):
                assert not in_part
                in_part = True
            elif isinstance(event, PartData):
                assert in_part and event.data
                data_out += len(event.data)
            else:
                assert isinstance(event, PartEnd) and in_part
                in_part = False

    try:
        for chunk in chunks(body, cuts):
            try:
                follow(parser.feed(chunk))
            except MultipartError as exc:
                follow(exc.events)
                raise
        parser.finish()
    except MultipartError:
        return "malformed"
    finally:
        assert data_out <= len(body)
    assert not in_part
    return "complete"


class DiscardingIngest(IngestService):
    """An ingest service that takes every instance and keeps nothing (no index)."""

    def __init__(self) -> None:  # no index, no blob store of its own
        self.stored = 0

    def store(self, incoming: IncomingInstance) -> StoreOutcome:
        incoming.blob.discard()
        self.stored += 1
        return StoreOutcome(StoreStatus.STORED)


def part10(ds: Dataset, transfer_syntax: str = EXPLICIT) -> bytes:
    """``ds`` as a Part 10 file in ``transfer_syntax``."""
    ds = Dataset(ds)
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = pydicom.uid.UID(transfer_syntax)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def stow_body(files: Sequence[bytes], boundary: str = BOUNDARY) -> bytes:
    out = bytearray()
    for data in files:
        out += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
    return bytes(out + f"--{boundary}--\r\n".encode())


@cache
def dicom_seeds() -> list[Dataset]:
    """A small CT image, one with sequences and other character sets, a rejection
    note (IOCM KOS)."""
    from tests.support.iocm import PATIENT_SAFETY, rejection_note

    (ct,) = make_ct_series(1, rows=4, cols=4, patient_id="010181-900C")
    (other,) = make_ct_series(1, rows=2, cols=2, patient_id="020202-900E", seed=2)
    other.SpecificCharacterSet = "ISO_IR 100"
    other.PatientName = "Äyräpää^Örjan"
    other.IssuerOfPatientIDQualifiersSequence = [Dataset()]
    other.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityID = "1.2.246.21"
    other.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityIDType = "ISO"
    note = rejection_note(PATIENT_SAFETY, [ct])
    return [ct, other, note]


@cache
def part10_seeds() -> list[bytes]:
    """Part 10 files of the DICOM seeds, in the three uncompressed transfer syntaxes."""
    ct, other, note = dicom_seeds()
    return [part10(ct), part10(other, IMPLICIT), part10(note), part10(ct, BIG_ENDIAN)]


@cache
def data_set_seeds() -> list[tuple[str, bytes]]:
    """(transfer syntax, data set bytes) as a C-STORE carries them: no file meta."""
    seeds = []
    for data in part10_seeds():
        meta = dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta
        length = int.from_bytes(data[140:144], "little")
        seeds.append((str(meta.TransferSyntaxUID), data[144 + length :]))
    return seeds


@cache
def stow_seeds() -> list[bytes]:
    files = part10_seeds()
    return [stow_body(files[:2]), stow_body([files[2]]), stow_body([files[3], b"not dicom"])]


class StowCheck:
    """STOW-RS bodies through kuva's receiver into a blob store in a temporary folder."""

    def __init__(self) -> None:
        self._folder = tempfile.TemporaryDirectory()
        self.blobs = FileBlobStore(Path(self._folder.name))
        self.ingest = DiscardingIngest()

    def __call__(self, boundary: str, body: bytes, cuts: Sequence[int] = ()) -> str:
        if not valid_boundary(boundary):  # the endpoint answers 415 before reading
            return "bad-boundary"
        receiver = StowReceiver(boundary, self.ingest, self.blobs, ORGANIZATION, None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's, on every odd value
            for chunk in chunks(body, cuts):
                receiver.feed(chunk)
            receiver.finish()
        for result in receiver.results:
            assert result.failure_reason != PROCESSING_FAILURE, result.comment
        json.dumps(store_response(receiver.results, "http://kuva/dicom-web"))
        stored = sum(result.stored for result in receiver.results)
        return f"stored-{min(stored, 2)}" if receiver.malformed is None else "malformed"

    def close(self) -> None:
        self._folder.cleanup()


def check_data_set(transfer_syntax: str, data: bytes, *, defaults: bool = False) -> str:
    """A C-STORE data set as storage_scp reads it: canonical file meta plus the bytes,
    read to the pixel data. A failed read is answered "cannot be parsed"; a data set
    that was read is indexed (extract_attributes) and kept as DICOM JSON
    (dataset_json) without an exception."""
    stream = io.BytesIO(canonical_file_meta(CT, "1.2.3.4", transfer_syntax) + data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's, on every odd value
        try:
            header = dcmread(stream, stop_before_pixels=True)
        except (MemoryError, RecursionError):
            raise
        except Exception:
            return "unreadable"
        if defaults:
            apply_sender_defaults(header, issuer="1.2.246.21", character_set="ISO_IR 100")
        check_dicom_json(header)
        attributes = extract_attributes(header, transfer_syntax)
    assert attributes.dataset_json.startswith("{")
    return "read"


_TAG = re.compile(r"[0-9A-F]{8}")


def check_dicom_json(ds: Dataset) -> None:
    """dataset_json never raises; its answer is DICOM JSON (PS3.18 F.2) of tags."""
    value = json.loads(dataset_json(ds))
    assert isinstance(value, dict)
    for tag, element in value.items():
        assert _TAG.fullmatch(tag) and isinstance(element, dict) and "vr" in element, tag


# --------------------------------------------------------------------------- notices, syslog


def _notices() -> list[dict[str, Any]]:
    one = notice(
        "010181-900C",
        "2026-11-27T09:00:00+02:00",
        studies=["1.2.246.10.0.10.1.1"],
        person="Dr. Virtanen",
        notice_id="0f3cf5c0-70e0-41ef-baef-c6f9f65ec3e1",
    )
    two = notice("020202-900E", "2026-11-27T11:59:00Z", documents=["1.2.3^ext", "x"])
    return [one, two]


NOTICE_SEEDS: list[bytes] = [
    json.dumps(_notices()[0]).encode(),
    json.dumps(_notices(), ensure_ascii=False).encode(),
    json.dumps(_notices()[1], indent=2).encode(),
]


def check_notices(body: bytes) -> str:
    try:
        reported = parse_notices(body, REPORTER, NOW)
    except NoticeProblem as problem:
        assert problem.status in (400, 422) and problem.errors
        assert problem.detail
        return f"problem-{problem.status}"
    assert 1 <= len(reported) <= MAX_NOTICES
    for disclosure in reported:
        assert disclosure.disclosed_at.tzinfo is not None
        assert disclosure.disclosed_at <= NOW + timedelta(minutes=10)
    return "notices"


EXPORT_SEEDS: list[bytes] = [
    kuva_export("010181-900C", ["1.2.246.10.0.10.1.1", "1.2.246.10.0.10.1.2"],
                NOW - timedelta(hours=1)),
    third_party_export("010181-900C", "1.2.246.10.99.1.7", "2026-11-27T10:00:00+02:00"),
]  # fmt: skip
SYSLOG_SEEDS: list[bytes] = [
    syslog_message(x.decode(), timestamp=NOW, hostname="pacs.example.fi", procid=7)
    for x in EXPORT_SEEDS
] + [
    b'<85>1 2026-11-27T10:00:00Z host app 1 IHE+RFC-3881 [x@1 a="b\\]"][y@2] ' + EXPORT_SEEDS[1],
    b"<13>Nov 27 12:00:00 host app: " + EXPORT_SEEDS[0],  # RFC 3164
]


def frame_stream(messages: Iterable[bytes]) -> bytes:
    """Octet-counted frames (RFC 5425 4.3)."""
    return b"".join(str(len(m)).encode() + b" " + m for m in messages)


SYSLOG_STREAM_SEEDS = [frame_stream(SYSLOG_SEEDS[:2]), frame_stream(SYSLOG_SEEDS[2:])]


def check_export(message: bytes) -> str:
    """One syslog message as the listener reads it (MSG, then the AuditMessage)."""
    try:
        parsed = export.parse(syslog_msg(message), NOW)
    except (export.MalformedMessage, export.UnusableExport) as exc:
        return type(exc).__name__
    if isinstance(parsed, export.Ignored):
        return "ignored"
    assert len(parsed.recipient) <= OID_LENGTH
    assert len(parsed.channel) <= CHANNEL_LENGTH and len(parsed.basis) <= BASIS_LENGTH
    assert 1 <= len(parsed.studies) + len(parsed.documents) <= MAX_ITEMS
    assert parsed.disclosed_at.tzinfo is not None
    parsed.reported_by(REPORTER)
    return "export"


_LISTENER = SyslogListener(AuditSettings(listen_max_bytes=64 * 1024), lambda data, peer: 0)


def check_syslog_stream(stream: bytes) -> str:
    """A TLS connection's bytes: frames read (RFC 5425) until one is bad or the end."""
    reader = io.BytesIO(stream)
    frames = 0
    while (frame := _LISTENER._frame(reader, "fuzz")) is not None:
        assert len(frame) <= 64 * 1024
        check_export(frame)
        frames += 1
    return f"frames-{min(frames, 2)}"


# --------------------------------------------------------------------------- DICOM PDUs


def check_pdu(data: bytes) -> str:
    """A PDU (type byte, reserved, length, value) as the engine decodes it."""
    if len(data) < 6:
        return "short"
    try:
        pdu.decode(data[0], memoryview(data)[6:])
    except pdu.PduError:
        outcome = "pdu-error"
    else:
        outcome = "pdu"
    try:  # a P-DATA's first PDV as a command set
        decode_command(memoryview(data)[12:])
    except DimseError:
        return outcome
    return outcome + "+command"


# --------------------------------------------------------------------------- targets


@dataclass
class Target:
    """One parser to fuzz with whole byte strings: its seeds, its format's tokens, the
    check of one input, and what to close at the end."""

    seeds: list[bytes]
    tokens: Sequence[bytes]
    check: Callable[[bytes], str]
    close: Callable[[], None] = field(default=lambda: None)


def _with_head(check: Callable[[str, bytes], str]) -> Callable[[bytes], str]:
    return lambda data: check(*split_head(data))


def _data_set(data: bytes) -> str:
    syntax = [EXPLICIT, IMPLICIT, BIG_ENDIAN][data[0] % 3] if data else EXPLICIT
    return check_data_set(syntax, data[1:], defaults=bool(data) and data[0] >= 128)


def _reads(check: Callable[[str, bytes, Sequence[int]], str]) -> Callable[[bytes], str]:
    """A check of a streamed body, fed whole and in reads of 1-64 bytes."""

    def run(data: bytes) -> str:
        head, body = split_head(data)
        outcome = check(head, body, ())
        assert check(head, body, (len(body) % 61 + 1, 7, 64)) == outcome
        return outcome

    return run


def make_target(name: str) -> Target:
    """The fuzz target ``name`` (see TARGETS)."""
    if name in ("hl7", "mllp"):
        service = patient_service()
        apply = service.__enter__()

        def close() -> None:
            service.__exit__(None, None, None)

        if name == "hl7":
            return Target(HL7_SEEDS, HL7_TOKENS, lambda data: check_hl7(data, apply), close)
        streams = [b"".join(START + m + END for m in HL7_SEEDS[:3]), b"junk" + START + HL7_SEEDS[5]]
        return Target(
            streams,
            HL7_TOKENS,
            lambda data: check_mllp(data, (len(data) % 97 + 1,), 2048, apply),
            close,
        )
    if name == "soap":
        return Target(soap_seeds(), XML_TOKENS, check_soap)
    if name == "mtom":
        seeds = [ct.encode() + b"\n" + body for ct, body in mtom_seeds()]
        return Target(seeds, MIME_TOKENS + XML_TOKENS, _reads(check_mtom))
    if name == "multipart":
        seeds = [BOUNDARY.encode() + b"\n" + body for body in stow_seeds()]
        return Target(seeds, MIME_TOKENS, _reads(check_multipart))
    if name == "content-type":
        seeds = [ct.encode("latin-1") for ct, _ in mtom_seeds()]
        seeds.append(f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'.encode())
        return Target(seeds, [b";", b"=", b'"', b"\\", b" ", b"\t", b"/"],
                      lambda data: check_content_type(data.decode("latin-1")))  # fmt: skip
    if name == "stow":
        stow = StowCheck()
        seeds = [BOUNDARY.encode() + b"\n" + body for body in stow_seeds()]
        return Target(seeds, MIME_TOKENS + DICOM_TOKENS, _reads(stow), stow.close)
    if name == "part10":
        seeds = [
            bytes([[EXPLICIT, IMPLICIT, BIG_ENDIAN].index(syntax) + 128 * (n % 2)]) + data
            for n, (syntax, data) in enumerate(data_set_seeds())
            if len(data) < 4096
        ]
        return Target(seeds, DICOM_TOKENS, _data_set)
    if name == "notices":
        return Target(NOTICE_SEEDS, JSON_TOKENS, check_notices)
    if name == "syslog":
        return Target(SYSLOG_STREAM_SEEDS + SYSLOG_SEEDS, SYSLOG_TOKENS, check_syslog_stream)
    if name == "pdu":
        from tests.unit.test_net_fuzz import COMMAND_SEEDS, SEED_BYTES

        seeds = SEED_BYTES + [b"\x04\x00" + len(c).to_bytes(4, "big") + c for c in COMMAND_SEEDS]
        return Target(seeds, [b"\x00", b"\xff\xff", b"\x10\x00", b"\x50\x00"], check_pdu)
    raise KeyError(name)


TARGETS = ["hl7", "mllp", "soap", "mtom", "multipart", "content-type", "stow", "part10",
           "notices", "syslog", "pdu"]  # fmt: skip
