"""The HTTP side of an organisation's state (services.directory): a request acting
for a suspended or terminated organisation is refused before any route runs, with
the protocol's error: a SOAP 1.2 Sender fault on the XDS endpoints (``/xds/``), a
403 problem (RFC 9457) elsewhere, and audited as a refused access (110113 /
110132, as a refused DICOM association is). ``/healthz`` and ``/metrics`` name no
organisation and are never refused. An XDS request's verified XUA user is judged
by its own organisation too, after the assertion is verified (kuva.xds.xua). (A
testing organisation is served; what it may archive is the ingest's and the
registry's to decide.)"""

from __future__ import annotations

import logging
from collections.abc import Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from kuva.model.directory import OrganizationState
from kuva.services.audit import AuditTrail, audit_failed
from kuva.web.identity import client_organization
from kuva.web.problem import problem
from kuva.xds.messages import SoapFault
from kuva.xds.soap import fault_reply

log = logging.getLogger(__name__)

OPEN_PATHS = ("/healthz", "/metrics")


class OrganizationStateGuard:
    """ASGI middleware: ``state_of`` gives an organisation's state now."""

    def __init__(
        self,
        app: ASGIApp,
        state_of: Callable[[str | None], OrganizationState],
        audit: AuditTrail | None = None,
    ) -> None:
        self.app = app
        self._state_of = state_of
        self._audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        organization = client_organization(HTTPConnection(scope))
        state = self._state_of(organization)
        if not state.refused:
            await self.app(scope, receive, send)
            return
        reason = f"organisation {organization} {state}"
        log.warning("HTTP %s %s refused: %s", scope["method"], scope["path"], reason)
        if self._audit is not None:
            try:
                await run_in_threadpool(
                    self._audit.access_refused,
                    organization or "",
                    f"{scope['method']} {scope['path']}"[:256],
                    f"HTTP: {reason}",
                )
            except Exception as exc:
                audit_failed(log, "a refused HTTP request", exc)
        response: Response
        if scope["path"].startswith("/xds/"):
            reply = fault_reply(SoapFault("Sender", reason))
            response = Response(reply.body, status_code=reply.status, media_type=reply.content_type)
        else:
            response = problem(403, "Forbidden", reason)
        await response(scope, receive, send)
