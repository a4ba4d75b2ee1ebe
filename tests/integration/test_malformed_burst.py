"""A burst of malformed input at every port of a running kuva (issue 19): hundreds of
broken DICOM PDUs over raw TCP, broken HL7 MLLP frames, broken SOAP bodies at the
XDS endpoints and broken STOW-RS bodies, several connections at a time. Afterwards
kuva still answers C-ECHO and GET /healthz, logged no traceback, and grew little.

Every answer is the protocol's own refusal: each HL7 frame an ACK with AE or AR,
each HTTP request a 4xx - except a SOAP VersionMismatch or MustUnderstand fault,
which SOAP 1.2 Part 2 (7.5.2.2, Table 20) answers with HTTP 500; those are checked
to be that fault, never a Receiver fault or a bare server error. Inputs are the
mutations of tests.support.fuzzing (seeded, so a run repeats); a mutant the parsers
would accept (an ADT message answered AA, an envelope read, a STOW-RS part stored)
is left out, so that only malformed input is sent."""

from __future__ import annotations

import random
import socket
import struct
import warnings
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from lxml import etree
from pynetdicom import AE

from kuva.dicomweb.stow import StowReceiver
from kuva.hl7 import adt
from kuva.hl7.mllp import END, START
from kuva.storage.filesystem import FileBlobStore
from kuva.xds.messages import SoapFault
from kuva.xds.mtom import MtomError, MtomReader
from kuva.xds.soap import parse_envelope
from tests.support import fuzzing as f
from tests.support.memory import PeakRss
from tests.support.peers import LOOPBACK
from tests.support.server import KuvaServer
from tests.unit.test_net_fuzz import COMMAND_SEEDS, SEED_BYTES

VERIFICATION = "1.2.840.10008.1.1"
SOAP_PLAIN = "application/soap+xml; charset=UTF-8"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={f.BOUNDARY}'
# SOAP 1.2 Part 2, Table 20: the fault codes answered with HTTP 500.
FAULTS_OF_500 = {"VersionMismatch", "MustUnderstand"}
MAX_HL7_BYTES = 64 * 1024
PARALLEL = 8


# ------------------------------------------------------------------------- DICOM


def dicom_inputs(rng: random.Random, count: int) -> list[bytes]:
    """Broken PDUs: mutated A-ASSOCIATE-RQ/AC/RJ, A-ABORT and release PDUs, random
    bytes, lying PDU lengths, a valid A-ASSOCIATE-RQ followed by broken P-DATA."""
    request = SEED_BYTES[0]
    pdata = [b"\x04\x00" + struct.pack(">L", len(c) + 6) + struct.pack(">LBB", len(c) + 2, 1, 3) + c
             for c in COMMAND_SEEDS]  # fmt: skip
    inputs = []
    for n in range(count):
        kind = n % 5
        if kind == 0:
            inputs.append(f.mutate(rng, rng.choice(SEED_BYTES), rounds=rng.randint(1, 6)))
        elif kind == 1:
            inputs.append(rng.randbytes(rng.randint(1, 600)))
        elif kind == 2:  # a length that lies: far more than will come
            body = rng.randbytes(rng.randint(0, 64))
            inputs.append(bytes([rng.randint(1, 7), 0]) + struct.pack(">L", 0xFFFFFFF0) + body)
        elif kind == 3:
            inputs.append(request + f.mutate(rng, rng.choice(pdata), rounds=rng.randint(1, 4)))
        else:
            inputs.append(f.mutate(rng, request, rounds=1)[: rng.randint(1, len(request))])
    return inputs


def send_dicom(port: int, data: bytes) -> bytes:
    """``data`` over a fresh connection, the sending side closed; what came back."""
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # kuva closed first: it has read enough to refuse
            pass
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    return answer


def first_pdu_type(answer: bytes) -> int | None:
    return answer[0] if answer else None


# ------------------------------------------------------------------------- HL7


def hl7_frames(rng: random.Random, count: int) -> list[bytes]:
    """Messages the ADT handler refuses (AE or AR): mutants of the seed messages and
    of messages missing what an ADT needs; none holding the MLLP framing bytes."""
    broken = [
        f.HL7_SEEDS[0].replace(b"|2.5|", b"|9.9|"),  # version
        f.HL7_SEEDS[0].replace(b"ADT^A08", b"ADT^A99"),  # event
        f.HL7_SEEDS[0].split(b"PID|")[0],  # no PID
        f.HL7_SEEDS[2].replace(b"MRG|", b"XXX|"),  # merges without MRG
        f.HL7_SEEDS[0].replace(b"|C-A08|", b"||"),  # no control id
        f.HL7_SEEDS[0].replace(b"|C-A08|", b"|" + b"C" * 300 + b"|"),
    ]
    frames: list[bytes] = []
    while len(frames) < count:
        seed = rng.choice(f.HL7_SEEDS + broken)
        message = f.mutate(rng, seed, f.HL7_TOKENS[:-4], rng.randint(1, 4))
        if START in message or b"\x1c" in message:
            continue
        if f.ack_code(adt.handle(message, f.render_only)) == "AA":
            continue  # a mutant that is still an ADT message kuva applies
        frames.append(message)
    return frames


def send_hl7(port: int, frames: list[bytes], garbage: bytes) -> list[bytes]:
    """The frames on one connection (garbage between them); the ACK frames back."""
    stream = b"".join(garbage + START + frame + END for frame in frames)
    with socket.create_connection((LOOPBACK, port), timeout=20) as sock:
        sock.sendall(stream)
        sock.shutdown(socket.SHUT_WR)
        buffer = b""
        while chunk := sock.recv(65536):
            buffer += chunk
    return [part.removeprefix(START) for part in buffer.split(END) if part]


def send_hl7_too_long(port: int) -> bytes:
    """A frame past ``max_message_bytes`` that never ends: the connection is closed."""
    with socket.create_connection((LOOPBACK, port), timeout=20) as sock:
        try:
            sock.sendall(START + b"MSH|^~\\&|" + b"x" * (2 * MAX_HL7_BYTES))
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        try:
            return sock.recv(65536)
        except ConnectionResetError:
            return b""


# ------------------------------------------------------------------------- HTTP


def soap_refused(content_type: str, body: bytes) -> bool:
    """Whether kuva's SOAP reading refuses the request (a fault), as the endpoint reads it."""
    try:
        if content_type.startswith("multipart/"):
            reader = MtomReader(content_type)
            reader.feed(body)
            message = reader.finish()
            parse_envelope(message.root, attachments=message.parts, mtom=True)
        else:
            parse_envelope(body)
    except (SoapFault, MtomError, ValueError):
        return True
    return False


def soap_inputs(rng: random.Random, count: int) -> list[tuple[str, bytes]]:
    mtom = f.mtom_seeds()
    odd = [  # what the parsers got wrong once: control characters in a Content-ID, a
        # namespace name lxml will not write again
        (
            'multipart/related; type="application/xop+xml"; boundary=b',
            b"--b\r\nContent-Type: application/xop+xml\r\n\r\n<a/>\r\n--b\r\nContent-ID: <\x01>"
            b"\r\n\r\nx\r\n--b\r\nContent-ID: <\x01>\r\n\r\ny\r\n--b--",
        ),
        (
            SOAP_PLAIN,
            b'<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Header>'
            b'<h xmlns="http://example.fi/\xc3\xa4" s:mustUnderstand="true"/></s:Header>'
            b"<s:Body/></s:Envelope>",
        ),
    ]
    inputs: list[tuple[str, bytes]] = []
    while len(inputs) < count:
        kind = len(inputs) % 6
        if kind in (0, 1, 2):
            candidate = (SOAP_PLAIN, f.mutate(rng, rng.choice(f.soap_seeds()), f.XML_TOKENS))
        elif kind == 3:
            content_type, body = rng.choice(mtom)
            candidate = (content_type, f.mutate(rng, body, f.MIME_TOKENS + f.XML_TOKENS))
        elif kind == 4:
            content_type, body = rng.choice(mtom)
            content_type = f.mutate(rng, content_type.encode(), [b";", b'"', b"="]).decode(
                "latin-1"
            )
            # What HTTP lets through: no control characters (h11 refuses them).
            candidate = ("".join(c for c in content_type if " " <= c != "\x7f").strip(), body)
        else:
            candidate = rng.choice([(SOAP_PLAIN, rng.randbytes(rng.randint(0, 300))),
                                    ("text/plain", b"<x/>"), ("application/soap+xml; x", b""),
                                    *odd])  # fmt: skip
        if soap_refused(*candidate):
            inputs.append(candidate)
    return inputs


def stow_stores_nothing(body: bytes, blobs: FileBlobStore) -> bool:
    """Whether kuva's STOW-RS receiver would store no part of ``body``."""
    receiver = StowReceiver(f.BOUNDARY, f.DiscardingIngest(), blobs, f.ORGANIZATION, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's, on every odd value
        receiver.finish(body)
    return not any(result.stored for result in receiver.results)


def stow_inputs(rng: random.Random, count: int, blobs: FileBlobStore) -> list[bytes]:
    files = f.part10_seeds()
    inputs: list[bytes] = []
    while len(inputs) < count:
        kind = len(inputs) % 4
        if kind == 0:  # cut inside the first part
            body = f.stow_body(files[:2])
            candidate = body[: rng.randint(0, body.index(files[0]) + len(files[0]) - 1)]
        elif kind == 1:  # no part is a Part 10 file
            data = bytearray(rng.choice(files))
            data[128:132] = rng.randbytes(4)
            candidate = f.stow_body([bytes(data), rng.randbytes(200)])
        elif kind == 2:
            candidate = f.mutate(rng, rng.choice(f.stow_seeds()), f.MIME_TOKENS + f.DICOM_TOKENS, 4)
        else:
            candidate = rng.randbytes(rng.randint(0, 2000))
        if stow_stores_nothing(candidate, blobs):
            inputs.append(candidate)
    return inputs


def post(client: httpx.Client, path: str, content_type: str, body: bytes) -> httpx.Response:
    headers = [(b"Content-Type", content_type.encode("latin-1"))]
    return client.post(path, content=body, headers=headers)


def check_soap_answer(response: httpx.Response) -> str:
    """A 4xx, or a 500 that is a VersionMismatch or MustUnderstand SOAP fault."""
    if response.status_code == 500:
        root = etree.fromstring(response.content)
        values = root.xpath(
            "//s:Fault/s:Code/s:Value/text()",
            namespaces={"s": "http://www.w3.org/2003/05/soap-envelope"},
        )
        assert isinstance(values, list) and len(values) == 1, response.text[:500]
        value = str(values[0])
        assert value.split(":")[-1] in FAULTS_OF_500, response.text[:500]
        return value
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:500])
    return str(response.status_code)


# ------------------------------------------------------------------------- the burst


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_burst_of_malformed_input_leaves_kuva_serving(
    kuva_server: Callable[..., KuvaServer], tmp_path: Path
) -> None:
    server = kuva_server(extra={"hl7": {"max_message_bytes": MAX_HL7_BYTES}})
    rng = random.Random(19)
    dicom = dicom_inputs(rng, 400)
    frames = hl7_frames(rng, 300)
    soap = soap_inputs(rng, 300)
    stow = stow_inputs(rng, 100, FileBlobStore(tmp_path / "scratch"))
    assert server.process is not None

    with PeakRss(server.process.pid) as rss, ThreadPoolExecutor(PARALLEL) as pool:
        # DICOM: each broken PDU on a connection of its own.
        answers = list(pool.map(lambda data: send_dicom(server.dicom_port, data), dicom))
        dicom_types = Counter(first_pdu_type(answer) for answer in answers)
        # HL7: 10 frames a connection, garbage between frames on some.
        batches = [frames[n : n + 10] for n in range(0, len(frames), 10)]
        garbage = [
            b"" if n % 3 else rng.randbytes(5).replace(START, b"") for n in range(len(batches))
        ]
        acks = list(pool.map(lambda b, g: send_hl7(server.hl7_port, b, g), batches, garbage))
        closed = send_hl7_too_long(server.hl7_port)
        # HTTP: SOAP at the registry and the repository, STOW-RS at the studies.
        with httpx.Client(base_url=server.http, timeout=30) as client:
            paths = ["/xds/registry", "/xds/repository"]
            soap_answers = list(
                pool.map(lambda n, item: post(client, paths[n % 2], *item), range(len(soap)), soap)
            )
            stow_answers = list(
                pool.map(lambda body: post(client, "/dicom-web/studies", STOW_TYPE, body), stow)
            )

    assert set(dicom_types) <= {None, 2, 3, 4, 6, 7}, dicom_types  # answered with PDUs, or closed
    for batch, answered in zip(batches, acks, strict=True):
        assert len(answered) == len(batch)
        assert {f.ack_code(ack) for ack in answered} <= {"AE", "AR"}
    assert closed == b""
    soap_codes = Counter(check_soap_answer(response) for response in soap_answers)
    stow_codes = Counter(response.status_code for response in stow_answers)
    assert all(400 <= code < 500 for code in stow_codes), stow_codes

    # Still serving, nothing broke inside, little memory kept.
    ae = AE(ae_title="ECHOSCU")
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate(LOOPBACK, server.dicom_port, ae_title=server.ae_title)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    assoc.release()
    assert httpx.get(f"{server.http}/healthz", timeout=10).status_code == 200
    log = server.log()
    assert "Traceback" not in log, log[log.find("Traceback") - 2000 :][:6000]
    assert rss.growth_mib < 200, rss.growth_mib
    print(f"DICOM answers {dict(dicom_types)}; SOAP {dict(soap_codes)}; STOW-RS {dict(stow_codes)}")
