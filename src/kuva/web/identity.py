"""Who an HTTP request comes from: the organisation (register holder) it acts for.

One function answers it for every HTTP adapter (DICOMweb, WADO-URI, the XDS SOAP
endpoints, the admin API), so the rule of how a client is identified lives here:

1. Mutual TLS: the organisation the client certificate's subject maps to, put in the
   ASGI scope under ``SCOPE_KEY`` by the TLS layer (kuva.web.tls) when the
   connection was accepted; a certificate of no organisation never gets this far.
2. Otherwise (plain HTTP: the embedded default and tests) the organisation set for
   every HTTP client, ``[http] organization`` (``Settings.http_organization``), kept
   in ``app.state.default_organization`` by the composition root.
3. Neither: None - the request acts for no known organisation.
"""

from __future__ import annotations

from starlette.requests import HTTPConnection

from kuva.model.access import AccessScope
from kuva.services.access import AccessPolicy

SCOPE_KEY = "kuva.organization"


def client_organization(request: HTTPConnection) -> str | None:
    """The organisation ``request`` acts for, or None when it is unknown."""
    authenticated = request.scope.get(SCOPE_KEY)
    if authenticated:
        return str(authenticated)
    default = getattr(request.app.state, "default_organization", None)
    return str(default) if default else None


def request_scope(request: HTTPConnection) -> AccessScope | None:
    """What ``request`` may read (services.access): the scope of its organisation
    under the access policy in ``app.state.access``; None (everything) when the
    application was built without one."""
    policy: AccessPolicy | None = getattr(request.app.state, "access", None)
    if policy is None:
        return None
    return policy.scope(client_organization(request))
