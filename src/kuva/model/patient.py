"""Patient identity corrections (HL7 v2 ADT, IHE PAM): what a merge, an update, an
identifier change or an unlink asks of the archive, independent of the wire."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PatientKey:
    """A patient as the index knows it: Patient ID and its issuer (Issuer of Patient
    ID in DICOM; the assigning authority of PID-3 in HL7, its universal id when given)."""

    patient_id: str
    issuer: str = ""

    def __str__(self) -> str:
        return f"{self.patient_id}^^^{self.issuer}" if self.issuer else self.patient_id


@dataclass(frozen=True)
class Demographics:
    """Patient attributes an update sets; None leaves one as it is."""

    name: str | None = None  # DICOM PN (family^given^middle^prefix^suffix)
    birth_date: str | None = None  # YYYYMMDD
    sex: str | None = None  # M, F, O


@dataclass(frozen=True)
class MergePatients:
    """ADT^A40: ``source`` is merged into ``target``, which survives."""

    target: PatientKey
    source: PatientKey


@dataclass(frozen=True)
class UpdatePatient:
    """ADT^A08 / A31: new demographics of ``patient``."""

    patient: PatientKey
    demographics: Demographics


@dataclass(frozen=True)
class ChangeIdentifier:
    """ADT^A47: the patient known as ``old`` is from now on known as ``new``."""

    old: PatientKey
    new: PatientKey


@dataclass(frozen=True)
class UnlinkPatients:
    """ADT^A37 (or an operator): undo the merge of ``source`` into ``target``."""

    target: PatientKey
    source: PatientKey


PatientCommand = MergePatients | UpdatePatient | ChangeIdentifier | UnlinkPatients


class PatientCorrectionError(Exception):
    """A correction the archive cannot apply; ``field`` names where the fault is
    (e.g. ``MRG-1``), ``code`` the HL7 table 0357 error code."""

    def __init__(self, message: str, *, field: str, code: str = "204") -> None:
        super().__init__(message)
        self.field = field
        self.code = code
