"""kuva.codec.sop_classes: the Storage SOP Classes of PS3.4 B.5 as one static tuple."""

from __future__ import annotations

import pytest
from pydicom.uid import (
    UID,
    BasicTextSRStorage,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    EncapsulatedPDFStorage,
    EnhancedCTImageStorage,
    EnhancedMRImageStorage,
    EnhancedXAImageStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    KeyObjectSelectionDocumentStorage,
    MRImageStorage,
    MultiFrameTrueColorSecondaryCaptureImageStorage,
    NuclearMedicineImageStorage,
    PositronEmissionTomographyImageStorage,
    RTPlanStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
    VLWholeSlideMicroscopyImageStorage,
    XRayAngiographicImageStorage,
    XRayRadiationDoseSRStorage,
)

from kuva.codec.sop_classes import STORAGE_SOP_CLASSES
from kuva.model.uids import uid_problem


def test_sorted_unique_and_well_formed() -> None:
    """One entry per SOP Class, in the string order of the UIDs, each a valid UID
    (PS3.5 9.1) of the DICOM root."""
    assert list(STORAGE_SOP_CLASSES) == sorted(set(STORAGE_SOP_CLASSES))
    for uid in STORAGE_SOP_CLASSES:
        assert uid_problem(uid) is None, uid
        assert uid.startswith("1.2.840.10008.5.1.4."), uid


@pytest.mark.parametrize(
    "uid",
    [
        CTImageStorage,
        EnhancedCTImageStorage,
        MRImageStorage,
        EnhancedMRImageStorage,
        UltrasoundImageStorage,
        UltrasoundMultiFrameImageStorage,
        SecondaryCaptureImageStorage,
        MultiFrameTrueColorSecondaryCaptureImageStorage,
        KeyObjectSelectionDocumentStorage,
        ComputedRadiographyImageStorage,
        DigitalXRayImageStorageForPresentation,
        XRayAngiographicImageStorage,
        EnhancedXAImageStorage,
        NuclearMedicineImageStorage,
        PositronEmissionTomographyImageStorage,
        GrayscaleSoftcopyPresentationStateStorage,
        BasicTextSRStorage,
        XRayRadiationDoseSRStorage,
        EncapsulatedPDFStorage,
        SegmentationStorage,
        RTPlanStorage,
        VLWholeSlideMicroscopyImageStorage,
    ],
)
def test_holds_the_common_storage_classes(uid: UID) -> None:
    assert uid in STORAGE_SOP_CLASSES


@pytest.mark.parametrize(
    "uid",
    [
        "1.2.840.10008.1.1",  # Verification
        "1.2.840.10008.1.20.1",  # Storage Commitment Push Model
        "1.2.840.10008.5.1.4.1.2.2.1",  # Study Root Query/Retrieve - FIND
        "1.2.840.10008.5.1.4.38.1",  # Hanging Protocol Storage (non-patient, PS3.4 GG)
        "1.2.840.10008.5.1.4.1.1.6",  # Ultrasound Image Storage (retired)
        "1.2.840.10008.5.1.4.1.1.501.1",  # DICOS CT Image Storage (not PS3.4)
    ],
)
def test_leaves_out_other_services_retired_and_foreign_classes(uid: str) -> None:
    assert uid not in STORAGE_SOP_CLASSES


def test_every_class_pydicom_names_is_a_current_storage_class() -> None:
    """Where pydicom knows the UID, it is a SOP Class named "... Storage ..." and not
    retired."""
    for uid in map(UID, STORAGE_SOP_CLASSES):
        if uid.name == uid:  # newer than pydicom's dictionary
            continue
        assert uid.type == "SOP Class", uid
        assert "Storage" in uid.name, uid
        assert not uid.is_retired, uid
