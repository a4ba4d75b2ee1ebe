"""Mutual TLS on the HTTP listener (``[http] tls``), in front of the ASGI application.

uvicorn terminates TLS itself when given a context, but then a failed handshake
passes unnoticed (asyncio logs it at DEBUG at most) and the peer certificate never
reaches the ASGI scope. So uvicorn gets plain TCP here, and each connection's
protocol (uvicorn's h11 one, subclassed) starts TLS itself (``loop.start_tls``,
server side, the context of kuva.tls) before it speaks HTTP:

- a failed handshake (no client certificate, an untrusted one, no TLS at all, too
  slow) closes the connection, and is logged and audited
  (services.authentication);
- a verified certificate's subject is mapped to its organisation, which every
  request of the connection carries in its scope under ``SCOPE_KEY``
  (kuva.web.identity.client_organization reads it);
- a certificate of no organisation is audited once, when the connection is
  made, and every request on it is answered 403 with a JSON problem body.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.utils import get_remote_addr

from kuva.services.authentication import NodeAuthentication
from kuva.tls import failure_reason, peer_subject
from kuva.web.identity import SCOPE_KEY

log = logging.getLogger(__name__)

Asgi = Any  # an ASGI application: async (scope, receive, send) -> None


class _Authenticated:
    """The application, with the connection's organisation in every scope."""

    def __init__(self, app: Asgi, organization: str) -> None:
        self._app = app
        self._organization = organization

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        scope[SCOPE_KEY] = self._organization
        await self._app(scope, receive, send)


class _Refused:
    """403 to every request of a connection whose certificate maps to no organisation."""

    def __init__(self, subject: str) -> None:
        self._subject = subject

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            return
        body = json.dumps(
            {
                "type": "about:blank",
                "title": "Forbidden",
                "status": 403,
                "detail": f"the client certificate ({self._subject}) belongs to no "
                "organisation of this archive",
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 403,
                "headers": [
                    (b"content-type", b"application/problem+json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class MutualTlsProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol behind a TLS handshake of its own; see the module."""

    tls_context: ssl.SSLContext
    authentication: NodeAuthentication
    handshake_seconds: float = 30.0

    _tls_ready = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        address = get_remote_addr(transport)
        host = address[0] if address else "unknown"
        self._early: list[bytes] = []
        self._handshake = self.loop.create_task(self._start_tls(transport, host))

    async def _start_tls(self, transport: asyncio.Transport, host: str) -> None:
        try:
            secure = await self.loop.start_tls(
                transport,
                self,
                self.tls_context,
                server_side=True,
                ssl_handshake_timeout=self.handshake_seconds,
            )
        except Exception as exc:
            transport.close()
            await self.loop.run_in_executor(
                None, self.authentication.refused, "http", host, failure_reason(exc)
            )
            return
        if secure is None:  # closed meanwhile
            return
        try:
            self._authenticated(secure, host)
        except Exception:
            log.exception("HTTP %s: node authentication failed; connection closed", host)
            secure.close()

    def _authenticated(self, secure: asyncio.Transport, host: str) -> None:
        """Bind the connection to the certificate's organisation, and serve it."""
        subject = peer_subject(secure.get_extra_info("peercert"))
        organization = self.authentication.organization_of(subject)
        if organization is None:
            self.app = _Refused(str(subject) if subject else "no subject")
            # Audited in a thread (an index transaction), the request answered meanwhile.
            self.loop.run_in_executor(None, self.authentication.authenticate, "http", host, subject)
        else:
            self.app = _Authenticated(self.app, organization)
        self._tls_ready = True
        super().connection_made(secure)
        early, self._early = self._early, []
        for data in early:
            super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._tls_ready:
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._tls_ready:
            super().data_received(data)
        else:  # decrypted before this connection was set up: kept for then
            self._early.append(data)


def protocol_class(
    context: ssl.SSLContext, authentication: NodeAuthentication, handshake_seconds: float
) -> type[MutualTlsProtocol]:
    """A MutualTlsProtocol bound to the listener's context and authentication, for
    ``uvicorn.Config(http=...)``."""
    return type(
        "KuvaMutualTlsProtocol",
        (MutualTlsProtocol,),
        {
            "tls_context": context,
            "authentication": authentication,
            "handshake_seconds": handshake_seconds,
        },
    )
