"""The listening side: `Acceptor` accepts transport connections (TLS optional), negotiates
associations as acceptor (PS3.8 9.3.3-4, PS3.7 Annex D) and runs the application's
handlers in its thread pool."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from kuva.dicom.net.association import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    Association,
    AssociationHandler,
    AssociationSettings,
    NetObserver,
    PresentationContext,
    Rejection,
    Request,
)
from kuva.dicom.net.loop import engine_loop
from kuva.dicom.net.pdu import (
    APPLICATION_CONTEXT,
    AssociateAccept,
    AssociateRequest,
    ContextResult,
    RoleSelection,
    UserInformation,
)

__all__ = ["Acceptor", "AcceptorConfig", "SupportedContext", "unrecognized"]

log = logging.getLogger("kuva.dicom.net")

UNRECOGNIZED_OPERATION = 0x0211  # PS3.7 C.4, general failure status

# A-ASSOCIATE-RJ (result, source, reason) the engine answers with (PS3.8 Table 9-21)
CALLED_AE_NOT_RECOGNIZED = Rejection(1, 1, 7)
APPLICATION_CONTEXT_NOT_SUPPORTED = Rejection(1, 1, 2)
PROTOCOL_VERSION_NOT_SUPPORTED = Rejection(1, 2, 2)
LOCAL_LIMIT_EXCEEDED = Rejection(2, 3, 2)
NO_REASON_GIVEN = Rejection(2, 1, 1)  # on_request raised


@dataclass(frozen=True, slots=True)
class SupportedContext:
    """Acceptor configuration for one abstract syntax."""

    # preference order: the first of THESE that the proposed context offers is accepted
    transfer_syntaxes: tuple[str, ...]
    requestor_may_be_scp: bool = False  # grant role selection scp_role=1 (C-GET storage)


@dataclass(frozen=True)
class AcceptorConfig:
    """What an acceptor serves and its limits (shared by all its associations)."""

    ae_title: str
    supported: Mapping[str, SupportedContext]  # shared, immutable: never copied per association
    max_pdu: int = 1 << 20  # offered maximum PDU length (PS3.8 D.1)
    max_associations: int = 64  # over -> A-ASSOCIATE-RJ (2, 3, 2)
    acse_timeout: float = 30.0
    network_timeout: float = 60.0
    dimse_timeout: float = 60.0
    handler_threads: int = 64
    max_dataset_bytes: int = 64 << 20
    implementation_class_uid: str = IMPLEMENTATION_CLASS_UID
    implementation_version_name: str = IMPLEMENTATION_VERSION_NAME
    ssl_context: ssl.SSLContext | None = None
    handshake_timeout: float = 30.0
    on_handshake_failed: Callable[[str, BaseException], None] | None = None
    observer: NetObserver | None = None


def unrecognized(assoc: Association, req: Request) -> None:
    """Answer a request the handler does not serve: 0x0211, unrecognized operation."""
    assoc.respond(req, UNRECOGNIZED_OPERATION)


class Acceptor:
    """A listening server on the engine loop; handlers run in its own thread pool."""

    def __init__(self, config: AcceptorConfig, handler: AssociationHandler) -> None:
        self.config = config
        self.handler = handler
        self.tls_context = config.ssl_context
        self.handshake_timeout = config.handshake_timeout
        self._engine = engine_loop()
        self._executor = ThreadPoolExecutor(
            config.handler_threads, thread_name_prefix="kuva-dicom-handler"
        )
        self._settings = AssociationSettings(
            engine=self._engine,
            executor=self._executor,
            handler=handler,
            local_max_pdu=config.max_pdu,
            acse_timeout=config.acse_timeout,
            network_timeout=config.network_timeout,
            dimse_timeout=config.dimse_timeout,
            max_dataset_bytes=config.max_dataset_bytes,
            observer=config.observer,
        )
        self._server: asyncio.Server | None = None
        self._connections: set[Association] = set()  # loop thread only
        self._counted: set[Association] = set()  # held against max_associations

    @property
    def associations(self) -> list[Association]:
        """The transport connections being served (negotiating, established, closing)."""
        return list(self._connections)

    # ------------------------------------------------------------------ start / stop

    def start(self, host: str, port: int, *, sock: socket.socket | None = None) -> tuple[str, int]:
        """Listen on (host, port) with SO_REUSEADDR, or on `sock`, an already bound and
        listening socket (worker processes sharing one); returns the bound address."""
        return self._engine.run(self._start(host, port, sock))

    async def _start(self, host: str, port: int, sock: socket.socket | None) -> tuple[str, int]:
        loop = self._engine.loop
        if sock is not None:
            server = await loop.create_server(self._protocol, sock=sock)
        else:
            server = await loop.create_server(self._protocol, host, port, reuse_address=True)
        self._server = server
        address = server.sockets[0].getsockname()
        return str(address[0]), int(address[1])

    def _protocol(self) -> Association:
        assoc = Association(self._settings, is_requestor=False, acceptor=self)
        self._connections.add(assoc)
        return assoc

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, let running associations end (up to `timeout`), then abort the
        rest; the handler pool is shut down."""
        self._engine.run(self._stop(timeout))
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _stop(self, timeout: float) -> None:
        if self._server is not None:
            self._server.close()
        running = [asyncio.ensure_future(a.wait_closed_async()) for a in self._connections]
        if not running:
            return
        _, pending = await asyncio.wait(running, timeout=timeout)
        if not pending:
            return
        for assoc in list(self._connections):
            assoc._abort(0, 0)
        _, pending = await asyncio.wait(pending, timeout=1.0)
        for assoc in list(self._connections):
            assoc._shutdown()
        if pending:
            await asyncio.wait(pending, timeout=1.0)

    # ------------------------------------------------------------------ association hooks

    def associate_requested(self, assoc: Association) -> None:
        """Loop thread, Sta3: the engine's checks (PS3.8 9.3.4), then on_request and the
        negotiation in the pool."""
        rq = assoc.request
        config = self.config
        rejection: Rejection | None = None
        if rq.called_ae != config.ae_title:
            rejection = CALLED_AE_NOT_RECOGNIZED
        elif rq.application_context != APPLICATION_CONTEXT:
            rejection = APPLICATION_CONTEXT_NOT_SUPPORTED
        elif not rq.protocol_version & 1:
            rejection = PROTOCOL_VERSION_NOT_SUPPORTED
        elif len(self._counted) >= config.max_associations:
            rejection = LOCAL_LIMIT_EXCEEDED
        if rejection is not None:
            log.info(
                "%r rejected (%d, %d, %d)",
                assoc,
                rejection.result,
                rejection.source,
                rejection.reason,
            )
            assoc._send_reject(rejection)
            self._submit(self.handler.on_rejected, assoc, rejection)
            return
        self._counted.add(assoc)
        self._submit(self._negotiate, assoc)

    def _submit(self, function: Callable[..., object], *args: object) -> None:
        try:
            self._executor.submit(function, *args)
        except RuntimeError:  # shut down: the acceptor is stopping
            log.debug("handler pool shut down, %s not called", function)

    def _negotiate(self, assoc: Association) -> None:
        """Pool thread: on_request, then the presentation contexts, then on_accepted; the
        A-ASSOCIATE-AC or -RJ goes out on the loop."""
        try:
            rejection = self.handler.on_request(assoc)
        except Exception:
            log.exception("%r: on_request failed", assoc)
            rejection = NO_REASON_GIVEN
        if rejection is not None:
            self._engine.call(assoc._send_reject, rejection)
            try:
                self.handler.on_rejected(assoc, rejection)
            except Exception:
                log.exception("%r: on_rejected failed", assoc)
            return
        accept, contexts = negotiate(assoc.request, self.config)
        assoc.accept = accept
        assoc._set_contexts(contexts)
        if not assoc._mark_accepted():
            # The connection closed meanwhile: on_closed all the same, so that what
            # on_request took for the association (a limit's slot) is given back.
            self._closed(assoc, True)
            return
        try:
            self.handler.on_accepted(assoc)
        except Exception:
            log.exception("%r: on_accepted failed", assoc)
        self._engine.call(assoc._send_accept)

    def handshake_failed(self, assoc: Association, exc: BaseException) -> None:
        """Loop thread: a TLS handshake failed or timed out; the connection is closed."""
        self._connections.discard(assoc)
        host = assoc.peer_address[0]
        log.info("TLS handshake with %s failed: %s", host, exc)
        callback = self.config.on_handshake_failed
        if callback is not None:
            self._submit(self._report_handshake_failure, callback, host, exc)

    @staticmethod
    def _report_handshake_failure(
        callback: Callable[[str, BaseException], None], host: str, exc: BaseException
    ) -> None:
        try:
            callback(host, exc)
        except Exception:
            log.exception("on_handshake_failed failed")

    def association_closed(self, assoc: Association, *, aborted: bool) -> None:
        """Loop thread: the connection closed; on_closed for an accepted association."""
        self._connections.discard(assoc)
        self._counted.discard(assoc)
        if assoc._mark_ended():
            self._submit(self._closed, assoc, aborted)

    def _closed(self, assoc: Association, aborted: bool) -> None:
        try:
            self.handler.on_closed(assoc, aborted=aborted)
        except Exception:
            log.exception("%r: on_closed failed", assoc)


def negotiate(
    rq: AssociateRequest, config: AcceptorConfig
) -> tuple[AssociateAccept, dict[int, PresentationContext]]:
    """The A-ASSOCIATE-AC answering `rq` (PS3.8 9.3.3, PS3.7 D.3.3) and the accepted
    contexts: per proposed context one lookup in `config.supported`, result 3 (abstract
    syntax not supported), 4 (no transfer syntax in common) or 0 with the first of the
    supported transfer syntaxes proposed; role selection answered (SCP role granted only
    where `requestor_may_be_scp`); the asynchronous operations window answered (1, 1)."""
    supported = config.supported
    asked = {r.sop_class_uid: r for r in rq.user.roles}
    results: list[ContextResult] = []
    contexts: dict[int, PresentationContext] = {}
    roles: dict[str, RoleSelection] = {}
    for proposed in rq.contexts:
        syntax = proposed.abstract_syntax
        offer = supported.get(syntax)
        if offer is None:
            results.append(ContextResult(proposed.id, 3, ""))
            continue
        chosen = next(
            (ts for ts in offer.transfer_syntaxes if ts in proposed.transfer_syntaxes), ""
        )
        if not chosen:
            results.append(ContextResult(proposed.id, 4, ""))
            continue
        results.append(ContextResult(proposed.id, 0, chosen))
        local_scu, local_scp = False, True
        role = asked.get(syntax)
        if role is not None:
            scp = role.scp_role and offer.requestor_may_be_scp
            roles[syntax] = RoleSelection(syntax, role.scu_role, scp)
            local_scu, local_scp = scp, role.scu_role
        contexts[proposed.id] = PresentationContext(
            proposed.id, syntax, chosen, local_scu, local_scp
        )
    user = UserInformation(
        max_pdu_length=config.max_pdu,
        implementation_class_uid=config.implementation_class_uid,
        implementation_version_name=config.implementation_version_name,
        async_ops=(1, 1) if rq.user.async_ops is not None else None,
        roles=tuple(roles.values()),
    )
    accept = AssociateAccept(
        called_ae=rq.called_ae,
        calling_ae=rq.calling_ae,
        contexts=tuple(results),
        user=user,
        application_context=rq.application_context,
    )
    return accept, contexts
