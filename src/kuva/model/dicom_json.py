"""The few DICOM JSON (PS3.18 F.2) edits kuva makes to what the index holds."""

from __future__ import annotations

from typing import Any

_PATIENT_TAGS = {
    "PatientName": ("00100010", "PN"),
    "PatientID": ("00100020", "LO"),
    "IssuerOfPatientID": ("00100021", "LO"),
    "PatientBirthDate": ("00100030", "DA"),
    "PatientSex": ("00100040", "CS"),
}


def with_current_patient(dataset: dict[str, Any], values: dict[str, Any]) -> None:
    """Put the index's current patient attributes (``values`` by keyword) into an
    instance's DICOM JSON, in place: after a merge or an update (HL7 ADT) the JSON
    as received would name the patient as it was."""
    for keyword, (tag, vr) in _PATIENT_TAGS.items():
        if keyword not in values:
            continue
        value = values[keyword] or ""
        if not value:
            dataset[tag] = {"vr": vr}
        elif vr == "PN":
            dataset[tag] = {"vr": vr, "Value": [{"Alphabetic": value}]}
        else:
            dataset[tag] = {"vr": vr, "Value": [value]}
