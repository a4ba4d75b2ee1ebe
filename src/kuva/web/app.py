"""The ASGI application on the HTTP port (docs/contract.md, "HTTP paths").

DICOMweb lives under ``/dicom-web`` (kuva.dicomweb). ``/healthz`` answers 200
when the index and the blob store answer, 503 with a JSON problem body otherwise;
``/metrics`` is the Prometheus text format.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import APIRouter, FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kuva import __version__
from kuva.metrics import REGISTRY

log = logging.getLogger(__name__)


def create_app(
    health_checks: dict[str, Callable[[], None]],
    refresh_metrics: Callable[[], None] | None = None,
    routers: list[tuple[str, APIRouter]] | None = None,
) -> FastAPI:
    app = FastAPI(title="kuva", version=__version__, docs_url=None, redoc_url=None)
    for prefix, router in routers or []:
        app.include_router(router, prefix=prefix)

    @app.get("/healthz")
    def healthz() -> Response:
        problems: dict[str, str] = {}
        for name, check in health_checks.items():
            try:
                check()
            except Exception as exc:
                log.error("health check %s failed: %s", name, exc)
                problems[name] = f"{type(exc).__name__}: {exc}"
        if problems:
            return JSONResponse(
                status_code=503,
                media_type="application/problem+json",
                content={
                    "type": "about:blank",
                    "title": "Service Unavailable",
                    "status": 503,
                    "detail": problems,
                },
            )
        return JSONResponse({"status": "ok", "checks": sorted(health_checks)})

    @app.get("/metrics")
    def metrics() -> Response:
        if refresh_metrics is not None:
            try:
                refresh_metrics()
            except Exception:
                log.exception("could not refresh metrics from the index")
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return app
