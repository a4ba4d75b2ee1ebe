"""Socket settings for every DICOM connection, ours and outgoing.

TCP_NODELAY: without it each small DIMSE message waits on Nagle's algorithm and
delayed ACKs (40-90 ms a C-STORE on loopback).
"""

from __future__ import annotations

import contextlib
import copy
import socket
from collections.abc import Iterator
from typing import Any

from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import ThreadedAssociationServer


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
    and contexts that are cheap to copy per association."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.contexts = _SupportedContexts(self.contexts)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        sock, address = super().get_request()
        set_nodelay(sock)
        return sock, address


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
