"""WADO-RS metadata (PS3.18 10.4.1.1.2): DICOM JSON of stored instances, from the index.

Answered from the DICOM JSON the index keeps for each instance; no blob is read.
The answer is streamed as a JSON array, one instance at a time, so a study of
thousands of instances is never built whole in memory. Bulk data elements carry a
BulkDataURI under the instance (``.../bulk/<tag>``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from kuva.dicomweb.qido import DICOM_JSON
from kuva.dicomweb.urls import dicomweb_root
from kuva.model.access import AccessScope
from kuva.model.query import QueryLevel, QueryResult
from kuva.services.audit import audit_failed
from kuva.services.disclosure import Interface
from kuva.services.query import FindRequest, QueryService
from kuva.web.auditing import audit_of
from kuva.web.identity import request_scope
from kuva.web.problem import problem

log = logging.getLogger(__name__)

_KEYS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def instance_json(result: QueryResult, base: str) -> dict[str, Any]:
    """The instance's DICOM JSON with its bulk data references made into URLs."""
    values = result.values
    url = (
        f"{base}/studies/{values['StudyInstanceUID']}/series/{values['SeriesInstanceUID']}"
        f"/instances/{values['SOPInstanceUID']}"
    )
    return _with_bulk_urls(result.dataset_json or {}, url)


def _with_bulk_urls(dataset: dict[str, Any], url: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for tag, element in dataset.items():
        uri = element.get("BulkDataURI")
        if isinstance(uri, str) and uri.startswith("bulk:"):
            element = {**element, "BulkDataURI": f"{url}/bulk/{uri.removeprefix('bulk:')}"}
        elif element.get("vr") == "SQ" and element.get("Value"):
            element = {
                **element,
                "Value": [_with_bulk_urls(item, url) for item in element["Value"]],
            }
        out[tag] = element
    return out


def _audit_if_withheld(
    request: Request, query: QueryService, find: FindRequest, scope: AccessScope
) -> None:
    """A 404 for instances that exist but the access rules withhold: audited as a
    refused access (110113 / 110132), as the WADO-RS resources are."""
    probe = query.find(find, interface=None)  # no interface: nothing is handed out
    try:
        exists = next(probe, None) is not None
    finally:
        probe.close()
    audit = audit_of(request)
    if not exists or audit is None:
        return
    what = "/".join(value for value in find.keys.values() if isinstance(value, str))
    try:
        audit.access_refused(
            scope.organization or "",
            what[:256],
            "WADO-RS: the access rules do not allow these objects to be read",
        )
    except Exception as exc:
        audit_failed(log, "a refused WADO-RS metadata request", exc)


def metadata_router(query: QueryService) -> APIRouter:
    router = APIRouter()

    def answer(request: Request, keys: dict[str, str]) -> Response:
        find = FindRequest(level=QueryLevel.IMAGE, keys=keys, return_keys=_KEYS)
        scope = request_scope(request)
        results = query.find(find, with_json=True, scope=scope, interface=Interface.WADO_RS)
        first = next(results, None)
        if first is None:
            results.close()
            if scope is not None and not scope.unrestricted:
                _audit_if_withheld(request, query, find, scope)
            return problem(404, "Not Found", "no such instances")
        base = dicomweb_root(request)

        def body() -> Iterator[bytes]:
            try:
                yield b"[" + json.dumps(instance_json(first, base)).encode()
                for result in results:
                    yield b"," + json.dumps(instance_json(result, base)).encode()
                yield b"]"
            finally:
                results.close()

        return StreamingResponse(body(), media_type=DICOM_JSON)

    @router.get("/studies/{study}/metadata")
    def study_metadata(request: Request, study: str) -> Response:
        return answer(request, {"StudyInstanceUID": study})

    @router.get("/studies/{study}/series/{series}/metadata")
    def series_metadata(request: Request, study: str, series: str) -> Response:
        return answer(request, {"StudyInstanceUID": study, "SeriesInstanceUID": series})

    @router.get("/studies/{study}/series/{series}/instances/{instance}/metadata")
    def instance_metadata(request: Request, study: str, series: str, instance: str) -> Response:
        return answer(
            request,
            {"StudyInstanceUID": study, "SeriesInstanceUID": series, "SOPInstanceUID": instance},
        )

    return router
