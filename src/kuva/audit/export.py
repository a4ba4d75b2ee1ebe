"""Customers' ATNA Export messages (PS3.15 A.5.3.6, EventID 110106) as reported
disclosures (model.disclosure).

A register holder's own audit system may report a disclosure it made as the DICOM
Audit Message it records anyway (IHE ITI-20), to ``POST /audit/messages`` or to
kuva's syslog listener (kuva.audit.listener). From the message:

- the patient: the ParticipantObjectIdentification of type 1 (person), role 1
  (patient), its ParticipantObjectID an HL7 CX (``ID^^^&OID&ISO``); exactly one;
- what went out: objects with ParticipantObjectIDTypeCode 110180 (Study Instance
  UID) are studies, those with 9 (RFC-3881 Report Number, as ITI-43 uses it)
  documents; at least one;
- the recipient: the ActiveParticipant with RoleIDCode 110152 (Destination): the
  first of its UserID and AlternativeUserID that is an OID (``urn:oid:`` dropped),
  else its UserID as given; its UserName, if any, as the receiving person;
- when: EventDateTime (UTC when it carries no offset);
- the channel: the EventTypeCode(s) (e.g. ``ITI-43 Retrieve Document Set``), else
  ``ATNA Export``; the basis: EventIdentification/PurposeOfUse when given, else
  ``reported by <AuditSourceID>``.

Only successful Exports (EventOutcomeIndicator 0) are disclosures; another message
(another EventID, or a failed Export) is ``Ignored``, not an error: an audit
system forwards its whole stream. Codes are read from ``csd-code`` (PS3.15) or
``code`` (RFC 3881) and elements by local name, so messages of either schema
generation, with or without a namespace, are read.

The parser is lxml without entity resolution, DTD loading or network access; a
document with a DOCTYPE is refused, and the caller bounds the size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from lxml import etree

from kuva.model.disclosure import (
    BASIS_LENGTH,
    CHANNEL_LENGTH,
    DOCUMENT_ID_LENGTH,
    INTERFACE_ATNA,
    MAX_ITEMS,
    OID_LENGTH,
    PERSON_LENGTH,
    ReportedDisclosure,
    Source,
    check_not_future,
)
from kuva.model.patient import PatientKey
from kuva.model.uids import is_valid_uid

EXPORT = "110106"
DESTINATION = "110152"
STUDY_INSTANCE_UID = "110180"
REPORT_NUMBER = "9"
_URN_OID = "urn:oid:"
_BOM = b"\xef\xbb\xbf"


class MalformedMessage(ValueError):
    """Not a well-formed AuditMessage (HTTP 400)."""


class UnusableExport(ValueError):
    """An Export that does not say what the disclosure log needs (HTTP 422)."""


@dataclass(frozen=True)
class Ignored:
    """A well-formed message that is no disclosure; ``reason`` says why."""

    reason: str


@dataclass(frozen=True)
class ExportMessage:
    """A successful Export as read; ``reported_by`` makes the disclosure."""

    source_id: str
    enterprise_site_id: str
    digest: str  # SHA-256 of the message's bytes
    recipient: str
    recipient_person: str | None
    patient: PatientKey
    disclosed_at: datetime
    channel: str
    basis: str
    studies: tuple[str, ...]
    documents: tuple[str, ...]

    def reported_by(self, reporter: str) -> ReportedDisclosure:
        return ReportedDisclosure(
            reporter=reporter,
            recipient_organization=self.recipient,
            recipient_person=self.recipient_person,
            patient=self.patient,
            disclosed_at=self.disclosed_at,
            channel=self.channel,
            basis=self.basis,
            source=Source.ATNA,
            interface=INTERFACE_ATNA,
            studies=self.studies,
            documents=self.documents,
            notice_id=f"sha256:{self.digest}",
        )


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )


def parse(data: bytes, now: datetime) -> ExportMessage | Ignored:
    """The Export in ``data`` (one AuditMessage). Raises MalformedMessage or
    UnusableExport."""
    if data.startswith(_BOM):
        data = data[len(_BOM) :]
    if not data.strip():
        raise MalformedMessage("empty message")
    try:
        tree = etree.fromstring(data, _parser()).getroottree()
    except (etree.XMLSyntaxError, ValueError) as exc:
        raise MalformedMessage(f"not well-formed XML: {exc}") from None
    if tree.docinfo.doctype:  # type: ignore[union-attr]
        raise MalformedMessage("a DOCTYPE is not accepted")
    root = tree.getroot()
    if _local(root) != "AuditMessage":
        raise MalformedMessage(f"the root element is {_local(root)}, not AuditMessage")
    identification = _one(root, "EventIdentification")
    event_id = _code(_one(identification, "EventID"))
    if event_id[0] != EXPORT:
        return Ignored(f"EventID {event_id[0]} is not 110106 Export")
    outcome = identification.get("EventOutcomeIndicator", "").strip()
    if outcome != "0":
        return Ignored(f"an Export with EventOutcomeIndicator {outcome or 'missing'}, not 0")
    disclosed_at = _when(identification.get("EventDateTime", ""), now)
    source = _one(root, "AuditSourceIdentification")
    source_id = source.get("AuditSourceID", "").strip()
    recipient, person = _destination(root)
    patient, studies, documents = _objects(root)
    return ExportMessage(
        source_id=source_id,
        enterprise_site_id=source.get("AuditEnterpriseSiteID", "").strip(),
        digest=hashlib.sha256(data).hexdigest(),
        recipient=recipient,
        recipient_person=person,
        patient=patient,
        disclosed_at=disclosed_at,
        channel=_channel(identification),
        basis=_basis(identification, source_id),
        studies=studies,
        documents=documents,
    )


def strip_urn_oid(value: str) -> str:
    value = value.strip()
    return value[len(_URN_OID) :] if value[: len(_URN_OID)].lower() == _URN_OID else value


def _local(element: etree._Element) -> str:
    tag = element.tag
    # Not etree.QName, which raises ValueError on a prefix libxml2 let through undeclared.
    return tag.rpartition("}")[2] if isinstance(tag, str) else ""


def _children(parent: etree._Element, name: str) -> Iterator[etree._Element]:
    return (child for child in parent if _local(child) == name)


def _one(parent: etree._Element, name: str) -> etree._Element:
    found = next(_children(parent, name), None)
    if found is None:
        raise MalformedMessage(f"{_local(parent)} has no {name}")
    return found


def _code(element: etree._Element) -> tuple[str, str]:
    """(code, meaning) of a coded value: PS3.15 ``csd-code`` or RFC 3881 ``code``."""
    code = (element.get("csd-code") or element.get("code") or "").strip()
    meaning = (element.get("originalText") or element.get("displayName") or "").strip()
    return code, meaning


def _when(text: str, now: datetime) -> datetime:
    try:
        instant = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UnusableExport(f"EventDateTime {text[:40]!r} is not an xsd:dateTime") from None
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=UTC)
    try:
        return check_not_future(instant, now)
    except ValueError as exc:
        raise UnusableExport(f"EventDateTime: {exc}") from None
    except OverflowError:  # e.g. 0001-01-01T00:00:00+14:00: before the year 1 in UTC
        raise UnusableExport("EventDateTime is not a time of the years 1-9999 in UTC") from None


def _destination(root: etree._Element) -> tuple[str, str | None]:
    destinations = [
        participant
        for participant in _children(root, "ActiveParticipant")
        if any(_code(role)[0] == DESTINATION for role in _children(participant, "RoleIDCode"))
    ]
    if not destinations:
        raise UnusableExport("no ActiveParticipant with RoleIDCode 110152 (Destination)")
    if len(destinations) > 1:
        raise UnusableExport("more than one Destination: send one Export per recipient")
    destination = destinations[0]
    ids = [
        strip_urn_oid(destination.get(name, ""))
        for name in ("UserID", "AlternativeUserID")
        if destination.get(name)
    ]
    recipient = next((value for value in ids if is_valid_uid(value)), ids[0] if ids else "")
    if not recipient:
        raise UnusableExport("the Destination has no UserID")
    if len(recipient) > OID_LENGTH:
        raise UnusableExport(f"the Destination's UserID is longer than {OID_LENGTH} characters")
    person = (destination.get("UserName") or "").strip()[:PERSON_LENGTH] or None
    return recipient, person


def _objects(root: etree._Element) -> tuple[PatientKey, tuple[str, ...], tuple[str, ...]]:
    patients: list[PatientKey] = []
    studies: list[str] = []
    documents: list[str] = []
    for item in _children(root, "ParticipantObjectIdentification"):
        object_id = (item.get("ParticipantObjectID") or "").strip()
        kind = (item.get("ParticipantObjectTypeCode") or "").strip()
        role = (item.get("ParticipantObjectTypeCodeRole") or "").strip()
        id_type = next(_children(item, "ParticipantObjectIDTypeCode"), None)
        id_code = _code(id_type)[0] if id_type is not None else ""
        if kind == "1" and role == "1":
            try:
                patient = PatientKey.parse(object_id)
            except ValueError as exc:
                raise UnusableExport(f"the patient {exc}") from None
            if not is_valid_uid(patient.issuer):
                raise UnusableExport("the patient's assigning authority is not an OID")
            if patient not in patients:
                patients.append(patient)
        elif id_code == STUDY_INSTANCE_UID:
            if not is_valid_uid(object_id):
                raise UnusableExport(f"study {object_id[:70]!r} is not a valid UID")
            studies.append(object_id)
        elif id_code == REPORT_NUMBER:
            if not object_id or len(object_id) > DOCUMENT_ID_LENGTH:
                raise UnusableExport(
                    f"a document unique id must be 1-{DOCUMENT_ID_LENGTH} characters"
                )
            documents.append(object_id)
    if len(patients) != 1:
        raise UnusableExport(
            f"{len(patients)} patients (ParticipantObject type 1 role 1); one is needed"
        )
    if not studies and not documents:
        raise UnusableExport("no study (ID type 110180) or document (ID type 9) exported")
    if len(studies) + len(documents) > MAX_ITEMS:
        raise UnusableExport(f"more than {MAX_ITEMS} studies and documents")
    return patients[0], tuple(studies), tuple(documents)


def _channel(identification: etree._Element) -> str:
    types = [" ".join(p for p in _code(t) if p) for t in _children(identification, "EventTypeCode")]
    channel = "; ".join(t for t in types if t) or "ATNA Export"
    return channel[:CHANNEL_LENGTH]


def _basis(identification: etree._Element, source_id: str) -> str:
    purposes = [_code(p) for p in _children(identification, "PurposeOfUse")]
    given = "; ".join(meaning or code for code, meaning in purposes if meaning or code)
    return (given or f"reported by {source_id or 'an unnamed audit source'}")[:BASIS_LENGTH]
