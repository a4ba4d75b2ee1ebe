"""The HTTP side of the per-organisation limits (services.limits): ASGI middleware
that runs before any route.

- Requests per second: over it, HTTP 429 Too Many Requests with ``Retry-After``
  (RFC 6585 4; RFC 9110 10.2.3, whole seconds) and a JSON problem, or a SOAP 1.2
  ``Receiver`` fault with the same status and header on the XDS endpoints.
- Bytes of one STOW-RS (``POST /dicom-web/studies``) or ITI-41 (``POST
  /xds/repository``) request: a Content-Length above the limit is answered 413 at
  once, nothing read. A body without one (chunked) is counted while the route reads
  it; at the limit the route's reading fails and 413 is answered. ITI-41 reads its
  whole body before it stores anything, so nothing of it is kept; STOW-RS stores
  each part when it ends, so the parts that ended before the limit are kept, as
  the problem's detail says (they can be found by QIDO-RS).

``/healthz`` and ``/metrics`` name no organisation and are never limited.
"""

from __future__ import annotations

import logging
import math

from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kuva.services.limits import OrganizationLimiter
from kuva.web.identity import client_organization
from kuva.web.problem import problem
from kuva.xds.soap import DetailedFault, fault_reply

log = logging.getLogger(__name__)

OPEN_PATHS = ("/healthz", "/metrics")
_SIZED = ("/dicom-web/studies", "/xds/repository")


class _TooLarge(Exception):
    pass


def _sized(scope: Scope) -> bool:
    path: str = scope["path"]
    return scope["method"] == "POST" and any(
        path == prefix or path.startswith(prefix + "/") for prefix in _SIZED
    )


def _busy(path: str, status: int, reason: str, headers: dict[str, str]) -> Response:
    if path.startswith("/xds/"):
        reply = fault_reply(DetailedFault("Receiver", reason, http_status=status))
        response = Response(reply.body, status_code=status, media_type=reply.content_type)
    else:
        title = "Too Many Requests" if status == 429 else "Content Too Large"
        response = problem(status, title, reason)
    response.headers.update(headers)
    return response


class OrganizationLimitGuard:
    """ASGI middleware enforcing the limits of the organisation a request acts for."""

    def __init__(self, app: ASGIApp, limiter: OrganizationLimiter) -> None:
        self.app = app
        self._limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        organization = client_organization(HTTPConnection(scope))
        path: str = scope["path"]
        wait = self._limiter.request(organization, "http")
        if wait:
            seconds = max(1, math.ceil(wait))
            reason = f"organisation {organization} is over its requests per second"
            log.warning("HTTP %s %s refused: %s", scope["method"], path, reason)
            response = _busy(path, 429, reason, {"retry-after": str(seconds)})
            await response(scope, receive, send)
            return
        limit = self._limiter.request_bytes(organization) if _sized(scope) else None
        if limit is None:
            await self.app(scope, receive, send)
            return
        declared = HTTPConnection(scope).headers.get("content-length", "").strip()
        if declared.isdigit() and int(declared) > limit:
            await self._too_large(scope, receive, send, organization, limit, read=False)
            return
        await self._counted(scope, receive, send, organization, limit)

    async def _counted(
        self, scope: Scope, receive: Receive, send: Send, organization: str | None, limit: int
    ) -> None:
        received = 0
        started = False

        async def counting() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge
            return message

        async def sending(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting, sending)
        except _TooLarge:
            if started:
                raise
            await self._too_large(scope, receive, send, organization, limit, read=True)

    async def _too_large(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        organization: str | None,
        limit: int,
        *,
        read: bool,
    ) -> None:
        self._limiter.too_large(organization)
        path: str = scope["path"]
        reason = f"the request is larger than organisation {organization}'s limit of {limit} bytes"
        if read and path.startswith("/dicom-web/"):
            reason += "; parts that ended before the limit were stored (find them by QIDO-RS)"
        log.warning("HTTP %s %s refused: %s", scope["method"], path, reason)
        response = _busy(path, 413, reason, {"connection": "close"})
        await response(scope, receive, send)
