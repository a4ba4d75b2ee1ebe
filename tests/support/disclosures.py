"""Disclosure notices and ATNA Export messages for tests: a notice as JSON, an Export
rendered by kuva's own audit message renderer, and one written by hand the way
other vendors' audit systems write them (RFC 3881 ``code`` attributes, an XML
declaration, an ITI-43 Destination named by URL with the organisation as
AlternativeUserID, a PurposeOfUse)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from kuva.audit.message import render
from kuva.model import audit as a
from tests.support.synthetic import FINNISH_PIC_ISSUER

REPORTER = "1.2.246.10.0.10"  # the local organisation of the embedded default
RECIPIENT = "1.2.246.10.12345678.10"
OTHER_RECIPIENT = "1.2.246.10.87654321.10"


def cx(patient_id: str, issuer: str = FINNISH_PIC_ISSUER) -> str:
    return f"{patient_id}^^^&{issuer}&ISO"


def notice(
    patient_id: str,
    disclosed_at: str,
    *,
    studies: list[str] | None = None,
    documents: list[str] | None = None,
    notice_id: str | None = None,
    recipient: str = RECIPIENT,
    person: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "recipient": {"organization": recipient},
        "patient": {"id": patient_id, "issuer": FINNISH_PIC_ISSUER},
        "disclosed_at": disclosed_at,
        "channel": "Kanta-palvelut, luovutuspyyntö",
        "basis": "Laki sosiaali- ja terveystiedon toissijaisesta käytöstä 552/2019",
    }
    if person is not None:
        body["recipient"]["person"] = person
    if studies is not None:
        body["studies"] = studies
    if documents is not None:
        body["documents"] = documents
    if notice_id is not None:
        body["notice_id"] = notice_id
    return body | extra


def kuva_export(
    patient_id: str,
    studies: list[str],
    occurred_at: datetime,
    *,
    site: str = REPORTER,
    recipient: str = RECIPIENT,
    outcome: a.Outcome = a.Outcome.SUCCESS,
) -> bytes:
    """An Export message as kuva.audit.message renders one (PS3.15 A.5.3.6)."""
    event = a.export(
        source=a.AuditSource("CUSTOMER-PACS", enterprise_site_id=site),
        exporter=a.ActiveParticipant("CUSTOMER-PACS", requestor=False, roles=(a.SOURCE,)),
        recipient=a.ActiveParticipant(recipient, requestor=True, roles=(a.DESTINATION,)),
        transaction=a.RAD_69,
        patient=(patient_id, FINNISH_PIC_ISSUER),
        handed_out=tuple(a.study_object(uid) for uid in studies),
        occurred_at=occurred_at,
    )
    if outcome is not a.Outcome.SUCCESS:
        from dataclasses import replace

        event = replace(event, outcome=outcome)
    return render(event).encode("utf-8")


def third_party_export(patient_id: str, document_id: str, event_date_time: str) -> bytes:
    """An ITI-43 Export written by another vendor's Document Repository."""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<AuditMessage xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <EventIdentification EventActionCode="R" EventDateTime="{event_date_time}"
      EventOutcomeIndicator="0">
    <EventID code="110106" codeSystemName="DCM" displayName="Export"/>
    <EventTypeCode code="ITI-43" codeSystemName="IHE Transactions"
        displayName="Retrieve Document Set"/>
    <PurposeOfUse csd-code="TREATMENT" codeSystemName="1.2.246.537.5.40170"
        originalText="Hoito (potilaan suostumus)"/>
  </EventIdentification>
  <ActiveParticipant UserID="http://www.w3.org/2005/08/addressing/anonymous"
      AlternativeUserID="urn:oid:{OTHER_RECIPIENT}" UserName="ylilääkäri"
      UserIsRequestor="true" NetworkAccessPointID="10.20.30.40"
      NetworkAccessPointTypeCode="2">
    <RoleIDCode code="110152" codeSystemName="DCM" displayName="Destination"/>
  </ActiveParticipant>
  <ActiveParticipant UserID="https://repository.example.fi/xds/iti43"
      AlternativeUserID="4711" UserIsRequestor="false"
      NetworkAccessPointID="repository.example.fi" NetworkAccessPointTypeCode="1">
    <RoleIDCode code="110153" codeSystemName="DCM" displayName="Source"/>
  </ActiveParticipant>
  <AuditSourceIdentification AuditSourceID="EXAMPLE-REPOSITORY"
      AuditEnterpriseSiteID="{REPORTER}">
    <AuditSourceTypeCode code="4"/>
  </AuditSourceIdentification>
  <ParticipantObjectIdentification
      ParticipantObjectID="{patient_id}^^^&amp;{FINNISH_PIC_ISSUER}&amp;ISO"
      ParticipantObjectTypeCode="1" ParticipantObjectTypeCodeRole="1">
    <ParticipantObjectIDTypeCode code="2" codeSystemName="RFC-3881"
        displayName="Patient Number"/>
  </ParticipantObjectIdentification>
  <ParticipantObjectIdentification ParticipantObjectID="{document_id}"
      ParticipantObjectTypeCode="2" ParticipantObjectTypeCodeRole="3">
    <ParticipantObjectIDTypeCode code="9" codeSystemName="RFC-3881"
        displayName="Report Number"/>
    <ParticipantObjectDetail type="Repository Unique Id" value="MS4yLjI0Ni4xMC45OS4x"/>
  </ParticipantObjectIdentification>
</AuditMessage>
""".encode()
