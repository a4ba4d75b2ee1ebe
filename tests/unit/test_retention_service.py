"""Retention in a whole archive (kuva.app.Archive, no listeners) on SQLite and
PostgreSQL: the stored expiry at ingest and after a death date, legal holds, the
dry run, destruction leaving only its record, the interrupted destruction resumed,
IOCM 113039 destroying what it rejects, recompute after the policies change."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hl7
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import Engine, func, select

from kuva.app import Archive
from kuva.codec.part10 import Part10Rewriter, extract_attributes
from kuva.config import load_settings
from kuva.hl7 import adt
from kuva.index import schema
from kuva.index.uow import UnitOfWork
from kuva.model.patient import Demographics, PatientCorrectionError, PatientKey, UpdatePatient
from kuva.model.query import QueryLevel
from kuva.model.xds import AvailabilityStatus
from kuva.services.access import DisclosureProhibitions
from kuva.services.ingest import IncomingInstance, StoreOutcome, StoreStatus
from kuva.services.integrity import Selection
from kuva.services.iocm import RejectionService
from kuva.services.patients import MessageRef
from kuva.services.registration import IAN_TASK, REGISTRATION_TASK
from kuva.services.retention import REJECTED_DESTRUCTION_TASK, RetentionService
from kuva.storage.filesystem import FileBlobStore
from tests.support.iocm import RETENTION_EXPIRED, rejection_note
from tests.support.synthetic import DEFAULT_PATIENT_ID, FINNISH_PIC_ISSUER, make_ct_series

ORG = "1.2.246.10.12345678.10"
PATIENT = PatientKey(DEFAULT_PATIENT_ID, FINNISH_PIC_ISSUER)
OLD = dt.datetime(2000, 3, 1, 10, 0)  # a study date long past the images' 5 years
# The first known anchor applies: 2 years after death, else 5 after the study.
IMAGES = {
    "name": "images",
    "periods": [{"after": "death", "years": 2}, {"after": "study_date", "years": 5}],
}


@dataclass
class Site:
    archive: Archive
    tmp: Path

    @property
    def engine(self) -> Engine:
        return self.archive.engine

    @property
    def retention(self) -> RetentionService:
        return self.archive.retention


def build(tmp: Path, database_url: str, policies: list[dict[str, Any]]) -> Archive:
    settings = load_settings(
        None,
        archive={"data_dir": tmp, "database_url": database_url},
        dicom={"port": 0},
        registration={"stable_seconds": 0},
        retention={"policies": policies, "run_every_hours": 0},
        organizations=[{"oid": ORG, "name": "Testisairaala"}],
        nodes=[
            {"ae_title": "PACS1", "host": "127.0.0.1", "port": 9, "organization": ORG, "ian": True}
        ],
    )
    return Archive(settings)


@pytest.fixture
def site(tmp_path: Path, database_url: str) -> Iterator[Site]:
    archive = build(tmp_path / "archive", database_url, [IMAGES])
    yield Site(archive, tmp_path)
    archive.committer.close()
    archive.blobs.close()
    archive.engine.dispose()


def store_one(site: Site, ds: Dataset) -> StoreOutcome:
    """Archive a data set the way STOW-RS does (kuva's file meta, then the data set)."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    writer = Part10Rewriter(site.archive.blobs.open_writer())
    writer.write(data)
    header = dcmread(io.BytesIO(data), stop_before_pixels=True)
    return site.archive.ingest.store(
        IncomingInstance(
            extract_attributes(header, writer.transfer_syntax_uid), writer.blob, "CT1", ORG
        )
    )


def store(site: Site, datasets: list[Dataset]) -> None:
    for ds in datasets:
        outcome = store_one(site, ds)
        assert outcome.ok, outcome.message


def study(site: Site, n: int = 3, when: dt.datetime = OLD) -> list[Dataset]:
    datasets = make_ct_series(n, rows=16, cols=16, study_datetime=when)
    store(site, datasets)
    return datasets


def counts(engine: Engine) -> dict[str, int]:
    tables = (
        schema.patient, schema.study, schema.series, schema.instance, schema.xds_document,
        schema.xds_object, schema.task, schema.audit_record, schema.destruction,
        schema.legal_hold,
    )  # fmt: skip
    with engine.connect() as conn:
        return {
            t.name: int(conn.execute(select(func.count()).select_from(t)).scalar_one())
            for t in tables
        }


def blob_files(site: Site) -> list[str]:
    root = site.archive.settings.archive.resolved_blob_dir()
    return sorted(str(p.relative_to(root)) for p in (root / "sha256").rglob("*") if p.is_file())


def referenced_keys(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        keys = set(conn.execute(select(schema.instance.c.blob_key)).scalars())
        return keys | set(conn.execute(select(schema.xds_document.c.blob_key)).scalars())


def verify_problems(site: Site) -> int:
    """Missing and corrupt blobs by ``kuva verify``'s service, and orphans (every blob
    file must be referenced: the grace period of the orphan walk is not waited)."""
    integrity = site.archive.integrity
    summary = integrity.verify(integrity.plan(Selection()))
    orphans = set(blob_files(site)) - referenced_keys(site.engine)
    return summary.unrepaired + len(orphans)


def expiry(site: Site, uid: str) -> tuple[dt.date | None, str | None] | None:
    return site.retention.expiry_of(uid)


def update(site: Site, control: str, demographics: Demographics) -> str:
    ref = MessageRef("RIS", "TESTSAIRAALA", control, "ADT^A08", ORG)
    return site.archive.patients.handle(
        ref, [UpdatePatient(PATIENT, demographics)], lambda error: "AE" if error else "AA"
    )


def run_tasks(site: Site, kind: str) -> None:
    while site.archive.workers.run_once(kinds=[kind]):
        pass


def found_studies(engine: Engine) -> list[str]:
    with UnitOfWork(engine, write=False) as uow:
        results = uow.query.find(QueryLevel.STUDY, {}, ["StudyInstanceUID"])
        return [str(r.values["StudyInstanceUID"]) for r in results]


# ---------------------------------------------------------------------- expiry


def test_expiry_is_stored_at_ingest_and_moves_with_a_death_date(site: Site) -> None:
    uid = study(site)[0].StudyInstanceUID
    assert expiry(site, uid) == (dt.date(2005, 3, 1), "images")
    assert [s.study_instance_uid for s in site.retention.expired()] == [uid]

    # HL7 A08 with PID-29: the death anchor applies now, and the study is not due.
    assert update(site, "D1", Demographics(death_date="20260101")) == "AA"
    assert expiry(site, uid) == (dt.date(2028, 1, 1), "images")
    assert site.retention.expired() == []
    with UnitOfWork(site.engine, write=False) as uow:
        row = uow.patients.find(PATIENT)
        assert row is not None and row.death_date == "20260101"
        # a death date alone corrects nothing that goes out: no registration again
        corrected = uow.conn.execute(select(schema.patient.c.corrected_at)).scalar_one()
        assert corrected is None
        history = uow.corrections.naming({str(PATIENT)})
        assert history[-1].detail["after"]["death_date"] == "20260101"
    # cleared (HL7 ""): the study date anchors again
    assert update(site, "D2", Demographics(death_date="")) == "AA"
    assert expiry(site, uid) == (dt.date(2005, 3, 1), "images")


def test_no_policy_keeps_everything_and_recompute_applies_new_policies(
    tmp_path: Path, database_url: str
) -> None:
    archive = build(tmp_path / "a", database_url, [])
    try:
        site = Site(archive, tmp_path)
        uid = study(site)[0].StudyInstanceUID
        assert expiry(site, uid) == (None, None)
    finally:
        archive.committer.close()
        archive.engine.dispose()
    # The same index under a policy configured afterwards, for CT only.
    ct_only = {**IMAGES, "name": "ct", "modalities": ["CT"]}
    archive = build(tmp_path / "a", database_url, [ct_only, {**IMAGES, "modalities": ["MR"]}])
    try:
        site = Site(archive, tmp_path)
        assert expiry(site, uid) == (None, None)
        assert site.retention.recompute_all() == 1
        assert expiry(site, uid) == (dt.date(2005, 3, 1), "ct")
    finally:
        archive.committer.close()
        archive.engine.dispose()


def test_a_policy_by_sop_class_covers_the_studies_holding_one(
    tmp_path: Path, database_url: str
) -> None:
    ct = {
        "name": "ct",
        "periods": [{"after": "study_date", "years": 30}],
        "sop_classes": ["1.2.840.10008.5.1.4.1.1.2"],
    }
    mr_only = {**ct, "name": "mr", "sop_classes": ["1.2.840.10008.5.1.4.1.1.4"]}
    archive = build(tmp_path / "a", database_url, [IMAGES, ct, mr_only])
    try:
        site = Site(archive, tmp_path)
        uid = study(site, 3)[0].StudyInstanceUID
        assert expiry(site, uid) == (dt.date(2030, 3, 1), "ct")
    finally:
        archive.committer.close()
        archive.engine.dispose()


def test_pid_29_is_read_as_the_death_date() -> None:
    def parsed(pid29: str) -> Demographics:
        message = hl7.parse(
            "MSH|^~\\&|RIS|TESTSAIRAALA|KUVA|KUVA|20260101120000||ADT^A08|C1|P|2.5\r"
            f"PID|1||{DEFAULT_PATIENT_ID}^^^&1.2.246.21&ISO{'|' * 26}{pid29}"
        )
        (command,) = adt.commands(message, "A08")
        assert isinstance(command, UpdatePatient)
        return command.demographics

    assert parsed("20251231235959+0200").death_date == "20251231"
    assert parsed('""').death_date == ""
    assert parsed("").death_date is None
    with pytest.raises(PatientCorrectionError) as error:
        parsed("2025-12-31")
    assert (error.value.field, error.value.code) == ("PID-29", "102")


def test_a_merge_gives_the_studies_the_survivors_dates(site: Site) -> None:
    other = PatientKey("020202-900E", FINNISH_PIC_ISSUER)
    moved = make_ct_series(1, rows=16, cols=16, patient_id=other.patient_id, study_datetime=OLD)
    store(site, moved)
    study(site, 1)  # the survivor's own study, so that it is held
    uid = moved[0].StudyInstanceUID
    assert update(site, "D1", Demographics(death_date="20260101")) == "AA"
    assert expiry(site, uid) == (dt.date(2005, 3, 1), "images")  # its own patient: alive
    site.archive.patients.merge(other, PATIENT)
    assert expiry(site, uid) == (dt.date(2028, 1, 1), "images")


# ---------------------------------------------------------------------- holds, dry run


def test_a_held_study_is_kept_until_released(site: Site) -> None:
    uid = study(site)[0].StudyInstanceUID
    site.retention.hold(patient=PATIENT, reason="court case 1/2026", by="lawyer")
    site.retention.hold(study_uid=uid, reason="audit", by="lawyer")
    assert site.retention.expired() == []
    assert site.retention.run(by="test").destroyed == []
    assert site.retention.release(patient=PATIENT, by="lawyer") == 1
    assert site.retention.run(by="test").destroyed == []  # the study's own hold
    assert site.retention.release(study_uid=uid, by="lawyer") == 1
    (done,) = site.retention.run(by="test").destroyed
    assert (done.study_instance_uid, done.instances) == (uid, 3)


def test_a_dry_run_changes_nothing(site: Site) -> None:
    uid = study(site)[0].StudyInstanceUID
    before = (counts(site.engine), blob_files(site))
    report = site.retention.run(by="test", dry_run=True)
    assert [s.study_instance_uid for s in report.expired] == [uid]
    assert report.destroyed == []
    assert (counts(site.engine), blob_files(site)) == before


# ---------------------------------------------------------------------- destruction


def test_destruction_leaves_nothing_of_the_study_but_its_record(site: Site) -> None:
    datasets = study(site, 4)
    uid = datasets[0].StudyInstanceUID
    kept = study(site, 2, dt.datetime(2026, 1, 5, 9, 0))[0].StudyInstanceUID  # not due
    run_tasks(site, REGISTRATION_TASK)  # the manifests are published
    with UnitOfWork(site.engine, write=False) as uow:
        (manifest,) = uow.documents.of_study(uid, "application/dicom")
        (entry,) = uow.registry.find_by_unique_ids([manifest.unique_id])
    assert entry.status is AvailabilityStatus.APPROVED
    # blobs are content-addressed: a key ends with the SHA-256 of its bytes
    shas = {key.rsplit("/", 1)[-1] for key in referenced_keys(site.engine)}
    before = counts(site.engine)

    (done,) = site.retention.run(by="test", reason="retention period ended").destroyed
    assert (done.study_instance_uid, done.instances) == (uid, 5)  # 4 images + manifest

    after = counts(site.engine)
    assert after["study"] == before["study"] - 1 == 1
    assert after["series"] == before["series"] - 2  # CT + the manifest's series
    assert after["instance"] == before["instance"] - 5
    assert after["patient"] == 1  # the other study keeps the patient
    assert after["xds_document"] == before["xds_document"] - 1
    assert after["xds_object"] == before["xds_object"]  # the registry keeps its entries
    assert found_studies(site.engine) == [kept]
    with UnitOfWork(site.engine, write=False) as uow:
        (entry,) = uow.registry.find_by_unique_ids([manifest.unique_id])
        assert entry.status is AvailabilityStatus.DEPRECATED
        ians = [t for t in uow.tasks.list(kind=IAN_TASK, subject=uid) if t.payload.get("destroyed")]
        (record,) = uow.retention.destroyed(study_uid=uid, since=None, limit=10)
        sha_list = uow.retention.sha256_list(record.pk)
        events = [r.event_id for r in uow.audit.list(since=None, event_id="110105", limit=10)]
    (ian,) = ians
    assert ian.payload["node"] == "PACS1"
    assert {i[3] for i in ian.payload["instances"]} == {"UNAVAILABLE"}
    assert {i[2] for i in ian.payload["instances"]} == {ds.SOPInstanceUID for ds in datasets}
    assert events == ["110105"]
    assert (record.organization_oid, record.patient_id, record.patient_issuer) == (
        ORG,
        DEFAULT_PATIENT_ID,
        FINNISH_PIC_ISSUER,
    )
    assert (record.policy, record.expires_on, record.instances) == (
        "images",
        dt.date(2005, 3, 1),
        5,
    )
    assert record.sha256_digest == hashlib.sha256(sha_list.encode()).hexdigest()
    destroyed_shas = set(sha_list.split("\n"))
    assert len(destroyed_shas) == 5 and destroyed_shas <= set(shas)
    # no blob of the study in any copy, nothing orphaned, nothing missing
    assert not any(key.rsplit("/", 1)[-1] in destroyed_shas for key in blob_files(site))
    assert verify_problems(site) == 0
    # the destroyed study's waiting registration ends as done, not failed
    with UnitOfWork(site.engine) as uow:
        uow.tasks.add(REGISTRATION_TASK, subject=uid, payload={}, now=dt.datetime.now(dt.UTC),
                      max_attempts=3)  # fmt: skip
        uow.commit()
    run_tasks(site, REGISTRATION_TASK)
    with UnitOfWork(site.engine, write=False) as uow:
        assert uow.tasks.list(status="failed") == []


def test_the_last_study_takes_the_patient_with_it(site: Site) -> None:
    study(site)
    assert len(site.retention.run(by="test").destroyed) == 1
    after = counts(site.engine)
    assert (after["patient"], after["study"], after["instance"], after["destruction"]) == (
        0,
        0,
        0,
        1,
    )
    assert blob_files(site) == []


def test_a_prohibited_patient_is_kept_when_its_last_study_is_destroyed(site: Site) -> None:
    """A disclosure prohibition outlives the patient's studies: the patient row stays
    for it, and the destruction (and the next run) goes through."""
    datasets = study(site)
    key = PatientKey(str(datasets[0].PatientID), str(datasets[0].get("IssuerOfPatientID", "")))
    assert DisclosureProhibitions(site.engine).prohibit(key, by="test", reason="")
    report = site.retention.run(by="test")
    assert (len(report.destroyed), report.failed) == (1, [])
    after = counts(site.engine)
    assert (after["patient"], after["study"], after["instance"]) == (1, 0, 0)
    assert DisclosureProhibitions(site.engine).current(key) is not None
    assert site.retention.run(by="test").failed == []


class _DiesMidway(FileBlobStore):
    """A blob store whose process 'dies' after deleting ``allowed`` blobs."""

    def __init__(self, root: Path, allowed: int) -> None:
        super().__init__(root)
        self.allowed = allowed

    def delete(self, key: str) -> bool:
        if self.allowed == 0:
            raise SystemExit("killed")
        self.allowed -= 1
        return super().delete(key)


def test_an_interrupted_destruction_is_finished_by_the_next_run(site: Site) -> None:
    uid = study(site, 4)[0].StudyInstanceUID
    blob_dir = site.archive.settings.archive.resolved_blob_dir()
    dying = RetentionService(
        site.engine, _DiesMidway(blob_dir, 2), site.archive.settings, audit=site.archive.audit
    )
    with pytest.raises(SystemExit):
        dying.run(by="test")
    # Decided and hidden; blobs half gone; rows still there; nothing reported.
    assert found_studies(site.engine) == []
    assert len(blob_files(site)) == 2
    assert counts(site.engine)["instance"] == 4
    assert verify_problems(site) == 0
    with UnitOfWork(site.engine, write=False) as uow:
        (unfinished,) = uow.retention.unfinished()
    assert unfinished.study_instance_uid == uid
    assert site.retention.expired() == []  # being destroyed: not listed again

    # an instance of the study arriving now is refused (0xA700: try later), no blob kept
    late = make_ct_series(
        1, rows=16, cols=16, study_uid=uid, study_datetime=OLD, series_uid="2.25.4242", seed=7
    )[0]
    outcome = store_one(site, late)
    assert outcome.status is StoreStatus.FAILED and "being destroyed" in outcome.message
    assert len(blob_files(site)) == 2

    report = site.retention.run(by="test")
    assert report.resumed == 1
    after = counts(site.engine)
    assert (after["instance"], after["study"], after["destruction"]) == (0, 0, 1)
    assert blob_files(site) == []
    with UnitOfWork(site.engine, write=False) as uow:
        (record,) = uow.retention.destroyed(study_uid=uid, since=None, limit=10)
        assert uow.retention.unfinished() == []
    assert record.instances == 4


# ---------------------------------------------------------------------- IOCM 113039
# Studies whose retention has expired (OLD): the note's destruction is due at once.


def test_a_113039_rejection_note_destroys_what_it_rejects(site: Site) -> None:
    datasets = make_ct_series(3, rows=16, cols=16, study_datetime=OLD)
    store(site, datasets)
    note = rejection_note(RETENTION_EXPIRED, datasets[:2])
    store(site, [note])
    with UnitOfWork(site.engine, write=False) as uow:
        (task,) = uow.tasks.list(kind=REJECTED_DESTRUCTION_TASK)
    assert task.subject == note.SOPInstanceUID
    run_tasks(site, REJECTED_DESTRUCTION_TASK)

    with site.engine.connect() as conn:
        left = set(conn.execute(select(schema.instance.c.sop_instance_uid)).scalars())
    assert left == {datasets[2].SOPInstanceUID, note.SOPInstanceUID}
    assert len(blob_files(site)) == 2
    assert verify_problems(site) == 0
    with UnitOfWork(site.engine, write=False) as uow:
        (record,) = uow.retention.destroyed(study_uid=None, since=None, limit=10)
        assert uow.tasks.list(status="failed") == []
    assert (record.rejection_note_uid, record.instances, record.policy) == (
        note.SOPInstanceUID,
        2,
        "IOCM 113039",
    )
    assert record.study_instance_uid == datasets[0].StudyInstanceUID
    # destroyed: the note can no longer be revoked, and a resend is ignored (not stored)
    assert RejectionService(site.engine).revoke(note.SOPInstanceUID, by="test") == 0
    assert store_one(site, datasets[0]).status is StoreStatus.IGNORED
    assert len(blob_files(site)) == 2
    with site.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(schema.instance)).scalar_one() == 2


def test_an_instance_a_113039_note_named_first_is_not_kept(site: Site) -> None:
    datasets = make_ct_series(2, rows=16, cols=16, study_datetime=OLD)
    store(site, [datasets[0]])
    note = rejection_note(RETENTION_EXPIRED, datasets)  # the second is not held yet
    store(site, [note])
    run_tasks(site, REJECTED_DESTRUCTION_TASK)
    outcome = store_one(site, datasets[1])
    assert outcome.status is StoreStatus.IGNORED, outcome
    assert "113039" in outcome.message
    with site.engine.connect() as conn:
        left = set(conn.execute(select(schema.instance.c.sop_instance_uid)).scalars())
    assert left == {note.SOPInstanceUID}
    assert len(blob_files(site)) == 1
    assert verify_problems(site) == 0


def test_a_failed_113039_destruction_is_finished_by_its_retry(site: Site) -> None:
    datasets = make_ct_series(3, rows=16, cols=16, study_datetime=OLD)
    store(site, datasets)
    note = rejection_note(RETENTION_EXPIRED, datasets)
    store(site, [note])
    blob_dir = site.archive.settings.archive.resolved_blob_dir()
    dying = RetentionService(site.engine, _DiesMidway(blob_dir, 1), site.archive.settings)
    with pytest.raises(SystemExit):
        dying.destroy_rejected(note.SOPInstanceUID, by="IOCM")
    assert verify_problems(site) == 0
    run_tasks(site, REJECTED_DESTRUCTION_TASK)  # the task, as retried
    with UnitOfWork(site.engine, write=False) as uow:
        records = uow.retention.destroyed(study_uid=None, since=None, limit=10)
        assert uow.retention.unfinished() == []
    assert [r.instances for r in records] == [3]
    assert len(blob_files(site)) == 1  # the note
    assert verify_problems(site) == 0


def test_a_113039_note_on_a_study_not_expired_destroys_it_with_the_study(site: Site) -> None:
    """Retention wins: a study with its expiry ahead keeps what the note rejects
    (hidden, a warning) until the retention run destroys the whole study."""
    datasets = make_ct_series(2, rows=16, cols=16, study_datetime=dt.datetime(2026, 1, 5))
    store(site, datasets)
    note = rejection_note(RETENTION_EXPIRED, datasets[:1])
    outcome = store_one(site, note)
    assert outcome.status is StoreStatus.NOT_DESTROYED and outcome.ok
    assert outcome.message == "retention not expired: rejected, destroyed when it expires"
    with UnitOfWork(site.engine, write=False) as uow:
        assert uow.tasks.list(kind=REJECTED_DESTRUCTION_TASK) == []
        assert uow.instances.get(str(datasets[0].SOPInstanceUID)) is not None
    assert site.retention.destroy_rejected(note.SOPInstanceUID, by="test") is None  # not due
    assert len(blob_files(site)) == 3
    assert site.retention.run(by="test").destroyed == []  # expires in 2031
