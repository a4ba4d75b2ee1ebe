"""The XDS-I.b Imaging Document Source: a study's manifest, and RAD-69 retrieves.

Manifest (RAD TF-3 4.68.4.1.2.3): ``manifest_for_study`` builds the Key Object
Selection Document of a study from the index (kuva.dicom.kos); ``publish_manifest``
stores it as an instance of the study (through the ingest service, as any received
object) and, in one index transaction, records it as a document of kuva's Document
Repository (pointing at the instance's blob) and registers its DocumentEntry and
SubmissionSet (RAD-68 / ITI-41 semantics, done in-process) - see
``publish_manifest`` for the metadata and its defaults.

Retrieve Imaging Document Set (RAD-69, RAD TF-3 4.69): each requested document is
one stored instance, named by Study, Series and SOP Instance UID
(DocumentUniqueId) at this source's RepositoryUniqueId (the Retrieve Location UID
of the manifest). It goes out through the retrieve service (the coercion step of
every outgoing object) in the first transfer syntax of the request's list that
kuva can send it in: as stored when that one is listed, else converted
(kuva.dicom.transcode, lossless targets only), or an error (RAD TF-3 4.69.4.2.3).
The outcome follows ITI-43, whose semantics RAD-69 inherits (RAD TF-3 4.69.4.2.2;
ITI TF-2b 3.43.4.2.3): Success, PartialSuccess with an error per document not
returned, or Failure.

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

import hashlib
import io
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID
from sqlalchemy import Engine

from kuva.config import Settings
from kuva.dicom.kos import (
    KEY_OBJECT_SELECTION_DOCUMENT_STORAGE,
    ManifestError,
    ManifestInstance,
    ManifestStudy,
    build_manifest,
)
from kuva.dicom.outgoing import encoded
from kuva.dicom.part10 import Part10Rewriter, extract_attributes
from kuva.dicom.transcode import TranscodeError, choose
from kuva.index.instances import StoredInstance
from kuva.index.manifests import ListedInstance, StudyListing
from kuva.index.repository import StudyFacts
from kuva.index.uow import UnitOfWork
from kuva.model.access import AccessScope
from kuva.model.clock import Clock, utcnow
from kuva.model.instance import PatientAttributes
from kuva.model.local_time import study_offset, utc_dtm
from kuva.model.query import QueryLevel
from kuva.model.uids import made_by_kuva, new_uid, uid_problem
from kuva.model.xds import (
    ORIGINAL,
    AssociationType,
    Author,
    AvailabilityStatus,
    Code,
    ErrorCode,
    NewDocumentEntry,
    NewSubmissionSet,
    ObjectKind,
    PatientId,
    RegisteredObject,
    RegistryError,
    ResponseStatus,
    Submission,
    format_dtm,
    new_association,
    oid_problem,
    status_of,
)
from kuva.services.access import AccessPolicy, basis_text
from kuva.services.disclosure import UNKNOWN_RECIPIENT, DisclosureLog, Handout, Interface
from kuva.services.ingest import IncomingInstance, IngestService
from kuva.services.repository import (
    ACCESSION_REFERENCE,
    STUDY_INSTANCE_UID_REFERENCE,
    RepositoryService,
    StoredContent,
)
from kuva.services.retrieve import MAX_MATCHES, RetrieveService, StoredObject
from kuva.storage import blob_key

log = logging.getLogger(__name__)

DICOM_MIME_TYPE = "application/dicom"


# --- the manifest's DocumentEntry (publish_manifest) ---
#
# classCode, typeCode, practiceSettingCode and healthcareFacilityTypeCode are
# settings ([registration]); these are kuva's fixed choices. LOINC
# 2.16.840.1.113883.6.1, HL7 v3 Confidentiality 2.16.840.1.113883.5.25.
MANIFEST_CONFIDENTIALITY_CODE = Code("N", "2.16.840.1.113883.5.25", "normal")
MANIFEST_CONTENT_TYPE_CODE = Code("18726-0", "2.16.840.1.113883.6.1", "Radiology studies (set)")
MANIFEST_LANGUAGE_CODE = "fi-FI"
MANIFEST_TITLE = "XDS-I.b manifest"
# Fixed by XDS-I.b (RAD TF-3 4.68.4.1.2.3): the KOS SOP Class in the DICOM UID registry.
MANIFEST_FORMAT_CODE = Code(
    str(KEY_OBJECT_SELECTION_DOCUMENT_STORAGE),
    "1.2.840.10008.2.6.1",
    "Key Object Selection Document",
)
# eventCodeList: the study's modalities, DICOM CID 29 (coding scheme DCM).
MODALITY_CODING_SCHEME = "1.2.840.10008.2.16.4"
# instance.source_ae of stored manifests: where the object came from.
MANIFEST_SOURCE = "XDS-I.b"


class UnknownStudy(LookupError):
    """The index holds no study with the given Study Instance UID."""


class ManifestPublishError(Exception):
    """A study's manifest cannot be published; the message says why (no patient data)."""


@dataclass(frozen=True)
class PublishedManifest:
    """``entry_uuid``: the DocumentEntry registered; ``document_unique_id``: its
    uniqueId, the KOS's SOP Instance UID; ``replaced``: entryUUIDs of earlier
    manifests of the study it replaced (now Deprecated)."""

    entry_uuid: str
    document_unique_id: str
    submission_set_uuid: str
    study_instance_uid: str
    instances: int
    replaced: tuple[str, ...] = ()


def _patient_cx(patient: PatientAttributes) -> PatientId:
    """The study's patient as an XDS patient id (CX, ITI TF-3 4.2.3.1.7)."""
    problem = oid_problem(patient.issuer)
    if problem is not None:
        raise ManifestPublishError(
            f"the study's Issuer of Patient ID is {problem}: an XDS patient id needs an OID "
            "as its assigning authority (ITI TF-3 4.2.3.1.7)"
        )
    try:
        return PatientId.parse(str(PatientId(patient.patient_id, patient.issuer)))
    except ValueError as exc:
        reason = str(exc).split(" '", 1)[0]  # the message may quote the id
        raise ManifestPublishError(
            f"the study's Patient ID is not usable in XDS: {reason}"
        ) from exc


def _source_patient_info(patient: PatientAttributes, cx: PatientId) -> tuple[str, ...]:
    """sourcePatientInfo (ITI TF-3 4.2.3.2.24): PID-3, -5, -7 and -8 as known."""
    values = [f"PID-3|{cx}"]
    if patient.name:
        values.append(f"PID-5|{patient.name}")
    if patient.birth_date:
        values.append(f"PID-7|{patient.birth_date}")
    if patient.sex in ("M", "F", "O"):
        values.append(f"PID-8|{patient.sex}")
    return tuple(values)


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


@dataclass(frozen=True)
class ImagingDocumentSetResult:
    status: ResponseStatus
    errors: tuple[RegistryError, ...] = ()
    documents: tuple[ImagingDocument, ...] = field(default=())


def _listed_count(manifest: Dataset) -> int:
    """Instances a manifest lists (its Current Requested Procedure Evidence)."""
    return sum(
        len(series.ReferencedSOPSequence)
        for study in manifest.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
    )


def _is_kuva_kos(instance: ListedInstance) -> bool:
    """A Key Object Selection Document kuva made (a manifest or rejection note).

    A manifest lists the study's images, not earlier manifests of it.
    """
    return instance.sop_class_uid == KEY_OBJECT_SELECTION_DOCUMENT_STORAGE and (
        made_by_kuva(instance.sop_instance_uid)
    )


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


def deprecate_manifests(uow: UnitOfWork, study_uid: str) -> list[str]:
    """In ``uow``: the study's current kuva manifests Deprecated in the registry (the
    registry's own deprecation path, with none to replace them: every image was
    rejected, or the study is being destroyed, services.retention). Their
    entryUUIDs."""
    current = [m.entry_uuid for m in ImagingDocumentSource._current_manifests(uow, study_uid)]
    if current:
        uow.registry.set_status(current, AvailabilityStatus.DEPRECATED)
    return current


class ImagingDocumentSource:
    """``ingest`` and ``repository``: needed to publish manifests only.
    ``disclosures``: the disclosure log RAD-69 writes to (one on ``engine`` by default).
    """

    def __init__(
        self,
        engine: Engine,
        retrieve: RetrieveService,
        settings: Settings,
        *,
        ingest: IngestService | None = None,
        repository: RepositoryService | None = None,
        disclosures: DisclosureLog | None = None,
        clock: Clock = utcnow,
        access: AccessPolicy | None = None,
    ) -> None:
        self._engine = engine
        # The access rules the adapter asks for each requester's scope.
        self.access = access
        self._retrieve = retrieve
        self._settings = settings
        self._ingest = ingest
        self._repository = repository
        self._disclosures = disclosures or DisclosureLog(engine)
        self._clock = clock

    @property
    def unique_id(self) -> str:
        """This source's id: the manifests' Retrieve Location UID, RAD-69's RepositoryUniqueId."""
        return self._settings.xds.imaging_source_unique_id

    # ------------------------------------------------------------------ manifest

    def manifest_for_study(self, study_uid: str, *, now: datetime | None = None) -> Dataset:
        """The XDS-I.b manifest (KOS) of a study, listing every instance the index holds.

        Earlier kuva-made KOS of the study are not listed. Raises UnknownStudy,
        or kuva.dicom.kos.ManifestError when nothing is left to list. Rejected
        instances are to be left out by the caller.
        """
        with UnitOfWork(self._engine, write=False) as uow:
            listing = uow.manifests.study(study_uid)
        if listing is None:
            raise UnknownStudy(f"no study {study_uid}")
        return self._manifest(listing, now)

    def _manifest(
        self, listing: StudyListing, now: datetime | None, sop_uid: str | None = None
    ) -> Dataset:
        instances = [
            ManifestInstance(
                series_instance_uid=listed.series_instance_uid,
                sop_class_uid=listed.sop_class_uid,
                sop_instance_uid=listed.sop_instance_uid,
                has_pixel_data=listed.rows is not None,
            )
            for listed in listing.instances
            if not _is_kuva_kos(listed)
        ]
        base_url = self._settings.http.base_url
        return build_manifest(
            ManifestStudy(patient=listing.patient, study=listing.study, instances=instances),
            retrieve_ae_title=self._settings.dicom.ae_title,
            retrieve_location_uid=self.unique_id,
            retrieve_url=f"{base_url.rstrip('/')}/dicom-web" if base_url else None,
            now=now,
            offset=self._offset(listing, now),
            sop_instance_uid=sop_uid,
        )

    def _offset(self, listing: StudyListing, now: datetime | None) -> timezone:
        """The UTC offset of the study's dates and times: its own Timezone Offset
        From UTC, else ``[archive] local_time_zone``'s at the study's date."""
        study = listing.study
        return study_offset(
            study.study_date,
            study.study_time,
            listing.timezone_offset,
            self._settings.archive.zone(),
            now or self._clock(),
        )

    # ------------------------------------------------------------------ publishing

    def publish_manifest(
        self,
        study_uid: str,
        *,
        now: datetime | None = None,
        manifest_uid: str | None = None,
        within: Callable[[UnitOfWork, PublishedManifest], None] | None = None,
    ) -> PublishedManifest:
        """Publish the XDS-I.b manifest of a study (RAD TF-3 4.68, done in-process).

        1. The manifest (``manifest_for_study``) is stored as an instance of the
           study through the ingest service (blob fsynced, index row committed), for
           the study's register holder.
        2. In one index transaction: a Document Repository row for it (its uniqueId
           the KOS's SOP Instance UID, RAD TF-3 4.68.4.1.2.3; its bytes the
           instance's blob), and the registration of a DocumentEntry, a
           SubmissionSet and their HasMember association
           (``RepositoryService.register_within``: the registry's rules, all or
           nothing). An earlier kuva manifest of the study that is still Approved is
           replaced (RPLC, ITI TF-3 4.2.2.2.3): one current manifest per study. A
           replacement is of its original's patient as identified now (ITI TF-2b
           3.42.4.1.3, XDSPatientIdDoesNotMatch; services.registry): one registered
           for a patient since merged into the study's patient is replaced; one of
           a patient the study no longer belongs to (unlinked, or its identifier
           changed; services.patients) is Deprecated in the same transaction instead.

        The metadata (RAD TF-3 4.68.4.1.2.3; ITI TF-3 Table 4.3.1-3): patientId and
        sourcePatientId the study's Patient ID in CX form, its Issuer of Patient ID
        as the assigning authority (which must be an OID, else ManifestPublishError),
        sourcePatientInfo (PID-3, -5, -7, -8); mimeType application/dicom; formatCode
        the KOS SOP Class UID (1.2.840.10008.5.1.4.1.1.88.59, scheme
        1.2.840.10008.2.6.1); eventCodeList the study's modalities (DCM); referenceIdList
        the accession number (``urn:ihe:iti:xds:2013:accession``) and the Study
        Instance UID (``urn:ihe:iti:xds:2016:studyInstanceUID``); serviceStartTime the
        study date and time in UTC (ITI TF-3 4.2.3.2.19), read in the offset the
        manifest states (the study's own Timezone Offset From UTC, else
        ``[archive] local_time_zone`` at that date); creationTime and submissionTime
        now (UTC); author institution the register holder (XON); SubmissionSet
        sourceId this source's unique id. classCode, typeCode, practiceSettingCode
        and healthcareFacilityTypeCode are ``[registration]`` settings (an affinity
        domain's choice); confidentialityCode, languageCode and contentTypeCode the
        ``MANIFEST_*`` constants of this module.

        ``manifest_uid`` makes publishing safe to repeat (the registration task
        gives the same one on every attempt): the manifest gets this SOP Instance
        UID, and when an earlier attempt already stored it, that stored manifest is
        registered instead of a new one, so a crash or a refusal between the two
        steps leaves no second KOS behind. ``within`` runs inside the registering
        transaction, before its commit: work that must commit together with the
        registration (the registration pipeline schedules its IANs there).

        If the registration is refused, the stored instance stays in the study
        (objects are never deleted). Raises UnknownStudy or ManifestPublishError
        (also when there is nothing to list). Error messages carry no patient data.
        """
        if self._ingest is None or self._repository is None:
            raise RuntimeError("this Imaging Document Source is not set up to publish manifests")
        repository = self._repository
        now = now or self._clock()
        with UnitOfWork(self._engine, write=False) as uow:
            listing = uow.manifests.study(study_uid)
            facts = uow.documents.study_facts(study_uid)
        if listing is None or facts is None:
            raise UnknownStudy(f"no study {study_uid}")
        patient = _patient_cx(listing.patient)
        holder = facts.organization_oid
        stored = self._stored_manifest(manifest_uid) if manifest_uid else None
        if stored is not None:
            manifest, content = stored
            log.info("registering manifest %s stored by an earlier attempt", manifest_uid)
        else:
            try:
                manifest = self._manifest(listing, now, manifest_uid)
            except ManifestError as exc:
                raise ManifestPublishError(f"no manifest can be made: {exc}") from exc
            content = self._store_instance(manifest, holder)
        with UnitOfWork(self._engine) as uow:
            current = self._current_manifests(uow, study_uid)
            now_of = uow.registry_query.survivors(m.patient for m in current if m.patient)
            replaced: list[str] = []
            superseded: list[str] = []
            for m in current:
                same = m.patient is None or now_of.get(m.patient, m.patient) == patient
                (replaced if same else superseded).append(m.entry_uuid)
            submission, entry_uuid, set_uuid = self._submission(
                listing, facts, patient, manifest, content, replaced, now, repository.unique_id
            )
            outcome = repository.register_within(
                uow, submission, {entry_uuid: content}, organization_oid=holder
            )
            if outcome.status is not ResponseStatus.SUCCESS:
                log.warning(
                    "manifest of study %s not registered: %s",
                    study_uid,
                    ", ".join(sorted({e.code for e in outcome.errors})),
                )
                raise ManifestPublishError(
                    "the registry refused the manifest: "
                    + "; ".join(f"{e.code}: {e.context}" for e in outcome.errors)
                )
            if superseded:
                uow.registry.set_status(superseded, AvailabilityStatus.DEPRECATED)
            published = PublishedManifest(
                entry_uuid=entry_uuid,
                document_unique_id=str(manifest.SOPInstanceUID),
                submission_set_uuid=set_uuid,
                study_instance_uid=study_uid,
                instances=_listed_count(manifest),
                replaced=tuple(replaced),
            )
            if within is not None:
                within(uow, published)
            uow.commit()
        log.info(
            "published the manifest of study %s (%d instances)%s%s",
            study_uid,
            published.instances,
            f", replacing {len(replaced)}" if replaced else "",
            f", deprecating {len(superseded)} of another patient" if superseded else "",
        )
        return published

    def withdraw_manifests(
        self, study_uid: str, *, within: Callable[[UnitOfWork], None] | None = None
    ) -> list[str]:
        """Deprecate the study's current kuva manifest, with none to replace it (every
        image of the study was rejected). ``within`` runs in the same transaction.
        Returns the entryUUIDs deprecated."""
        with UnitOfWork(self._engine) as uow:
            current = deprecate_manifests(uow, study_uid)
            if within is not None:
                within(uow)
            uow.commit()
        if current:
            log.info("withdrew the manifest of study %s: nothing in it is current", study_uid)
        return current

    def _stored_manifest(self, sop_uid: str) -> tuple[Dataset, StoredContent] | None:
        """A manifest an earlier attempt stored under ``sop_uid``, with its hashes."""
        with UnitOfWork(self._engine, write=False) as uow:
            instance = uow.instances.get(sop_uid)
        if instance is None:
            return None
        blobs = self._retrieve.blobs
        with blobs.open(instance.blob_key) as stream:
            manifest = dcmread(stream)
        return manifest, self._content(instance.blob_key, instance.sha256)

    def _content(self, key: str, sha256: str) -> StoredContent:
        """A stored blob as repository content: its SHA-1 (XDS hash) read back."""
        sha1 = hashlib.sha1()
        size = 0
        for chunk in self._retrieve.blobs.iter_chunks(key):
            sha1.update(chunk)
            size += len(chunk)
        return StoredContent(key, sha1.hexdigest(), sha256, size)

    def _store_instance(self, manifest: Dataset, organization_oid: str) -> StoredContent:
        """Store the manifest as an instance, the way STOW-RS stores a Part 10 file
        (kuva's canonical file meta, then the data set); its blob's hashes."""
        assert self._ingest is not None
        buffer = io.BytesIO()
        manifest.save_as(buffer, enforce_file_format=True)
        data = buffer.getvalue()
        blobs = self._retrieve.blobs
        writer = Part10Rewriter(blobs.open_writer())
        try:
            writer.write(data)
            if not writer.complete:
                raise ManifestPublishError("the manifest is not a complete Part 10 file")
            header = dcmread(io.BytesIO(data), stop_before_pixels=True)
            attributes = extract_attributes(header, writer.transfer_syntax_uid)
        except BaseException:
            writer.blob.discard()
            raise
        outcome = self._ingest.store(
            IncomingInstance(
                attributes=attributes,
                blob=writer.blob,
                source_ae=MANIFEST_SOURCE,
                organization_oid=organization_oid,
            )
        )
        if not outcome.ok:
            raise ManifestPublishError(
                f"the manifest could not be stored ({outcome.status.value}): {outcome.message}"
            )
        return self._content(blob_key(outcome.sha256), outcome.sha256)

    @staticmethod
    def _current_manifests(uow: UnitOfWork, study_uid: str) -> list[RegisteredObject]:
        """The Approved DocumentEntries of kuva's earlier manifests of a study, by entryUUID."""
        ours = [
            document.unique_id
            for document in uow.documents.of_study(study_uid, DICOM_MIME_TYPE)
            if made_by_kuva(document.unique_id)
        ]
        if not ours:
            return []
        return sorted(
            (
                found
                for found in uow.registry.find_by_unique_ids(ours)
                if found.kind is ObjectKind.DOCUMENT_ENTRY
                and found.status is AvailabilityStatus.APPROVED
            ),
            key=lambda found: found.entry_uuid,
        )

    def _submission(
        self,
        listing: StudyListing,
        facts: StudyFacts,
        patient: PatientId,
        manifest: Dataset,
        content: StoredContent,
        replaced: list[str],
        now: datetime,
        repository_unique_id: str,
    ) -> tuple[Submission, str, str]:
        """The manifest's DocumentEntry, its SubmissionSet and associations."""
        study = listing.study
        author = Author(institutions=(self._institution(facts.organization_oid),))
        references = [f"{study.study_instance_uid}^^^^{STUDY_INSTANCE_UID_REFERENCE}"]
        if study.accession_number:
            references.insert(0, f"{study.accession_number}^^^^{ACCESSION_REFERENCE}")
        created = format_dtm(now)
        codes = self._settings.registration
        offset = self._offset(listing, now)
        entry = NewDocumentEntry(
            patient=patient,
            unique_id=str(manifest.SOPInstanceUID),
            mime_type=DICOM_MIME_TYPE,
            class_code=codes.class_code.value(),
            type_code=codes.type_code.value(),
            format_code=MANIFEST_FORMAT_CODE,
            healthcare_facility_type_code=codes.healthcare_facility_type_code.value(),
            practice_setting_code=codes.practice_setting_code.value(),
            confidentiality_codes=(MANIFEST_CONFIDENTIALITY_CODE,),
            creation_time=created,
            language_code=MANIFEST_LANGUAGE_CODE,
            source_patient_id=str(patient),
            hash=content.sha1,
            size=content.size,
            repository_unique_id=repository_unique_id,
            event_codes=tuple(
                Code(modality, MODALITY_CODING_SCHEME, modality)
                for modality in facts.modalities_in_study
            ),
            reference_ids=tuple(references),
            service_start_time=utc_dtm(study.study_date, study.study_time, offset),
            source_patient_info=_source_patient_info(listing.patient, patient),
            authors=(author,),
            title=study.description or MANIFEST_TITLE,
        ).build()
        subset = NewSubmissionSet(
            patient=patient,
            unique_id=new_uid(),
            source_id=self.unique_id,
            submission_time=created,
            content_type_code=MANIFEST_CONTENT_TYPE_CODE,
            authors=(author,),
            title=MANIFEST_TITLE,
        ).build()
        associations = [
            new_association(
                AssociationType.HAS_MEMBER, subset.id, entry.id, submission_set_status=ORIGINAL
            ),
            *(new_association(AssociationType.RPLC, entry.id, old) for old in replaced),
        ]
        submission = Submission(
            submission_sets=(subset,),
            document_entries=(entry,),
            associations=tuple(associations),
        )
        return submission, entry.id, subset.id

    def _institution(self, organization_oid: str) -> str:
        """The register holder as an XON (ITI TF-3 4.2.3.1.7): name and OID (XON.10)."""
        names = {org.oid: org.name for org in self._settings.organizations}
        name = names.get(organization_oid, organization_oid).replace("^", " ").replace("&", " ")
        return f"{name}^^^^^^^^^{organization_oid}"

    # ------------------------------------------------------------------ RAD-69

    def retrieve_imaging_document_set(
        self,
        request: ImagingDocumentSetRequest,
        *,
        recipient: str = UNKNOWN_RECIPIENT,
        scope: AccessScope | None = None,
    ) -> ImagingDocumentSetResult:
        """Answer a Retrieve Imaging Document Set request (RAD TF-3 4.69.4.2) for
        ``recipient`` (the requesting organisation, "" = unknown), its disclosures
        recorded. ``scope``: what the requester may read (services.access; None =
        all); an instance it may not read is answered as not found."""
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
        if documents and not self._disclosed(recipient, documents, scope):
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
        self, recipient: str, documents: list[ImagingDocument], scope: AccessScope | None
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
        )
