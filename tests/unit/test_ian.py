"""Instance Availability Notification SCU (PS3.4 Annex R) against a pynetdicom IAN SCP."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kuva.dicom.ian import (
    IanDeliveryError,
    notification,
    send_notification,
)
from kuva.model.availability import UNAVAILABLE, AvailableInstance
from tests.support.ian import IanReceiver

CT = "1.2.840.10008.5.1.4.1.1.2"
STUDY = "1.2.246.10.0.10.99.1"
INSTANCES = [
    AvailableInstance("1.2.246.10.0.10.99.2.1", CT, "1.2.246.10.0.10.99.3.1"),
    AvailableInstance("1.2.246.10.0.10.99.2.2", CT, "1.2.246.10.0.10.99.3.3"),
    AvailableInstance("1.2.246.10.0.10.99.2.1", CT, "1.2.246.10.0.10.99.3.2", UNAVAILABLE),
]


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
    [got] = receiver.received
    assert got.sop_instance_uid == uid
    assert got.study_uid == STUDY
    assert got.instances() == {i.sop_instance_uid: i.availability for i in INSTANCES}


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
