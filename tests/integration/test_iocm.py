"""IOCM rejection notes end to end (IHE IOCM; PS3.16 CID 7011), SQLite and PostgreSQL.

dcmtk's storescu sends a study and then a rejection note built with highdicom (with a
replacement instance); the rejected instance disappears from C-FIND (findscu),
QIDO-RS, WADO-RS and the study's new manifest, the note stays retrievable, the IAN
says UNAVAILABLE; sent again it is refused (113037, 113038) or ignored with a warning
(113001, 113039, also over STOW-RS). A note that comes before its instances rejects
them when they arrive; a note from another organisation is refused; a note that
rejects every image withdraws the manifest; ``kuva iocm revoke`` undoes a note.
Retention wins over a 113039 note: a held study or one whose expiry is ahead keeps
the instances (hidden; a B410 warning over C-STORE and STOW-RS) until the hold is
released (``kuva retention hold``/``release``) or the study expires (a death date
over HL7 ADT^A08 with python-hl7's mllp_send, then ``kuva retention run``).
"""

from __future__ import annotations

import datetime as dt
import io
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from kuva.index.uow import UnitOfWork
from kuva.model.xds import AvailabilityStatus
from tests.integration.test_retention import POLICY, wait_until
from tests.support.hl7 import Hl7Site, adt, msa, pid
from tests.support.ian import IanReceiver
from tests.support.iocm import (
    INCORRECT_WORKLIST_ENTRY,
    PATIENT_SAFETY,
    QUALITY,
    RETENTION_EXPIRED,
    rejection_note,
    write_note,
)
from tests.support.peers import dcmtk_available
from tests.support.site import HOLDER, Site
from tests.support.synthetic import DEFAULT_PATIENT_ID, make_ct_series, write_series

pytestmark = [
    pytest.mark.dcmtk,
    pytest.mark.skipif(not dcmtk_available(), reason="dcmtk not installed"),
]


def images_of(site: Site, study_uid: str) -> set[str]:
    """C-FIND at IMAGE level: the study's instances, without kuva's own manifests."""
    found = site.find("IMAGE", f"StudyInstanceUID={study_uid}", "SOPInstanceUID")
    return {str(ds.SOPInstanceUID) for ds in found} - set(site.kuva_instances(study_uid))


def qido_images(site: Site, study_uid: str) -> set[str]:
    response = site.client.get(f"{site.server.http}/dicom-web/studies/{study_uid}/instances")
    if response.status_code == 204:
        return set()
    assert response.status_code == 200, response.text
    found = {item["00080018"]["Value"][0] for item in response.json()}
    return found - set(site.kuva_instances(study_uid))


def wado_status(site: Site, ds: Dataset) -> int:
    url = (
        f"{site.server.http}/dicom-web/studies/{ds.StudyInstanceUID}/series/"
        f"{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    )
    accept = {"accept": "multipart/related; type=application/dicom"}
    return site.client.get(url, headers=accept).status_code


def manifest_lists(site: Site, study_uid: str) -> set[str]:
    """SOP Instance UIDs listed by the study's current (Approved) manifest."""
    (current,) = [
        uid
        for uid, status in site.manifests(study_uid).items()
        if status is AvailabilityStatus.APPROVED
    ]
    manifest = pydicom.dcmread(io.BytesIO(site.blob(current)))
    return {
        str(item.ReferencedSOPInstanceUID)
        for study in manifest.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }


def study(site: Site, n: int = 3) -> tuple[str, list[Dataset]]:
    study_uid = generate_uid()
    paths = site.send(n, study_uid=study_uid)
    return study_uid, [pydicom.dcmread(p) for p in paths]


def replacement_for(images: list[Dataset], tmp: Path) -> tuple[Dataset, Path]:
    (new,) = make_ct_series(
        1,
        rows=16,
        cols=16,
        patient_id=DEFAULT_PATIENT_ID,
        study_uid=str(images[0].StudyInstanceUID),
        series_uid=str(images[0].SeriesInstanceUID),
        accession_number=str(images[0].AccessionNumber),
        seed=77,
    )
    (path,) = write_series([new], tmp / f"replacement-{new.SOPInstanceUID}")
    return new, path


def test_rejection_notes_hide_replace_and_announce(
    site_factory: Callable[..., Site], tmp_path: Path
) -> None:
    """Each of the four codes, on a study of its own (one server for all four)."""
    site = site_factory()
    ris = site.receiver()
    for title, resend in (
        (QUALITY, "Warning"),
        (PATIENT_SAFETY, "Failure"),
        (INCORRECT_WORKLIST_ENTRY, "Failure"),
        (RETENTION_EXPIRED, "Warning"),
    ):
        reject_and_check(site, ris, tmp_path / title.value, title, resend)


def reject_and_check(
    site: Site, ris: IanReceiver, tmp_path: Path, title: Code, resend: str
) -> None:
    study_uid, images = study(site)
    latest_ian(ris, study_uid, {str(ds.SOPInstanceUID): "ONLINE" for ds in images})

    rejected, kept = images[0], images[1:]
    note = rejection_note(title, [rejected])
    replacement, replacement_path = replacement_for(images, tmp_path)
    sent = site.store([write_note(note, tmp_path / "notes"), replacement_path])
    assert sent.returncode == 0, sent.stdout + sent.stderr

    # --- the study registered again: IAN with the rejected one UNAVAILABLE (the note
    # registers it at once, the replacement once it is stable: one IAN or two).
    # 113039 destroys it (services.retention): the last IAN no longer lists it.
    destroyed = title == RETENTION_EXPIRED
    latest_ian(
        ris,
        study_uid,
        {
            **({} if destroyed else {rejected.SOPInstanceUID: "UNAVAILABLE"}),
            **{ds.SOPInstanceUID: "ONLINE" for ds in kept},
            replacement.SOPInstanceUID: "ONLINE",
            note.SOPInstanceUID: "ONLINE",
        },
    )
    if destroyed:  # announced UNAVAILABLE before it went
        assert any(
            ian.instances().get(rejected.SOPInstanceUID) == "UNAVAILABLE"
            for ian in ris.of_study(study_uid)
        )
    current = {ds.SOPInstanceUID for ds in kept} | {replacement.SOPInstanceUID}
    assert manifest_lists(site, study_uid) == current  # no rejected image, no note

    # --- gone from every query and retrieve path; the note stays
    assert images_of(site, study_uid) == current | {note.SOPInstanceUID}
    assert qido_images(site, study_uid) == current | {note.SOPInstanceUID}
    assert wado_status(site, rejected) == 404
    assert wado_status(site, note) == 200
    (study_row,) = site.find(
        "STUDY", f"StudyInstanceUID={study_uid}", "NumberOfStudyRelatedInstances"
    )
    manifests = len(site.kuva_instances(study_uid))
    # 2 kept + the replacement + the note + kuva's manifests
    assert int(study_row.NumberOfStudyRelatedInstances) == 4 + manifests

    # --- sent again: refused or ignored, and it stays rejected
    again = site.store(
        [site.tmp_path / f"{study_uid}-1" / f"{rejected.SOPInstanceUID}.dcm"], debug=True
    )
    output = again.stdout + again.stderr
    code = title.value
    if resend == "Failure":
        assert again.returncode != 0
        assert "Status 0xc410" in output or "0xc410" in output.lower(), output
        assert f"instance rejected ({code}), refused" in output
    else:
        assert again.returncode == 0, output
        assert "ElementsDiscarded" in output or "0xb006" in output.lower(), output
        assert f"instance rejected ({code}), ignored" in output
    assert wado_status(site, rejected) == 404
    if resend == "Warning":  # over STOW-RS too: listed with Warning Reason B006
        stowed = stow(site, (site.tmp_path / f"{study_uid}-1" / f"{rejected.SOPInstanceUID}.dcm"))
        assert stowed.status_code == 202
        (item,) = stowed.json()["00081199"]["Value"]
        assert item["00081196"]["Value"] == [0xB006]


def latest_ian(
    ris: IanReceiver, study_uid: str, expected: dict[str, str], timeout: float = 30
) -> None:
    """Wait until the latest IAN of a study lists ``expected`` (availability by UID)."""
    deadline = time.monotonic() + timeout
    while not ((got := ris.of_study(study_uid)) and got[-1].instances() == expected):
        assert time.monotonic() < deadline, [ian.instances() for ian in got]
        time.sleep(0.1)


def stow(site: Site, path: Path) -> httpx.Response:
    boundary = "kuva-iocm-test"
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + path.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return site.client.post(
        f"{site.server.http}/dicom-web/studies",
        content=body,
        headers={
            "content-type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "accept": "application/dicom+json",
        },
    )


def test_note_before_its_instances_rejects_them_on_arrival(
    site_factory: Callable[..., Site], tmp_path: Path
) -> None:
    site = site_factory()
    ris = site.receiver()
    study_uid = generate_uid()
    images = make_ct_series(3, rows=16, cols=16, patient_id=DEFAULT_PATIENT_ID, study_uid=study_uid)
    note = rejection_note(PATIENT_SAFETY, images[:2])
    first = site.store([write_note(note, tmp_path / "notes")])
    assert first.returncode == 0, first.stdout + first.stderr
    paths = write_series(images, tmp_path / "late")
    late = site.store(paths)
    assert late.returncode == 0, late.stdout + late.stderr
    assert images_of(site, study_uid) == {images[2].SOPInstanceUID, note.SOPInstanceUID}
    latest_ian(
        ris,
        study_uid,
        {
            images[0].SOPInstanceUID: "UNAVAILABLE",
            images[1].SOPInstanceUID: "UNAVAILABLE",
            images[2].SOPInstanceUID: "ONLINE",
            note.SOPInstanceUID: "ONLINE",
        },
    )
    assert manifest_lists(site, study_uid) == {images[2].SOPInstanceUID}


def test_note_from_another_organisation_is_refused(
    site_factory: Callable[..., Site], tmp_path: Path
) -> None:
    site = site_factory()
    study_uid, images = study(site)
    note = rejection_note(PATIENT_SAFETY, images[:1])
    refused = site.store([write_note(note, tmp_path / "notes")], aet="OTHERRIS", debug=True)
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0
    assert "0xc411" in output.lower(), output
    assert "not the study's register holder" in output
    assert images_of(site, study_uid) == {ds.SOPInstanceUID for ds in images}


def test_rejecting_every_image_withdraws_the_manifest_and_revoke_restores(
    site_factory: Callable[..., Site], tmp_path: Path
) -> None:
    site = site_factory()
    ris = site.receiver()
    study_uid, images = study(site, 2)
    ris.wait_for(1)
    (manifest,) = site.manifests(study_uid)
    note = rejection_note(QUALITY, images)
    assert site.store([write_note(note, tmp_path / "notes")]).returncode == 0
    latest_ian(
        ris,
        study_uid,
        {**{ds.SOPInstanceUID: "UNAVAILABLE" for ds in images}, note.SOPInstanceUID: "ONLINE"},
    )
    assert site.manifests(study_uid) == {manifest: AvailabilityStatus.DEPRECATED}
    assert site.find_documents() == {}
    assert images_of(site, study_uid) == {note.SOPInstanceUID}

    revoked = site.server.kuva("iocm", "revoke", str(note.SOPInstanceUID), "--by", "tester")
    assert revoked.returncode == 0, revoked.stdout + revoked.stderr
    assert images_of(site, study_uid) == {ds.SOPInstanceUID for ds in images} | {
        note.SOPInstanceUID
    }
    latest_ian(
        ris,
        study_uid,
        dict.fromkeys([*(ds.SOPInstanceUID for ds in images), note.SOPInstanceUID], "ONLINE"),
    )
    assert len(site.find_documents()) == 1
    again = site.server.kuva("iocm", "revoke", str(note.SOPInstanceUID), check=False)
    assert again.returncode == 1


OLD = dt.datetime(2001, 2, 3, 10, 0)  # expired under POLICY since 2006
HOLD_WARNING = "study under legal hold: rejected, not destroyed"


def old_study(site: Site, tmp: Path) -> tuple[str, list[Dataset]]:
    study_uid = generate_uid()
    datasets = make_ct_series(
        3, rows=16, cols=16, patient_id=DEFAULT_PATIENT_ID, study_uid=study_uid, study_datetime=OLD
    )
    sent = site.store(write_series(datasets, tmp / study_uid))
    assert sent.returncode == 0, sent.stdout + sent.stderr
    return study_uid, datasets


def kept(site: Site, ds: Dataset) -> bool:
    """Whether the archive still holds the instance (its row, hence its blob)."""
    with UnitOfWork(site.engine, write=False) as uow:
        return uow.instances.get(str(ds.SOPInstanceUID)) is not None


def send_note(site: Site, tmp: Path, rejected: list[Dataset]) -> tuple[Dataset, str]:
    """A 113039 note of ``rejected`` by storescu; the note and storescu's output."""
    note = rejection_note(RETENTION_EXPIRED, rejected)
    sent = site.store([write_note(note, tmp / "notes")], debug=True)
    output = sent.stdout + sent.stderr
    assert sent.returncode == 0, output
    return note, output


def retention_of(site: Site, note: Dataset) -> str:
    """What the correction history recorded of the note's destruction."""
    with UnitOfWork(site.engine, write=False) as uow:
        (rejection,) = uow.corrections.of_subject(str(note.SOPInstanceUID))
    return str(rejection.detail["retention"])


def destroyed_by_notes(site: Site) -> set[str]:
    """The notes whose instances' destruction was decided (its outbox tasks)."""
    return {task["subject"] for task in site.tasks("retention-destroy-rejected")}


def test_retention_wins_over_a_113039_note(
    site_factory: Callable[..., Site], database_url: str, tmp_path: Path
) -> None:
    site = site_factory(retention={"policies": [POLICY], "run_every_hours": 0})

    # --- expired and not held: destroyed at once, a plain success
    _, due = old_study(site, tmp_path)
    note, output = send_note(site, tmp_path, due[:1])
    assert "0xb410" not in output.lower(), output
    wait_until(lambda: not kept(site, due[0]))
    assert kept(site, due[1]) and retention_of(site, note) == "destroyed"

    # --- expired but held: rejected and hidden, not destroyed; a warning says so
    held_uid, held = old_study(site, tmp_path)
    hold = site.server.kuva("retention", "hold", "--study", held_uid, "--reason", "court case")
    assert "legal hold" in hold.stdout, hold.stdout + hold.stderr
    held_note, output = send_note(site, tmp_path, held[:1])
    assert "0xb410" in output.lower() and HOLD_WARNING in output, output
    assert retention_of(site, held_note) == "under legal hold"
    # over STOW-RS: the same decision, the warning in the Store Instances Response
    stow_note = rejection_note(RETENTION_EXPIRED, held[1:2])
    stowed = stow(site, write_note(stow_note, tmp_path / "stow"))
    assert stowed.status_code == 202, stowed.text
    (item,) = stowed.json()["00081199"]["Value"]
    assert item["00081196"]["Value"] == [0xB410]
    assert item["00000902"]["Value"] == [HOLD_WARNING]
    notes = {held_note.SOPInstanceUID, stow_note.SOPInstanceUID}
    assert images_of(site, held_uid) == {held[2].SOPInstanceUID} | notes
    assert wado_status(site, held[0]) == 404 and wado_status(site, held[1]) == 404
    assert kept(site, held[0]) and kept(site, held[1])
    assert destroyed_by_notes(site) == {note.SOPInstanceUID}
    listed = site.server.kuva("retention", "list-destroyed", "--plain", "--study", held_uid)
    assert held_uid not in listed.stdout

    # --- the hold released: the destruction it kept back is due now
    released = site.server.kuva("retention", "release", "--study", held_uid)
    assert "1 legal hold(s) released" in released.stdout, released.stdout
    wait_until(lambda: not kept(site, held[0]) and not kept(site, held[1]))
    assert kept(site, held[2])
    listed = site.server.kuva("retention", "list-destroyed", "--plain", "--study", held_uid)
    assert listed.stdout.count(held_uid) == 2, listed.stdout  # one record per note

    # --- a study of today: its expiry is ahead; hidden, destroyed when it expires
    fresh_uid, fresh = study(site)
    fresh_note, output = send_note(site, tmp_path, fresh[:1])
    assert "0xb410" in output.lower(), output
    assert "retention not expired: rejected, destroyed when it expires" in output
    assert retention_of(site, fresh_note) == "kept until the study expires"
    assert wado_status(site, fresh[0]) == 404 and kept(site, fresh[0])
    assert fresh_note.SOPInstanceUID not in destroyed_by_notes(site)
    # the patient died in 2020 (ADT^A08 PID-29): two years on, every study expired
    hl7 = Hl7Site(site.server, database_url, tmp_path)
    death = pid(DEFAULT_PATIENT_ID) + "|" * 21 + "20200601083000"
    # the holder sends it (MSH-4): corrections act for the sending organisation
    assert msa(hl7.mllp_send(adt("A08", death, organization=HOLDER)))[0] == "AA"
    run = site.server.kuva("retention", "run", "--by", "archivist")
    assert fresh_uid in run.stdout and "0 destroyed" not in run.stdout, run.stdout
    assert not any(kept(site, ds) for ds in fresh)
