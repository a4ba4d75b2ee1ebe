"""Patient identifiers the XDS registry accepts, and the Finnish ones it knows.

One rule, used by ingest (to refuse what could never be registered) and by the
imaging document source (to make the manifest's patient id): an XDS patient id is
a CX whose assigning authority is an OID (ITI TF-3 4.2.3.1.7), so the instance's
Issuer of Patient ID must be one; under the Finnish personal identity code's OID
(1.2.246.21) the Patient ID must be a valid code (henkilötunnus: DDMMYY, century
sign, individual number NNN, check character). Each problem is a sentence naming
the attribute, short enough for a DICOM Error Comment (64 characters), without
the identifier itself (it is personal data).

Temporary identifiers: an organisation whose OID is under the Finnish
organisations' arc, 1.2.246.10.<business id>.…, issues temporary patient ids
under 1.2.246.10.<business id>.22.<year>. Their patients are known to the registry
like those of a trusted assigning authority (``KnownAuthorities``).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass

from kuva.model.xds import PatientId, oid_problem

#: Issuer of Patient ID of the Finnish personal identity code (DVV).
FINNISH_PIC_OID = "1.2.246.21"

PIC_CHECK_CHARACTERS = "0123456789ABCDEFHJKLMNPRSTUVWXY"
# DD MM YY, century sign, individual number NNN, check character.
_PIC_RE = re.compile(rf"^(\d\d)(\d\d)(\d\d)([-+A-FU-Y])(\d{{3}})([{PIC_CHECK_CHARACTERS}])$")
# Century signs; Y, X, W, V, U (1900s) and B-F (2000s) in use since 2023 (DVV).
PIC_CENTURIES = {"+": 1800, **dict.fromkeys("-YXWVU", 1900), **dict.fromkeys("ABCDEF", 2000)}

# Finnish organisations' OIDs (1.2.246.10.<business id>...), and the arc of the
# temporary patient ids an organisation issues under its business id.
ORGANIZATION_ARC = "1.2.246.10"
TEMPORARY_ID_ARC = "22"
_TEMPORARY_RE = re.compile(r"^1\.2\.246\.10\.([1-9][0-9]*)\.22\.([1-9][0-9]{3})$")

ISSUER_MISSING = "Issuer of Patient ID (0010,0021) missing"


def pic_check_character(digits: str) -> str:
    """The check character of the nine digits DDMMYY + NNN."""
    return PIC_CHECK_CHARACTERS[int(digits) % 31]


def pic_problem(code: str) -> str | None:
    """Why ``code`` is not a valid Finnish personal identity code, or None."""
    match = _PIC_RE.match(code)
    if match is None:
        return "not in the form DDMMYYCNNNX"
    day, month, year, sign, number, check = match.groups()
    if pic_check_character(day + month + year + number) != check:
        return "wrong check character"
    try:
        dt.date(PIC_CENTURIES[sign] + int(year), int(month), int(day))
    except ValueError:
        return "not a date of birth"
    return None


# An organisation in testing (its acceptance test) archives test identity codes only:
# valid personal identity codes whose individual number is 900-999, its 8th
# character 9 (DVV). Fits a DICOM Error Comment (64 characters).
TESTING_RULE = "organisation in testing: test identity codes only (8th char 9)"


def is_test_identity_code(code: str) -> bool:
    """A valid Finnish personal identity code of the test range (DDMMYYC9NNX)."""
    return pic_problem(code) is None and code[7] == "9"


def registry_patient_id(patient_id: str, issuer: str) -> PatientId:
    """The patient as the XDS registry takes it (CX with an OID assigning authority).
    Raises ValueError naming the attribute at fault."""
    if not issuer:
        raise ValueError(ISSUER_MISSING)
    if oid_problem(issuer) is not None:
        raise ValueError("Issuer of Patient ID (0010,0021) not an OID")
    if not patient_id:
        raise ValueError("Patient ID (0010,0020) missing")
    if issuer == FINNISH_PIC_OID:
        problem = pic_problem(patient_id)
        if problem is not None:
            raise ValueError(f"Patient ID (0010,0020) identity code: {problem}")
    if "^" in patient_id or "&" in patient_id:
        raise ValueError("Patient ID (0010,0020) contains ^ or &: not usable in XDS")
    try:
        return PatientId.parse(str(PatientId(patient_id, issuer)))
    except ValueError as exc:  # its reason may quote the id: not in an Error Comment
        raise ValueError("Patient ID (0010,0020) not usable in XDS (CX.1)") from exc


def registry_patient_problem(patient_id: str, issuer: str) -> str | None:
    """Why the registry would not take this patient, or None."""
    try:
        registry_patient_id(patient_id, issuer)
    except ValueError as exc:
        return str(exc)
    return None


def business_id(organization_oid: str) -> str | None:
    """The business id an organisation's OID carries (1.2.246.10.<business id>...)."""
    parts = organization_oid.split(".")
    if organization_oid.startswith(ORGANIZATION_ARC + ".") and len(parts) > 4 and parts[4]:
        return parts[4]
    return None


def temporary_id_business(authority: str) -> str | None:
    """The business id of a temporary-id assigning authority
    (1.2.246.10.<business id>.22.<year>), or None when it is not one."""
    match = _TEMPORARY_RE.match(authority)
    return match.group(1) if match else None


@dataclass(frozen=True)
class KnownAuthorities:
    """Assigning authorities whose patients the registry knows without a row in the
    patient table: the trusted ones (a national register stands in for a Patient
    Identity Feed), and the temporary-id authorities of the configured
    organisations' business ids."""

    trusted: frozenset[str]
    business_ids: frozenset[str] = frozenset()

    @classmethod
    def of(cls, trusted: Iterable[str], organization_oids: Iterable[str] = ()) -> KnownAuthorities:
        ids = {business_id(oid) for oid in organization_oids}
        return cls(frozenset(trusted), frozenset(i for i in ids if i is not None))

    def __contains__(self, authority: object) -> bool:
        if not isinstance(authority, str):
            return False
        if authority in self.trusted:
            return True
        return temporary_id_business(authority) in self.business_ids
