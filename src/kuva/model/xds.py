"""XDS registry outcomes shared by every XDS transaction (ITI TF-3 4.2.4, ebRS 3.0).

A transaction answers with a status and a list of errors; each error names its
code from the IHE list (ITI TF-3 Table 4.2.4.1-2), the object it is about and a
readable text. Services decide these; kuva.xds.rs writes them as ebRS XML.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

_STATUS = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:"
_IHE_STATUS = "urn:ihe:iti:2007:ResponseStatusType:"


class ResponseStatus(Enum):
    """ebRS RegistryResponse/@status (ITI TF-3 4.2.4.2)."""

    SUCCESS = _STATUS + "Success"
    FAILURE = _STATUS + "Failure"
    PARTIAL_SUCCESS = _IHE_STATUS + "PartialSuccess"


class Severity(Enum):
    ERROR = "urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:Error"
    WARNING = "urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:Warning"


@dataclass(frozen=True)
class RegistryError:
    """One rs:RegistryError: ``code`` e.g. XDSRegistryMetadataError (ITI TF-3 4.2.4.1)."""

    code: str
    context: str  # codeContext: what is wrong, readable
    location: str = ""  # the object (entryUUID, uniqueId) or parameter concerned
    severity: Severity = Severity.ERROR


def status_of(errors: list[RegistryError], *, partial: bool = False) -> ResponseStatus:
    """Failure when any error, PartialSuccess when the caller says part succeeded."""
    if not any(error.severity is Severity.ERROR for error in errors):
        return ResponseStatus.SUCCESS
    return ResponseStatus.PARTIAL_SUCCESS if partial else ResponseStatus.FAILURE
