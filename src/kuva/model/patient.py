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

    @classmethod
    def parse(cls, text: str, issuer: str = "") -> PatientKey:
        """A patient as an operator writes it: ``ID^^^ISSUER`` (CX.1 and CX.4; CX.4 as
        ``OID`` or ``&OID&ISO``, its universal id taken as in HL7), or ``ID`` with
        ``issuer`` given apart. ValueError names what is wrong."""
        parts = text.strip().split("^")
        patient_id = parts[0]
        if not patient_id:
            raise ValueError("the patient ID (CX.1) is empty")
        if len(patient_id) > 64:
            raise ValueError("the patient ID (CX.1) is longer than 64 characters")
        if len(parts) > 1:
            if len(parts) != 4 or parts[1] or parts[2]:
                raise ValueError("not in the form ID^^^ISSUER")
            hd = parts[3].split("&")
            found = hd[1] if len(hd) > 1 and hd[1] else hd[0]
            if issuer and found and found != issuer:
                raise ValueError("two different issuers given")
            issuer = found or issuer
        if len(issuer) > 64:
            raise ValueError("the issuer is longer than 64 characters")
        return cls(patient_id, issuer)


@dataclass(frozen=True)
class Demographics:
    """Patient attributes an update sets; None leaves one as it is."""

    name: str | None = None  # DICOM PN (family^given^middle^prefix^suffix)
    birth_date: str | None = None  # YYYYMMDD
    sex: str | None = None  # M, F, O
    # Patient Death Date (HL7 PID-29, its date), YYYYMMDD; "" clears it. Not an
    # attribute of outgoing objects: a retention anchor only (model.retention).
    death_date: str | None = None


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


class DuplicateMessage(Exception):
    """A message with this sender and control id (MSH-3, MSH-4, MSH-10) was recorded
    meanwhile, by another connection: it is answered, not applied again."""


class PatientCorrectionError(Exception):
    """A correction the archive cannot apply; ``field`` names where the fault is
    (e.g. ``MRG-1``), ``code`` the HL7 table 0357 error code."""

    def __init__(self, message: str, *, field: str, code: str = "204") -> None:
        super().__init__(message)
        self.field = field
        self.code = code


class SenderRefused(PatientCorrectionError):
    """The message comes from no organisation it may act for (MSH-4 Sending
    Facility): refused as a whole, ACK AR (HL7 v2.5 2.9.2)."""
