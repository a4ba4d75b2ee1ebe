"""The XDS.b Document Registry: Register Document Set-b (ITI TF-2b 3.42).

``RegistryService.register`` takes a submission (kuva.xds.ebrim reads it from the
wire; ITI-41 hands over the same metadata with hash, size and repositoryUniqueId
added) and stores it whole or not at all, in one transaction (ITI TF-2b
3.42.4.1.3: the registry "shall accept or reject the submission as a whole"). It
answers Success, or Failure with every problem found, each naming the object as
submitted (its symbolic id or entryUUID) in ``location``.

Checked, with the error code of ITI TF-3 Table 4.2.4.1-2:

* Structure (XDSRegistryMetadataError): exactly one SubmissionSet; no other kinds
  of object; every Classification and ExternalIdentifier names the object it sits
  in or, at the top level, an object of the submission (classifiedObject /
  registryObject uplinks); ids unique in the submission; submitted entryUUIDs are
  ``urn:uuid:`` UUIDs (4.2.3.1.2); ``lid`` absent or equal to the id (only ITI-57
  submits new versions); DocumentEntry objectType Stable (On-Demand entries are
  registered by ITI-61); no limitedMetadata (not allowed in XDS, Table 4.3.1-3).
* Attributes a registry requires (Table 4.3.1-3, column XDS; R2 ones checked when
  present) with their cardinality and form (XDSRegistryMetadataError):
  DocumentEntry classCode, typeCode, formatCode, healthcareFacilityTypeCode,
  practiceSettingCode (one each), confidentialityCode (one or more), eventCodeList,
  creationTime, serviceStart/StopTime (DTM, 4.2.3.1.7), languageCode, mimeType,
  patientId, sourcePatientId, uniqueId (OID[^extension], at most 128), hash (SHA-1
  hex), size, repositoryUniqueId (OID), documentAvailability, referenceIdList (CXi),
  author (4.2.3.1.4); SubmissionSet submissionTime, sourceId, uniqueId, patientId,
  contentTypeCode (one), author; Folder uniqueId, patientId, codeList (one or
  more). Codes have a nodeRepresentation and one codingScheme (4.2.3.1.2); ebRIM
  LongName values at most 256 characters.
* Patient (3.42.4.1.3): patientId in CX form with an OID assigning authority
  (XDSRegistryMetadataError); every DocumentEntry and Folder of the submission,
  every registered entry it references and both ends of a document relationship
  have the SubmissionSet's patient (XDSPatientIdDoesNotMatch) - for registered
  objects and across document relationships, the patients' current identities: a
  patient merged into another (HL7 A40, the overlay of kuva.services.stored_query)
  is the survivor, as its entries are after an ITI-44 merge, so that a merged
  patient's document can be replaced under the survivor's id; the patient is
  known - in the index's patient table (Patient ID + issuer), of a trusted
  assigning authority, which stands in for a Patient Identity Feed, or a temporary
  id of a configured organisation (1.2.246.10.<business id>.22.<year>,
  model.identity.KnownAuthorities) - else XDSUnknownPatientId.
* uniqueIds: not twice in the message (XDSRegistryDuplicateUniqueIdInMessage); a
  SubmissionSet or Folder uniqueId already registered (XDSDuplicateUniqueIdInRegistry);
  a DocumentEntry uniqueId already registered is a resubmission of the same
  document, accepted as a new entry when hash and size are the same, else
  XDSNonIdenticalHash / XDSNonIdenticalSize (Table 4.2.4.1-2: the former "cannot be
  thrown for DocumentEntry"; NIST XDS Toolkit test 12004); a uniqueId registered
  for another kind of object (XDSRegistryMetadataError). An entryUUID already
  registered: XDSRegistryMetadataError.
* Associations (4.2.2): a known associationType; not to or from itself; HasMember
  from the submission's SubmissionSet (to its DocumentEntries - with
  SubmissionSetStatus Original or Reference, 4.2.2.1.2 -, Folders, Associations, or
  registered ones) or from a Folder to a DocumentEntry; every DocumentEntry and
  Folder of the submission is a member of the SubmissionSet; document relationships
  (RPLC, APND, XFRM, XFRM_RPLC, signs, IsSnapshotOf) from a DocumentEntry of the
  submission to a registered one (signs: or one of the submission); a symbolic
  reference that names nothing of the submission (XDSRegistryMetadataError); a
  ``urn:uuid:`` one that names nothing registered either
  (UnresolvedReferenceException); a reference to a Deprecated document
  (XDSRegistryDeprecatedDocumentError); one original replaced twice in a submission.

Done on success (ITI TF-2b 3.42.4.1.3.5; ITI TF-3 4.2.2.2, as the NIST XDS Toolkit
registry does): every object Approved, lid = entryUUID, version 1; the target of an
RPLC or XFRM_RPLC becomes Deprecated, and so, recursively, do its transformations
(XFRM) and addenda (APND); a replacement joins each Folder its original was a
member of (a new HasMember association made by the registry); a Folder's
lastUpdateTime is set when it is created or gets a member. Times are UTC.

Not checked: displayName (Name) of coded values; that codes belong to an agreed
value set (affinity domain policy); the format of authorPerson (XCN),
authorInstitution (XON), legalAuthenticator, sourcePatientInfo and intendedRecipient;
that a Folder-to-DocumentEntry HasMember is itself a member of the SubmissionSet;
the reserved ``urn:ihe:`` prefix of extra-metadata slot names (extra metadata is
kept, so XDSExtraMetadataNotSaved is never answered); associations to objects of
another community (homeCommunityId).
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from sqlalchemy import Engine

from kuva.index.registry import RegistryConflict, RegistryRepository
from kuva.index.uow import UnitOfWork
from kuva.model.clock import Clock, utcnow
from kuva.model.directory import OrganizationState
from kuva.model.identity import TESTING_RULE, KnownAuthorities, is_test_identity_code
from kuva.model.xds import (
    DOCUMENT_UNIQUE_ID_LENGTH,
    LONG_NAME_LENGTH,
    ORIGINAL,
    REFERENCE,
    REPLACEMENT_TYPES,
    STABLE_DOCUMENT_ENTRY,
    Association,
    AssociationType,
    AvailabilityStatus,
    Classification,
    DocumentAvailability,
    DocumentEntry,
    DocumentEntryScheme,
    ErrorCode,
    Folder,
    FolderScheme,
    ObjectKind,
    PatientId,
    RegisteredObject,
    RegistryError,
    RegistryObject,
    ResponseStatus,
    SlotName,
    Submission,
    SubmissionSet,
    SubmissionSetScheme,
    dtm_problem,
    format_dtm,
    is_uuid_urn,
    new_association,
    oid_problem,
    status_of,
)

log = logging.getLogger(__name__)

_HASH_RE = re.compile(r"^[0-9a-fA-F]{40}$")
# RFC 5646 language tag, loosely (ITI TF-3 4.2.3.2.12).
_LANGUAGE_RE = re.compile(r"^[A-Za-z]{1,8}(-[A-Za-z0-9]{1,8})*$")
_UUID_PREFIX = "urn:uuid:"
_TABLE = "ITI TF-3 Table 4.3.1-3"


@dataclass(frozen=True)
class RegistryOutcome:
    """``registered``: entryUUIDs stored (the submission's and any association the
    registry made); ``deprecated``: entryUUIDs that became Deprecated."""

    status: ResponseStatus
    errors: tuple[RegistryError, ...] = ()
    registered: tuple[str, ...] = ()
    deprecated: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Node:
    """One end of an association, in the submission or in the registry."""

    kind: ObjectKind
    patient: PatientId | None
    status: AvailabilityStatus
    in_submission: bool
    location: str


def _patient(obj: RegistryObject) -> PatientId | None:
    if isinstance(obj, DocumentEntry | SubmissionSet | Folder):
        return obj.patient
    return None


class RegistryService:
    """``trusted_assigning_authorities``: OIDs whose patients are known without a
    row in the patient table (settings.xds.trusted_assigning_authorities); so are
    the temporary ids of the ``organizations`` (their OIDs; model.identity), asked
    at each submission so that an organisation added at runtime counts at once.
    ``render``: writes the stored ebRIM XML of objects that have none (made in code,
    or by the registry itself) - kuva.xds.ebrim.render."""

    def __init__(
        self,
        engine: Engine,
        *,
        trusted_assigning_authorities: Iterable[str],
        render: Callable[[RegistryObject], str],
        organizations: Callable[[], Iterable[str]] = tuple,
        organization_state: Callable[[str | None], OrganizationState] | None = None,
        clock: Clock = utcnow,
    ) -> None:
        """``organization_state``: a submitting organisation's state now
        (Settings.organization_state); None: every one is active."""
        self._organization_state = organization_state
        self._engine = engine
        self._trusted_authorities = tuple(trusted_assigning_authorities)
        self._organizations = organizations
        self._render = render
        self._clock = clock

    def register(self, submission: Submission, *, organization_oid: str) -> RegistryOutcome:
        """Register Document Set-b (ITI TF-2b 3.42.4.1.3), in a transaction of its own.

        ``organization_oid``: the register holder the objects are stored for.
        """
        with UnitOfWork(self._engine) as uow:
            outcome = self.register_within(uow, submission, organization_oid=organization_oid)
            if outcome.status is ResponseStatus.SUCCESS:
                uow.commit()
        return outcome

    def register_within(
        self, uow: UnitOfWork, submission: Submission, *, organization_oid: str
    ) -> RegistryOutcome:
        """As ``register``, inside the caller's unit of work (ITI-41: the repository's
        own rows in the same transaction). On Failure nothing was written that the
        caller must keep: it rolls back."""
        refusal = self._state_refusal(submission, organization_oid)
        if refusal is not None:
            log.warning("registration refused for %s: %s", organization_oid, refusal)
            error = RegistryError(ErrorCode.REGISTRY_ERROR, refusal)
            return RegistryOutcome(ResponseStatus.FAILURE, (error,))
        known = KnownAuthorities.of(self._trusted_authorities, self._organizations())
        check = _Checks(submission, uow.registry, known, uow.registry_query.survivors)
        check.run()
        if check.errors:
            log.info("registration refused: %d error(s)", len(check.errors))
            return RegistryOutcome(status_of(check.errors), tuple(check.errors))
        try:
            registered, deprecated = self._store(uow.registry, check, organization_oid)
        except RegistryConflict as conflict:
            log.warning("registration collided with a concurrent one: %s", conflict)
            error = RegistryError(
                ErrorCode.REGISTRY_ERROR,
                "an entryUUID of the submission was registered meanwhile; resubmit",
            )
            return RegistryOutcome(ResponseStatus.FAILURE, (error,))
        subset = submission.submission_set
        log.info(
            "registered SubmissionSet %s: %d document(s), %d deprecated",
            subset.unique_id if subset else "",
            len(submission.document_entries),
            len(deprecated),
        )
        return RegistryOutcome(ResponseStatus.SUCCESS, (), registered, deprecated)

    def _state_refusal(self, submission: Submission, organization: str) -> str | None:
        """Why the submitting organisation's state refuses the submission, or None
        (services.directory): suspended and terminated submit nothing, testing test
        identity codes only."""
        if self._organization_state is None:
            return None
        state = self._organization_state(organization)
        if state in (OrganizationState.SUSPENDED, OrganizationState.TERMINATED):
            return f"organisation {organization} {state}"
        if state is OrganizationState.TESTING:
            patients = [entry.patient for entry in submission.document_entries]
            patients += [subset.patient for subset in submission.submission_sets]
            if any(p is not None and not is_test_identity_code(p.id) for p in patients):
                return TESTING_RULE
        return None

    def _with_xml(self, obj: RegistryObject) -> RegistryObject:
        return obj if obj.ebxml else replace(obj, ebxml=self._render(obj))

    def _store(
        self, repository: RegistryRepository, check: _Checks, organization_oid: str
    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        now = self._clock()
        stamp = format_dtm(now)
        objects = [self._with_xml(obj) for obj in check.submission.objects]
        repository.add(
            objects, organization_oid=organization_oid, created_at=now, last_update_time=stamp
        )
        # Replacement: the original, and its transformations and addenda, recursively
        # (those registered before; not the submission's own).
        new = {obj.id for obj in objects}
        deprecated = set(check.replaced)
        frontier = set(check.replaced)
        while frontier:
            pairs = repository.related(
                frontier,
                (AssociationType.XFRM, AssociationType.APND),
                source_kind=ObjectKind.DOCUMENT_ENTRY,
            )
            frontier = {source for source, _ in pairs} - deprecated - new
            deprecated |= frontier
        repository.set_status(deprecated, AvailabilityStatus.DEPRECATED)
        # A replacement joins the Folders of its original.
        memberships = repository.related(
            check.replaced, (AssociationType.HAS_MEMBER,), source_kind=ObjectKind.FOLDER
        )
        submitted = {
            (a.source_object, a.target_object)
            for a in check.submission.associations
            if a.type is AssociationType.HAS_MEMBER
        }
        joins = {(folder, check.replaced[original]) for folder, original in memberships}
        made = [
            self._with_xml(new_association(AssociationType.HAS_MEMBER, folder, replacement))
            for folder, replacement in sorted(joins - submitted)
        ]
        repository.add(
            made, organization_oid=organization_oid, created_at=now, last_update_time=stamp
        )
        touched = check.existing_folders_touched | {folder for folder, _ in memberships}
        repository.touch_folders(touched, stamp)
        registered = tuple(obj.id for obj in objects) + tuple(obj.id for obj in made)
        return registered, tuple(sorted(deprecated))


class _Checks:
    """The rules of the module docstring, over one submission."""

    def __init__(
        self,
        submission: Submission,
        repository: RegistryRepository,
        trusted: KnownAuthorities,
        survivors: Callable[[Iterable[PatientId]], dict[PatientId, PatientId]],
    ) -> None:
        self.submission = submission
        self.repository = repository
        self.trusted = trusted
        self.survivors = survivors
        # Patient -> current identity, for the ends of associations (merges).
        self.current: dict[PatientId, PatientId] = {}
        self.errors: list[RegistryError] = []
        self.by_id: dict[str, RegistryObject] = submission.by_id()
        # Results used when storing.
        self.replaced: dict[str, str] = {}  # original entryUUID -> replacement entryUUID
        self.existing_folders_touched: set[str] = set()

    def error(self, code: str, context: str, location: str) -> None:
        self.errors.append(RegistryError(code, context, location))

    def metadata(self, context: str, location: str) -> None:
        self.error(ErrorCode.REGISTRY_METADATA_ERROR, context, location)

    def name(self, ident: str) -> str:
        """An id as the submitter knows it."""
        obj = self.by_id.get(ident)
        return obj.location if obj is not None else ident

    def run(self) -> None:
        s = self.submission
        self.structure()
        for entry in s.document_entries:
            self.document_entry(entry)
        for subset in s.submission_sets:
            self.submission_set(subset)
        for folder in s.folders:
            self.folder(folder)
        for obj in s.objects:
            self.long_names(obj)
        self.unique_ids_in_message()
        self.patients()
        self.membership()
        # The registry's side; a submission locks its uniqueIds and originals.
        unique_ids = {uid for obj in s.objects if (uid := _unique_id(obj))}
        targets = {a.target_object for a in s.associations}
        self.repository.lock(unique_ids | targets)
        self.registered_ids()
        self.known_patient()
        self.registered_unique_ids(unique_ids)
        self.associations()

    # --- structure ---

    def structure(self) -> None:
        s = self.submission
        if not s.submission_sets:
            self.metadata(
                "the submission has no SubmissionSet (a RegistryPackage classified "
                f"{SubmissionSetScheme.NODE}; ITI TF-3 4.2.1.5)",
                "",
            )
        for extra in s.submission_sets[1:]:
            self.metadata("a submission has exactly one SubmissionSet", extra.location)
        for other in s.others:
            self.metadata(
                f"{other.element} is not a DocumentEntry, SubmissionSet, Folder or "
                "Association the registry accepts",
                other.location,
            )
        for loose in s.unattached:
            if isinstance(loose, Classification):
                what, ref = "classifiedObject", loose.classified_object
            else:
                what, ref = "registryObject", loose.registry_object
            self.metadata(
                f"{type(loose).__name__} {loose.location}: {what} {ref} is no object of "
                "the submission",
                loose.location,
            )
        for ident in s.duplicate_ids:
            self.metadata(f"id {ident} is used by more than one object", ident)
        for obj in s.objects:
            self.uplinks(obj)
            if obj.symbolic_id.startswith(_UUID_PREFIX) and not is_uuid_urn(obj.symbolic_id):
                self.metadata(
                    f"entryUUID {obj.symbolic_id} is not urn:uuid: and a UUID (ITI TF-3 4.2.3.1.2)",
                    obj.location,
                )
            if obj.lid and obj.lid != obj.id:
                self.metadata(
                    f"lid {obj.lid} differs from the id: only Update Document Set (ITI-57) "
                    "submits new versions",
                    obj.location,
                )

    def uplinks(self, obj: RegistryObject) -> None:
        for c in obj.classifications:
            if c.classified_object != obj.id:
                self.metadata(
                    f"Classification {c.location} of {obj.location} names classifiedObject "
                    f"{self.name(c.classified_object)}, not the object it classifies",
                    c.location,
                )
        for e in obj.external_identifiers:
            if e.registry_object != obj.id:
                self.metadata(
                    f"ExternalIdentifier {e.location} of {obj.location} names registryObject "
                    f"{self.name(e.registry_object)}, not the object it identifies",
                    e.location,
                )

    # --- attributes (ITI TF-3 Table 4.3.1-3) ---

    def required(self, kind: str, obj: RegistryObject, attribute: str) -> None:
        self.metadata(f"{kind} {obj.location}: {attribute} is required ({_TABLE})", obj.location)

    def single(self, kind: str, obj: RegistryObject, slot: str, *, required: bool) -> str | None:
        values = obj.slot(slot)
        if values is None:
            if required:
                self.required(kind, obj, slot)
            return None
        if len(values) != 1 or not values[0]:
            self.metadata(f"{kind} {obj.location}: {slot} has one value", obj.location)
            return None
        return values[0]

    def dtm(self, kind: str, obj: RegistryObject, slot: str, *, required: bool) -> None:
        value = self.single(kind, obj, slot, required=required)
        if value is not None and (problem := dtm_problem(value)):
            self.metadata(f"{kind} {obj.location}: {slot} {value!r} is {problem}", obj.location)

    def codes(
        self, kind: str, obj: RegistryObject, scheme: str, attribute: str, *, low: int, high: int
    ) -> None:
        found = obj.classified(scheme)
        if len(found) < low:
            self.required(kind, obj, attribute)
        elif len(found) > high:
            self.metadata(f"{kind} {obj.location}: {attribute} has one value", obj.location)
        for c in found:
            if not c.node_representation:
                self.metadata(
                    f"{kind} {obj.location}: {attribute} {c.location} has no code "
                    "(nodeRepresentation; ITI TF-3 4.2.3.1.2)",
                    obj.location,
                )
            schemes = c.slot(SlotName.CODING_SCHEME)
            if not schemes or len(schemes) != 1 or not schemes[0]:
                self.metadata(
                    f"{kind} {obj.location}: {attribute} {c.location} needs one codingScheme "
                    "(ITI TF-3 4.2.3.1.2)",
                    obj.location,
                )

    def authors(self, kind: str, obj: RegistryObject, scheme: str) -> None:
        for c in obj.classified(scheme):
            persons = c.slot(SlotName.AUTHOR_PERSON) or ()
            if len(persons) > 1:
                self.metadata(
                    f"{kind} {obj.location}: author {c.location} has more than one authorPerson",
                    obj.location,
                )
            author = c.author
            if not (author.person or author.institutions or author.telecommunications):
                self.metadata(
                    f"{kind} {obj.location}: author {c.location} needs authorPerson, "
                    "authorInstitution or authorTelecommunication (ITI TF-3 4.2.3.1.4)",
                    obj.location,
                )

    def identifier(self, kind: str, obj: RegistryObject, scheme: str, attribute: str) -> str:
        found = obj.identifiers(scheme)
        if not found:
            self.required(kind, obj, attribute)
            return ""
        if len(found) > 1:
            self.metadata(f"{kind} {obj.location}: {attribute} has one value", obj.location)
        return found[0].value

    def oid(self, kind: str, obj: RegistryObject, attribute: str, value: str) -> None:
        if value and (problem := oid_problem(value)):
            self.metadata(
                f"{kind} {obj.location}: {attribute} {value!r} is {problem}", obj.location
            )

    def patient_id(self, kind: str, obj: RegistryObject, scheme: str) -> None:
        value = self.identifier(kind, obj, scheme, "patientId")
        if not value:
            return
        try:
            PatientId.parse(value)
        except ValueError as exc:
            self.metadata(
                f"{kind} {obj.location}: patientId {value!r}: {exc} (ITI TF-3 4.2.3.1.7)",
                obj.location,
            )

    def no_limited_metadata(self, kind: str, obj: RegistryObject, scheme: str) -> None:
        if obj.classified(scheme):
            self.metadata(
                f"{kind} {obj.location}: limitedMetadata is not allowed in XDS ({_TABLE})",
                obj.location,
            )

    def document_entry(self, e: DocumentEntry) -> None:
        kind, s = "DocumentEntry", DocumentEntryScheme
        if e.object_type != STABLE_DOCUMENT_ENTRY:
            self.metadata(
                f"DocumentEntry {e.location}: objectType {e.object_type!r} is not a Stable "
                f"DocumentEntry ({STABLE_DOCUMENT_ENTRY}; ITI TF-3 4.2.3.2.16)",
                e.location,
            )
        if not e.mime_type:
            self.required(kind, e, "mimeType")
        for scheme, attribute in (
            (s.CLASS_CODE, "classCode"),
            (s.TYPE_CODE, "typeCode"),
            (s.FORMAT_CODE, "formatCode"),
            (s.HEALTHCARE_FACILITY_TYPE_CODE, "healthcareFacilityTypeCode"),
            (s.PRACTICE_SETTING_CODE, "practiceSettingCode"),
        ):
            self.codes(kind, e, scheme, attribute, low=1, high=1)
        self.codes(kind, e, s.CONFIDENTIALITY_CODE, "confidentialityCode", low=1, high=10**6)
        self.codes(kind, e, s.EVENT_CODE, "eventCodeList", low=0, high=10**6)
        self.authors(kind, e, s.AUTHOR)
        self.no_limited_metadata(kind, e, s.LIMITED_METADATA)
        self.dtm(kind, e, SlotName.CREATION_TIME, required=True)
        self.dtm(kind, e, SlotName.SERVICE_START_TIME, required=False)
        self.dtm(kind, e, SlotName.SERVICE_STOP_TIME, required=False)
        language = self.single(kind, e, SlotName.LANGUAGE_CODE, required=True)
        if language is not None and not _LANGUAGE_RE.match(language):
            self.metadata(f"DocumentEntry {e.location}: languageCode {language!r}", e.location)
        self.single(kind, e, SlotName.SOURCE_PATIENT_ID, required=True)
        # Added by the Document Repository (ITI TF-2b 3.41.4.1.3), required of ITI-42.
        digest = self.single(kind, e, SlotName.HASH, required=True)
        if digest is not None and not _HASH_RE.match(digest):
            self.metadata(
                f"DocumentEntry {e.location}: hash {digest!r} is not a SHA-1 in hex "
                "(ITI TF-3 4.2.3.2.11)",
                e.location,
            )
        size = self.single(kind, e, SlotName.SIZE, required=True)
        if size is not None and not (size.isdigit() and size.isascii()):
            self.metadata(f"DocumentEntry {e.location}: size {size!r} is not a number", e.location)
        repository = self.single(kind, e, SlotName.REPOSITORY_UNIQUE_ID, required=True)
        self.oid(kind, e, "repositoryUniqueId", repository or "")
        availability = self.single(kind, e, SlotName.DOCUMENT_AVAILABILITY, required=False)
        if availability is not None and availability not in {a.value for a in DocumentAvailability}:
            self.metadata(
                f"DocumentEntry {e.location}: documentAvailability {availability!r} "
                "(ITI TF-3 4.2.3.2.5)",
                e.location,
            )
        for value in e.reference_ids:
            parts = value.split("^")
            if not parts[0] or len(parts) < 5 or not parts[4]:
                self.metadata(
                    f"DocumentEntry {e.location}: referenceIdList value {value!r} is not a CXi "
                    "with id and type (ITI TF-3 4.2.3.2.28)",
                    e.location,
                )
        self.patient_id(kind, e, s.PATIENT_ID)
        unique_id = self.identifier(kind, e, s.UNIQUE_ID, "uniqueId")
        if unique_id:
            root = unique_id.split("^", 1)[0]
            if len(unique_id) > DOCUMENT_UNIQUE_ID_LENGTH:
                self.metadata(
                    f"DocumentEntry {e.location}: uniqueId longer than "
                    f"{DOCUMENT_UNIQUE_ID_LENGTH} (ITI TF-3 4.2.3.2.26)",
                    e.location,
                )
            self.oid(kind, e, "uniqueId", root)

    def submission_set(self, ss: SubmissionSet) -> None:
        kind, s = "SubmissionSet", SubmissionSetScheme
        self.dtm(kind, ss, SlotName.SUBMISSION_TIME, required=True)
        self.codes(kind, ss, s.CONTENT_TYPE_CODE, "contentTypeCode", low=1, high=1)
        self.authors(kind, ss, s.AUTHOR)
        self.no_limited_metadata(kind, ss, s.LIMITED_METADATA)
        self.oid(kind, ss, "sourceId", self.identifier(kind, ss, s.SOURCE_ID, "sourceId"))
        self.oid(kind, ss, "uniqueId", self.identifier(kind, ss, s.UNIQUE_ID, "uniqueId"))
        self.patient_id(kind, ss, s.PATIENT_ID)

    def folder(self, f: Folder) -> None:
        kind, s = "Folder", FolderScheme
        self.codes(kind, f, s.CODE_LIST, "codeList", low=1, high=10**6)
        self.no_limited_metadata(kind, f, s.LIMITED_METADATA)
        self.oid(kind, f, "uniqueId", self.identifier(kind, f, s.UNIQUE_ID, "uniqueId"))
        self.patient_id(kind, f, s.PATIENT_ID)

    def long_names(self, obj: RegistryObject) -> None:
        """ebRIM LongName (rim.xsd): also for objects built in code, not schema-checked."""
        values: list[str] = [obj.mime_type] if isinstance(obj, DocumentEntry) else []
        values += [v for slot in obj.slots for v in slot.values]
        for c in obj.classifications:
            values += [c.node_representation, *(v for slot in c.slots for v in slot.values)]
        values += [e.value for e in obj.external_identifiers]
        if any(len(value) > LONG_NAME_LENGTH for value in values):
            self.metadata(
                f"{obj.kind.value} {obj.location}: a value longer than {LONG_NAME_LENGTH} "
                "characters (ebRIM LongName)",
                obj.location,
            )

    def unique_ids_in_message(self) -> None:
        seen: dict[str, str] = {}
        for obj in self.submission.objects:
            uid = _unique_id(obj)
            if not uid:
                continue
            if uid in seen:
                self.error(
                    ErrorCode.DUPLICATE_UNIQUE_ID_IN_MESSAGE,
                    f"uniqueId {uid} of {obj.location} is also the uniqueId of {seen[uid]}",
                    obj.location,
                )
            else:
                seen[uid] = obj.location

    # --- patient (ITI TF-2b 3.42.4.1.3) ---

    def patients(self) -> None:
        subset = self.submission.submission_set
        expected = subset.patient if subset else None
        if expected is None:
            return
        for obj in (*self.submission.document_entries, *self.submission.folders):
            found = _patient(obj)
            if found is not None and found != expected:
                self.error(
                    ErrorCode.PATIENT_ID_DOES_NOT_MATCH,
                    f"patientId {found} of {obj.kind.value} {obj.location} is not the "
                    f"SubmissionSet's {expected}",
                    obj.location,
                )

    def known_patient(self) -> None:
        subset = self.submission.submission_set
        expected = subset.patient if subset else None
        if subset is None or expected is None:
            return
        if expected.authority in self.trusted or self.repository.patient_known(expected):
            return
        self.error(
            ErrorCode.UNKNOWN_PATIENT_ID,
            f"patientId {expected} is not known to the registry",
            subset.location,
        )

    def membership(self) -> None:
        """Every DocumentEntry and Folder is a member of the SubmissionSet (4.2.2.1)."""
        subset = self.submission.submission_set
        if subset is None:
            return
        members = {
            a.target_object
            for a in self.submission.associations
            if a.type is AssociationType.HAS_MEMBER and a.source_object == subset.id
        }
        for obj in (*self.submission.document_entries, *self.submission.folders):
            if obj.id not in members:
                self.metadata(
                    f"{obj.kind.value} {obj.location} is not a member (HasMember) of the "
                    "SubmissionSet (ITI TF-3 4.2.2.1)",
                    obj.location,
                )

    # --- against the registry ---

    def registered_ids(self) -> None:
        taken = self.repository.find(obj.id for obj in self.submission.objects)
        for ident in sorted(taken):
            self.metadata(f"entryUUID {ident} is already registered", self.name(ident))

    def registered_unique_ids(self, unique_ids: set[str]) -> None:
        stored: dict[str, list[RegisteredObject]] = defaultdict(list)
        for found in self.repository.find_by_unique_ids(unique_ids):
            if found.unique_id:
                stored[found.unique_id].append(found)
        for obj in self.submission.objects:
            uid = _unique_id(obj)
            if not uid or uid not in stored:
                continue
            others = stored[uid]
            if not isinstance(obj, DocumentEntry):
                self.error(
                    ErrorCode.DUPLICATE_UNIQUE_ID_IN_REGISTRY,
                    f"{obj.kind.value} uniqueId {uid} is already registered",
                    obj.location,
                )
            elif any(o.kind is not ObjectKind.DOCUMENT_ENTRY for o in others):
                self.metadata(
                    f"uniqueId {uid} of DocumentEntry {obj.location} is registered for a "
                    f"{others[0].kind.value}",
                    obj.location,
                )
            elif any((o.hash or "").lower() != obj.hash.lower() for o in others):
                self.error(
                    ErrorCode.NON_IDENTICAL_HASH,
                    f"uniqueId {uid} is registered with another hash",
                    obj.location,
                )
            elif any(o.size != obj.size for o in others):
                self.error(
                    ErrorCode.NON_IDENTICAL_SIZE,
                    f"uniqueId {uid} is registered with another size",
                    obj.location,
                )

    def associations(self) -> None:
        refs = {
            ref
            for a in self.submission.associations
            for ref in (a.source_object, a.target_object)
            if ref not in self.by_id and ref.startswith(_UUID_PREFIX)
        }
        registered = self.repository.find(refs)
        if registered:
            patients = {o.patient for o in registered.values() if o.patient is not None}
            patients |= {p for o in self.submission.objects if (p := _patient(o)) is not None}
            self.current = self.survivors(patients)
        replaced: dict[str, Association] = {}
        for a in self.submission.associations:
            kind = a.type
            if kind is None:
                self.metadata(
                    f"Association {a.location}: associationType {a.association_type!r} is "
                    "not one of ITI TF-3 Table 4.2.2-1",
                    a.location,
                )
                continue
            if a.id in (a.source_object, a.target_object) or a.source_object == a.target_object:
                self.metadata(
                    f"Association {a.location} ({kind.name}) associates an object with itself",
                    a.location,
                )
                continue
            source = self.node(a, a.source_object, a.symbolic_source, "sourceObject", registered)
            target = self.node(a, a.target_object, a.symbolic_target, "targetObject", registered)
            if source is None or target is None:
                continue
            if kind is AssociationType.HAS_MEMBER:
                self.has_member(a, source, target)
            else:
                self.relationship(a, kind, source, target)
                if kind in REPLACEMENT_TYPES:
                    if a.target_object in replaced:
                        self.metadata(
                            f"Association {a.location}: {target.location} is already replaced "
                            f"by Association {replaced[a.target_object].location}",
                            a.location,
                        )
                    replaced[a.target_object] = a
        self.replaced = {target: a.source_object for target, a in replaced.items()}

    def node(
        self,
        a: Association,
        ref: str,
        symbolic: str,
        role: str,
        registered: dict[str, RegisteredObject],
    ) -> _Node | None:
        obj = self.by_id.get(ref)
        if obj is not None:
            return _Node(obj.kind, _patient(obj), AvailabilityStatus.APPROVED, True, obj.location)
        if not ref.startswith(_UUID_PREFIX):
            self.metadata(
                f"Association {a.location}: {role} {symbolic or ref} is no object of the "
                "submission",
                a.location,
            )
            return None
        stored = registered.get(ref)
        if stored is None:
            self.error(
                ErrorCode.UNRESOLVED_REFERENCE,
                f"Association {a.location}: {role} {ref} is neither in the submission nor "
                "registered",
                a.location,
            )
            return None
        return _Node(stored.kind, stored.patient, stored.status, False, ref)

    def same_patient(self, a: Association, source: _Node, target: _Node) -> None:
        """Both ends are of one patient, as identified now (module docstring)."""
        if source.patient is None or target.patient is None:
            return
        now = self.current.get(source.patient, source.patient)
        if now != self.current.get(target.patient, target.patient):
            self.error(
                ErrorCode.PATIENT_ID_DOES_NOT_MATCH,
                f"Association {a.location} links {source.location} of patient "
                f"{source.patient} with {target.location} of patient {target.patient}",
                a.location,
            )

    def not_deprecated(self, a: Association, node: _Node) -> bool:
        if node.status is AvailabilityStatus.APPROVED:
            return True
        code = (
            ErrorCode.DEPRECATED_DOCUMENT
            if node.kind is ObjectKind.DOCUMENT_ENTRY
            else ErrorCode.REGISTRY_METADATA_ERROR
        )
        self.error(
            code,
            f"Association {a.location} references {node.kind.value} {node.location}, "
            "which is Deprecated",
            a.location,
        )
        return False

    def has_member(self, a: Association, source: _Node, target: _Node) -> None:
        """HasMember (ITI TF-3 4.2.2.1)."""
        subset = self.submission.submission_set
        if source.kind is ObjectKind.SUBMISSION_SET:
            if not source.in_submission or subset is None or a.source_object != subset.id:
                self.metadata(
                    f"Association {a.location}: HasMember from a SubmissionSet other than "
                    "the submission's",
                    a.location,
                )
                return
            if target.kind is ObjectKind.SUBMISSION_SET:
                self.metadata(
                    f"Association {a.location}: a SubmissionSet is no member of another",
                    a.location,
                )
                return
            if target.kind is ObjectKind.DOCUMENT_ENTRY:
                status = a.submission_set_status
                expected = ORIGINAL if target.in_submission else REFERENCE
                if status not in (ORIGINAL, REFERENCE):
                    self.metadata(
                        f"Association {a.location}: SubmissionSetStatus {expected} is required "
                        "on HasMember from the SubmissionSet to a DocumentEntry (ITI TF-3 "
                        "4.2.2.1.2)",
                        a.location,
                    )
        elif source.kind is ObjectKind.FOLDER:
            if target.kind is not ObjectKind.DOCUMENT_ENTRY:
                self.metadata(
                    f"Association {a.location}: a Folder's members are DocumentEntries",
                    a.location,
                )
                return
            if not source.in_submission:
                self.existing_folders_touched.add(a.source_object)
        else:
            self.metadata(
                f"Association {a.location}: HasMember from a {source.kind.value}; only from "
                "the SubmissionSet or a Folder",
                a.location,
            )
            return
        if not (self.not_deprecated(a, source) and self.not_deprecated(a, target)):
            return
        if target.kind is not ObjectKind.ASSOCIATION:
            self.same_patient(a, source, target)

    def relationship(
        self, a: Association, kind: AssociationType, source: _Node, target: _Node
    ) -> None:
        """Document relationships (ITI TF-3 4.2.2.2)."""
        if source.kind is not ObjectKind.DOCUMENT_ENTRY or not source.in_submission:
            self.metadata(
                f"Association {a.location}: the source of {kind.name} is a DocumentEntry of "
                "the submission",
                a.location,
            )
            return
        if target.kind is not ObjectKind.DOCUMENT_ENTRY:
            self.metadata(
                f"Association {a.location}: the target of {kind.name} is a DocumentEntry",
                a.location,
            )
            return
        if target.in_submission and kind is not AssociationType.SIGNS:
            self.metadata(
                f"Association {a.location}: the target of {kind.name} is a DocumentEntry "
                "already registered",
                a.location,
            )
            return
        if kind is AssociationType.IS_SNAPSHOT_OF:
            # The registry holds Stable entries only (On-Demand ones come by ITI-61).
            self.metadata(
                f"Association {a.location}: the target of IsSnapshotOf is an On-Demand "
                "DocumentEntry; this registry holds none",
                a.location,
            )
            return
        if self.not_deprecated(a, target):
            self.same_patient(a, source, target)


def _unique_id(obj: RegistryObject) -> str:
    if isinstance(obj, DocumentEntry | SubmissionSet | Folder):
        return obj.unique_id
    return ""
