"""The requesting side: `associate()` opens an association to a peer (PS3.8 7.1, the
A-ASSOCIATE service as requestor) on the engine loop and returns it once accepted."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from typing import cast

from kuva.dicom.net.association import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    Association,
    AssociationFailed,
    AssociationHandler,
    AssociationRejected,
    AssociationSettings,
    NetObserver,
)
from kuva.dicom.net.loop import engine_loop
from kuva.dicom.net.pdu import AssociateRequest, ProposedContext, RoleSelection, UserInformation

__all__ = ["AssociationFailed", "AssociationRejected", "associate", "associate_async"]


def proposed_contexts(
    contexts: Sequence[ProposedContext] | Sequence[tuple[str, Sequence[str]]],
) -> tuple[ProposedContext, ...]:
    """Presentation contexts to propose (PS3.8 9.3.2.2): given ones as they are,
    (abstract syntax, transfer syntaxes) pairs with ids 1, 3, 5, ..."""
    proposed: list[ProposedContext] = []
    for index, context in enumerate(contexts):
        if isinstance(context, ProposedContext):
            proposed.append(context)
        else:
            abstract_syntax, transfer_syntaxes = cast(tuple[str, Sequence[str]], context)
            proposed.append(
                ProposedContext(2 * index + 1, abstract_syntax, tuple(transfer_syntaxes))
            )
    return tuple(proposed)


async def associate_async(
    host: str,
    port: int,
    *,
    calling_ae: str,
    called_ae: str,
    contexts: Sequence[ProposedContext] | Sequence[tuple[str, Sequence[str]]],
    roles: Sequence[RoleSelection] = (),
    max_pdu: int = 1 << 20,
    connect_timeout: float = 30.0,
    acse_timeout: float = 30.0,
    dimse_timeout: float = 60.0,
    network_timeout: float = 60.0,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    handler: AssociationHandler | None = None,
    implementation_class_uid: str = IMPLEMENTATION_CLASS_UID,
    implementation_version_name: str = IMPLEMENTATION_VERSION_NAME,
    observer: NetObserver | None = None,
    max_dataset_bytes: int = 64 << 20,
) -> Association:
    """Open an association (on the engine loop): connect (TLS when `ssl_context` is given),
    send the A-ASSOCIATE-RQ and wait for the answer within `acse_timeout`. Raises
    AssociationRejected (A-ASSOCIATE-RJ) or AssociationFailed. `handler` serves requests
    the peer sends back (C-STORE sub-operations of a C-GET: propose the SCP role in
    `roles`); its store_sink and handle are used."""
    engine = engine_loop()
    loop = asyncio.get_running_loop()
    if loop is not engine.loop:
        raise RuntimeError("associate_async runs on the engine loop: use associate() elsewhere")
    request = AssociateRequest(
        called_ae=called_ae,
        calling_ae=calling_ae,
        contexts=proposed_contexts(contexts),
        user=UserInformation(
            max_pdu_length=max_pdu,
            implementation_class_uid=implementation_class_uid,
            implementation_version_name=implementation_version_name,
            roles=tuple(roles),
        ),
    )
    settings = AssociationSettings(
        engine=engine,
        executor=engine.executor if handler is not None else None,
        handler=handler,
        local_max_pdu=max_pdu,
        acse_timeout=acse_timeout,
        network_timeout=network_timeout,
        dimse_timeout=dimse_timeout,
        max_dataset_bytes=max_dataset_bytes,
        observer=observer,
    )
    assoc = Association(settings, is_requestor=True, request=request)
    try:
        await asyncio.wait_for(
            loop.create_connection(
                lambda: assoc,
                host,
                port,
                ssl=ssl_context,
                server_hostname=server_hostname if ssl_context is not None else None,
                ssl_handshake_timeout=connect_timeout if ssl_context is not None else None,
            ),
            connect_timeout,
        )
    except (OSError, TimeoutError) as exc:
        raise AssociationFailed(f"cannot connect to {host}:{port}: {exc or 'timeout'}") from exc
    await assoc._setup
    return assoc


def associate(
    host: str,
    port: int,
    *,
    calling_ae: str,
    called_ae: str,
    contexts: Sequence[ProposedContext] | Sequence[tuple[str, Sequence[str]]],
    roles: Sequence[RoleSelection] = (),
    max_pdu: int = 1 << 20,
    connect_timeout: float = 30.0,
    acse_timeout: float = 30.0,
    dimse_timeout: float = 60.0,
    network_timeout: float = 60.0,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    handler: AssociationHandler | None = None,
    implementation_class_uid: str = IMPLEMENTATION_CLASS_UID,
    implementation_version_name: str = IMPLEMENTATION_VERSION_NAME,
    observer: NetObserver | None = None,
    max_dataset_bytes: int = 64 << 20,
) -> Association:
    """`associate_async` for any thread but the engine loop's (there: RuntimeError)."""
    engine = engine_loop()
    engine.check_not_loop_thread("associate")
    return engine.run(
        associate_async(
            host,
            port,
            calling_ae=calling_ae,
            called_ae=called_ae,
            contexts=contexts,
            roles=roles,
            max_pdu=max_pdu,
            connect_timeout=connect_timeout,
            acse_timeout=acse_timeout,
            dimse_timeout=dimse_timeout,
            network_timeout=network_timeout,
            ssl_context=ssl_context,
            server_hostname=server_hostname,
            handler=handler,
            implementation_class_uid=implementation_class_uid,
            implementation_version_name=implementation_version_name,
            observer=observer,
            max_dataset_bytes=max_dataset_bytes,
        )
    )
