"""IOCM rejection notes (IHE RAD TF-1 Imaging Object Change Management; PS3.16 CID
7011 "Rejected for Quality Reasons" and its siblings).

A rejection note is a Key Object Selection Document whose Document Title (Concept
Name Code Sequence) is one of the codes below; the instances it lists in its
Current Requested Procedure Evidence Sequence are rejected. Stored bytes never
change: a rejection lives in the index, hides the instances from every outgoing
path and can be revoked.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from enum import Enum

# Document Titles of CID 7011, coding scheme DCM.
QUALITY = "113001"  # Rejected for Quality Reasons
PATIENT_SAFETY = "113037"  # Rejected for Patient Safety Reasons
INCORRECT_WORKLIST_ENTRY = "113038"  # Incorrect Modality Worklist Entry
RETENTION_EXPIRED = "113039"  # Data Retention Policy Expired

REJECTION_TITLES = {
    QUALITY: "Rejected for Quality Reasons",
    PATIENT_SAFETY: "Rejected for Patient Safety Reasons",
    INCORRECT_WORKLIST_ENTRY: "Incorrect Modality Worklist Entry",
    RETENTION_EXPIRED: "Data Retention Policy Expired",
}
CODING_SCHEME = "DCM"


def refuses_resend(code: str) -> bool:
    """True when an instance rejected with ``code`` is refused if sent again (the
    patient-safety and worklist codes); otherwise a resend is ignored, with a warning."""
    return code in (PATIENT_SAFETY, INCORRECT_WORKLIST_ENTRY)


def eligible_for_destruction(code: str) -> bool:
    """Instances rejected because their retention period ended may be destroyed."""
    return code == RETENTION_EXPIRED


class Standing(Enum):
    """What retention says of destroying instances a 113039 note rejected."""

    DUE = "destroyed"  # no hold, and the archive's own policy has expired or none covers it
    AT_EXPIRY = "kept until the study expires"  # hidden; destroyed with the study
    HELD = "under legal hold"  # hidden, never destroyed while held


@dataclass(frozen=True)
class StudyStanding:
    held: bool  # a legal hold on the study or its patient
    expires_on: date | None  # None: no retention policy covers it


def standing_of(studies: Iterable[StudyStanding], today: date) -> Standing:
    """Retention wins over a 113039 note: its instances are destroyed at once only
    when no study they belong to is held and none has an expiry still ahead."""
    found = list(studies)
    if any(s.held for s in found):
        return Standing.HELD
    if any(s.expires_on is not None and s.expires_on > today for s in found):
        return Standing.AT_EXPIRY
    return Standing.DUE


@dataclass(frozen=True)
class RejectedReference:
    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class RejectionNote:
    """What a rejection note says: its code and the instances it rejects."""

    code: str
    references: tuple[RejectedReference, ...]

    @property
    def title(self) -> str:
        return REJECTION_TITLES[self.code]
