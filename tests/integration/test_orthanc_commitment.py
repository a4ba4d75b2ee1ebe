"""Orthanc as an independent Storage Commitment SCU against kuva (PS3.4 Annex J).

Orthanc sends synthetic CT instances to kuva over C-STORE and asks kuva to commit
them with an N-ACTION (Storage Commitment Push Model). Orthanc releases that
association at once, so kuva delivers the N-EVENT-REPORT on a new association to
Orthanc's configured node, as the SCP of the Push Model. The report Orthanc
received is read back from its REST API (``GET /storage-commitment/{uid}``) and
checked against what kuva recorded in its index. Runs on SQLite and PostgreSQL.

Orthanc REST calls used (Orthanc 1.6 and later):

* ``POST /instances`` with a Part 10 file: upload into Orthanc.
* ``POST /modalities/kuva/store`` with ``{"Resources": [...], "StorageCommitment":
  true, "Synchronous": true}``: C-STORE then N-ACTION; the answer carries
  ``StorageCommitmentTransactionUID``.
* ``POST /modalities/kuva/storage-commitment`` with ``{"DicomInstances": [[class,
  instance], ...]}``: N-ACTION only; the answer's ``ID`` is the Transaction UID.
* ``GET /storage-commitment/{uid}``: ``Status`` (Pending, Success, Failure),
  ``Success`` and ``Failures`` (with ``FailureReason``) as reported by kuva.
"""

from __future__ import annotations

import io
import json
import os
import stat
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from kuva.index.schema import instance, storage_commitment
from tests.support.peers import LOOPBACK, Orthanc, free_port, orthanc_available
from tests.support.server import KuvaServer
from tests.support.synthetic import make_ct_series

pytestmark = pytest.mark.skipif(not orthanc_available(), reason="Orthanc is not installed")

ORTHANC_AET = "ORTHANC"
KUVA_MODALITY = "kuva"  # Orthanc's symbolic name for kuva in DicomModalities
REPORT_TIMEOUT = 30.0

# Failure Reason (0008,1197) values, PS3.4 J.3.3.1.
PROCESSING_FAILURE = 0x0110
NO_SUCH_OBJECT_INSTANCE = 0x0112

Ref = tuple[str, str]  # (SOP Class UID, SOP Instance UID)


@dataclass
class Peers:
    """A running Orthanc and kuva that know each other, plus kuva's index."""

    orthanc: Orthanc
    kuva: KuvaServer
    engine: sa.Engine

    def diagnostics(self) -> str:
        """Both servers' recent output, for assertion messages."""
        return (
            f"\n--- kuva log ---\n{self.kuva.log()[-6000:]}"
            f"\n--- Orthanc log ---\n{self.orthanc.log_text()[-3000:]}"
        )


@pytest.fixture
def peers(
    kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path
) -> Iterator[Peers]:
    """Orthanc with kuva as modality ``kuva``; kuva with Orthanc as its only node."""
    orthanc_port = free_port()
    kuva = kuva_server(
        nodes=[
            {
                "ae_title": ORTHANC_AET,
                "host": LOOPBACK,
                "port": orthanc_port,
                "organization": "",
            }
        ]
    )
    engine = sa.create_engine(database_url)
    try:
        with Orthanc(
            tmp_path / "orthanc",
            aet=ORTHANC_AET,
            dicom_port=orthanc_port,
            modalities={KUVA_MODALITY: (kuva.ae_title, LOOPBACK, kuva.dicom_port)},
        ) as orthanc:
            yield Peers(orthanc=orthanc, kuva=kuva, engine=engine)
    finally:
        engine.dispose()


def _series(n: int) -> list[Dataset]:
    """``n`` small synthetic CT instances of one series (patient 010181-900C)."""
    return make_ct_series(n, rows=64, cols=64, patient_id="010181-900C")


def _upload(orthanc: Orthanc, ds: Dataset) -> str:
    """Upload one dataset with ``POST /instances``; return Orthanc's instance id."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    request = urllib.request.Request(
        f"{orthanc.url}/instances",
        data=buffer.getvalue(),
        headers={"Content-Type": "application/dicom"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer: dict[str, Any] = json.loads(response.read())
    assert answer["Status"] == "Success", answer
    return str(answer["ID"])


def _ref(ds: Dataset) -> Ref:
    """The (SOP Class, SOP Instance) pair of a dataset."""
    return str(ds.SOPClassUID), str(ds.SOPInstanceUID)


def _wait_report(peers: Peers, transaction_uid: str) -> dict[str, Any]:
    """Poll Orthanc until its report for ``transaction_uid`` is no longer Pending."""
    deadline = time.monotonic() + REPORT_TIMEOUT
    while True:
        report: dict[str, Any] = peers.orthanc.rest_get(f"/storage-commitment/{transaction_uid}")
        if report.get("Status") != "Pending":
            return report
        if time.monotonic() > deadline:
            pytest.fail(
                f"Orthanc report still Pending after {REPORT_TIMEOUT:.0f} s: "
                f"{report}{peers.diagnostics()}"
            )
        time.sleep(0.2)


def _reported(entries: list[dict[str, Any]]) -> set[Ref]:
    """The (class, instance) pairs of a report's ``Success`` or ``Failures`` list."""
    return {(e["SOPClassUID"], e["SOPInstanceUID"]) for e in entries}


def _stored(peers: Peers) -> dict[str, sa.RowMapping]:
    """kuva's index rows of stored instances, by SOP Instance UID."""
    c = instance.c
    with peers.engine.connect() as conn:
        rows = (
            conn.execute(sa.select(c.sop_instance_uid, c.sop_class_uid, c.blob_key, c.source_ae))
            .mappings()
            .all()
        )
    return {row["sop_instance_uid"]: row for row in rows}


def _commitment(peers: Peers, transaction_uid: str) -> sa.RowMapping:
    """kuva's record of a transaction, once it is marked as reported."""
    c = storage_commitment.c
    deadline = time.monotonic() + REPORT_TIMEOUT
    while True:
        with peers.engine.connect() as conn:
            row = (
                conn.execute(
                    sa.select(
                        c.requester_ae, c.instance_count, c.outcome, c.failed_count, c.reported_at
                    ).where(c.transaction_uid == transaction_uid)
                )
                .mappings()
                .one_or_none()
            )
        if row is not None and row["reported_at"] is not None:
            return row
        if time.monotonic() > deadline:
            pytest.fail(f"kuva did not mark {transaction_uid} reported: {row}{peers.diagnostics()}")
        time.sleep(0.1)


def _corrupt(path: Path) -> None:
    """Flip the last byte of a read-only blob (same size, different hash)."""
    mode = path.stat().st_mode
    os.chmod(path, mode | stat.S_IWUSR)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    os.chmod(path, mode)


def test_store_with_storage_commitment_is_committed(peers: Peers) -> None:
    """Orthanc's C-STORE + N-ACTION: every instance is reported committed (event type 1)."""
    datasets = _series(3)
    refs = {_ref(ds) for ds in datasets}
    ids = [_upload(peers.orthanc, ds) for ds in datasets]

    job = peers.orthanc.rest_post(
        f"/modalities/{KUVA_MODALITY}/store",
        {"Resources": ids, "StorageCommitment": True, "Synchronous": True},
    )
    assert job["InstancesCount"] == 3 and job["FailedInstancesCount"] == 0, job
    assert job["RemoteAet"] == peers.kuva.ae_title, job
    transaction_uid = job["StorageCommitmentTransactionUID"]

    report = _wait_report(peers, transaction_uid)
    assert report["Status"] == "Success", f"{report}{peers.diagnostics()}"
    assert report["RemoteAET"] == peers.kuva.ae_title
    assert report["Failures"] == []
    assert _reported(report["Success"]) == refs
    assert len(report["Success"]) == len(refs)

    stored = _stored(peers)
    for sop_class, sop_instance in refs:
        assert sop_instance in stored, f"{sop_instance} not in kuva's index{peers.diagnostics()}"
        assert stored[sop_instance]["sop_class_uid"] == sop_class
        assert stored[sop_instance]["source_ae"] == ORTHANC_AET
        assert (peers.kuva.blob_dir / stored[sop_instance]["blob_key"]).is_file()

    record = _commitment(peers, transaction_uid)
    assert record["requester_ae"] == ORTHANC_AET
    assert record["instance_count"] == 3
    assert (record["outcome"], record["failed_count"]) == ("success", 0)


def test_corrupted_blob_and_unknown_instance_are_reported_failed(peers: Peers) -> None:
    """A blob changed on disk fails with 0x0110, a never-stored instance with 0x0112."""
    datasets = _series(3)
    refs = [_ref(ds) for ds in datasets]
    ids = [_upload(peers.orthanc, ds) for ds in datasets]

    job = peers.orthanc.rest_post(
        f"/modalities/{KUVA_MODALITY}/store", {"Resources": ids, "Synchronous": True}
    )
    assert job["InstancesCount"] == 3 and job["FailedInstancesCount"] == 0, job
    assert "StorageCommitmentTransactionUID" not in job

    stored = _stored(peers)
    assert {uid for _, uid in refs} <= stored.keys(), peers.diagnostics()
    corrupted = refs[1]
    _corrupt(peers.kuva.blob_dir / stored[corrupted[1]]["blob_key"])
    unknown: Ref = (refs[0][0], str(generate_uid()))

    answer = peers.orthanc.rest_post(
        f"/modalities/{KUVA_MODALITY}/storage-commitment",
        {"DicomInstances": [list(ref) for ref in [*refs, unknown]]},
    )
    transaction_uid = answer["ID"]

    report = _wait_report(peers, transaction_uid)
    assert report["Status"] == "Failure", f"{report}{peers.diagnostics()}"
    assert report["RemoteAET"] == peers.kuva.ae_title
    assert _reported(report["Success"]) == {refs[0], refs[2]}
    reasons = {
        (f["SOPClassUID"], f["SOPInstanceUID"]): f["FailureReason"] for f in report["Failures"]
    }
    assert reasons == {corrupted: PROCESSING_FAILURE, unknown: NO_SUCH_OBJECT_INSTANCE}, (
        f"{report}{peers.diagnostics()}"
    )

    record = _commitment(peers, transaction_uid)
    assert record["requester_ae"] == ORTHANC_AET
    assert record["instance_count"] == 4
    assert (record["outcome"], record["failed_count"]) == ("failure", 2)
