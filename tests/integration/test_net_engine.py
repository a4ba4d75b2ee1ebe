"""kuva's DICOM engine (kuva.dicom.net) on real sockets against independent peers.

Peers: pynetdicom as SCU and as SCP (in this process, or in a subprocess where this
process's memory is measured), dcmtk's echoscu/storescu/findscu where installed, raw
socket scripts for the corners of the PS3.8 state machine (release collision, A-ABORT,
malformed PDUs, ARTIM), and kuva's own requestor against kuva's own acceptor.

The acceptor here serves a tiny test application: C-ECHO, C-STORE into a BytesIO sink,
C-FIND answering three pending responses and honouring C-CANCEL, and C-GET sending its
C-STORE sub-operations back on the same association through ``assoc.c_store``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.dsutils import encode as encode_dataset

from kuva.dicom.net import (
    Abort,
    Acceptor,
    AcceptorConfig,
    AssociateAccept,
    AssociateRequest,
    Association,
    AssociationFailed,
    AssociationRejected,
    CommandField,
    ContextResult,
    DataSink,
    PduType,
    ProposedContext,
    Rejection,
    ReleaseRequest,
    ReleaseResponse,
    Request,
    RoleSelection,
    SupportedContext,
    UserInformation,
    associate,
    engine_loop,
    request,
    unrecognized,
)
from kuva.dicom.net.pdu import decode, encode
from tests.support.peers import LOOPBACK, dcmtk_env, dcmtk_tool, free_port
from tests.support.pki import make_mutual_tls_pki
from tests.support.synthetic import make_ct_series, write_series

VERIFICATION = "1.2.840.10008.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
FIND = "1.2.840.10008.5.1.4.1.2.1.1"  # Patient Root Query/Retrieve - FIND
GET = "1.2.840.10008.5.1.4.1.2.1.3"  # Patient Root Query/Retrieve - GET
IAN = "1.2.840.10008.5.1.4.33"  # Instance Availability Notification (N-CREATE)
COMMITMENT = "1.2.840.10008.1.20.1"  # Storage Commitment Push Model (N-EVENT-REPORT)
IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"

SUPPORTED = {
    VERIFICATION: SupportedContext((EXPLICIT, IMPLICIT)),
    CT: SupportedContext((EXPLICIT, IMPLICIT), requestor_may_be_scp=True),
    FIND: SupportedContext((IMPLICIT, EXPLICIT)),
    GET: SupportedContext((IMPLICIT, EXPLICIT)),
    COMMITMENT: SupportedContext((IMPLICIT,)),
}

FAILING_SINK_UID = "1.2.3.4.5.6.7.1"
RAISING_HANDLER_UID = "1.2.3.4.5.6.7.2"
SLOW_ECHO = "slow-echo"


# --------------------------------------------------------------------------- the test app


class BytesSink:
    """A C-STORE data set kept in a BytesIO (copied: the engine's memoryview is reused)."""

    def __init__(self) -> None:
        self.buffer = io.BytesIO()
        self.closed = False
        self.discarded = False

    def write(self, data: memoryview) -> None:
        self.buffer.write(data)

    def close(self) -> None:
        self.closed = True

    def discard(self) -> None:
        self.discarded = True


class DiscardingSink:
    """Counts the bytes and drops them (for timing the engine alone)."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: memoryview) -> None:
        self.size += len(data)

    def close(self) -> None:
        pass

    def discard(self) -> None:
        pass


class HashingSink(DiscardingSink):
    def __init__(self) -> None:
        super().__init__()
        self.sha256 = hashlib.sha256()

    def write(self, data: memoryview) -> None:
        self.size += len(data)
        self.sha256.update(data)


class FailingSink(BytesSink):
    def write(self, data: memoryview) -> None:
        raise OSError("disk full")


def identifier(**values: str) -> bytes:
    """A query identifier / attribute list in implicit VR little endian."""
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    encoded = encode_dataset(ds, True, True)
    assert encoded is not None
    return encoded


@dataclass
class EngineApp:
    """The acceptor's (or requestor's) application: records what happened."""

    sink_kind: type[DataSink] = BytesSink
    reject: Callable[[Association], Rejection | None] | None = None
    find_pause: float = 0.05
    get_objects: list[tuple[str, bytes]] = field(default_factory=list)
    slow_echo: float = 0.0
    accepted: list[Association] = field(default_factory=list)
    rejected: list[tuple[Association, Rejection]] = field(default_factory=list)
    closed: list[tuple[Association, bool]] = field(default_factory=list)
    sinks: dict[str, DataSink] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    sub_operation_statuses: list[int | None] = field(default_factory=list)
    peer_certificates: list[dict[str, object] | None] = field(default_factory=list)
    closed_event: threading.Event = field(default_factory=threading.Event)

    def on_request(self, assoc: Association) -> Rejection | None:
        return self.reject(assoc) if self.reject is not None else None

    def on_accepted(self, assoc: Association) -> None:
        self.accepted.append(assoc)
        self.peer_certificates.append(assoc.peer_certificate)

    def on_rejected(self, assoc: Association, rejection: Rejection) -> None:
        self.rejected.append((assoc, rejection))

    def on_closed(self, assoc: Association, *, aborted: bool) -> None:
        self.closed.append((assoc, aborted))
        self.closed_event.set()

    def store_sink(self, assoc: Association, req: Request) -> DataSink:
        uid = req.command.affected_sop_instance_uid
        sink: DataSink = FailingSink() if uid == FAILING_SINK_UID else self.sink_kind()
        self.sinks[uid] = sink
        return sink

    def handle(self, assoc: Association, req: Request) -> None:
        self.requests.append(req)
        command = req.command
        field_ = command.command_field
        if field_ == CommandField.C_ECHO_RQ:
            time.sleep(self.slow_echo)
            assoc.respond(req, 0x0000)
        elif field_ == CommandField.C_STORE_RQ:
            if command.affected_sop_instance_uid == RAISING_HANDLER_UID:
                raise RuntimeError("the handler failed")
            assoc.respond(req, 0xA700 if req.sink_error is not None else 0x0000)
        elif field_ == CommandField.C_FIND_RQ:
            for number in range(3):
                assoc.respond(
                    req,
                    0xFF00,
                    data_set=identifier(PatientID=f"P{number}", QueryRetrieveLevel="PATIENT"),
                )
                if req.cancelled.wait(self.find_pause):
                    assoc.respond(req, 0xFE00)
                    return
            assoc.respond(req, 0x0000)
        elif field_ == CommandField.C_GET_RQ:
            self.serve_get(assoc, req)
        else:
            unrecognized(assoc, req)

    def serve_get(self, assoc: Association, req: Request) -> None:
        """C-GET (PS3.4 C.4.3): C-STORE sub-operations on this association, to the
        requestor in its SCP role."""
        context = assoc.context_for(CT, as_scu=True)
        if context is None:
            assoc.respond(req, 0xA702, number_of_failed_suboperations=len(self.get_objects))
            return
        remaining = len(self.get_objects)
        completed = 0
        for uid, data in self.get_objects:
            result = assoc.c_store(context, uid, data)
            self.sub_operation_statuses.append(result.status)
            remaining -= 1
            completed += result.status == 0
            if remaining:
                assoc.respond(
                    req,
                    0xFF00,
                    number_of_remaining_suboperations=remaining,
                    number_of_completed_suboperations=completed,
                    number_of_failed_suboperations=0,
                    number_of_warning_suboperations=0,
                )
        assoc.respond(
            req,
            0x0000,
            number_of_completed_suboperations=completed,
            number_of_failed_suboperations=len(self.get_objects) - completed,
            number_of_warning_suboperations=0,
        )


@dataclass
class Served:
    acceptor: Acceptor
    port: int
    app: EngineApp

    def associate(self, **kwargs: Any) -> Association:
        options: dict[str, Any] = {
            "calling_ae": "KUVA-SCU",
            "called_ae": "KUVA",
            "contexts": [(VERIFICATION, [IMPLICIT]), (CT, [EXPLICIT]), (FIND, [IMPLICIT])],
        }
        options.update(kwargs)
        return associate(LOOPBACK, self.port, **options)

    def wait_connections(self, count: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acceptor.associations) != count:
            assert time.monotonic() < deadline, self.acceptor.associations
            time.sleep(0.01)


@pytest.fixture
def serve() -> Iterator[Callable[..., Served]]:
    """Start kuva acceptors on loopback (stopped at the end)."""
    started: list[Acceptor] = []

    def start(app: EngineApp | None = None, **config: Any) -> Served:
        app = app if app is not None else EngineApp()
        acceptor = Acceptor(AcceptorConfig(ae_title="KUVA", supported=SUPPORTED, **config), app)
        _, port = acceptor.start(LOOPBACK, free_port())
        started.append(acceptor)
        return Served(acceptor, port, app)

    yield start
    for acceptor in started:
        acceptor.stop(timeout=2.0)


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


# --------------------------------------------------------------------------- raw sockets


def read_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {size} bytes")
        data += chunk
    return data


def read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    """One PDU: (type, variable part)."""
    header = read_exact(sock, 6)
    length = int.from_bytes(header[2:6], "big")
    return header[0], read_exact(sock, length)


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


def raw_request(called_ae: str = "KUVA") -> bytes:
    return encode(
        AssociateRequest(
            called_ae=called_ae,
            calling_ae="RAW",
            contexts=(ProposedContext(1, VERIFICATION, (IMPLICIT,)),),
            user=UserInformation(max_pdu_length=16384, implementation_class_uid="1.2.3.4"),
        )
    )


@contextlib.contextmanager
def raw_association(port: int) -> Iterator[socket.socket]:
    """A raw socket peer with an association established (Verification, context 1)."""
    with socket.create_connection((LOOPBACK, port), timeout=5) as sock:
        sock.sendall(raw_request())
        pdu_type, _ = read_pdu(sock)
        assert pdu_type == PduType.ASSOCIATE_AC
        yield sock


def pdata(context_id: int, control: int, data: bytes) -> bytes:
    return (
        bytes([4, 0])
        + (len(data) + 6).to_bytes(4, "big")
        + (len(data) + 2).to_bytes(4, "big")
        + bytes([context_id, control])
        + data
    )


# --------------------------------------------------------------------------- pynetdicom


def pynetdicom_scu(port: int, *contexts: str, **kwargs: Any) -> Any:
    ae = AE(ae_title="PYSCU")
    for context in contexts:
        ae.add_requested_context(context, [EXPLICIT, IMPLICIT])
    return ae.associate(LOOPBACK, port, ae_title="KUVA", **kwargs)


@pytest.fixture
def pynetdicom_scp() -> Iterator[tuple[int, list[Any]]]:
    """A pynetdicom SCP on loopback: echo, storage (with role selection), N-CREATE,
    N-EVENT-REPORT and C-GET of one CT object; events are recorded."""
    events: list[Any] = []
    ae = AE(ae_title="PYSCP")
    ae.add_supported_context(VERIFICATION)
    ae.add_supported_context(CT, [EXPLICIT, IMPLICIT], scu_role=True, scp_role=True)
    ae.add_supported_context(IAN)
    ae.add_supported_context(COMMITMENT)
    ae.add_supported_context(GET)

    def on_store(event: Any) -> int:
        events.append(("C-STORE", event.request.DataSet.getvalue()))
        return 0x0000

    def on_create(event: Any) -> tuple[int, Dataset]:
        events.append(("N-CREATE", event.attribute_list))
        return 0x0000, event.attribute_list

    def on_report(event: Any) -> tuple[int, None]:
        events.append(("N-EVENT-REPORT", event.request.EventTypeID, event.event_information))
        return 0x0000, None

    def on_get(event: Any) -> Iterator[Any]:
        events.append(("C-GET", event.identifier))
        yield 1
        yield 0xFF00, get_object()

    port = free_port()
    server = ae.start_server(
        (LOOPBACK, port),
        block=False,
        evt_handlers=[
            (evt.EVT_C_STORE, on_store),
            (evt.EVT_N_CREATE, on_create),
            (evt.EVT_N_EVENT_REPORT, on_report),
            (evt.EVT_C_GET, on_get),
        ],
    )
    assert server is not None
    try:
        yield port, events
    finally:
        server.shutdown()


def get_object() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = "1.2.3.4.5.6.7.99"
    ds.PatientID = "P1"
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.UID(EXPLICIT)
    return ds


def data_set_bytes(path: Path) -> bytes:
    """The data set of a Part 10 file: what follows the file meta group (PS3.10 7.1)."""
    data = path.read_bytes()
    assert data[128:132] == b"DICM"
    group_length = int.from_bytes(data[140:144], "little")  # (0002,0000) UL, explicit VR
    return data[144 + group_length :]


# --------------------------------------------------------------------------- echo, store


def test_echo_from_pynetdicom(serve: Callable[..., Served]) -> None:
    served = serve()
    assoc = pynetdicom_scu(served.port, VERIFICATION)
    assert assoc.is_established
    status = assoc.send_c_echo()
    assoc.release()
    assert status.Status == 0x0000
    wait_for(lambda: len(served.app.closed) == 1)
    assert served.app.closed[0][1] is False  # released, not aborted
    assert served.app.accepted[0].calling_ae == "PYSCU"


@pytest.mark.dcmtk
def test_echo_from_echoscu(serve: Callable[..., Served]) -> None:
    echoscu = dcmtk_tool("echoscu")
    if echoscu is None:
        pytest.skip("dcmtk echoscu not installed")
    served = serve()
    result = subprocess.run(
        [echoscu, "-aet", "ECHOSCU", "-aec", "KUVA", LOOPBACK, str(served.port)],
        capture_output=True,
        text=True,
        env=dcmtk_env(),
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    wait_for(lambda: len(served.app.closed) == 1)
    assert served.app.closed[0][1] is False


@pytest.mark.dcmtk
def test_storescu_real_file_bytes_equal(serve: Callable[..., Served], tmp_path: Path) -> None:
    storescu = dcmtk_tool("storescu")
    if storescu is None:
        pytest.skip("dcmtk storescu not installed")
    served = serve()
    [path] = write_series(make_ct_series(1), tmp_path / "in")
    result = subprocess.run(
        [storescu, "-aet", "STORESCU", "-aec", "KUVA", LOOPBACK, str(served.port), str(path)],
        capture_output=True,
        text=True,
        env=dcmtk_env(),
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    uid = pydicom.dcmread(path).SOPInstanceUID
    sink = served.app.sinks[uid]
    assert isinstance(sink, BytesSink) and sink.closed and not sink.discarded
    assert sink.buffer.getvalue() == data_set_bytes(path)


@pytest.mark.dcmtk
def test_findscu_gets_three_pending_responses(serve: Callable[..., Served]) -> None:
    findscu = dcmtk_tool("findscu")
    if findscu is None:
        pytest.skip("dcmtk findscu not installed")
    served = serve()
    result = subprocess.run(
        [
            findscu,
            "-v",
            "-P",
            "-aet",
            "FINDSCU",
            "-aec",
            "KUVA",
            "-k",
            "QueryRetrieveLevel=PATIENT",
            "-k",
            "PatientID",
            LOOPBACK,
            str(served.port),
        ],
        capture_output=True,
        text=True,
        env=dcmtk_env(),
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert output.count("(Pending)") == 3, output
    assert "Final Find Response (Success)" in output
    for number in range(3):
        assert f"P{number}" in output


def test_store_and_find_from_pynetdicom(serve: Callable[..., Served], tmp_path: Path) -> None:
    served = serve()
    [path] = write_series(make_ct_series(1), tmp_path / "in")
    ds = pydicom.dcmread(path)
    assoc = pynetdicom_scu(served.port, CT, FIND)
    status = assoc.send_c_store(ds)
    assert status.Status == 0x0000
    query = Dataset()
    query.QueryRetrieveLevel = "PATIENT"
    query.PatientID = ""
    answers = list(assoc.send_c_find(query, FIND))
    assoc.release()
    assert [s.Status for s, _ in answers] == [0xFF00, 0xFF00, 0xFF00, 0x0000]
    assert [i.PatientID for _, i in answers[:3]] == ["P0", "P1", "P2"]
    sink = served.app.sinks[ds.SOPInstanceUID]
    assert isinstance(sink, BytesSink)
    received = pydicom.dcmread(
        io.BytesIO(sink.buffer.getvalue()), force=True, specific_tags=["SOPInstanceUID"]
    )
    assert received.SOPInstanceUID == ds.SOPInstanceUID


def test_find_honours_c_cancel(serve: Callable[..., Served]) -> None:
    served = serve(EngineApp(find_pause=5.0))
    assoc = pynetdicom_scu(served.port, FIND)
    query = Dataset()
    query.QueryRetrieveLevel = "PATIENT"
    query.PatientID = ""
    statuses = []
    started = time.monotonic()
    for status, _ in assoc.send_c_find(query, FIND, msg_id=7):
        statuses.append(status.Status)
        if len(statuses) == 1:
            assoc.send_c_cancel(7, query_model=FIND)
    assoc.release()
    assert statuses == [0xFF00, 0xFE00]
    assert time.monotonic() - started < 4.0  # not the 5 s pause: the cancel arrived
    assert served.app.requests[0].cancelled.is_set()


def test_get_sends_sub_operations_on_the_same_association(serve: Callable[..., Served]) -> None:
    objects = [
        (f"1.2.3.4.5.{n}", encode_dataset(get_object(), False, True) or b"") for n in range(3)
    ]
    served = serve(EngineApp(get_objects=objects))
    received: list[bytes] = []

    def on_store(event: Any) -> int:
        received.append(event.request.DataSet.getvalue())
        return 0x0000

    assoc = pynetdicom_scu(
        served.port,
        GET,
        CT,
        ext_neg=[build_role(CT, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    query = Dataset()
    query.QueryRetrieveLevel = "PATIENT"
    query.PatientID = "P1"
    answers = [status for status, _ in assoc.send_c_get(query, GET)]
    assoc.release()
    assert [a.Status for a in answers] == [0xFF00, 0xFF00, 0x0000]
    assert answers[-1].NumberOfCompletedSuboperations == 3
    assert served.app.sub_operation_statuses == [0, 0, 0]
    assert received == [data for _, data in objects]


# --------------------------------------------------------------------------- requestor


def test_requestor_to_pynetdicom_scp(pynetdicom_scp: tuple[int, list[Any]]) -> None:
    port, events = pynetdicom_scp
    assoc = associate(
        LOOPBACK,
        port,
        calling_ae="KUVA",
        called_ae="PYSCP",
        contexts=[
            (VERIFICATION, [IMPLICIT]),
            (CT, [EXPLICIT]),
            (IAN, [IMPLICIT]),
            (COMMITMENT, [IMPLICIT]),
        ],
    )
    try:
        assert assoc.is_established and assoc.peer_max_pdu > 0
        assert assoc.c_echo().status == 0x0000
        ct = assoc.context_for(CT)
        assert ct is not None and ct.transfer_syntax == EXPLICIT and ct.local_scu
        data = encode_dataset(get_object(), False, True) or b""
        chunks = [data[i : i + 7] for i in range(0, len(data), 7)]
        assert assoc.c_store(ct, "1.2.3.4.5.6.7.99", iter(chunks)).status == 0x0000
        ian = assoc.context_for(IAN)
        assert ian is not None
        created = assoc.n_create(
            ian, IAN, "1.2.3.4.5.6.7.100", identifier(StudyInstanceUID="1.2.3")
        )
        assert created.status == 0x0000
        commitment = assoc.context_for(COMMITMENT)
        assert commitment is not None
        report = assoc.n_event_report(
            commitment,
            COMMITMENT,
            "1.2.840.10008.1.20.1.1",
            1,
            identifier(TransactionUID="1.2.3.4"),
        )
        assert report.status == 0x0000
    finally:
        assoc.release()
    assert assoc.released and assoc.wait_closed(5)
    kinds = [e[0] for e in events]
    assert kinds == ["C-STORE", "N-CREATE", "N-EVENT-REPORT"]
    assert events[0][1] == data
    assert events[1][1].StudyInstanceUID == "1.2.3"
    assert events[2][1] == 1 and events[2][2].TransactionUID == "1.2.3.4"


def test_requestor_with_scp_role_serves_get_sub_operations(
    pynetdicom_scp: tuple[int, list[Any]],
) -> None:
    port, events = pynetdicom_scp
    app = EngineApp()
    assoc = associate(
        LOOPBACK,
        port,
        calling_ae="KUVA",
        called_ae="PYSCP",
        contexts=[(GET, [IMPLICIT]), (CT, [EXPLICIT, IMPLICIT])],
        roles=[RoleSelection(CT, scu_role=False, scp_role=True)],
        handler=app,
    )
    try:
        ct = assoc.contexts[3]
        assert (ct.local_scu, ct.local_scp) == (False, True)
        get = assoc.context_for(GET)
        assert get is not None
        fields = request(CommandField.C_GET_RQ, assoc.next_message_id(), affected_sop_class_uid=GET)
        answer = assoc.send_request(
            get, fields, identifier(QueryRetrieveLevel="PATIENT", PatientID="P1")
        )
    finally:
        assoc.release()
    assert answer.status == 0x0000
    assert events[0][0] == "C-GET" and events[0][1].PatientID == "P1"
    sink = app.sinks["1.2.3.4.5.6.7.99"]
    assert isinstance(sink, BytesSink) and sink.closed
    assert b"1.2.3.4.5.6.7.99" in sink.buffer.getvalue()


_STORE_SCP = r"""
import hashlib, sys
from pynetdicom import AE, evt

def on_store(event):
    raw = event.request.DataSet.getvalue()
    print(len(raw), hashlib.sha256(raw).hexdigest(), flush=True)
    return 0

ae = AE(ae_title="PYSCP")
ae.maximum_pdu_size = 0
ae.add_supported_context("1.2.840.10008.5.1.4.1.1.2", ["1.2.840.10008.1.2.1"])
ae.start_server(("127.0.0.1", int(sys.argv[1])), evt_handlers=[(evt.EVT_C_STORE, on_store)])
"""


def big_object(size: int, chunk: int = 64 << 10) -> Iterator[bytes]:
    """A CT data set of `size` pixel bytes, produced in chunks (explicit VR LE)."""
    ds = Dataset()
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = "1.2.3.4.5.6.7.200"
    head = encode_dataset(ds, False, True) or b""
    yield head + b"\xe0\x7f\x10\x00OW\x00\x00" + size.to_bytes(4, "little")
    block = bytes(range(256)) * (chunk // 256)
    for _ in range(size // chunk):
        yield block


def test_requestor_streams_20_mb_in_bounded_memory(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", _STORE_SCP, str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 0.2):
                break
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.1)
        size = 20 << 20
        expected = hashlib.sha256()
        total = 0
        for piece in big_object(size):
            expected.update(piece)
            total += len(piece)
        assoc = associate(
            LOOPBACK, port, calling_ae="KUVA", called_ae="PYSCP", contexts=[(CT, [EXPLICIT])]
        )
        ct = assoc.context_for(CT)
        assert ct is not None
        tracemalloc.start()
        try:
            base, _ = tracemalloc.get_traced_memory()
            result = assoc.c_store(ct, "1.2.3.4.5.6.7.200", big_object(size))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assoc.release()
        assert result.status == 0x0000
        assert process.stdout is not None
        line = process.stdout.readline().split()
        assert line == [str(total), expected.hexdigest()]
        print(f"\n20 MB C-STORE to pynetdicom: peak traced memory {(peak - base) / 2**20:.1f} MiB")
        assert peak - base < 8 << 20
    finally:
        process.kill()
        process.wait()


def test_acceptor_streams_20_mb_to_the_sink_in_bounded_memory(
    serve: Callable[..., Served],
) -> None:
    served = serve(EngineApp(sink_kind=HashingSink))
    size = 20 << 20
    expected = hashlib.sha256()
    for piece in big_object(size):
        expected.update(piece)
    assoc = served.associate()
    ct = assoc.context_for(CT)
    assert ct is not None
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        result = assoc.c_store(ct, "1.2.3.4.5.6.7.200", big_object(size))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assoc.release()
    assert result.status == 0x0000
    sink = served.app.sinks["1.2.3.4.5.6.7.200"]
    assert isinstance(sink, HashingSink)
    assert sink.sha256.hexdigest() == expected.hexdigest()
    print(f"\n20 MB C-STORE kuva->kuva: peak traced memory {(peak - base) / 2**20:.1f} MiB")
    assert peak - base < 8 << 20


# --------------------------------------------------------------------------- failures


def test_sink_failure_and_handler_failure_answer_failure_statuses(
    serve: Callable[..., Served],
) -> None:
    served = serve()
    assoc = served.associate()
    ct = assoc.context_for(CT)
    assert ct is not None
    try:
        assert assoc.c_store(ct, FAILING_SINK_UID, b"\x00" * 100_000).status == 0xA700
        assert assoc.c_store(ct, RAISING_HANDLER_UID, b"\x00" * 100).status == 0x0110
        assert assoc.c_store(ct, "1.2.3.4.5.6.7.3", b"\x00" * 100).status == 0x0000
    finally:
        assoc.release()
    failing = served.app.sinks[FAILING_SINK_UID]
    assert isinstance(failing, FailingSink) and failing.discarded
    assert isinstance(served.app.requests[0].sink_error, OSError)


def test_dimse_timeout_aborts(serve: Callable[..., Served]) -> None:
    served = serve(EngineApp(slow_echo=2.0))
    assoc = served.associate(dimse_timeout=0.3)
    started = time.monotonic()
    answer = assoc.c_echo()
    assert answer.status is None
    assert time.monotonic() - started < 1.5
    assert assoc.wait_closed(5) and not assoc.released
    wait_for(lambda: len(served.app.closed) == 1)
    assert served.app.closed[0][1] is True  # aborted


def test_idle_association_is_aborted_after_network_timeout(serve: Callable[..., Served]) -> None:
    served = serve(network_timeout=0.5)
    assoc = served.associate()
    assert assoc.c_echo().status == 0x0000
    assert assoc.wait_closed(5)
    assert assoc.abort_received == Abort(2, 0)


def test_data_set_over_max_dataset_bytes_aborts(serve: Callable[..., Served]) -> None:
    served = serve(max_dataset_bytes=1000)
    assoc = served.associate()
    find = assoc.context_for(FIND)
    assert find is not None
    fields = request(CommandField.C_FIND_RQ, assoc.next_message_id(), affected_sop_class_uid=FIND)
    answer = assoc.send_request(find, fields, identifier(PatientComments="x" * 2000))
    assert answer.status is None
    assert assoc.abort_received == Abort(2, 0)


def test_peer_abort(serve: Callable[..., Served]) -> None:
    served = serve()
    assoc = pynetdicom_scu(served.port, VERIFICATION)
    assoc.abort()
    wait_for(lambda: len(served.app.closed) == 1)
    closed, aborted = served.app.closed[0]
    assert aborted and closed.abort_received is not None


def test_requestor_sees_peer_abort(serve: Callable[..., Served]) -> None:
    served = serve()
    assoc = served.associate()
    served.wait_connections(1)
    served.acceptor.associations[0].abort(reason=0)
    assert assoc.wait_closed(5)
    assert assoc.abort_received == Abort(0, 0) and not assoc.released
    assert assoc.c_echo().status is None


@pytest.mark.parametrize(
    ("garbage", "reason"),
    [
        pytest.param(b"\x09\x00\x00\x00\x00\x04\x00\x00\x00\x00", 1, id="unrecognized-pdu"),
        pytest.param(raw_request(), 2, id="unexpected-pdu"),
        pytest.param(
            pdata(1, 3, b"\x00" * 8)[:6] + b"\x00\x00\x00\x63\x01\x03" + b"\x00" * 8,
            6,
            id="pdv-overruns-pdu",
        ),
        pytest.param(pdata(3, 3, b"\x00" * 8), 6, id="context-not-accepted"),
        pytest.param(pdata(1, 3, b"\x01\x02\x03"), 6, id="malformed-command-set"),
        pytest.param(pdata(1, 0, b"\x00" * 8), 5, id="data-before-command"),
    ],
)
def test_malformed_pdu_aborts_that_association_only(
    serve: Callable[..., Served], garbage: bytes, reason: int
) -> None:
    served = serve()
    other = served.associate()
    assert other.c_echo().status == 0x0000
    with raw_association(served.port) as sock:
        sock.sendall(garbage)
        pdu_type, body = read_pdu(sock)
        assert pdu_type == PduType.ABORT
        assert decode(pdu_type, body) == Abort(2, reason)
    assert other.c_echo().status == 0x0000
    other.release()


def test_artim_closes_a_silent_connection(serve: Callable[..., Served]) -> None:
    served = serve(acse_timeout=0.5)
    with socket.create_connection((LOOPBACK, served.port)) as sock:
        started = time.monotonic()
        assert closed_by_peer(sock, 5.0)
        assert 0.4 < time.monotonic() - started < 3.0


def test_rejections(serve: Callable[..., Served]) -> None:
    def reject(assoc: Association) -> Rejection | None:
        return Rejection(1, 1, 3) if assoc.calling_ae == "STRANGER" else None

    served = serve(EngineApp(reject=reject), max_associations=1)
    with pytest.raises(AssociationRejected) as wrong_ae:
        served.associate(called_ae="NOT-KUVA")
    assert wrong_ae.value.rejection == Rejection(1, 1, 7)
    with pytest.raises(AssociationRejected) as stranger:
        served.associate(calling_ae="STRANGER")
    assert stranger.value.rejection == Rejection(1, 1, 3)
    first = served.associate()
    with pytest.raises(AssociationRejected) as busy:
        served.associate()
    assert busy.value.rejection == Rejection(2, 3, 2)
    first.release()
    served.wait_connections(0)
    served.associate().release()
    wait_for(lambda: len(served.app.rejected) == 3)
    assert {r for _, r in served.app.rejected} == {
        Rejection(1, 1, 7),
        Rejection(1, 1, 3),
        Rejection(2, 3, 2),
    }


@pytest.mark.parametrize(
    ("changes", "rejection"),
    [
        pytest.param({"application_context": "1.2.3.4"}, Rejection(1, 1, 2), id="app-context"),
        pytest.param({"protocol_version": 2}, Rejection(1, 2, 2), id="protocol-version"),
    ],
)
def test_engine_rejects_what_it_cannot_speak(
    serve: Callable[..., Served], changes: dict[str, Any], rejection: Rejection
) -> None:
    served = serve(acse_timeout=0.5)
    rq = AssociateRequest(
        called_ae="KUVA",
        calling_ae="RAW",
        contexts=(ProposedContext(1, VERIFICATION, (IMPLICIT,)),),
        user=UserInformation(max_pdu_length=16384, implementation_class_uid="1.2.3.4"),
        **changes,
    )
    with socket.create_connection((LOOPBACK, served.port), timeout=5) as sock:
        sock.sendall(encode(rq))
        pdu_type, body = read_pdu(sock)
        rj = decode(pdu_type, body)
        assert (rj.result, rj.source, rj.reason) == (  # type: ignore[union-attr]
            rejection.result,
            rejection.source,
            rejection.reason,
        )
        assert closed_by_peer(sock, 5)  # ARTIM after the A-ASSOCIATE-RJ (PS3.8 9.1.5)


def test_negotiation_results_and_unserved_operations(serve: Callable[..., Served]) -> None:
    served = serve()
    assoc = served.associate(
        contexts=[
            (VERIFICATION, [EXPLICIT, IMPLICIT]),
            ("1.2.3.4.5.6", [IMPLICIT]),  # abstract syntax not supported
            (CT, ["1.2.840.10008.1.2.4.50"]),  # no transfer syntax in common
            (COMMITMENT, [IMPLICIT]),
        ],
        roles=[RoleSelection(COMMITMENT, scu_role=True, scp_role=True)],
    )
    try:
        assert assoc.accept is not None
        results = {r.id: (r.result, r.transfer_syntax) for r in assoc.accept.contexts}
        assert results[1] == (0, EXPLICIT)  # the acceptor's preference among those proposed
        assert results[3][0] == 3 and results[5][0] == 4 and results[7] == (0, IMPLICIT)
        assert sorted(assoc.contexts) == [1, 7]
        commitment = assoc.contexts[7]
        assert (commitment.local_scu, commitment.local_scp) == (True, False)  # SCP not granted
        answer = assoc.n_action(commitment, COMMITMENT, "1.2.840.10008.1.20.1.1", 1, b"")
        assert answer.status == 0x0211
        assert assoc.accept.user.implementation_class_uid
    finally:
        assoc.release()


def test_async_twins_on_the_loop(serve: Callable[..., Served]) -> None:
    served = serve()
    assoc = served.associate()
    ct = assoc.context_for(CT)
    assert ct is not None

    async def exchange() -> tuple[int | None, int | None]:
        echo = await assoc.c_echo_async()
        store = await assoc.c_store_async(ct, "1.2.3.4.5.6.7.9", [b"\x02" * 1000] * 700)
        await assoc.release_async()
        return echo.status, store.status

    assert engine_loop().run(exchange()) == (0x0000, 0x0000)
    assert assoc.wait_closed(5) and assoc.released
    sink = served.app.sinks["1.2.3.4.5.6.7.9"]
    assert isinstance(sink, BytesSink) and sink.buffer.getvalue() == b"\x02" * 700_000


def test_connection_refused() -> None:
    with pytest.raises(AssociationFailed):
        associate(
            LOOPBACK,
            free_port(),
            calling_ae="A",
            called_ae="B",
            contexts=[(VERIFICATION, [IMPLICIT])],
        )


def test_blocking_calls_refuse_the_loop_thread(serve: Callable[..., Served]) -> None:
    served = serve()
    assoc = served.associate()
    errors: list[BaseException] = []

    def on_loop() -> None:
        try:
            assoc.c_echo()
        except RuntimeError as exc:
            errors.append(exc)

    engine_loop().call(on_loop)
    wait_for(lambda: len(errors) == 1)
    assoc.release()


def test_data_set_iterable_failing_mid_message_aborts(serve: Callable[..., Served]) -> None:
    served = serve()
    assoc = served.associate()
    ct = assoc.context_for(CT)
    assert ct is not None

    def chunks() -> Iterator[bytes]:
        for _ in range(8):
            yield bytes(256 << 10)
        raise OSError("the file went away")

    with pytest.raises(OSError, match="went away"):
        assoc.c_store(ct, "1.2.3.4.5.6.7.4", chunks())
    assert assoc.wait_closed(5) and not assoc.released
    wait_for(lambda: len(served.app.closed) == 1)
    sink = served.app.sinks["1.2.3.4.5.6.7.4"]
    assert isinstance(sink, BytesSink) and sink.discarded and not sink.closed


def test_threads_sharing_an_association_do_not_interleave_messages(
    serve: Callable[..., Served],
) -> None:
    served = serve(EngineApp(sink_kind=HashingSink))
    assoc = served.associate(max_pdu=16384)
    ct = assoc.context_for(CT)
    assert ct is not None
    statuses: list[int | None] = []

    def send(thread: int) -> None:
        for n in range(5):
            data = bytes([thread * 16 + n]) * (700 << 10)
            statuses.append(assoc.c_store(ct, f"1.2.3.{thread}.{n}", data).status)

    threads = [threading.Thread(target=send, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assoc.release()
    assert statuses == [0] * 20
    for t in range(4):
        for n in range(5):
            sink = served.app.sinks[f"1.2.3.{t}.{n}"]
            assert isinstance(sink, HashingSink)
            expected = hashlib.sha256(bytes([t * 16 + n]) * (700 << 10)).hexdigest()
            assert sink.sha256.hexdigest() == expected


@dataclass
class CountingObserver:
    opened: int = 0
    closed: int = 0
    received: dict[int, int] = field(default_factory=dict)
    sent: dict[int, int] = field(default_factory=dict)

    def association_opened(self, assoc: Association) -> None:
        self.opened += 1

    def association_closed(self, assoc: Association) -> None:
        self.closed += 1

    def pdu_received(self, pdu_type: int, nbytes: int) -> None:
        self.received[pdu_type] = self.received.get(pdu_type, 0) + 1

    def pdu_sent(self, pdu_type: int, nbytes: int) -> None:
        self.sent[pdu_type] = self.sent.get(pdu_type, 0) + 1


def test_observer_counts_pdus_and_associations(serve: Callable[..., Served]) -> None:
    observer = CountingObserver()
    served = serve(observer=observer)
    assoc = served.associate()
    assert assoc.c_echo().status == 0x0000
    assoc.release()
    wait_for(lambda: observer.closed == 1)
    assert observer.opened == 1
    assert observer.received == {
        PduType.ASSOCIATE_RQ: 1,
        PduType.P_DATA_TF: 1,
        PduType.RELEASE_RQ: 1,
    }
    assert observer.sent == {PduType.ASSOCIATE_AC: 1, PduType.P_DATA_TF: 1, PduType.RELEASE_RP: 1}


def test_acceptor_on_a_shared_listening_socket(serve: Callable[..., Served]) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind((LOOPBACK, free_port()))
    listener.listen(16)
    port = listener.getsockname()[1]
    app = EngineApp()
    acceptor = Acceptor(AcceptorConfig(ae_title="KUVA", supported=SUPPORTED), app)
    assert acceptor.start("", 0, sock=listener) == (LOOPBACK, port)
    try:
        assoc = associate(
            LOOPBACK, port, calling_ae="A", called_ae="KUVA", contexts=[(VERIFICATION, [IMPLICIT])]
        )
        assert assoc.c_echo().status == 0x0000
        assoc.release()
    finally:
        acceptor.stop(timeout=2.0)


def test_sender_gives_up_on_a_peer_that_stopped_reading() -> None:
    listener = socket.create_server((LOOPBACK, 0))
    port = listener.getsockname()[1]
    done = threading.Event()

    def peer() -> None:
        conn, _ = listener.accept()
        with conn:
            pdu_type, body = read_pdu(conn)
            rq = decode(pdu_type, body)
            assert isinstance(rq, AssociateRequest)
            conn.sendall(
                encode(
                    AssociateAccept(
                        rq.called_ae,
                        rq.calling_ae,
                        (ContextResult(1, 0, EXPLICIT),),
                        UserInformation(max_pdu_length=0, implementation_class_uid="1.2.3"),
                    )
                )
            )
            done.wait(30)  # reads nothing more

    thread = threading.Thread(target=peer)
    thread.start()
    try:
        assoc = associate(
            LOOPBACK,
            port,
            calling_ae="KUVA",
            called_ae="RAW",
            contexts=[(CT, [EXPLICIT])],
            network_timeout=1.0,
        )
        ct = assoc.context_for(CT)
        assert ct is not None
        started = time.monotonic()
        result = assoc.c_store(ct, "1.2.3.4.5.6.7.5", big_object(64 << 20))
        assert result.status is None
        assert time.monotonic() - started < 10
        wait_for(lambda: assoc.state == 13)  # A-ABORT queued, awaiting the close
    finally:
        done.set()
        thread.join(10)
        listener.close()


# --------------------------------------------------------------------------- release collision


def test_release_collision_requestor_side() -> None:
    """Both send A-RELEASE-RQ: the requestor answers first (PS3.8 9.2.1.2, Sta9/Sta11)."""
    seen: list[int] = []
    listener = socket.create_server((LOOPBACK, 0))
    port = listener.getsockname()[1]

    def peer() -> None:
        conn, _ = listener.accept()
        with conn:
            pdu_type, body = read_pdu(conn)
            seen.append(pdu_type)
            rq = decode(pdu_type, body)
            assert isinstance(rq, AssociateRequest)
            conn.sendall(
                encode(
                    AssociateAccept(
                        rq.called_ae,
                        rq.calling_ae,
                        (ContextResult(1, 0, IMPLICIT),),
                        UserInformation(max_pdu_length=16384, implementation_class_uid="1.2.3"),
                    )
                )
            )
            seen.append(read_pdu(conn)[0])  # our A-RELEASE-RQ
            conn.sendall(encode(ReleaseRequest()))  # the collision
            seen.append(read_pdu(conn)[0])  # the requestor answers first
            conn.sendall(encode(ReleaseResponse()))
            seen.append(0 if closed_by_peer(conn, 5) else -1)

    thread = threading.Thread(target=peer)
    thread.start()
    try:
        assoc = associate(
            LOOPBACK,
            port,
            calling_ae="KUVA",
            called_ae="RAW",
            contexts=[(VERIFICATION, [IMPLICIT])],
        )
        assoc.release(timeout=5)
        assert assoc.wait_closed(5) and assoc.released
    finally:
        thread.join(10)
        listener.close()
    assert seen == [PduType.ASSOCIATE_RQ, PduType.RELEASE_RQ, PduType.RELEASE_RP, 0]


def test_release_collision_acceptor_side(serve: Callable[..., Served]) -> None:
    """Sta10 -> Sta12 -> Sta13: the acceptor waits for the requestor's A-RELEASE-RP."""
    served = serve()
    with raw_association(served.port) as sock:
        served.wait_connections(1)
        ours = served.acceptor.associations[0]
        releasing = threading.Thread(target=ours.release, kwargs={"timeout": 5})
        releasing.start()
        wait_for(lambda: ours.state == 7)
        sock.sendall(encode(ReleaseRequest()))  # the collision
        assert read_pdu(sock)[0] == PduType.RELEASE_RQ
        sock.sendall(encode(ReleaseResponse()))  # requestor side answers first (Sta9)
        assert read_pdu(sock)[0] == PduType.RELEASE_RP  # then the acceptor (Sta12)
        sock.close()
        releasing.join(5)
    wait_for(lambda: len(served.app.closed) == 1)
    assert served.app.closed[0][1] is False


def test_release_by_the_acceptor(serve: Callable[..., Served]) -> None:
    served = serve()
    assoc = served.associate()
    served.wait_connections(1)
    served.acceptor.associations[0].release(timeout=5)
    assert assoc.wait_closed(5) and assoc.released


# --------------------------------------------------------------------------- TLS


def tls_server_context(pki: Any) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
    context.load_cert_chain(str(pki.server.cert), str(pki.server.key))
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def test_tls_both_ways(serve: Callable[..., Served], tmp_path: Path) -> None:
    pki = make_mutual_tls_pki(tmp_path)
    failures: list[tuple[str, BaseException]] = []
    served = serve(
        ssl_context=tls_server_context(pki),
        handshake_timeout=1.0,
        on_handshake_failed=lambda host, exc: failures.append((host, exc)),
    )
    assoc = served.associate(
        ssl_context=pki.hospital_a.client_context(pki.ca), server_hostname="localhost"
    )
    try:
        assert assoc.c_echo().status == 0x0000
        assert assoc.peer_certificate is not None  # the acceptor's
        ct = assoc.context_for(CT)
        assert ct is not None
        assert assoc.c_store(ct, "1.2.3.4.5.6.7.8", b"\x01" * 300_000).status == 0x0000
    finally:
        assoc.release()
    subject = served.app.peer_certificates[0]
    assert subject is not None
    assert (("commonName", "pacs.a.example"),) in subject["subject"]  # type: ignore[operator]
    sink = served.app.sinks["1.2.3.4.5.6.7.8"]
    assert isinstance(sink, BytesSink) and sink.buffer.getvalue() == b"\x01" * 300_000

    # a certificate of an untrusted CA, then a client that never starts the handshake
    with pytest.raises(AssociationFailed):
        served.associate(
            ssl_context=pki.untrusted.client_context(pki.ca), server_hostname="localhost"
        )
    with socket.create_connection((LOOPBACK, served.port)) as silent:
        again = served.associate(
            ssl_context=pki.hospital_b.client_context(pki.ca), server_hostname="localhost"
        )
        assert again.c_echo().status == 0x0000  # not blocked by the silent handshake
        again.release()
        assert closed_by_peer(silent, 5)
    wait_for(lambda: len(failures) == 2)
    assert all(host == LOOPBACK for host, _ in failures)
    assert isinstance(failures[0][1], ssl.SSLError)


# --------------------------------------------------------------------------- timing


def test_timing_kuva_to_kuva(serve: Callable[..., Served]) -> None:
    """Printed, not asserted: association open+release and 0.5 MB C-STORE round trip."""
    served = serve(EngineApp(sink_kind=DiscardingSink))
    setups = []
    for _ in range(200):
        started = time.perf_counter()
        served.associate(contexts=[(VERIFICATION, [IMPLICIT])]).release()
        setups.append(time.perf_counter() - started)
    assoc = served.associate()
    ct = assoc.context_for(CT)
    assert ct is not None
    data = bytes(512 * 1024)
    stores = []
    for n in range(200):
        started = time.perf_counter()
        status = assoc.c_store(ct, f"1.2.3.4.{n}", data).status
        stores.append(time.perf_counter() - started)
        assert status == 0x0000
    assoc.release()
    print(
        f"\nkuva->kuva on loopback: association open+release median "
        f"{statistics.median(setups) * 1e3:.2f} ms (200 runs); C-STORE 0.5 MB round trip "
        f"median {statistics.median(stores) * 1e3:.2f} ms (200 runs, discarding sink)"
    )
