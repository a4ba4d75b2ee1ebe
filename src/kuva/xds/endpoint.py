"""The XDS SOAP 1.2 endpoints: HTTP POST → envelope → transaction → envelope (FastAPI).

One POST route per path (docs/contract.md: ``/xds/registry``, ``/xds/repository``,
``/xds/imaging``), each serving the :class:`~kuva.xds.messages.Transaction`
objects given for it, chosen by ``wsa:Action`` (ITI TF-2x Appendix V.3, Web
Services for IHE Transactions; WS-Addressing 1.0 SOAP Binding).

A request is ``application/soap+xml`` (SOAP 1.2 Part 2, 7: the HTTP binding; its
optional ``action`` parameter, RFC 3902) or an MTOM/XOP package
(``multipart/related; type="application/xop+xml"``; XOP 1.0, SOAP MTOM). The body
is read while it arrives and refused, with a fault and HTTP 413, once it passes
``max_request_bytes`` (or at once when its Content-Length says so). Then, in a
worker thread (handlers do blocking database and disk work):

1. the envelope is read and checked (:func:`kuva.xds.soap.parse_envelope`);
2. the action picks the transaction; an action the path does not serve is a
   ``wsa:ActionNotSupported`` fault (WS-Addressing SOAP Binding 6.4.4);
3. the XUA assertion is verified (``authenticate``, kuva.xds.xua): a refused one is
   a wsse fault and no transaction sees the request;
4. the payload must be the transaction's payload element (else a Sender fault);
5. the payload is validated against the XDS schemas (:mod:`kuva.xds.schema`): a
   valid one goes to ``transaction.handle``, an invalid one to
   ``transaction.invalid`` with the problems (the transaction answers with its own
   error response, e.g. a RegistryResponse, not a fault);
6. the answer is a SOAP 1.2 envelope with ``wsa:Action``, a new ``wsa:MessageID``
   and ``wsa:RelatesTo``; written as MTOM when the request was MTOM or the answer
   has attachments (streamed part by part), else as ``application/soap+xml``.

Faults (:func:`kuva.xds.soap.fault_reply`) are never MTOM: Sender → HTTP 400,
the other codes → 500 (SOAP 1.2 Part 2, Table 20); an over-long body → 413, an
unsupported media type → 415. An exception from a handler becomes a Receiver fault
with a generic reason; its traceback goes to the log at ERROR, never on the wire.
Each fault is logged at WARNING with its code and reason but no message content
(so a handler's SoapFault reason must not carry patient data).
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from kuva.dicomweb.multipart_parser import ContentType, parse_content_type
from kuva.web.identity import SCOPE_KEY, client_organization
from kuva.xds.messages import SoapFault, SoapRequest, SoapResponse, Transaction
from kuva.xds.mtom import MtomError, MtomReader, mtom_body
from kuva.xds.schema import validate
from kuva.xds.soap import (
    SOAP_CONTENT_TYPE,
    DetailedFault,
    fault_reply,
    parse_envelope,
    response_envelope,
)

__all__ = ["soap_router"]

log = logging.getLogger(__name__)

# Media types read as a plain SOAP envelope. text/xml is SOAP 1.1's: it is read so
# that a SOAP 1.1 client gets the VersionMismatch fault it understands.
_PLAIN = {"application/soap+xml", "text/xml"}

Endpoint = Callable[[Request], Coroutine[Any, Any, Response]]


def soap_router(
    endpoints: Mapping[str, Sequence[Transaction]],
    max_request_bytes: int,
    authenticate: Callable[[SoapRequest], None] | None = None,
) -> APIRouter:
    """A router with one SOAP 1.2 POST endpoint per path, dispatching by wsa:Action.

    ``endpoints``: path (e.g. ``"/xds/registry"``) → the transactions served there;
    two transactions with the same action on one path are a ValueError.
    ``max_request_bytes``: the largest request body accepted. ``authenticate``:
    verifies a request's XUA assertion and sets its user (kuva.xds.xua.authentication).
    """
    if max_request_bytes <= 0:
        raise ValueError("max_request_bytes must be positive")
    router = APIRouter()
    for path, transactions in endpoints.items():
        table: dict[str, Transaction] = {}
        for transaction in transactions:
            if transaction.action in table:
                raise ValueError(f"two transactions for action {transaction.action} at {path}")
            table[transaction.action] = transaction
        router.add_api_route(
            path,
            _endpoint(path, table, max_request_bytes, authenticate),
            methods=["POST"],
            include_in_schema=False,
            response_class=Response,
        )
    return router


class _Body:
    """The request body as read: a plain envelope, or an MTOM reader fed while reading."""

    def __init__(self, content_type: ContentType) -> None:
        self.content_type = content_type
        self.reader: MtomReader | None = None
        self.data = io.BytesIO()
        self.actions: list[str] = []
        action = content_type.parameters.get("action")
        if action:
            self.actions.append(action.strip())
        if content_type.media_type == "multipart/related":
            try:
                self.reader = MtomReader(content_type)
            except MtomError as exc:
                raise SoapFault("Sender", str(exc)) from exc
            start_info = content_type.parameters.get("start-info")
            if start_info:
                try:
                    inner = parse_content_type(start_info).parameters.get("action")
                except ValueError:
                    inner = None
                if inner:
                    self.actions.append(inner.strip())

    def feed(self, chunk: bytes) -> None:
        if self.reader is None:
            self.data.write(chunk)
            return
        try:
            self.reader.feed(chunk)
        except MtomError as exc:
            raise SoapFault("Sender", f"malformed MTOM/XOP request: {exc}") from exc


def _endpoint(
    path: str,
    table: Mapping[str, Transaction],
    limit: int,
    authenticate: Callable[[SoapRequest], None] | None,
) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        started = time.perf_counter()
        try:
            body = _open(request.headers.get("content-type"))
            declared = request.headers.get("content-length")
            if declared is not None and declared.strip().isdigit() and int(declared) > limit:
                raise _too_large(limit)
            received = 0
            async for chunk in request.stream():
                received += len(chunk)
                if received > limit:
                    raise _too_large(limit)
                body.feed(chunk)
        except ClientDisconnect:
            log.info("SOAP request at %s: the client disconnected before the body ended", path)
            return Response(status_code=400)
        except SoapFault as fault:
            response = _fault_response(fault, path, None)
            response.headers["connection"] = "close"  # the rest of the body is not read
            return response
        identity = (client_organization(request), SCOPE_KEY in request.scope)
        origin = (request.client.host if request.client is not None else "", str(request.url))
        return await run_in_threadpool(
            _process, path, table, body, started, identity, origin, authenticate
        )

    return endpoint


def _open(header: str | None) -> _Body:
    if not header:
        raise DetailedFault(
            "Sender",
            "the request has no Content-Type: send application/soap+xml or MTOM/XOP",
            http_status=415,
        )
    try:
        content_type = parse_content_type(header)
    except ValueError as exc:
        raise SoapFault("Sender", f"malformed Content-Type: {exc}") from exc
    if content_type.media_type not in _PLAIN and content_type.media_type != "multipart/related":
        raise DetailedFault(
            "Sender",
            f"unsupported media type {content_type.media_type}: a SOAP 1.2 request is "
            'application/soap+xml or multipart/related; type="application/xop+xml"',
            http_status=415,
        )
    return _Body(content_type)


def _too_large(limit: int) -> DetailedFault:
    return DetailedFault(
        "Sender", f"the request is larger than {limit} bytes, the most accepted", http_status=413
    )


def _process(
    path: str,
    table: Mapping[str, Transaction],
    body: _Body,
    started: float,
    identity: tuple[str | None, bool] = (None, False),
    origin: tuple[str, str] = ("", ""),
    authenticate: Callable[[SoapRequest], None] | None = None,
) -> Response:
    """Everything after the body was read; runs in a worker thread. ``identity``: the
    organisation the HTTP request acts for (``SoapRequest.client_organization``) and
    whether a client certificate proved it; ``origin``: the client's IP address and
    the request URL (for the audit); ``authenticate``: verifies the request's XUA
    assertion (kuva.xds.xua) before any transaction sees it."""
    request: SoapRequest | None = None
    try:
        actions = list(body.actions)
        if body.reader is not None:
            try:
                message = body.reader.finish()
            except MtomError as exc:
                raise SoapFault("Sender", f"malformed MTOM/XOP request: {exc}") from exc
            if message.action:
                actions.append(message.action.strip())
            xml, attachments, mtom = message.root, message.parts, True
        else:
            xml, attachments, mtom = body.data.getvalue(), {}, False
        if len(set(actions)) > 1:
            raise DetailedFault(
                "Sender",
                "the action parameters of the request's media types disagree",
                "wsa:InvalidAddressingHeader",
                subsubcode="wsa:ActionMismatch",
            )
        request = parse_envelope(
            xml,
            http_action=actions[0] if actions else None,
            attachments=attachments,
            mtom=mtom,
        )
        request.client_organization, request.authenticated = identity
        request.client_address, request.endpoint = origin
        transaction = table.get(request.action)
        if transaction is None:
            raise DetailedFault(
                "Sender",
                f"the action {request.action} is not supported at {path}",
                "wsa:ActionNotSupported",
                problem_action=request.action,
            )
        if authenticate is not None:
            authenticate(request)
        if request.body.tag != transaction.payload:
            raise SoapFault(
                "Sender",
                f"the request element of {request.action} is {transaction.payload}, "
                f"not {request.body.tag}",
            )
        problems = validate(request.body)
        if problems:
            log.info(
                "SOAP %s at %s: payload breaks the XDS schemas (%d problem(s))",
                request.action,
                path,
                len(problems),
            )
            log.debug("schema problems: %s", problems)
            response = transaction.invalid(request, problems)
        else:
            response = transaction.handle(request)
        if not isinstance(response, SoapResponse):
            raise TypeError(f"the handler of {request.action} returned {type(response).__name__}")
        answer = _answer(path, request, response)
        log.info(
            "SOAP %s at %s answered %s in %.1f ms",
            request.action,
            path,
            response.action,
            (time.perf_counter() - started) * 1000,
        )
        return answer
    except SoapFault as fault:
        return _fault_response(fault, path, request.message_id if request else None)
    except Exception:
        log.exception("SOAP %s at %s failed", request.action if request else "request", path)
        internal = SoapFault("Receiver", "the request could not be processed (internal error)")
        return _fault_response(internal, path, request.message_id if request else None)


def _answer(path: str, request: SoapRequest, response: SoapResponse) -> Response:
    envelope = response_envelope(response, request.message_id)
    if not request.mtom and not response.attachments:
        return Response(envelope, media_type=SOAP_CONTENT_TYPE)
    package = mtom_body(envelope, response.attachments)
    return StreamingResponse(
        _guarded(package.chunks, path, response.action), media_type=package.content_type
    )


def _guarded(chunks: Iterator[bytes], path: str, action: str) -> Iterator[bytes]:
    """The body's chunks; a failure while streaming is logged (the body is then cut)."""
    try:
        yield from chunks
    except Exception:
        log.exception("MTOM response %s at %s aborted while being sent", action, path)
        raise


def _fault_response(fault: SoapFault, path: str, relates_to: str | None) -> Response:
    reply = fault_reply(fault, relates_to)
    subcode = f"/{fault.subcode}" if fault.subcode else ""
    log.warning(
        "SOAP fault at %s: HTTP %d %s%s: %s", path, reply.status, fault.code, subcode, fault.reason
    )
    return Response(reply.body, status_code=reply.status, media_type=reply.content_type)
