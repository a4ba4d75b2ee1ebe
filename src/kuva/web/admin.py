"""The admin API (``/admin``): operators' changes over HTTP.

``/admin/patients/{patient}/disclosure-prohibition`` - a patient's disclosure
prohibition (services.access): GET shows it (404 when none), PUT sets it (body
``{"reason": "...", "by": "..."}``, both optional; 201 when set, 200 when it was in
force already), DELETE lifts it (204; 404 when none). ``{patient}`` is
``ID^^^&OID&ISO`` (URL-encoded) or ``ID^^^OID``.

Only requests acting for an organisation of ``[access] operators`` may use it
(kuva.web.identity), or any local client on the embedded default; others get 403.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError

from kuva.model.patient import PatientKey
from kuva.services.access import DisclosureProhibitions
from kuva.web.identity import client_organization
from kuva.web.problem import problem

log = logging.getLogger(__name__)

PATH = "/admin/patients/{patient}/disclosure-prohibition"


class ProhibitionRequest(BaseModel):
    model_config = {"extra": "forbid"}

    reason: str = Field(default="", max_length=1000)
    by: str = Field(default="", max_length=256)


OperatorCheck = Callable[[Request], Response | None]


def operator_check(operators: list[str], open_access: Callable[[], bool]) -> OperatorCheck:
    """None when ``request`` may use the admin API (it acts for an organisation of
    ``[access] operators``, or any local client while the directory has no nodes);
    else the 403 problem to answer."""
    allowed = frozenset(operators)

    def refused(request: Request) -> Response | None:
        organization = client_organization(request)
        if open_access() or (organization is not None and organization in allowed):
            return None
        log.warning("admin API refused to %s", organization or "an unknown organisation")
        return problem(403, "Forbidden", "this organisation may not use the admin API")

    return refused


def admin_router(prohibitions: DisclosureProhibitions, refused: OperatorCheck) -> APIRouter:
    router = APIRouter()

    def key_of(patient: str) -> PatientKey | Response:
        try:
            return PatientKey.parse(patient)
        except ValueError as exc:
            return problem(400, "Bad Request", f"patient: {exc}", parameter="patient")

    @router.get(PATH)
    def show(request: Request, patient: str) -> Response:
        key = refused(request) or key_of(patient)
        if isinstance(key, Response):
            return key
        current = prohibitions.current(key)
        if current is None:
            return problem(404, "Not Found", "the patient has no disclosure prohibition")
        set_at, by, reason = current
        return JSONResponse(
            {
                "patient": str(key),
                "set_at": set_at.isoformat().replace("+00:00", "Z"),
                "by": by,
                "reason": reason,
            }
        )

    @router.put(PATH)
    async def prohibit(request: Request, patient: str) -> Response:
        key = refused(request) or key_of(patient)
        if isinstance(key, Response):
            return key
        raw = await request.body()
        try:
            body = ProhibitionRequest.model_validate_json(raw or b"{}")
        except ValidationError as exc:
            return problem(
                400,
                "Bad Request",
                "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()),
            )
        by = body.by or client_organization(request) or "admin API"
        changed = prohibitions.prohibit(key, by=by, reason=body.reason)
        return JSONResponse(
            {"patient": str(key), "prohibited": True}, status_code=201 if changed else 200
        )

    @router.delete(PATH)
    def permit(request: Request, patient: str) -> Response:
        key = refused(request) or key_of(patient)
        if isinstance(key, Response):
            return key
        by = client_organization(request) or "admin API"
        if not prohibitions.permit(key, by=by):
            return problem(404, "Not Found", "the patient has no disclosure prohibition")
        return Response(status_code=204)

    return router
