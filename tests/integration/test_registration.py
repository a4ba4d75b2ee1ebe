"""Registration of studies and Instance Availability Notification, end to end.

A real ``kuva serve`` (SQLite and PostgreSQL) with ``[registration] stable_seconds``
short; dcmtk's storescu sends a study of a Finnish test patient from a node of the
register holder; a pynetdicom IAN SCP stands in for the holder's RIS (``ian =
true``), and a node of another organisation that also wants IANs must hear nothing.
Then ITI-18 FindDocuments finds the manifest, RAD-69 returns the images as sent.
The failure paths: a peer that is down and comes back (it receives the current
state of each study once: a newer IAN supersedes the undelivered older one), a
SIGKILL between registration and IAN (the IAN still arrives, one manifest), a study
that grows (a second manifest replaces the first and a second IAN goes out), a
storage commitment that registers at once, a modality not on the registration
list, a failed IAN resent by ``kuva tasks retry``, and an outage of the RIS with
shortened IAN retry settings: a study whose IAN keeps failing holds back neither
another study's nor another node's, and ``kuva tasks retry --node`` sends what the
RIS missed once it is back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage
from sqlalchemy import Engine

from kuva.app import build_xds
from kuva.config import Settings
from kuva.dicom.ian import IanSender
from kuva.index.group_commit import GroupCommitter
from kuva.index.outbox import Task
from kuva.index.uow import UnitOfWork
from kuva.model.directory import NodeSettings
from kuva.model.local_time import parse_offset
from kuva.model.uids import new_uid
from kuva.model.xds import AvailabilityStatus, DocumentEntryScheme
from kuva.services.ingest import IngestService
from kuva.services.registration import NodeUnreachable, RegistrationService
from kuva.services.retrieve import RetrieveService
from kuva.storage.filesystem import FileBlobStore
from kuva.xds.namespaces import (
    NSMAP,
    RETRIEVE_IMAGING_DOCUMENT_SET,
)
from tests.integration.test_xds import part10_dataset, rad69_request
from tests.support.archive import dataset_bytes
from tests.support.commitment_scu import CommitmentSCU, committed
from tests.support.ian import IanReceiver
from tests.support.peers import dcmtk_available
from tests.support.server import free_port
from tests.support.site import PATIENT, Site
from tests.support.synthetic import (
    DEFAULT_PATIENT_ID,
    make_ct_series,
    write_series,
)
from tests.unit.test_outbox import START, FakeClock
from tests.unit.test_repository import retrieve_request

pytestmark = [
    pytest.mark.dcmtk,
    pytest.mark.skipif(not dcmtk_available(), reason="dcmtk not installed"),
]


IAN = "instance-availability"


def metric(site: Site, name: str) -> float:
    text = site.client.get(site.server.http + "/metrics").text
    (line,) = [row for row in text.splitlines() if row.startswith(name + " ")]
    return float(line.split()[-1])


def sent_instances(paths: list[Path]) -> dict[str, Path]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in paths}


def test_study_is_registered_announced_found_and_retrieved(
    site_factory: Callable[..., Site],
) -> None:
    site = site_factory(dcmjs=True)
    ris = site.receiver()
    study_uid = pydicom.uid.generate_uid()
    sent = sent_instances(
        site.send(3, study_uid=study_uid, series_number=1)
        + site.send(2, study_uid=study_uid, series_number=2)
    )

    # --- the IAN: every instance ONLINE, retrievable from kuva; nothing to the other org
    (ian,) = ris.wait_for(1)
    assert ian.study_uid == study_uid
    assert ian.instances() == dict.fromkeys(sent, "ONLINE")
    assert {
        str(item.RetrieveAETitle)
        for series in ian.dataset.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    } == {"KUVA"}
    assert len(ian.dataset.ReferencedSeriesSequence) == 2
    if site.dcmjs is not None:  # the independent SCP reads the same N-CREATE
        (second,) = site.dcmjs.wait_for(1)
        assert (second.study_uid, second.instances()) == (study_uid, ian.instances())
        assert set(second.retrieve_ae.values()) == {"KUVA"}
    time.sleep(1)
    assert site.other.received == []

    # --- ITI-18 FindDocuments finds the manifest; ITI-43 returns it; RAD-69 the images
    (manifest_uid,) = site.find_documents()
    assert site.manifests(study_uid) == {manifest_uid: AvailabilityStatus.APPROVED}
    _, documents = site.retrieve(
        "urn:ihe:iti:2007:RetrieveDocumentSet",
        retrieve_request(("1.2.246.10.0.10.1.1", manifest_uid)),
        "/xds/repository",
    )
    manifest = pydicom.dcmread(pydicom.filebase.DicomBytesIO(documents[manifest_uid]))
    (evidence,) = manifest.CurrentRequestedProcedureEvidenceSequence
    listed = [
        (study_uid, str(series.SeriesInstanceUID), str(item.ReferencedSOPInstanceUID))
        for series in evidence.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    ]
    assert sorted(uid for _, _, uid in listed) == sorted(sent)
    assert manifest.StudyDate == pydicom.dcmread(next(iter(sent.values()))).StudyDate
    _, images = site.retrieve(RETRIEVE_IMAGING_DOCUMENT_SET, rad69_request(listed), "/xds/imaging")
    assert sorted(images) == sorted(sent)
    for sop_uid, content in images.items():
        assert part10_dataset(content) == dataset_bytes(sent[sop_uid])

    # --- the operator's view: both tasks done, latency measured
    (registration,) = site.tasks("study-registration")
    assert (registration["subject"], registration["status"]) == (study_uid, "done")
    notified = site.tasks(IAN)
    assert {(t["subject"], t["status"]) for t in notified} == {(study_uid, "done")}
    assert "RIS" in {t["to"] for t in notified}
    assert metric(site, "kuva_registration_latency_seconds_count") == len(notified)
    assert metric(site, 'kuva_tasks{kind="instance-availability",status="done"}') == len(notified)
    assert metric(site, 'kuva_tasks{kind="study-registration",status="pending"}') == 0
    table = site.server.kuva("tasks", "list").stdout
    assert IAN in table and "RIS" in table


def test_down_peer_gets_the_current_state_once_and_a_grown_study_is_registered_again(
    site_factory: Callable[..., Site],
) -> None:
    site = site_factory()
    study_uid = pydicom.uid.generate_uid()
    first = sent_instances(site.send(3, study_uid=study_uid, series_number=1))
    site.wait_tasks(
        IAN,
        lambda tasks: len(tasks) == 1 and int(tasks[0]["attempts"]) >= 2,
    )
    (first_manifest,) = site.manifests(study_uid)

    # The study grows while the RIS is down: registered again, its IAN supersedes the
    # undelivered one (at once, or after the attempt it was in failed).
    second = sent_instances(site.send(2, study_uid=study_uid, series_number=2))
    site.wait_tasks(
        "study-registration", lambda tasks: [t["status"] for t in tasks] == ["done"] * 2
    )
    manifests = site.manifests(study_uid)
    assert len(manifests) == 2
    assert manifests[first_manifest] is AvailabilityStatus.DEPRECATED
    (current,) = [uid for uid, status in manifests.items() if status is AvailabilityStatus.APPROVED]
    assert set(site.find_documents()) == {current}
    assert len(site.kuva_instances(study_uid)) == 2

    site.wait_tasks(
        IAN, lambda tasks: sorted(t["status"] for t in tasks) == ["pending", "superseded"]
    )

    ris = site.receiver()
    (ian,) = ris.wait_for(1)
    assert ian.instances() == dict.fromkeys(first | second, "ONLINE")
    time.sleep(1.5)
    assert len(ris.received) == 1
    assert sorted(t["status"] for t in site.tasks(IAN)) == ["done", "superseded"]


def test_sigkill_between_registration_and_ian(site_factory: Callable[..., Site]) -> None:
    site = site_factory()
    study_uid = pydicom.uid.generate_uid()
    sent = sent_instances(site.send(4, study_uid=study_uid))
    site.wait_tasks(
        IAN,
        lambda tasks: len(tasks) == 1 and int(tasks[0]["attempts"]) >= 1,
    )
    site.server.kill()
    ris = site.receiver()
    site.server.start()
    (ian,) = ris.wait_for(1)
    assert ian.instances() == dict.fromkeys(sent, "ONLINE")
    assert len(site.find_documents()) == 1
    assert len(site.manifests(study_uid)) == 1
    assert len(site.kuva_instances(study_uid)) == 1
    time.sleep(1.5)
    assert len(ris.received) == 1


def test_storage_commitment_registers_at_once(site_factory: Callable[..., Site]) -> None:
    site = site_factory(stable_seconds=3600)
    ris = site.receiver()
    scu = CommitmentSCU("PACS1")
    datasets: list[Dataset] = make_ct_series(3, rows=16, cols=16, patient_id=DEFAULT_PATIENT_ID)
    assoc = scu.associate(site.server.dicom_port, storage=[CTImageStorage])
    for ds in datasets:
        assert assoc.send_c_store(ds).Status == 0x0000
    refs = [(str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in datasets]
    # A commitment of part of the study does not register it...
    assert scu.request(assoc, refs[:2])[0] == 0x0000
    scu.wait_report()
    time.sleep(1.5)
    assert ris.received == []
    # ... one covering all of it does, long before stable_seconds.
    assert scu.request(assoc, refs)[0] == 0x0000
    _, info, _ = scu.wait_report()
    assoc.release()
    assert committed(info) == {ds.SOPInstanceUID for ds in datasets}
    (ian,) = ris.wait_for(1, timeout=20)
    assert ian.instances() == {str(ds.SOPInstanceUID): "ONLINE" for ds in datasets}
    assert len(site.find_documents()) == 1


def test_modality_not_on_the_list_is_announced_not_published(
    site_factory: Callable[..., Site],
) -> None:
    site = site_factory(modalities=["MR", "MG"])
    ris = site.receiver()
    study_uid = pydicom.uid.generate_uid()
    sent = sent_instances(site.send(2, study_uid=study_uid))
    (ian,) = ris.wait_for(1)
    assert ian.instances() == dict.fromkeys(sent, "ONLINE")
    assert site.find_documents() == {}
    assert site.kuva_instances(study_uid) == []
    assert "not published: no modality on the registration list" in site.server.log()


def test_failed_ian_is_listed_and_resent_by_the_operator(
    site_factory: Callable[..., Site],
) -> None:
    # Tried for 3.6 s: the IAN fails for good while the RIS is down.
    site = site_factory(ian_retry_hours=0.001)
    study_uid = pydicom.uid.generate_uid()
    sent = sent_instances(site.send(2, study_uid=study_uid))
    site.wait_tasks(IAN, lambda tasks: [t["status"] for t in tasks] == ["failed"])
    failed = site.server.kuva("tasks", "list", "--failed").stdout
    assert IAN in failed and study_uid[:20] in failed
    assert "association" in failed  # the reason, for the operator
    assert metric(site, 'kuva_tasks{kind="instance-availability",status="failed"}') == 1

    ris = site.receiver()
    retried = site.server.kuva("tasks", "retry", "--kind", IAN)
    assert retried.returncode == 0, retried.stdout + retried.stderr
    (ian,) = ris.wait_for(1, timeout=20)
    assert ian.instances() == dict.fromkeys(sent, "ONLINE")


def test_publishing_again_after_a_crash_registers_the_stored_manifest(
    site_factory: Callable[..., Site], database_url: str
) -> None:
    """The registration task's manifest UID: an attempt that died between storing the
    manifest and registering it leaves a KOS that the next attempt registers, not a
    second one."""
    site = site_factory(stable_seconds=3600)  # the server itself does not register
    study_uid = pydicom.uid.generate_uid()
    site.send(3, study_uid=study_uid)
    settings = Settings(archive={"database_url": database_url})
    blobs = FileBlobStore(site.server.blob_dir)
    committer = GroupCommitter(site.engine)
    try:
        ingest = IngestService(blobs, committer)
        xds = build_xds(settings, site.engine, blobs, ingest, RetrieveService(site.engine, blobs))
        manifest_uid = new_uid()

        def crash(_uow: UnitOfWork, _published: object) -> None:
            raise RuntimeError("the process died before the registry commit")

        with pytest.raises(RuntimeError):
            xds.manifests.publish_manifest(study_uid, manifest_uid=manifest_uid, within=crash)
        assert site.kuva_instances(study_uid) == [manifest_uid]
        assert site.manifests(study_uid) == {}
        published = xds.manifests.publish_manifest(study_uid, manifest_uid=manifest_uid)
    finally:
        committer.close()
        blobs.sync_pool.shutdown()
    assert published.document_unique_id == manifest_uid
    assert published.instances == 3
    assert site.kuva_instances(study_uid) == [manifest_uid]
    assert site.manifests(study_uid) == {manifest_uid: AvailabilityStatus.APPROVED}


def slots_and_codes(entry: Any) -> tuple[dict[str, list[str]], dict[str, tuple[str, str, str]]]:
    """A DocumentEntry's slots, and its codes by classification scheme (code,
    codingScheme, display name)."""
    slots = {
        slot.get("name"): [v.text or "" for v in slot.iterfind("rim:ValueList/rim:Value", NSMAP)]
        for slot in entry.iterfind("rim:Slot", NSMAP)
    }
    codes = {
        c.get("classificationScheme"): (
            c.get("nodeRepresentation"),
            c.findtext("rim:Slot/rim:ValueList/rim:Value", "", NSMAP),
            c.find("rim:Name/rim:LocalizedString", NSMAP).get("value"),
        )
        for c in entry.iterfind("rim:Classification", NSMAP)
        if c.get("nodeRepresentation")  # not the author's
    }
    return slots, codes


def test_manifest_time_agrees_with_its_offset_and_its_codes_are_settings(
    site_factory: Callable[..., Site], tmp_path: Path
) -> None:
    """Studies at 12:00 local time: Helsinki winter (+0200), Helsinki summer (+0300)
    and one that says its own offset (-0500). The manifest ITI-43 returns keeps the
    study's time and states its offset, its own creation time in that offset; the
    DocumentEntry ITI-18 finds has serviceStartTime in UTC and the codes of
    [registration]."""
    class_code = {"code": "IMG", "scheme": "1.2.246.537.6.12", "display_name": "Kuvantaminen"}
    site = site_factory(class_code=class_code)
    cases = {  # study datetime, own offset -> stated offset, serviceStartTime
        (datetime(2026, 1, 15, 12), ""): ("+0200", "20260115100000"),
        (datetime(2026, 7, 1, 12), ""): ("+0300", "20260701090000"),
        (datetime(2026, 1, 15, 12), "-0500"): ("-0500", "20260115170000"),
    }
    studies = {}
    for (when, own), expected in cases.items():
        datasets = make_ct_series(2, rows=8, cols=8, study_datetime=when)
        for ds in datasets:
            if own:
                ds.TimezoneOffsetFromUTC = own
        sent = site.store(write_series(datasets, tmp_path / str(datasets[0].StudyInstanceUID)))
        assert sent.returncode == 0, sent.stdout + sent.stderr
        studies[str(datasets[0].StudyInstanceUID)] = expected
    site.wait_tasks(
        "study-registration",
        lambda tasks: len(tasks) == 3 and all(t["status"] == "done" for t in tasks),
    )

    entries = site.stored_query("iti18-FindDocuments-request.xml", {"$patient_id$": str(PATIENT)})
    assert len(entries) == 3
    for entry in entries:
        slots, codes = slots_and_codes(entry)
        (study_uid,) = [
            ref.split("^")[0] for ref in slots["urn:ihe:iti:xds:2013:referenceIdList"]
            if ref.endswith("studyInstanceUID")
        ]  # fmt: skip
        offset, service_start = studies[study_uid]
        assert slots["serviceStartTime"] == [service_start]  # UTC, ITI TF-3 4.2.3.2.19
        assert codes[DocumentEntryScheme.CLASS_CODE] == ("IMG", "1.2.246.537.6.12", "Kuvantaminen")
        assert codes[DocumentEntryScheme.TYPE_CODE][:2] == ("55113-5", "2.16.840.1.113883.6.1")

        (unique_id,) = [
            i.get("value")
            for i in entry.iterfind("rim:ExternalIdentifier", NSMAP)
            if i.get("identificationScheme") == DocumentEntryScheme.UNIQUE_ID
        ]
        _, documents = site.retrieve(
            "urn:ihe:iti:2007:RetrieveDocumentSet",
            retrieve_request(("1.2.246.10.0.10.1.1", unique_id)),
            "/xds/repository",
        )
        manifest = pydicom.dcmread(pydicom.filebase.DicomBytesIO(documents[unique_id]))
        assert manifest.StudyTime == "120000"
        assert manifest.TimezoneOffsetFromUTC == offset
        # the study's time, read in the stated offset, is the UTC time of the entry
        stated = parse_offset(offset)
        assert stated is not None
        local = datetime.strptime(manifest.StudyDate + manifest.StudyTime, "%Y%m%d%H%M%S")
        assert f"{local.replace(tzinfo=stated).astimezone(UTC):%Y%m%d%H%M%S}" == service_start
        # the manifest's own creation: now, in the same offset
        created = datetime.strptime(
            manifest.ContentDate + manifest.ContentTime, "%Y%m%d%H%M%S"
        ).replace(tzinfo=stated)
        assert abs(datetime.now(UTC) - created) < timedelta(minutes=5)


def test_ians_survive_an_outage(site_factory: Callable[..., Site]) -> None:
    """The RIS refuses one study's IANs, then is down for maintenance, then back.
    IANs are tried for ``ian_retry_hours`` (here 14.4 s) whatever the attempts: the
    refused study holds back neither another study's IAN to the RIS nor its own to
    another node (dcmjs-dimse, when Node.js is here); the study grows meanwhile and
    its newer IAN supersedes the undelivered one; after the window the IAN waits as
    failed (the RIS's backlog on /metrics) until ``kuva tasks retry --node RIS``
    sends it at once: the RIS gets the current state of each study, once."""
    site = site_factory(dcmjs=True, ian_retry_hours=0.004)
    ris = site.receiver()
    refused, other = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    ris.refuse.add(refused)
    first = sent_instances(site.send(2, study_uid=refused, series_number=1))
    sent_other = sent_instances(site.send(2, study_uid=other, series_number=1))

    (delivered,) = ris.wait_for(1)
    assert (delivered.study_uid, delivered.instances()) == (
        other,
        dict.fromkeys(sent_other, "ONLINE"),
    )

    def to_ris(tasks: list[dict[str, str]]) -> list[dict[str, str]]:
        return [t for t in tasks if t["subject"] == refused and t["to"] == "RIS"]

    site.wait_tasks(IAN, lambda tasks: int(to_ris(tasks)[0]["attempts"]) >= 3)
    assert {ian.study_uid for ian in ris.refused} == {refused}
    if site.dcmjs is not None:
        assert {ian.study_uid for ian in site.dcmjs.wait_for(2)} == {refused, other}

    # Maintenance: the RIS is down while the study grows.
    ris.close()
    second = sent_instances(site.send(1, study_uid=refused, series_number=2))
    site.wait_tasks(
        IAN,
        lambda tasks: sorted(t["status"] for t in to_ris(tasks)) == ["failed", "superseded"],
    )
    assert "association" in site.server.kuva("tasks", "list", "--node", "RIS").stdout
    if site.dcmjs is not None:
        site.dcmjs.wait_for(3)
        assert site.dcmjs.of_study(refused)[-1].instances() == dict.fromkeys(
            first | second, "ONLINE"
        )

    back = site.receiver()
    time.sleep(1.5)
    assert back.received == []  # a failed IAN waits for the operator
    assert metric(site, 'kuva_ian_undelivered_oldest_seconds{node="RIS"}') > 0
    retried = site.server.kuva("tasks", "retry", "--node", "RIS")
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert "1 task(s) scheduled again to RIS" in retried.stdout
    (current,) = back.wait_for(1, timeout=10)
    assert (current.study_uid, current.instances()) == (
        refused,
        dict.fromkeys(first | second, "ONLINE"),
    )
    time.sleep(1.5)
    assert len(back.received) == 1  # the other study's IAN is not sent again
    assert sorted(t["status"] for t in to_ris(site.tasks(IAN))) == ["done", "superseded"]
    assert metric(site, 'kuva_ian_undelivered_oldest_seconds{node="RIS"}') == 0


def test_an_unreachable_node_is_not_called_again_for_a_moment(engine: Engine) -> None:
    """After an association to a node failed, this process's other IANs to it fail
    at once (no worker waits out a connection per study while the node is down),
    for at most ian_backoff_max_seconds; then the node is called again."""
    port = free_port()
    settings = Settings(
        nodes=[NodeSettings(ae_title="RIS", host="127.0.0.1", port=port, ian=True)],
        registration={"ian_backoff_max_seconds": 30},
    )
    clock = FakeClock()
    service = RegistrationService(engine, settings, None, IanSender(settings), clock=clock)  # type: ignore[arg-type]

    def ian(study_uid: str) -> Task:
        listed = [[new_uid(), CTImageStorage, new_uid(), "ONLINE"]]  # as a destruction's IAN
        payload = {"node": "RIS", "instances": listed, "last_received_at": START.isoformat()}
        return Task(1, IAN, study_uid, payload, "running", 1, 0, START, None, START, START)

    with pytest.raises(NodeUnreachable, match="association with RIS"):
        service.run_ian(ian("1.2.246.10.1.1"))
    ris = IanReceiver(port, ae_title="RIS")
    try:
        with pytest.raises(NodeUnreachable, match="not tried again before 2026-03-14T09:00:30"):
            service.run_ian(ian("1.2.246.10.1.2"))
        assert ris.received == []
        clock.advance(seconds=30)
        service.run_ian(ian("1.2.246.10.1.2"))
        assert [received.study_uid for received in ris.wait_for(1)] == ["1.2.246.10.1.2"]
    finally:
        ris.close()
