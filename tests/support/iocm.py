"""IOCM rejection notes as a modality or PACS makes them: Key Object Selection
Documents built with highdicom (independent of kuva's own KOS code), titled with a
CID 7011 code and listing the instances they reject."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from highdicom.ko import KeyObjectSelection, KeyObjectSelectionDocument
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

QUALITY: Code = codes.DCM.RejectedForQualityReasons  # 113001
PATIENT_SAFETY: Code = codes.DCM.RejectedForPatientSafetyReasons  # 113037
INCORRECT_WORKLIST_ENTRY: Code = codes.DCM.IncorrectModalityWorklistEntry  # 113038
RETENTION_EXPIRED: Code = codes.DCM.DataRetentionPolicyExpired  # 113039


def rejection_note(title: Code, rejected: Sequence[Dataset]) -> Dataset:
    """A rejection note of ``rejected`` (instances of one study) in a new series."""
    content = KeyObjectSelection(document_title=title, referenced_objects=list(rejected))
    note = KeyObjectSelectionDocument(
        evidence=list(rejected),
        content=content,
        series_instance_uid=generate_uid(),
        series_number=900,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="kuva tests",
    )
    # highdicom copies the Patient Module without the issuer; a change requester
    # names the patient the way the images do.
    issuer = rejected[0].get("IssuerOfPatientID")
    if issuer:
        note.IssuerOfPatientID = issuer
    return note


def write_note(note: Dataset, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{note.SOPInstanceUID}.dcm"
    note.save_as(path, enforce_file_format=True)
    return path
