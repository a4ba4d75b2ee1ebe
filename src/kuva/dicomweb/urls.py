"""The URLs kuva puts in its answers (RetrieveURL, BulkDataURI, PS3.18 F.2.6).

Behind a reverse proxy, or for clients that send a Host header without the port
(dicomweb-client does), the request alone does not tell the URL clients reach
kuva at: ``[http] base_url`` names it. Without it the request's own URL is used.
"""

from __future__ import annotations

from starlette.requests import Request

ROOT = "/dicom-web"


def dicomweb_root(request: Request) -> str:
    """The absolute URL of the DICOMweb root, without a trailing slash."""
    configured: str = getattr(request.app.state, "public_base_url", "") or ""
    base = configured or str(request.base_url)
    return base.rstrip("/") + ROOT
