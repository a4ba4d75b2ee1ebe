"""The operator console's record pages (web.console has the framework and the study
and task pages):

* ``/console/organisations``: the directory; ``/console/organisations/{oid}``: one
  organisation's acceptance report (services.onboarding).
* ``/console/disclosures``: a patient's disclosure log across merges, by period and
  organisation (as holder or recipient), or an organisation's over a period (the
  last 30 days unless given), a page of 100 at a time;
  ``/console/disclosures.csv``: the same as CSV (RFC 4180), up to 1,000 records.
* ``/console/retention``: legal holds (set and release with a reason), studies
  expiring within 90 days, the latest destruction records.
* ``/console/prohibitions``: a patient's disclosure prohibition, looked up, set
  with a reason and lifted (services.access; audited as the CLI's and the admin
  API's are).
* ``/console/audit``: the audit trail by event and time (indexed), and by user or
  organisation among the newest ``AUDIT_SCAN`` records of those; verification of
  the hash chain on demand (a POST: it reads the whole trail).

Same rules as every console page: operators only, patient data pages audited,
forms with the CSRF token.
"""

from __future__ import annotations

import csv
import io
import logging
from datetime import UTC, datetime, time, timedelta
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from lxml import etree
from starlette.concurrency import run_in_threadpool

from kuva.model.patient import PatientKey
from kuva.services.access import DisclosureProhibitions
from kuva.services.directory import DirectoryService
from kuva.services.figures import FiguresJob
from kuva.services.notices import DisclosurePage, NoticeService
from kuva.services.onboarding import OnboardingService, UnknownOrganization
from kuva.services.retention import RetentionError, RetentionService
from kuva.web.console import Console
from kuva.web.identity import client_organization

log = logging.getLogger(__name__)

UPCOMING_DAYS = 90
LIMIT = 100
AUDIT_SCAN = 5000
ORGANIZATION_DAYS = 30
CSV_LIMIT = 1000
CSV_COLUMNS = (
    "disclosed_at", "recipient_organization", "recipient_person", "register_holder",
    "patient_id", "patient_authority", "study_instance_uid", "document_unique_id",
    "interface", "basis", "source", "channel", "recipient_user", "recipient_role",
    "purpose_of_use",
)  # fmt: skip


def _instant(text: str, *, end: bool = False) -> datetime | None:
    """A date input's YYYY-MM-DD as the start (or, for ``end``, the end) of that UTC day."""
    if not text:
        return None
    day = datetime.fromisoformat(text).date()
    return datetime.combine(day, time.max if end else time.min, tzinfo=UTC)


def _who(message: str) -> list[str]:
    """The UserIDs of an audit message's active participants."""
    try:
        root = etree.fromstring(message.encode())
    except etree.XMLSyntaxError:
        return []
    return [str(p.get("UserID", "")) for p in root.iter("ActiveParticipant")]


def records_router(
    console: Console,
    directory: DirectoryService,
    onboarding: OnboardingService,
    notices: NoticeService,
    retention: RetentionService,
    figures: FiguresJob,
    prohibitions: DisclosureProhibitions,
) -> APIRouter:
    audit = figures.audit
    router = APIRouter()

    @router.get("/console/prohibitions")
    async def prohibition(request: Request) -> Response:
        if (refusal := console.forbidden(request)) is not None:
            return refusal
        text = request.query_params.get("patient", "").strip()
        current, problem = None, ""
        if text:
            try:
                current = await run_in_threadpool(prohibitions.current, PatientKey.parse(text))
            except ValueError as exc:
                problem = f"patient: {exc}"
            console.audited(request)
        return console.page(
            request, "prohibitions.html", title="Disclosure prohibitions",
            section="Prohibitions", patient=text, current=current, problem=problem,
            message=request.query_params.get("message", ""),
        )  # fmt: skip

    async def change_prohibition(request: Request, prohibit: bool) -> Response:
        form = await console.form(request)
        if isinstance(form, Response):
            return form
        text = (form.get("patient") or [""])[0].strip()
        reason = (form.get("reason") or [""])[0].strip()
        try:
            key = PatientKey.parse(text)
        except ValueError as exc:
            return console.error(request, 400, f"patient: {exc}", "Prohibitions")
        by = client_organization(request) or "console"
        if prohibit:
            changed = await run_in_threadpool(
                lambda: prohibitions.prohibit(key, by=by, reason=reason)
            )
            message = "prohibition set" if changed else "a prohibition was in force already"
        else:
            changed = await run_in_threadpool(lambda: prohibitions.permit(key, by=by))
            message = "prohibition lifted" if changed else "there was no prohibition"
        return RedirectResponse(
            "/console/prohibitions?" + urlencode({"patient": text, "message": message}),
            status_code=303,
        )

    @router.post("/console/prohibitions/set")
    async def prohibit(request: Request) -> Response:
        return await change_prohibition(request, True)

    @router.post("/console/prohibitions/lift")
    async def lift(request: Request) -> Response:
        return await change_prohibition(request, False)

    def audit_page(request: Request, verified: dict[str, Any] | None = None) -> Response:
        params = request.query_params
        event = params.get("event", "").strip()
        who = params.get("who", "").strip()
        since = params.get("since", "")
        try:
            start = _instant(since)
        except ValueError:
            start = None
        text = params.get("before", "")
        before = int(text) if text.isdigit() else None
        records = audit.list(
            since=start, event_id=event or None, limit=AUDIT_SCAN if who else LIMIT, before=before
        )
        shown = []
        for record in records:
            participants = _who(record.message)
            if who and not any(who in p for p in participants):
                continue
            shown.append(
                {
                    "seq": record.seq,
                    "recorded_at": record.recorded_at,
                    "event": record.event_id,
                    "outcome": record.outcome,
                    "who": participants,
                }
            )
            if len(shown) == LIMIT:
                break
        older = urlencode({**params, "before": shown[-1]["seq"]}) if len(shown) == LIMIT else ""
        return console.page(
            request, "audit.html", title="Audit trail", section="Audit", event=event,
            who=who, since=since, records=shown, limit=LIMIT, verified=verified, older=older,
        )  # fmt: skip

    @router.get("/console/audit")
    async def audit_trail(request: Request) -> Response:
        if (refusal := console.forbidden(request)) is not None:
            return refusal
        return await run_in_threadpool(audit_page, request)

    @router.post("/console/audit/verify")
    async def audit_verify(request: Request) -> Response:
        form = await console.form(request)
        if isinstance(form, Response):
            return form
        count, breaks = await run_in_threadpool(figures.verify_chain)
        text = (
            f"audit trail intact: {count} record(s)"
            if not breaks
            else f"audit trail broken: {len(breaks)} break(s) in {count} record(s), the first "
            f"at record {breaks[0].seq} ({breaks[0].kind}: {breaks[0].detail})"
        )
        log.info("console: %s (verified for %s)", text, client_organization(request))
        return await run_in_threadpool(audit_page, request, {"text": text, "breaks": len(breaks)})

    @router.get("/console/organisations")
    async def organisations(request: Request) -> Response:
        if (refusal := console.forbidden(request)) is not None:
            return refusal
        _, snapshot = await run_in_threadpool(directory.load)
        nodes: dict[str, list[str]] = {}
        for node in snapshot.nodes:
            nodes.setdefault(node.organization, []).append(node.ae_title)
        return console.page(
            request, "organisations.html", title="Organisations", section="Organisations",
            organisations=snapshot.organizations, nodes=nodes,
        )  # fmt: skip

    @router.get("/console/organisations/{oid}")
    async def organisation(request: Request, oid: str) -> Response:
        if (refusal := console.forbidden(request)) is not None:
            return refusal
        try:
            report = await run_in_threadpool(onboarding.report, oid)
        except UnknownOrganization as exc:
            return console.error(request, 404, str(exc), "Organisations")
        return console.page(
            request, "organisation.html", title=report.name, section="Organisations",
            report=report.to_json(),
        )  # fmt: skip

    def disclosures_of(
        request: Request, *, limit: int = LIMIT, offset: int | None = None
    ) -> tuple[DisclosurePage | None, str]:
        """The page the query string asks for (``page``, from 0), or None with why.
        ``organization``: only records where it is the holder or the recipient."""
        params = request.query_params
        organization = params.get("organization", "").strip()
        if not params.get("patient") and not organization:
            return None, ""
        try:
            patient = PatientKey.parse(params["patient"]) if params.get("patient") else None
            start = _instant(params.get("from", ""))
            end = _instant(params.get("to", ""), end=True)
            number = int(params.get("page", "0") or 0)
        except ValueError as exc:
            return None, str(exc)
        skip = offset if offset is not None else max(0, number) * LIMIT
        if patient is None:
            # An organisation's disclosures over a period (the last 30 days unless
            # given): a range of the disclosed_at index.
            until = end or datetime.now(UTC)
            records = notices.of_organization(
                organization,
                start=start or until - timedelta(days=ORGANIZATION_DAYS),
                end=until,
                limit=limit,
                offset=skip,
            )
            console.audited(request)
            return DisclosurePage(records, []), ""
        page = notices.disclosures(
            patient,
            start=start,
            end=end,
            viewer=organization or None,
            limit=limit,
            offset=skip,
        )
        console.audited(request)
        return page, ""

    @router.get("/console/disclosures")
    async def disclosures(request: Request) -> Response:
        if (refusal := console.forbidden(request)) is not None:
            return refusal
        page, problem = await run_in_threadpool(disclosures_of, request)
        params = request.query_params
        kept = {k: params[k] for k in ("patient", "organization", "from", "to") if params.get(k)}
        number = int(params["page"]) if params.get("page", "").isdigit() else 0
        return console.page(
            request, "disclosures.html", title="Disclosure log", section="Disclosures",
            patient=params.get("patient", ""), organization=params.get("organization", ""),
            date_from=params.get("from", ""), date_to=params.get("to", ""), page=page,
            problem=problem, query=urlencode(kept), number=number, limit=LIMIT,
            next_page=urlencode({**kept, "page": number + 1}),
            previous_page=urlencode({**kept, "page": number - 1}),
        )  # fmt: skip

    @router.get("/console/disclosures.csv")
    async def disclosures_csv(request: Request) -> Response:
        if (refusal := console.forbidden(request)) is not None:
            return refusal
        # The whole log of the query, up to CSV_LIMIT records.
        page, problem = await run_in_threadpool(
            lambda: disclosures_of(request, limit=CSV_LIMIT, offset=0)
        )
        if page is None:
            return console.error(request, 400, problem or "patient is required", "Disclosures")
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(CSV_COLUMNS)
        for record in page.records:
            values: dict[str, Any] = vars(record)
            writer.writerow(
                [
                    values["disclosed_at"].isoformat().replace("+00:00", "Z")
                    if column == "disclosed_at"
                    else values[column] or ""
                    for column in CSV_COLUMNS
                ]
            )
        return Response(
            out.getvalue(),
            media_type="text/csv; charset=utf-8",
            headers={
                "Content-Disposition": 'attachment; filename="disclosures.csv"',
                "Cache-Control": "no-store",
            },
        )

    @router.get("/console/retention")
    async def retention_page(request: Request) -> Response:
        if (refusal := console.forbidden(request)) is not None:
            return refusal
        holds = await run_in_threadpool(retention.holds)
        upcoming = await run_in_threadpool(retention.upcoming, UPCOMING_DAYS, LIMIT)
        destroyed = await run_in_threadpool(lambda: retention.destroyed(limit=LIMIT))
        return console.page(
            request, "retention.html", title="Retention", section="Retention",
            holds=holds, upcoming=upcoming, destroyed=destroyed, days=UPCOMING_DAYS,
            limit=LIMIT, message=request.query_params.get("message", ""),
        )  # fmt: skip

    def done(message: str) -> Response:
        return RedirectResponse(
            "/console/retention?" + urlencode({"message": message}), status_code=303
        )

    @router.post("/console/retention/hold")
    async def hold(request: Request) -> Response:
        form = await console.form(request)
        if isinstance(form, Response):
            return form
        study = (form.get("study") or [""])[0].strip()
        reason = (form.get("reason") or [""])[0].strip()
        if not study or not reason:
            return done("a hold needs a Study Instance UID and a reason")
        by = client_organization(request) or "console"
        try:
            await run_in_threadpool(lambda: retention.hold(study_uid=study, reason=reason, by=by))
        except RetentionError as exc:
            return done(str(exc))
        return done(f"study {study} held")

    @router.post("/console/retention/release")
    async def release(request: Request) -> Response:
        form = await console.form(request)
        if isinstance(form, Response):
            return form
        study = (form.get("study") or [""])[0].strip()
        by = client_organization(request) or "console"
        count = await run_in_threadpool(lambda: retention.release(study_uid=study, by=by))
        return done(f"{count} hold(s) of study {study} released")

    return router
