"""Storage Commitment Push Model (PS3.4 Annex J) against a running kuva, pynetdicom as SCU."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, MRImageStorage, generate_uid

from tests.support.archive import flip_byte, index_rows
from tests.support.commitment_scu import CommitmentSCU, committed, failed
from tests.support.server import KuvaServer, free_port
from tests.support.synthetic import make_ct_series

SCU = "PACS1"


def store(scu: CommitmentSCU, server: KuvaServer, datasets: list[Dataset]) -> None:
    assoc = scu.associate(server.dicom_port, storage=[CTImageStorage])
    for ds in datasets:
        assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()


def refs(datasets: list[Dataset]) -> list[tuple[str, str]]:
    return [(str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in datasets]


def node(port: int, ae_title: str = SCU) -> dict[str, object]:
    return {"ae_title": ae_title, "host": "127.0.0.1", "port": port, "organization": ""}


def test_report_on_same_association_with_failures(
    kuva_server: Callable[..., KuvaServer], database_url: str
) -> None:
    server = kuva_server(nodes=[node(free_port())])
    scu = CommitmentSCU(SCU)
    datasets = make_ct_series(4, rows=64, cols=64)
    store(scu, server, datasets)
    good, corrupted, wrong_class = datasets[0:2], datasets[2], datasets[3]
    rows = index_rows(database_url)
    flip_byte(server.blob_dir / rows[corrupted.SOPInstanceUID].blob_key)
    unknown = (str(CTImageStorage), generate_uid())

    assoc = scu.associate(server.dicom_port)
    status, transaction = scu.request(
        assoc,
        [
            *refs(good),
            *refs([corrupted]),
            (str(MRImageStorage), wrong_class.SOPInstanceUID),
            unknown,
        ],
    )
    assert status == 0x0000
    event_type, info, where = scu.wait_report()
    assoc.release()

    assert where == "same"
    assert event_type == 2
    assert info.TransactionUID == transaction
    assert info.RetrieveAETitle == "KUVA"
    assert committed(info) == {ds.SOPInstanceUID for ds in good}
    assert failed(info) == {
        corrupted.SOPInstanceUID: 0x0110,
        wrong_class.SOPInstanceUID: 0x0119,
        unknown[1]: 0x0112,
    }


def test_all_committed_is_event_type_1(
    kuva_server: Callable[..., KuvaServer],
) -> None:
    server = kuva_server(nodes=[node(free_port())])
    scu = CommitmentSCU(SCU)
    datasets = make_ct_series(5, rows=32, cols=32)
    store(scu, server, datasets)
    assoc = scu.associate(server.dicom_port)
    status, _ = scu.request(assoc, refs(datasets))
    assert status == 0x0000
    event_type, info, where = scu.wait_report()
    assoc.release()
    assert (event_type, where) == (1, "same")
    assert committed(info) == {ds.SOPInstanceUID for ds in datasets}
    assert "FailedSOPSequence" not in info


def test_malformed_request_refused(kuva_server: Callable[..., KuvaServer]) -> None:
    server = kuva_server(nodes=[node(free_port())])
    scu = CommitmentSCU(SCU)
    assoc = scu.associate(server.dicom_port)
    status, _ = scu.request(assoc, [], transaction_uid=generate_uid())
    assert status == 0x0120  # missing attribute: empty Referenced SOP Sequence
    status, _ = scu.request(assoc, [(str(CTImageStorage), "1.2.03")])
    assert status == 0x0115  # invalid argument value: leading zero
    assoc.release()


def test_report_on_new_association_after_release(
    kuva_server: Callable[..., KuvaServer],
) -> None:
    port = free_port()
    server = kuva_server(nodes=[node(port)])
    scu = CommitmentSCU(SCU, listen_port=port)
    scu.start_listening()
    try:
        datasets = make_ct_series(3, rows=32, cols=32)
        store(scu, server, datasets)
        assoc = scu.associate(server.dicom_port)
        status, transaction = scu.request(assoc, refs(datasets))
        assoc.release()  # the report must come on a new association
        assert status == 0x0000
        event_type, info, where = scu.wait_report()
    finally:
        scu.stop_listening()
    assert (event_type, where) == (1, "new")
    assert info.TransactionUID == transaction
    assert committed(info) == {ds.SOPInstanceUID for ds in datasets}


def _wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def test_report_survives_restart_and_down_peer(
    kuva_server: Callable[..., KuvaServer],
) -> None:
    """The requester is down: delivery is retried; SIGKILL kuva; the report still comes."""
    port = free_port()
    server = kuva_server(nodes=[node(port)])
    scu = CommitmentSCU(SCU, listen_port=port)
    datasets = make_ct_series(2, rows=32, cols=32)
    store(scu, server, datasets)
    assoc = scu.associate(server.dicom_port)
    status, transaction = scu.request(assoc, refs(datasets))
    assoc.release()
    assert status == 0x0000
    _wait_for(lambda: "retry at" in server.log())
    listing = server.kuva("tasks", "list", "--kind", "storage-commitment", "--plain").stdout
    [line] = listing.splitlines()
    fields = line.split("\t")
    # Between attempts the task is pending; it may be caught mid-attempt (running).
    assert fields[2] == transaction and fields[3] in ("pending", "running")
    assert int(fields[4]) >= 1

    server.kill()
    scu.start_listening()
    try:
        server.start()
        event_type, info, where = scu.wait_report(timeout=30)
    finally:
        scu.stop_listening()
    assert (event_type, where) == (1, "new")
    assert info.TransactionUID == transaction
    assert committed(info) == {ds.SOPInstanceUID for ds in datasets}
    _wait_for(
        lambda: (
            "\tdone\t" in server.kuva("tasks", "list", "--subject", transaction, "--plain").stdout
        )
    )


def test_failed_delivery_visible_and_retried_by_operator(
    kuva_server: Callable[..., KuvaServer], tmp_path: Path
) -> None:
    port = free_port()
    server = kuva_server(nodes=[node(port)], extra={"tasks": {"max_attempts": 2}})
    scu = CommitmentSCU(SCU, listen_port=port)
    datasets = make_ct_series(1, rows=32, cols=32)
    store(scu, server, datasets)
    assoc = scu.associate(server.dicom_port)
    _, transaction = scu.request(assoc, refs(datasets))
    assoc.release()
    _wait_for(lambda: transaction in server.kuva("tasks", "list", "--failed", "--plain").stdout)
    listing = server.kuva("tasks", "list", "--failed", "--plain").stdout
    [line] = listing.splitlines()
    assert line.split("\t")[2:5] == [transaction, "failed", "2"]
    assert "association to PACS1" in line
    table = server.kuva("tasks", "list", "--failed").stdout
    assert "storage-commitment failed: 1" in table

    scu.start_listening()
    try:
        retried = server.kuva("tasks", "retry")
        assert "1 task(s) scheduled again" in retried.stdout
        event_type, info, _ = scu.wait_report(timeout=30)
    finally:
        scu.stop_listening()
    assert event_type == 1
    assert info.TransactionUID == transaction


def test_unconfigured_requester_in_open_access_gets_report_on_same_association(
    kuva_server: Callable[..., KuvaServer],
) -> None:
    server = kuva_server()  # embedded default: no nodes
    scu = CommitmentSCU("ANYONE")
    datasets = make_ct_series(2, rows=32, cols=32)
    store(scu, server, datasets)
    assoc = scu.associate(server.dicom_port)
    status, _ = scu.request(assoc, refs(datasets))
    event_type, _info, where = scu.wait_report()
    assoc.release()
    assert (status, event_type, where) == (0, 1, "same")


@pytest.mark.parametrize("count", [300])
def test_large_request(kuva_server: Callable[..., KuvaServer], count: int) -> None:
    """A request naming hundreds of instances (index looked up in chunks)."""
    server = kuva_server(nodes=[node(free_port())])
    scu = CommitmentSCU(SCU)
    datasets = make_ct_series(count, rows=16, cols=16)
    store(scu, server, datasets)
    assoc = scu.associate(server.dicom_port)
    status, _ = scu.request(assoc, refs(datasets))
    event_type, info, _ = scu.wait_report(timeout=60)
    assoc.release()
    assert (status, event_type) == (0, 1)
    assert len(committed(info)) == count
