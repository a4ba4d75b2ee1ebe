"""Associations kuva opens to a configured node (PS3.8 7.1, as requestor): C-MOVE
sub-operations (dicom.retrieve_scp), storage commitment reports on a new
association (dicom.commitment) and Instance Availability Notifications
(dicom.ian). Kuva's AE title calls, the node's is called; timeouts from
``[dicom]``; over TLS with kuva's certificate when the node says ``tls = true``.
"""

from __future__ import annotations

from collections.abc import Sequence

from kuva.config import Settings
from kuva.dicom.net import Association, ProposedContext, RoleSelection, associate
from kuva.dicom.observer import NET_METRICS
from kuva.model.directory import NodeSettings
from kuva.model.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from kuva.tls import client_context


def open_association(
    settings: Settings,
    node: NodeSettings,
    contexts: Sequence[ProposedContext] | Sequence[tuple[str, Sequence[str]]],
    *,
    roles: Sequence[RoleSelection] = (),
    timeout: float | None = None,
) -> Association:
    """An established association with ``node``; raises ConnectionError naming the
    node when it is refused or fails. ``timeout`` bounds connecting and every wait
    (default: the ``[dicom]`` timeouts)."""
    dicom = settings.dicom
    try:
        return associate(
            node.host,
            node.port,
            calling_ae=dicom.ae_title,
            called_ae=node.ae_title,
            contexts=contexts,
            roles=roles,
            max_pdu=dicom.max_pdu,
            connect_timeout=timeout or dicom.acse_timeout,
            acse_timeout=timeout or dicom.acse_timeout,
            dimse_timeout=timeout or dicom.dimse_timeout,
            network_timeout=timeout or dicom.network_timeout,
            ssl_context=client_context(settings.tls) if node.tls else None,
            server_hostname=node.host if node.tls else None,
            implementation_class_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version_name=IMPLEMENTATION_VERSION_NAME,
            observer=NET_METRICS,
        )
    except ConnectionError as exc:
        raise ConnectionError(
            f"association to {node.ae_title} at {node.host}:{node.port} failed: {exc}"
        ) from exc
