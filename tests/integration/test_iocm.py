"""IOCM rejection notes end to end (IHE IOCM; PS3.16 CID 7011), SQLite and PostgreSQL.

dcmtk's storescu sends a study and then a rejection note built with highdicom (with a
replacement instance); the rejected instance disappears from C-FIND (findscu),
QIDO-RS, WADO-RS and the study's new manifest, the note stays retrievable, the IAN
says UNAVAILABLE; sent again it is refused (113037, 113038) or ignored with a warning
(113001, 113039, also over STOW-RS). A note that comes before its instances rejects
them when they arrive; a note from another organisation is refused; a note that
rejects every image withdraws the manifest; ``kuva iocm revoke`` undoes a note.
"""

from __future__ import annotations

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

from kuva.model.xds import AvailabilityStatus
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
from tests.support.site import Site
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
