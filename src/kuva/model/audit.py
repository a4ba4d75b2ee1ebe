"""Audit events as data: the DICOM Audit Message (PS3.15 A.5) without its wire form.

An ``AuditEvent`` says what happened (EventIdentification, A.5.1), who took part
(ActiveParticipant), who audits it (AuditSourceIdentification) and what it was about
(ParticipantObjectIdentification). The codes are those of PS3.15 A.5.3 and PS3.16
(DCM), RFC 3881 and IHE. kuva.audit.message renders an event as the XML of the
AuditMessage schema (PS3.15 A.5.1); nothing here knows that form.

The builders at the end make the messages kuva records (PS3.15 A.5.3.x):

- ``application_activity``: 110100 Application Activity, 110120 / 110121 Start / Stop.
- ``instances_transferred``: 110104 DICOM Instances Transferred (one study, one
  association or request: action C stored, R read by the register holder itself).
- ``query``: 110112 Query (one C-FIND request); ``web_query`` (one QIDO-RS
  request), ``stored_query`` (one ITI-18 request).
- ``imported``: 110107 Import (an ITI-41 or ITI-42 submission, IHE ITI TF-2b
  3.41.5.1.2, 3.42.5.1.2).
- ``patient_record``: 110110 Patient Record, action U (a merge, an update, an
  identifier change, an unlink).
- ``export``: 110106 Export (a disclosure through ITI-43 or RAD-69; IHE ITI TF-2b
  3.43.5.1, RAD TF-3 4.69.4.1).
- ``security_alert``: 110113 Security Alert, of a type ``ALERT_*``.
- ``study_deleted``: 110105 DICOM Study Deleted (for retention's destruction).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import Enum, IntEnum

from kuva.model.uids import is_valid_uid

DCM = "DCM"
RFC_3881 = "RFC-3881"
IHE_TRANSACTIONS = "IHE Transactions"


@dataclass(frozen=True)
class Code:
    """A coded value (PS3.15 A.5.1 CodedValueType): csd-code, codeSystemName,
    originalText (its meaning)."""

    code: str
    system: str
    meaning: str


# EventID (PS3.15 A.5.3; PS3.16 CID 400 Audit Event ID).
APPLICATION_ACTIVITY = Code("110100", DCM, "Application Activity")
INSTANCES_TRANSFERRED = Code("110104", DCM, "DICOM Instances Transferred")
STUDY_DELETED = Code("110105", DCM, "DICOM Study Deleted")
EXPORT = Code("110106", DCM, "Export")
IMPORT = Code("110107", DCM, "Import")
PATIENT_RECORD = Code("110110", DCM, "Patient Record")
QUERY = Code("110112", DCM, "Query")
SECURITY_ALERT = Code("110113", DCM, "Security Alert")

# EventTypeCode (PS3.16 CID 401 Audit Event Type Code).
APPLICATION_START = Code("110120", DCM, "Application Start")
APPLICATION_STOP = Code("110121", DCM, "Application Stop")
NODE_AUTHENTICATION = Code("110126", DCM, "Node Authentication")
USE_OF_RESTRICTED_FUNCTION = Code("110132", DCM, "Use of Restricted Function")
ITI_43 = Code("ITI-43", IHE_TRANSACTIONS, "Retrieve Document Set")
RAD_69 = Code("RAD-69", IHE_TRANSACTIONS, "Retrieve Imaging Document Set")
RAD_16 = Code("RAD-16", IHE_TRANSACTIONS, "Retrieve Images")
RAD_55 = Code("RAD-55", IHE_TRANSACTIONS, "WADO Retrieve")
RAD_107 = Code("RAD-107", IHE_TRANSACTIONS, "WADO-RS Retrieve")
ITI_18 = Code("ITI-18", IHE_TRANSACTIONS, "Registry Stored Query")
ITI_41 = Code("ITI-41", IHE_TRANSACTIONS, "Provide and Register Document Set-b")
ITI_42 = Code("ITI-42", IHE_TRANSACTIONS, "Register Document Set-b")

# RoleIDCode of an active participant (PS3.16 CID 402 Audit Active Participant Role ID).
APPLICATION = Code("110150", DCM, "Application")
APPLICATION_LAUNCHER = Code("110151", DCM, "Application Launcher")
DESTINATION = Code("110152", DCM, "Destination Role ID")
SOURCE = Code("110153", DCM, "Source Role ID")

# ParticipantObjectIDTypeCode (RFC 3881 5.5.4; PS3.16 CID 404).
PATIENT_NUMBER = Code("2", RFC_3881, "Patient Number")
REPORT_NUMBER = Code("9", RFC_3881, "Report Number")
USER_IDENTIFIER = Code("11", RFC_3881, "User Identifier")
STUDY_INSTANCE_UID = Code("110180", DCM, "Study Instance UID")
SOP_CLASS_UID = Code("110181", DCM, "SOP Class UID")
NODE_ID = Code("110182", DCM, "Node ID")
# An organisation by its OID: CID 404 has no code for it and is extensible (PS3.16
# 8.2, a private "99" designator).
ORGANIZATION_OID = Code("ORGANIZATION", "99KUVA", "Organization OID")
# The submission set of an XDS submission (IHE ITI TF-2b 3.41.5.1.2): its
# classification node.
SUBMISSION_SET = Code(
    "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd",
    "IHE XDS Metadata",
    "submission set classificationNode",
)

# The Query/Retrieve information model QIDO-RS queries (PS3.18 10.6 maps it on
# Study Root C-FIND): the SOP class its Query message names.
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"

# AuditSourceTypeCode (PS3.15 A.5.1: 4 = application server process tier).
APPLICATION_SERVER = Code("4", DCM, "Application Server")

# ParticipantObjectDetail types (PS3.15 A.5.3; IHE ITI TF-2).
TRANSFER_SYNTAX = "TransferSyntax"
ALERT_DESCRIPTION = "Alert Description"
MESSAGE_CONTROL_ID = "MSH-10"
QUERY_ENCODING = "QueryEncoding"


class Action(Enum):
    """EventActionCode (PS3.15 A.5.1): create, read, update, delete, execute."""

    CREATE = "C"
    READ = "R"
    UPDATE = "U"
    DELETE = "D"
    EXECUTE = "E"


class Outcome(IntEnum):
    """EventOutcomeIndicator (PS3.15 A.5.1)."""

    SUCCESS = 0
    MINOR_FAILURE = 4  # the action was not completed (e.g. a request refused)
    SERIOUS_FAILURE = 8  # the action was ended prematurely
    MAJOR_FAILURE = 12  # the action was made unavailable

    @classmethod
    def of(cls, ok: bool) -> Outcome:
        """Success, or a minor failure (the request was refused or not done)."""
        return cls.SUCCESS if ok else cls.MINOR_FAILURE


class AccessPointType(IntEnum):
    """NetworkAccessPointTypeCode (PS3.15 A.5.1): 1 machine name, 2 IP address."""

    MACHINE_NAME = 1
    IP_ADDRESS = 2


class ObjectType(IntEnum):
    """ParticipantObjectTypeCode (RFC 3881 5.5.1)."""

    PERSON = 1
    SYSTEM_OBJECT = 2
    ORGANIZATION = 3
    OTHER = 4


class ObjectRole(IntEnum):
    """ParticipantObjectTypeCodeRole (RFC 3881 5.5.2), the roles kuva uses."""

    PATIENT = 1
    REPORT = 3
    RESOURCE = 4
    JOB = 20
    SECURITY_RESOURCE = 13
    QUERY = 24


@dataclass(frozen=True)
class ActiveParticipant:
    """A user or process that took part: an AE title, an application, an organisation."""

    user_id: str
    requestor: bool
    roles: tuple[Code, ...] = ()
    alternative_user_id: str = ""
    user_name: str = ""  # UserName: e.g. a verified XUA user's alias<user@issuer>
    network_access_point: str = ""
    access_point_type: AccessPointType = AccessPointType.IP_ADDRESS


@dataclass(frozen=True)
class AuditSource:
    """AuditSourceIdentification: who records the event (kuva, by its configured id)."""

    source_id: str
    enterprise_site_id: str = ""
    types: tuple[Code, ...] = (APPLICATION_SERVER,)


@dataclass(frozen=True)
class SopClass:
    """The instances of one SOP class in a study object (PS3.15 A.5.1 SOPClass)."""

    uid: str
    count: int


@dataclass(frozen=True)
class ParticipantObject:
    """ParticipantObjectIdentification: a patient, a study, a query, a document..."""

    object_id: str
    id_type: Code
    type_code: ObjectType
    role: ObjectRole
    name: str = ""
    query: bytes | None = None  # ParticipantObjectQuery (base64 in the message)
    details: tuple[tuple[str, bytes], ...] = ()  # ParticipantObjectDetail type, value
    description: str = ""
    sop_classes: tuple[SopClass, ...] = ()


@dataclass(frozen=True)
class AuditEvent:
    """One audit message's content."""

    event_id: Code
    action: Action
    occurred_at: datetime  # UTC
    outcome: Outcome
    participants: tuple[ActiveParticipant, ...]
    source: AuditSource
    event_types: tuple[Code, ...] = ()
    objects: tuple[ParticipantObject, ...] = ()
    # PurposeOfUse of EventIdentification (PS3.15 A.5.1): a verified XUA user's.
    purposes: tuple[Code, ...] = ()


# ---------------------------------------------------------------------- objects


def patient_cx(patient_id: str, issuer: str = "") -> str:
    """The patient as an HL7 CX (IHE ITI TF-2a 3.20.7): ``ID^^^&OID&ISO`` when the
    issuer is an OID, ``ID^^^ISSUER`` for another issuer, ``ID`` alone without one."""
    if not issuer:
        return patient_id
    if is_valid_uid(issuer):
        return f"{patient_id}^^^&{issuer}&ISO"
    return f"{patient_id}^^^{issuer}"


def patient_object(
    patient_id: str, issuer: str = "", *, details: tuple[tuple[str, bytes], ...] = ()
) -> ParticipantObject:
    """The patient (PS3.15 A.5.2.4): type 1 person, role 1 patient, id type 2."""
    return patient_cx_object(patient_cx(patient_id, issuer), details=details)


def patient_cx_object(
    cx: str, *, details: tuple[tuple[str, bytes], ...] = (), description: str = ""
) -> ParticipantObject:
    """The patient as ``patient_object``, by a CX as a request gave it."""
    return ParticipantObject(
        object_id=cx,
        id_type=PATIENT_NUMBER,
        type_code=ObjectType.PERSON,
        role=ObjectRole.PATIENT,
        details=details,
        description=description,
    )


def study_object(
    study_instance_uid: str, sop_classes: tuple[SopClass, ...] = ()
) -> ParticipantObject:
    """A study (PS3.15 A.5.3.x): type 2 system object, role 3 report, id type 110180."""
    return ParticipantObject(
        object_id=study_instance_uid,
        id_type=STUDY_INSTANCE_UID,
        type_code=ObjectType.SYSTEM_OBJECT,
        role=ObjectRole.REPORT,
        sop_classes=sop_classes,
    )


def document_object(document_unique_id: str) -> ParticipantObject:
    """An XDS document handed out (IHE ITI TF-2b 3.43.5.1.2): id type 9 report number."""
    return ParticipantObject(
        object_id=document_unique_id,
        id_type=REPORT_NUMBER,
        type_code=ObjectType.SYSTEM_OBJECT,
        role=ObjectRole.REPORT,
    )


# ---------------------------------------------------------------------- events


def application_activity(
    started: bool,
    *,
    source: AuditSource,
    application: ActiveParticipant,
    launcher: ActiveParticipant | None,
    occurred_at: datetime,
) -> AuditEvent:
    """PS3.15 A.5.3.1: the application started or stopped. ``application`` has role
    110150; ``launcher`` (the operating system user who ran it) 110151."""
    participants = [application]
    if launcher is not None:
        participants.append(launcher)
    return AuditEvent(
        event_id=APPLICATION_ACTIVITY,
        action=Action.EXECUTE,
        occurred_at=occurred_at,
        outcome=Outcome.SUCCESS,
        participants=tuple(participants),
        source=source,
        event_types=(APPLICATION_START if started else APPLICATION_STOP,),
    )


def instances_transferred(
    *,
    source: AuditSource,
    sender: ActiveParticipant,
    receiver: ActiveParticipant,
    study_instance_uid: str,
    sop_classes: tuple[SopClass, ...],
    patient: tuple[str, str] | None,
    outcome: Outcome,
    occurred_at: datetime,
    action: Action = Action.CREATE,
    others: tuple[ActiveParticipant, ...] = (),
    transaction: Code | None = None,
) -> AuditEvent:
    """PS3.15 A.5.3.4: a study's instances moved between two nodes. ``sender`` has
    role 110153 Source, ``receiver`` 110152 Destination; C = received and created,
    R = read and sent. ``others``: further participants, e.g. the node that asked
    for a C-MOVE to a third one (the requestor); ``transaction``: the IHE
    transaction as EventTypeCode (RAD-16, RAD-55, RAD-107)."""
    objects = [study_object(study_instance_uid, sop_classes)]
    if patient is not None:
        objects.append(patient_object(*patient))
    return AuditEvent(
        event_id=INSTANCES_TRANSFERRED,
        action=action,
        occurred_at=occurred_at,
        outcome=outcome,
        participants=(sender, receiver, *others),
        source=source,
        event_types=(transaction,) if transaction is not None else (),
        objects=tuple(objects),
    )


def query(
    *,
    source: AuditSource,
    requestor: ActiveParticipant,
    responder: ActiveParticipant,
    sop_class_uid: str,
    identifier: bytes,
    transfer_syntax: str,
    outcome: Outcome,
    occurred_at: datetime,
) -> AuditEvent:
    """PS3.15 A.5.3.12: a query (C-FIND). The query object is the SOP class (id type
    110181), its ParticipantObjectQuery the request identifier as received, with the
    transfer syntax that encodes it."""
    query_object = _sop_class_query(
        sop_class_uid, identifier, (TRANSFER_SYNTAX, transfer_syntax.encode())
    )
    return _query_event(source, (requestor, responder), (query_object,), outcome, occurred_at)


def _sop_class_query(
    sop_class_uid: str, query: bytes, detail: tuple[str, bytes]
) -> ParticipantObject:
    """The query object of a DICOM query (PS3.15 A.5.3.12): the SOP class, id type
    110181, with the query as received."""
    return ParticipantObject(
        object_id=sop_class_uid,
        id_type=SOP_CLASS_UID,
        type_code=ObjectType.SYSTEM_OBJECT,
        role=ObjectRole.REPORT,
        query=query,
        details=(detail,),
    )


def _query_event(
    source: AuditSource,
    participants: tuple[ActiveParticipant, ...],
    objects: tuple[ParticipantObject, ...],
    outcome: Outcome,
    occurred_at: datetime,
    event_types: tuple[Code, ...] = (),
) -> AuditEvent:
    """110112 Query, action E (PS3.15 A.5.3.12)."""
    return AuditEvent(
        event_id=QUERY,
        action=Action.EXECUTE,
        occurred_at=occurred_at,
        outcome=outcome,
        participants=participants,
        source=source,
        event_types=event_types,
        objects=objects,
    )


def web_query(
    *,
    source: AuditSource,
    requestor: ActiveParticipant,
    responder: ActiveParticipant,
    target: str,
    outcome: Outcome,
    occurred_at: datetime,
) -> AuditEvent:
    """PS3.15 A.5.3.12 for a QIDO-RS request (PS3.18 10.6): the query object names
    the Study Root C-FIND SOP class QIDO-RS maps on; its ParticipantObjectQuery is
    the request target as received (path and query string, UTF-8), with that
    encoding as QueryEncoding (there is no transfer syntax)."""
    query_object = _sop_class_query(
        STUDY_ROOT_FIND, target.encode("utf-8"), (QUERY_ENCODING, b"UTF-8")
    )
    return _query_event(source, (requestor, responder), (query_object,), outcome, occurred_at)


def stored_query(
    *,
    source: AuditSource,
    consumer: ActiveParticipant,
    registry: ActiveParticipant,
    query_id: str,
    request: bytes,
    patient: str | None,
    outcome: Outcome,
    occurred_at: datetime,
) -> AuditEvent:
    """IHE ITI TF-2a 3.18.5.1.2 (Document Registry): 110112 Query, action E, event
    type ITI-18. ``consumer`` (the Document Consumer) has role 110153 Source and is
    the requestor, ``registry`` 110152 Destination. Objects: the patient the query
    names (its CX, when it names one) and the query - its id the stored query's
    UUID, its ParticipantObjectQuery the AdhocQueryRequest as received."""
    objects = [patient_cx_object(patient)] if patient else []
    objects.append(
        ParticipantObject(
            object_id=query_id,
            id_type=ITI_18,
            type_code=ObjectType.SYSTEM_OBJECT,
            role=ObjectRole.QUERY,
            query=request,
            details=((QUERY_ENCODING, b"UTF-8"),),
        )
    )
    return _query_event(
        source, (consumer, registry), tuple(objects), outcome, occurred_at, (ITI_18,)
    )


def imported(
    *,
    source: AuditSource,
    document_source: ActiveParticipant,
    recipient: ActiveParticipant,
    transaction: Code,
    submission_set: str,
    patient: str | None,
    outcome: Outcome,
    occurred_at: datetime,
) -> AuditEvent:
    """IHE ITI TF-2b 3.41.5.1.2 (Document Repository, ITI-41) and 3.42.5.1.2
    (Document Registry, ITI-42): 110107 Import, action C. ``document_source`` (the
    Document Source or Repository that submitted) has role 110153 Source and is the
    requestor, ``recipient`` (kuva's endpoint) 110152 Destination. Objects: the
    patient (its CX as the submission gives it) and the submission set (its
    uniqueId; type 2, role 20 job)."""
    objects = [patient_cx_object(patient)] if patient else []
    if submission_set:
        objects.append(
            ParticipantObject(
                object_id=submission_set,
                id_type=SUBMISSION_SET,
                type_code=ObjectType.SYSTEM_OBJECT,
                role=ObjectRole.JOB,
            )
        )
    return AuditEvent(
        event_id=IMPORT,
        action=Action.CREATE,
        occurred_at=occurred_at,
        outcome=outcome,
        participants=(document_source, recipient),
        source=source,
        event_types=(transaction,),
        objects=tuple(objects),
    )


def patient_record(
    *,
    source: AuditSource,
    requestor: ActiveParticipant,
    archive: ActiveParticipant,
    patients: tuple[tuple[str, str], ...],
    description: str,
    message_control_id: str,
    occurred_at: datetime,
    outcome: Outcome = Outcome.SUCCESS,
) -> AuditEvent:
    """PS3.15 A.5.3.9: a patient record was changed (action U). ``patients`` are
    those the change names, the surviving or changed identity first; each carries the
    HL7 message control id (MSH-10) that asked for it, when there was one."""
    details = ((MESSAGE_CONTROL_ID, message_control_id.encode()),) if message_control_id else ()
    objects = tuple(
        patient_cx_object(patient_cx(*patient), details=details, description=description)
        for patient in patients
    )
    return AuditEvent(
        event_id=PATIENT_RECORD,
        action=Action.UPDATE,
        occurred_at=occurred_at,
        outcome=outcome,
        participants=(requestor, archive),
        source=source,
        objects=objects,
    )


def export(
    *,
    source: AuditSource,
    exporter: ActiveParticipant,
    recipient: ActiveParticipant,
    transaction: Code,
    patient: tuple[str, str] | None,
    handed_out: tuple[ParticipantObject, ...],
    occurred_at: datetime,
) -> AuditEvent:
    """PS3.15 A.5.3.6 as IHE ITI-43 / RAD-69 use it: documents or studies of one
    patient left the archive (action R). ``exporter`` has role 110153 Source,
    ``recipient`` 110152 Destination and is the requestor."""
    objects = list(handed_out)
    if patient is not None:
        objects.insert(0, patient_object(*patient))
    return AuditEvent(
        event_id=EXPORT,
        action=Action.READ,
        occurred_at=occurred_at,
        outcome=Outcome.SUCCESS,
        participants=(recipient, exporter),
        source=source,
        event_types=(transaction,),
        objects=tuple(objects),
    )


# What kuva alerts on (PS3.15 A.5.3.11; EventTypeCode of PS3.16 CID 401):
# a DICOM association refused because its calling AE title is not a configured node,
# and a TLS peer whose certificate does not verify, both fail to authenticate a
# node (110126 Node Authentication); a request refused by the access rules is a
# use of a restricted function (110132).
ALERT_REJECTED_ASSOCIATION = NODE_AUTHENTICATION
ALERT_BAD_CERTIFICATE = NODE_AUTHENTICATION
ALERT_REFUSED_ACCESS = USE_OF_RESTRICTED_FUNCTION
# A stored object found missing or altered (services.integrity). CID 403 has no
# code for it and is extensible: a private code (PS3.16 8.2, "99" designator).
ALERT_INTEGRITY = Code("INTEGRITY", "99KUVA", "Stored Object Integrity Failure")
# An operator let a destroyed study be archived again (``kuva retention
# allow-resend``): the study's protection against being archived again is a
# security attribute of it, changed (CID 401 110135). Informative: outcome 0.
ALERT_RESEND_ALLOWED = Code("110135", DCM, "Object Security Attributes Changed")
# The directory changed (services.directory): a DICOM node added, changed or removed
# is the archive's network configuration (110128); an organisation, whose state
# decides who may do what, its security configuration (110129). Informative.
ALERT_NETWORK_CONFIGURATION = Code("110128", DCM, "Network Configuration")
ALERT_SECURITY_CONFIGURATION = Code("110129", DCM, "Security Configuration")


def security_alert(
    alert: Code,
    *,
    source: AuditSource,
    reporter: ActiveParticipant,
    offender: ActiveParticipant,
    subject: str,
    subject_type: Code,
    description: str,
    occurred_at: datetime,
    outcome: Outcome = Outcome.MINOR_FAILURE,
) -> AuditEvent:
    """PS3.15 A.5.3.11: ``alert`` is one of ``ALERT_*``. An attempt refused: the
    mitigation worked, outcome 4 (minor failure); an informative alert: success.
    ``offender`` is the requestor; ``subject`` the node or resource the alert is
    about, ``description`` its Alert Description detail."""
    return AuditEvent(
        event_id=SECURITY_ALERT,
        action=Action.EXECUTE,
        occurred_at=occurred_at,
        outcome=outcome,
        participants=(offender, reporter),
        source=source,
        event_types=(alert,),
        objects=(
            ParticipantObject(
                object_id=subject,
                id_type=subject_type,
                type_code=ObjectType.SYSTEM_OBJECT,
                role=ObjectRole.SECURITY_RESOURCE,
                details=((ALERT_DESCRIPTION, description.encode()),),
            ),
        ),
    )


USER_AUTHENTICATION = Code("110114", DCM, "User Authentication")
LOGIN = Code("110122", DCM, "Login")


def user_authentication(
    *,
    source: AuditSource,
    user: ActiveParticipant,
    node: ActiveParticipant,
    description: str,
    occurred_at: datetime,
) -> AuditEvent:
    """PS3.15 A.5.3.12: a user's authentication (a Login) that failed, outcome 4; the
    reason as the Alert Description detail of the user object. Shaped as a security
    alert, with the user (a person) as the object."""
    alert = security_alert(
        LOGIN,
        source=source,
        reporter=node,
        offender=user,
        subject=user.user_id,
        subject_type=USER_IDENTIFIER,
        description=description,
        occurred_at=occurred_at,
    )
    (subject,) = alert.objects
    return replace(
        alert,
        event_id=USER_AUTHENTICATION,
        objects=(replace(subject, type_code=ObjectType.PERSON),),
    )


def study_deleted(
    *,
    source: AuditSource,
    deleter: ActiveParticipant,
    study_instance_uid: str,
    sop_classes: tuple[SopClass, ...],
    patient: tuple[str, str] | None,
    occurred_at: datetime,
) -> AuditEvent:
    """PS3.15 A.5.3.5: a study was destroyed (action D)."""
    objects = [study_object(study_instance_uid, sop_classes)]
    if patient is not None:
        objects.append(patient_object(*patient))
    return AuditEvent(
        event_id=STUDY_DELETED,
        action=Action.DELETE,
        occurred_at=occurred_at,
        outcome=Outcome.SUCCESS,
        participants=(deleter,),
        source=source,
        objects=tuple(objects),
    )


# ---------------------------------------------------------------------- the trail

# prev_hash of the first record of the trail.
GENESIS_HASH = "0" * 64


def record_hash(
    prev_hash: str, seq: int, recorded_at: datetime, event_id: str, outcome: int, message: str
) -> str:
    """The hash of a record of the local trail: SHA-256, hex, over the previous
    record's hash (64 ASCII hex digits) followed by the record's canonical bytes, the
    UTF-8 JSON array ``[seq, recorded_at, event_id, outcome, message]`` without
    spaces, ``recorded_at`` as ``YYYY-MM-DDTHH:MM:SS.ffffffZ``. A record altered,
    removed or put in breaks the chain from there on."""
    instant = recorded_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    canonical = json.dumps(
        [seq, instant, event_id, outcome, message], ensure_ascii=False, separators=(",", ":")
    ).encode("utf-8")
    return hashlib.sha256(prev_hash.encode("ascii") + canonical).hexdigest()
