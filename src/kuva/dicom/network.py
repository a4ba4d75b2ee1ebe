"""Socket settings for every DICOM connection, ours and outgoing.

TCP_NODELAY: without it each small DIMSE message waits on Nagle's algorithm and
delayed ACKs (40-90 ms a C-STORE on loopback).

With TLS (PS3.15 B.1) the listener's handshake runs in each connection's own
thread, not in the accepting one as in pynetdicom (a silent client would stop
every other from connecting), and a failed handshake is reported
(``AssociationServer.on_handshake_failed``) instead of passing unnoticed.
"""

from __future__ import annotations

import contextlib
import copy
import socket
import ssl
from collections.abc import Callable, Iterator
from typing import Any

from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import ThreadedAssociationServer

from kuva.tls import failure_reason, handshake, wrap_accepted


def set_nodelay(sock: Any) -> None:
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def set_nodelay_handler(event: Event) -> None:
    """EVT_CONN_OPEN handler for associations kuva requests."""
    dul_socket = getattr(event.assoc.dul, "socket", None)
    set_nodelay(getattr(dul_socket, "socket", None))


class _SupportedContexts(list[PresentationContext]):
    """The server's presentation contexts, copied cheaply for each association.

    pynetdicom deep-copies the server's contexts for every association it accepts
    (``RequestHandler._create_association``). With every storage SOP class and
    transfer syntax kuva supports (178 contexts, 4,606 transfer syntaxes) that
    took 48 ms an association, before the first byte was answered. The copy only
    needs new context objects with their own transfer syntax lists: the UIDs in
    them are immutable strings and can be shared.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> list[PresentationContext]:
        copies: list[PresentationContext] = []
        for context in self:
            twin = copy.copy(context)
            twin._transfer_syntax = list(context._transfer_syntax)
            copies.append(twin)
        return copies


class AssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with TCP_NODELAY on every accepted socket,
    contexts that are cheap to copy per association, and the TLS handshake (when
    an ``ssl_context`` is set) in the connection's thread."""

    # Called with the peer's IP address and why, when a TLS handshake fails.
    on_handshake_failed: Callable[[str, str], None] | None = None
    handshake_seconds: float = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.contexts = _SupportedContexts(self.contexts)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        sock, address = self.socket.accept()
        set_nodelay(sock)
        if self.ssl_context:
            sock = wrap_accepted(self.ssl_context, sock)
        return sock, address

    def process_request_thread(
        self,
        request: socket.socket | tuple[bytes, socket.socket],
        client_address: tuple[str, int] | str,
    ) -> None:
        if isinstance(request, ssl.SSLSocket):
            try:
                handshake(request, self.handshake_seconds)
            except OSError as exc:
                host = client_address[0] if isinstance(client_address, tuple) else client_address
                if self.on_handshake_failed is not None:
                    self.on_handshake_failed(str(host), failure_reason(exc))
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)


# pynetdicom's DUL thread sleeps this long whenever it finds nothing to do (its
# ``_run_loop_delay``, 1 ms by default). While kuva streams sub-operations, each
# C-STORE waits for the peer's response, which the DUL notices only after its
# sleep: a millisecond or more lost per object. Polled ten times as often while
# a retrieve runs, and put back after, so idle associations cost no more CPU.
BUSY_LOOP_DELAY = 0.0001


@contextlib.contextmanager
def busy_polling(*associations: Any) -> Iterator[None]:
    """Let the associations' DUL threads poll every BUSY_LOOP_DELAY meanwhile."""
    saved = []
    for assoc in dict.fromkeys(associations):
        dul = getattr(assoc, "dul", None)
        if dul is not None and hasattr(dul, "_run_loop_delay"):
            saved.append((dul, dul._run_loop_delay))
            dul._run_loop_delay = BUSY_LOOP_DELAY
    try:
        yield
    finally:
        for dul, delay in saved:
            dul._run_loop_delay = delay
