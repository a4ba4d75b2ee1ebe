"""services.commitment.CommitmentService with a real blob store and index."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage
from sqlalchemy import Engine

from kuva.codec.part10 import canonical_file_meta
from kuva.config import TaskSettings
from kuva.index.database import make_engine, migrate
from kuva.index.instances import NewInstance
from kuva.index.outbox import Task
from kuva.index.uow import UnitOfWork
from kuva.model.instance import (
    InstanceAttributes,
    PatientAttributes,
    SeriesAttributes,
    StudyAttributes,
)
from kuva.services.commitment import (
    CLASS_INSTANCE_CONFLICT,
    NO_SUCH_OBJECT_INSTANCE,
    PROCESSING_FAILURE,
    TASK_KIND,
    CommitmentReport,
    CommitmentRequest,
    CommitmentService,
    FailedReference,
    Reference,
)
from kuva.storage.filesystem import FileBlobStore
from kuva.tasks.worker import TaskWorkers

ROOT = "2.25.3333333333"
ORG = "1.2.246.10.1234567.10"
OTHER_ORG = "1.2.246.10.7654321.10"
START = datetime(2026, 3, 14, 9, 0, tzinfo=UTC)


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


class RecordingSender:
    """A ReportSender that records reports; it fails while ``failures`` is positive."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.reports: list[CommitmentReport] = []
        self.attempts = 0

    def send_commitment_report(self, report: CommitmentReport) -> None:
        self.attempts += 1
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("requester unreachable")
        self.reports.append(report)


@dataclass
class Archive:
    engine: Engine
    blobs: FileBlobStore
    clock: FakeClock
    service: CommitmentService


@pytest.fixture
def archive(database_url: str, tmp_path: Path) -> Iterator[Archive]:
    """A migrated index, a blob store and the service on them."""
    engine = make_engine(database_url)
    migrate(engine)
    clock = FakeClock()
    blobs = FileBlobStore(tmp_path / "blobs")
    service = CommitmentService(engine, blobs, max_attempts=5, clock=clock)
    yield Archive(engine, blobs, clock, service)
    engine.dispose()


def store(archive: Archive, n: int, *, organization: str = ORG) -> Reference:
    """Store a synthetic CT instance (blob + index row); return its reference."""
    sop_uid = f"{ROOT}.1.1.{n}"
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.PatientID = "010181-900C"
    ds.StudyInstanceUID = f"{ROOT}.1"
    ds.SeriesInstanceUID = f"{ROOT}.1.1"
    ds.InstanceNumber = n
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    write_dataset(buffer, ds)
    writer = archive.blobs.open_writer()
    writer.write(canonical_file_meta(CTImageStorage, sop_uid, ExplicitVRLittleEndian))
    writer.write(buffer.getvalue())
    ref = writer.commit()
    attrs = InstanceAttributes(
        sop_class_uid=CTImageStorage,
        sop_instance_uid=sop_uid,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        patient=PatientAttributes(patient_id="010181-900C", name="Testinen^Maija"),
        study=StudyAttributes(study_instance_uid=f"{ROOT}.1"),
        series=SeriesAttributes(series_instance_uid=f"{ROOT}.1.1", modality="CT"),
        instance_number=n,
    )
    with UnitOfWork(archive.engine) as uow:
        pk = uow.instances.add(
            NewInstance(
                attributes=attrs,
                blob_key=ref.key,
                size=ref.size,
                sha256=ref.sha256,
                received_at=START,
                source_ae="CT1",
                organization_oid=organization,
            )
        )
        uow.commit()
    assert pk is not None
    return Reference(CTImageStorage, sop_uid)


def request(
    *refs: Reference, transaction: str = f"{ROOT}.99.1", organization: str = ORG
) -> CommitmentRequest:
    """A commitment request from CT1 for ``refs``."""
    return CommitmentRequest(
        transaction_uid=transaction,
        requester_ae="CT1",
        organization_oid=organization,
        references=tuple(refs),
    )


def blob_path(archive: Archive, sop_instance_uid: str) -> Path:
    """Where the blob of an indexed instance lives."""
    with UnitOfWork(archive.engine, write=False) as uow:
        stored = uow.instances.get(sop_instance_uid)
    assert stored is not None
    return archive.blobs.path_of(stored.blob_key)


def flip_byte(path: Path, offset: int = -1) -> None:
    """Corrupt one byte of a stored (read-only) blob in place."""
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def claim_task(archive: Archive, pk: int) -> Task:
    """Claim the task with key ``pk`` as a worker would."""
    with UnitOfWork(archive.engine) as uow:
        [task] = uow.tasks.claim(
            worker="test", now=archive.clock(), lease=timedelta(minutes=5), limit=1, pk=pk
        )
        uow.commit()
    return task


def test_intact_instances_are_committed(archive: Archive) -> None:
    """Instances that are indexed, of the right class and intact are committed."""
    refs = [store(archive, n) for n in (1, 2, 3)]
    report = archive.service.verify(request(*refs))
    assert report.committed == tuple(refs)
    assert report.failed == ()
    assert report.event_type == 1
    assert report.transaction_uid == f"{ROOT}.99.1"
    assert report.requester_ae == "CT1"


def test_unknown_instance(archive: Archive) -> None:
    """An unknown SOP Instance UID fails with No such object instance (0x0112)."""
    known = store(archive, 1)
    unknown = Reference(CTImageStorage, f"{ROOT}.404")
    report = archive.service.verify(request(known, unknown))
    assert report.committed == (known,)
    assert report.failed == (
        FailedReference(CTImageStorage, f"{ROOT}.404", NO_SUCH_OBJECT_INSTANCE),
    )
    assert NO_SUCH_OBJECT_INSTANCE == 0x0112
    assert report.event_type == 2


def test_instance_of_another_organization(archive: Archive) -> None:
    """Another organisation's instance is not this requester's to commit (0x0112)."""
    theirs = store(archive, 1, organization=OTHER_ORG)
    report = archive.service.verify(request(theirs))
    assert report.committed == ()
    assert report.failed == (
        FailedReference(theirs.sop_class_uid, theirs.sop_instance_uid, 0x0112),
    )
    assert archive.service.verify(request(theirs, organization=OTHER_ORG)).committed == (theirs,)


def test_sop_class_mismatch(archive: Archive) -> None:
    """A reference with another SOP Class fails with Class-instance conflict (0x0119)."""
    ref = store(archive, 1)
    wrong = Reference(MRImageStorage, ref.sop_instance_uid)
    report = archive.service.verify(request(wrong))
    assert report.failed == (FailedReference(MRImageStorage, ref.sop_instance_uid, 0x0119),)
    assert CLASS_INSTANCE_CONFLICT == 0x0119


def test_corrupted_blob(archive: Archive) -> None:
    """One flipped byte in the stored object fails with Processing failure (0x0110)."""
    good = store(archive, 1)
    bad = store(archive, 2)
    flip_byte(blob_path(archive, bad.sop_instance_uid))
    report = archive.service.verify(request(good, bad))
    assert report.committed == (good,)
    assert report.failed == (
        FailedReference(bad.sop_class_uid, bad.sop_instance_uid, PROCESSING_FAILURE),
    )
    assert PROCESSING_FAILURE == 0x0110


def test_missing_blob(archive: Archive) -> None:
    """An indexed instance whose blob is gone fails with Processing failure."""
    ref = store(archive, 1)
    blob_path(archive, ref.sop_instance_uid).unlink()
    report = archive.service.verify(request(ref))
    assert report.failed == (FailedReference(ref.sop_class_uid, ref.sop_instance_uid, 0x0110),)


def test_request_records_commitment_and_task(archive: Archive) -> None:
    """request() stores the commitment and its task together and announces the task."""
    enqueued: list[int] = []
    archive.service.on_enqueued = enqueued.append
    ref = store(archive, 1)
    pk = archive.service.request(request(ref))
    assert enqueued == [pk]
    with UnitOfWork(archive.engine, write=False) as uow:
        record = uow.commitments.get(f"{ROOT}.99.1")
        task = uow.tasks.get(pk)
    assert record is not None
    assert (record.requester_ae, record.organization_oid) == ("CT1", ORG)
    assert (record.instance_count, record.outcome, record.result) == (1, "pending", None)
    assert record.requested_at == START
    assert task is not None
    assert task.kind == TASK_KIND
    assert task.subject == f"{ROOT}.99.1"
    assert task.payload["references"] == [[ref.sop_class_uid, ref.sop_instance_uid]]
    assert task.max_attempts == 5


def test_run_task_records_and_sends(archive: Archive) -> None:
    """The task verifies, records the result and sends the report."""
    good = store(archive, 1)
    unknown = Reference(CTImageStorage, f"{ROOT}.404")
    sender = RecordingSender()
    archive.service.sender = sender
    pk = archive.service.request(request(good, unknown))
    archive.clock.now = START + timedelta(seconds=5)
    archive.service.run_task(claim_task(archive, pk))

    [report] = sender.reports
    assert report.committed == (good,)
    assert report.failed == (FailedReference(CTImageStorage, f"{ROOT}.404", 0x0112),)
    with UnitOfWork(archive.engine, write=False) as uow:
        record = uow.commitments.get(f"{ROOT}.99.1")
        task = uow.tasks.get(pk)
    assert record is not None
    assert record.outcome == "failure"
    assert record.failed_count == 1
    assert record.verified_at == START + timedelta(seconds=5)
    assert record.reported_at == START + timedelta(seconds=5)
    assert record.result == report.to_json()
    assert task is not None
    assert task.payload["result"] == report.to_json()


def test_retried_task_resends_stored_result(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retried delivery sends the stored result without verifying again."""
    ref = store(archive, 1)
    sender = RecordingSender(failures=1)
    archive.service.sender = sender
    pk = archive.service.request(request(ref))
    with pytest.raises(ConnectionError):
        archive.service.run_task(claim_task(archive, pk))
    with UnitOfWork(archive.engine, write=False) as uow:
        record = uow.commitments.get(f"{ROOT}.99.1")
    assert record is not None
    assert (record.outcome, record.reported_at) == ("success", None)

    # The object is damaged after the verification: a new one would now fail.
    flip_byte(blob_path(archive, ref.sop_instance_uid))
    verifications: list[CommitmentRequest] = []
    verify = archive.service.verify

    def counting_verify(req: CommitmentRequest) -> CommitmentReport:
        verifications.append(req)
        return verify(req)

    monkeypatch.setattr(archive.service, "verify", counting_verify)
    archive.clock.now = START + timedelta(minutes=1)
    with UnitOfWork(archive.engine) as uow:
        uow.tasks.fail(pk, error="ConnectionError", now=archive.clock(), retry_at=archive.clock())
        uow.commit()
    archive.service.run_task(claim_task(archive, pk))

    assert verifications == []
    assert sender.attempts == 2
    [report] = sender.reports
    assert report.committed == (ref,)
    assert report.failed == ()
    with UnitOfWork(archive.engine, write=False) as uow:
        record = uow.commitments.get(f"{ROOT}.99.1")
    assert record is not None
    assert record.outcome == "success"
    assert record.reported_at == START + timedelta(minutes=1)


def test_through_the_task_workers(archive: Archive) -> None:
    """Run by the outbox workers: a failed delivery is retried with the same report."""
    ref = store(archive, 1)
    sender = RecordingSender(failures=1)
    archive.service.sender = sender
    settings = TaskSettings(backoff_base_seconds=10.0)
    workers = TaskWorkers(
        archive.engine, settings, {TASK_KIND: archive.service.run_task}, clock=archive.clock
    )
    pk = archive.service.request(request(ref))
    assert workers.run_once() is True
    with UnitOfWork(archive.engine, write=False) as uow:
        task = uow.tasks.get(pk)
    assert task is not None
    assert (task.status, task.attempts) == ("pending", 1)
    assert task.last_error == "ConnectionError: requester unreachable"
    assert "result" in task.payload
    assert workers.run_once() is False  # backing off
    archive.clock.now = task.next_attempt_at
    assert workers.run_once() is True
    with UnitOfWork(archive.engine, write=False) as uow:
        task = uow.tasks.get(pk)
        record = uow.commitments.get(f"{ROOT}.99.1")
    assert task is not None and task.status == "done"
    assert record is not None and record.reported_at == archive.clock.now
    assert [r.committed for r in sender.reports] == [(ref,)]


def test_run_task_without_sender_fails(archive: Archive) -> None:
    """Without a sender the task raises (and is retried by the worker)."""
    ref = store(archive, 1)
    pk = archive.service.request(request(ref))
    with pytest.raises(RuntimeError, match="no report sender"):
        archive.service.run_task(claim_task(archive, pk))


def test_report_json_round_trip() -> None:
    """The stored form of a report gives back the same report."""
    report = CommitmentReport(
        transaction_uid="1.2.3",
        requester_ae="CT1",
        committed=(Reference("1.2", "1.2.3.1"),),
        failed=(FailedReference("1.2", "1.2.3.2", 0x0110),),
    )
    again = CommitmentReport.from_json("1.2.3", "CT1", report.to_json())
    assert again == report
    assert again.event_type == 2
