"""The XDS-I.b Imaging Document Source's manifest of a study (RAD TF-3 4.68.4.1.2.3).

The Imaging Document Source describes each study it holds in one manifest: a Key
Object Selection Document (kuva.codec.kos) listing every instance the index
holds of the study, with the source's unique id as the Retrieve Location UID that
a RAD-69 request names as its RepositoryUniqueId
(services.retrieve_imaging_document_set), kuva's AE title for C-MOVE / C-GET and
its DICOMweb URL. Earlier manifests kuva made of the study are not listed.
Publishing the manifest (storing and registering it) is
services.manifest_publishing's.
"""

from __future__ import annotations

from datetime import datetime, timezone

from pydicom.dataset import Dataset
from sqlalchemy import Engine

from kuva.codec.kos import (
    KEY_OBJECT_SELECTION_DOCUMENT_STORAGE,
    ManifestInstance,
    ManifestStudy,
    build_manifest,
)
from kuva.config import Settings
from kuva.index.manifests import ListedInstance, StudyListing
from kuva.index.uow import UnitOfWork
from kuva.model.clock import Clock, utcnow
from kuva.model.local_time import study_offset
from kuva.model.uids import made_by_kuva


class UnknownStudy(LookupError):
    """The index holds no study with the given Study Instance UID."""


def listed_count(manifest: Dataset) -> int:
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


class ImagingDocumentSource:
    """The manifests of the Imaging Document Source whose unique id is ``[xds]
    imaging_source_unique_id``, made from the index on ``engine``."""

    def __init__(self, engine: Engine, settings: Settings, *, clock: Clock = utcnow) -> None:
        self._engine = engine
        self._settings = settings
        self._clock = clock

    @property
    def unique_id(self) -> str:
        """This source's id: the manifests' Retrieve Location UID, RAD-69's RepositoryUniqueId."""
        return self._settings.xds.imaging_source_unique_id

    def manifest_for_study(self, study_uid: str, *, now: datetime | None = None) -> Dataset:
        """The XDS-I.b manifest (KOS) of a study, listing every instance the index holds.

        Earlier kuva-made KOS of the study are not listed. Raises UnknownStudy,
        or kuva.codec.kos.ManifestError when nothing is left to list. Rejected
        instances are to be left out by the caller.
        """
        with UnitOfWork(self._engine, write=False) as uow:
            listing = uow.manifests.study(study_uid)
        if listing is None:
            raise UnknownStudy(f"no study {study_uid}")
        return self.manifest(listing, now)

    def manifest(
        self, listing: StudyListing, now: datetime | None, sop_instance_uid: str | None = None
    ) -> Dataset:
        """The manifest of the study ``listing`` holds, made at ``now`` (the clock's
        time when None), with ``sop_instance_uid`` when given (else a new UID).
        Raises kuva.codec.kos.ManifestError when nothing is left to list."""
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
            offset=self.offset(listing, now),
            sop_instance_uid=sop_instance_uid,
        )

    def offset(self, listing: StudyListing, now: datetime | None) -> timezone:
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
