"""WADO-URI (PS3.18 9, formerly PS3.18 Section 6.2): one object by URL parameters.

``GET /wado?requestType=WADO&studyUID=..&seriesUID=..&objectUID=..&contentType=application/dicom``
returns the object as a single ``application/dicom`` body, through the same
retrieve service (resolution and coercion) as WADO-RS and C-GET, streamed from
its blob when it goes out as stored.

``transferSyntax`` names the syntax wanted (PS3.18 9.1.2.3.5); without it the
object goes out in Explicit VR Little Endian, the default of PS3.18.
``transferSyntax=*`` (a kuva extension, as WADO-RS has it) sends it as stored.

Not supported, and answered as such: rendered content types (image/jpeg,
image/gif, image/png, text/html ...), which are also the standard's default when
``contentType`` is absent (406 naming application/dicom as what kuva serves);
``anonymize=yes`` (400). Rendering parameters (rows, columns, region, window
centre/width, frameNumber, imageQuality, presentation state, annotation) are not
allowed with application/dicom (PS3.18 9.1.2.3) and give 400.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydicom.uid import ExplicitVRLittleEndian

from kuva.codec.outgoing import encoded
from kuva.dicomweb.media import AS_STORED, DICOM, Acceptable, NotAcceptable, dicom_transfer_syntax
from kuva.dicomweb.wado import WadoProblem, answering_problems, resolve
from kuva.model.query import QueryLevel
from kuva.model.uids import uid_problem
from kuva.services.disclosure import Interface
from kuva.services.retrieve import RetrieveService

_REQUIRED = {
    "studyUID": "StudyInstanceUID",
    "seriesUID": "SeriesInstanceUID",
    "objectUID": "SOPInstanceUID",
}
_RENDERING = (
    "annotation",
    "rows",
    "columns",
    "region",
    "windowCenter",
    "windowWidth",
    "frameNumber",
    "imageQuality",
    "presentationUID",
    "presentationSeriesUID",
)


def _content_types(value: str | None) -> list[str]:
    if value is None:
        return []
    return [item.split(";")[0].strip().lower() for item in value.split(",") if item.strip()]


def _check(request: Request) -> dict[str, str]:
    params = request.query_params
    if params.get("requestType") != "WADO":
        raise WadoProblem(400, "Bad Request", "requestType must be WADO", "requestType")
    keys: dict[str, str] = {}
    for name, keyword in _REQUIRED.items():
        value = params.get(name)
        if not value:
            raise WadoProblem(400, "Bad Request", f"{name} is required", name)
        problem = uid_problem(value)
        if problem is not None:
            raise WadoProblem(400, "Bad Request", f"{name} malformed: {problem}", name)
        keys[keyword] = value
    types = _content_types(params.get("contentType"))
    if DICOM not in types and "*/*" not in types:
        raise WadoProblem(
            406,
            "Not Acceptable",
            "kuva serves contentType=application/dicom only; rendered images "
            "(the default when contentType is absent) are not supported",
            "contentType",
        )
    if params.get("anonymize") == "yes":
        raise WadoProblem(400, "Bad Request", "anonymize=yes is not supported", "anonymize")
    for name in _RENDERING:
        if name in params:
            raise WadoProblem(
                400, "Bad Request", f"{name} is not allowed with application/dicom", name
            )
    syntax = params.get("transferSyntax")
    if syntax is not None and syntax != AS_STORED and uid_problem(syntax) is not None:
        raise WadoProblem(400, "Bad Request", "transferSyntax is not a UID", "transferSyntax")
    return keys


def wado_uri_router(retrieve: RetrieveService) -> APIRouter:
    router = APIRouter()

    @router.get("/wado")
    @answering_problems
    def wado(request: Request) -> Response:
        keys = _check(request)
        instance = resolve(retrieve, request, QueryLevel.IMAGE, keys, Interface.WADO_URI)[0]
        wanted = request.query_params.get("transferSyntax") or ExplicitVRLittleEndian
        try:
            target = dicom_transfer_syntax(
                instance.transfer_syntax_uid, [Acceptable(DICOM, DICOM, wanted, 1.0)]
            )
        except NotAcceptable as exc:
            raise WadoProblem(406, "Not Acceptable", str(exc), "transferSyntax") from exc
        chunks, length = encoded(retrieve.open(instance), target)
        return StreamingResponse(
            chunks,
            media_type=DICOM,
            headers={
                "Content-Length": str(length),
                "Content-Disposition": f'attachment; filename="{instance.sop_instance_uid}.dcm"',
            },
        )

    return router
