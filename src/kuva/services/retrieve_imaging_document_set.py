"""Retrieve Imaging Document Set (RAD-69, RAD TF-3 4.69), the Imaging Document
Source's retrieve side: each requested document is one stored instance, named by
Study, Series and SOP Instance UID (DocumentUniqueId) at this source's
RepositoryUniqueId (the Retrieve Location UID of the manifest). It goes out
through the retrieve service (the coercion step of every outgoing object) in the
first transfer syntax of the request's list that kuva can send it in: as stored
when that one is listed, else converted (kuva.codec.transcode, lossless
targets only), or an error (RAD TF-3 4.69.4.2.3). The outcome follows ITI-43,
whose semantics RAD-69 inherits (RAD TF-3 4.69.4.2.2; ITI TF-2b 3.43.4.2.3):
Success, PartialSuccess with an error per document not returned, or Failure.

Error codes: RAD TF-3 4.69.4.2.3 refers to the ITI-43 list (ITI TF-3 Table
4.2.4.1-2) and names none of its own; the codes below are those the NIST XDS
Toolkit's RAD-69 exception test ids_2018-4811 expects, where it tests the case:

* a malformed request: blank or malformed Study/Series Instance UID or
  DocumentUniqueId, no transfer syntax - ``XDSIRequestError``, the whole request
  fails (the toolkit's RAD-69 request validator; cases 5-7; case 8, an empty
  transfer syntax, asserts Failure only);
* RepositoryUniqueId not this source - ``XDSUnknownRepositoryId`` (case 1);
* HomeCommunityId given and not kuva's - ``XDSUnknownCommunity``;
* no such instance, or not in the requested series and study -
  ``XDSDocumentUniqueIdError`` ("the document associated with the uniqueId is
  not available"; cases 2-4);
* not available in any requested transfer syntax, or its blob unreadable -
  ``XDSRepositoryError`` (case 9).

Every error's location is the DocumentUniqueId it concerns (RAD TF-3 4.69.5).

Documents are produced lazily: a returned document carries a callable that
reads (and, when needed, converts) the object only when the response is written,
one object in memory at a time at most. A failure at that point (a codec
error, a blob that vanished) can no longer change the response status: it is
logged and raised to the transport, which has to abort the response.

Before the result is handed back, the disclosures among the returned instances
(to another organisation than their register holder, or to an unknown one) are
recorded in one transaction (kuva.services.disclosure); if that fails, nothing is
returned. JPIP transfer syntaxes (RAD TF-3 4.69.4.2.3) are never chosen, as kuva
cannot convert to them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from pydicom.uid import UID

from kuva.codec.outgoing import encoded
from kuva.codec.transcode import TranscodeError, choose
from kuva.config import Settings
from kuva.index.instances import StoredInstance
from kuva.model.access import AccessScope
from kuva.model.query import QueryLevel
from kuva.model.uids import uid_problem
from kuva.model.xds import ErrorCode, RegistryError, ResponseStatus, status_of
from kuva.model.xua import RequestingUser
from kuva.services.access import AccessPolicy, basis_text
from kuva.services.audit import SentStudy
from kuva.services.disclosure import UNKNOWN_RECIPIENT, DisclosureLog, Handout, Interface
from kuva.services.manifest_metadata import DICOM_MIME_TYPE
from kuva.services.retrieve import MAX_MATCHES, RetrieveService, StoredObject

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DocumentRequest:
    """One DocumentRequest of a SeriesRequest of a StudyRequest (RAD TF-3 4.69.4.1.2)."""

    study_instance_uid: str
    series_instance_uid: str
    repository_unique_id: str
    document_unique_id: str  # the SOP Instance UID
    home_community_id: str | None = None


@dataclass(frozen=True)
class ImagingDocumentSetRequest:
    documents: tuple[DocumentRequest, ...]
    transfer_syntax_uids: tuple[str, ...]  # the consumer's, in its order of preference


@dataclass(frozen=True)
class ImagingDocument:
    """A returned document: one instance, as it is to go out.

    ``chunks``: called once, when the response is written; reads (and converts)
    the object then. ``length``: known when the stored bytes go out unchanged.
    ``register_holder``: the organisation that archived it (for the disclosure log).
    """

    repository_unique_id: str
    document_unique_id: str
    home_community_id: str | None
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    register_holder: str
    chunks: Callable[[], Iterator[bytes]]
    length: int | None = None
    mime_type: str = DICOM_MIME_TYPE
    sop_class_uid: str = ""


@dataclass(frozen=True)
class ImagingDocumentSetResult:
    status: ResponseStatus
    errors: tuple[RegistryError, ...] = ()
    documents: tuple[ImagingDocument, ...] = field(default=())


def request_errors(request: ImagingDocumentSetRequest) -> list[RegistryError]:
    """What makes a request malformed (XDSIRequestError), RAD TF-3 4.69.4.1.2."""
    errors: list[RegistryError] = []
    if not request.documents:
        errors.append(
            RegistryError(ErrorCode.IMAGING_REQUEST_ERROR, "no DocumentRequest in the request")
        )
    for document in request.documents:
        location = document.document_unique_id
        for name, value in (
            ("studyInstanceUID", document.study_instance_uid),
            ("seriesInstanceUID", document.series_instance_uid),
            ("DocumentUniqueId", document.document_unique_id),
        ):
            problem = uid_problem(value)
            if problem is not None:
                errors.append(
                    RegistryError(ErrorCode.IMAGING_REQUEST_ERROR, f"{name} {problem}", location)
                )
        if not document.repository_unique_id:
            errors.append(
                RegistryError(
                    ErrorCode.IMAGING_REQUEST_ERROR, "RepositoryUniqueId missing", location
                )
            )
    if not any(request.transfer_syntax_uids):
        errors.append(
            RegistryError(ErrorCode.IMAGING_REQUEST_ERROR, "no TransferSyntaxUID in the request")
        )
    return errors


def _target(stored: str, requested: tuple[str, ...]) -> UID | None:
    """The first requested transfer syntax the object can go out in (as stored or converted)."""
    for syntax in requested:
        if syntax and choose(stored, [syntax]) is not None:
            return UID(syntax)
    return None


def _chunks(obj: StoredObject, target: UID) -> Iterator[bytes]:
    try:
        chunks, _ = encoded(obj, target)
        yield from chunks
    except (OSError, TranscodeError) as exc:
        log.error(
            "RAD-69: instance %s could not be sent as %s: %s",
            obj.instance.sop_instance_uid,
            target,
            exc,
        )
        raise


def own_studies(result: ImagingDocumentSetResult, organization: str) -> list[SentStudy]:
    """What the result hands ``organization`` of its own (not disclosures), by study:
    the register holder's retrieve, audited as 110104 (services.audit)."""
    studies: dict[str, dict[str, int]] = {}
    for document in result.documents:
        if organization and document.register_holder == organization:
            counts = studies.setdefault(document.study_instance_uid, {})
            counts[document.sop_class_uid] = counts.get(document.sop_class_uid, 0) + 1
    return [SentStudy(uid, counts) for uid, counts in studies.items()]


class ImagingDocumentSetRetrieval:
    """RAD-69 at the Imaging Document Source whose unique id is
    ``[xds] imaging_source_unique_id``; its disclosures go to ``disclosures``."""

    def __init__(
        self,
        retrieve: RetrieveService,
        settings: Settings,
        disclosures: DisclosureLog,
        *,
        access: AccessPolicy | None = None,
    ) -> None:
        self._retrieve = retrieve
        self._settings = settings
        self._disclosures = disclosures
        # The access rules the adapter asks for each requester's scope.
        self.access = access

    @property
    def unique_id(self) -> str:
        """The Imaging Document Source's id: RAD-69's RepositoryUniqueId."""
        return self._settings.xds.imaging_source_unique_id

    def retrieve(
        self,
        request: ImagingDocumentSetRequest,
        *,
        recipient: str = UNKNOWN_RECIPIENT,
        scope: AccessScope | None = None,
        user: RequestingUser | None = None,
    ) -> ImagingDocumentSetResult:
        """Answer a Retrieve Imaging Document Set request (RAD TF-3 4.69.4.2) for
        ``recipient`` (the requesting organisation, "" = unknown) and ``user`` (a
        verified XUA assertion's person, model.xua), its disclosures recorded.
        ``scope``: what the requester may read (services.access; None = all); an
        instance it may not read is answered as not found."""
        problems = request_errors(request)
        if problems:
            return ImagingDocumentSetResult(ResponseStatus.FAILURE, tuple(problems))
        addressing = [self._addressing_error(document) for document in request.documents]
        found = self._stored(
            {
                document.document_unique_id
                for document, error in zip(request.documents, addressing, strict=True)
                if error is None
            },
            scope,
        )
        errors: list[RegistryError] = []
        documents: list[ImagingDocument] = []
        for document, error in zip(request.documents, addressing, strict=True):
            outcome = error or self._document(
                document, found.get(document.document_unique_id), request
            )
            if isinstance(outcome, RegistryError):
                errors.append(outcome)
            else:
                documents.append(outcome)
        if documents and not self._disclosed(recipient, documents, scope, user):
            errors.extend(
                RegistryError(
                    ErrorCode.REPOSITORY_ERROR,
                    "the instance cannot be handed out now (internal error)",
                    document.document_unique_id,
                )
                for document in documents
            )
            documents = []
        status = status_of(errors, partial=bool(documents))
        log.info(
            "RAD-69: %d of %d documents returned (%s)",
            len(documents),
            len(request.documents),
            status.name,
        )
        return ImagingDocumentSetResult(status, tuple(errors), tuple(documents))

    def _disclosed(
        self,
        recipient: str,
        documents: list[ImagingDocument],
        scope: AccessScope | None,
        user: RequestingUser | None,
    ) -> bool:
        """Record the disclosures among ``documents``; False when that failed."""
        try:
            self._disclosures.record(
                recipient,
                [
                    Handout(
                        document_unique_id=document.document_unique_id,
                        register_holder=document.register_holder,
                        study_instance_uid=document.study_instance_uid,
                        basis=basis_text(scope, document.register_holder),
                    )
                    for document in documents
                ],
                Interface.RAD_69,
                user=user,
            )
        except Exception as exc:
            # Database errors quote their parameters (patient ids): DEBUG only.
            log.error("RAD-69: the disclosure log could not be written: %s", type(exc).__name__)
            log.debug("RAD-69 disclosure failure", exc_info=True)
            return False
        return True

    def _addressing_error(self, document: DocumentRequest) -> RegistryError | None:
        location = document.document_unique_id
        home = document.home_community_id
        if home and home != self._settings.xds.home_community_id:
            return RegistryError(
                ErrorCode.UNKNOWN_COMMUNITY, f"unknown homeCommunityId {home}", location
            )
        if document.repository_unique_id != self.unique_id:
            return RegistryError(
                ErrorCode.UNKNOWN_REPOSITORY,
                f"RepositoryUniqueId {document.repository_unique_id} is not this "
                f"Imaging Document Source ({self.unique_id})",
                location,
            )
        return None

    def _stored(
        self, sop_uids: set[str], scope: AccessScope | None = None
    ) -> dict[str, StoredInstance]:
        """The stored instances among ``sop_uids`` that ``scope`` may read, by SOP
        Instance UID."""
        ordered = sorted(sop_uids)
        found: dict[str, StoredInstance] = {}
        for start in range(0, len(ordered), MAX_MATCHES):
            chunk = ordered[start : start + MAX_MATCHES]
            for stored in self._retrieve.resolve(
                QueryLevel.IMAGE, {"SOPInstanceUID": chunk}, scope=scope
            ):
                found[stored.sop_instance_uid] = stored
        missing = [uid for uid in ordered if uid not in found]
        if missing and scope is not None and not scope.unrestricted:
            # Answered as not found; audited when they exist (the rules withheld them).
            withheld = self._retrieve.resolve(
                QueryLevel.IMAGE, {"SOPInstanceUID": missing[:MAX_MATCHES]}
            )
            if withheld:
                what = withheld[0].sop_instance_uid + (
                    f" (+{len(withheld) - 1})" if len(withheld) > 1 else ""
                )
                self._retrieve.access_refused(scope, what, Interface.RAD_69)
        return found

    def _document(
        self,
        document: DocumentRequest,
        stored: StoredInstance | None,
        request: ImagingDocumentSetRequest,
    ) -> ImagingDocument | RegistryError:
        location = document.document_unique_id
        if stored is None:
            return RegistryError(
                ErrorCode.DOCUMENT_UNIQUE_ID_ERROR,
                f"no instance {location} at this source",
                location,
            )
        if (stored.study_instance_uid, stored.series_instance_uid) != (
            document.study_instance_uid,
            document.series_instance_uid,
        ):
            return RegistryError(
                ErrorCode.DOCUMENT_UNIQUE_ID_ERROR,
                f"instance {location} is not in series {document.series_instance_uid} "
                f"of study {document.study_instance_uid}",
                location,
            )
        target = _target(stored.transfer_syntax_uid, request.transfer_syntax_uids)
        if target is None:
            return RegistryError(
                ErrorCode.REPOSITORY_ERROR,
                f"instance {location} is stored as {stored.transfer_syntax_uid} and cannot "
                f"be sent in any requested transfer syntax "
                f"({', '.join(s for s in request.transfer_syntax_uids if s)})",
                location,
            )
        obj = self._retrieve.open(stored)
        if obj.path is not None and not obj.path.is_file():
            log.error("RAD-69: the blob of instance %s is missing", location)
            return RegistryError(
                ErrorCode.REPOSITORY_ERROR, f"instance {location} cannot be read now", location
            )
        as_stored = obj.verbatim and target == stored.transfer_syntax_uid
        return ImagingDocument(
            repository_unique_id=document.repository_unique_id,
            document_unique_id=location,
            home_community_id=document.home_community_id,
            study_instance_uid=stored.study_instance_uid,
            series_instance_uid=stored.series_instance_uid,
            transfer_syntax_uid=target,
            register_holder=stored.organization_oid,
            chunks=lambda: _chunks(obj, target),
            length=stored.size if as_stored else None,
            sop_class_uid=stored.sop_class_uid,
        )
