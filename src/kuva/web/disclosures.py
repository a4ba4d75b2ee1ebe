"""The disclosure log over HTTP (docs/disclosures.md):

- ``POST /disclosures/notices``: a register holder reports disclosures it made
  (JSON, kuva.web.notices); 201 when any was recorded now, 200 when every one had
  been before (a retry with the same notice ids), with one result per notice.
- ``POST /audit/messages``: one ATNA AuditMessage (application/xml or text/xml);
  an Export (110106) is recorded as a disclosure (kuva.audit.export): 201, or 200
  when it had been before; any other message is answered 200 and ignored.
- ``GET /disclosures?patient=ID^^^%26OID%26ISO&from=&to=&limit=&offset=``: a
  patient's disclosures, newest first, paged by limit/offset.

Who: the organisation the request acts for (kuva.web.identity); none: 403. It is
the register holder of what it reports. It sees the records where it is the
register holder or the recipient; an organisation of ``[access] operators`` sees
every record of the patient. Errors are problem JSON (RFC 9457).
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from kuva.audit import export
from kuva.model.clock import Clock, utcnow
from kuva.model.disclosure import NoticeOutcome
from kuva.model.patient import PatientKey
from kuva.services.notices import MAX_PAGE, Disclosure, NoticeConflict, NoticeService
from kuva.web.identity import client_organization
from kuva.web.notices import MAX_BODY_BYTES, NoticeProblem, parse_notices
from kuva.web.problem import problem

log = logging.getLogger(__name__)

_JSON = ("application/json",)
_XML = ("application/xml", "text/xml")
DEFAULT_PAGE = 100


class _TooLarge(Exception):
    pass


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _forbidden(what: str) -> JSONResponse:
    log.warning("%s refused: the request acts for no known organisation", what)
    return problem(
        403,
        "Forbidden",
        "the request acts for no known organisation (no client certificate, no [http] "
        "organization)",
    )


def _unavailable(what: str, exc: Exception) -> JSONResponse:
    """The index failed: nothing was written (the transaction rolled back)."""
    log.error("%s: the disclosure log could not be used: %s", what, type(exc).__name__)
    log.debug("disclosure log failure", exc_info=True)
    return problem(503, "Service Unavailable", "the disclosure log is not available; try again")


def _outcomes(outcomes: list[NoticeOutcome]) -> JSONResponse:
    created = any(outcome.created for outcome in outcomes)
    return JSONResponse(
        status_code=201 if created else 200,
        content={
            "recorded": sum(o.records for o in outcomes if o.created),
            "notices": [
                {
                    "notice": position,
                    "notice_id": outcome.notice_id,
                    "records": outcome.records,
                    "created": outcome.created,
                }
                for position, outcome in enumerate(outcomes)
            ],
        },
    )


def parse_instant(name: str, text: str | None, *, end: bool = False) -> datetime | None:
    """An RFC 3339 time (UTC when without offset) or a date: its start (``from``)
    or the start of the next day (``to``, so that the day is included)."""
    if text is None or not text.strip():
        return None
    text = text.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            start = datetime.combine(day, time(), tzinfo=UTC)
            return start + timedelta(days=1) if end else start
        instant = datetime.fromisoformat(text.replace(" ", "+"))
    except ValueError:
        raise ValueError(f"{name}: {text[:40]!r} is not an RFC 3339 date or time") from None
    return instant if instant.tzinfo is not None else instant.replace(tzinfo=UTC)


def disclosure_json(record: Disclosure) -> dict[str, Any]:
    """A disclosure-log record as the JSON of GET /disclosures (and the CLI's --json)."""
    return {
        "disclosed_at": record.disclosed_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "recipient": {
            "organization": record.recipient_organization or None,
            "person": record.recipient_person,
            # The user of a verified XUA assertion (kuva.xds.xua): NameID and the
            # XSPA role and purpose-of-use codes; null otherwise.
            "user": record.recipient_user,
            "role": record.recipient_role,
            "purpose_of_use": record.purpose_of_use,
        },
        "register_holder": record.register_holder,
        "patient": {"id": record.patient_id, "issuer": record.patient_authority},
        "study_instance_uid": record.study_instance_uid,
        "document_unique_id": record.document_unique_id or None,
        "interface": record.interface,
        "channel": record.channel,
        "basis": record.basis,
        "source": record.source,
        "notice_id": record.notice_id,
    }


async def _received(
    request: Request, what: str, media_types: tuple[str, ...], limit: int
) -> tuple[str, bytes] | Response:
    """The reporting organisation and the body of a POST, or the problem answer:
    403 for no organisation, 415 for another media type, 413 above ``limit``."""
    reporter = client_organization(request)
    if reporter is None:
        return _forbidden(what)
    if _media_type(request) not in media_types:
        return problem(415, "Unsupported Media Type", f"send {' or '.join(media_types)}")
    try:
        return reporter, await _body(request, limit)
    except _TooLarge:
        return problem(413, "Content Too Large", f"at most {limit} bytes")


def disclosures_router(
    service: NoticeService,
    *,
    operators: list[str],
    max_message_bytes: int,
    clock: Clock = utcnow,
) -> APIRouter:
    router = APIRouter()
    operator_set = frozenset(operators)

    @router.post("/disclosures/notices")
    async def post_notices(request: Request) -> Response:
        received = await _received(request, "disclosure notice", _JSON, MAX_BODY_BYTES)
        if isinstance(received, Response):
            return received
        reporter, body = received
        try:
            notices = parse_notices(body, reporter, clock())
        except NoticeProblem as exc:
            log.warning("disclosure notices of %s refused: %s", reporter, exc.detail)
            title = "Bad Request" if exc.status == 400 else "Unprocessable Content"
            return problem(exc.status, title, exc.detail, errors=exc.errors)
        try:
            outcomes = await run_in_threadpool(service.record, notices)
        except NoticeConflict as exc:
            log.warning("disclosure notices of %s refused: %s", reporter, exc)
            return problem(
                409,
                "Conflict",
                str(exc),
                errors=[{"notice": exc.index, "field": "notice_id", "message": str(exc)}],
            )
        except Exception as exc:
            return _unavailable("disclosure notices", exc)
        return _outcomes(outcomes)

    @router.post("/audit/messages")
    async def post_audit_message(request: Request) -> Response:
        received = await _received(request, "audit message", _XML, max_message_bytes)
        if isinstance(received, Response):
            return received
        reporter, body = received
        try:
            parsed = export.parse(body, clock())
        except export.MalformedMessage as exc:
            log.warning("audit message of %s refused: %s", reporter, exc)
            return problem(400, "Bad Request", str(exc))
        except export.UnusableExport as exc:
            log.warning("Export message of %s refused: %s", reporter, exc)
            return problem(422, "Unprocessable Content", str(exc))
        if isinstance(parsed, export.Ignored):
            log.info("audit message of %s ignored: %s", reporter, parsed.reason)
            return JSONResponse({"recorded": 0, "ignored": parsed.reason})
        try:
            outcomes = await run_in_threadpool(service.record, [parsed.reported_by(reporter)])
        except Exception as exc:
            return _unavailable("audit message", exc)
        return _outcomes(outcomes)

    @router.get("/disclosures")
    async def get_disclosures(request: Request) -> Response:
        viewer = client_organization(request)
        if viewer is None:
            return _forbidden("disclosure query")
        params = request.query_params
        unknown = set(params) - {"patient", "from", "to", "limit", "offset"}
        if unknown:
            return problem(
                400, "Bad Request", f"unknown parameter(s): {', '.join(sorted(unknown))}"
            )
        if not params.get("patient"):
            return problem(400, "Bad Request", "patient is required (ID^^^&OID&ISO)")
        try:
            patient = PatientKey.parse(params["patient"])
            start = parse_instant("from", params.get("from"))
            end = parse_instant("to", params.get("to"), end=True)
            limit = int(params.get("limit", DEFAULT_PAGE))
            offset = int(params.get("offset", 0))
        except ValueError as exc:
            return problem(
                400, "Bad Request", str(exc).replace("invalid literal for int()", "not a number")
            )
        if not 1 <= limit <= MAX_PAGE or offset < 0:
            return problem(400, "Bad Request", f"limit must be 1-{MAX_PAGE}, offset 0 or more")
        everything = viewer in operator_set
        try:
            page = await run_in_threadpool(
                service.disclosures,
                patient,
                start=start,
                end=end,
                viewer=None if everything else viewer,
                limit=limit,
                offset=offset,
            )
        except Exception as exc:
            return _unavailable("disclosure query", exc)
        content: dict[str, Any] = {
            "patient": {"id": patient.patient_id, "issuer": patient.issuer},
            "disclosures": [disclosure_json(record) for record in page.records],
            "limit": limit,
            "offset": offset,
            "next_offset": offset + limit if len(page.records) == limit else None,
        }
        if everything:
            content["identities"] = [{"id": i, "issuer": a} for i, a in page.identities]
        return JSONResponse(content)

    return router
