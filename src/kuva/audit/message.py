"""The DICOM Audit Message (PS3.15 A.5.1) as XML, from an ``AuditEvent``.

The element order is the schema's: EventIdentification, ActiveParticipant (one or
more), AuditSourceIdentification, ParticipantObjectIdentification (any). Coded
values carry csd-code, codeSystemName and originalText (CodedValueType).
EventDateTime is UTC with ``Z``; ParticipantObjectQuery and the value of a
ParticipantObjectDetail are base64 (xsd:base64Binary). The message has no
namespace, as in the standard's schema.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime

from lxml import etree

from kuva.model.audit import (
    ActiveParticipant,
    AuditEvent,
    AuditSource,
    Code,
    ParticipantObject,
)


def render(event: AuditEvent) -> str:
    """The AuditMessage of ``event``: an XML document without declaration."""
    root = etree.Element("AuditMessage")
    identification = etree.SubElement(
        root,
        "EventIdentification",
        EventActionCode=event.action.value,
        EventDateTime=xml_datetime(event.occurred_at),
        EventOutcomeIndicator=str(int(event.outcome)),
    )
    _coded(identification, "EventID", event.event_id)
    for event_type in event.event_types:
        _coded(identification, "EventTypeCode", event_type)
    for purpose in event.purposes:
        _coded(identification, "PurposeOfUse", purpose)
    for participant in event.participants:
        _participant(root, participant)
    _source(root, event.source)
    for participant_object in event.objects:
        _object(root, participant_object)
    return etree.tostring(root, encoding="unicode")


def xml_datetime(instant: datetime) -> str:
    """xsd:dateTime in UTC with ``Z``, to the millisecond."""
    if instant.tzinfo is None:
        raise ValueError("naive datetime given to an audit message")
    return instant.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _coded(parent: etree._Element, name: str, code: Code) -> None:
    etree.SubElement(
        parent,
        name,
        {"csd-code": code.code, "codeSystemName": code.system, "originalText": code.meaning},
    )


def _participant(root: etree._Element, participant: ActiveParticipant) -> None:
    attributes = {
        "UserID": participant.user_id,
        "UserIsRequestor": "true" if participant.requestor else "false",
    }
    if participant.alternative_user_id:
        attributes["AlternativeUserID"] = participant.alternative_user_id
    if participant.user_name:
        attributes["UserName"] = participant.user_name
    if participant.network_access_point:
        attributes["NetworkAccessPointID"] = participant.network_access_point
        attributes["NetworkAccessPointTypeCode"] = str(int(participant.access_point_type))
    element = etree.SubElement(root, "ActiveParticipant", attributes)
    for role in participant.roles:
        _coded(element, "RoleIDCode", role)


def _source(root: etree._Element, source: AuditSource) -> None:
    attributes = {"AuditSourceID": source.source_id}
    if source.enterprise_site_id:
        attributes["AuditEnterpriseSiteID"] = source.enterprise_site_id
    element = etree.SubElement(root, "AuditSourceIdentification", attributes)
    for source_type in source.types:
        _coded(element, "AuditSourceTypeCode", source_type)


def _object(root: etree._Element, item: ParticipantObject) -> None:
    element = etree.SubElement(
        root,
        "ParticipantObjectIdentification",
        ParticipantObjectID=item.object_id,
        ParticipantObjectTypeCode=str(int(item.type_code)),
        ParticipantObjectTypeCodeRole=str(int(item.role)),
    )
    _coded(element, "ParticipantObjectIDTypeCode", item.id_type)
    # A name or a query, not both (PS3.15 A.5.1).
    if item.query is not None:
        etree.SubElement(element, "ParticipantObjectQuery").text = _base64(item.query)
    elif item.name:
        etree.SubElement(element, "ParticipantObjectName").text = item.name
    for detail_type, value in item.details:
        etree.SubElement(element, "ParticipantObjectDetail", type=detail_type, value=_base64(value))
    if item.description:
        etree.SubElement(element, "ParticipantObjectDescription").text = item.description
    for sop_class in item.sop_classes:
        etree.SubElement(
            element, "SOPClass", UID=sop_class.uid, NumberOfInstances=str(sop_class.count)
        )


def _base64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")
