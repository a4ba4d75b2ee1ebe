"""The XDS metadata of a study's XDS-I.b manifest (RAD TF-3 4.68.4.1.2.3; ITI TF-3
Table 4.3.1-3): its DocumentEntry, the SubmissionSet that registers it and their
associations, as ``ManifestPublisher.publish_manifest`` (services.manifest_publishing)
registers them.

patientId and sourcePatientId are the study's Patient ID in CX form, its Issuer of
Patient ID as the assigning authority (which must be an OID, else
ManifestPublishError), sourcePatientInfo PID-3, -5, -7 and -8; mimeType
application/dicom; formatCode the KOS SOP Class UID (1.2.840.10008.5.1.4.1.1.88.59,
scheme 1.2.840.10008.2.6.1); eventCodeList the study's modalities (DCM);
referenceIdList the accession number (``urn:ihe:iti:xds:2013:accession``) and the
Study Instance UID (``urn:ihe:iti:xds:2016:studyInstanceUID``); serviceStartTime the
study date and time in UTC (ITI TF-3 4.2.3.2.19), read in the offset the manifest
states (the study's own Timezone Offset From UTC, else ``[archive]
local_time_zone`` at that date); creationTime and submissionTime now (UTC); author
institution the register holder (XON); SubmissionSet sourceId the Imaging Document
Source's unique id. classCode, typeCode, practiceSettingCode and
healthcareFacilityTypeCode are ``[registration]`` settings (an affinity domain's
choice); confidentialityCode, languageCode and contentTypeCode the ``MANIFEST_*``
constants below.
"""

from __future__ import annotations

from datetime import datetime, timezone

from pydicom.dataset import Dataset
from pydicom.uid import KeyObjectSelectionDocumentStorage

from kuva.config import Settings
from kuva.index.manifests import StudyListing
from kuva.index.repository import StudyFacts
from kuva.model.identity import registry_patient_id
from kuva.model.instance import PatientAttributes
from kuva.model.local_time import utc_dtm
from kuva.model.uids import new_uid
from kuva.model.xds import (
    ORIGINAL,
    AssociationType,
    Author,
    Code,
    NewDocumentEntry,
    NewSubmissionSet,
    PatientId,
    Submission,
    format_dtm,
    new_association,
)
from kuva.services.repository import (
    ACCESSION_REFERENCE,
    STUDY_INSTANCE_UID_REFERENCE,
    StoredContent,
)

DICOM_MIME_TYPE = "application/dicom"
# classCode, typeCode, practiceSettingCode and healthcareFacilityTypeCode are
# settings ([registration]); these are kuva's fixed choices. LOINC
# 2.16.840.1.113883.6.1, HL7 v3 Confidentiality 2.16.840.1.113883.5.25.
MANIFEST_CONFIDENTIALITY_CODE = Code("N", "2.16.840.1.113883.5.25", "normal")
MANIFEST_CONTENT_TYPE_CODE = Code("18726-0", "2.16.840.1.113883.6.1", "Radiology studies (set)")
MANIFEST_LANGUAGE_CODE = "fi-FI"
MANIFEST_TITLE = "XDS-I.b manifest"
# Fixed by XDS-I.b (RAD TF-3 4.68.4.1.2.3): the KOS SOP Class in the DICOM UID registry.
MANIFEST_FORMAT_CODE = Code(
    str(KeyObjectSelectionDocumentStorage),
    "1.2.840.10008.2.6.1",
    "Key Object Selection Document",
)
# eventCodeList: the study's modalities, DICOM CID 29 (coding scheme DCM).
MODALITY_CODING_SCHEME = "1.2.840.10008.2.16.4"


class ManifestPublishError(Exception):
    """A study's manifest cannot be published; the message says why (no patient data)."""


def patient_cx(patient: PatientAttributes) -> PatientId:
    """The study's patient as an XDS patient id (CX, ITI TF-3 4.2.3.1.7): the rule
    ingest refuses by (model.identity)."""
    try:
        return registry_patient_id(patient.patient_id, patient.issuer)
    except ValueError as exc:
        raise ManifestPublishError(f"the study's patient is not usable in XDS: {exc}") from exc


def source_patient_info(patient: PatientAttributes, cx: PatientId) -> tuple[str, ...]:
    """sourcePatientInfo (ITI TF-3 4.2.3.2.24): PID-3, -5, -7 and -8 as known."""
    values = [f"PID-3|{cx}"]
    if patient.name:
        values.append(f"PID-5|{patient.name}")
    if patient.birth_date:
        values.append(f"PID-7|{patient.birth_date}")
    if patient.sex in ("M", "F", "O"):
        values.append(f"PID-8|{patient.sex}")
    return tuple(values)


def manifest_submission(
    settings: Settings,
    listing: StudyListing,
    facts: StudyFacts,
    patient: PatientId,
    manifest: Dataset,
    content: StoredContent,
    replaced: list[str],
    now: datetime,
    offset: timezone,
    repository_unique_id: str,
) -> tuple[Submission, str, str]:
    """The manifest's DocumentEntry, its SubmissionSet and associations; ``offset``
    the one the manifest states (its study's dates and times are in it)."""
    study = listing.study
    author = Author(institutions=(_institution(settings, facts.organization_oid),))
    references = [f"{study.study_instance_uid}^^^^{STUDY_INSTANCE_UID_REFERENCE}"]
    if study.accession_number:
        references.insert(0, f"{study.accession_number}^^^^{ACCESSION_REFERENCE}")
    created = format_dtm(now)
    codes = settings.registration
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
        source_patient_info=source_patient_info(listing.patient, patient),
        authors=(author,),
        title=study.description or MANIFEST_TITLE,
    ).build()
    subset = NewSubmissionSet(
        patient=patient,
        unique_id=new_uid(),
        source_id=settings.xds.imaging_source_unique_id,
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


def _institution(settings: Settings, organization_oid: str) -> str:
    """The register holder as an XON (ITI TF-3 4.2.3.1.7): name and OID (XON.10)."""
    names = {org.oid: org.name for org in settings.directory.organizations}
    name = names.get(organization_oid, organization_oid).replace("^", " ").replace("&", " ")
    return f"{name}^^^^^^^^^{organization_oid}"
