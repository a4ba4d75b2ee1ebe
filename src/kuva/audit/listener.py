"""A syslog listener for customers' ATNA Export messages (``[audit] listen``).

Customers' audit systems send their DICOM Audit Messages as RFC 5424 syslog
messages (IHE ITI-20): over UDP one message per datagram (RFC 5426), over TLS
octet-counted frames ``MSG-LEN SP SYSLOG-MSG`` (RFC 5425 4.3). The MSG is the
AuditMessage XML (after a BOM, RFC 5424 6.4). Each successful Export (110106)
becomes a disclosure-log record (kuva.audit.export, services.notices); every other
message is ignored.

Syslog has no reply, so a message that cannot be used is logged (WARNING, no
patient data) and dropped; the listener never stops on bad input. Which register
holder reported it: syslog carries no organisation, so it is the message's
AuditEnterpriseSiteID (``urn:oid:`` dropped), which must be an OID and, when
``[[organizations]]`` are configured, one of them. A TLS listener requires a client
certificate of ``[audit] ca_file`` (ATNA node authentication), so only known nodes
can report; a UDP listener trusts its network - bind it to one that only
customers' audit systems reach.

A repeated message (the same bytes, e.g. a UDP retransmission by a relay) is
recorded once (its digest is its notice id).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

from kuva.audit import export
from kuva.config import AuditSettings, syslog_address
from kuva.model.clock import Clock, utcnow
from kuva.model.uids import is_valid_uid
from kuva.services.notices import NoticeService

log = logging.getLogger(__name__)

BOM = b"\xef\xbb\xbf"
MAX_DATAGRAM = 65535
MAX_CONNECTIONS = 32
IDLE_SECONDS = 60.0
_POLL_SECONDS = 0.2


def syslog_msg(data: bytes) -> bytes:
    """The MSG part of an RFC 5424 message (after the BOM when there is one); for
    another form (RFC 3164), what follows the first ``<`` after the PRI."""
    bom = data.find(BOM)
    if bom >= 0:
        return data[bom + len(BOM) :]
    if data.startswith(b"<") and b">1 " in data[:6]:
        # HEADER: PRI VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID, then SD.
        parts = data.split(b" ", 6)
        if len(parts) == 7:
            rest = parts[6]
            if rest.startswith(b"-"):
                return rest[1:].lstrip(b" ")
            end = _structured_data_end(rest)
            if end is not None:
                return rest[end:].lstrip(b" ")
    start = data.find(b"<", 1)
    return data[start:] if start >= 0 else b""


def _structured_data_end(rest: bytes) -> int | None:
    """The offset after the SD-ELEMENTs at the start of ``rest`` (RFC 5424 6.3),
    honouring ``\\]`` escapes in PARAM-VALUEs."""
    position = 0
    while position < len(rest) and rest[position : position + 1] == b"[":
        position += 1
        in_value = False
        while position < len(rest):
            char = rest[position : position + 1]
            if char == b"\\" and in_value:
                position += 2
                continue
            if char == b'"':
                in_value = not in_value
            elif char == b"]" and not in_value:
                position += 1
                break
            position += 1
        else:
            return None
    return position


class ExportReceiver:
    """Records the Export messages that arrive by syslog."""

    def __init__(
        self,
        service: NoticeService,
        organizations: Callable[[], Iterable[str]],
        *,
        clock: Clock = utcnow,
    ) -> None:
        """``organizations``: the OIDs in the directory now (none: any reporter)."""
        self._service = service
        self._organizations = organizations
        self._clock = clock

    def receive(self, data: bytes, peer: str) -> int:
        """Record the Export in one syslog message; the records added (0 when it was
        ignored, refused or known). Never raises."""
        try:
            return self._receive(data, peer)
        except Exception as exc:  # the listener survives anything, the index down too
            log.error("syslog message from %s not recorded: %s", peer, type(exc).__name__)
            log.debug("syslog message failure", exc_info=True)
            return 0

    def _receive(self, data: bytes, peer: str) -> int:
        try:
            parsed = export.parse(syslog_msg(data), self._clock())
        except (export.MalformedMessage, export.UnusableExport) as exc:
            log.warning("syslog message from %s dropped: %s", peer, exc)
            return 0
        if isinstance(parsed, export.Ignored):
            log.debug("syslog message from %s ignored: %s", peer, parsed.reason)
            return 0
        reporter = export.strip_urn_oid(parsed.enterprise_site_id)
        known = frozenset(self._organizations())
        if not is_valid_uid(reporter) or (known and reporter not in known):
            log.warning(
                "Export from %s dropped: AuditEnterpriseSiteID %r is not a configured "
                "organisation's OID",
                peer,
                reporter[:70],
            )
            return 0
        (outcome,) = self._service.record([parsed.reported_by(reporter)])
        return outcome.records if outcome.created else 0


def _server_context(settings: AuditSettings) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=_path(settings.ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(_path(settings.cert_file) or "", _path(settings.key_file))
    return context


def _path(path: Path | None) -> str | None:
    return str(path) if path is not None else None


class SyslogListener:
    """The listeners of ``[audit] listen``, each on a thread of its own."""

    def __init__(self, settings: AuditSettings, receive: Callable[[bytes, str], int]) -> None:
        self._settings = settings
        self._receive = receive
        self._max = settings.listen_max_bytes
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.addresses: list[tuple[str, str, int]] = []

    def start(self) -> list[tuple[str, str, int]]:
        """Bind every listener; (scheme, host, port) of each, as bound."""
        for address in self._settings.listen:
            scheme, host, port = syslog_address(address)
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            if scheme == "udp":
                sock = socket.socket(family, socket.SOCK_DGRAM)
                sock.bind((host, port))
                target: Callable[[socket.socket], None] = self._serve_udp
            else:
                sock = socket.socket(family, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, port))
                sock.listen(MAX_CONNECTIONS)
                target = partial(self._serve_tls, context=_server_context(self._settings))
            sock.settimeout(_POLL_SECONDS)
            self._sockets.append(sock)
            bound = (scheme, host, int(sock.getsockname()[1]))
            self.addresses.append(bound)
            thread = threading.Thread(
                target=target, args=(sock,), name=f"kuva-syslog-{scheme}", daemon=True
            )
            self._threads.append(thread)
            thread.start()
        return self.addresses

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        for sock in self._sockets:
            sock.close()

    def _serve_udp(self, sock: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                data, peer = sock.recvfrom(MAX_DATAGRAM)
            except TimeoutError:
                continue
            except OSError as exc:
                log.error("syslog UDP listener: %s", exc)
                continue
            self._receive(data, f"udp:{peer[0]}")

    def _serve_tls(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        while not self._stop.is_set():
            try:
                raw, peer = sock.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                log.error("syslog TLS listener: %s", exc)
                continue
            if not self._slots.acquire(blocking=False):
                log.warning("syslog TLS connection from %s refused: too many", peer[0])
                raw.close()
                continue
            threading.Thread(
                target=self._connection, args=(raw, context, peer[0]), daemon=True
            ).start()

    def _connection(self, raw: socket.socket, context: ssl.SSLContext, peer: str) -> None:
        try:
            raw.settimeout(IDLE_SECONDS)
            with context.wrap_socket(raw, server_side=True) as tls:
                reader = tls.makefile("rb")
                while not self._stop.is_set():
                    frame = self._frame(reader, peer)
                    if frame is None:
                        break
                    self._receive(frame, f"tls:{peer}")
        except (OSError, ssl.SSLError) as exc:
            log.warning("syslog TLS connection from %s: %s", peer, exc)
        finally:
            with contextlib.suppress(OSError):
                raw.close()
            self._slots.release()

    def _frame(self, reader: Any, peer: str) -> bytes | None:
        """One octet-counted frame (RFC 5425 4.3), None at the end of the stream or
        on a bad frame (which ends the connection: its framing is lost)."""
        length = b""
        while True:
            char = reader.read(1)
            if not char:
                return None
            if char == b" ":
                break
            if not char.isdigit() or len(length) >= 10:
                log.warning("syslog TLS connection from %s: not an octet-counted frame", peer)
                return None
            length += char
        size = int(length or b"0")
        if size == 0 or size > self._max:
            log.warning("syslog TLS frame from %s of %d bytes refused", peer, size)
            return None
        data: bytes = reader.read(size)
        return data if len(data) == size else None
