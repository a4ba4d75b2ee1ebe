"""services.integrity on a real index (SQLite and PostgreSQL) and real blob folders:
the walk and its selections, the orphan walk, the mirrored store and repairs."""

from __future__ import annotations

import os
import random
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine

from kuva.index.instances import NewInstance
from kuva.index.repository import NewDocument
from kuva.index.uow import UnitOfWork
from kuva.model.instance import (
    InstanceAttributes,
    PatientAttributes,
    SeriesAttributes,
    StudyAttributes,
)
from kuva.services import integrity
from kuva.services.integrity import Finding, IntegrityService, Problem, Scrubber, Selection
from kuva.storage import BlobRef, BlobStore
from kuva.storage.filesystem import FileBlobStore
from kuva.storage.mirror import MirroredBlobStore

ROOT = "2.25.4444444444"
ORG = "1.2.246.10.1234567.10"
WHEN = datetime(2026, 3, 14, 9, 0, tzinfo=UTC)
DAY_AGO = time.time() - 86400


def study_uid(study: int) -> str:
    return f"{ROOT}.{study}"


def sop_uid(study: int, n: int) -> str:
    return f"{ROOT}.{study}.1.{n}"


def put(blobs: BlobStore, content: bytes) -> BlobRef:
    writer = blobs.open_writer()
    writer.write(content)
    return writer.commit()


def add_instance(engine: Engine, blobs: BlobStore, study: int, n: int) -> BlobRef:
    """An instance row and its blob (bytes that name the instance, like a real one)."""
    uid = sop_uid(study, n)
    ref = put(blobs, f"object {uid} ".encode() * (50 + n))
    attrs = InstanceAttributes(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uid=uid,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        patient=PatientAttributes(patient_id=f"0101{study:02d}-900C"),
        study=StudyAttributes(study_instance_uid=study_uid(study)),
        series=SeriesAttributes(series_instance_uid=f"{study_uid(study)}.1", modality="CT"),
        instance_number=n,
    )
    with UnitOfWork(engine) as uow:
        uow.instances.add(NewInstance(attrs, ref.key, ref.size, ref.sha256, WHEN, "CT1", ORG))
        uow.commit()
    return ref


def add_document(engine: Engine, ref: BlobRef, unique_id: str, study: int | None) -> None:
    with UnitOfWork(engine) as uow:
        uow.documents.add(
            NewDocument(
                unique_id=unique_id,
                repository_unique_id="1.2.246.10.0.10.1.1",
                mime_type="application/dicom",
                size=ref.size,
                sha1="0" * 40,
                sha256=ref.sha256,
                blob_key=ref.key,
                organization_oid=ORG,
                patient_id="010101-900R",
                patient_authority="1.2.246.21",
                study_instance_uid=study_uid(study) if study is not None else None,
                stored_at=WHEN,
            )
        )
        uow.commit()


def writable(path: Path) -> Path:
    path.chmod(0o644)
    return path


def flip_byte(path: Path) -> None:
    data = bytearray(writable(path).read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


@dataclass
class Checked:
    blobs: list[str]
    findings: list[Finding]
    read: list[int]


def run(service: IntegrityService, selection: Selection, *, repair: bool = False) -> Checked:
    checked = Checked([], [], [])

    def seen(blob: integrity.IndexedBlob, findings: list[Finding]) -> None:
        checked.blobs.append(blob.sop_instance_uid or blob.document_unique_id)
        checked.findings.extend(findings)

    service.verify(
        service.plan(selection), repair=repair, on_read=checked.read.append, on_checked=seen
    )
    return checked


@pytest.fixture
def primary(tmp_path: Path) -> Iterator[FileBlobStore]:
    store = FileBlobStore(tmp_path / "primary")
    yield store
    store.close()


def test_walk_reads_each_blob_once_and_names_problems(
    engine: Engine, primary: FileBlobStore
) -> None:
    refs = [add_instance(engine, primary, 1, n) for n in (1, 2)] + [
        add_instance(engine, primary, 2, 1)
    ]
    add_document(engine, refs[0], "1.2.3.1", 1)  # a manifest: the instance's own blob
    report = put(primary, b"a report")
    add_document(engine, report, "1.2.3.2", None)
    add_document(engine, report, "1.2.3.3", None)  # the same bytes again
    flip_byte(primary.path_of(refs[1].key))
    primary.path_of(refs[2].key).unlink()

    service = IntegrityService(engine, primary)
    plan = service.plan(Selection())
    assert (plan.objects, plan.bytes) == (4, sum(r.size for r in refs) + report.size)
    checked = run(service, Selection())

    assert checked.blobs == [sop_uid(1, 1), sop_uid(1, 2), sop_uid(2, 1), "1.2.3.2"]
    assert sum(checked.read) == refs[0].size + refs[1].size + report.size
    problems = {(f.kind, f.copy, f.subject()) for f in checked.findings}
    assert problems == {
        (Problem.CORRUPT, "primary", f"instance {sop_uid(1, 2)} (study {study_uid(1)})"),
        (Problem.MISSING, "primary", f"instance {sop_uid(2, 1)} (study {study_uid(2)})"),
    }


def test_study_selection(engine: Engine, primary: FileBlobStore) -> None:
    for study, n in ((1, 1), (2, 1), (1, 2), (2, 2)):
        add_instance(engine, primary, study, n)
    add_document(engine, put(primary, b"report of study 2"), "1.2.3.9", 2)
    add_document(engine, put(primary, b"report of study 1"), "1.2.3.8", 1)

    service = IntegrityService(engine, primary)
    assert service.plan(Selection(study_uid=study_uid(2))).objects == 3
    checked = run(service, Selection(study_uid=study_uid(2)))
    assert checked.blobs == [sop_uid(2, 1), sop_uid(2, 2), "1.2.3.9"]
    assert checked.findings == []


def test_sample_picks_distinct_instances_without_a_scan(
    engine: Engine, primary: FileBlobStore
) -> None:
    for n in range(1, 41):
        add_instance(engine, primary, 1, n)
    service = IntegrityService(engine, primary, rng=random.Random(7))

    plan = service.plan(Selection(sample=10))
    assert plan.sampled is not None
    picked = [blob.pk for blob in plan.sampled]
    assert len(picked) == len(set(picked)) == plan.objects == 10
    assert picked == sorted(picked)
    assert plan.bytes == sum(blob.size for blob in plan.sampled)
    other = service.plan(Selection(sample=10))
    assert other.sampled is not None and [b.pk for b in other.sampled] != picked

    everything = service.plan(Selection(sample=100))  # more than there are
    assert everything.objects == 40
    assert run(service, Selection(sample=5)).findings == []


def test_sample_of_few_instances_is_never_short(engine: Engine, primary: FileBlobStore) -> None:
    """Two of four: drawing random keys could pick the same key every time (the
    integration test's ``verify --sample 2`` once checked one object); a narrow key
    range is sampled whole instead. A wide one still draws keys (two of forty)."""
    for n in range(1, 5):
        add_instance(engine, primary, 1, n)
    for seed in range(200):
        plan = IntegrityService(engine, primary, rng=random.Random(seed)).plan(Selection(sample=2))
        assert plan.sampled is not None
        assert len({blob.pk for blob in plan.sampled}) == plan.objects == 2
    for n in range(5, 41):
        add_instance(engine, primary, 1, n)
    drawn = IntegrityService(engine, primary, rng=random.Random(3)).plan(Selection(sample=2))
    assert drawn.sampled is not None and len({blob.pk for blob in drawn.sampled}) == 2


def test_orphan_walk(
    engine: Engine, primary: FileBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(integrity, "ORPHAN_BATCH", 2)  # several batches with a few blobs
    for n in range(1, 4):
        add_instance(engine, primary, 1, n)
    add_document(engine, put(primary, b"a report"), "1.2.3.1", None)
    orphans = [put(primary, f"orphan {n}".encode()) for n in range(3)]
    for ref in orphans:
        os.utime(primary.path_of(ref.key), (DAY_AGO, DAY_AGO))
    young = put(primary, b"written a moment ago; its index row may be on its way")

    entries = list(primary.iter_keys())
    assert [e.key for e in entries] == sorted(e.key for e in entries)
    assert len(entries) == 8
    found = list(IntegrityService(engine, primary).orphans())
    assert {f.key for f in found} == {ref.key for ref in orphans}
    assert young.key not in {f.key for f in found}
    assert all(f.kind is Problem.ORPHANED and f.subject() == "no index row" for f in found)


def test_mirrored_store_writes_both_copies_hashing_once(tmp_path: Path) -> None:
    primary, replica = FileBlobStore(tmp_path / "p"), FileBlobStore(tmp_path / "r")
    mirror = MirroredBlobStore(primary, replica)
    try:
        writer = mirror.open_writer()
        assert writer.name.startswith(str(tmp_path / "p"))
        writer.write(b"x" * 1000)
        writer.start_sync()
        ref = writer.commit()
        assert primary.path_of(ref.key).read_bytes() == replica.path_of(ref.key).read_bytes()
        discarded = mirror.open_writer()
        discarded.write(b"never acknowledged")
        discarded.discard()
        assert list(primary.tmp_dir.iterdir()) == list(replica.tmp_dir.iterdir()) == []
        assert [e.key for e in replica.iter_keys()] == [ref.key]

        primary.path_of(ref.key).unlink()  # reads fall back to the replica
        with mirror.open(ref.key) as f:
            assert f.read() == b"x" * 1000
    finally:
        mirror.close()


def test_repair_restores_each_bad_copy_from_the_good_one(engine: Engine, tmp_path: Path) -> None:
    primary, replica = FileBlobStore(tmp_path / "p"), FileBlobStore(tmp_path / "r")
    mirror = MirroredBlobStore(primary, replica)
    refs = [add_instance(engine, mirror, 1, n) for n in (1, 2, 3)]
    flip_byte(primary.path_of(refs[0].key))
    replica.path_of(refs[1].key).unlink()
    for copy in (primary, replica):  # both copies bad: nothing to repair from
        flip_byte(copy.path_of(refs[2].key))
    service = IntegrityService(engine, mirror)
    seen: list[Finding] = []
    service.on_problem = seen.append

    checked = run(service, Selection(), repair=True)
    assert {
        (f.kind, f.copy, f.blob and f.blob.sop_instance_uid, f.repaired) for f in checked.findings
    } == {
        (Problem.CORRUPT, "primary", sop_uid(1, 1), True),
        (Problem.MISSING, "replica", sop_uid(1, 2), True),
        (Problem.CORRUPT, "primary", sop_uid(1, 3), False),
        (Problem.CORRUPT, "replica", sop_uid(1, 3), False),
    }
    assert seen == checked.findings
    for ref in refs[:2]:
        for copy in (primary, replica):
            path = copy.path_of(ref.key)
            assert integrity.check_copy(copy, ref.key, ref.sha256, ref.size) is None
            assert path.stat().st_mode & 0o777 == 0o444
    kept = list(primary.quarantine_dir.iterdir())
    assert [p.name.split(".")[0] for p in kept] == [refs[0].sha256]

    again = run(service, Selection())
    assert {f.blob and f.blob.sop_instance_uid for f in again.findings} == {sop_uid(1, 3)}
    mirror.close()


def test_restore_refuses_bytes_that_do_not_match(primary: FileBlobStore) -> None:
    ref = put(primary, b"the original")
    flip_byte(primary.path_of(ref.key))
    with pytest.raises(ValueError, match="does not match"):
        primary.restore(ref.key, [b"something else"], ref.sha256, ref.size)
    assert list(primary.tmp_dir.iterdir()) == []
    primary.restore(ref.key, [b"the ", b"original"], ref.sha256, ref.size)
    assert primary.path_of(ref.key).read_bytes() == b"the original"


def test_scrubber_resumes_where_it_stopped(engine: Engine, primary: FileBlobStore) -> None:
    refs = [add_instance(engine, primary, 1, n) for n in (1, 2, 3)]
    add_document(engine, put(primary, b"a report"), "1.2.3.1", None)
    service = IntegrityService(engine, primary)
    # A byte rate so low that every batch holds a single blob.
    first = Scrubber(service, engine, bytes_per_second=1)
    assert [b.sop_instance_uid for b in first._claim() or []] == [sop_uid(1, 1)]
    second = Scrubber(service, engine, bytes_per_second=1)  # as after a restart
    assert [b.sop_instance_uid for b in second._claim() or []] == [sop_uid(1, 2)]
    assert [b.sop_instance_uid for b in second._claim() or []] == [sop_uid(1, 3)]
    assert second._claim() == []  # on to the documents
    assert [b.document_unique_id for b in second._claim() or []] == ["1.2.3.1"]
    assert second._claim() is None  # the pass is over
    with UnitOfWork(engine, write=False) as uow:
        position = uow.integrity.scrub_position()
    assert (position.phase, position.after_pk, position.pass_started_at) == ("instance", 0, None)
    assert position.last_pass_at is not None
    assert [b.blob_key for b in second._claim() or []] == [refs[0].key]


def test_a_store_that_is_out_is_one_alert_a_pause_and_a_degraded_health(
    engine: Engine, tmp_path: Path
) -> None:
    """Every object missing in a row (a lost mount): one aggregated alert, not one per
    object; /healthz degraded; the walk pauses, retries the store, and goes on once
    it is back, finding nothing more."""
    root = tmp_path / "primary"
    primary = FileBlobStore(root)
    for n in range(1, 31):
        add_instance(engine, primary, 1, n)
    shutil.copytree(root, tmp_path / "saved")
    shutil.rmtree(root)  # the mount is gone
    service = IntegrityService(engine, primary)
    alerts: list[Finding] = []
    service.on_problem = alerts.append
    scrubber = Scrubber(service, engine, bytes_per_second=10**9)
    scrubber.OUTAGE_SECONDS = 0.1
    batch = scrubber._claim()
    assert batch is not None and len(batch) == 30
    walk = threading.Thread(target=scrubber.check_batch, args=(batch,))
    walk.start()
    deadline = time.monotonic() + 30
    while True:
        try:
            scrubber.health()
        except OSError as exc:
            assert "primary store: 20 objects in a row missing" in str(exc)
            break
        assert time.monotonic() < deadline and walk.is_alive()
        time.sleep(0.02)
    assert len(alerts) == 1 and alerts[0].blob is None and alerts[0].kind is Problem.MISSING
    time.sleep(0.3)
    assert walk.is_alive()  # paused while the store is out
    shutil.copytree(tmp_path / "saved", root)  # it is back
    walk.join(30)
    assert not walk.is_alive()
    scrubber.health()  # healthy again
    assert len(alerts) == 1
    primary.close()


def test_a_few_missing_objects_are_each_reported(engine: Engine, primary: FileBlobStore) -> None:
    """Fewer missing in a row than an outage's run are the objects' own problems."""
    refs = [add_instance(engine, primary, 1, n) for n in range(1, 11)]
    for ref in refs[2:5]:
        primary.local_path(ref.key).unlink()
    service = IntegrityService(engine, primary)
    alerts: list[Finding] = []
    service.on_problem = alerts.append
    scrubber = Scrubber(service, engine, bytes_per_second=10**9)
    batch = scrubber._claim()
    assert batch is not None
    scrubber.check_batch(batch)
    assert sorted(a.key for a in alerts) == sorted(ref.key for ref in refs[2:5])
    assert all(a.kind is Problem.MISSING and a.blob is not None for a in alerts)
    scrubber.health()


def test_the_pace_limits_objects_too(engine: Engine, primary: FileBlobStore) -> None:
    """Missing objects have no bytes to count: each still costs OBJECT_BYTES of the
    rate (a lower bound on the time taken; load only adds to it)."""
    refs = [add_instance(engine, primary, 1, n) for n in range(1, 11)]
    for ref in refs:
        primary.local_path(ref.key).unlink()
    service = IntegrityService(engine, primary)
    scrubber = Scrubber(service, engine, bytes_per_second=Scrubber.OBJECT_BYTES * 50)
    batch = scrubber._claim()
    assert batch is not None and len(batch) == 10
    started = time.monotonic()
    scrubber.check_batch(batch)
    assert time.monotonic() - started >= 9 / 50
