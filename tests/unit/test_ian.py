"""Instance Availability Notification SCU (PS3.4 Annex R) against a pynetdicom IAN SCP."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.events import Event

from kuva.dicom.ian import (
    INSTANCE_AVAILABILITY_NOTIFICATION,
    UNAVAILABLE,
    AvailableInstance,
    IanDeliveryError,
    notification,
    send_notification,
)

CT = "1.2.840.10008.5.1.4.1.1.2"
STUDY = "1.2.246.10.0.10.99.1"
INSTANCES = [
    AvailableInstance("1.2.246.10.0.10.99.2.1", CT, "1.2.246.10.0.10.99.3.1"),
    AvailableInstance("1.2.246.10.0.10.99.2.2", CT, "1.2.246.10.0.10.99.3.3"),
    AvailableInstance("1.2.246.10.0.10.99.2.1", CT, "1.2.246.10.0.10.99.3.2", UNAVAILABLE),
]


class IanReceiver:
    """A pynetdicom IAN SCP that keeps what it receives and answers ``status``."""

    def __init__(self, status: int = 0x0000) -> None:
        self.status = status
        self.received: list[tuple[str, Dataset]] = []
        self.ae = AE(ae_title="IANSCP")
        self.ae.add_supported_context(INSTANCE_AVAILABILITY_NOTIFICATION)
        self.server = self.ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_N_CREATE, self._on_create)]
        )
        self.port = int(self.server.server_address[1])

    def _on_create(self, event: Event) -> tuple[int, Dataset | None]:
        request = event.request
        self.received.append((str(request.AffectedSOPInstanceUID), event.attribute_list))
        return self.status, None

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def receiver() -> Iterator[IanReceiver]:
    scp = IanReceiver()
    yield scp
    scp.close()


def test_notification_lists_every_instance_by_series() -> None:
    ds = notification(STUDY, INSTANCES, "KUVA")
    assert ds.StudyInstanceUID == STUDY
    assert ds.ReferencedPerformedProcedureStepSequence == []
    series = {s.SeriesInstanceUID: s for s in ds.ReferencedSeriesSequence}
    assert list(series) == ["1.2.246.10.0.10.99.2.1", "1.2.246.10.0.10.99.2.2"]
    first = series["1.2.246.10.0.10.99.2.1"].ReferencedSOPSequence
    assert [(i.ReferencedSOPInstanceUID, i.InstanceAvailability) for i in first] == [
        ("1.2.246.10.0.10.99.3.1", "ONLINE"),
        ("1.2.246.10.0.10.99.3.2", "UNAVAILABLE"),
    ]
    assert all(i.RetrieveAETitle == "KUVA" and i.ReferencedSOPClassUID == CT for i in first)
    with pytest.raises(ValueError):
        notification(STUDY, [AvailableInstance("1.2.3", CT, "1.2.4", "GONE")], "KUVA")


def test_sent_as_n_create_and_received_whole(receiver: IanReceiver) -> None:
    ds = notification(STUDY, INSTANCES, "KUVA")
    uid = send_notification(
        ds, calling_ae_title="KUVA", host="127.0.0.1", port=receiver.port, called_ae_title="IANSCP"
    )
    [(affected, got)] = receiver.received
    assert affected == uid
    assert got.StudyInstanceUID == STUDY
    references = [
        item.ReferencedSOPInstanceUID
        for series in got.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    ]
    assert sorted(references) == sorted(i.sop_instance_uid for i in INSTANCES)


def test_failure_status_and_refused_association_raise() -> None:
    refusing = IanReceiver(status=0x0110)
    try:
        ds = notification(STUDY, INSTANCES, "KUVA")
        with pytest.raises(IanDeliveryError, match="0x0110"):
            send_notification(
                ds,
                calling_ae_title="KUVA",
                host="127.0.0.1",
                port=refusing.port,
                called_ae_title="IANSCP",
            )
        port = refusing.port
    finally:
        refusing.close()
    with pytest.raises(IanDeliveryError, match="association"):
        send_notification(
            notification(STUDY, INSTANCES, "KUVA"),
            calling_ae_title="KUVA",
            host="127.0.0.1",
            port=port,
            called_ae_title="IANSCP",
            timeout=5,
        )
