"""The HTTP side of an organisation's state (services.directory): a request acting
for a suspended or terminated organisation is refused before any route runs, with
the protocol's error: a SOAP 1.2 Sender fault on the XDS endpoints (``/xds/``), a
403 problem (RFC 9457) elsewhere. ``/healthz`` and ``/metrics`` name no
organisation and are never refused. (A testing organisation is served; what it may
archive is the ingest's and the registry's to decide.)"""

from __future__ import annotations

import logging
from collections.abc import Callable

from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from kuva.model.directory import OrganizationState
from kuva.web.identity import client_organization
from kuva.web.problem import problem
from kuva.xds.messages import SoapFault
from kuva.xds.soap import fault_reply

log = logging.getLogger(__name__)

REFUSED_STATES = (OrganizationState.SUSPENDED, OrganizationState.TERMINATED)
OPEN_PATHS = ("/healthz", "/metrics")


class OrganizationStateGuard:
    """ASGI middleware: ``state_of`` gives an organisation's state now."""

    def __init__(self, app: ASGIApp, state_of: Callable[[str | None], OrganizationState]) -> None:
        self.app = app
        self._state_of = state_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        organization = client_organization(HTTPConnection(scope))
        state = self._state_of(organization)
        if state not in REFUSED_STATES:
            await self.app(scope, receive, send)
            return
        reason = f"organisation {organization} {state}"
        log.warning("HTTP %s %s refused: %s", scope["method"], scope["path"], reason)
        response: Response
        if scope["path"].startswith("/xds/"):
            reply = fault_reply(SoapFault("Sender", reason))
            response = Response(reply.body, status_code=reply.status, media_type=reply.content_type)
        else:
            response = problem(403, "Forbidden", reason)
        await response(scope, receive, send)
