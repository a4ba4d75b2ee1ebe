"""One DICOM association on asyncio: the upper layer state machine (PS3.8 9.2), incremental
P-DATA-TF parsing (PS3.8 9.3.5), DIMSE message assembly and dispatch (PS3.7 6.3, 9.3, 10.3)
and a blocking facade for application threads.

An :class:`Association` is the `asyncio.BufferedProtocol` of one TCP connection. Bytes are
received into one preallocated buffer; P-DATA-TF PDUs are parsed PDV by PDV and the payload
of a PDV is handed on as a memoryview slice of that buffer while it arrives: command
fragments are gathered (at most 64 KiB), C-STORE data set fragments go to the application's
`DataSink`, other data sets to a bytearray of at most `max_dataset_bytes`. Requests run in
the handler pool, one at a time per association (asynchronous operations window 1/1,
PS3.7 D.3.3.3); the protocol keeps reading meanwhile, so a C-CANCEL-RQ reaches the running
request and responses to requests this side sent reach their sender.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import queue
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Protocol

from kuva.dicom.net.dimse import (
    Command,
    CommandField,
    DimseError,
    Tag,
    Value,
    decode_command,
    encode_command,
    request,
    response,
)
from kuva.dicom.net.loop import EngineLoop
from kuva.dicom.net.pdu import (
    PDU_HEADER,
    PDV_HEADER,
    Abort,
    AbortReason,
    AssociateAccept,
    AssociateReject,
    AssociateRequest,
    Pdu,
    PduError,
    PduType,
    ReleaseRequest,
    ReleaseResponse,
    UserInformation,
    decode,
    encode,
)

__all__ = [
    "Association",
    "AssociationFailed",
    "AssociationHandler",
    "AssociationRejected",
    "DataSink",
    "NetObserver",
    "PresentationContext",
    "Rejection",
    "Request",
    "Response",
]

log = logging.getLogger("kuva.dicom.net")

VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"  # PS3.4 A.4
# kuva's implementation identity (PS3.7 D.3.3.2): kuva's UID root (2.25 + a fixed UUID) ".1"
IMPLEMENTATION_CLASS_UID = "2.25.161420553127812870046235620843128813981.1"
IMPLEMENTATION_VERSION_NAME = "KUVA"

RECEIVE_BUFFER = 256 << 10  # one recv_into buffer per association
COMMAND_LIMIT = 64 << 10  # a command set larger than this is not DICOM
OTHER_PDU_LIMIT = 64 << 10  # A-ASSOCIATE-RJ, A-RELEASE, A-ABORT bodies are 4 bytes
ASSOCIATE_LIMIT = 1 << 20  # A-ASSOCIATE-RQ/AC body (pdu.MAX_ASSOCIATE_LENGTH)
WRITE_HIGH_WATER = 2 << 20  # transport buffer above which writers wait
THREAD_QUEUE_LIMIT = 1 << 20  # bytes handed over by threads, not yet written
BATCH = 256 << 10  # P-DATA PDUs are handed to the loop in batches of about this size
SEND_PDU_LIMIT = 4 << 20  # largest P-DATA-TF PDU sent, whatever the peer allows
MAX_QUEUED_REQUESTS = 16  # requests beyond the 1/1 window before the association aborts

_PDATA_PDV = struct.Struct(">BxLLBB")  # P-DATA-TF header + one PDV header (PS3.8 9.3.5)
_PDU_LENGTH = struct.Struct(">L")
_PENDING = (0xFF00, 0xFF01)
_PROCESSING_FAILURE = 0x0110  # PS3.7 C.4, general failure status
_UNRECOGNIZED_OPERATION = 0x0211


class State(IntEnum):
    """The upper layer states (PS3.8 Table 9-10)."""

    STA1 = 1  # idle
    STA2 = 2  # transport connection open, awaiting A-ASSOCIATE-RQ PDU
    STA3 = 3  # awaiting local A-ASSOCIATE response primitive
    STA4 = 4  # awaiting transport connection opening to complete
    STA5 = 5  # awaiting A-ASSOCIATE-AC or A-ASSOCIATE-RJ PDU
    STA6 = 6  # association established and ready for data transfer
    STA7 = 7  # awaiting A-RELEASE-RP PDU
    STA8 = 8  # awaiting local A-RELEASE response primitive
    STA9 = 9  # release collision requestor side: awaiting A-RELEASE response primitive
    STA10 = 10  # release collision acceptor side: awaiting A-RELEASE-RP PDU
    STA11 = 11  # release collision requestor side: awaiting A-RELEASE-RP PDU
    STA12 = 12  # release collision acceptor side: awaiting A-RELEASE response primitive
    STA13 = 13  # awaiting transport connection close indication


# Incoming P-DATA parse phases
_PDU_HEADER, _PDV_HEADER, _PDV_DATA, _PDU_BODY = range(4)
# Incoming DIMSE message phases (PS3.7 6.3.1: command fragments, then data set fragments)
_IDLE, _COMMAND, _DATA = range(3)


@dataclass(frozen=True, slots=True)
class PresentationContext:
    """An accepted presentation context as this side sees it (PS3.8 7.1.1.13, PS3.7 D.3.3.4).

    Default roles (no role selection): the requestor is SCU, the acceptor SCP.
    """

    id: int
    abstract_syntax: str
    transfer_syntax: str
    local_scu: bool  # this side may send requests of this SOP class on it
    local_scp: bool  # this side may perform (answer) requests of it


@dataclass(frozen=True, slots=True)
class Rejection:
    """An A-ASSOCIATE-RJ's result, source and reason (PS3.8 Table 9-21)."""

    result: int
    source: int
    reason: int


class AssociationRejected(ConnectionError):
    """The peer answered the A-ASSOCIATE-RQ with an A-ASSOCIATE-RJ (PS3.8 9.3.4)."""

    def __init__(self, rejection: Rejection) -> None:
        super().__init__(
            f"association rejected: result {rejection.result}, source {rejection.source}, "
            f"reason {rejection.reason}"
        )
        self.rejection = rejection


class AssociationFailed(ConnectionError):
    """No association: connection refused or lost, timeout, A-ABORT, TLS failure."""


@dataclass(slots=True)
class Response:
    """A response message (PS3.7 9.3, 10.3); status None = no response (timeout or
    association lost)."""

    command: Command
    data_set: bytes | None
    status: int | None
    pending: list[Response] = field(default_factory=list)


class DataSink(Protocol):
    """Where a C-STORE data set streams to while it arrives (application-provided)."""

    def write(self, data: memoryview) -> None:
        """A fragment (loop thread); `data` must not be kept: copy it if needed."""

    def close(self) -> None:
        """All fragments were written (the last fragment was seen)."""

    def discard(self) -> None:
        """The association was lost mid data set, or a write failed."""


@dataclass(slots=True)
class Request:
    """A request message as a handler gets it (PS3.7 9.3, 10.3)."""

    command: Command
    context: PresentationContext
    data_set: bytes | None  # None for C-STORE (its bytes went to `sink`) or no data set
    sink: DataSink | None  # C-STORE only
    sink_error: BaseException | None  # the sink's write/close raised: the rest was discarded
    cancelled: threading.Event  # set by a C-CANCEL-RQ naming this request (PS3.7 9.3.2.3)
    _responded: bool = field(default=False, init=False, repr=False)


class AssociationHandler(Protocol):
    """The application served on an association (the "service user" of PS3.8)."""

    def on_request(self, assoc: Association) -> Rejection | None:
        """Executor thread, after the A-ASSOCIATE-RQ passed the engine's checks."""

    def on_accepted(self, assoc: Association) -> None:
        """Executor thread, the association is accepted (contexts are set)."""

    def on_rejected(self, assoc: Association, rejection: Rejection) -> None:
        """Executor thread, the A-ASSOCIATE-RQ was rejected (by the engine or on_request)."""

    def on_closed(self, assoc: Association, *, aborted: bool) -> None:
        """Executor thread, an association ``on_request`` admitted ended: released,
        aborted, or closed by the peer before the A-ASSOCIATE-AC (``aborted``)."""

    def store_sink(self, assoc: Association, req: Request) -> DataSink:
        """Loop thread, fast: where the data set of C-STORE-RQ `req` goes."""
        ...

    def handle(self, assoc: Association, req: Request) -> None:
        """Executor thread: perform `req` and send its final response with assoc.respond()."""


class NetObserver(Protocol):
    """Counters outside the engine; every call on the loop thread, and cheap."""

    def association_opened(self, assoc: Association) -> None: ...

    def association_closed(self, assoc: Association) -> None: ...

    def pdu_received(self, pdu_type: int, nbytes: int) -> None: ...

    def pdu_sent(self, pdu_type: int, nbytes: int) -> None: ...


class AcceptorHooks(Protocol):
    """What an association accepted by a listening server asks of it (acceptor.py)."""

    tls_context: ssl.SSLContext | None
    handshake_timeout: float

    def associate_requested(self, assoc: Association) -> None:
        """Loop thread, Sta3: negotiate and answer with _send_accept or _send_reject."""

    def handshake_failed(self, assoc: Association, exc: BaseException) -> None:
        """Loop thread: the TLS handshake failed; the connection is closed."""

    def association_closed(self, assoc: Association, *, aborted: bool) -> None:
        """Loop thread: the transport connection closed."""


@dataclass(frozen=True, slots=True)
class AssociationSettings:
    """What associations of one acceptor or one associate() call share (never copied)."""

    engine: EngineLoop
    executor: Executor | None  # where handlers run; None when there is no handler
    handler: AssociationHandler | None
    local_max_pdu: int
    acse_timeout: float
    network_timeout: float
    dimse_timeout: float
    max_dataset_bytes: int
    observer: NetObserver | None


class _Lost(Exception):
    """The association ended while a thread was handing it a message."""


def _no_response(pending: list[Response] | None = None) -> Response:
    return Response(Command({}), None, None, pending if pending is not None else [])


def _message_batches(
    context_id: int,
    command: bytes,
    data_set: bytes | bytearray | memoryview | Iterable[bytes] | None,
    max_pdv: int,
) -> Iterator[bytearray]:
    """P-DATA-TF PDUs of one message, one PDV each (PS3.8 9.3.5, E.2), in batches of about
    `BATCH` bytes. An iterable data set is consumed as the batches are taken, so a large one
    goes out in constant memory; its chunks are copied once, into the PDUs."""
    out = bytearray()
    view = memoryview(command)
    for pos in range(0, max(len(view), 1), max_pdv):
        piece = view[pos : pos + max_pdv]
        last = pos + max_pdv >= len(view)
        out += _PDATA_PDV.pack(4, len(piece) + 6, len(piece) + 2, context_id, 3 if last else 1)
        out += piece
    if data_set is None:
        yield out
        return
    chunks: Iterable[bytes | bytearray | memoryview]
    chunks = (data_set,) if isinstance(data_set, bytes | bytearray | memoryview) else data_set
    start = -1  # offset in `out` of the open fragment's header
    filled = 0
    for chunk in chunks:
        view = memoryview(chunk).cast("B")
        size = len(view)
        pos = 0
        while pos < size:
            if start < 0 or filled == max_pdv:
                if start >= 0:
                    _PDATA_PDV.pack_into(out, start, 4, filled + 6, filled + 2, context_id, 0)
                    if len(out) >= BATCH:
                        yield out
                        out = bytearray()
                start = len(out)
                out += bytes(12)
                filled = 0
            take = min(max_pdv - filled, size - pos)
            out += view[pos : pos + take]
            pos += take
            filled += take
    if start < 0:
        start = len(out)
        out += bytes(12)
    _PDATA_PDV.pack_into(out, start, 4, filled + 6, filled + 2, context_id, 2)
    yield out


def _requestor_contexts(
    rq: AssociateRequest, ac: AssociateAccept
) -> dict[int, PresentationContext]:
    """The accepted contexts of an A-ASSOCIATE-AC as the requestor sees them, with the
    roles of PS3.7 D.3.3.4 (no role selection item answered: default roles)."""
    proposed = {c.id: c for c in rq.contexts}
    asked = {r.sop_class_uid: r for r in rq.user.roles}
    answered = {r.sop_class_uid: r for r in ac.user.roles}
    contexts: dict[int, PresentationContext] = {}
    for result in ac.contexts:
        context = proposed.get(result.id)
        if result.result != 0 or context is None:
            continue
        scu, scp = True, False
        ask = asked.get(context.abstract_syntax)
        answer = answered.get(context.abstract_syntax)
        if ask is not None and answer is not None:
            scu = ask.scu_role and answer.scu_role
            scp = ask.scp_role and answer.scp_role
        contexts[result.id] = PresentationContext(
            result.id, context.abstract_syntax, result.transfer_syntax, scu, scp
        )
    return contexts


class Association(asyncio.BufferedProtocol):
    """One association (PS3.8 7.1): its identity, negotiated contexts and DIMSE services.

    Methods that send are called from application threads (never the loop's: RuntimeError)
    and return once their PDUs are queued for the transport in order; `_async` twins serve
    code on the loop. Reading, the state machine and dispatch run on the engine loop.
    """

    def __init__(
        self,
        settings: AssociationSettings,
        *,
        is_requestor: bool,
        request: AssociateRequest | None = None,
        acceptor: AcceptorHooks | None = None,
    ) -> None:
        self._settings = settings
        self._engine = settings.engine
        self._loop = settings.engine.loop
        self._handler = settings.handler
        self._observer = settings.observer
        self._acceptor = acceptor
        self.is_requestor = is_requestor
        self.request: AssociateRequest = (
            request if request is not None else AssociateRequest("", "", (), UserInformation())
        )
        self.calling_ae = self.request.calling_ae
        self.called_ae = self.request.called_ae
        self.accept: AssociateAccept | None = None
        self.contexts: Mapping[int, PresentationContext] = {}
        self._by_syntax: dict[str, list[PresentationContext]] = {}
        self.peer_address: tuple[str, int] = ("", 0)
        self.peer_certificate: dict[str, object] | None = None
        self.peer_max_pdu = 0
        self.local_max_pdu = settings.local_max_pdu
        self.info: dict[str, object] = {}
        self.abort_received: Abort | None = None  # the peer's A-ABORT, if it sent one

        self._state = State.STA1
        self._transport: asyncio.Transport | None = None
        self._released = False
        self._opened = False  # Sta6 was reached
        self._app_accepted = False  # on_accepted was called (acceptor)
        self._ended = False  # the acceptor saw the connection close
        self._lock = threading.Lock()
        self._message_id = 0
        self._artim: asyncio.TimerHandle | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._last_activity = 0.0
        self._setup: asyncio.Future[None] = self._loop.create_future()
        self._closed_future: asyncio.Future[None] = self._loop.create_future()
        self._closed_event = threading.Event()
        self._handshake: asyncio.Task[None] | None = None
        self._handshaking = False

        # receiving
        self._buffer = bytearray(RECEIVE_BUFFER)
        self._view = memoryview(self._buffer)
        self._start = 0
        self._end = 0
        self._phase = _PDU_HEADER
        self._pdu_left = 0
        self._pdv_left = 0
        self._body_type = 0
        self._body: bytearray | None = None
        self._body_left = 0
        self._rx = _IDLE
        self._rx_context: PresentationContext | None = None
        self._rx_last = False
        self._rx_command_bytes = bytearray()
        self._rx_command: Command | None = None
        self._rx_data: bytearray | None = None
        self._rx_request: Request | None = None
        self._rx_sink: DataSink | None = None

        # requests served and sent
        self._current: Request | None = None
        self._queued: collections.deque[Request] = collections.deque()
        self._release_deferred = False
        self._outstanding: dict[int, Callable[[Response | None], None]] = {}

        # sending: threads hand batches to the loop; both wait on the transport's flow control
        self._flow = threading.Condition(threading.Lock())
        self._send_lock = threading.Lock()  # one message at a time from threads
        self._in_flight = 0
        # batches posted by threads, written by the loop in order; one wake-up of the
        # loop writes all that were posted before it ran (a C-FIND's pending answers)
        self._posted: collections.deque[bytearray] = collections.deque()
        self._write_scheduled = False
        self._paused = False
        self._lost = False
        self._drain_waiters: list[asyncio.Future[None]] = []

    def __repr__(self) -> str:
        role = "requestor" if self.is_requestor else "acceptor"
        return (
            f"<Association {self.calling_ae or '?'}->{self.called_ae or '?'} "
            f"{self.peer_address[0]}:{self.peer_address[1]} {role} {self._state.name}>"
        )

    # ------------------------------------------------------------------ identity, contexts

    @property
    def is_established(self) -> bool:
        """Sta6: the association is established and ready for data transfer."""
        return self._state == State.STA6

    @property
    def state(self) -> State:
        """The upper layer state (PS3.8 Table 9-10)."""
        return self._state

    @property
    def released(self) -> bool:
        """The association ended (or is ending) by A-RELEASE or A-ASSOCIATE-RJ, not by
        A-ABORT or a lost connection."""
        return self._released

    def context_for(
        self,
        sop_class_uid: str,
        transfer_syntaxes: Sequence[str] | None = None,
        *,
        as_scu: bool = True,
    ) -> PresentationContext | None:
        """An accepted context of `sop_class_uid` in which this side has the role asked
        (SCU: may send requests; SCP: may answer them), in the first of `transfer_syntaxes`
        accepted (any transfer syntax when None)."""
        candidates = [
            c
            for c in self._by_syntax.get(sop_class_uid, ())
            if (c.local_scu if as_scu else c.local_scp)
        ]
        if transfer_syntaxes is None:
            return candidates[0] if candidates else None
        for syntax in transfer_syntaxes:
            for context in candidates:
                if context.transfer_syntax == syntax:
                    return context
        return None

    def accepted_syntaxes(self, sop_class_uid: str, *, as_scu: bool = True) -> list[str]:
        """The transfer syntaxes accepted for `sop_class_uid` with this side's role asked."""
        syntaxes: list[str] = []
        for c in self._by_syntax.get(sop_class_uid, ()):
            if (c.local_scu if as_scu else c.local_scp) and c.transfer_syntax not in syntaxes:
                syntaxes.append(c.transfer_syntax)
        return syntaxes

    def next_message_id(self) -> int:
        """A Message ID (0000,0110) for a request: 1..65535, wrapping (PS3.7 9.1.1.1)."""
        with self._lock:
            self._message_id = self._message_id % 0xFFFF + 1
            return self._message_id

    def _set_contexts(self, contexts: dict[int, PresentationContext]) -> None:
        by_syntax: dict[str, list[PresentationContext]] = {}
        for context_id in sorted(contexts):
            context = contexts[context_id]
            by_syntax.setdefault(context.abstract_syntax, []).append(context)
        self.contexts = contexts
        self._by_syntax = by_syntax

    # ------------------------------------------------------------------ transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer_address = (str(peer[0]), int(peer[1]))
        if self.is_requestor:  # Sta4 -> Sta5: AE-2, send the A-ASSOCIATE-RQ
            self._transport_ready(transport)
            self.peer_certificate = transport.get_extra_info("peercert")
            self._send_pdu(self.request)
            self._state = State.STA5
            self._start_artim()
            return
        tls = self._acceptor.tls_context if self._acceptor is not None else None
        if tls is None:
            self._transport_ready(transport)
            self._await_request()
        else:
            transport.pause_reading()  # the TLS layer reads from here on
            self._handshaking = True
            self._handshake = self._loop.create_task(self._start_tls(transport, tls))

    async def _start_tls(self, transport: asyncio.Transport, context: ssl.SSLContext) -> None:
        assert self._acceptor is not None
        try:
            tls = await self._loop.start_tls(
                transport,
                self,
                context,
                server_side=True,
                ssl_handshake_timeout=self._acceptor.handshake_timeout,
            )
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            transport.abort()
            self._closed_after_failure()
            self._acceptor.handshake_failed(self, exc)
            return
        except asyncio.CancelledError:
            transport.abort()
            self._closed_after_failure()
            self._acceptor.association_closed(self, aborted=True)
            raise
        if tls is None:  # the connection went away during the handshake
            transport.abort()
            self._closed_after_failure()
            self._acceptor.handshake_failed(self, ConnectionResetError("closed in handshake"))
            return
        self.peer_certificate = tls.get_extra_info("peercert")
        self._transport_ready(tls)
        self._await_request()
        self._handshaking = False
        if self._end > self._start:  # the A-ASSOCIATE-RQ came with the handshake's end
            self.buffer_updated(0)

    def _mark_accepted(self) -> bool:
        """Pool thread: the application accepts; False if the connection already closed."""
        with self._lock:
            if self._ended:
                return False
            self._app_accepted = True
            return True

    def _mark_ended(self) -> bool:
        """Loop thread, connection closed: True if the application accepted (on_closed)."""
        with self._lock:
            self._ended = True
            return self._app_accepted

    def _shutdown(self) -> None:
        """Close the connection at once (an acceptor stopping)."""
        if self._handshake is not None and not self._handshake.done():
            self._handshake.cancel()
        elif self._transport is not None:
            self._transport.abort()

    def _free_buffers(self) -> None:
        """The receive buffer goes with the connection (the object may be kept longer)."""
        self._view = memoryview(b"")
        self._buffer = bytearray()
        self._start = self._end = 0
        self._body = None
        self._rx_data = None
        self._rx_command_bytes = bytearray()

    def _closed_after_failure(self) -> None:
        self._free_buffers()
        self._state = State.STA1
        self._lost = True
        self._closed_event.set()
        if not self._closed_future.done():
            self._closed_future.set_result(None)

    def _transport_ready(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self._last_activity = self._loop.time()

    def _await_request(self) -> None:
        """AE-5: transport connection indication -> Sta2, ARTIM started (PS3.8 9.2.3)."""
        self._state = State.STA2
        self._start_artim()

    def connection_lost(self, exc: Exception | None) -> None:
        previous = self._state
        self._state = State.STA1
        self._stop_artim()
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        aborted = not self._released
        if aborted and previous not in (State.STA13, State.STA1):
            log.info("%r: connection lost in %s (%s)", self, previous.name, exc or "closed")
        sink = self._rx_sink
        self._rx_sink = None
        if sink is not None:
            self._call_discard(sink)
        self._free_buffers()
        with self._flow:
            self._lost = True
            self._flow.notify_all()
        for deliver in list(self._outstanding.values()):
            deliver(None)
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()
        if self._current is not None:
            self._current.cancelled.set()
        for queued in self._queued:
            queued.cancelled.set()
        self._queued.clear()
        if self.is_requestor and not self._setup.done():
            self._setup.set_exception(
                AssociationFailed(f"connection to {self.peer_address} closed during set-up")
            )
        self._closed_event.set()
        if not self._closed_future.done():
            self._closed_future.set_result(None)
        if self._opened and self._observer is not None:
            self._observer.association_closed(self)
        if self._acceptor is not None:
            self._acceptor.association_closed(self, aborted=aborted)

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def pause_writing(self) -> None:
        with self._flow:
            self._paused = True

    def resume_writing(self) -> None:
        with self._flow:
            self._paused = False
            self._flow.notify_all()
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # ------------------------------------------------------------------ timers

    def _start_artim(self) -> None:
        """ARTIM (PS3.8 9.1.5): bounds the wait for A-ASSOCIATE-RQ, for AC/RJ, and for the
        transport to close after A-RELEASE-RP, A-ABORT or A-ASSOCIATE-RJ."""
        self._stop_artim()
        self._artim = self._loop.call_later(self._settings.acse_timeout, self._artim_expired)

    def _stop_artim(self) -> None:
        if self._artim is not None:
            self._artim.cancel()
            self._artim = None

    def _artim_expired(self) -> None:
        """AA-2: ARTIM expired, close the transport connection."""
        self._artim = None
        if self._state == State.STA5 and not self._setup.done():
            self._setup.set_exception(
                AssociationFailed(
                    f"no A-ASSOCIATE-AC/RJ from {self.peer_address} "
                    f"within {self._settings.acse_timeout:g} s"
                )
            )
        elif self._state == State.STA2:
            log.info("%r: no A-ASSOCIATE-RQ within %g s", self, self._settings.acse_timeout)
        if self._transport is not None:
            self._transport.abort()

    def _start_idle_timer(self) -> None:
        if self._settings.network_timeout > 0:  # 0: no network timeout
            self._idle = self._loop.call_later(self._settings.network_timeout, self._idle_check)

    def _idle_check(self) -> None:
        """The network timeout: an established association on which nothing was received
        or sent for `network_timeout` seconds, and no request is in progress either way,
        is aborted (a peer stalled in the middle of a message too)."""
        self._idle = None
        if self._state != State.STA6:
            return
        timeout = self._settings.network_timeout
        now = self._loop.time()
        # A request in progress either way is not idleness: the DIMSE timeout bounds a wait
        # for a response, and a sender waiting on a peer that stopped reading gives up
        # after network_timeout (_post).
        busy = self._current is not None or bool(self._outstanding)
        if busy or now - self._last_activity < timeout:
            delay = timeout if busy else self._last_activity + timeout - now
            self._idle = self._loop.call_later(max(delay, 0.05), self._idle_check)
            return
        log.info("%r: idle for %g s, aborting", self, timeout)
        self._abort(2, AbortReason.NOT_SPECIFIED)

    # ------------------------------------------------------------------ receiving

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        self._end += nbytes
        if self._handshaking:  # application data right after the TLS handshake: kept
            return
        self._last_activity = self._loop.time()
        if self._state == State.STA13 or self._state == State.STA1:
            self._start = self._end = 0  # AA-6/AA-7: ignored while awaiting the close
            return
        try:
            self._parse()
        except PduError as exc:
            self._provider_abort(exc.reason, str(exc))
        except DimseError as exc:
            self._provider_abort(AbortReason.INVALID_PDU_PARAMETER_VALUE, f"command set: {exc}")
        if self._closing():
            self._start = self._end = 0
            return
        left = self._end - self._start
        if left == 0:
            self._start = self._end = 0
        elif self._start:
            self._buffer[:left] = self._buffer[self._start : self._end]
            self._start = 0
            self._end = left

    def _closing(self) -> bool:
        """Sta13 (awaiting the close) or Sta1: whatever arrives is ignored (AA-6, AA-7)."""
        return self._state == State.STA13 or self._state == State.STA1

    def _parse(self) -> None:
        """Consume the received bytes (PS3.8 9.3.1, 9.3.5): PDU headers, PDV headers and
        PDV payload (handed on as it arrives); other PDUs are gathered and decoded whole."""
        buffer = self._buffer
        view = self._view
        pos = self._start
        end = self._end
        try:
            while pos < end:
                phase = self._phase
                if phase == _PDV_DATA:
                    n = min(self._pdv_left, end - pos)
                    self._fragment(view[pos : pos + n])
                    pos += n
                    self._pdv_left -= n
                    if self._pdv_left == 0:
                        self._phase = _PDV_HEADER if self._pdu_left else _PDU_HEADER
                        if self._rx_last:
                            self._fragments_done()
                elif phase == _PDV_HEADER:
                    if self._pdu_left < 6:
                        raise PduError(
                            AbortReason.INVALID_PDU_PARAMETER_VALUE,
                            f"{self._pdu_left} bytes left in a P-DATA-TF, too few for a PDV",
                        )
                    if end - pos < 6:
                        break
                    length, context_id, control = PDV_HEADER.unpack_from(buffer, pos)
                    pos += 6
                    if length < 2 or length + 4 > self._pdu_left:
                        raise PduError(
                            AbortReason.INVALID_PDU_PARAMETER_VALUE,
                            f"PDV item length {length} in a P-DATA-TF with {self._pdu_left} left",
                        )
                    self._pdu_left -= length + 4
                    self._pdv_left = length - 2
                    self._fragment_start(context_id, control)
                    if self._pdv_left:
                        self._phase = _PDV_DATA
                    else:
                        self._phase = _PDV_HEADER if self._pdu_left else _PDU_HEADER
                        if self._rx_last:
                            self._fragments_done()
                elif phase == _PDU_HEADER:
                    if end - pos < 6:
                        break
                    pdu_type, length = PDU_HEADER.unpack_from(buffer, pos)
                    pos += 6
                    if pdu_type == PduType.P_DATA_TF:
                        self._pdata_received(length)
                        continue
                    if not 1 <= pdu_type <= 7:
                        raise PduError(
                            AbortReason.UNRECOGNIZED_PDU, f"unrecognized PDU type 0x{pdu_type:02X}"
                        )
                    limit = ASSOCIATE_LIMIT if pdu_type <= 2 else OTHER_PDU_LIMIT
                    if length > limit:
                        raise PduError(
                            AbortReason.INVALID_PDU_PARAMETER_VALUE,
                            f"PDU type {pdu_type} of {length} bytes",
                        )
                    if end - pos >= length:
                        body = view[pos : pos + length]
                        pos += length
                        self._pdu_received(pdu_type, body)
                    else:
                        self._body = bytearray(view[pos:end])
                        self._body_type = pdu_type
                        self._body_left = length - (end - pos)
                        self._phase = _PDU_BODY
                        pos = end
                else:  # _PDU_BODY
                    assert self._body is not None
                    n = min(self._body_left, end - pos)
                    self._body += view[pos : pos + n]
                    pos += n
                    self._body_left -= n
                    if self._body_left == 0:
                        body_bytes, self._body = self._body, None
                        self._phase = _PDU_HEADER
                        self._pdu_received(self._body_type, memoryview(body_bytes))
                if self._state == State.STA13 or self._state == State.STA1:
                    break
        finally:
            self._start = pos

    def _pdata_received(self, length: int) -> None:
        """A P-DATA-TF header: DT-2 in Sta6, AR-6 in Sta7; elsewhere AA-8 (PS3.8 9.2)."""
        if self._state != State.STA6 and self._state != State.STA7:
            raise PduError(AbortReason.UNEXPECTED_PDU, f"P-DATA-TF in {self._state.name}")
        if self._observer is not None:
            self._observer.pdu_received(PduType.P_DATA_TF, length + 6)
        self._pdu_left = length
        self._phase = _PDV_HEADER if length else _PDU_HEADER

    def _fragment_start(self, context_id: int, control: int) -> None:
        """A PDV header: check it continues the message being received (PS3.7 6.3.1,
        PS3.8 E.2) and on an accepted presentation context."""
        command = bool(control & 1)
        self._rx_last = bool(control & 2)
        rx = self._rx
        if rx == _IDLE:
            if not command:
                raise PduError(
                    AbortReason.UNEXPECTED_PDU_PARAMETER, "a data set fragment without a command"
                )
            context = self.contexts.get(context_id)
            if context is None:
                raise PduError(
                    AbortReason.INVALID_PDU_PARAMETER_VALUE,
                    f"PDV on presentation context {context_id}, not accepted",
                )
            self._rx_context = context
            self._rx = _COMMAND
            self._rx_command_bytes = bytearray()
            return
        assert self._rx_context is not None
        if context_id != self._rx_context.id:
            raise PduError(
                AbortReason.UNEXPECTED_PDU_PARAMETER,
                f"PDV on context {context_id} inside a message on context {self._rx_context.id}",
            )
        if command != (rx == _COMMAND):
            raise PduError(
                AbortReason.UNEXPECTED_PDU_PARAMETER,
                "command fragment inside a data set" if command else "data set before command end",
            )

    def _fragment(self, data: memoryview) -> None:
        """PDV payload bytes, as they arrive."""
        if self._rx == _COMMAND:
            if len(self._rx_command_bytes) + len(data) > COMMAND_LIMIT:
                raise PduError(
                    AbortReason.NOT_SPECIFIED, f"command set longer than {COMMAND_LIMIT} bytes"
                )
            self._rx_command_bytes += data
            return
        sink = self._rx_sink
        if sink is not None:
            try:
                sink.write(data)
            except Exception as exc:
                self._sink_failed(exc)
            return
        received = self._rx_data
        if received is not None:
            if len(received) + len(data) > self._settings.max_dataset_bytes:
                raise PduError(
                    AbortReason.NOT_SPECIFIED,
                    f"data set of a non-storage message above "
                    f"{self._settings.max_dataset_bytes} bytes",
                )
            received += data

    def _fragments_done(self) -> None:
        """The last fragment of the command or of the data set was received."""
        if self._rx == _COMMAND:
            command = decode_command(memoryview(self._rx_command_bytes))
            self._rx_command_bytes = bytearray()
            self._rx_command = command
            if command.has_data_set:
                self._rx = _DATA
                self._data_set_follows(command)
                return
        elif self._rx_request is not None and self._rx_sink is not None:
            sink = self._rx_sink
            self._rx_sink = None
            try:
                sink.close()
            except Exception as exc:
                self._rx_request.sink_error = exc
                log.warning("%r: the C-STORE data sink failed to close: %s", self, exc)
        self._message_received()

    def _data_set_follows(self, command: Command) -> None:
        """A C-STORE-RQ's data set streams to the application's sink (store_sink(), loop
        thread); any other data set is gathered in a bytearray."""
        context = self._rx_context
        assert context is not None
        if command.command_field != CommandField.C_STORE_RQ:
            self._rx_data = bytearray()
            return
        req = Request(command, context, None, None, None, threading.Event())
        self._rx_request = req
        if self._handler is None or not context.local_scp:
            return  # refused when complete; the data set is discarded meanwhile
        try:
            req.sink = self._handler.store_sink(self, req)
        except Exception as exc:
            req.sink_error = exc
            log.exception("%r: store_sink failed", self)
            return
        self._rx_sink = req.sink

    def _sink_failed(self, exc: Exception) -> None:
        sink = self._rx_sink
        self._rx_sink = None
        if self._rx_request is not None:
            self._rx_request.sink_error = exc
        log.warning("%r: the C-STORE data sink failed: %s", self, exc)
        if sink is not None:
            self._call_discard(sink)

    def _call_discard(self, sink: DataSink) -> None:
        try:
            sink.discard()
        except Exception:
            log.exception("%r: DataSink.discard failed", self)

    def _message_received(self) -> None:
        """A whole DIMSE message: a response goes to its sender (by Message ID Being
        Responded To), a C-CANCEL-RQ to the request it names, a request to the handler."""
        command = self._rx_command
        context = self._rx_context
        data = self._rx_data
        req = self._rx_request
        self._rx = _IDLE
        self._rx_command = None
        self._rx_context = None
        self._rx_data = None
        self._rx_request = None
        assert command is not None and context is not None
        if command.is_response:
            deliver = self._outstanding.get(command.message_id_being_responded_to)
            if deliver is None:
                log.warning(
                    "%r: response 0x%04X to message %d, which is not outstanding",
                    self,
                    command.command_field,
                    command.message_id_being_responded_to,
                )
                return
            deliver(Response(command, bytes(data) if data is not None else None, command.status))
            return
        if command.command_field == CommandField.C_CANCEL_RQ:
            self._cancel(command.message_id_being_responded_to)
            return
        if req is None:
            data_set = bytes(data) if data is not None else None
            req = Request(command, context, data_set, None, None, threading.Event())
        if self._handler is None or not context.local_scp:
            log.info(
                "%r: request 0x%04X on context %d, which this side does not serve",
                self,
                command.command_field,
                context.id,
            )
            self._respond_now(req, _UNRECOGNIZED_OPERATION)
            return
        if self._current is None:
            self._run(req)
        elif len(self._queued) < MAX_QUEUED_REQUESTS:
            self._queued.append(req)
        else:
            raise PduError(
                AbortReason.NOT_SPECIFIED,
                "requests beyond the negotiated asynchronous operations window",
            )

    def _cancel(self, message_id: int) -> None:
        """C-CANCEL-RQ (PS3.7 9.3.2.3): mark the request it names cancelled."""
        for req in (self._current, *self._queued):
            if req is not None and req.command.message_id == message_id:
                req.cancelled.set()

    # ------------------------------------------------------------------ handling requests

    def _run(self, req: Request) -> None:
        self._current = req
        executor = self._settings.executor
        assert executor is not None
        try:
            executor.submit(self._handle, req)
        except RuntimeError:  # the pool is shut down: the acceptor is stopping
            self._current = None
            self._abort(2, AbortReason.NOT_SPECIFIED)

    def _handle(self, req: Request) -> None:
        """Executor thread: the handler, then the engine's 0x0110 if it sent no final
        response (PS3.7 C.4: processing failure)."""
        assert self._handler is not None
        try:
            self._handler.handle(self, req)
        except Exception:
            log.exception("%r: handler failed on request 0x%04X", self, req.command.command_field)
        if not req._responded:
            self.respond(req, _PROCESSING_FAILURE)
        with contextlib.suppress(RuntimeError):  # the loop is closed
            self._loop.call_soon_threadsafe(self._handled, req)

    def _handled(self, req: Request) -> None:
        if self._current is req:
            self._current = None
        if self._queued and self._state in (State.STA6, State.STA8):
            self._run(self._queued.popleft())
        elif self._release_deferred and self._state == State.STA8:
            self._release_deferred = False
            self._send_release_response()

    def respond(
        self, req: Request, status: int, *, data_set: bytes | None = None, **fields: Value
    ) -> None:
        """Send one response to `req` (pending or final, PS3.7 9.3, 10.3); `fields` name
        further command elements (`dimse.Tag` names in lower case). A lost association
        makes this a no-op (the peer is gone)."""
        self._engine.check_not_loop_thread("Association.respond")
        command = self._response_command(req, status, data_set is not None, fields)
        if status not in _PENDING:
            req._responded = True
        try:
            self._send_from_thread(req.context.id, command, data_set)
        except _Lost:
            log.debug("%r: response to message %d not sent: lost", self, req.command.message_id)

    async def respond_async(
        self, req: Request, status: int, *, data_set: bytes | None = None, **fields: Value
    ) -> None:
        """`respond` for code on the loop."""
        command = self._response_command(req, status, data_set is not None, fields)
        if status not in _PENDING:
            req._responded = True
        await self._send_on_loop(req.context.id, command, data_set)

    @staticmethod
    def _response_command(
        req: Request, status: int, has_data_set: bool, fields: Mapping[str, Value]
    ) -> bytes:
        try:
            values = response(req.command, status, **fields)
        except ValueError:  # a command field without a response type: answer it anyway
            values = {
                Tag.COMMAND_FIELD: (req.command.command_field | 0x8000) & 0xFFFF,
                Tag.MESSAGE_ID_BEING_RESPONDED_TO: req.command.message_id,
                Tag.STATUS: status,
            }
        return encode_command(values, has_data_set=has_data_set)

    def _respond_now(self, req: Request, status: int) -> None:
        """Loop thread: a response the engine itself sends (no handler for the request)."""
        command = self._response_command(req, status, False, {})
        req._responded = True
        for batch in _message_batches(req.context.id, command, None, self._max_pdv()):
            self._write_pdata(batch)

    # ------------------------------------------------------------------ sending messages

    def _max_pdv(self) -> int:
        """PDV payload per P-DATA-TF: the peer's maximum PDU length less the PDV item
        header (PS3.8 9.3.5, D.1); our own when the peer said 0 (unlimited)."""
        limit = self.peer_max_pdu or self.local_max_pdu
        return max(min(limit, SEND_PDU_LIMIT) - 6, 1)

    def _send_from_thread(
        self,
        context_id: int,
        command: bytes,
        data_set: bytes | bytearray | memoryview | Iterable[bytes] | None,
    ) -> None:
        """One whole message, its batches handed to the loop in order; messages of
        different threads are not interleaved (PS3.7 6.3.1). If the data set's iterable
        raises after part of the message went out, the association is aborted: a message
        cannot be left unfinished."""
        batches = _message_batches(context_id, command, data_set, self._max_pdv())
        posted = False
        with self._send_lock:
            while True:
                try:
                    batch = next(batches)
                except StopIteration:
                    return
                except BaseException:
                    if posted:
                        self.abort()
                    raise
                self._post(batch)
                posted = True

    def _post(self, batch: bytearray) -> None:
        """Hand a batch to the loop, waiting while too much is queued or the transport's
        buffer is full (its pause_writing/resume_writing)."""
        size = len(batch)
        timeout = self._settings.network_timeout
        stalled = False
        with self._flow:
            while (self._in_flight >= THREAD_QUEUE_LIMIT or self._paused) and not self._lost:
                if not self._flow.wait(timeout if timeout > 0 else None):
                    stalled = True  # nothing went out for network_timeout
                    break
            schedule = False
            if not stalled and not self._lost:
                self._in_flight += size
                self._posted.append(batch)
                schedule = not self._write_scheduled
                self._write_scheduled = True
        if stalled:
            log.warning("%r: the peer read nothing for %g s, aborting", self, timeout)
            self.abort()
            raise _Lost
        if self._lost:
            raise _Lost
        if schedule:
            try:
                self._loop.call_soon_threadsafe(self._write_posted)
            except RuntimeError:
                raise _Lost from None

    def _write_posted(self) -> None:
        """Loop thread: write every batch threads posted so far, in order."""
        with self._flow:
            batches = list(self._posted)
            self._posted.clear()
            self._write_scheduled = False
        for batch in batches:
            self._write_pdata(batch)
        with self._flow:
            self._in_flight -= sum(len(batch) for batch in batches)
            self._flow.notify_all()

    async def _send_on_loop(
        self,
        context_id: int,
        command: bytes,
        data_set: bytes | bytearray | memoryview | Iterable[bytes] | None,
    ) -> None:
        batches = _message_batches(context_id, command, data_set, self._max_pdv())
        posted = False
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except BaseException:
                if posted:
                    self._abort(0, 0)
                raise
            if self._lost:
                raise _Lost
            self._write_pdata(batch)
            posted = True
            if self._paused:
                waiter = self._loop.create_future()
                self._drain_waiters.append(waiter)
                await waiter

    def _write_pdata(self, batch: bytearray) -> None:
        """Loop thread: P-DATA-TF PDUs out (DT-1 in Sta6, AR-7 in Sta8); dropped in any
        other state (the association is closing)."""
        state = self._state
        transport = self._transport
        if (state != State.STA6 and state != State.STA8) or transport is None:
            log.debug("%r: %d bytes of P-DATA not sent in %s", self, len(batch), state.name)
            return
        transport.write(batch)
        self._last_activity = self._loop.time()
        observer = self._observer
        if observer is not None:
            pos = 0
            while pos < len(batch):
                (length,) = _PDU_LENGTH.unpack_from(batch, pos + 2)
                observer.pdu_sent(PduType.P_DATA_TF, length + 6)
                pos += length + 6

    def _send_pdu(self, pdu: Pdu) -> None:
        """Loop thread: an A-ASSOCIATE, A-RELEASE or A-ABORT PDU out."""
        data = encode(pdu)
        if self._transport is None or self._transport.is_closing():
            return
        self._transport.write(data)
        self._last_activity = self._loop.time()
        if self._observer is not None:
            self._observer.pdu_sent(data[0], len(data))

    # ------------------------------------------------------------------ requesting

    def send_request(
        self,
        context: PresentationContext,
        fields: Mapping[int, Value],
        data_set: bytes | Iterable[bytes] | None = None,
        *,
        timeout: float | None = None,
    ) -> Response:
        """Send a request and wait for its final response (PS3.7 9.3, 10.3); pending
        responses (C-FIND/C-GET/C-MOVE) are gathered in Response.pending. An iterable data
        set is read in this thread and sent in constant memory. Timeout (`dimse_timeout`
        by default, restarted by each pending response) or a lost association: status
        None (on timeout the association is aborted)."""
        self._engine.check_not_loop_thread("Association.send_request")
        message_id = fields.get(Tag.MESSAGE_ID)
        if not isinstance(message_id, int):
            raise ValueError("a request needs its Message ID (0000,0110)")
        command = encode_command(fields, has_data_set=data_set is not None)
        responses: queue.SimpleQueue[Response | None] = queue.SimpleQueue()
        self._outstanding[message_id] = responses.put
        wait = self._settings.dimse_timeout if timeout is None else timeout
        pending: list[Response] = []
        try:
            if self._lost:
                return _no_response()
            try:
                self._send_from_thread(context.id, command, data_set)
            except _Lost:
                return _no_response()
            while True:
                try:
                    answer = responses.get(timeout=wait)
                except queue.Empty:
                    log.warning(
                        "%r: no response to message %d within %g s, aborting",
                        self,
                        message_id,
                        wait,
                    )
                    self.abort()
                    return _no_response(pending)
                if answer is None:
                    return _no_response(pending)
                if answer.command.is_pending:
                    pending.append(answer)
                    continue
                answer.pending = pending
                return answer
        finally:
            self._outstanding.pop(message_id, None)

    async def send_request_async(
        self,
        context: PresentationContext,
        fields: Mapping[int, Value],
        data_set: bytes | Iterable[bytes] | None = None,
        *,
        timeout: float | None = None,
    ) -> Response:
        """`send_request` for code on the loop (an iterable data set is read on the loop)."""
        message_id = fields.get(Tag.MESSAGE_ID)
        if not isinstance(message_id, int):
            raise ValueError("a request needs its Message ID (0000,0110)")
        command = encode_command(fields, has_data_set=data_set is not None)
        responses: asyncio.Queue[Response | None] = asyncio.Queue()
        self._outstanding[message_id] = responses.put_nowait
        wait = self._settings.dimse_timeout if timeout is None else timeout
        pending: list[Response] = []
        try:
            if self._lost:
                return _no_response()
            try:
                await self._send_on_loop(context.id, command, data_set)
            except _Lost:
                return _no_response()
            while True:
                try:
                    answer = await asyncio.wait_for(responses.get(), wait)
                except TimeoutError:
                    log.warning("%r: no response to message %d, aborting", self, message_id)
                    self._abort(0, 0)
                    return _no_response(pending)
                if answer is None:
                    return _no_response(pending)
                if answer.command.is_pending:
                    pending.append(answer)
                    continue
                answer.pending = pending
                return answer
        finally:
            self._outstanding.pop(message_id, None)

    def _echo_fields(self) -> tuple[PresentationContext, dict[int, Value]]:
        context = self.context_for(VERIFICATION_SOP_CLASS)
        if context is None:
            raise ValueError("no accepted presentation context for Verification")
        fields = request(
            CommandField.C_ECHO_RQ,
            self.next_message_id(),
            affected_sop_class_uid=VERIFICATION_SOP_CLASS,
        )
        return context, fields

    def c_echo(self) -> Response:
        """C-ECHO (PS3.7 9.1.5) on the Verification context."""
        context, fields = self._echo_fields()
        return self.send_request(context, fields)

    async def c_echo_async(self) -> Response:
        context, fields = self._echo_fields()
        return await self.send_request_async(context, fields)

    def _store_fields(
        self,
        context: PresentationContext,
        sop_instance_uid: str,
        message_id: int | None,
        move_originator: tuple[str, int] | None,
        priority: int,
    ) -> dict[int, Value]:
        extra: dict[str, Value] = {}
        if move_originator is not None:
            extra["move_originator_ae_title"] = move_originator[0]
            extra["move_originator_message_id"] = move_originator[1]
        return request(
            CommandField.C_STORE_RQ,
            self.next_message_id() if message_id is None else message_id,
            affected_sop_class_uid=context.abstract_syntax,
            affected_sop_instance_uid=sop_instance_uid,
            priority=priority,
            **extra,
        )

    def c_store(
        self,
        context: PresentationContext,
        sop_instance_uid: str,
        data_set: Iterable[bytes] | bytes,
        *,
        message_id: int | None = None,
        move_originator: tuple[str, int] | None = None,
        priority: int = 0,
    ) -> Response:
        """C-STORE (PS3.7 9.1.1) of `data_set` (bytes in the context's transfer syntax,
        or an iterable of chunks read in this thread) on `context`."""
        fields = self._store_fields(
            context, sop_instance_uid, message_id, move_originator, priority
        )
        return self.send_request(context, fields, data_set)

    async def c_store_async(
        self,
        context: PresentationContext,
        sop_instance_uid: str,
        data_set: Iterable[bytes] | bytes,
        *,
        message_id: int | None = None,
        move_originator: tuple[str, int] | None = None,
        priority: int = 0,
    ) -> Response:
        fields = self._store_fields(
            context, sop_instance_uid, message_id, move_originator, priority
        )
        return await self.send_request_async(context, fields, data_set)

    def _n_fields(
        self,
        field_: CommandField,
        sop_class_uid: str,
        sop_instance_uid: str,
        **extra: Value,
    ) -> dict[int, Value]:
        if field_ == CommandField.N_ACTION_RQ:
            extra["requested_sop_class_uid"] = sop_class_uid
            extra["requested_sop_instance_uid"] = sop_instance_uid
        else:
            extra["affected_sop_class_uid"] = sop_class_uid
            if sop_instance_uid:
                extra["affected_sop_instance_uid"] = sop_instance_uid
        return request(field_, self.next_message_id(), **extra)

    def n_create(
        self,
        context: PresentationContext,
        sop_class_uid: str,
        sop_instance_uid: str,
        data_set: bytes,
    ) -> Response:
        """N-CREATE (PS3.7 10.1.5); an empty `sop_instance_uid` lets the SCP choose one."""
        fields = self._n_fields(CommandField.N_CREATE_RQ, sop_class_uid, sop_instance_uid)
        return self.send_request(context, fields, data_set)

    async def n_create_async(
        self,
        context: PresentationContext,
        sop_class_uid: str,
        sop_instance_uid: str,
        data_set: bytes,
    ) -> Response:
        fields = self._n_fields(CommandField.N_CREATE_RQ, sop_class_uid, sop_instance_uid)
        return await self.send_request_async(context, fields, data_set)

    def n_event_report(
        self,
        context: PresentationContext,
        sop_class_uid: str,
        sop_instance_uid: str,
        event_type_id: int,
        data_set: bytes | None,
    ) -> Response:
        """N-EVENT-REPORT (PS3.7 10.1.1)."""
        fields = self._n_fields(
            CommandField.N_EVENT_REPORT_RQ,
            sop_class_uid,
            sop_instance_uid,
            event_type_id=event_type_id,
        )
        return self.send_request(context, fields, data_set)

    async def n_event_report_async(
        self,
        context: PresentationContext,
        sop_class_uid: str,
        sop_instance_uid: str,
        event_type_id: int,
        data_set: bytes | None,
    ) -> Response:
        fields = self._n_fields(
            CommandField.N_EVENT_REPORT_RQ,
            sop_class_uid,
            sop_instance_uid,
            event_type_id=event_type_id,
        )
        return await self.send_request_async(context, fields, data_set)

    def n_action(
        self,
        context: PresentationContext,
        sop_class_uid: str,
        sop_instance_uid: str,
        action_type_id: int,
        data_set: bytes | None,
    ) -> Response:
        """N-ACTION (PS3.7 10.1.4)."""
        fields = self._n_fields(
            CommandField.N_ACTION_RQ,
            sop_class_uid,
            sop_instance_uid,
            action_type_id=action_type_id,
        )
        return self.send_request(context, fields, data_set)

    async def n_action_async(
        self,
        context: PresentationContext,
        sop_class_uid: str,
        sop_instance_uid: str,
        action_type_id: int,
        data_set: bytes | None,
    ) -> Response:
        fields = self._n_fields(
            CommandField.N_ACTION_RQ,
            sop_class_uid,
            sop_instance_uid,
            action_type_id=action_type_id,
        )
        return await self.send_request_async(context, fields, data_set)

    def c_cancel(self, context: PresentationContext, message_id: int) -> None:
        """C-CANCEL-RQ (PS3.7 9.3.2.3) of this side's request `message_id` (sent from a
        thread other than the one waiting in send_request)."""
        self._engine.check_not_loop_thread("Association.c_cancel")
        command = encode_command(request(CommandField.C_CANCEL_RQ, message_id), has_data_set=False)
        try:
            self._send_from_thread(context.id, command, None)
        except _Lost:
            log.debug("%r: C-CANCEL not sent: lost", self)

    # ------------------------------------------------------------------ release and abort

    def release(self, timeout: float | None = None) -> None:
        """A-RELEASE (PS3.8 7.2): wait for the peer's A-RELEASE-RP and the close (release
        collision handled, 9.2.1.2); A-ABORT after `timeout` (`acse_timeout` by default)."""
        self._engine.check_not_loop_thread("Association.release")
        self._engine.run(self.release_async(timeout))

    async def release_async(self, timeout: float | None = None) -> None:
        wait = self._settings.acse_timeout if timeout is None else timeout
        if self._state == State.STA6:  # AR-1
            self._send_pdu(ReleaseRequest())
            self._state = State.STA7
        elif self._state in (State.STA1, State.STA13) and self._closed_future.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._closed_future), wait)
        except TimeoutError:
            log.warning("%r: no A-RELEASE-RP within %g s, aborting", self, wait)
            self._abort(0, 0)

    def abort(self, reason: int = 0) -> None:
        """A-ABORT, source service user (PS3.8 7.3); callable from any thread."""
        if self._engine.in_loop_thread():
            self._abort(0, reason)
        else:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                self._loop.call_soon_threadsafe(self._abort, 0, reason)

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Wait until the transport connection is closed; False on timeout."""
        self._engine.check_not_loop_thread("Association.wait_closed")
        return self._closed_event.wait(timeout)

    async def wait_closed_async(self) -> None:
        await asyncio.shield(self._closed_future)

    def _abort(self, source: int, reason: int) -> None:
        """AA-1: send A-ABORT, start ARTIM, Sta13 (PS3.8 9.2)."""
        if self._state in (State.STA1, State.STA13):
            return
        if self._transport is None:
            return
        self._send_pdu(Abort(source, reason))
        self._enter_closing()

    def _provider_abort(self, reason: int, message: str) -> None:
        """AA-8: an unexpected or invalid PDU: A-ABORT source 2 with `reason` (PS3.8 9.2)."""
        log.warning("%r: A-ABORT (reason %d): %s", self, reason, message)
        self._abort(2, reason)

    def _enter_closing(self) -> None:
        self._state = State.STA13
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self.is_requestor and not self._setup.done():
            self._setup.set_exception(
                AssociationFailed(f"association with {self.peer_address} aborted")
            )
        self._start_artim()

    # ------------------------------------------------------------------ the state machine

    def _pdu_received(self, pdu_type: int, body: memoryview) -> None:
        """An A-ASSOCIATE, A-RELEASE or A-ABORT PDU (PS3.8 Table 9-10)."""
        pdu = decode(pdu_type, body)
        if self._observer is not None:
            self._observer.pdu_received(pdu_type, len(body) + 6)
        state = self._state
        if isinstance(pdu, Abort):  # AA-3 (AA-2 in Sta2): close the transport
            self.abort_received = pdu
            log.info(
                "%r: A-ABORT from the peer (source %d, reason %d)", self, pdu.source, pdu.reason
            )
            self._state = State.STA13
            if self.is_requestor and not self._setup.done():
                self._setup.set_exception(
                    AssociationFailed(
                        f"A-ABORT from {self.peer_address} (source {pdu.source}, "
                        f"reason {pdu.reason})"
                    )
                )
            self._close()
        elif isinstance(pdu, AssociateRequest):
            if state != State.STA2:
                raise PduError(AbortReason.UNEXPECTED_PDU, f"A-ASSOCIATE-RQ in {state.name}")
            self._stop_artim()  # AE-6
            self.request = pdu
            self.calling_ae = pdu.calling_ae
            self.called_ae = pdu.called_ae
            self.peer_max_pdu = pdu.user.max_pdu_length
            self._state = State.STA3
            assert self._acceptor is not None
            self._acceptor.associate_requested(self)
        elif isinstance(pdu, AssociateAccept):
            if state != State.STA5:
                raise PduError(AbortReason.UNEXPECTED_PDU, f"A-ASSOCIATE-AC in {state.name}")
            self._stop_artim()  # AE-3
            self.accept = pdu
            self.peer_max_pdu = pdu.user.max_pdu_length
            self._set_contexts(_requestor_contexts(self.request, pdu))
            self._established()
            if self.is_requestor and not self._setup.done():
                self._setup.set_result(None)
        elif isinstance(pdu, AssociateReject):
            if state != State.STA5:
                raise PduError(AbortReason.UNEXPECTED_PDU, f"A-ASSOCIATE-RJ in {state.name}")
            self._stop_artim()  # AE-4
            self._state = State.STA13
            self._released = True
            if self.is_requestor and not self._setup.done():
                self._setup.set_exception(
                    AssociationRejected(Rejection(pdu.result, pdu.source, pdu.reason))
                )
            self._close()
        elif isinstance(pdu, ReleaseRequest):
            self._release_requested(state)
        elif isinstance(pdu, ReleaseResponse):
            self._release_response(state)

    def _release_requested(self, state: State) -> None:
        if state == State.STA6:  # AR-2 -> Sta8; our response once no request is in progress
            self._state = State.STA8
            if self._current is None and not self._queued:
                self._send_release_response()
            else:
                self._release_deferred = True
        elif state == State.STA7:  # AR-8: release collision
            if self.is_requestor:  # Sta9, answered at once (AR-9): Sta11
                self._send_pdu(ReleaseResponse())
                self._state = State.STA11
            else:
                self._state = State.STA10
        else:
            raise PduError(AbortReason.UNEXPECTED_PDU, f"A-RELEASE-RQ in {state.name}")

    def _release_response(self, state: State) -> None:
        if state == State.STA7 or state == State.STA11:  # AR-3: confirmed, close
            self._released = True
            self._state = State.STA13
            self._close()
        elif state == State.STA10:  # AR-10 -> Sta12, answered at once (AR-4)
            self._state = State.STA12
            self._send_release_response()
        else:
            raise PduError(AbortReason.UNEXPECTED_PDU, f"A-RELEASE-RP in {state.name}")

    def _send_release_response(self) -> None:
        """AR-4: send A-RELEASE-RP, start ARTIM, Sta13; the requestor closes."""
        self._send_pdu(ReleaseResponse())
        self._released = True
        self._enter_closing()

    def _close(self) -> None:
        self._stop_artim()
        if self._transport is not None:
            self._transport.close()

    def _established(self) -> None:
        self._state = State.STA6
        self._opened = True
        self._last_activity = self._loop.time()
        self._start_idle_timer()
        if self._observer is not None:
            self._observer.association_opened(self)

    # ------------------------------------------------------------------ acceptor side

    def _send_accept(self) -> None:
        """AE-7: send the A-ASSOCIATE-AC, Sta6 (loop thread; after negotiation)."""
        if self._state != State.STA3 or self.accept is None:
            return
        self._send_pdu(self.accept)
        self._established()

    def _send_reject(self, rejection: Rejection) -> None:
        """AE-8: send the A-ASSOCIATE-RJ, start ARTIM, Sta13."""
        if self._state != State.STA3:
            return
        self._send_pdu(AssociateReject(rejection.result, rejection.source, rejection.reason))
        self._released = True
        self._enter_closing()
