"""What the audit messages of the XDS transactions name (services.audit): the
submission set and patient of a submission (ITI-41, ITI-42; IHE ITI TF-2b
3.41.5.1.2, 3.42.5.1.2) and whether the response was a success."""

from __future__ import annotations

from lxml.etree import _Element as Element

from kuva.model.xds import ResponseStatus
from kuva.xds import ebrim

_FAILURE = ResponseStatus.FAILURE.value


def submission_of(body: Element) -> tuple[str, str | None]:
    """The submission set's uniqueId and patient id (a CX) of a submission's
    metadata; empty and None when it cannot be read."""
    try:
        submission = ebrim.parse_submission(body)
    except Exception:
        return "", None
    submission_set = submission.submission_set
    if submission_set is None:
        return "", None
    return submission_set.unique_id, submission_set.patient_id or None


def succeeded(response: Element) -> bool:
    """Whether a RegistryResponse (or AdhocQueryResponse) says Success or
    PartialSuccess."""
    return bool(response.get("status")) and response.get("status") != _FAILURE
