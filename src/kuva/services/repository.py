"""The XDS.b Document Repository: Provide and Register Document Set-b [ITI-41] (also
RAD-68 from an outside Imaging Document Source) and Retrieve Document Set [ITI-43].

Provide and Register (ITI TF-2b 3.41.4.1.3): each ``xdsb:Document`` of the request
is the content of the DocumentEntry whose id (as submitted) it names. Checked
before anything is stored, with the codes of ITI TF-3 Table 4.2.4.1-2:

* a DocumentEntry without its Document - ``XDSMissingDocument``;
* a Document without its DocumentEntry - ``XDSMissingDocumentMetadata``;
* two Documents with one id, or a ``hash`` or ``size`` the submitter sent that
  is not the content's - ``XDSRepositoryMetadataError`` (ITI TF-2b 3.41.4.1.3:
  the repository adds hash, size and repositoryUniqueId and verifies values a
  Document Source sent). A ``repositoryUniqueId`` sent is replaced by kuva's.

Then every document is written to the blob store - content-addressed by SHA-256,
fsynced by the blob store's commit - and its SHA-1 (the ``hash`` slot, ITI TF-3
4.2.3.2.11) and size are set on its DocumentEntry with repositoryUniqueId
(``with_slots``, kuva.xds.ebrim). In ONE index transaction the registry registers
the submission (``RegistryService.register_within``: all of ITI-42's rules, so a
metadata error is answered with the registry's code) and the repository records a
row per document; it commits only when the registration succeeded. So the answer
is all or nothing: a refused submission leaves no document row and no registry
object. The blobs it wrote stay: they are content-addressed (the same bytes
sent again reuse them), referenced by nothing, and never served; removing such
orphans is a job for the retention / integrity tooling. Only after that commit is
Success answered (docs/design.md principle 2: blob fsync, then index commit, then the
answer).

A DocumentEntry uniqueId already held is a resubmission of the same document: the
registry accepts it only with the same hash and size (else XDSNonIdenticalHash /
XDSNonIdenticalSize), and the repository keeps its first row.

RAD-68 (RAD TF-3 4.68): a KOS manifest an outside Imaging Document Source
provides (mimeType application/dicom) is stored and served like any other
document, byte for byte as received. It is NOT ingested as a DICOM instance: it
describes images another source holds (its Retrieve Location UIDs point there),
its patient is in the sender's domain, and adding it to the study tree would make
kuva's DICOM interfaces list a study whose images kuva does not have.

Retrieve Document Set (ITI TF-2b 3.43.4.2.3), per DocumentRequest:

* HomeCommunityId given and not kuva's - ``XDSUnknownCommunity``;
* RepositoryUniqueId not this repository - ``XDSUnknownRepositoryId``;
* no document with that DocumentUniqueId - ``XDSDocumentUniqueIdError`` ("the
  document associated with the uniqueId is not available", ITI TF-3 Table
  4.2.4.1-2). The issue text names XDSMissingDocument, but that code is ITI-41's
  ("DocumentEntry exists in metadata with no corresponding attached document");
  RAD-69 answers the same case with XDSDocumentUniqueIdError too;
* its blob unreadable - ``XDSRepositoryError``.

Success when every document is returned, PartialSuccess when some are (each
missing one has its error, location = its DocumentUniqueId), Failure when none.
Returned documents carry a callable that streams the blob when the response is
written. Before the result is handed back, the disclosures among them are
recorded in one transaction (kuva.services.disclosure); if that fails, nothing
is returned.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial

from sqlalchemy import Engine

from kuva.index.repository import NewDocument, StoredDocument
from kuva.index.uow import UnitOfWork
from kuva.model.access import AccessScope
from kuva.model.clock import Clock, utcnow
from kuva.model.uids import is_valid_uid
from kuva.model.xds import (
    DocumentEntry,
    ErrorCode,
    PatientId,
    RegistryError,
    ResponseStatus,
    SlotName,
    Submission,
    status_of,
)
from kuva.model.xua import RequestingUser
from kuva.services.access import AccessPolicy, basis_text
from kuva.services.audit import AuditTrail
from kuva.services.disclosure import DisclosureLog, Handout, Interface
from kuva.services.registry import RegistryOutcome, RegistryService
from kuva.storage import BlobStore

log = logging.getLogger(__name__)


# referenceIdList id types (ITI TF-3 4.2.3.2.28, Table 4.2.3.2.28-1 / CP-ITI-1097).
ACCESSION_REFERENCE = "urn:ihe:iti:xds:2013:accession"
STUDY_INSTANCE_UID_REFERENCE = "urn:ihe:iti:xds:2016:studyInstanceUID"

SlotSetter = Callable[[DocumentEntry, Mapping[str, Sequence[str]]], DocumentEntry]


@dataclass(frozen=True)
class ProvidedDocument:
    """One ``xdsb:Document``: the id of its DocumentEntry (as submitted) and its bytes."""

    id: str
    content: bytes


@dataclass(frozen=True)
class ProvidedSubmission:
    """A Provide and Register request: the metadata and the documents."""

    submission: Submission
    documents: tuple[ProvidedDocument, ...]


@dataclass(frozen=True)
class StoredContent:
    """A document's bytes as stored: their blob, SHA-1 (hex), SHA-256 (hex) and size."""

    blob_key: str
    sha1: str
    sha256: str
    size: int


@dataclass(frozen=True)
class DocumentRequest:
    """One xdsb:DocumentRequest of ITI-43 (ITI TF-2b 3.43.4.1.2)."""

    repository_unique_id: str
    document_unique_id: str
    home_community_id: str | None = None


@dataclass(frozen=True)
class RetrievedDocument:
    """A document to return; ``chunks`` reads its blob when the response is written."""

    repository_unique_id: str
    document_unique_id: str
    home_community_id: str | None
    mime_type: str
    size: int
    register_holder: str
    chunks: Callable[[], Iterator[bytes]]


@dataclass(frozen=True)
class DocumentSetResult:
    status: ResponseStatus
    errors: tuple[RegistryError, ...] = ()
    documents: tuple[RetrievedDocument, ...] = ()


def study_instance_uid_of(reference_ids: Sequence[str]) -> str | None:
    """The Study Instance UID a referenceIdList names (``uid^^^^`` + its type), if any."""
    for value in reference_ids:
        parts = value.split("^")
        if len(parts) >= 5 and parts[4] == STUDY_INSTANCE_UID_REFERENCE and is_valid_uid(parts[0]):
            return parts[0]
    return None


def _error(code: str, context: str, location: str = "") -> RegistryError:
    return RegistryError(code, context, location)


class RepositoryService:
    """``with_slots``: sets slots on a DocumentEntry, in the model and in its stored
    ebRIM XML (kuva.xds.ebrim.with_slots). ``disclosures``: the disclosure log
    ITI-43 writes to."""

    def __init__(
        self,
        engine: Engine,
        blobs: BlobStore,
        registry: RegistryService,
        *,
        repository_unique_id: str,
        home_community_id: str,
        with_slots: SlotSetter,
        disclosures: DisclosureLog,
        clock: Clock = utcnow,
        access: AccessPolicy | None = None,
        audit: AuditTrail | None = None,
    ) -> None:
        self._engine = engine
        # The access rules the adapter asks for each requester's scope.
        self.access = access
        self._audit = audit
        self._blobs = blobs
        self._registry = registry
        self._unique_id = repository_unique_id
        self._home = home_community_id
        self._with_slots = with_slots
        self._disclosures = disclosures
        self._clock = clock

    @property
    def unique_id(self) -> str:
        """This repository's repositoryUniqueId (ITI TF-3 4.2.3.2.18)."""
        return self._unique_id

    # ------------------------------------------------------------------ ITI-41

    def provide_and_register(
        self, provided: ProvidedSubmission, *, organization_oid: str
    ) -> RegistryOutcome:
        """Provide and Register Document Set-b (ITI TF-2b 3.41.4.1.3), all or nothing.

        ``organization_oid``: the register holder the documents are stored for.
        Raises OSError when a blob cannot be written and database errors as they
        come; nothing is then registered.
        """
        contents, errors = _paired(provided)
        if errors:
            log.info("ITI-41 refused before storing: %d error(s)", len(errors))
            return RegistryOutcome(ResponseStatus.FAILURE, tuple(errors))
        stored = {entry_id: self.store_blob(content) for entry_id, content in contents.items()}
        with UnitOfWork(self._engine) as uow:
            outcome = self.register_within(
                uow, provided.submission, stored, organization_oid=organization_oid
            )
            if outcome.status is ResponseStatus.SUCCESS:
                uow.commit()
        if outcome.status is ResponseStatus.SUCCESS:
            log.info("ITI-41: %d document(s) stored and registered", len(stored))
        return outcome

    def store_blob(self, content: bytes) -> StoredContent:
        """Write ``content`` to the blob store, durably (the blob commit fsyncs)."""
        writer = self._blobs.open_writer()
        try:
            writer.write(content)
            ref = writer.commit()
        except BaseException:
            writer.discard()
            raise
        return StoredContent(ref.key, hashlib.sha1(content).hexdigest(), ref.sha256, ref.size)

    def register_within(
        self,
        uow: UnitOfWork,
        submission: Submission,
        contents: Mapping[str, StoredContent],
        *,
        organization_oid: str,
    ) -> RegistryOutcome:
        """Register ``submission`` and record its documents in the caller's unit of work.

        ``contents``: the stored bytes of every DocumentEntry, by its entryUUID.
        Each entry gets hash, size and repositoryUniqueId (ITI TF-2b 3.41.4.1.3);
        the rows are written only when the registration succeeds. On Failure the
        caller rolls back.
        """
        entries: list[DocumentEntry] = []
        for entry in submission.document_entries:
            content = contents[entry.id]
            entries.append(
                self._with_slots(
                    entry,
                    {
                        SlotName.HASH: [content.sha1],
                        SlotName.SIZE: [str(content.size)],
                        SlotName.REPOSITORY_UNIQUE_ID: [self._unique_id],
                    },
                )
            )
        submission = replace(submission, document_entries=tuple(entries))
        outcome = self._registry.register_within(uow, submission, organization_oid=organization_oid)
        if outcome.status is not ResponseStatus.SUCCESS:
            return outcome
        now = self._clock()
        for entry in entries:
            content = contents[entry.id]
            patient = entry.patient
            assert patient is not None  # the registry refuses an entry without one
            uow.documents.add(
                NewDocument(
                    unique_id=entry.unique_id,
                    repository_unique_id=self._unique_id,
                    mime_type=entry.mime_type,
                    size=content.size,
                    sha1=content.sha1,
                    sha256=content.sha256,
                    blob_key=content.blob_key,
                    organization_oid=organization_oid,
                    patient_id=patient.id,
                    patient_authority=patient.authority,
                    study_instance_uid=study_instance_uid_of(entry.reference_ids),
                    stored_at=now,
                )
            )
        return outcome

    # ------------------------------------------------------------------ ITI-43

    def retrieve_document_set(
        self,
        requests: Sequence[DocumentRequest],
        *,
        recipient: str,
        scope: AccessScope | None = None,
        user: RequestingUser | None = None,
    ) -> DocumentSetResult:
        """Retrieve Document Set (ITI TF-2b 3.43.4.2.3) for ``recipient`` (the
        requesting organisation, "" = unknown) and ``user`` (a verified XUA
        assertion's person, model.xua), its disclosures recorded.

        ``scope``: what the requester may read (services.access; None = all); a
        document it may not read is answered as unknown (XDSDocumentUniqueIdError)
        and audited as a refused access."""
        addressing = [self._addressing_error(request) for request in requests]
        wanted = {r.document_unique_id for r, e in zip(requests, addressing, strict=True) if not e}
        with UnitOfWork(self._engine, write=False) as uow:
            found = uow.documents.find(wanted) if wanted else {}
            # The disclosure names the patient as the index knows it now (a merge, HL7
            # A40, moves a document to the survivor; ITI TF-2b 3.44.4.2.4).
            current = uow.registry_query.survivors(
                PatientId(row.patient_id, row.patient_authority) for row in found.values()
            )
            if scope is not None and not scope.unrestricted:
                found = self._readable(uow, scope, found)
        errors: list[RegistryError] = []
        documents: list[RetrievedDocument] = []
        handouts: list[Handout] = []
        for request, error in zip(requests, addressing, strict=True):
            outcome = error or self._document(request, found.get(request.document_unique_id))
            if isinstance(outcome, RegistryError):
                errors.append(outcome)
                continue
            document, row = outcome
            documents.append(document)
            handouts.append(
                Handout(
                    document_unique_id=row.unique_id,
                    register_holder=row.organization_oid,
                    study_instance_uid=row.study_instance_uid,
                    patient=_current(current, row.patient_id, row.patient_authority),
                    basis=basis_text(scope, row.organization_oid),
                )
            )
        if documents:
            try:
                self._disclosures.record(recipient, handouts, Interface.ITI_43, user=user)
            except Exception as exc:
                # Database errors quote their parameters (patient ids): DEBUG only.
                log.error("ITI-43: the disclosure log could not be written: %s", type(exc).__name__)
                log.debug("ITI-43 disclosure failure", exc_info=True)
                errors.extend(
                    _error(
                        ErrorCode.REPOSITORY_ERROR,
                        "the document cannot be handed out now (internal error)",
                        document.document_unique_id,
                    )
                    for document in documents
                )
                documents = []
        status = status_of(errors, partial=bool(documents))
        log.info(
            "ITI-43: %d of %d documents returned (%s)", len(documents), len(requests), status.name
        )
        return DocumentSetResult(status, tuple(errors), tuple(documents))

    def _readable(
        self, uow: UnitOfWork, scope: AccessScope, found: dict[str, StoredDocument]
    ) -> dict[str, StoredDocument]:
        """The documents of ``found`` that ``scope`` may read; the others are
        audited as refused."""
        others = [row for row in found.values() if not scope.is_own(row.organization_oid)]
        prohibited = uow.prohibitions.prohibited(
            (row.patient_id, row.patient_authority) for row in others
        )
        refused = [
            row
            for row in others
            if not scope.readable(
                row.organization_oid,
                prohibited=(row.patient_id, row.patient_authority) in prohibited,
            )
        ]
        for row in refused:
            log.warning("ITI-43: document %s refused by the access rules", row.unique_id)
            if self._audit is not None:
                self._audit.access_refused(
                    scope.organization or "",
                    row.unique_id,
                    "ITI-43: the access rules do not allow this document to be read",
                )
        gone = {row.unique_id for row in refused}
        return {key: row for key, row in found.items() if row.unique_id not in gone}

    def _addressing_error(self, request: DocumentRequest) -> RegistryError | None:
        location = request.document_unique_id
        home = request.home_community_id
        if home and home != self._home:
            return _error(ErrorCode.UNKNOWN_COMMUNITY, f"unknown homeCommunityId {home}", location)
        if request.repository_unique_id != self._unique_id:
            return _error(
                ErrorCode.UNKNOWN_REPOSITORY,
                f"RepositoryUniqueId {request.repository_unique_id} is not this Document "
                f"Repository ({self._unique_id})",
                location,
            )
        return None

    def _document(
        self, request: DocumentRequest, row: StoredDocument | None
    ) -> tuple[RetrievedDocument, StoredDocument] | RegistryError:
        location = request.document_unique_id
        if row is None:
            return _error(
                ErrorCode.DOCUMENT_UNIQUE_ID_ERROR,
                f"no document {location} in this repository",
                location,
            )
        if not self._blobs.exists(row.blob_key):
            log.error("ITI-43: the blob of document %s is missing", location)
            return _error(
                ErrorCode.REPOSITORY_ERROR, f"document {location} cannot be read now", location
            )
        document = RetrievedDocument(
            repository_unique_id=row.repository_unique_id,
            document_unique_id=row.unique_id,
            home_community_id=request.home_community_id,
            mime_type=row.mime_type,
            size=row.size,
            register_holder=row.organization_oid,
            chunks=partial(self._blobs.iter_chunks, row.blob_key),
        )
        return document, row


def _paired(provided: ProvidedSubmission) -> tuple[dict[str, bytes], list[RegistryError]]:
    """Each DocumentEntry's content by its entryUUID, and what is wrong with the pairing
    of entries and Documents (ITI TF-2b 3.41.4.1.3)."""
    errors: list[RegistryError] = []
    by_id: dict[str, bytes] = {}
    for document in provided.documents:
        if document.id in by_id:
            errors.append(
                _error(
                    ErrorCode.REPOSITORY_METADATA_ERROR,
                    f"two Document elements with the id {document.id}",
                    document.id,
                )
            )
        by_id[document.id] = document.content
    contents: dict[str, bytes] = {}
    described: set[str] = set()
    for entry in provided.submission.document_entries:
        name = entry.symbolic_id or entry.id
        described.add(name)
        content = by_id.get(name)
        if content is None:
            errors.append(
                _error(
                    ErrorCode.MISSING_DOCUMENT,
                    f"DocumentEntry {name} has no Document in the request",
                    name,
                )
            )
            continue
        errors.extend(_submitted_values(entry, name, content))
        contents[entry.id] = content
    errors.extend(
        _error(
            ErrorCode.MISSING_DOCUMENT_METADATA,
            f"Document {document_id} has no DocumentEntry in the metadata",
            document_id,
        )
        for document_id in by_id
        if document_id not in described
    )
    return contents, errors


def _submitted_values(entry: DocumentEntry, name: str, content: bytes) -> list[RegistryError]:
    """A hash or size the Document Source sent must be the content's own."""
    errors: list[RegistryError] = []
    hashes = entry.slot(SlotName.HASH)
    if hashes is not None:
        actual = hashlib.sha1(content).hexdigest()
        if [value.lower() for value in hashes] != [actual]:
            errors.append(
                _error(
                    ErrorCode.REPOSITORY_METADATA_ERROR,
                    f"DocumentEntry {name}: hash {', '.join(hashes)!r} is not the SHA-1 of "
                    f"the document ({actual})",
                    name,
                )
            )
    sizes = entry.slot(SlotName.SIZE)
    if sizes is not None and list(sizes) != [str(len(content))]:
        errors.append(
            _error(
                ErrorCode.REPOSITORY_METADATA_ERROR,
                f"DocumentEntry {name}: size {', '.join(sizes)!r} is not the size of the "
                f"document ({len(content)} bytes)",
                name,
            )
        )
    return errors


def _current(
    survivors: dict[PatientId, PatientId], patient_id: str, authority: str
) -> tuple[str, str]:
    """A stored document's patient as it is now: its survivor when it was merged."""
    now = survivors.get(PatientId(patient_id, authority))
    return (now.id, now.authority) if now is not None else (patient_id, authority)
