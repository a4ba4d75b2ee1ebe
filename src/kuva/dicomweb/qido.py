"""QIDO-RS (PS3.18 10.6): search for studies, series and instances over HTTP.

The same query service as C-FIND answers: the same matching (PS3.4 C.2.2.2), from
the index alone. Responses are DICOM JSON (PS3.18 F.2) arrays. A bad parameter is
a 400 with a JSON problem body naming it (RFC 9457); an unknown study or series in
the path is a 404.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from kuva.dicomweb.urls import dicomweb_root
from kuva.model.query import QueryError, QueryLevel, QueryResult
from kuva.services.audit import audit_failed
from kuva.services.disclosure import Interface
from kuva.services.query import FindRequest, QueryService, vr_of
from kuva.web.auditing import audit_of, request_target, requester
from kuva.web.identity import request_scope
from kuva.web.problem import problem

log = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
MAX_LIMIT = 10000

# Attributes returned by default at each level (PS3.18 Tables 10.6.3-3, -4, -5),
# and at the study level SOP Classes in Study too (a column, as cheap as the rest).
STUDY_DEFAULTS = (
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "InstanceAvailability",
    "ModalitiesInStudy",
    "SOPClassesInStudy",
    "ReferringPhysicianName",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyID",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
    "StudyDescription",
)
SERIES_DEFAULTS = (
    "StudyInstanceUID",
    "Modality",
    "SeriesDescription",
    "SeriesNumber",
    "SeriesInstanceUID",
    "NumberOfSeriesRelatedInstances",
    "SeriesDate",
    "SeriesTime",
    "BodyPartExamined",
)
INSTANCE_DEFAULTS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPClassUID",
    "SOPInstanceUID",
    "InstanceAvailability",
    "InstanceNumber",
    "Rows",
    "Columns",
    "NumberOfFrames",
)
DEFAULTS = {
    QueryLevel.STUDY: STUDY_DEFAULTS,
    QueryLevel.SERIES: SERIES_DEFAULTS,
    QueryLevel.IMAGE: INSTANCE_DEFAULTS,
}
_CONTROL = {"includefield", "limit", "offset", "fuzzymatching"}
_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")


class BadParameter(Exception):
    def __init__(self, parameter: str, detail: str) -> None:
        super().__init__(detail)
        self.parameter = parameter
        self.detail = detail


def _keyword(name: str) -> str:
    """A query parameter's attribute as a keyword (keyword or 8-hex-digit tag)."""
    if _TAG.match(name):
        keyword = keyword_for_tag(int(name, 16))
        if not keyword:
            raise BadParameter(name, f"unknown attribute tag {name}")
        return keyword
    if "." in name:
        raise BadParameter(name, "sequence attribute paths are not supported")
    if tag_for_keyword(name) is None:
        raise BadParameter(name, f"unknown attribute {name!r}")
    return name


def _vr(keyword: str) -> str:
    known = vr_of(keyword)
    if known is not None:
        return known
    tag = tag_for_keyword(keyword)
    return dictionary_VR(tag) if tag is not None else "UN"


def _int_param(request: Request, name: str, default: int | None) -> int | None:
    value = request.query_params.get(name)
    if value is None:
        return default
    if not value.isdigit():
        raise BadParameter(name, f"{name} must be a non-negative integer")
    return int(value)


def parse_request(request: Request, level: QueryLevel, path_keys: dict[str, str]) -> FindRequest:
    keys: dict[str, str] = {}
    include: list[str] = []
    include_all = False
    for name, value in request.query_params.multi_items():
        if name == "includefield":
            for field in filter(None, (f.strip() for f in value.split(","))):
                if field == "all":
                    include_all = True
                else:
                    include.append(_keyword(field))
        elif name == "fuzzymatching":
            if value not in ("true", "false"):
                raise BadParameter(name, "fuzzymatching must be true or false")
        elif name in ("limit", "offset"):
            continue
        else:
            keyword = _keyword(name)
            if keyword in keys:
                raise BadParameter(name, f"{name} given more than once")
            keys[keyword] = value
    keys.update(path_keys)
    limit = _int_param(request, "limit", None)
    offset = _int_param(request, "offset", 0) or 0
    if limit is not None and limit > MAX_LIMIT:
        raise BadParameter("limit", f"limit must be at most {MAX_LIMIT}")
    returned = list(dict.fromkeys([*DEFAULTS[level], *keys, *include]))
    if include_all and level is QueryLevel.IMAGE:
        returned.append("*")  # every attribute the index holds for the instance
    return FindRequest(
        level=level,
        keys=keys,
        return_keys=tuple(k for k in returned if k != "*"),
        limit=limit,
        offset=offset,
    )


def _element(keyword: str, value: Any) -> dict[str, Any]:
    vr = _vr(keyword)
    if value is None or value == "":
        return {"vr": vr}
    if vr == "PN":
        return {"vr": vr, "Value": [{"Alphabetic": str(value)}]}
    if vr in ("IS", "US", "UL", "SS", "SL"):
        return {"vr": vr, "Value": [int(value)]}
    text = str(value)
    return {"vr": vr, "Value": text.split("\\") if "\\" in text else [text]}


def to_json(
    result: QueryResult, return_keys: Iterable[str], include_all: bool, base_url: str
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    extra = result.dataset_json or {}
    for keyword in return_keys:
        tag = tag_for_keyword(keyword)
        if tag is None:
            continue
        key = f"{tag:08X}"
        if keyword in result.values:
            out[key] = _element(keyword, result.values[keyword])
        elif key in extra:
            out[key] = extra[key]
        else:
            out[key] = {"vr": _vr(keyword)}
    if include_all:
        for key, element in extra.items():
            out.setdefault(key, element)
    for key in [k for k, e in out.items() if str(e.get("BulkDataURI", "")).startswith("bulk:")]:
        del out[key]  # bulk data is retrieved with WADO-RS, not listed here
    study_uid = result.values.get("StudyInstanceUID")
    if study_uid:
        out["00081190"] = {"vr": "UR", "Value": [f"{base_url}/studies/{study_uid}"]}
    out["00080005"] = {"vr": "CS", "Value": ["ISO_IR 192"]}
    return dict(sorted(out.items()))


def _query_problem(exc: QueryError) -> JSONResponse:
    # QueryError texts start with the attribute at fault ("StudyDate: ...").
    parameter = str(exc).split(":", 1)[0].split(" ", 1)[0]
    return problem(400, "Bad Request", str(exc), parameter=parameter)


def qido_router(query: QueryService) -> APIRouter:
    router = APIRouter()

    def search(request: Request, level: QueryLevel, path_keys: dict[str, str]) -> Response:
        """The answer; every request is audited (110112 Query, queued; services.audit)."""
        response = answer(request, level, path_keys)
        audit = audit_of(request)
        if audit is not None:
            try:
                audit.web_queried(
                    requester(request), request_target(request), ok=response.status_code < 400
                )
            except Exception as exc:
                audit_failed(log, "a QIDO-RS request", exc)
        return response

    def answer(request: Request, level: QueryLevel, path_keys: dict[str, str]) -> Response:
        try:
            find = parse_request(request, level, path_keys)
            query.matchers(find)
        except BadParameter as exc:
            return problem(400, "Bad Request", exc.detail, parameter=exc.parameter)
        except QueryError as exc:
            return _query_problem(exc)
        for keyword, level_of in (
            ("StudyInstanceUID", QueryLevel.STUDY),
            ("SeriesInstanceUID", QueryLevel.SERIES),
        ):
            if keyword in path_keys and not _exists(query, request, level_of, path_keys):
                return problem(404, "Not Found", f"no such {level_of.value.lower()}")
        include_all = "all" in ",".join(request.query_params.getlist("includefield")).split(",")
        extra_keys = include_all and level is QueryLevel.IMAGE
        base = dicomweb_root(request)
        try:
            results = [
                to_json(r, find.return_keys, include_all, base)
                for r in query.find(
                    find,
                    with_json=extra_keys,
                    scope=request_scope(request),
                    interface=Interface.QIDO_RS,
                )
            ]
        except QueryError as exc:
            return _query_problem(exc)
        except Exception as exc:
            # The index or the disclosure log failed: nothing is answered (database
            # errors quote their parameters, patient ids among them: DEBUG only).
            log.error("QIDO-RS: the index cannot answer: %s", type(exc).__name__)
            log.debug("QIDO-RS failure", exc_info=True)
            return problem(503, "Service Unavailable", "the archive cannot answer now")
        return JSONResponse(results, media_type=DICOM_JSON)

    @router.get("/studies")
    def studies(request: Request) -> Response:
        return search(request, QueryLevel.STUDY, {})

    @router.get("/series")
    def all_series(request: Request) -> Response:
        return search(request, QueryLevel.SERIES, {})

    @router.get("/studies/{study}/series")
    def study_series(request: Request, study: str) -> Response:
        return search(request, QueryLevel.SERIES, {"StudyInstanceUID": study})

    @router.get("/instances")
    def all_instances(request: Request) -> Response:
        return search(request, QueryLevel.IMAGE, {})

    @router.get("/studies/{study}/instances")
    def study_instances(request: Request, study: str) -> Response:
        return search(request, QueryLevel.IMAGE, {"StudyInstanceUID": study})

    @router.get("/studies/{study}/series/{series}/instances")
    def series_instances(request: Request, study: str, series: str) -> Response:
        return search(
            request, QueryLevel.IMAGE, {"StudyInstanceUID": study, "SeriesInstanceUID": series}
        )

    return router


def _exists(
    query: QueryService, request: Request, level: QueryLevel, path_keys: dict[str, str]
) -> bool:
    keys = {
        k: v for k, v in path_keys.items() if k == "StudyInstanceUID" or level is QueryLevel.SERIES
    }
    probe = FindRequest(level=level, keys=keys, return_keys=(), limit=1)
    return any(True for _ in query.find(probe, scope=request_scope(request), interface=None))
