"""Registration of studies and Instance Availability Notification, end to end.

A real ``kuva serve`` (SQLite and PostgreSQL) with ``[registration] stable_seconds``
short; dcmtk's storescu sends a study of a Finnish test patient from a node of the
register holder; a pynetdicom IAN SCP stands in for the holder's RIS (``ian =
true``), and a node of another organisation that also wants IANs must hear nothing.
Then ITI-18 FindDocuments finds the manifest, RAD-69 returns the images as sent.
The failure paths: a peer that is down and comes back (it receives every IAN it
missed, in order), a SIGKILL between registration and IAN (the IAN still arrives,
one manifest), a study that grows (a second manifest replaces the first and a
second IAN goes out), a storage commitment that registers at once, a modality not
on the registration list, a failed IAN resent by ``kuva tasks retry``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage
from sqlalchemy import Engine

from kuva.app import build_xds
from kuva.config import Settings
from kuva.index.database import make_engine
from kuva.index.group_commit import GroupCommitter
from kuva.index.uow import UnitOfWork
from kuva.model.uids import made_by_kuva, new_uid
from kuva.model.xds import AvailabilityStatus, ObjectKind, PatientId
from kuva.services.ingest import IngestService
from kuva.services.retrieve import RetrieveService
from kuva.storage.filesystem import FileBlobStore
from kuva.xds.namespaces import (
    NSMAP,
    REGISTRY_STORED_QUERY,
    RETRIEVE_IMAGING_DOCUMENT_SET,
    q,
)
from tests.integration.test_xds import part10_dataset, rad69_request
from tests.support.archive import dataset_bytes
from tests.support.commitment_scu import CommitmentSCU, committed
from tests.support.dcmjs import DcmjsIanReceiver, dcmjs_available
from tests.support.ian import IanReceiver
from tests.support.peers import LOOPBACK, dcmtk_available, storescu
from tests.support.server import KuvaServer, free_port
from tests.support.synthetic import (
    DEFAULT_PATIENT_ID,
    FINNISH_PIC_ISSUER,
    make_ct_series,
    write_series,
)
from tests.unit.test_ebrim import sample_payload
from tests.unit.test_repository import answer_of, mtom_documents, retrieve_request, soap_envelope

pytestmark = [
    pytest.mark.dcmtk,
    pytest.mark.skipif(not dcmtk_available(), reason="dcmtk not installed"),
]

HOLDER = "1.2.246.10.12345678.10"
OTHER = "1.2.246.10.87654321.10"
MODALITY = "STORESCU"  # storescu's calling AE title: a node of the holder
PATIENT = PatientId(DEFAULT_PATIENT_ID, FINNISH_PIC_ISSUER)
SUCCESS = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"
STABLE_SECONDS = 1


@dataclass
class Site:
    """A running kuva, the holder's IAN receiver port and the other organisation's."""

    server: KuvaServer
    engine: Engine
    client: httpx.Client
    tmp_path: Path
    ian_port: int
    other: IanReceiver
    # A second, independent IAN SCP of the holder (dcmjs-dimse), when Node.js is here.
    dcmjs: DcmjsIanReceiver | None = None
    receivers: list[IanReceiver] = field(default_factory=list)

    def receiver(self) -> IanReceiver:
        """Start (or start again) the holder's IAN SCP on its configured port."""
        scp = IanReceiver(self.ian_port, ae_title="RIS")
        self.receivers.append(scp)
        return scp

    def send(self, n: int, *, study_uid: str, series_number: int = 1) -> list[Path]:
        datasets = make_ct_series(
            n,
            rows=16,
            cols=16,
            patient_id=DEFAULT_PATIENT_ID,
            study_uid=study_uid,
            accession_number="T2026000077",
            series_number=series_number,
            seed=series_number,
        )
        paths = write_series(datasets, self.tmp_path / f"{study_uid}-{series_number}")
        result = storescu(paths, LOOPBACK, self.server.dicom_port, aet=MODALITY, aec="KUVA")
        assert result.returncode == 0, result.stdout + result.stderr
        return paths

    def tasks(self, kind: str) -> list[dict[str, str]]:
        listed = self.server.kuva("tasks", "list", "--plain", "--kind", kind).stdout
        keys = ("pk", "kind", "subject", "status", "attempts", "created", "next", "error", "to")
        return [dict(zip(keys, line.split("\t"), strict=True)) for line in listed.splitlines()]

    def wait_tasks(self, kind: str, test: Callable[[list[dict[str, str]]], bool]) -> None:
        deadline = time.monotonic() + 30
        while not test(self.tasks(kind)):
            assert time.monotonic() < deadline, self.tasks(kind)
            time.sleep(0.2)

    def stored_query(self, query: str, values: dict[str, str]) -> list[Any]:
        """ITI-18 with a NIST sample query, ``$name$`` values replaced; ExtrinsicObjects."""
        payload = sample_payload(query)
        for value in payload.iter(q("rim", "Value")):
            for name, replacement in values.items():
                if value.text and name in value.text:
                    value.text = value.text.replace(name, replacement)
        response = self.client.post(
            self.server.http + "/xds/registry",
            content=soap_envelope(REGISTRY_STORED_QUERY, payload),
            headers={"content-type": "application/soap+xml; charset=UTF-8"},
        )
        assert response.status_code == 200, response.text
        answer, _ = answer_of(response)
        assert answer.get("status") == SUCCESS, response.text
        return list(answer.iterfind("rim:RegistryObjectList/rim:ExtrinsicObject", NSMAP))

    def find_documents(self) -> dict[str, str]:
        """uniqueId -> entryUUID of the patient's Approved DocumentEntries (FindDocuments)."""
        found = {}
        for entry in self.stored_query(
            "iti18-FindDocuments-request.xml", {"$patient_id$": str(PATIENT)}
        ):
            (unique_id,) = [
                identifier.get("value")
                for identifier in entry.iterfind("rim:ExternalIdentifier", NSMAP)
                if identifier.get("identificationScheme")
                == "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"
            ]
            found[unique_id] = entry.get("id")
        return found

    def manifests(self, study_uid: str) -> dict[str, AvailabilityStatus]:
        """The study's kuva-made manifests in the registry: uniqueId -> status."""
        with UnitOfWork(self.engine, write=False) as uow:
            ours = [d.unique_id for d in uow.documents.of_study(study_uid, "application/dicom")]
            return {
                found.unique_id or "": found.status
                for found in uow.registry.find_by_unique_ids(ours)
                if found.kind is ObjectKind.DOCUMENT_ENTRY
            }

    def kuva_instances(self, study_uid: str) -> list[str]:
        """SOP Instance UIDs of the kuva-made objects (manifests) stored in the study."""
        with UnitOfWork(self.engine, write=False) as uow:
            holdings = uow.manifests.holdings(study_uid)
        assert holdings is not None
        return [h.sop_instance_uid for h in holdings.instances if made_by_kuva(h.sop_instance_uid)]

    def retrieve(self, action: str, body: Any, path: str) -> tuple[Any, dict[str, bytes]]:
        response = self.client.post(
            self.server.http + path,
            content=soap_envelope(action, body, OTHER),
            headers={"content-type": "application/soap+xml; charset=UTF-8"},
        )
        assert response.status_code == 200, response.text
        answer, parts = answer_of(response)
        registry = answer.find("rs:RegistryResponse", NSMAP)
        assert registry is not None and registry.get("status") == SUCCESS, response.text
        return answer, mtom_documents(answer, parts)


def node(ae_title: str, port: int, organization: str, ian: bool = False) -> dict[str, Any]:
    return {
        "ae_title": ae_title,
        "host": "127.0.0.1",
        "port": port,
        "organization": organization,
        "ian": ian,
    }


@pytest.fixture
def site_factory(
    kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path
) -> Iterator[Callable[..., Site]]:
    sites: list[Site] = []

    def start(*, dcmjs: bool = False, **registration: Any) -> Site:
        ian_port = free_port()
        other = IanReceiver(ae_title="OTHERRIS")
        second = DcmjsIanReceiver(ae_title="DCMJSRIS") if dcmjs and dcmjs_available() else None
        more = [node("DCMJSRIS", second.port, HOLDER, ian=True)] if second else []
        server = kuva_server(
            organizations=[
                {"oid": HOLDER, "name": "Testin sairaala"},
                {"oid": OTHER, "name": "Toinen sairaala"},
            ],
            nodes=[
                node(MODALITY, free_port(), HOLDER),
                node("RIS", ian_port, HOLDER, ian=True),
                node("PACS1", free_port(), HOLDER),  # the commitment SCU
                node("OTHERRIS", other.port, OTHER, ian=True),
                *more,
            ],
            extra={
                "registration": {
                    "enabled": True,
                    "stable_seconds": STABLE_SECONDS,
                    **registration,
                },
                "tasks": {"max_attempts": 30},
            },
        )
        site = Site(
            server,
            make_engine(database_url),
            httpx.Client(trust_env=False, timeout=30),
            tmp_path,
            ian_port,
            other,
            second,
        )
        sites.append(site)
        return site

    yield start
    for site in sites:
        for scp in [*site.receivers, site.other]:
            scp.close()
        if site.dcmjs is not None:
            site.dcmjs.close()
        site.client.close()
        site.engine.dispose()


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
    notified = site.tasks("instance-availability")
    assert {(t["subject"], t["status"]) for t in notified} == {(study_uid, "done")}
    assert "RIS" in {t["to"] for t in notified}
    assert metric(site, "kuva_registration_latency_seconds_count") == len(notified)
    assert metric(site, 'kuva_tasks{kind="instance-availability",status="done"}') == len(notified)
    assert metric(site, 'kuva_tasks{kind="study-registration",status="pending"}') == 0
    table = site.server.kuva("tasks", "list").stdout
    assert "instance-availability" in table and "RIS" in table


def test_down_peer_gets_every_missed_ian_in_order_and_a_grown_study_is_registered_again(
    site_factory: Callable[..., Site],
) -> None:
    site = site_factory()
    study_uid = pydicom.uid.generate_uid()
    first = sent_instances(site.send(3, study_uid=study_uid, series_number=1))
    site.wait_tasks(
        "instance-availability",
        lambda tasks: len(tasks) == 1 and int(tasks[0]["attempts"]) >= 2,
    )
    (first_manifest,) = site.manifests(study_uid)

    # The study grows while the RIS is down: registered again, its IAN queued behind.
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

    ris = site.receiver()
    earlier, later = ris.wait_for(2)
    assert earlier.instances() == dict.fromkeys(first, "ONLINE")
    assert later.instances() == dict.fromkeys(first | second, "ONLINE")
    assert earlier.at <= later.at
    time.sleep(1.5)
    assert len(ris.received) == 2


def test_sigkill_between_registration_and_ian(site_factory: Callable[..., Site]) -> None:
    site = site_factory()
    study_uid = pydicom.uid.generate_uid()
    sent = sent_instances(site.send(4, study_uid=study_uid))
    site.wait_tasks(
        "instance-availability",
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
    site_factory: Callable[..., Site], tmp_path: Path
) -> None:
    site = site_factory()
    site.server.stop()
    # Few attempts: the IAN fails for good while the RIS is down.
    config = site.server.config_path
    config.write_text(
        config.read_text(encoding="utf-8").replace("max_attempts = 30", "max_attempts = 2"),
        encoding="utf-8",
    )
    site.server.start()
    study_uid = pydicom.uid.generate_uid()
    sent = sent_instances(site.send(2, study_uid=study_uid))
    site.wait_tasks(
        "instance-availability", lambda tasks: [t["status"] for t in tasks] == ["failed"]
    )
    failed = site.server.kuva("tasks", "list", "--failed").stdout
    assert "instance-availability" in failed and study_uid[:20] in failed
    assert "association" in failed  # the reason, for the operator
    assert metric(site, 'kuva_tasks{kind="instance-availability",status="failed"}') == 1

    ris = site.receiver()
    retried = site.server.kuva("tasks", "retry", "--kind", "instance-availability")
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
        ingest = IngestService(site.engine, blobs, committer)
        xds = build_xds(settings, site.engine, blobs, ingest, RetrieveService(site.engine, blobs))
        manifest_uid = new_uid()

        def crash(_uow: UnitOfWork, _published: object) -> None:
            raise RuntimeError("the process died before the registry commit")

        with pytest.raises(RuntimeError):
            xds.imaging_source.publish_manifest(study_uid, manifest_uid=manifest_uid, within=crash)
        assert site.kuva_instances(study_uid) == [manifest_uid]
        assert site.manifests(study_uid) == {}
        published = xds.imaging_source.publish_manifest(study_uid, manifest_uid=manifest_uid)
    finally:
        committer.close()
        blobs.sync_pool.shutdown()
    assert published.document_unique_id == manifest_uid
    assert published.instances == 3
    assert site.kuva_instances(study_uid) == [manifest_uid]
    assert site.manifests(study_uid) == {manifest_uid: AvailabilityStatus.APPROVED}
