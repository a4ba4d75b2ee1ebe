"""Instance Availability Notification SCU (PS3.4 Annex R) against an independent IAN SCP
on dcmjs-dimse (Node.js): the N-CREATE arrives whole and a failure status is loud."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from kuva.dicom.ian import (
    INSTANCE_AVAILABILITY_NOTIFICATION,
    IanDeliveryError,
    notification,
    send_notification,
)
from kuva.model.availability import UNAVAILABLE, AvailableInstance
from tests.support.dcmjs import DcmjsIanReceiver, ensure_dcmjs_installed

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
STUDY = "1.2.246.10.0.10.99.1"
INSTANCES = [
    AvailableInstance("1.2.246.10.0.10.99.2.1", CT, "1.2.246.10.0.10.99.3.1"),
    AvailableInstance("1.2.246.10.0.10.99.2.2", MR, "1.2.246.10.0.10.99.3.3"),
    AvailableInstance("1.2.246.10.0.10.99.2.1", CT, "1.2.246.10.0.10.99.3.2", UNAVAILABLE),
]

pytestmark = pytest.mark.dcmjs


@pytest.fixture(scope="module", autouse=True)
def _dcmjs_installed() -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js (node and npm) not installed")
    try:
        ensure_dcmjs_installed()
    except RuntimeError as exc:
        pytest.skip(f"dcmjs-dimse not installable: {exc}")


@pytest.fixture
def receiver() -> Iterator[DcmjsIanReceiver]:
    scp = DcmjsIanReceiver()
    yield scp
    scp.close()


def send(ds_instances: list[AvailableInstance], port: int, called: str = "DCMJSIAN") -> str:
    return send_notification(
        notification(STUDY, ds_instances, "KUVA"),
        calling_ae_title="KUVA",
        host="127.0.0.1",
        port=port,
        called_ae_title=called,
        timeout=10.0,
    )


def test_received_whole(receiver: DcmjsIanReceiver) -> None:
    uid = send(INSTANCES, receiver.port)
    [got] = receiver.wait_for(1, timeout=10)
    assert got.sop_instance_uid == uid
    assert got.sop_class_uid == INSTANCE_AVAILABILITY_NOTIFICATION
    assert got.study_uid == STUDY
    assert got.instances() == {i.sop_instance_uid: i.availability for i in INSTANCES}
    assert got.retrieve_ae == {i.sop_instance_uid: "KUVA" for i in INSTANCES}
    assert receiver.of_study(STUDY) == [got]
    assert receiver.of_study("1.2.246.10.0.10.99.9") == []


def test_large_notification_spanning_many_pdus(receiver: DcmjsIanReceiver) -> None:
    """Hundreds of instances in several series: the data set is fragmented over
    many P-DATA PDUs and must still arrive complete."""
    many = [
        AvailableInstance(
            f"1.2.246.10.0.10.99.2.{s}",
            CT,
            f"1.2.246.10.0.10.99.3.{s}.{n}",
            UNAVAILABLE if n % 7 == 0 else "ONLINE",
        )
        for s in range(1, 5)
        for n in range(1, 151)
    ]
    send(many, receiver.port)
    send(INSTANCES, receiver.port)
    first, second = receiver.wait_for(2, timeout=10)
    assert first.instances() == {i.sop_instance_uid: i.availability for i in many}
    assert set(first.retrieve_ae.values()) == {"KUVA"}
    assert second.instances() == {i.sop_instance_uid: i.availability for i in INSTANCES}


def test_failure_status_and_refused_association_raise() -> None:
    refusing = DcmjsIanReceiver(status=0x0110)
    try:
        with pytest.raises(IanDeliveryError, match="0x0110"):
            send(INSTANCES, refusing.port)
        assert len(refusing.wait_for(1, timeout=10)) == 1  # it did arrive, and was refused
        with pytest.raises(IanDeliveryError, match="association"):
            send(INSTANCES, refusing.port, called="SOMEONEELSE")
        port = refusing.port
    finally:
        refusing.close()
    with pytest.raises(IanDeliveryError, match="association"):
        send(INSTANCES, port)


def test_peer_back_on_the_same_port() -> None:
    first = DcmjsIanReceiver()
    port = first.port
    first.close()
    with pytest.raises(IanDeliveryError, match="association"):
        send(INSTANCES, port)
    again = DcmjsIanReceiver(port)
    try:
        send(INSTANCES, port)
        [got] = again.wait_for(1, timeout=10)
        assert got.study_uid == STUDY
    finally:
        again.close()
