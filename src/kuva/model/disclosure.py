"""Disclosures reported by customers (register holders), independent of the wire.

A register holder that discloses from its own systems reports it to the archive's
disclosure log (luovutusloki), so that a patient's question "who has seen my
images" has one answer: as a disclosure notice (JSON over HTTP, kuva.web.notices)
or as an ATNA Export audit message (PS3.15 A.5.3.6; kuva.audit.export). Both become
a ``ReportedDisclosure``; services.notices records it, one disclosure-log row per
study and per document it names.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum

from kuva.model.patient import PatientKey

# A reported time may be this far ahead of the archive's clock (clocks of customers'
# systems drift); beyond it, it is refused.
MAX_CLOCK_SKEW = timedelta(minutes=5)

# Column widths of the disclosure log (index.schema ``disclosure``).
OID_LENGTH = 64
PATIENT_ID_LENGTH = 64
UID_LENGTH = 64
DOCUMENT_ID_LENGTH = 128
CHANNEL_LENGTH = 128
PERSON_LENGTH = 128
BASIS_LENGTH = 1024
# Studies plus documents of one notice.
MAX_ITEMS = 1000

INTERFACE_NOTICE = "notice"
INTERFACE_ATNA = "ATNA-Export"


class Source(Enum):
    """Who wrote a disclosure-log record (``disclosure.source``)."""

    ARCHIVE = "archive"  # kuva handed it out (ITI-43, RAD-69)
    NOTICE = "notice"  # a customer's disclosure notice
    ATNA = "atna"  # a customer's ATNA Export message


def check_not_future(when: datetime, now: datetime) -> datetime:
    """``when`` in UTC; ValueError when it is naive or later than ``now`` plus the
    allowed clock skew."""
    if when.tzinfo is None:
        raise ValueError("a time without a UTC offset")
    if when - now > MAX_CLOCK_SKEW:
        raise ValueError(
            f"in the future (more than {int(MAX_CLOCK_SKEW.total_seconds())} s ahead of "
            "the archive's clock)"
        )
    return when.astimezone(UTC)


@dataclass(frozen=True)
class ReportedDisclosure:
    """One disclosure a register holder (``reporter``) made from its own systems:
    the studies and documents of ``patient`` it handed to ``recipient_organization``
    (optionally a person or role there) at ``disclosed_at`` over ``channel`` on
    ``basis``. ``notice_id``: the client's idempotency key, or None."""

    reporter: str
    recipient_organization: str
    patient: PatientKey
    disclosed_at: datetime
    channel: str
    basis: str
    source: Source
    interface: str
    studies: tuple[str, ...] = ()
    documents: tuple[str, ...] = ()
    recipient_person: str | None = None
    notice_id: str | None = None

    def digest(self) -> str:
        """SHA-256 (hex) of what the notice says, its id and reporter left out: a
        retry has the same, another notice under a reused id (almost surely) not."""
        content = [
            self.recipient_organization,
            self.recipient_person,
            self.patient.patient_id,
            self.patient.issuer,
            self.disclosed_at.astimezone(UTC).isoformat(),
            self.channel,
            self.basis,
            self.source.value,
            self.interface,
            sorted(set(self.studies)),
            sorted(set(self.documents)),
        ]
        canonical = json.dumps(content, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class NoticeOutcome:
    """What became of one reported disclosure: ``created`` False when it had been
    recorded already (a retry); ``records`` the disclosure-log rows it has."""

    notice_id: str | None
    records: int
    created: bool
