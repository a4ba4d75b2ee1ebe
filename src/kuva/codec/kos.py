"""The XDS-I.b manifest of a study: a Key Object Selection Document (PS3.3 A.35.4).

An Imaging Document Source publishes each study as one manifest (RAD TF-3
4.68.4.1.2.3, RAD TF-2 "XDS-I.b Manifest"): a KOS whose Document Title is
(113030, DCM, "Manifest"), which lists every instance in the Current Requested
Procedure Evidence Sequence (Hierarchical SOP Instance Reference Macro, PS3.3
C.17.2.1) with the Retrieve AE Title a C-MOVE/C-GET goes to and the Retrieve
Location UID a RAD-69 request names as its RepositoryUniqueId, and again in the
content tree (TID 2010 Key Object Selection: one IMAGE, WAVEFORM or COMPOSITE item
per instance).

The manifest belongs to the study it describes (same Study Instance UID, same
patient and request attributes) in a series of its own, with kuva's own UIDs.
The study's dates and times are copied as received; one Timezone Offset From UTC
(PS3.3 C.12.1.1.8) applies to every date and time of a data set, so it is the
study's offset (the caller's ``offset``: the study's own, or the archive's local
time zone at the study's date), and the manifest's own dates and times (creation,
content) are written in that offset too.

``build_manifest`` is pure: the caller reads the study from the index and passes
the instances to list (rejected instances left out by the caller).

Left out, as kuva does not know them: order numbers and requested procedure of
the Referenced Request Sequence (present, empty: Type 2), the optional Key
Object Description and observer context of TID 2010, and frame-level references.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timezone

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from kuva.model.instance import PatientAttributes, StudyAttributes
from kuva.model.local_time import format_offset
from kuva.model.uids import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    is_valid_uid,
    new_uid,
)

# Key Object Selection Document Storage (PS3.4 B.5) and its value of Modality.
KEY_OBJECT_SELECTION_DOCUMENT_STORAGE = UID("1.2.840.10008.5.1.4.1.1.88.59")
MODALITY = "KO"
# Document Title of an XDS-I.b manifest (CID 7010; RAD TF-3 4.68.4.1.2.3).
MANIFEST_TITLE = ("113030", "DCM", "Manifest")
# TID 2010 Key Object Selection, in the Content Template Sequence (PS3.3 C.18.8).
TEMPLATE = ("DCMR", "2010")
MANUFACTURER = "kuva"
SERIES_NUMBER = 9999  # out of the way of the modality's series numbers
SERIES_DESCRIPTION = "XDS-I.b manifest"
UTF8 = "ISO_IR 192"


class ManifestError(ValueError):
    """The manifest cannot be built (nothing to list, or a malformed UID)."""


@dataclass(frozen=True)
class ManifestInstance:
    """One instance the manifest lists, as the index knows it.

    ``has_pixel_data``: the index holds Rows for it (an image); a content item
    then refers to it as IMAGE even when its SOP Class name does not say so
    (segmentations, parametric maps, RT Dose).
    """

    series_instance_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    has_pixel_data: bool = False


@dataclass(frozen=True)
class ManifestStudy:
    """A study and the instances of it the manifest is to list, in listing order."""

    patient: PatientAttributes
    study: StudyAttributes
    instances: Sequence[ManifestInstance]


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    """One item of a Code Sequence (Basic Code Sequence Macro, PS3.3 8.8)."""
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def value_type(instance: ManifestInstance) -> str:
    """The content item's Value Type for a referenced instance (PS3.3 C.17.3.2.1).

    WAVEFORM for waveform SOP classes, IMAGE for image SOP classes and for anything
    holding pixel data, COMPOSITE for everything else (SR, PDF, presentation states
    ...), as TID 2010 rows 5-7 allow.
    """
    name = UID(instance.sop_class_uid).name
    if "Waveform Storage" in name:
        return "WAVEFORM"
    if instance.has_pixel_data or "Image Storage" in name:
        return "IMAGE"
    return "COMPOSITE"


def _referenced_sop(instance: ManifestInstance) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = instance.sop_class_uid
    item.ReferencedSOPInstanceUID = instance.sop_instance_uid
    return item


def _evidence(
    study_uid: str,
    instances: Sequence[ManifestInstance],
    retrieve_ae_title: str,
    retrieve_location_uid: str,
    retrieve_url: str | None,
) -> Dataset:
    """One study item of the Hierarchical SOP Instance Reference Macro (PS3.3 C.17.2.1).

    Series in the order they first appear; each with Retrieve AE Title and
    Retrieve Location UID (Hierarchical Series Reference Macro, C.17.2.2) and,
    when given, the WADO-RS Retrieve URL of the series.
    """
    by_series: dict[str, list[ManifestInstance]] = {}
    for instance in instances:
        by_series.setdefault(instance.series_instance_uid, []).append(instance)
    series_items = []
    for series_uid, members in by_series.items():
        series_item = Dataset()
        series_item.RetrieveAETitle = retrieve_ae_title
        series_item.SeriesInstanceUID = series_uid
        series_item.RetrieveLocationUID = retrieve_location_uid
        if retrieve_url:
            series_item.RetrieveURL = (
                f"{retrieve_url.rstrip('/')}/studies/{study_uid}/series/{series_uid}"
            )
        series_item.ReferencedSOPSequence = [_referenced_sop(m) for m in members]
        series_items.append(series_item)
    study_item = Dataset()
    study_item.ReferencedSeriesSequence = series_items
    study_item.StudyInstanceUID = study_uid
    return study_item


def _referenced_request(study: StudyAttributes) -> Dataset:
    """The request the study fulfils, by its accession number (PS3.3 C.17.6.1).

    kuva knows no order beyond the accession number: the other Type 2 attributes
    are present and empty.
    """
    item = Dataset()
    item.AccessionNumber = study.accession_number
    item.ReferencedStudySequence = []
    item.StudyInstanceUID = study.study_instance_uid
    item.RequestedProcedureDescription = ""
    item.RequestedProcedureCodeSequence = []
    item.RequestedProcedureID = ""
    item.PlacerOrderNumberImagingServiceRequest = ""
    item.FillerOrderNumberImagingServiceRequest = ""
    return item


def _content_item(instance: ManifestInstance) -> Dataset:
    """A TID 2010 row 5-7 item: CONTAINS an IMAGE, WAVEFORM or COMPOSITE reference."""
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = value_type(instance)
    item.ReferencedSOPSequence = [_referenced_sop(instance)]
    return item


def _check(source: ManifestStudy, *uids: str) -> None:
    if not source.instances:
        raise ManifestError(
            f"study {source.study.study_instance_uid}: no instances to list "
            "(a manifest references at least one, TID 2010)"
        )
    values = [*uids, source.study.study_instance_uid]
    for instance in source.instances:
        values.extend(
            (instance.series_instance_uid, instance.sop_class_uid, instance.sop_instance_uid)
        )
    bad = [uid for uid in values if not is_valid_uid(uid)]
    if bad:
        raise ManifestError(f"malformed UID {bad[0]!r}")


def build_manifest(
    source: ManifestStudy,
    *,
    retrieve_ae_title: str,
    retrieve_location_uid: str,
    retrieve_url: str | None = None,
    now: datetime | None = None,
    offset: timezone = UTC,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> Dataset:
    """The KOS manifest of ``source`` as a Part 10 data set (Explicit VR Little Endian).

    ``retrieve_ae_title``: the AE title a DICOM retrieve of the instances goes to.
    ``retrieve_location_uid``: the Imaging Document Source's unique id, named by
    RAD-69 requests as their RepositoryUniqueId (RAD TF-3 4.68.4.1.2.3).
    ``retrieve_url``: the DICOMweb base (``.../dicom-web``) for WADO-RS, optional.
    ``now``: the manifest's creation instant; ``offset``: the UTC offset the
    study's dates and times are in, in which the manifest's own are written (its
    Timezone Offset From UTC); ``series_instance_uid`` and ``sop_instance_uid``: its
    own UIDs, new ones by default.
    Raises ManifestError when there is nothing to list or a UID is malformed.
    """
    series_uid = series_instance_uid or new_uid()
    sop_uid = sop_instance_uid or new_uid()
    _check(source, series_uid, sop_uid, retrieve_location_uid)
    created = (now or datetime.now(UTC)).astimezone(offset)
    patient, study = source.patient, source.study

    ds = Dataset()
    # SOP Common (PS3.3 C.12.1); Finnish names need more than ASCII: UTF-8.
    ds.SpecificCharacterSet = UTF8
    ds.InstanceCreationDate = f"{created:%Y%m%d}"
    ds.InstanceCreationTime = f"{created:%H%M%S}"
    ds.SOPClassUID = KEY_OBJECT_SELECTION_DOCUMENT_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.TimezoneOffsetFromUTC = format_offset(offset)
    # General Study (C.7.2.1): as received.
    ds.StudyDate = study.study_date
    ds.StudyTime = study.study_time
    ds.AccessionNumber = study.accession_number
    # Key Object Document Series (C.17.6.1).
    ds.Modality = MODALITY
    # General Equipment (C.7.5.1).
    ds.Manufacturer = MANUFACTURER
    ds.ReferringPhysicianName = study.referring_physician_name
    if study.description:
        ds.StudyDescription = study.description
    ds.SeriesDescription = SERIES_DESCRIPTION
    ds.ReferencedPerformedProcedureStepSequence = []
    # Patient (C.7.1.1).
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    if patient.issuer:
        ds.IssuerOfPatientID = patient.issuer
        if is_valid_uid(patient.issuer):
            qualifiers = Dataset()
            qualifiers.UniversalEntityID = patient.issuer
            qualifiers.UniversalEntityIDType = "ISO"
            ds.IssuerOfPatientIDQualifiersSequence = [qualifiers]
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.StudyInstanceUID = study.study_instance_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = study.study_id
    ds.SeriesNumber = SERIES_NUMBER
    # Key Object Document (C.17.6.2).
    ds.InstanceNumber = 1
    ds.ContentDate = f"{created:%Y%m%d}"
    ds.ContentTime = f"{created:%H%M%S}"
    # SR Document Content (C.17.3) per TID 2010: the root CONTAINER.
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [_code(*MANIFEST_TITLE)]
    ds.ContinuityOfContent = "SEPARATE"
    if study.accession_number:
        ds.ReferencedRequestSequence = [_referenced_request(study)]
    ds.CurrentRequestedProcedureEvidenceSequence = [
        _evidence(
            study.study_instance_uid,
            source.instances,
            retrieve_ae_title,
            retrieve_location_uid,
            retrieve_url,
        )
    ]
    template = Dataset()
    template.MappingResource = TEMPLATE[0]
    template.TemplateIdentifier = TEMPLATE[1]
    ds.ContentTemplateSequence = [template]
    ds.ContentSequence = [_content_item(instance) for instance in source.instances]

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = KEY_OBJECT_SELECTION_DOCUMENT_STORAGE
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    ds.file_meta = meta
    return ds
