"""The MLLP listener on ``[hl7] host:port``: one thread per connection, each frame
answered with its ACK (kuva.hl7.adt) before the next is read. Garbage between frames
is dropped and logged; a frame past ``[hl7] max_message_bytes`` closes the
connection; nothing a peer sends stops the listener.

With ``[hl7] tls``: MLLP over TLS 1.2+ (IHE ITI-19 Authenticate Node), a client certificate
verified against ``[tls] ca_file`` and belonging to an organisation
(services.authentication) required. The handshake runs in the connection's
thread; a failed one, or a certificate of no organisation, closes the connection
before any message is read, and is audited. The certificate's organisation is the
one every message on the connection must name in MSH-4 (services.patients)."""

from __future__ import annotations

import logging
import socket
import socketserver
import ssl
import threading
from functools import partial

from kuva.config import Settings
from kuva.hl7 import adt
from kuva.hl7.mllp import FrameTooLong, MllpFramer, frame
from kuva.services.authentication import NodeAuthentication
from kuva.services.patients import PatientService
from kuva.tls import failure_reason, handshake, peer_subject, server_context, wrap_accepted

log = logging.getLogger(__name__)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        service: PatientService,
        settings: Settings,
        authentication: NodeAuthentication,
    ):
        self.service = service
        self.max_bytes = settings.hl7.max_message_bytes
        self.idle_seconds = settings.hl7.idle_seconds
        self.handshake_seconds = settings.tls.handshake_seconds
        self.authentication = authentication
        self.ssl_context = server_context(settings.tls) if settings.hl7.tls else None
        super().__init__(address, _Connection)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        sock, address = super().get_request()
        if self.ssl_context is not None:
            # Handshake in the connection's thread (_Connection.setup), not here.
            sock = wrap_accepted(self.ssl_context, sock)
        return sock, address


class _Connection(socketserver.BaseRequestHandler):
    server: _Server

    # The organisation of the client certificate (``[hl7] tls``), None without TLS.
    organization: str | None = None

    def _authenticated(self, sock: ssl.SSLSocket) -> str | None:
        """The certificate's organisation, once the TLS handshake is done; None when
        refused (audited)."""
        address = str(self.client_address[0])
        auth = self.server.authentication
        try:
            handshake(sock, self.server.handshake_seconds)
        except OSError as exc:
            auth.refused("hl7", address, failure_reason(exc))
            return None
        return auth.authenticate("hl7", address, peer_subject(sock.getpeercert()))

    def handle(self) -> None:
        sock: socket.socket = self.request
        if isinstance(sock, ssl.SSLSocket):
            self.organization = self._authenticated(sock)
            if self.organization is None:
                return  # socketserver shuts the connection down
        sock.settimeout(self.server.idle_seconds)
        peer = f"{self.client_address[0]}:{self.client_address[1]}"
        framer = MllpFramer(self.server.max_bytes)
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                garbage = framer.garbage
                for message in framer.feed(data):
                    sock.sendall(frame(self._answer(message)))
                if framer.garbage > garbage:
                    log.warning(
                        "HL7 %s: %d byte(s) outside MLLP frames dropped",
                        peer,
                        framer.garbage - garbage,
                    )
        except FrameTooLong as exc:
            log.warning("HL7 %s: %s; connection closed", peer, exc)
        except (TimeoutError, OSError) as exc:
            log.info("HL7 %s: connection ended (%s)", peer, type(exc).__name__)

    def _answer(self, message: bytes) -> bytes:
        try:
            return adt.handle(
                message,
                partial(
                    self.server.service.handle,
                    certified=self.organization,
                    address=str(self.client_address[0]),
                ),
            )
        except Exception:
            log.exception("HL7: could not handle a message")
            return adt.ack(
                None, "AE", error=("207", "MSH^1", "application internal error")
            ).encode()


class Hl7Server:
    def __init__(
        self,
        settings: Settings,
        service: PatientService,
        authentication: NodeAuthentication | None = None,
    ) -> None:
        self._settings = settings
        self._service = service
        self._authentication = authentication or NodeAuthentication(settings)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> tuple[str, int]:
        address = (self._settings.hl7.host, self._settings.hl7.port)
        self._server = _Server(address, self._service, self._settings, self._authentication)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="kuva-hl7", daemon=True
        )
        self._thread.start()
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
