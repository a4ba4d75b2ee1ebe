"""Patient corrections re-register the studies they change, end to end (SQLite and
PostgreSQL), and the operator's ``kuva patients`` commands.

A real ``kuva serve`` with registration on (tests.support.site): dcmtk's storescu
stores a study for each of two Finnish test patients, both are registered (an XDS-I.b
manifest each) and announced (IAN). An ADT^A40 over MLLP (python-hl7's
``mllp_send``) merges one into the other: the merged patient's study gets a new
manifest under the survivor's patientId and name, replacing its earlier one (RPLC:
the registry takes a merged patient as its survivor), and an IAN goes out again. An
ADT^A08 renames the survivor: both studies get a new manifest replacing the last,
with the new name in sourcePatientInfo and in the manifest (KOS) itself. An ADT^A37
unlink gives the study back: its new manifest is the merged patient's again, and the
survivor's one is Deprecated, not replaced (a replacement across patients is refused,
XDSPatientIdDoesNotMatch).

``kuva patients merge / unmerge / show`` run as subprocesses against an index
database, with registration on: the same rules and history, no names printed
except by ``show``, a readable message and a non-zero exit on a refusal.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from kuva.index.database import make_engine, migrate
from kuva.index.uow import UnitOfWork
from kuva.model.patient import PatientKey
from kuva.model.xds import AssociationType, AvailabilityStatus, ObjectKind, PatientId
from kuva.services.registration import REGISTRATION_TASK
from kuva.xds.namespaces import NSMAP
from tests.support.hl7 import MERGED, SURVIVOR, Hl7Site, adt, mrg, msa, pid
from tests.support.peers import dcmtk_available
from tests.support.site import HOLDER, Site
from tests.support.synthetic import FINNISH_PIC_ISSUER, make_ct_series, write_series
from tests.unit.test_patients import store

UNIQUE_ID = "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"  # XDSDocumentEntry.uniqueId
PATIENT_ID = "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427"  # XDSDocumentEntry.patientId


def send(site: Site, patient_id: str, n: int, name: str) -> tuple[str, set[str]]:
    """A study of ``n`` CT images of the patient, from the modality node: its Study
    Instance UID and SOP Instance UIDs."""
    study_uid = generate_uid()
    datasets = make_ct_series(
        n, rows=16, cols=16, patient_id=patient_id, patient_name=name, study_uid=study_uid
    )
    result = site.store(write_series(datasets, site.tmp_path / study_uid))
    assert result.returncode == 0, result.stdout + result.stderr
    return study_uid, {str(ds.SOPInstanceUID) for ds in datasets}


def documents(site: Site, patient_id: str) -> dict[str, tuple[str, list[str]]]:
    """ITI-18 FindDocuments (Approved): uniqueId -> (patientId, sourcePatientInfo)."""
    found = {}
    query = {"$patient_id$": str(PatientId(patient_id, FINNISH_PIC_ISSUER))}
    for entry in site.stored_query("iti18-FindDocuments-request.xml", query):
        identifiers = {
            identifier.get("identificationScheme"): identifier.get("value")
            for identifier in entry.iterfind("rim:ExternalIdentifier", NSMAP)
        }
        info = [
            value.text or ""
            for value in entry.iterfind(
                "rim:Slot[@name='sourcePatientInfo']/rim:ValueList/rim:Value", NSMAP
            )
        ]
        found[identifiers[UNIQUE_ID]] = (identifiers[PATIENT_ID], info)
    return found


def replaced_by(site: Site, original: str) -> list[str]:
    """uniqueIds of the Approved DocumentEntries that replace ``original`` (RPLC)."""
    with UnitOfWork(site.engine, write=False) as uow:
        (entry,) = uow.registry.find_by_unique_ids([original])
        pairs = uow.registry.related(
            [entry.entry_uuid], (AssociationType.RPLC,), source_kind=ObjectKind.DOCUMENT_ENTRY
        )
        sources = uow.registry.find([source for source, _ in pairs])
    return sorted(found.unique_id or "" for found in sources.values())


def approved(site: Site, study_uid: str) -> str:
    (current,) = [
        uid
        for uid, status in site.manifests(study_uid).items()
        if status is AvailabilityStatus.APPROVED
    ]
    return current


@pytest.mark.dcmtk
@pytest.mark.skipif(not dcmtk_available(), reason="dcmtk not installed")
def test_merge_and_update_register_the_studies_again(
    site_factory: Callable[..., Site], database_url: str, tmp_path: Path
) -> None:
    site = site_factory()
    ris = site.receiver()
    hl7 = Hl7Site(site.server, database_url, tmp_path)
    kept, _ = send(site, SURVIVOR, 1, "Testinen^Maija")
    merged, merged_images = send(site, MERGED, 2, "Sekaantunut^Nimi")
    ris.wait_for(2)
    before_merge = approved(site, merged)
    assert set(documents(site, MERGED)) == {before_merge}

    # --- A40: the merged patient's study is registered again under the survivor
    ack = hl7.mllp_send(
        adt("A40", pid(SURVIVOR), mrg(MERGED), structure="ADT_A39", organization=HOLDER)
    )
    assert msa(ack)[0] == "AA"
    announced = ris.wait_for(3)[2]
    assert (announced.study_uid, announced.instances()) == (
        merged,
        dict.fromkeys(merged_images, "ONLINE"),
    )
    after_merge = approved(site, merged)
    assert site.manifests(merged) == {
        before_merge: AvailabilityStatus.DEPRECATED,
        after_merge: AvailabilityStatus.APPROVED,
    }
    assert replaced_by(site, before_merge) == [after_merge]
    survivor_cx = str(PatientId(SURVIVOR, FINNISH_PIC_ISSUER))
    found = documents(site, SURVIVOR)
    assert set(found) == {approved(site, kept), after_merge}
    patient_id, info = found[after_merge]
    assert patient_id == survivor_cx
    assert f"PID-3|{survivor_cx}" in info and "PID-5|Testinen^Maija" in info
    assert documents(site, MERGED) == {}
    kos = pydicom.dcmread(pydicom.filebase.DicomBytesIO(site.blob(after_merge)))
    assert (kos.PatientID, kos.IssuerOfPatientID) == (SURVIVOR, FINNISH_PIC_ISSUER)
    assert str(kos.PatientName) == "Testinen^Maija"  # the survivor's, not as received

    # --- A08: a new name, both studies registered again (RPLC: the same patient)
    ack = hl7.mllp_send(adt("A08", pid(SURVIVOR, "Virtanen^Maija"), organization=HOLDER))
    assert msa(ack)[0] == "AA"
    assert {ian.study_uid for ian in ris.wait_for(5)[3:]} == {kept, merged}
    found = documents(site, SURVIVOR)
    assert set(found) == {approved(site, kept), approved(site, merged)}
    for study_uid in (kept, merged):
        manifest = approved(site, study_uid)
        assert "PID-5|Virtanen^Maija" in found[manifest][1]
        kos = pydicom.dcmread(pydicom.filebase.DicomBytesIO(site.blob(manifest)))
        assert str(kos.PatientName) == "Virtanen^Maija"
    assert site.manifests(merged)[after_merge] is AvailabilityStatus.DEPRECATED
    assert len(site.manifests(merged)) == 3
    assert hl7.corrections(f"{SURVIVOR}^^^{FINNISH_PIC_ISSUER}") == ["update"]

    # --- A37: the study is the merged patient's again; the survivor's manifest of it
    # cannot be replaced across patients and is Deprecated
    after_update = approved(site, merged)
    assert (
        msa(hl7.mllp_send(adt("A37", pid(SURVIVOR), pid(MERGED), organization=HOLDER)))[0] == "AA"
    )
    assert ris.wait_for(6)[5].study_uid == merged
    after_unlink = approved(site, merged)
    assert site.manifests(merged)[after_update] is AvailabilityStatus.DEPRECATED
    assert replaced_by(site, after_update) == []
    patient_id, _ = documents(site, MERGED)[after_unlink]
    assert patient_id == str(PatientId(MERGED, FINNISH_PIC_ISSUER))
    assert set(documents(site, SURVIVOR)) == {approved(site, kept)}


# ---------------------------------------------------------------- kuva patients


def test_operator_commands(database_url: str, tmp_path: Path) -> None:
    config = tmp_path / "kuva.toml"
    config.write_text(
        f'[archive]\ndata_dir = "{tmp_path / "data"}"\ndatabase_url = "{database_url}"\n\n'
        "[registration]\nenabled = true\n",
        encoding="utf-8",
    )
    engine = make_engine(database_url)
    try:
        migrate(engine)
        kept = store(engine, PatientKey(SURVIVOR, FINNISH_PIC_ISSUER), 1)
        merged = store(engine, PatientKey(MERGED, FINNISH_PIC_ISSUER), 2)

        def kuva(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "kuva", "patients", *args, "--config", str(config)],
                capture_output=True,
                text=True,
                timeout=60,
                env={**os.environ, "COLUMNS": "250"},
            )

        survivor = f"{SURVIVOR}^^^{FINNISH_PIC_ISSUER}"
        done = kuva("merge", MERGED, SURVIVOR, "--issuer", FINNISH_PIC_ISSUER)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.strip() == (
            f"merged {MERGED}^^^{FINNISH_PIC_ISSUER} into {survivor}: "
            "1 study moved, registered again"
        )
        with UnitOfWork(engine, write=False) as uow:
            tasks = uow.tasks.list(status=None, kind=REGISTRATION_TASK, subject=None, limit=10)
        assert [task.subject for task in tasks] == [merged]

        # a circular merge: refused, said so, non-zero
        cycle = kuva("merge", survivor, f"{MERGED}^^^&{FINNISH_PIC_ISSUER}&ISO")
        assert cycle.returncode == 1
        assert "not merged: circular merge refused" in cycle.stdout
        unknown = kuva("merge", "040404-900V", survivor)
        assert unknown.returncode == 1 and "the patient to merge is unknown" in unknown.stdout

        shown = kuva("show", MERGED, "--issuer", FINNISH_PIC_ISSUER)
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert f"{MERGED}^^^{FINNISH_PIC_ISSUER} is merged into {survivor}" in shown.stdout
        assert f"current identity: {survivor}  name Testinen^Maija" in shown.stdout
        assert kept in shown.stdout and merged in shown.stdout
        assert "merge" in shown.stdout and "operator" in shown.stdout

        undone = kuva("unmerge", f"{MERGED}^^^{FINNISH_PIC_ISSUER}")
        assert undone.returncode == 0, undone.stdout + undone.stderr
        assert "is no longer merged into" in undone.stdout and "1 study moved" in undone.stdout
        again = kuva("unmerge", f"{MERGED}^^^{FINNISH_PIC_ISSUER}")
        assert again.returncode == 1 and "not merged into another" in again.stdout
        for result in (done, cycle, unknown, undone, again):
            assert "Testinen" not in result.stdout + result.stderr
    finally:
        engine.dispose()
