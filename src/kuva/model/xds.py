"""The XDS.b Document Registry's domain (ITI TF-3 4.1-4.3; ebRIM/ebRS 3.0).

Outcomes shared by every XDS transaction: a status and a list of errors, each
naming its code from the IHE list (ITI TF-3 Table 4.2.4.1-2), the object it is
about and a readable text. Services decide these; kuva.xds.rs writes them as ebRS.

The registry's objects (ITI TF-3 4.1.3): DocumentEntry (an ebRIM ExtrinsicObject),
SubmissionSet and Folder (RegistryPackages told apart by a Classification), and
Association. Each is kept close to its ebRIM form - Slots, Classifications,
ExternalIdentifiers - so that every rule of ITI TF-3 Table 4.3.1-3 can be checked
on it (kuva.services.registry); typed accessors give the metadata attributes
(``entry.class_code``, ``entry.patient_id`` ...). ``ebxml`` carries the object's
ebRIM XML as kuva.xds.ebrim stores it; this module never reads it.

Identifiers: patient ids are HL7 CX values ``id^^^&OID&ISO`` (ITI TF-3 4.2.3.1.7),
uniqueIds OIDs (or ``OID^extension`` for documents, 4.2.3.2.26), entryUUIDs
``urn:uuid:`` UUIDs (4.2.3.1.2). Times are UTC ``YYYY[MM[DD[hh[mm[ss]]]]]``
(DTM, 4.2.3.1.7); the registry never converts them.

Pure: no I/O, no XML.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import ClassVar, Final

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


class ErrorCode:
    """Error codes of ITI TF-3 Table 4.2.4.1-2 (and RAD TF-3 for XDS-I.b) kuva answers with."""

    REGISTRY_METADATA_ERROR: Final = "XDSRegistryMetadataError"
    REGISTRY_ERROR: Final = "XDSRegistryError"
    UNKNOWN_PATIENT_ID: Final = "XDSUnknownPatientId"
    PATIENT_ID_DOES_NOT_MATCH: Final = "XDSPatientIdDoesNotMatch"
    DUPLICATE_UNIQUE_ID_IN_MESSAGE: Final = "XDSRegistryDuplicateUniqueIdInMessage"
    # SubmissionSet and Folder only; "cannot be thrown for DocumentEntry".
    DUPLICATE_UNIQUE_ID_IN_REGISTRY: Final = "XDSDuplicateUniqueIdInRegistry"
    NON_IDENTICAL_HASH: Final = "XDSNonIdenticalHash"
    NON_IDENTICAL_SIZE: Final = "XDSNonIdenticalSize"
    DEPRECATED_DOCUMENT: Final = "XDSRegistryDeprecatedDocumentError"
    # "The recipient cannot resolve an entryUUID reference in the transaction."
    UNRESOLVED_REFERENCE: Final = "UnresolvedReferenceException"
    # Registry Stored Query (ITI-18).
    STORED_QUERY_PARAM_NUMBER: Final = "XDSStoredQueryParamNumber"
    TOO_MANY_RESULTS: Final = "XDSTooManyResults"
    RESULT_NOT_SINGLE_PATIENT: Final = "XDSResultNotSinglePatient"
    # Repository (ITI-41, ITI-43) and Imaging Document Source (RAD-69).
    MISSING_DOCUMENT: Final = "XDSMissingDocument"
    MISSING_DOCUMENT_METADATA: Final = "XDSMissingDocumentMetadata"
    REPOSITORY_METADATA_ERROR: Final = "XDSRepositoryMetadataError"
    REPOSITORY_ERROR: Final = "XDSRepositoryError"
    UNKNOWN_REPOSITORY: Final = "XDSUnknownRepositoryId"
    UNKNOWN_COMMUNITY: Final = "XDSUnknownCommunity"
    DOCUMENT_UNIQUE_ID_ERROR: Final = "XDSDocumentUniqueIdError"
    IMAGING_REQUEST_ERROR: Final = "XDSIRequestError"


# --- vocabulary (ITI TF-3 4.2.5, Table 4.2.5-1 and the attribute tables of 4.2.3) ---

_STATUS_TYPE = "urn:oasis:names:tc:ebxml-regrep:StatusType:"


class AvailabilityStatus(Enum):
    """availabilityStatus (ITI TF-3 4.2.3.2.2): Approved when registered, Deprecated
    when replaced (4.2.2.2)."""

    APPROVED = _STATUS_TYPE + "Approved"
    DEPRECATED = _STATUS_TYPE + "Deprecated"


class ObjectKind(Enum):
    DOCUMENT_ENTRY = "DocumentEntry"
    SUBMISSION_SET = "SubmissionSet"
    FOLDER = "Folder"
    ASSOCIATION = "Association"


class AssociationType(Enum):
    """associationType values (ITI TF-3 Table 4.2.2-1; On-Demand: 4.2.2.2.7)."""

    HAS_MEMBER = "urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember"
    RPLC = "urn:ihe:iti:2007:AssociationType:RPLC"
    APND = "urn:ihe:iti:2007:AssociationType:APND"
    XFRM = "urn:ihe:iti:2007:AssociationType:XFRM"
    XFRM_RPLC = "urn:ihe:iti:2007:AssociationType:XFRM_RPLC"
    SIGNS = "urn:ihe:iti:2007:AssociationType:signs"
    IS_SNAPSHOT_OF = "urn:ihe:iti:2010:AssociationType:IsSnapshotOf"

    @classmethod
    def of(cls, value: str) -> AssociationType | None:
        try:
            return cls(value)
        except ValueError:
            return None


# Document relationships (ITI TF-3 4.2.2.2): between DocumentEntries.
RELATIONSHIP_TYPES: Final = frozenset(AssociationType) - {AssociationType.HAS_MEMBER}
# Those that deprecate their target (ITI TF-3 4.2.2.2.3, 4.2.2.2.5).
REPLACEMENT_TYPES: Final = frozenset({AssociationType.RPLC, AssociationType.XFRM_RPLC})

# SubmissionSetStatus slot of a SubmissionSet-to-DocumentEntry HasMember (4.2.2.1.2).
ORIGINAL = "Original"
REFERENCE = "Reference"


class DocumentAvailability(Enum):
    """documentAvailability (ITI TF-3 4.2.3.2.5); Online when not given."""

    ONLINE = "urn:ihe:iti:2010:DocumentAvailability:Online"
    OFFLINE = "urn:ihe:iti:2010:DocumentAvailability:Offline"


_RIM_TYPE = "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:"
REGISTRY_PACKAGE_TYPE: Final = _RIM_TYPE + "RegistryPackage"
ASSOCIATION_TYPE: Final = _RIM_TYPE + "Association"
CLASSIFICATION_TYPE: Final = _RIM_TYPE + "Classification"
EXTERNAL_IDENTIFIER_TYPE: Final = _RIM_TYPE + "ExternalIdentifier"
# DocumentEntry.objectType (ITI TF-3 4.2.3.2.16).
STABLE_DOCUMENT_ENTRY: Final = "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1"
ON_DEMAND_DOCUMENT_ENTRY: Final = "urn:uuid:34268e47-fdf5-41a6-ba33-82133c465248"


class DocumentEntryScheme:
    """classificationScheme / identificationScheme UUIDs of DocumentEntry (Table 4.2.5-1)."""

    AUTHOR: Final = "urn:uuid:93606bcf-9494-43ec-9b4e-a7748d1a838d"
    CLASS_CODE: Final = "urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a"
    CONFIDENTIALITY_CODE: Final = "urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f"
    EVENT_CODE: Final = "urn:uuid:2c6b8cb7-8b2a-4051-b291-b1ae6a575ef4"
    FORMAT_CODE: Final = "urn:uuid:a09d5840-386c-46f2-b5ad-9c3699a4309d"
    HEALTHCARE_FACILITY_TYPE_CODE: Final = "urn:uuid:f33fb8ac-18af-42cc-ae0e-ed0b0bdb91e1"
    PRACTICE_SETTING_CODE: Final = "urn:uuid:cccf5598-8b07-4b77-a05e-ae952c785ead"
    TYPE_CODE: Final = "urn:uuid:f0306f51-975f-434e-a61c-c59651d33983"
    LIMITED_METADATA: Final = "urn:uuid:ab9b591b-83ab-4d03-8f5d-f93b1fb92e85"
    PATIENT_ID: Final = "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427"
    UNIQUE_ID: Final = "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"


class SubmissionSetScheme:
    """The SubmissionSet's classification node and schemes (Table 4.2.5-1)."""

    NODE: Final = "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"
    AUTHOR: Final = "urn:uuid:a7058bb9-b4e4-4307-ba5b-e3f0ab85e12d"
    CONTENT_TYPE_CODE: Final = "urn:uuid:aa543740-bdda-424e-8c96-df4873be8500"
    LIMITED_METADATA: Final = "urn:uuid:5003a9db-8d8d-49e6-bf0c-990e34ac7707"
    PATIENT_ID: Final = "urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446"
    SOURCE_ID: Final = "urn:uuid:554ac39e-e3fe-47fe-b233-965d2a147832"
    UNIQUE_ID: Final = "urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8"


class FolderScheme:
    """The Folder's classification node and schemes (Table 4.2.5-1)."""

    NODE: Final = "urn:uuid:d9d542f3-6cc4-48b6-8870-ea235fbc94c2"
    CODE_LIST: Final = "urn:uuid:1ba97051-7806-41a8-a48b-8fce7af683c5"
    LIMITED_METADATA: Final = "urn:uuid:2c144a76-29a9-4b7c-af54-b25409fe7d03"
    PATIENT_ID: Final = "urn:uuid:f64ffdf0-4b97-4e06-b79f-a52b38ec2f8a"
    UNIQUE_ID: Final = "urn:uuid:75df8f67-9973-4fbe-a900-df66cefecc5a"


class SlotName:
    """Slot names of the metadata attributes (ITI TF-3 4.2.3)."""

    AUTHOR_PERSON: Final = "authorPerson"
    AUTHOR_INSTITUTION: Final = "authorInstitution"
    AUTHOR_ROLE: Final = "authorRole"
    AUTHOR_SPECIALTY: Final = "authorSpecialty"
    AUTHOR_TELECOMMUNICATION: Final = "authorTelecommunication"
    CODING_SCHEME: Final = "codingScheme"
    CREATION_TIME: Final = "creationTime"
    DOCUMENT_AVAILABILITY: Final = "documentAvailability"
    HASH: Final = "hash"
    INTENDED_RECIPIENT: Final = "intendedRecipient"
    LANGUAGE_CODE: Final = "languageCode"
    LAST_UPDATE_TIME: Final = "lastUpdateTime"
    LEGAL_AUTHENTICATOR: Final = "legalAuthenticator"
    REFERENCE_ID_LIST: Final = "urn:ihe:iti:xds:2013:referenceIdList"
    REPOSITORY_UNIQUE_ID: Final = "repositoryUniqueId"
    SERVICE_START_TIME: Final = "serviceStartTime"
    SERVICE_STOP_TIME: Final = "serviceStopTime"
    SIZE: Final = "size"
    SOURCE_PATIENT_ID: Final = "sourcePatientId"
    SOURCE_PATIENT_INFO: Final = "sourcePatientInfo"
    SUBMISSION_SET_STATUS: Final = "SubmissionSetStatus"
    SUBMISSION_TIME: Final = "submissionTime"
    URI: Final = "URI"


# ebRIM 3.0 LongName (rim.xsd): Slot values, nodeRepresentation, ExternalIdentifier
# values and mimeType hold at most 256 characters; the index columns are that wide.
LONG_NAME_LENGTH: Final = 256
OID_LENGTH: Final = 64  # ITI TF-3 4.2.3.1.7 (OID)
DOCUMENT_UNIQUE_ID_LENGTH: Final = 128  # ITI TF-3 4.2.3.2.26
# CX.1 of a patient id: kuva keeps it as wide as DICOM's Patient ID (LO, 64).
PATIENT_ID_LENGTH: Final = 64


# --- data types ---

_OID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
_UUID_URN_RE = re.compile(
    r"^urn:uuid:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)
_DTM_LENGTHS = (4, 6, 8, 10, 12, 14)


def oid_problem(value: str) -> str | None:
    """Why ``value`` is not an OID (ITI TF-3 4.2.3.1.7: digits and dots, at most 64
    characters, ISO/IEC 9834-1 arcs), or None."""
    if not value:
        return "missing"
    if len(value) > OID_LENGTH:
        return f"longer than {OID_LENGTH} characters"
    if not _OID_RE.match(value):
        return "not an OID (digits and dots, no leading zeros)"
    first, second = (int(arc) for arc in value.split(".")[:2])
    if first > 2 or (first < 2 and second > 39):
        return "not an OID (first arc 0, 1 or 2; second below 40 under 0 and 1)"
    return None


def is_uuid_urn(value: str) -> bool:
    """``urn:uuid:`` + an RFC 4122 UUID: the form of every entryUUID (ITI TF-3 4.2.3.1.2)."""
    return bool(_UUID_URN_RE.match(value))


def new_uuid() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def dtm_problem(value: str) -> str | None:
    """Why ``value`` is not a DTM (ITI TF-3 4.2.3.1.7: UTC, ``YYYY[MM[DD[hh[mm[ss]]]]]``)."""
    if not value.isdigit() or not value.isascii() or len(value) not in _DTM_LENGTHS:
        return "not YYYY[MM[DD[hh[mm[ss]]]]] (UTC)"
    try:
        _parse_dtm(value)
    except ValueError:
        return "not a valid date and time"
    return None


def _parse_dtm(value: str) -> datetime:
    padded = dtm_instant(value)
    return datetime.strptime(padded, "%Y%m%d%H%M%S").replace(tzinfo=UTC)


def dtm_instant(value: str) -> str:
    """A DTM as 14 digits: the first second of the period it names (UTC).

    ``2005`` -> ``20050101000000``, ``20051224`` -> ``20051224000000``. Strings of
    this form order as the instants do; the index keeps DTM attributes so.
    """
    return value + "0101000000"[len(value) - 4 :] if len(value) < 14 else value


def format_dtm(instant: datetime) -> str:
    """``YYYYMMDDhhmmss`` of an aware datetime, in UTC."""
    if instant.tzinfo is None:
        raise ValueError("naive datetime")
    return instant.astimezone(UTC).strftime("%Y%m%d%H%M%S")


@dataclass(frozen=True)
class Code:
    """A coded value (ITI TF-3 4.2.3.1.2): nodeRepresentation, codingScheme, Name."""

    code: str
    coding_scheme: str
    display_name: str = ""

    def __str__(self) -> str:
        """The stored query form ``code^^codingScheme`` (ITI TF-2a 3.18.4.1.2.3.7)."""
        return f"{self.code}^^{self.coding_scheme}"


@dataclass(frozen=True, order=True)
class PatientId:
    """A patient identifier in CX form ``id^^^&OID&ISO`` (ITI TF-3 4.2.3.1.7, CX).

    Only CX.1 (the id) and CX.4 (the assigning authority, an OID with universal id
    type ISO) are allowed.
    """

    id: str
    authority: str

    @classmethod
    def parse(cls, value: str) -> PatientId:
        """Raises ValueError naming what is wrong."""
        parts = value.split("^")
        if len(parts) < 4:
            raise ValueError("not in CX form id^^^&OID&ISO")
        if any(parts[4:]) or parts[1] or parts[2]:
            raise ValueError("CX may hold only the id (CX.1) and assigning authority (CX.4)")
        ident = parts[0]
        if not ident:
            raise ValueError("CX.1 (the id) is empty")
        if len(ident) > PATIENT_ID_LENGTH:
            raise ValueError(f"CX.1 (the id) longer than {PATIENT_ID_LENGTH} characters")
        if "&" in ident:
            raise ValueError("CX.1 (the id) contains '&'")
        hd = parts[3].split("&")
        if len(hd) != 3:
            raise ValueError("CX.4 (assigning authority) is not &OID&ISO")
        namespace, authority, kind = hd
        if namespace:
            raise ValueError("CX.4 (assigning authority) has a namespace id; only &OID&ISO")
        if kind != "ISO":
            raise ValueError("CX.4 universal id type is not ISO")
        problem = oid_problem(authority)
        if problem:
            raise ValueError(f"CX.4 assigning authority {authority!r} is {problem}")
        return cls(ident, authority)

    def __str__(self) -> str:
        return f"{self.id}^^^&{self.authority}&ISO"


def patient_id_problem(value: str) -> str | None:
    try:
        PatientId.parse(value)
    except ValueError as exc:
        return str(exc)
    return None


@dataclass(frozen=True)
class Author:
    """author (ITI TF-3 4.2.3.1.4): a Classification with these slots."""

    person: str = ""
    institutions: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    specialties: tuple[str, ...] = ()
    telecommunications: tuple[str, ...] = ()


# --- ebRIM shaped objects ---


@dataclass(frozen=True)
class Slot:
    name: str
    values: tuple[str, ...] = ()


def _slot(slots: tuple[Slot, ...], name: str) -> tuple[str, ...] | None:
    for slot in slots:
        if slot.name == name:
            return slot.values
    return None


@dataclass(frozen=True)
class Classification:
    """rim:Classification: external (``classification_scheme`` + ``node_representation``,
    a coded value or an author) or internal (``classification_node``)."""

    id: str
    classified_object: str
    classification_scheme: str = ""
    classification_node: str = ""
    node_representation: str = ""
    name: str = ""
    slots: tuple[Slot, ...] = ()
    symbolic_id: str = ""  # the id as submitted

    @property
    def location(self) -> str:
        return self.symbolic_id or self.id

    def slot(self, name: str) -> tuple[str, ...] | None:
        return _slot(self.slots, name)

    @property
    def code(self) -> Code:
        schemes = self.slot(SlotName.CODING_SCHEME) or ("",)
        return Code(self.node_representation, schemes[0], self.name)

    @property
    def author(self) -> Author:
        return Author(
            person=(self.slot(SlotName.AUTHOR_PERSON) or ("",))[0],
            institutions=self.slot(SlotName.AUTHOR_INSTITUTION) or (),
            roles=self.slot(SlotName.AUTHOR_ROLE) or (),
            specialties=self.slot(SlotName.AUTHOR_SPECIALTY) or (),
            telecommunications=self.slot(SlotName.AUTHOR_TELECOMMUNICATION) or (),
        )


@dataclass(frozen=True)
class ExternalIdentifier:
    id: str
    registry_object: str
    identification_scheme: str
    value: str
    name: str = ""
    symbolic_id: str = ""

    @property
    def location(self) -> str:
        return self.symbolic_id or self.id


@dataclass(frozen=True, kw_only=True)
class RegistryObject:
    """What every registry object has (ebRIM 3.0 RegistryObjectType).

    ``id`` is the entryUUID the registry keeps (a symbolic id of the submission
    replaced by a new ``urn:uuid:``); ``symbolic_id`` the id as submitted, which is
    what errors name. ``lid`` and ``status`` are as submitted: the registry sets
    them (logicalID = entryUUID, Approved).
    """

    kind: ClassVar[ObjectKind]

    id: str
    symbolic_id: str = ""
    object_type: str = ""
    lid: str = ""
    status: str = ""
    name: str = ""
    description: str = ""
    slots: tuple[Slot, ...] = ()
    classifications: tuple[Classification, ...] = ()
    external_identifiers: tuple[ExternalIdentifier, ...] = ()
    ebxml: str = ""

    @property
    def location(self) -> str:
        return self.symbolic_id or self.id

    def slot(self, name: str) -> tuple[str, ...] | None:
        """The values of the slot ``name``; None when there is no such slot."""
        return _slot(self.slots, name)

    def slot_value(self, name: str) -> str:
        """The first value of the slot ``name``, "" when absent."""
        values = self.slot(name)
        return values[0] if values else ""

    def classified(self, scheme: str) -> list[Classification]:
        return [c for c in self.classifications if c.classification_scheme == scheme]

    def codes(self, scheme: str) -> list[Code]:
        return [c.code for c in self.classified(scheme)]

    def code(self, scheme: str) -> Code | None:
        codes = self.codes(scheme)
        return codes[0] if codes else None

    def identifiers(self, scheme: str) -> list[ExternalIdentifier]:
        return [e for e in self.external_identifiers if e.identification_scheme == scheme]

    def identifier(self, scheme: str) -> str:
        found = self.identifiers(scheme)
        return found[0].value if found else ""

    def patient_in(self, scheme: str) -> PatientId | None:
        try:
            return PatientId.parse(self.identifier(scheme))
        except ValueError:
            return None


@dataclass(frozen=True, kw_only=True)
class DocumentEntry(RegistryObject):
    """XDSDocumentEntry (ITI TF-3 4.2.3.2), an ebRIM ExtrinsicObject."""

    kind: ClassVar[ObjectKind] = ObjectKind.DOCUMENT_ENTRY
    mime_type: str = ""

    @property
    def unique_id(self) -> str:
        return self.identifier(DocumentEntryScheme.UNIQUE_ID)

    @property
    def patient_id(self) -> str:
        return self.identifier(DocumentEntryScheme.PATIENT_ID)

    @property
    def patient(self) -> PatientId | None:
        return self.patient_in(DocumentEntryScheme.PATIENT_ID)

    @property
    def class_code(self) -> Code | None:
        return self.code(DocumentEntryScheme.CLASS_CODE)

    @property
    def type_code(self) -> Code | None:
        return self.code(DocumentEntryScheme.TYPE_CODE)

    @property
    def format_code(self) -> Code | None:
        return self.code(DocumentEntryScheme.FORMAT_CODE)

    @property
    def healthcare_facility_type_code(self) -> Code | None:
        return self.code(DocumentEntryScheme.HEALTHCARE_FACILITY_TYPE_CODE)

    @property
    def practice_setting_code(self) -> Code | None:
        return self.code(DocumentEntryScheme.PRACTICE_SETTING_CODE)

    @property
    def confidentiality_codes(self) -> list[Code]:
        return self.codes(DocumentEntryScheme.CONFIDENTIALITY_CODE)

    @property
    def event_codes(self) -> list[Code]:
        return self.codes(DocumentEntryScheme.EVENT_CODE)

    @property
    def authors(self) -> list[Author]:
        return [c.author for c in self.classified(DocumentEntryScheme.AUTHOR)]

    @property
    def creation_time(self) -> str:
        return self.slot_value(SlotName.CREATION_TIME)

    @property
    def service_start_time(self) -> str:
        return self.slot_value(SlotName.SERVICE_START_TIME)

    @property
    def service_stop_time(self) -> str:
        return self.slot_value(SlotName.SERVICE_STOP_TIME)

    @property
    def hash(self) -> str:
        return self.slot_value(SlotName.HASH)

    @property
    def size(self) -> int | None:
        value = self.slot_value(SlotName.SIZE)
        return int(value) if value.isdigit() and value.isascii() else None

    @property
    def repository_unique_id(self) -> str:
        return self.slot_value(SlotName.REPOSITORY_UNIQUE_ID)

    @property
    def language_code(self) -> str:
        return self.slot_value(SlotName.LANGUAGE_CODE)

    @property
    def source_patient_id(self) -> str:
        return self.slot_value(SlotName.SOURCE_PATIENT_ID)

    @property
    def reference_ids(self) -> tuple[str, ...]:
        return self.slot(SlotName.REFERENCE_ID_LIST) or ()

    @property
    def document_availability(self) -> str:
        return self.slot_value(SlotName.DOCUMENT_AVAILABILITY) or DocumentAvailability.ONLINE.value

    @property
    def title(self) -> str:
        return self.name


@dataclass(frozen=True, kw_only=True)
class SubmissionSet(RegistryObject):
    """XDSSubmissionSet (ITI TF-3 4.2.3.3), a classified ebRIM RegistryPackage."""

    kind: ClassVar[ObjectKind] = ObjectKind.SUBMISSION_SET

    @property
    def unique_id(self) -> str:
        return self.identifier(SubmissionSetScheme.UNIQUE_ID)

    @property
    def source_id(self) -> str:
        return self.identifier(SubmissionSetScheme.SOURCE_ID)

    @property
    def patient_id(self) -> str:
        return self.identifier(SubmissionSetScheme.PATIENT_ID)

    @property
    def patient(self) -> PatientId | None:
        return self.patient_in(SubmissionSetScheme.PATIENT_ID)

    @property
    def submission_time(self) -> str:
        return self.slot_value(SlotName.SUBMISSION_TIME)

    @property
    def content_type_code(self) -> Code | None:
        return self.code(SubmissionSetScheme.CONTENT_TYPE_CODE)

    @property
    def authors(self) -> list[Author]:
        return [c.author for c in self.classified(SubmissionSetScheme.AUTHOR)]

    @property
    def title(self) -> str:
        return self.name


@dataclass(frozen=True, kw_only=True)
class Folder(RegistryObject):
    """XDSFolder (ITI TF-3 4.2.3.4), a classified ebRIM RegistryPackage."""

    kind: ClassVar[ObjectKind] = ObjectKind.FOLDER

    @property
    def unique_id(self) -> str:
        return self.identifier(FolderScheme.UNIQUE_ID)

    @property
    def patient_id(self) -> str:
        return self.identifier(FolderScheme.PATIENT_ID)

    @property
    def patient(self) -> PatientId | None:
        return self.patient_in(FolderScheme.PATIENT_ID)

    @property
    def code_list(self) -> list[Code]:
        return self.codes(FolderScheme.CODE_LIST)

    @property
    def title(self) -> str:
        return self.name


@dataclass(frozen=True, kw_only=True)
class Association(RegistryObject):
    """rim:Association (ITI TF-3 4.2.2)."""

    kind: ClassVar[ObjectKind] = ObjectKind.ASSOCIATION
    association_type: str = ""
    source_object: str = ""
    target_object: str = ""
    # The references as submitted (symbolic), for errors.
    symbolic_source: str = ""
    symbolic_target: str = ""

    @property
    def type(self) -> AssociationType | None:
        return AssociationType.of(self.association_type)

    @property
    def submission_set_status(self) -> str:
        return self.slot_value(SlotName.SUBMISSION_SET_STATUS)


@dataclass(frozen=True)
class OtherObject:
    """A submitted object that is none of the four: a RegistryPackage classified
    neither as SubmissionSet nor as Folder, or another ebRIM class."""

    id: str
    element: str  # e.g. "RegistryPackage"
    symbolic_id: str = ""

    @property
    def location(self) -> str:
        return self.symbolic_id or self.id


@dataclass(frozen=True)
class Submission:
    """A Register Document Set-b request's metadata (ITI TF-3 4.2.1.5).

    ``unattached``: top-level Classifications and ExternalIdentifiers whose
    ``classifiedObject`` / ``registryObject`` is no object of the submission.
    ``duplicate_ids``: ids given to more than one object of the submission.
    """

    submission_sets: tuple[SubmissionSet, ...] = ()
    document_entries: tuple[DocumentEntry, ...] = ()
    folders: tuple[Folder, ...] = ()
    associations: tuple[Association, ...] = ()
    unattached: tuple[Classification | ExternalIdentifier, ...] = ()
    others: tuple[OtherObject, ...] = ()
    duplicate_ids: tuple[str, ...] = ()

    @property
    def submission_set(self) -> SubmissionSet | None:
        return self.submission_sets[0] if self.submission_sets else None

    @property
    def objects(self) -> tuple[RegistryObject, ...]:
        """Every object the registry stores, in storing order."""
        return (
            *self.submission_sets,
            *self.document_entries,
            *self.folders,
            *self.associations,
        )

    def by_id(self) -> dict[str, RegistryObject]:
        return {obj.id: obj for obj in self.objects}


# --- what the registry holds ---


@dataclass(frozen=True)
class RegisteredObject:
    """A stored object, as the registry's rules need it."""

    entry_uuid: str
    kind: ObjectKind
    status: AvailabilityStatus
    patient: PatientId | None
    unique_id: str | None
    hash: str | None = None  # DocumentEntry
    size: int | None = None  # DocumentEntry


@dataclass(frozen=True)
class StoredObject:
    """A stored object as an ITI-18 LeafClass answer is made of (kuva.xds.ebrim).

    ``ebxml``: its ebRIM XML as registered; ``status`` and, for Folders,
    ``last_update_time`` are the registry's current values, patched in on the way out.
    """

    entry_uuid: str
    kind: ObjectKind
    status: AvailabilityStatus
    ebxml: str
    last_update_time: str | None = None


# --- building objects in code (the Imaging Document Source's manifests) ---


def code_classification(
    scheme: str, code: Code, *, classified_object: str, id: str | None = None
) -> Classification:
    return Classification(
        id=id or new_uuid(),
        classified_object=classified_object,
        classification_scheme=scheme,
        node_representation=code.code,
        name=code.display_name,
        slots=(Slot(SlotName.CODING_SCHEME, (code.coding_scheme,)),),
    )


def author_classification(
    scheme: str, author: Author, *, classified_object: str, id: str | None = None
) -> Classification:
    slots = [
        Slot(name, values)
        for name, values in (
            (SlotName.AUTHOR_PERSON, (author.person,) if author.person else ()),
            (SlotName.AUTHOR_INSTITUTION, author.institutions),
            (SlotName.AUTHOR_ROLE, author.roles),
            (SlotName.AUTHOR_SPECIALTY, author.specialties),
            (SlotName.AUTHOR_TELECOMMUNICATION, author.telecommunications),
        )
        if values
    ]
    return Classification(
        id=id or new_uuid(),
        classified_object=classified_object,
        classification_scheme=scheme,
        slots=tuple(slots),
    )


def external_identifier(
    scheme: str, value: str, name: str, *, registry_object: str, id: str | None = None
) -> ExternalIdentifier:
    return ExternalIdentifier(
        id=id or new_uuid(),
        registry_object=registry_object,
        identification_scheme=scheme,
        value=value,
        name=name,
    )


def _slots(pairs: Iterable[tuple[str, Iterable[str]]]) -> tuple[Slot, ...]:
    """Slots of the non-empty values; a slot without any is left out."""
    slots = [(name, tuple(v for v in values if v)) for name, values in pairs]
    return tuple(Slot(name, values) for name, values in slots if values)


@dataclass(frozen=True, kw_only=True)
class NewDocumentEntry:
    """The attributes of a DocumentEntry built in code (ITI TF-3 Table 4.3.1-3, XDS)."""

    entry_uuid: str = field(default_factory=new_uuid)
    patient: PatientId
    unique_id: str
    mime_type: str
    class_code: Code
    type_code: Code
    format_code: Code
    healthcare_facility_type_code: Code
    practice_setting_code: Code
    confidentiality_codes: tuple[Code, ...]
    creation_time: str
    language_code: str
    source_patient_id: str
    hash: str
    size: int
    repository_unique_id: str
    event_codes: tuple[Code, ...] = ()
    reference_ids: tuple[str, ...] = ()
    service_start_time: str = ""
    service_stop_time: str = ""
    source_patient_info: tuple[str, ...] = ()
    authors: tuple[Author, ...] = ()
    title: str = ""
    comments: str = ""

    def build(self) -> DocumentEntry:
        me = self.entry_uuid
        s = DocumentEntryScheme
        codes = [
            (s.CLASS_CODE, self.class_code),
            (s.TYPE_CODE, self.type_code),
            (s.FORMAT_CODE, self.format_code),
            (s.HEALTHCARE_FACILITY_TYPE_CODE, self.healthcare_facility_type_code),
            (s.PRACTICE_SETTING_CODE, self.practice_setting_code),
            *((s.CONFIDENTIALITY_CODE, c) for c in self.confidentiality_codes),
            *((s.EVENT_CODE, c) for c in self.event_codes),
        ]
        return DocumentEntry(
            id=me,
            lid=me,
            object_type=STABLE_DOCUMENT_ENTRY,
            mime_type=self.mime_type,
            name=self.title,
            description=self.comments,
            slots=_slots(
                [
                    (SlotName.CREATION_TIME, [self.creation_time]),
                    (SlotName.HASH, [self.hash]),
                    (SlotName.LANGUAGE_CODE, [self.language_code]),
                    (SlotName.REPOSITORY_UNIQUE_ID, [self.repository_unique_id]),
                    (SlotName.SERVICE_START_TIME, [self.service_start_time]),
                    (SlotName.SERVICE_STOP_TIME, [self.service_stop_time]),
                    (SlotName.SIZE, [str(self.size)]),
                    (SlotName.SOURCE_PATIENT_ID, [self.source_patient_id]),
                    (SlotName.SOURCE_PATIENT_INFO, self.source_patient_info),
                    (SlotName.REFERENCE_ID_LIST, self.reference_ids),
                ]
            ),
            classifications=(
                *(author_classification(s.AUTHOR, a, classified_object=me) for a in self.authors),
                *(code_classification(scheme, c, classified_object=me) for scheme, c in codes),
            ),
            external_identifiers=(
                external_identifier(
                    s.PATIENT_ID,
                    str(self.patient),
                    "XDSDocumentEntry.patientId",
                    registry_object=me,
                ),
                external_identifier(
                    s.UNIQUE_ID, self.unique_id, "XDSDocumentEntry.uniqueId", registry_object=me
                ),
            ),
        )


@dataclass(frozen=True, kw_only=True)
class NewSubmissionSet:
    """The attributes of a SubmissionSet built in code (ITI TF-3 Table 4.3.1-3, XDS)."""

    entry_uuid: str = field(default_factory=new_uuid)
    patient: PatientId
    unique_id: str
    source_id: str
    submission_time: str
    content_type_code: Code
    authors: tuple[Author, ...] = ()
    title: str = ""
    comments: str = ""

    def build(self) -> SubmissionSet:
        me = self.entry_uuid
        s = SubmissionSetScheme
        return SubmissionSet(
            id=me,
            lid=me,
            object_type=REGISTRY_PACKAGE_TYPE,
            name=self.title,
            description=self.comments,
            slots=(Slot(SlotName.SUBMISSION_TIME, (self.submission_time,)),),
            classifications=(
                Classification(id=new_uuid(), classified_object=me, classification_node=s.NODE),
                *(author_classification(s.AUTHOR, a, classified_object=me) for a in self.authors),
                code_classification(
                    s.CONTENT_TYPE_CODE, self.content_type_code, classified_object=me
                ),
            ),
            external_identifiers=(
                external_identifier(
                    s.UNIQUE_ID, self.unique_id, "XDSSubmissionSet.uniqueId", registry_object=me
                ),
                external_identifier(
                    s.SOURCE_ID, self.source_id, "XDSSubmissionSet.sourceId", registry_object=me
                ),
                external_identifier(
                    s.PATIENT_ID,
                    str(self.patient),
                    "XDSSubmissionSet.patientId",
                    registry_object=me,
                ),
            ),
        )


def new_association(
    association_type: AssociationType,
    source: str,
    target: str,
    *,
    entry_uuid: str | None = None,
    submission_set_status: str = "",
) -> Association:
    """An Association built in code; ``submission_set_status`` for SubmissionSet
    HasMember DocumentEntry (ITI TF-3 4.2.2.1.2: Original or Reference)."""
    me = entry_uuid or new_uuid()
    slots = (Slot(SlotName.SUBMISSION_SET_STATUS, (submission_set_status,)),)
    return Association(
        id=me,
        lid=me,
        object_type=ASSOCIATION_TYPE,
        association_type=association_type.value,
        source_object=source,
        target_object=target,
        slots=slots if submission_set_status else (),
    )
