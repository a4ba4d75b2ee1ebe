"""The rules an instance must meet to be archived (the storage issue's minimum).

SOP Class, SOP Instance, Series and Study Instance UIDs present and well formed,
and a Patient ID present; for an archive that registers what it holds, a patient
the XDS registry takes (model.identity: an OID Issuer of Patient ID, a valid
Finnish identity code under 1.2.246.21), so that nothing is archived that could
never be registered. Each problem is a sentence naming the attribute, for the
DICOM Error Comment (at most 64 characters there) and the log.
"""

from __future__ import annotations

from kuva.model.identity import registry_patient_problem
from kuva.model.instance import InstanceAttributes
from kuva.model.uids import uid_problem


def instance_problems(attrs: InstanceAttributes, *, for_registry: bool = False) -> list[str]:
    problems: list[str] = []
    for label, value in (
        ("SOPClassUID", attrs.sop_class_uid),
        ("SOPInstanceUID", attrs.sop_instance_uid),
        ("SeriesInstanceUID", attrs.series.series_instance_uid),
        ("StudyInstanceUID", attrs.study.study_instance_uid),
    ):
        problem = uid_problem(value)
        if problem is not None:
            problems.append(f"{label} {problem}")
    if not attrs.patient.patient_id.strip():
        problems.append("PatientID missing")
    elif len(attrs.patient.patient_id) > 64:
        problems.append("PatientID longer than 64 characters")
    elif for_registry:
        problem = registry_patient_problem(attrs.patient.patient_id, attrs.patient.issuer)
        if problem is not None:
            problems.append(problem)
    problems.extend(attrs.parse_problems)
    note = attrs.rejection_note
    if note is not None:
        for ref in note.references:
            for label, value in (
                ("StudyInstanceUID", ref.study_instance_uid),
                ("SeriesInstanceUID", ref.series_instance_uid),
                ("ReferencedSOPInstanceUID", ref.sop_instance_uid),
            ):
                problem = uid_problem(value)
                if problem is not None:
                    problems.append(f"rejection note: {label} {problem}")
                    return problems
    return problems
