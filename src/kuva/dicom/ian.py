"""Instance Availability Notification SCU (PS3.4 Annex R): the N-CREATE and its sending.

An IAN tells a peer which instances of a study the archive holds and whether they
can be retrieved (PS3.3 C.4.23, Instance Availability Notification Module): the
study, its series, and per instance its SOP Class and Instance UIDs, Instance
Availability (ONLINE, or UNAVAILABLE for instances that were rejected) and the AE
title to retrieve it from. Dates and names are not part of the notification.

This module builds the data set and sends it on a new association
(``IanSender``); deciding when and to whom (the registration pipeline, its outbox
tasks and retries) belongs to services.registration.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID

from kuva.config import Settings
from kuva.dicom import datasets
from kuva.dicom.contexts import BASIC_TRANSFER_SYNTAXES
from kuva.dicom.net import associate
from kuva.dicom.observer import NET_METRICS
from kuva.model.availability import AVAILABILITIES, AvailableInstance
from kuva.model.directory import NodeSettings
from kuva.model.uids import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    new_uid,
)
from kuva.services.registration import NodeUnreachable
from kuva.tls import client_context

# Instance Availability Notification SOP Class (PS3.4 R.3).
INSTANCE_AVAILABILITY_NOTIFICATION = UID("1.2.840.10008.5.1.4.33")


class IanDeliveryError(Exception):
    """The peer could not be reached or did not answer Success (for the retry log)."""


class AssociationFailed(IanDeliveryError, NodeUnreachable):
    """No association with the peer (down, refusing kuva, or silent until timed out):
    services.registration pauses its other IANs to that node."""


def notification(
    study_instance_uid: str, instances: Iterable[AvailableInstance], retrieve_ae_title: str
) -> Dataset:
    """The N-CREATE data set of an IAN (PS3.3 C.4.23): one Referenced Series item per
    series, in the order the series first appear in ``instances``."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ReferencedPerformedProcedureStepSequence = DicomSequence()  # Type 2: none known
    ds.StudyInstanceUID = study_instance_uid
    by_series: dict[str, list[AvailableInstance]] = {}
    for instance in instances:
        by_series.setdefault(instance.series_instance_uid, []).append(instance)
    series_items = []
    for series_uid, members in by_series.items():
        series = Dataset()
        series.SeriesInstanceUID = series_uid
        references = []
        for member in members:
            if member.availability not in AVAILABILITIES:
                raise ValueError(f"Instance Availability {member.availability!r} is not defined")
            item = Dataset()
            item.ReferencedSOPClassUID = member.sop_class_uid
            item.ReferencedSOPInstanceUID = member.sop_instance_uid
            item.InstanceAvailability = member.availability
            item.RetrieveAETitle = retrieve_ae_title
            references.append(item)
        series.ReferencedSOPSequence = DicomSequence(references)
        series_items.append(series)
    ds.ReferencedSeriesSequence = DicomSequence(series_items)
    return ds


def send_notification(
    ds: Dataset,
    *,
    calling_ae_title: str,
    host: str,
    port: int,
    called_ae_title: str,
    timeout: float = 30.0,
    ssl_context: ssl.SSLContext | None = None,
) -> str:
    """Send ``ds`` as an N-CREATE to the peer; return the IAN's SOP Instance UID.

    Raises IanDeliveryError when the association is refused or fails
    (AssociationFailed), or the N-CREATE answers anything but Success (0x0000) -
    the caller retries later. ``timeout`` bounds the connection too: a node that
    drops packets costs ``timeout``, not the operating system's minutes of TCP
    retries. ``ssl_context``: TLS, the peer's certificate checked to name ``host``.
    """
    try:
        assoc = associate(
            host,
            port,
            calling_ae=calling_ae_title,
            called_ae=called_ae_title,
            contexts=[(INSTANCE_AVAILABILITY_NOTIFICATION, BASIC_TRANSFER_SYNTAXES)],
            connect_timeout=timeout,
            acse_timeout=timeout,
            dimse_timeout=timeout,
            network_timeout=timeout,
            ssl_context=ssl_context,
            server_hostname=host if ssl_context is not None else None,
            implementation_class_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version_name=IMPLEMENTATION_VERSION_NAME,
            observer=NET_METRICS,
        )
    except ConnectionError as exc:
        raise AssociationFailed(
            f"association with {called_ae_title} at {host}:{port} failed: {exc}"
        ) from exc
    uid = new_uid()
    try:
        context = assoc.context_for(INSTANCE_AVAILABILITY_NOTIFICATION)
        if context is None:
            raise IanDeliveryError(
                f"IAN to {called_ae_title}: association accepted without the IAN SOP Class"
            )
        response = assoc.n_create(
            context,
            INSTANCE_AVAILABILITY_NOTIFICATION,
            uid,
            datasets.encode(ds, context.transfer_syntax),
        )
    finally:
        if assoc.is_established:
            assoc.release()
    if response.status != 0x0000:
        shown = "no response" if response.status is None else f"status 0x{response.status:04X}"
        raise IanDeliveryError(f"IAN to {called_ae_title}: {shown}")
    return uid


class IanSender:
    """services.registration's AvailabilityNotifier over DICOM: kuva's own AE
    title calls the node and names itself as the Retrieve AE Title."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._ae_title = settings.dicom.ae_title
        self._timeout = settings.dicom.acse_timeout

    def notify(
        self, node: NodeSettings, study_instance_uid: str, instances: list[AvailableInstance]
    ) -> None:
        send_notification(
            notification(study_instance_uid, instances, self._ae_title),
            calling_ae_title=self._ae_title,
            host=node.host,
            port=node.port,
            called_ae_title=node.ae_title,
            timeout=self._timeout,
            ssl_context=client_context(self._settings.tls) if node.tls else None,
        )
