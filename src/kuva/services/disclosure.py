"""The disclosure log (luovutusloki): the one rule for every interface that hands out
documents or images.

The register holder (rekisterinpitäjä) owns what it archived; handing a document
or an image to anyone else is a disclosure, and every disclosure is recorded in the
transaction that decides it (docs/design.md principle 7). The interfaces that hand
documents out - ITI-43 Retrieve Document Set (kuva.services.repository) and RAD-69
Retrieve Imaging Document Set (kuva.services.retrieve_imaging_document_set) - decide what goes
out, then call ``DisclosureLog.record`` once, before the response is sent: one
record per returned document whose register holder is not the recipient, all in
one transaction. If that transaction fails, nothing is handed out.

Every other read path records here too: C-FIND, QIDO-RS and ITI-18 the studies or
documents their answers name, C-MOVE, C-GET, WADO-RS and WADO-URI the studies whose
images they send (services.access picks the disclosures out and names the basis).

Who the recipient is: the organisation the request acts for (the calling node's, the
client certificate's, or an XDS request's XUA assertion; services.access), else
unknown (""). An unknown recipient is never the register holder.

On what basis: the access rule that allowed the read (its ``basis``); on the
embedded default, which has no rules, ``BASIS_NO_ACCESS_RULES``.

Each disclosure of images or documents is audited too (services.audit), in the same
transaction: one 110106 Export message per patient whose documents or studies went
out, with the transaction as its event type, the recipient as requestor. Answers of
queries are audited by the query's own message (110112 Query), not as an Export.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from sqlalchemy import Engine

from kuva.index.repository import NewDisclosure
from kuva.index.uow import UnitOfWork
from kuva.model import audit as a
from kuva.model.clock import Clock, utcnow
from kuva.model.xua import RequestingUser
from kuva.services.audit import AuditTrail, by_user

log = logging.getLogger(__name__)

UNKNOWN_RECIPIENT = ""
BASIS_NO_ACCESS_RULES = "no access rules configured"
# The width of disclosure.recipient_organization (an OID).
_RECIPIENT_LENGTH = 64
_URN_OID = "urn:oid:"


class Interface(Enum):
    """The interface a disclosure went through (``disclosure.interface``)."""

    C_FIND = "C-FIND"
    QIDO_RS = "QIDO-RS"
    ITI_18 = "ITI-18"
    C_MOVE = "C-MOVE"
    C_GET = "C-GET"
    WADO_RS = "WADO-RS"
    WADO_URI = "WADO-URI"
    ITI_43 = "ITI-43"
    RAD_69 = "RAD-69"
    CONSOLE = "console"  # the operator console's study pages (web.console)


# The EventTypeCode of the Export audit message of each interface that hands out
# images or documents; queries have none (their Query message is the audit).
_TRANSACTIONS = {
    Interface.C_MOVE: a.RAD_16,
    Interface.C_GET: a.RAD_16,
    Interface.WADO_RS: a.RAD_107,
    Interface.WADO_URI: a.RAD_55,
    Interface.ITI_43: a.ITI_43,
    Interface.RAD_69: a.RAD_69,
}
# Interfaces whose disclosures are of studies (one Export object per study).
_STUDY_INTERFACES = frozenset(
    {Interface.C_MOVE, Interface.C_GET, Interface.WADO_RS, Interface.WADO_URI, Interface.RAD_69}
)


@dataclass(frozen=True)
class Handout:
    """A document (or image) about to be returned.

    ``patient``: (Patient ID, its assigning authority / issuer); when None it is
    looked up from the index by ``study_instance_uid`` (an image's study).
    """

    document_unique_id: str
    register_holder: str
    study_instance_uid: str | None = None
    patient: tuple[str, str] | None = None
    # The access rule's basis that allowed it (services.access); "" = none recorded.
    basis: str = ""


def recipient_of(claimed: str | None) -> str:
    """The recipient organisation as recorded, from the id a request claims.

    An XUA organization-id is a URI; ``urn:oid:`` (RFC 3061) is dropped so that it
    compares with register holders' OIDs. None or blank: unknown (""). An id
    longer than the column is recorded cut to it.
    """
    value = (claimed or "").strip()
    if value[: len(_URN_OID)].lower() == _URN_OID:
        value = value[len(_URN_OID) :]
    return value[:_RECIPIENT_LENGTH]


def is_disclosure(recipient: str, register_holder: str) -> bool:
    """Whether handing a document of ``register_holder`` to ``recipient`` is a
    disclosure: the recipient is another organisation, or unknown."""
    return recipient == UNKNOWN_RECIPIENT or recipient != register_holder


class DisclosureLog:
    def __init__(
        self, engine: Engine, *, clock: Clock = utcnow, audit: AuditTrail | None = None
    ) -> None:
        self._engine = engine
        self._clock = clock
        self._audit = audit

    def record(
        self,
        recipient: str,
        handouts: Iterable[Handout],
        interface: Interface,
        *,
        user: RequestingUser | None = None,
    ) -> int:
        """Record the disclosures among ``handouts`` in a transaction of its own,
        committed when this returns; the number of records. ``user``: the person of
        a verified XUA assertion (model.xua), recorded with each disclosure and in
        its audit message. Raises on a database failure: the caller must then hand
        nothing out."""
        due = [h for h in handouts if is_disclosure(recipient, h.register_holder)]
        if not due:
            return 0  # no transaction (and no write lock) for a register holder's own reads
        with UnitOfWork(self._engine) as uow:
            records = self._add(uow, recipient, due, interface, user)
            if self._audit is not None and interface in _TRANSACTIONS:
                exports = self._exports(self._audit, recipient, records, interface)
                self._audit.record(uow, [by_user(event, user) for event in exports])
            uow.commit()
        count = len(records)
        log.info(
            "%s: %d disclosure(s) recorded to %s",
            interface.value,
            count,
            recipient or "an unknown organisation",
        )
        return count

    def _add(
        self,
        uow: UnitOfWork,
        recipient: str,
        due: list[Handout],
        interface: Interface,
        user: RequestingUser | None,
    ) -> list[NewDisclosure]:
        missing = {h.study_instance_uid for h in due if h.patient is None and h.study_instance_uid}
        patients = uow.disclosures.patients_of_studies(missing) if missing else {}
        now = self._clock()
        records: list[NewDisclosure] = []
        for handout in due:
            found = handout.patient or patients.get(handout.study_instance_uid or "")
            if found is None:
                log.warning(
                    "%s: the patient of document %s is unknown; recorded without",
                    interface.value,
                    handout.document_unique_id or handout.study_instance_uid,
                )
                found = ("", "")
            records.append(
                NewDisclosure(
                    disclosed_at=now,
                    recipient_organization=recipient,
                    register_holder=handout.register_holder,
                    patient_id=found[0],
                    patient_authority=found[1],
                    study_instance_uid=handout.study_instance_uid,
                    document_unique_id=handout.document_unique_id,
                    interface=interface.value,
                    basis=handout.basis or BASIS_NO_ACCESS_RULES,
                    recipient_person=(user.name or None) if user else None,
                    recipient_user=user.name_id if user else None,
                    recipient_role=user.role.code if user and user.role else None,
                    purpose_of_use=(
                        user.purpose_of_use.code if user and user.purpose_of_use else None
                    ),
                )
            )
        uow.disclosures.add(records)
        return records

    def _exports(
        self,
        audit: AuditTrail,
        recipient: str,
        records: list[NewDisclosure],
        interface: Interface,
    ) -> list[a.AuditEvent]:
        """One Export message per patient (IHE ITI TF-2b 3.43.5.1, RAD TF-3 4.69.4.1):
        the documents handed out (ITI-43), or the studies (RAD-69)."""
        by_patient: dict[tuple[str, str], dict[str, a.ParticipantObject]] = {}
        for record in records:
            handed = by_patient.setdefault((record.patient_id, record.patient_authority), {})
            if interface in _STUDY_INTERFACES and record.study_instance_uid:
                handed[record.study_instance_uid] = a.study_object(record.study_instance_uid)
            else:
                handed[record.document_unique_id] = a.document_object(record.document_unique_id)
        exporter = audit.archive(roles=(a.SOURCE,))
        receiver = a.ActiveParticipant(
            user_id=recipient or "unknown", requestor=True, roles=(a.DESTINATION,)
        )
        now = self._clock()
        return [
            a.export(
                source=audit.source,
                exporter=exporter,
                recipient=receiver,
                transaction=_TRANSACTIONS[interface],
                patient=patient if patient[0] else None,
                handed_out=tuple(handed.values()),
                occurred_at=now,
            )
            for patient, handed in by_patient.items()
        ]
