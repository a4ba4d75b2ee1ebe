"""The directory over the admin API (services.directory): the same changes as
``kuva orgs`` and ``kuva nodes``, in JSON, under the admin API's rules (web.admin:
operators only, 403 problem otherwise). In force on every node within seconds.

* ``GET /admin/organizations``: every organisation.
* ``POST /admin/organizations``: add one (body: ``oid``, ``name``, optional
  ``business_id``, ``contacts``, ``certificates``, ``state`` "testing" or "active");
  201, or 409 when the OID is there.
* ``GET /admin/organizations/{oid}``: one, with its ``nodes``; 404 when unknown.
* ``POST /admin/organizations/{oid}/state``: body ``{"state": "active" | "suspended"
  | "terminated", "notice_date": "YYYY-MM-DD", "force": false}``; 200 with the
  entry, 404, or 409 with the reason (the notice period, a terminated one).
* ``PUT /admin/organizations/{oid}/limits``: body ``{"associations": 4,
  "requests_per_second": 50, "request_bytes": 1073741824}`` (each optional, null or
  absent = no limit; services.limits); 200 with the entry, 404 when unknown.
* ``GET /admin/onboarding/{oid}``: the organisation's acceptance report
  (services.onboarding), as JSON; 404 when unknown.
* ``GET /admin/nodes``; ``POST /admin/nodes`` (body: a node as ``[[nodes]]``, 201 or
  409); ``DELETE /admin/nodes/{ae_title}`` (204 or 404).

The change is audited as made by the requesting organisation (or ``by`` in the body).
Bodies are validated: what is wrong is a 400 problem naming the field.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from kuva.model.directory import (
    NodeSettings,
    OrganizationLimits,
    OrganizationSettings,
    OrganizationState,
)
from kuva.services.directory import DirectoryError, DirectoryService, NotFound
from kuva.services.onboarding import OnboardingService, UnknownOrganization
from kuva.web.admin import OperatorCheck
from kuva.web.identity import client_organization
from kuva.web.problem import problem


class NewOrganization(OrganizationSettings):
    model_config = {"extra": "forbid"}

    by: str = Field(default="", max_length=256, exclude=True)


class NewNode(NodeSettings):
    model_config = {"extra": "forbid"}

    by: str = Field(default="", max_length=256, exclude=True)


class LimitsChange(OrganizationLimits):
    model_config = {"extra": "forbid"}

    by: str = Field(default="", max_length=256, exclude=True)


class StateChange(BaseModel):
    model_config = {"extra": "forbid"}

    state: OrganizationState
    notice_date: date | None = None
    force: bool = False
    by: str = Field(default="", max_length=256)


def _invalid(exc: ValidationError) -> Response:
    return problem(
        400,
        "Bad Request",
        "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()),
    )


def _refusal(exc: DirectoryError) -> Response:
    if isinstance(exc, NotFound):
        return problem(404, "Not Found", str(exc))
    return problem(409, "Conflict", str(exc))


def _json(entry: BaseModel, status: int = 200, **extra: Any) -> JSONResponse:
    return JSONResponse({**entry.model_dump(mode="json"), **extra}, status_code=status)


def directory_router(
    directory: DirectoryService, onboarding: OnboardingService, refused: OperatorCheck
) -> APIRouter:
    router = APIRouter()

    def operator(request: Request, by: str) -> str:
        return by or client_organization(request) or "admin API"

    async def body(request: Request, model: type[BaseModel]) -> BaseModel | Response:
        try:
            return model.model_validate_json(await request.body() or b"{}")
        except ValidationError as exc:
            return _invalid(exc)

    @router.get("/admin/organizations")
    async def organizations(request: Request) -> Response:
        if (refusal := refused(request)) is not None:
            return refusal
        _, snapshot = await run_in_threadpool(directory.load)
        return JSONResponse([org.model_dump(mode="json") for org in snapshot.organizations])

    @router.post("/admin/organizations")
    async def add_organization(request: Request) -> Response:
        if (refusal := refused(request)) is not None:
            return refusal
        new = await body(request, NewOrganization)
        if isinstance(new, Response):
            return new
        assert isinstance(new, NewOrganization)
        if new.state not in (OrganizationState.TESTING, OrganizationState.ACTIVE):
            return problem(400, "Bad Request", "state: a new organisation is testing or active")
        org = OrganizationSettings.model_validate(new.model_dump())
        try:
            await run_in_threadpool(directory.add_organization, org, by=operator(request, new.by))
        except DirectoryError as exc:
            return _refusal(exc)
        return _json(org, 201)

    @router.get("/admin/organizations/{oid}")
    async def organization(request: Request, oid: str) -> Response:
        if (refusal := refused(request)) is not None:
            return refusal
        try:
            org = await run_in_threadpool(directory.organization, oid)
        except DirectoryError as exc:
            return _refusal(exc)
        nodes = await run_in_threadpool(directory.nodes_of, oid)
        return _json(org, nodes=[node.model_dump(mode="json") for node in nodes])

    @router.post("/admin/organizations/{oid}/state")
    async def change_state(request: Request, oid: str) -> Response:
        if (refusal := refused(request)) is not None:
            return refusal
        change = await body(request, StateChange)
        if isinstance(change, Response):
            return change
        assert isinstance(change, StateChange)
        try:
            after = await run_in_threadpool(
                lambda: directory.set_state(
                    oid,
                    change.state,
                    by=operator(request, change.by),
                    notice_date=change.notice_date,
                    force=change.force,
                )
            )
        except DirectoryError as exc:
            return _refusal(exc)
        return _json(after)

    @router.put("/admin/organizations/{oid}/limits")
    async def change_limits(request: Request, oid: str) -> Response:
        if (refusal := refused(request)) is not None:
            return refusal
        change = await body(request, LimitsChange)
        if isinstance(change, Response):
            return change
        assert isinstance(change, LimitsChange)
        limits = OrganizationLimits.model_validate(change.model_dump())
        try:
            after = await run_in_threadpool(
                lambda: directory.set_limits(oid, limits, by=operator(request, change.by))
            )
        except DirectoryError as exc:
            return _refusal(exc)
        return _json(after)

    @router.get("/admin/onboarding/{oid}")
    async def acceptance_report(request: Request, oid: str) -> Response:
        if (refusal := refused(request)) is not None:
            return refusal
        try:
            report = await run_in_threadpool(onboarding.report, oid)
        except UnknownOrganization as exc:
            return problem(404, "Not Found", str(exc))
        return JSONResponse(report.to_json())

    @router.get("/admin/nodes")
    async def nodes(request: Request) -> Response:
        if (refusal := refused(request)) is not None:
            return refusal
        _, snapshot = await run_in_threadpool(directory.load)
        return JSONResponse([node.model_dump(mode="json") for node in snapshot.nodes])

    @router.post("/admin/nodes")
    async def add_node(request: Request) -> Response:
        if (refusal := refused(request)) is not None:
            return refusal
        new = await body(request, NewNode)
        if isinstance(new, Response):
            return new
        assert isinstance(new, NewNode)
        node = NodeSettings.model_validate(new.model_dump())
        try:
            await run_in_threadpool(directory.add_node, node, by=operator(request, new.by))
        except DirectoryError as exc:
            return _refusal(exc)
        return _json(node, 201)

    @router.delete("/admin/nodes/{ae_title}")
    async def remove_node(request: Request, ae_title: str) -> Response:
        if (refusal := refused(request)) is not None:
            return refusal
        try:
            await run_in_threadpool(directory.remove_node, ae_title, by=operator(request, ""))
        except DirectoryError as exc:
            return _refusal(exc)
        return Response(status_code=204)

    return router
