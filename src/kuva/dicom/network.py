"""Socket settings for every DICOM connection, ours and outgoing.

TCP_NODELAY: without it each small DIMSE message waits on Nagle's algorithm and
delayed ACKs (40-90 ms a C-STORE on loopback).
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any

from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer


def set_nodelay(sock: Any) -> None:
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def set_nodelay_handler(event: Event) -> None:
    """EVT_CONN_OPEN handler for associations kuva requests."""
    dul_socket = getattr(event.assoc.dul, "socket", None)
    set_nodelay(getattr(dul_socket, "socket", None))


class AssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with TCP_NODELAY on every accepted socket."""

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        sock, address = super().get_request()
        set_nodelay(sock)
        return sock, address
