"""Registry Stored Query [ITI-18], the Document Registry's side (ITI TF-2a 3.18).

``StoredQueryService.query`` answers one ``AdhocQuery`` (kuva.xds.iti18 reads it
from the wire): the stored query named by its id, with its parameters, returns the
matching registry objects - as stored ebRIM objects for ``LeafClass``, as
entryUUIDs for ``ObjectRef`` (3.18.4.1.2.3.5) - or Failure with the errors found.
Every stored query of ITI TF-2a 3.18.4.1.2.3.7 is served:

=============================  ================================================
FindDocuments                  3.18.4.1.2.3.7.1  urn:uuid:14d4debf-...
FindSubmissionSets             3.18.4.1.2.3.7.2  urn:uuid:f26abbcb-...
FindFolders                    3.18.4.1.2.3.7.3  urn:uuid:958f3006-...
GetAll                         3.18.4.1.2.3.7.4  urn:uuid:10b545ea-...
GetDocuments                   3.18.4.1.2.3.7.5  urn:uuid:5c4f972b-...
GetFolders                     3.18.4.1.2.3.7.6  urn:uuid:5737b14c-...
GetAssociations                3.18.4.1.2.3.7.7  urn:uuid:a7ae438b-...
GetDocumentsAndAssociations    3.18.4.1.2.3.7.8  urn:uuid:bab9529a-...
GetSubmissionSets              3.18.4.1.2.3.7.9  urn:uuid:51224314-...
GetSubmissionSetAndContents    3.18.4.1.2.3.7.10 urn:uuid:e8e3cb2c-...
GetFolderAndContents           3.18.4.1.2.3.7.11 urn:uuid:b909a503-...
GetFoldersForDocument          3.18.4.1.2.3.7.12 urn:uuid:10cae35a-...
GetRelatedDocuments            3.18.4.1.2.3.7.13 urn:uuid:d90e5407-...
FindDocumentsByReferenceId     3.18.4.1.2.3.7.14 urn:uuid:12941a89-...
=============================  ================================================

Parameters (ITI TF-2a 3.18.4.1.2.3.5-6), each a ``rim:Slot`` named as in the
tables of 3.18.4.1.2.3.7:

* A value is a quoted string ``'...'`` (a quote inside written twice, ``''``), or,
  for times and ``$MetadataLevel``, a number (a quoted number is read too). A
  parameter that takes several values lists them in parentheses,
  ``('a', 'b')``; several ``rim:Value`` elements of one Slot add to the list; all
  values of a parameter are OR-ed. A multi-valued parameter sent as one bare
  value is read as a list of one.
* AND/OR (3.18.4.1.2.3.6): ``$XDSDocumentEntryEventCodeList``,
  ``$XDSDocumentEntryConfidentialityCode`` and ``$XDSFolderCodeList`` may be sent
  in several Slots of the same name: each Slot must match (AND), any value of a
  Slot (OR). Any other parameter given in more than one Slot is
  XDSStoredQueryParamNumber.
* Coded values are ``code^^codingScheme``; the scheme is required and a code
  matches on both. Statuses are full URNs
  (``urn:oasis:names:tc:ebxml-regrep:StatusType:Approved``). Patient ids are CX
  ``id^^^&OID&ISO`` (ITI TF-3 4.2.3.1.7). Entry UUIDs are ``urn:uuid:`` UUIDs.
* Times are DTM, UTC, ``YYYY[MM[DD[hh[mm[ss]]]]]``; a value names the first second
  of the period it gives (``2005`` = 2005-01-01 00:00:00), the registry keeps its
  time attributes the same way (``model.xds.dtm_instant``), and ranges are ``From
  <= attribute < To`` (``From`` inclusive, ``To`` exclusive). An object without the
  attribute does not match a range on it.
* ``$XDSDocumentEntryAuthorPerson`` / ``$XDSSubmissionSetAuthorPerson``: SQL LIKE
  patterns, ``%`` any string and ``_`` one character, case-sensitive; several values
  (DocumentEntry) are OR-ed.
* ``$XDSDocumentEntryType`` (On-Demand Documents, 3.18.4.1.2.3.6.2): the stable
  and on-demand objectType UUIDs; without it only stable entries are returned.
* ``$XDSDocumentEntryReferenceIdList``: exact values of referenceIdList (CXi), any.
* ``$homeCommunityId`` is accepted in every query and not used (kuva is one
  registry, not a gateway; ``AdhocQuery/@home`` likewise). ``$MetadataLevel`` may
  be 1; 2 (XDS Metadata Update) is refused with XDSRegistryError.

Errors (ITI TF-2a 3.18.4.1.3, ITI TF-3 Table 4.2.4.1-2), each naming the
parameter in ``location``; every problem of a request is reported, then Failure:

* XDSRegistryError: an unknown query id (the NIST XDS Toolkit registry answers the
  same); a returnType other than LeafClass / ObjectRef; a parameter the query does
  not define (a misspelt filter must not widen an answer); a value not in the
  form above (e.g. an unquoted patient id, a code without its scheme, a malformed
  time, status or UUID, an empty list); paging (``startIndex``/``maxResults``,
  ebRS 3.0), which stored queries do not use.
* XDSStoredQueryParamNumber: a required parameter missing; several values for a
  parameter that takes one; a parameter in several Slots where AND/OR is not
  allowed; both or neither of two mutually exclusive parameters (e.g. GetDocuments
  ``$XDSDocumentEntryEntryUUID`` / ``$XDSDocumentEntryUniqueId``).
* XDSTooManyResults: more than ``leaf_class_limit`` objects (1000) for LeafClass,
  or more than ``object_ref_limit`` (100,000) for ObjectRef; no objects are
  returned, and the client can narrow the query or ask for ObjectRefs.
* XDSResultNotSinglePatient: an answer would hold objects of more than one patient
  (the id-based queries, e.g. GetDocuments with entries of two patients).

Query semantics decided where the TF leaves room:

* Patient merges (HL7 A40, kuva.services.patients) apply as an XDS registry
  applies a Patient Identity Merge (ITI-44 Resolve Duplicates, ITI TF-2b
  3.44.4.2.4), computed at query time from the index's patient table, no registry
  row rewritten: a query by a patient id ($XDSDocumentEntryPatientId,
  $XDSSubmissionSetPatientId, $XDSFolderPatientId, $patientId) also finds the
  objects registered under every patient merged into it, directly or along a
  chain; every object returned, by any query, carries its patient's current
  identity as its patientId (sourcePatientId and sourcePatientInfo stay as
  submitted), and XDSResultNotSinglePatient counts current identities. A query by
  the id of a patient merged into another finds nothing, as after ITI-44, which
  moves the entries to the surviving id; they are found by the survivor's id. An
  A37 unlink undoes all of this. A patient id the index does not hold (a trusted
  assigning authority's) is matched as it is; an unknown patient gives an empty
  Success.
* Get* queries by id return objects of any availabilityStatus; an id that names
  nothing (or an object of another kind) is left out, not an error. A
  DocumentEntry uniqueId registered twice (a resubmission, ITI TF-2b 3.42) finds
  both entries.
* GetAll, GetSubmissionSetAndContents: the Associations returned are those whose
  source is a returned object and whose target is a returned object or a
  returned Association (so SubmissionSet-to-Association HasMembers come along),
  never links to objects the filters left out. GetFolderAndContents: the
  Folder's HasMember Associations to the returned entries. GetDocumentsAndAssociations
  and GetAssociations: every Association with a given object at either end.
  GetSubmissionSets: the SubmissionSets holding a given object by HasMember, and
  those Associations. GetFoldersForDocument: the Folders holding the entry.
* GetRelatedDocuments: Associations of the given types with the entry at either
  end and a DocumentEntry (of the requested objectTypes) at the other; the answer
  is the entry itself, those entries and those Associations - or nothing when
  there are none.
* Objects come in registration order, by kind: SubmissionSets, DocumentEntries,
  Folders, Associations. ``returnComposedObjects`` is always honoured as true
  (objects carry their Classifications, ExternalIdentifiers and Slots).

Not supported, answered with the errors above: XDS Metadata Update queries and
parameters ($MetadataLevel 2, $XDSDocumentEntryLogicalID, $XDSDocumentEntryVersion),
the multi-patient queries (FindDocumentsForMultiplePatients,
FindFoldersForMultiplePatients: unknown query ids), paging.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Final

from sqlalchemy import Engine

from kuva.index.registry_query import (
    CodeSet,
    DocumentCriteria,
    FolderCriteria,
    Found,
    RegistryQueryRepository,
    SubmissionSetCriteria,
    TimeRange,
)
from kuva.index.uow import UnitOfWork
from kuva.model.access import AccessScope
from kuva.model.xds import (
    ON_DEMAND_DOCUMENT_ENTRY,
    STABLE_DOCUMENT_ENTRY,
    AssociationType,
    Code,
    ErrorCode,
    ObjectKind,
    PatientId,
    RegistryError,
    ResponseStatus,
    StoredObject,
    dtm_instant,
    dtm_problem,
    is_uuid_urn,
)
from kuva.model.xua import RequestingUser
from kuva.services.access import AccessPolicy, Read, recipient
from kuva.services.disclosure import DisclosureLog, Interface

log = logging.getLogger(__name__)


class ReturnType(Enum):
    """ResponseOption/@returnType values ITI-18 allows (3.18.4.1.2.3.5)."""

    LEAF_CLASS = "LeafClass"
    OBJECT_REF = "ObjectRef"


class StoredQueryId:
    """The stored query ids (ITI TF-2a 3.18.4.1.2.3.7)."""

    FIND_DOCUMENTS: Final = "urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d"
    FIND_SUBMISSION_SETS: Final = "urn:uuid:f26abbcb-ac74-4422-8a30-edb644bbc1a9"
    FIND_FOLDERS: Final = "urn:uuid:958f3006-baad-4929-a4de-ff1114824431"
    GET_ALL: Final = "urn:uuid:10b545ea-725c-446d-9b95-8aeb444eddf3"
    GET_DOCUMENTS: Final = "urn:uuid:5c4f972b-d56b-40ac-a5fc-c8ca9b40b9d4"
    GET_FOLDERS: Final = "urn:uuid:5737b14c-8a1a-4539-b659-e03a34a5e1e4"
    GET_ASSOCIATIONS: Final = "urn:uuid:a7ae438b-4bc2-4642-93e9-be891f7bb155"
    GET_DOCUMENTS_AND_ASSOCIATIONS: Final = "urn:uuid:bab9529a-4a10-40b3-a01f-f68a615d247a"
    GET_SUBMISSION_SETS: Final = "urn:uuid:51224314-5390-4169-9b91-b1980040715a"
    GET_SUBMISSION_SET_AND_CONTENTS: Final = "urn:uuid:e8e3cb2c-e39c-46b9-99e4-c12f57260b83"
    GET_FOLDER_AND_CONTENTS: Final = "urn:uuid:b909a503-523d-4517-8acf-8e5834dfc4c7"
    GET_FOLDERS_FOR_DOCUMENT: Final = "urn:uuid:10cae35a-c7f9-4cf5-b61e-fc3278ffb578"
    GET_RELATED_DOCUMENTS: Final = "urn:uuid:d90e5407-b356-4d91-a89f-873917b4b0e6"
    FIND_DOCUMENTS_BY_REFERENCE_ID: Final = "urn:uuid:12941a89-e02e-4be5-967c-ce4bfc8fe492"


# --- the request and the answer ---


@dataclass(frozen=True)
class QueryParameter:
    """One ``rim:Slot`` of the AdhocQuery: its name and the text of each ``rim:Value``."""

    name: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class StoredQueryRequest:
    """An AdhocQueryRequest (ITI TF-2a 3.18.4.1.2): ``return_type`` as sent
    (ResponseOption/@returnType; None when absent); ``start_index`` /
    ``max_results`` as sent on the request (ebRS paging), None when absent."""

    query_id: str
    parameters: tuple[QueryParameter, ...] = ()
    return_type: str | None = ReturnType.LEAF_CLASS.value
    start_index: int | None = None
    max_results: int | None = None


@dataclass(frozen=True)
class StoredQueryResult:
    """``objects`` (LeafClass) or ``references`` (ObjectRef entryUUIDs), in order.
    ``patients``: entryUUID -> current patient id, of each object in ``objects``
    registered under a patient since merged into another (its patientId goes out
    as this one)."""

    status: ResponseStatus
    return_type: ReturnType
    errors: tuple[RegistryError, ...] = ()
    objects: tuple[StoredObject, ...] = ()
    references: tuple[str, ...] = ()
    patients: Mapping[str, PatientId] = field(default_factory=dict)


# --- parameter values (ITI TF-2a 3.18.4.1.2.3.5) ---


class _ValueError(ValueError):
    """A parameter value not in its form; the message is for the requester."""


@dataclass(frozen=True)
class _Scalar:
    text: str
    quoted: bool


_BARE = re.compile(r"[^\s,()']+")


def parse_value(text: str) -> list[_Scalar]:
    """The values of one ``rim:Value``: ``'a'``, ``7``, or ``('a', 'b', 7)``."""
    position = 0
    length = len(text)

    def skip() -> None:
        nonlocal position
        while position < length and text[position].isspace():
            position += 1

    def scalar() -> _Scalar:
        nonlocal position
        skip()
        if position < length and text[position] == "'":
            position += 1
            out: list[str] = []
            while True:
                end = text.find("'", position)
                if end < 0:
                    raise _ValueError("a quoted value has no closing quote")
                out.append(text[position:end])
                if end + 1 < length and text[end + 1] == "'":  # '' = one quote
                    out.append("'")
                    position = end + 2
                    continue
                position = end + 1
                return _Scalar("".join(out), quoted=True)
        match = _BARE.match(text, position)
        if match is None:
            raise _ValueError("expected a quoted value '...'")
        position = match.end()
        return _Scalar(match.group(), quoted=False)

    skip()
    if position < length and text[position] == "(":
        position += 1
        values = []
        skip()
        if position < length and text[position] == ")":
            raise _ValueError("an empty list ()")
        while True:
            values.append(scalar())
            skip()
            if position < length and text[position] == ",":
                position += 1
                continue
            if position < length and text[position] == ")":
                position += 1
                break
            raise _ValueError("a list is not closed by ')' or its values not separated by ','")
    else:
        if position >= length:
            raise _ValueError("no value")
        values = [scalar()]
    skip()
    if position != length:
        raise _ValueError(f"unexpected text after the value: {text[position:][:20]!r}")
    return values


class _Type(Enum):
    STRING = "a quoted string"
    PATIENT = "a quoted patient id in CX form 'id^^^&OID&ISO'"
    STATUS = "a quoted availabilityStatus URN"
    CODE = "a quoted coded value 'code^^codingScheme'"
    DTM = "a time YYYY[MM[DD[hh[mm[ss]]]]] (UTC)"
    UUID = "a quoted entryUUID 'urn:uuid:...'"
    OBJECT_TYPE = "a quoted DocumentEntry objectType (stable or on-demand UUID)"
    ASSOCIATION_TYPE = "a quoted associationType URN"
    INTEGER = "a number"


_STATUS_PREFIX = "urn:oasis:names:tc:ebxml-regrep:StatusType:"
_OBJECT_TYPES = (STABLE_DOCUMENT_ENTRY, ON_DEMAND_DOCUMENT_ENTRY)

Value = str | Code | PatientId | int


def _typed(kind: _Type, scalar: _Scalar) -> Value:
    text = scalar.text
    if kind in (_Type.DTM, _Type.INTEGER):
        if not (text.isascii() and text.isdigit()):
            raise _ValueError(f"{text!r} is not {kind.value}")
        if kind is _Type.INTEGER:
            return int(text)
        problem = dtm_problem(text)
        if problem:
            raise _ValueError(f"{text!r} is {problem}")
        return text
    if not scalar.quoted:
        raise _ValueError(f"{text!r} is not {kind.value} (single quotes missing)")
    if kind is _Type.PATIENT:
        try:
            return PatientId.parse(text)
        except ValueError as exc:
            raise _ValueError(f"{text!r} is not {kind.value}: {exc}") from exc
    if kind is _Type.CODE:
        code, separator, scheme = text.partition("^^")
        if not separator or not code or not scheme or "^^" in scheme:
            raise _ValueError(f"{text!r} is not {kind.value} (the scheme is required)")
        return Code(code, scheme)
    if kind is _Type.STATUS and not (
        text.startswith(_STATUS_PREFIX) and len(text) > len(_STATUS_PREFIX)
    ):
        raise _ValueError(f"{text!r} is not {kind.value} ({_STATUS_PREFIX}...)")
    if kind is _Type.UUID and not is_uuid_urn(text):
        raise _ValueError(f"{text!r} is not {kind.value}")
    if kind is _Type.OBJECT_TYPE and text not in _OBJECT_TYPES:
        raise _ValueError(f"{text!r} is not {kind.value}")
    if kind is _Type.ASSOCIATION_TYPE and AssociationType.of(text) is None:
        raise _ValueError(f"{text!r} is not {kind.value} (ITI TF-3 Table 4.2.2-1)")
    if kind is _Type.STRING and not text:
        raise _ValueError("an empty value ''")
    return text


# --- the queries' parameters (ITI TF-2a 3.18.4.1.2.3.7) ---


@dataclass(frozen=True)
class _Param:
    name: str
    type: _Type
    required: bool = False
    multiple: bool = False
    and_or: bool = False


def _p(name: str, kind: _Type, flags: str = "") -> _Param:
    """``flags``: R required, M multiple values, A AND/OR semantics."""
    return _Param(name, kind, "R" in flags, "M" in flags or "A" in flags, "A" in flags)


HOME = "$homeCommunityId"
METADATA_LEVEL = "$MetadataLevel"
_COMMON = (_p(HOME, _Type.STRING), _p(METADATA_LEVEL, _Type.INTEGER))

DE = "$XDSDocumentEntry"
SS = "$XDSSubmissionSet"
FD = "$XDSFolder"
_DE_TYPE = _p(f"{DE}Type", _Type.OBJECT_TYPE, "M")
_DE_FORMAT = _p(f"{DE}FormatCode", _Type.CODE, "M")
_DE_CONFIDENTIALITY = _p(f"{DE}ConfidentialityCode", _Type.CODE, "A")
_FIND_DOCUMENTS = (
    _p(f"{DE}PatientId", _Type.PATIENT, "R"),
    _p(f"{DE}ClassCode", _Type.CODE, "M"),
    _p(f"{DE}TypeCode", _Type.CODE, "M"),
    _p(f"{DE}PracticeSettingCode", _Type.CODE, "M"),
    _p(f"{DE}CreationTimeFrom", _Type.DTM),
    _p(f"{DE}CreationTimeTo", _Type.DTM),
    _p(f"{DE}ServiceStartTimeFrom", _Type.DTM),
    _p(f"{DE}ServiceStartTimeTo", _Type.DTM),
    _p(f"{DE}ServiceStopTimeFrom", _Type.DTM),
    _p(f"{DE}ServiceStopTimeTo", _Type.DTM),
    _p(f"{DE}HealthcareFacilityTypeCode", _Type.CODE, "M"),
    _p(f"{DE}EventCodeList", _Type.CODE, "A"),
    _DE_CONFIDENTIALITY,
    _p(f"{DE}AuthorPerson", _Type.STRING, "M"),
    _DE_FORMAT,
    _p(f"{DE}Status", _Type.STATUS, "RM"),
    _DE_TYPE,
)
_DE_BY_ID = (_p(f"{DE}EntryUUID", _Type.UUID, "M"), _p(f"{DE}UniqueId", _Type.STRING, "M"))
_DE_ONE_BY_ID = (_p(f"{DE}EntryUUID", _Type.UUID), _p(f"{DE}UniqueId", _Type.STRING))
_DE_ID_GROUP = (f"{DE}EntryUUID", f"{DE}UniqueId")


# --- running a query ---


class _TooMany(Exception):
    pass


@dataclass
class _Answer:
    """The objects of an answer, by kind, within ``limit``."""

    limit: int
    xml: bool
    submission_sets: list[Found] = field(default_factory=list)
    documents: list[Found] = field(default_factory=list)
    folders: list[Found] = field(default_factory=list)
    associations: list[Found] = field(default_factory=list)

    @property
    def count(self) -> int:
        return (
            len(self.submission_sets)
            + len(self.documents)
            + len(self.folders)
            + len(self.associations)
        )

    @property
    def room(self) -> int:
        """Rows to ask for: what still fits, and one more to see an overflow."""
        return self.limit - self.count + 1

    def add(self, target: list[Found], found: Iterable[Found]) -> None:
        known = {item.pk for item in target}
        target.extend(item for item in found if item.pk not in known)
        if self.count > self.limit:
            raise _TooMany

    def ordered(self) -> list[Found]:
        """By kind, each in registration order."""
        return [
            item
            for kind in (self.submission_sets, self.documents, self.folders, self.associations)
            for item in sorted(kind, key=lambda found: found.pk)
        ]


class _Params:
    """The checked values of one request's parameters."""

    def __init__(self, values: dict[str, list[list[Value]]]) -> None:
        self._values = values

    def one(self, name: str) -> Value | None:
        slots = self._values.get(name)
        return slots[0][0] if slots else None

    def text(self, name: str) -> str | None:
        value = self.one(name)
        return value if isinstance(value, str) else None

    def patient(self, name: str) -> PatientId | None:
        value = self.one(name)
        return value if isinstance(value, PatientId) else None

    def strings(self, name: str) -> tuple[str, ...] | None:
        slots = self._values.get(name)
        if slots is None:
            return None
        return tuple(dict.fromkeys(v for v in slots[0] if isinstance(v, str)))

    def codes(self, name: str) -> CodeSet | None:
        sets = self.code_sets(name)
        return sets[0] if sets else None

    def code_sets(self, name: str) -> tuple[CodeSet, ...]:
        slots = self._values.get(name, [])
        return tuple(tuple(dict.fromkeys(v for v in s if isinstance(v, Code))) for s in slots)

    def time(self, prefix: str) -> TimeRange | None:
        low, high = self.text(prefix + "From"), self.text(prefix + "To")
        if low is None and high is None:
            return None
        return TimeRange(
            dtm_instant(low) if low is not None else None,
            dtm_instant(high) if high is not None else None,
        )


Runner = Callable[["_Run", _Params, _Answer], None]


@dataclass(frozen=True)
class _Query:
    name: str
    id: str
    params: tuple[_Param, ...]
    run: Runner
    # Groups of parameters of which exactly one must be given.
    one_of: tuple[tuple[str, ...], ...] = ()


class _Run:
    """The queries, over one unit of work's registry reads. ``current``: registered
    patient -> current identity, as far as known (module docstring: merges)."""

    def __init__(self, q: RegistryQueryRepository) -> None:
        self.q = q
        self.current: dict[PatientId, PatientId] = {}

    # helpers

    def patients(self, patient: PatientId | None) -> tuple[PatientId, ...] | None:
        """The registered patients whose objects a query by ``patient`` finds: it
        and the patients merged into it; none when it is merged into another."""
        if patient is None:
            return None
        if self.q.survivors([patient]):
            log.debug("ITI-18: %s is merged into another patient", patient)
            return ()
        found = (patient, *self.q.merged_into(patient))
        self.current.update(dict.fromkeys(found, patient))
        return found

    def identities(self, found: Iterable[Found]) -> dict[PatientId, PatientId]:
        """Registered patient -> current identity, for the patients of ``found``."""
        registered = {item.patient for item in found if item.patient is not None}
        unknown = registered - self.current.keys()
        if unknown:
            survivors = self.q.survivors(unknown)
            self.current.update({p: survivors.get(p, p) for p in unknown})
        return {p: self.current[p] for p in registered}

    def documents(self, answer: _Answer, criteria: DocumentCriteria) -> list[Found]:
        found = self.q.documents(criteria, limit=answer.room, xml=answer.xml)
        answer.add(answer.documents, found)
        return found

    def associations(
        self,
        answer: _Answer,
        *,
        sources: Iterable[str] = (),
        targets: Iterable[str] = (),
        types: Sequence[str] | None = None,
        keep: Callable[[Found], bool] | None = None,
    ) -> list[Found]:
        """Associations with a source in ``sources`` or a target in ``targets``; only
        those ``keep`` accepts, when given (filtered here, so all candidates are read)."""
        if keep is None:
            found = self.q.associations(
                sources=sources, targets=targets, types=types, limit=answer.room, xml=answer.xml
            )
        else:
            found = self.candidates(
                self.q.associations(
                    sources=sources, targets=targets, types=types, limit=CANDIDATES, xml=answer.xml
                )
            )
            found = [a for a in found if keep(a)]
        answer.add(answer.associations, found)
        return found

    @staticmethod
    def candidates(found: list[Found]) -> list[Found]:
        if len(found) >= CANDIDATES:
            raise _TooMany
        return found

    def links(
        self, *, sources: Iterable[str] = (), targets: Iterable[str] = (), types: Sequence[str]
    ) -> list[Found]:
        """Associations (without their XML) to decide what an answer holds."""
        return self.candidates(
            self.q.associations(
                sources=sources, targets=targets, types=types, limit=CANDIDATES, xml=False
            )
        )

    def closed_associations(self, answer: _Answer, returned: Iterable[Found]) -> None:
        """Associations from a returned object to a returned object, and those from
        a returned object to such an Association (GetAll, GetSubmissionSetAndContents)."""
        ids = {item.entry_uuid for item in returned}
        if not ids:
            return
        found = self.candidates(self.q.associations(sources=ids, limit=CANDIDATES, xml=answer.xml))
        inner = [a for a in found if a.target_object in ids]
        inner_ids = {a.entry_uuid for a in inner}
        outer = [a for a in found if a.target_object in inner_ids]
        answer.add(answer.associations, sorted([*inner, *outer], key=lambda a: a.pk))

    @staticmethod
    def document_criteria(p: _Params, **changes: Any) -> DocumentCriteria:
        """The criteria of the DocumentEntry filters that several queries share
        ($XDSDocumentEntryType, -FormatCode, -ConfidentialityCode), with ``changes``."""
        base = DocumentCriteria(
            object_types=p.strings(f"{DE}Type") or (STABLE_DOCUMENT_ENTRY,),
            format_codes=p.codes(f"{DE}FormatCode"),
            confidentiality_codes=p.code_sets(f"{DE}ConfidentialityCode"),
        )
        return replace(base, **changes)

    def documents_by_id(self, p: _Params, answer: _Answer) -> list[Found]:
        criteria = DocumentCriteria(
            entry_uuids=p.strings(f"{DE}EntryUUID"), unique_ids=p.strings(f"{DE}UniqueId")
        )
        return self.documents(answer, criteria)

    def one_document(self, p: _Params) -> list[Found]:
        """The entries of a single-valued EntryUUID / UniqueId (any kind of entry)."""
        uuid, unique_id = p.text(f"{DE}EntryUUID"), p.text(f"{DE}UniqueId")
        criteria = DocumentCriteria(
            entry_uuids=(uuid,) if uuid is not None else None,
            unique_ids=(unique_id,) if unique_id is not None else None,
        )
        return self.q.documents(criteria, limit=CANDIDATES, xml=False)

    # the queries

    def find_documents(self, p: _Params, answer: _Answer) -> None:
        self.documents(
            answer,
            self.document_criteria(
                p,
                patients=self.patients(p.patient(f"{DE}PatientId")),
                statuses=p.strings(f"{DE}Status"),
                class_codes=p.codes(f"{DE}ClassCode"),
                type_codes=p.codes(f"{DE}TypeCode"),
                practice_setting_codes=p.codes(f"{DE}PracticeSettingCode"),
                healthcare_facility_type_codes=p.codes(f"{DE}HealthcareFacilityTypeCode"),
                event_codes=p.code_sets(f"{DE}EventCodeList"),
                author_persons=p.strings(f"{DE}AuthorPerson"),
                reference_ids=p.strings(f"{DE}ReferenceIdList"),
                creation_time=p.time(f"{DE}CreationTime"),
                service_start_time=p.time(f"{DE}ServiceStartTime"),
                service_stop_time=p.time(f"{DE}ServiceStopTime"),
            ),
        )

    def find_submission_sets(self, p: _Params, answer: _Answer) -> None:
        criteria = SubmissionSetCriteria(
            patients=self.patients(p.patient(f"{SS}PatientId")),
            statuses=p.strings(f"{SS}Status"),
            source_ids=p.strings(f"{SS}SourceId"),
            content_type_codes=p.codes(f"{SS}ContentType"),
            submission_time=p.time(f"{SS}SubmissionTime"),
            author_person=p.text(f"{SS}AuthorPerson"),
        )
        found = self.q.submission_sets(criteria, limit=answer.room, xml=answer.xml)
        answer.add(answer.submission_sets, found)

    def find_folders(self, p: _Params, answer: _Answer) -> None:
        criteria = FolderCriteria(
            patients=self.patients(p.patient(f"{FD}PatientId")),
            statuses=p.strings(f"{FD}Status"),
            last_update_time=p.time(f"{FD}LastUpdateTime"),
            code_list=p.code_sets(f"{FD}CodeList"),
        )
        answer.add(answer.folders, self.q.folders(criteria, limit=answer.room, xml=answer.xml))

    def get_all(self, p: _Params, answer: _Answer) -> None:
        patients = self.patients(p.patient("$patientId"))
        sets = self.q.submission_sets(
            SubmissionSetCriteria(patients=patients, statuses=p.strings(f"{SS}Status")),
            limit=answer.room,
            xml=answer.xml,
        )
        answer.add(answer.submission_sets, sets)
        self.documents(
            answer,
            self.document_criteria(p, patients=patients, statuses=p.strings(f"{DE}Status")),
        )
        folders = self.q.folders(
            FolderCriteria(patients=patients, statuses=p.strings(f"{FD}Status")),
            limit=answer.room,
            xml=answer.xml,
        )
        answer.add(answer.folders, folders)
        self.closed_associations(
            answer, [*answer.submission_sets, *answer.documents, *answer.folders]
        )

    def get_documents(self, p: _Params, answer: _Answer) -> None:
        self.documents_by_id(p, answer)

    def get_folders(self, p: _Params, answer: _Answer) -> None:
        criteria = FolderCriteria(
            entry_uuids=p.strings(f"{FD}EntryUUID"), unique_ids=p.strings(f"{FD}UniqueId")
        )
        answer.add(answer.folders, self.q.folders(criteria, limit=answer.room, xml=answer.xml))

    def get_associations(self, p: _Params, answer: _Answer) -> None:
        ids = p.strings("$uuid") or ()
        self.associations(answer, sources=ids, targets=ids)

    def get_documents_and_associations(self, p: _Params, answer: _Answer) -> None:
        ids = [d.entry_uuid for d in self.documents_by_id(p, answer)]
        self.associations(answer, sources=ids, targets=ids)

    def get_submission_sets(self, p: _Params, answer: _Answer) -> None:
        ids = p.strings("$uuid") or ()
        links = self.links(targets=ids, types=[AssociationType.HAS_MEMBER.value])
        sources = {a.source_object for a in links if a.source_object}
        if not sources:
            return
        sets = self.q.submission_sets(
            SubmissionSetCriteria(entry_uuids=tuple(sorted(sources))),
            limit=answer.room,
            xml=answer.xml,
        )
        answer.add(answer.submission_sets, sets)
        found = {s.entry_uuid for s in sets}
        self.associations(
            answer,
            targets=ids,
            types=[AssociationType.HAS_MEMBER.value],
            keep=lambda a: a.source_object in found,
        )

    def get_submission_set_and_contents(self, p: _Params, answer: _Answer) -> None:
        uuid, unique_id = p.text(f"{SS}EntryUUID"), p.text(f"{SS}UniqueId")
        sets = self.q.submission_sets(
            SubmissionSetCriteria(
                entry_uuids=(uuid,) if uuid is not None else None,
                unique_ids=(unique_id,) if unique_id is not None else None,
            ),
            limit=answer.room,
            xml=answer.xml,
        )
        answer.add(answer.submission_sets, sets)
        if not sets:
            return
        members = self.member_ids([s.entry_uuid for s in sets])
        if members:
            self.documents(answer, self.document_criteria(p, entry_uuids=members))
            folders = self.q.folders(
                FolderCriteria(entry_uuids=members), limit=answer.room, xml=answer.xml
            )
            answer.add(answer.folders, folders)
        self.closed_associations(
            answer, [*answer.submission_sets, *answer.documents, *answer.folders]
        )

    def get_folder_and_contents(self, p: _Params, answer: _Answer) -> None:
        uuid, unique_id = p.text(f"{FD}EntryUUID"), p.text(f"{FD}UniqueId")
        folders = self.q.folders(
            FolderCriteria(
                entry_uuids=(uuid,) if uuid is not None else None,
                unique_ids=(unique_id,) if unique_id is not None else None,
            ),
            limit=answer.room,
            xml=answer.xml,
        )
        answer.add(answer.folders, folders)
        if not folders:
            return
        ids = {f.entry_uuid for f in folders}
        members = self.member_ids(ids)
        if not members:
            return
        documents = {
            d.entry_uuid
            for d in self.documents(answer, self.document_criteria(p, entry_uuids=members))
        }
        self.associations(
            answer,
            sources=ids,
            types=[AssociationType.HAS_MEMBER.value],
            keep=lambda a: a.target_object in documents,
        )

    def get_folders_for_document(self, p: _Params, answer: _Answer) -> None:
        entries = [d.entry_uuid for d in self.one_document(p)]
        links = self.links(targets=entries, types=[AssociationType.HAS_MEMBER.value])
        sources = {a.source_object for a in links if a.source_object}
        if sources:
            folders = self.q.folders(
                FolderCriteria(entry_uuids=tuple(sorted(sources))),
                limit=answer.room,
                xml=answer.xml,
            )
            answer.add(answer.folders, folders)

    def get_related_documents(self, p: _Params, answer: _Answer) -> None:
        originals = self.one_document(p)
        ids = {d.entry_uuid for d in originals}
        if not ids:
            return
        types = p.strings("$AssociationTypes") or ()
        links = self.links(sources=ids, targets=ids, types=types)
        others = {
            end
            for a in links
            for end in (a.source_object, a.target_object)
            if end is not None and end not in ids
        }
        if not others:
            return
        related = self.q.documents(
            self.document_criteria(p, entry_uuids=tuple(sorted(others))),
            limit=answer.room,
            xml=answer.xml,
        )
        if not related:
            return
        answer.add(
            answer.documents,
            self.q.documents(
                DocumentCriteria(entry_uuids=tuple(sorted(ids))), limit=answer.room, xml=answer.xml
            ),
        )
        answer.add(answer.documents, related)
        kept = {d.entry_uuid for d in related}
        self.associations(
            answer,
            sources=ids,
            targets=ids,
            types=types,
            keep=lambda a: a.source_object in kept or a.target_object in kept,
        )

    def member_ids(self, containers: Iterable[str]) -> tuple[str, ...]:
        """Targets of the HasMember Associations from ``containers``."""
        links = self.links(sources=containers, types=[AssociationType.HAS_MEMBER.value])
        return tuple(sorted({a.target_object for a in links if a.target_object}))


# Candidates read by id-only steps (members, links) before the answer's own limit
# applies to the objects returned.
CANDIDATES = 100_000

_QUERIES: tuple[_Query, ...] = (
    _Query("FindDocuments", StoredQueryId.FIND_DOCUMENTS, _FIND_DOCUMENTS, _Run.find_documents),
    _Query(
        "FindSubmissionSets",
        StoredQueryId.FIND_SUBMISSION_SETS,
        (
            _p(f"{SS}PatientId", _Type.PATIENT, "R"),
            _p(f"{SS}SourceId", _Type.STRING, "M"),
            _p(f"{SS}SubmissionTimeFrom", _Type.DTM),
            _p(f"{SS}SubmissionTimeTo", _Type.DTM),
            _p(f"{SS}AuthorPerson", _Type.STRING),
            _p(f"{SS}ContentType", _Type.CODE, "M"),
            _p(f"{SS}Status", _Type.STATUS, "RM"),
        ),
        _Run.find_submission_sets,
    ),
    _Query(
        "FindFolders",
        StoredQueryId.FIND_FOLDERS,
        (
            _p(f"{FD}PatientId", _Type.PATIENT, "R"),
            _p(f"{FD}LastUpdateTimeFrom", _Type.DTM),
            _p(f"{FD}LastUpdateTimeTo", _Type.DTM),
            _p(f"{FD}CodeList", _Type.CODE, "A"),
            _p(f"{FD}Status", _Type.STATUS, "RM"),
        ),
        _Run.find_folders,
    ),
    _Query(
        "GetAll",
        StoredQueryId.GET_ALL,
        (
            _p("$patientId", _Type.PATIENT, "R"),
            _p(f"{DE}Status", _Type.STATUS, "RM"),
            _p(f"{SS}Status", _Type.STATUS, "RM"),
            _p(f"{FD}Status", _Type.STATUS, "RM"),
            _DE_FORMAT,
            _DE_CONFIDENTIALITY,
            _DE_TYPE,
        ),
        _Run.get_all,
    ),
    _Query(
        "GetDocuments",
        StoredQueryId.GET_DOCUMENTS,
        _DE_BY_ID,
        _Run.get_documents,
        (_DE_ID_GROUP,),
    ),
    _Query(
        "GetFolders",
        StoredQueryId.GET_FOLDERS,
        (_p(f"{FD}EntryUUID", _Type.UUID, "M"), _p(f"{FD}UniqueId", _Type.STRING, "M")),
        _Run.get_folders,
        ((f"{FD}EntryUUID", f"{FD}UniqueId"),),
    ),
    _Query(
        "GetAssociations",
        StoredQueryId.GET_ASSOCIATIONS,
        (_p("$uuid", _Type.UUID, "RM"),),
        _Run.get_associations,
    ),
    _Query(
        "GetDocumentsAndAssociations",
        StoredQueryId.GET_DOCUMENTS_AND_ASSOCIATIONS,
        _DE_BY_ID,
        _Run.get_documents_and_associations,
        (_DE_ID_GROUP,),
    ),
    _Query(
        "GetSubmissionSets",
        StoredQueryId.GET_SUBMISSION_SETS,
        (_p("$uuid", _Type.UUID, "RM"),),
        _Run.get_submission_sets,
    ),
    _Query(
        "GetSubmissionSetAndContents",
        StoredQueryId.GET_SUBMISSION_SET_AND_CONTENTS,
        (
            _p(f"{SS}EntryUUID", _Type.UUID),
            _p(f"{SS}UniqueId", _Type.STRING),
            _DE_FORMAT,
            _DE_CONFIDENTIALITY,
            _DE_TYPE,
        ),
        _Run.get_submission_set_and_contents,
        ((f"{SS}EntryUUID", f"{SS}UniqueId"),),
    ),
    _Query(
        "GetFolderAndContents",
        StoredQueryId.GET_FOLDER_AND_CONTENTS,
        (
            _p(f"{FD}EntryUUID", _Type.UUID),
            _p(f"{FD}UniqueId", _Type.STRING),
            _DE_FORMAT,
            _DE_CONFIDENTIALITY,
            _DE_TYPE,
        ),
        _Run.get_folder_and_contents,
        ((f"{FD}EntryUUID", f"{FD}UniqueId"),),
    ),
    _Query(
        "GetFoldersForDocument",
        StoredQueryId.GET_FOLDERS_FOR_DOCUMENT,
        _DE_ONE_BY_ID,
        _Run.get_folders_for_document,
        (_DE_ID_GROUP,),
    ),
    _Query(
        "GetRelatedDocuments",
        StoredQueryId.GET_RELATED_DOCUMENTS,
        (
            *_DE_ONE_BY_ID,
            _p("$AssociationTypes", _Type.ASSOCIATION_TYPE, "RM"),
            _DE_TYPE,
        ),
        _Run.get_related_documents,
        (_DE_ID_GROUP,),
    ),
    _Query(
        "FindDocumentsByReferenceId",
        StoredQueryId.FIND_DOCUMENTS_BY_REFERENCE_ID,
        (*_FIND_DOCUMENTS, _p(f"{DE}ReferenceIdList", _Type.STRING, "RM")),
        _Run.find_documents,
    ),
)
QUERIES: Final = {query.id: query for query in _QUERIES}
QUERY_NAMES: Final = {query.id: query.name for query in _QUERIES}


# --- the service ---


class StoredQueryService:
    """ITI-18 over the registry's index. ``leaf_class_limit`` / ``object_ref_limit``:
    the most objects one answer holds; more is XDSTooManyResults."""

    def __init__(
        self,
        engine: Engine,
        *,
        leaf_class_limit: int = 1000,
        object_ref_limit: int = 100_000,
        disclosures: DisclosureLog | None = None,
        access: AccessPolicy | None = None,
    ) -> None:
        if leaf_class_limit < 1 or object_ref_limit < 1:
            raise ValueError("result limits must be positive")
        self._engine = engine
        self._disclosures = disclosures
        # The access rules the adapter asks for each requester's scope.
        self.access = access
        self.leaf_class_limit = leaf_class_limit
        self.object_ref_limit = object_ref_limit

    def query(
        self,
        request: StoredQueryRequest,
        *,
        scope: AccessScope | None = None,
        user: RequestingUser | None = None,
    ) -> StoredQueryResult:
        """Run the stored query ``request`` names (ITI TF-2a 3.18.4.1.3).

        ``scope``: what the requester may read (services.access; None = all): other
        organisations' entries it may not read do not match, and the DocumentEntries
        of another organisation in the answer are recorded as disclosures first,
        with ``user`` (a verified XUA assertion's person, model.xua)."""
        errors: list[RegistryError] = []
        return_type = _return_type(request, errors)
        query = QUERIES.get(request.query_id.strip().lower())
        if query is None:
            errors.append(
                RegistryError(
                    ErrorCode.REGISTRY_ERROR,
                    f"unknown stored query id {request.query_id!r} "
                    "(ITI TF-2a 3.18.4.1.2.3.7 lists the stored queries)",
                    "AdhocQuery/@id",
                )
            )
        params = _check_parameters(query, request.parameters, errors) if query else None
        result_type = return_type or ReturnType.LEAF_CLASS
        if errors or query is None or params is None or return_type is None:
            log.info(
                "ITI-18 %s refused: %s",
                query.name if query else "(unknown query)",
                ", ".join(sorted({e.code for e in errors})),
            )
            return StoredQueryResult(ResponseStatus.FAILURE, result_type, tuple(errors))
        leaf = return_type is ReturnType.LEAF_CLASS
        limit = self.leaf_class_limit if leaf else self.object_ref_limit
        answer = _Answer(limit=limit, xml=leaf)
        try:
            with UnitOfWork(self._engine, write=False) as uow:
                uow.registry_query.scope = scope
                run = _Run(uow.registry_query)
                query.run(run, params, answer)
                found = answer.ordered()
                current = run.identities(found)
        except _TooMany:
            log.info("ITI-18 %s: more than %d objects", query.name, limit)
            error = RegistryError(
                ErrorCode.TOO_MANY_RESULTS,
                f"the query matches more than {limit} objects, the most one "
                f"{return_type.value} answer holds; narrow the query"
                + (" or ask for ObjectRef" if leaf else ""),
                query.name,
            )
            return StoredQueryResult(ResponseStatus.FAILURE, return_type, (error,))
        patients = {
            current.get(item.patient) if item.patient is not None else None
            for item in found
            if item.kind is not ObjectKind.ASSOCIATION
        }
        if len(patients) > 1:
            log.info("ITI-18 %s: objects of %d patients refused", query.name, len(patients))
            error = RegistryError(
                ErrorCode.RESULT_NOT_SINGLE_PATIENT,
                f"the answer would hold objects of {len(patients)} patients",
                query.name,
            )
            return StoredQueryResult(ResponseStatus.FAILURE, return_type, (error,))
        log.debug("ITI-18 %s: %d object(s)", query.name, len(found))
        if scope is not None and not self._disclosed(scope, found, user):
            error = RegistryError(
                ErrorCode.REGISTRY_ERROR, "the query cannot be answered now (internal error)"
            )
            return StoredQueryResult(ResponseStatus.FAILURE, return_type, (error,))
        if leaf:
            moved = {
                f.entry_uuid: current[f.patient]
                for f in found
                if f.patient is not None and current[f.patient] != f.patient
            }
            return StoredQueryResult(
                ResponseStatus.SUCCESS,
                return_type,
                objects=tuple(f.stored() for f in found),
                patients=moved,
            )
        return StoredQueryResult(
            ResponseStatus.SUCCESS, return_type, references=tuple(f.entry_uuid for f in found)
        )

    def _disclosed(
        self, scope: AccessScope, found: Sequence[Found], user: RequestingUser | None
    ) -> bool:
        """Record the DocumentEntries of another organisation among ``found``; False
        when that failed (then nothing is answered)."""
        handouts = AccessPolicy.disclosures(
            scope,
            (
                Read(
                    register_holder=item.register_holder,
                    document_unique_id=item.unique_id or item.entry_uuid,
                    patient=(item.patient.id, item.patient.authority) if item.patient else None,
                )
                for item in found
                if item.kind is ObjectKind.DOCUMENT_ENTRY
            ),
        )
        if not handouts or self._disclosures is None:
            return True
        try:
            self._disclosures.record(recipient(scope), handouts, Interface.ITI_18, user=user)
        except Exception as exc:
            log.error("ITI-18: the disclosure log could not be written: %s", type(exc).__name__)
            log.debug("ITI-18 disclosure failure", exc_info=True)
            return False
        return True


def _return_type(request: StoredQueryRequest, errors: list[RegistryError]) -> ReturnType | None:
    if request.start_index not in (None, 0) or request.max_results not in (None, -1):
        errors.append(
            RegistryError(
                ErrorCode.REGISTRY_ERROR,
                "paging (startIndex, maxResults) is not used with stored queries",
                "AdhocQueryRequest",
            )
        )
    try:
        return ReturnType(request.return_type)
    except ValueError:
        errors.append(
            RegistryError(
                ErrorCode.REGISTRY_ERROR,
                f"returnType {request.return_type!r}: a stored query returns LeafClass or "
                "ObjectRef (ITI TF-2a 3.18.4.1.2.3.5)",
                "ResponseOption/@returnType",
            )
        )
        return None


def _check_parameters(
    query: _Query, given: Sequence[QueryParameter], errors: list[RegistryError]
) -> _Params | None:
    """The parameters' values, typed; None with ``errors`` when any is wrong."""
    specs = {spec.name: spec for spec in (*query.params, *_COMMON)}
    slots: dict[str, list[QueryParameter]] = {}
    for parameter in given:
        slots.setdefault(parameter.name, []).append(parameter)
    before = len(errors)

    def error(code: str, name: str, text: str) -> None:
        errors.append(RegistryError(code, f"{name}: {text}", name))

    values: dict[str, list[list[Value]]] = {}
    for name, occurrences in slots.items():
        spec = specs.get(name)
        if spec is None:
            error(
                ErrorCode.REGISTRY_ERROR,
                name,
                f"not a parameter of {query.name} (ITI TF-2a 3.18.4.1.2.3.7)",
            )
            continue
        if len(occurrences) > 1 and not spec.and_or:
            error(
                ErrorCode.STORED_QUERY_PARAM_NUMBER,
                name,
                f"given in {len(occurrences)} Slots; it takes one",
            )
            continue
        typed: list[list[Value]] = []
        for occurrence in occurrences:
            scalars: list[_Scalar] = []
            try:
                if not occurrence.values:
                    raise _ValueError("no value")
                for text in occurrence.values:
                    scalars.extend(parse_value(text))
                if len(scalars) > 1 and not spec.multiple:
                    error(
                        ErrorCode.STORED_QUERY_PARAM_NUMBER,
                        name,
                        f"{len(scalars)} values given; it takes one",
                    )
                    break
                typed.append([_typed(spec.type, s) for s in scalars])
            except _ValueError as exc:
                error(ErrorCode.REGISTRY_ERROR, name, f"{exc} (ITI TF-2a 3.18.4.1.2.3.5)")
                break
        else:
            values[name] = typed
    for spec in query.params:
        if spec.required and spec.name not in slots:
            error(
                ErrorCode.STORED_QUERY_PARAM_NUMBER,
                spec.name,
                f"required by {query.name} and missing",
            )
    for group in query.one_of:
        present = [name for name in group if name in slots]
        if len(present) != 1:
            names = " or ".join(group)
            problem = "both given; they exclude each other" if present else "one is required"
            error(ErrorCode.STORED_QUERY_PARAM_NUMBER, names, problem)
    level = values.get(METADATA_LEVEL)
    if level and level[0][0] != 1:
        error(
            ErrorCode.REGISTRY_ERROR,
            METADATA_LEVEL,
            f"{level[0][0]}: kuva supports metadata level 1 only (no XDS Metadata Update)",
        )
    if len(errors) > before:
        return None
    return _Params(values)
