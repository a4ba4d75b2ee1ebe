"""Manifest publishing: a study's XDS-I.b manifest stored and registered (RAD TF-3
4.68, Provide and Register Imaging Document Set, done in-process).

``ManifestPublisher.publish_manifest`` stores the manifest the Imaging Document
Source makes of a study (services.imaging_document_source) as an instance of the
study, through the ingest service as any received object, and, in one index
transaction, records it as a document of kuva's Document Repository (pointing at
the instance's blob) and registers its DocumentEntry and SubmissionSet (RAD-68 /
ITI-41 semantics); the metadata is services.manifest_metadata's. One manifest per
study is current: publishing replaces the earlier one, and ``withdraw_manifests``
and ``deprecate_manifests`` deprecate it when none is to replace it.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import Engine

from kuva.codec.kos import ManifestError
from kuva.codec.part10 import Part10Rewriter, extract_attributes
from kuva.config import Settings
from kuva.index.uow import UnitOfWork
from kuva.model.clock import Clock, utcnow
from kuva.model.uids import made_by_kuva
from kuva.model.xds import (
    AvailabilityStatus,
    ObjectKind,
    RegisteredObject,
    ResponseStatus,
)
from kuva.services.imaging_document_source import (
    ImagingDocumentSource,
    UnknownStudy,
    listed_count,
)
from kuva.services.ingest import IncomingInstance, IngestService
from kuva.services.manifest_metadata import (
    DICOM_MIME_TYPE,
    ManifestPublishError,
    manifest_submission,
    patient_cx,
)
from kuva.services.repository import RepositoryService, StoredContent
from kuva.storage import BlobStore, blob_key

log = logging.getLogger(__name__)

# instance.source_ae of stored manifests: where the object came from.
MANIFEST_SOURCE = "XDS-I.b"


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


def current_manifests(uow: UnitOfWork, study_uid: str) -> list[RegisteredObject]:
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


def deprecate_manifests(uow: UnitOfWork, study_uid: str) -> list[str]:
    """In ``uow``: the study's current kuva manifests Deprecated in the registry (the
    registry's own deprecation path, with none to replace them: every image was
    rejected, or the study is being destroyed, services.retention). Their
    entryUUIDs."""
    current = [m.entry_uuid for m in current_manifests(uow, study_uid)]
    if current:
        uow.registry.set_status(current, AvailabilityStatus.DEPRECATED)
    return current


class ManifestPublisher:
    """Publishes the manifests ``source`` makes: stored through ``ingest`` into
    ``blobs``, registered through ``repository``."""

    def __init__(
        self,
        engine: Engine,
        source: ImagingDocumentSource,
        ingest: IngestService,
        repository: RepositoryService,
        blobs: BlobStore,
        settings: Settings,
        *,
        clock: Clock = utcnow,
    ) -> None:
        self._engine = engine
        self._source = source
        self._ingest = ingest
        self._repository = repository
        self._blobs = blobs
        self._settings = settings
        self._clock = clock

    def publish_manifest(
        self,
        study_uid: str,
        *,
        now: datetime | None = None,
        manifest_uid: str | None = None,
        within: Callable[[UnitOfWork, PublishedManifest], None] | None = None,
    ) -> PublishedManifest:
        """Publish the XDS-I.b manifest of a study (RAD TF-3 4.68, done in-process).

        1. The manifest (``ImagingDocumentSource.manifest``) is stored as an instance
           of the study through the ingest service (blob fsynced, index row
           committed), for the study's register holder.
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
                manifest = self._source.manifest(listing, now, manifest_uid)
            except ManifestError as exc:
                raise ManifestPublishError(f"no manifest can be made: {exc}") from exc
            content = self._store_instance(manifest, holder)
        with UnitOfWork(self._engine) as uow:
            current = current_manifests(uow, study_uid)
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
                self._source.offset(listing, now),
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
                instances=listed_count(manifest),
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
        with self._blobs.open(instance.blob_key) as stream:
            manifest = dcmread(stream)
        return manifest, self._content(instance.blob_key, instance.sha256)

    def _content(self, key: str, sha256: str) -> StoredContent:
        """A stored blob as repository content: its SHA-1 (XDS hash) read back."""
        sha1 = hashlib.sha1()
        size = 0
        for chunk in self._blobs.iter_chunks(key):
            sha1.update(chunk)
            size += len(chunk)
        return StoredContent(key, sha1.hexdigest(), sha256, size)

    def _store_instance(self, manifest: Dataset, organization_oid: str) -> StoredContent:
        """Store the manifest as an instance, the way STOW-RS stores a Part 10 file
        (kuva's canonical file meta, then the data set); its blob's hashes."""
        buffer = io.BytesIO()
        manifest.save_as(buffer, enforce_file_format=True)
        data = buffer.getvalue()
        writer = Part10Rewriter(self._blobs.open_writer())
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
