"""The audit trail of an HTTP request: the trail the composition root put in
``app.state.audit`` (None: the application was built without one, nothing is
audited) and who made the request, as its audit messages name it
(services.audit ``Requester``: the organisation it acts for, kuva.web.identity, and
the client's IP address)."""

from __future__ import annotations

from starlette.requests import HTTPConnection

from kuva.services.audit import AuditTrail, Requester
from kuva.web.identity import client_organization


def audit_of(request: HTTPConnection) -> AuditTrail | None:
    trail = getattr(request.app.state, "audit", None)
    return trail if isinstance(trail, AuditTrail) else None


def requester(request: HTTPConnection) -> Requester:
    return Requester(
        organization=client_organization(request),
        address=request.client.host if request.client is not None else "",
    )


def request_target(request: HTTPConnection) -> str:
    """The request's path and query string as received (RFC 9112 origin-form)."""
    path = request.scope.get("raw_path")
    text = path.decode("latin-1") if isinstance(path, bytes) else request.url.path
    query = request.scope.get("query_string", b"")
    if query:
        text += "?" + (query.decode("latin-1") if isinstance(query, bytes) else str(query))
    return text
