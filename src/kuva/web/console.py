"""The operator console (``/console/``; ``/`` leads there): the archive seen in a
browser. Server-rendered HTML (Jinja2 templates in ``web/templates/console``), a
stylesheet and a little plain JavaScript served from the package; no build step.

Pages: the overview (ingest, outbox, oldest undelivered IAN, cluster nodes); study
search (patient id, patient name prefix with ä/ö/å as the index normalises them,
accession number; date range and modality); a study with its series' thumbnails;
an instance's image with window presets and frame paging (rendered resources,
dicomweb.rendered); the outbox's failed and pending tasks with retry, per task and
per node.

Who: operators only, as the admin API (web.admin: ``[access] operators``, by mutual
TLS; every local client on the embedded default). Others get a 403 page. Reads of
patient data are audited as queries (110112) and go through the access rules and
the disclosure log (interface ``console``) like every other read. Forms are POSTs
with a CSRF token (double submit: a random cookie, SameSite=Strict, echoed in the
form, and a same-host Origin when the browser sends one). kuva writes no access
log (uvicorn's is off), so search terms in the URL reach no log.
"""

from __future__ import annotations

import base64
import hmac
import logging
import secrets
from collections.abc import Iterable
from datetime import date, datetime
from functools import partial
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from lxml import etree
from starlette.concurrency import run_in_threadpool

from kuva.model import audit as a
from kuva.model.query import QueryLevel
from kuva.services.audit import AuditTrail, audit_failed
from kuva.services.disclosure import Interface
from kuva.services.operations import Operations
from kuva.services.query import FindRequest, QueryService
from kuva.web.admin import OperatorCheck
from kuva.web.auditing import audit_of, request_target, requester
from kuva.web.identity import client_organization, request_scope

log = logging.getLogger(__name__)

CSRF_COOKIE = "kuva_csrf"
SEARCH_LIMIT = 100
TASK_LIMIT = 200
FINDINGS = 10
FINDINGS_SCAN = 500
STATIC = {"console.css": "text/css", "console.js": "text/javascript"}
STUDY_KEYS = (
    "StudyInstanceUID",
    "PatientName",
    "PatientID",
    "StudyDate",
    "AccessionNumber",
    "ModalitiesInStudy",
    "StudyDescription",
    "NumberOfStudyRelatedInstances",
)
SERIES_KEYS = (
    "SeriesInstanceUID",
    "SeriesNumber",
    "Modality",
    "SeriesDescription",
    "NumberOfSeriesRelatedInstances",
)

_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("kuva.web", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


def iso(when: datetime | None) -> str:
    return when.isoformat(timespec="seconds").replace("+00:00", "Z") if when else ""


def _dicom_date(text: str) -> str:
    """YYYY-MM-DD (a date input) as YYYYMMDD; "" when it is not a date."""
    try:
        return date.fromisoformat(text).strftime("%Y%m%d") if text else ""
    except ValueError:
        return ""


class Console:
    def __init__(
        self,
        query: QueryService,
        operations: Operations,
        refused: OperatorCheck,
    ) -> None:
        self.query = query
        self.operations = operations
        self.refused = refused

    # ------------------------------------------------------------------ pages

    def page(
        self, request: Request, template: str, *, status: int = 200, **values: Any
    ) -> HTMLResponse:
        token = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(32)
        html = _templates.get_template(f"console/{template}").render(
            operator=client_organization(request), iso=iso, csrf=token, **values
        )
        response = HTMLResponse(html, status_code=status)
        response.headers["Cache-Control"] = "no-store"
        if CSRF_COOKIE not in request.cookies:
            response.set_cookie(
                CSRF_COOKIE, token, httponly=True, samesite="strict", path="/console"
            )
        return response

    def error(self, request: Request, status: int, detail: str, section: str = "") -> HTMLResponse:
        title = {403: "Forbidden", 404: "Not found"}.get(status, "Error")
        return self.page(
            request, "error.html", status=status, title=title, section=section, detail=detail
        )

    def forbidden(self, request: Request) -> HTMLResponse | None:
        if self.refused(request) is None:
            return None
        return self.error(
            request, 403, "This organisation may not use the operator console ([access] operators)."
        )

    def find(
        self,
        request: Request,
        level: QueryLevel,
        keys: dict[str, str],
        returned: Iterable[str],
        holder: str | None = None,
        limit: int = SEARCH_LIMIT,
    ) -> list[dict[str, Any]]:
        """Matches of one query (``holder``: of that register holder's studies only),
        read with the requester's access scope (its disclosures logged); values as
        text."""
        ask = FindRequest(
            level=level,
            keys={**dict.fromkeys(returned, ""), **keys},
            return_keys=tuple(dict.fromkeys([*returned, *keys])),
            limit=limit,
            register_holder=holder,
        )
        found = self.query.find(ask, scope=request_scope(request), interface=Interface.CONSOLE)
        return [{k: _text(v) for k, v in result.values.items()} for result in found]

    def audited(self, request: Request) -> None:
        """A page that shows patient data: a query (110112) naming the page."""
        audit = audit_of(request)
        if audit is None:
            return
        try:
            audit.web_queried(requester(request), request_target(request), ok=True)
        except Exception as exc:
            audit_failed(log, "a console read", exc)

    async def form(self, request: Request) -> dict[str, list[str]] | Response:
        """A console form's fields, or the 403 page: the requester is no operator, or
        the form lacks its CSRF token."""
        if (refusal := self.forbidden(request)) is not None:
            return refusal
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        return self.csrf_refusal(request, form) or form

    def csrf_refusal(self, request: Request, form: dict[str, list[str]]) -> HTMLResponse | None:
        cookie = request.cookies.get(CSRF_COOKIE, "")
        given = (form.get("csrf") or [""])[0]
        origin = request.headers.get("origin")
        same_host = origin is None or urlsplit(origin).netloc == request.headers.get("host")
        if cookie and given and hmac.compare_digest(cookie, given) and same_host:
            return None
        log.warning("console: a form without a valid CSRF token was refused")
        return self.error(
            request, 403, "The form has expired or did not come from this console; reload the page."
        )


def integrity_findings(trail: AuditTrail, limit: int = FINDINGS) -> list[dict[str, Any]]:
    """The latest integrity problems (Security Alerts of type INTEGRITY) among the
    newest ``FINDINGS_SCAN`` Security Alerts: seq, time, the alert's description."""
    found: list[dict[str, Any]] = []
    for record in trail.list(since=None, event_id=a.SECURITY_ALERT.code, limit=FINDINGS_SCAN):
        try:
            root = etree.fromstring(record.message.encode())
        except etree.XMLSyntaxError:
            continue
        types = {c.get("csd-code") for c in root.iter("EventTypeCode")}
        if a.ALERT_INTEGRITY.code not in types:
            continue
        details = [
            base64.b64decode(d.get("value", "")).decode("utf-8", "replace")
            for d in root.iter("ParticipantObjectDetail")
            if d.get("type") == a.ALERT_DESCRIPTION
        ]
        found.append({"seq": record.seq, "at": record.recorded_at, "what": "; ".join(details)})
        if len(found) == limit:
            break
    return found


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return "\\".join(_text(v) for v in value)
    return str(value)


def console_router(console: Console) -> APIRouter:
    """The console's framework, overview, study and task pages (the record pages
    are web.console_records')."""
    router = APIRouter()
    operations = console.operations

    @router.get("/", include_in_schema=False)
    def root() -> Response:
        return RedirectResponse("/console/", status_code=307)

    @router.get("/console/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in STATIC:
            return Response(status_code=404)
        content = resources.files("kuva.web").joinpath("static", name).read_bytes()
        return Response(content, media_type=STATIC[name], headers={"Cache-Control": "max-age=3600"})

    @router.get("/console/")
    async def overview(request: Request) -> Response:
        if (refusal := console.forbidden(request)) is not None:
            return refusal
        o = await run_in_threadpool(operations.overview)
        trail = audit_of(request)
        findings = await run_in_threadpool(integrity_findings, trail) if trail else []
        return console.page(
            request, "overview.html", title="Overview", section="Overview", o=o,
            findings=findings,
        )  # fmt: skip

    @router.get("/console/studies")
    async def studies(request: Request) -> Response:
        if (refusal := console.forbidden(request)) is not None:
            return refusal
        params = request.query_params
        q = params.get("q", "").strip()
        date_from, date_to = params.get("from", ""), params.get("to", "")
        modality = params.get("modality", "").strip().upper()
        holder = params.get("organization", "").strip()
        filters: dict[str, str] = {}
        if _dicom_date(date_from) or _dicom_date(date_to):
            filters["StudyDate"] = f"{_dicom_date(date_from)}-{_dicom_date(date_to)}"
        if modality:
            filters["ModalitiesInStudy"] = modality
        searched = bool(q or filters or holder)
        number = int(params["page"]) if params.get("page", "").isdigit() else 0
        # Each query reads up to the end of the page asked for (and one more, to
        # know whether there is a next page): a few pages deep at most in practice.
        wanted = (number + 1) * SEARCH_LIMIT + 1
        found: dict[str, dict[str, Any]] = {}
        if searched:
            # The text as a patient id, as the start of a name, as an accession
            # number: each an indexed query.
            asks = (
                [{"PatientID": q}, {"PatientName": f"{q}*"}, {"AccessionNumber": q}] if q else [{}]
            )
            for keys in asks:
                rows = await run_in_threadpool(
                    console.find,
                    request,
                    QueryLevel.STUDY,
                    {**keys, **filters},
                    STUDY_KEYS,
                    holder or None,
                    wanted,
                )
                for row in rows:
                    found.setdefault(row["StudyInstanceUID"], row)
            console.audited(request)
        return console.page(
            request,
            "studies.html",
            title="Studies",
            section="Studies",
            q=q,
            date_from=date_from,
            date_to=date_to,
            modality=modality,
            organization=holder,
            searched=searched,
            studies=list(found.values())[number * SEARCH_LIMIT : (number + 1) * SEARCH_LIMIT],
            number=number,
            next_page=(
                urlencode({**params, "page": number + 1})
                if len(found) > (number + 1) * SEARCH_LIMIT
                else ""
            ),
            previous_page=urlencode({**params, "page": number - 1}) if number else "",
        )

    @router.get("/console/studies/{study}")
    async def study(request: Request, study: str) -> Response:
        if (refusal := console.forbidden(request)) is not None:
            return refusal
        keys = {"StudyInstanceUID": study}
        found = await run_in_threadpool(console.find, request, QueryLevel.STUDY, keys, STUDY_KEYS)
        if not found:
            return console.error(
                request, 404, "No such study, or not one this organisation may read.", "Studies"
            )
        series = await run_in_threadpool(
            console.find, request, QueryLevel.SERIES, keys, SERIES_KEYS
        )
        for row in series:
            first = await run_in_threadpool(
                console.find,
                request,
                QueryLevel.IMAGE,
                {**keys, "SeriesInstanceUID": row["SeriesInstanceUID"]},
                ("SOPInstanceUID",),
            )
            row["first"] = first[0]["SOPInstanceUID"] if first else ""
        view = await run_in_threadpool(operations.study, study)
        console.audited(request)
        return console.page(
            request, "study.html", title="Study", section="Studies", study=found[0],
            series=series, facts=view.facts, tasks=view.tasks, manifests=view.manifests,
            corrections=view.corrections,
        )  # fmt: skip

    @router.get("/console/studies/{study}/series/{series}/instances/{instance}")
    async def instance(request: Request, study: str, series: str, instance: str) -> Response:
        if (refusal := console.forbidden(request)) is not None:
            return refusal
        keys = {"StudyInstanceUID": study, "SeriesInstanceUID": series, "SOPInstanceUID": instance}
        found = await run_in_threadpool(
            console.find, request, QueryLevel.IMAGE, keys, ("InstanceNumber", "NumberOfFrames")
        )
        if not found:
            return console.error(
                request, 404, "No such instance, or not one this organisation may read.", "Studies"
            )
        console.audited(request)
        return console.page(
            request, "instance.html", title="Image", section="Studies",
            study=study, series=series, instance=instance,
            number=found[0]["InstanceNumber"], frames=found[0]["NumberOfFrames"] or "1",
        )  # fmt: skip

    @router.get("/console/tasks")
    async def tasks(request: Request) -> Response:
        if (refusal := console.forbidden(request)) is not None:
            return refusal
        params = request.query_params
        pages = {}
        for status in ("failed", "pending"):
            text = params.get(f"{status}_before", "")
            before = int(text) if text.isdigit() else None
            rows = await run_in_threadpool(
                partial(operations.tasks, status, limit=TASK_LIMIT, before=before)
            )
            older = (
                urlencode({**params, f"{status}_before": rows[-1].pk})
                if len(rows) == TASK_LIMIT
                else ""
            )
            pages[status] = (rows, older)
        retried = params.get("retried")
        return console.page(
            request, "tasks.html", title="Tasks", section="Tasks",
            failed=pages["failed"][0], pending=pages["pending"][0], limit=TASK_LIMIT,
            older={"Failed": pages["failed"][1], "Pending": pages["pending"][1]},
            message=f"{retried} task(s) scheduled again" if retried is not None else "",
        )  # fmt: skip

    @router.post("/console/tasks/retry")
    async def retry(request: Request) -> Response:
        form = await console.form(request)
        if isinstance(form, Response):
            return form
        pks = [int(v) for v in form.get("task", []) if v.isdigit()]
        node = (form.get("node") or [""])[0] or None
        if not pks and node is None:
            return RedirectResponse("/console/tasks", status_code=303)
        count = await run_in_threadpool(lambda: operations.retry(pks=pks or None, node=node))
        log.info("console: %d task(s) retried by %s", count, client_organization(request))
        return RedirectResponse(f"/console/tasks?retried={count}", status_code=303)

    return router
