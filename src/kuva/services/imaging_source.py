"""The XDS-I.b Imaging Document Source: a study's manifest, and RAD-69 retrieves.

Manifest (RAD TF-3 4.68.4.1.2.3): ``manifest_for_study`` builds the Key Object
Selection Document of a study from the index (kuva.dicom.codec.kos); ``publish_manifest``
stores it as an instance of the study (through the ingest service, as any received
object) and, in one index transaction, records it as a document of kuva's Document
Repository (pointing at the instance's blob) and registers its DocumentEntry and
SubmissionSet (RAD-68 / ITI-41 semantics, done in-process) - see
``publish_manifest`` for the metadata and its defaults.

Retrieve Imaging Document Set (RAD-69) is services.imaging_retrieve's: the
source's ``rad69`` answers it for the source's unique id.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import Engine

from kuva.config import Settings
from kuva.dicom.codec.kos import (
    KEY_OBJECT_SELECTION_DOCUMENT_STORAGE,
    ManifestError,
    ManifestInstance,
    ManifestStudy,
    build_manifest,
)
from kuva.dicom.codec.part10 import Part10Rewriter, extract_attributes
from kuva.index.manifests import ListedInstance, StudyListing
from kuva.index.uow import UnitOfWork
from kuva.model.clock import Clock, utcnow
from kuva.model.local_time import study_offset
from kuva.model.uids import made_by_kuva
from kuva.model.xds import (
    AvailabilityStatus,
    ObjectKind,
    RegisteredObject,
    ResponseStatus,
)
from kuva.services.access import AccessPolicy
from kuva.services.disclosure import DisclosureLog
from kuva.services.imaging_retrieve import (
    ImagingDocumentSetRetrieval,
)
from kuva.services.ingest import IncomingInstance, IngestService
from kuva.services.manifest_metadata import (
    DICOM_MIME_TYPE,
    ManifestPublishError,
    manifest_submission,
    patient_cx,
)
from kuva.services.repository import RepositoryService, StoredContent
from kuva.services.retrieve import RetrieveService
from kuva.storage import blob_key

log = logging.getLogger(__name__)

# instance.source_ae of stored manifests: where the object came from.
MANIFEST_SOURCE = "XDS-I.b"


class UnknownStudy(LookupError):
    """The index holds no study with the given Study Instance UID."""


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
        # RAD-69 at this source (services.imaging_retrieve)
        self.rad69 = ImagingDocumentSetRetrieval(
            retrieve, settings, disclosures or DisclosureLog(engine)
        )
        self._clock = clock

    @property
    def unique_id(self) -> str:
        """This source's id: the manifests' Retrieve Location UID, RAD-69's RepositoryUniqueId."""
        return self.rad69.unique_id

    # ------------------------------------------------------------------ manifest

    def manifest_for_study(self, study_uid: str, *, now: datetime | None = None) -> Dataset:
        """The XDS-I.b manifest (KOS) of a study, listing every instance the index holds.

        Earlier kuva-made KOS of the study are not listed. Raises UnknownStudy,
        or kuva.dicom.codec.kos.ManifestError when nothing is left to list. Rejected
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

        The metadata is services.manifest_metadata's.

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
        patient = patient_cx(listing.patient)
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
            submission, entry_uuid, set_uuid = manifest_submission(
                self._settings,
                listing,
                facts,
                patient,
                manifest,
                content,
                replaced,
                now,
                self._offset(listing, now),
                repository.unique_id,
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
