"""Presentation contexts the archive accepts (see docs/conformance.md).

``SUPPORTED_CONTEXTS`` is built once per process and shared by every association
(the engine looks each proposed abstract syntax up in it; nothing is copied per
association).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from pydicom.uid import UID

from kuva.codec.sop_classes import STORAGE_SOP_CLASSES
from kuva.dicom.net import SupportedContext

# Every transfer syntax a storage SCP is asked to take in; objects are stored in
# the transfer syntax they arrive in, never re-encoded. The engine accepts the
# first of these that a proposed context lists, so Explicit VR Little Endian comes
# first: it keeps the VRs, and it is what most objects are stored in, so a C-GET
# peer proposing several uncompressed syntaxes gets stored objects unchanged.
STORAGE_TRANSFER_SYNTAXES: tuple[str, ...] = (
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired)
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51",  # JPEG Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless (Process 14)
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1 (Process 14, Selection Value 1)
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless Only
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.92",  # JPEG 2000 Part 2 Multi-component Lossless Only
    "1.2.840.10008.1.2.4.93",  # JPEG 2000 Part 2 Multi-component
    "1.2.840.10008.1.2.4.201",  # High-Throughput JPEG 2000 Lossless Only
    "1.2.840.10008.1.2.4.202",  # High-Throughput JPEG 2000 with RPCL Lossless Only
    "1.2.840.10008.1.2.4.203",  # High-Throughput JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.100",  # MPEG2 Main Profile / Main Level
    "1.2.840.10008.1.2.4.101",  # MPEG2 Main Profile / High Level
    "1.2.840.10008.1.2.4.102",  # MPEG-4 AVC/H.264 High Profile / Level 4.1
    "1.2.840.10008.1.2.4.103",  # MPEG-4 AVC/H.264 BD-compatible High Profile / Level 4.1
    "1.2.840.10008.1.2.4.104",  # MPEG-4 AVC/H.264 High Profile / Level 4.2 For 2D Video
    "1.2.840.10008.1.2.4.105",  # MPEG-4 AVC/H.264 High Profile / Level 4.2 For 3D Video
    "1.2.840.10008.1.2.4.106",  # MPEG-4 AVC/H.264 Stereo High Profile / Level 4.2
    "1.2.840.10008.1.2.4.107",  # HEVC/H.265 Main Profile / Level 5.1
    "1.2.840.10008.1.2.4.108",  # HEVC/H.265 Main 10 Profile / Level 5.1
)

# Non-storage services: Implicit and Explicit VR Little Endian.
BASIC_TRANSFER_SYNTAXES: tuple[str, ...] = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")

VERIFICATION = UID("1.2.840.10008.1.1")
STORAGE_COMMITMENT_PUSH_MODEL = UID("1.2.840.10008.1.20.1")
# Well-known SOP Instance of the Storage Commitment Push Model (PS3.4 J.3.5).
STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE = UID("1.2.840.10008.1.20.1.1")

# Query/Retrieve, retrieve side: SOP classes of the Patient Root (PS3.4 C.6.1) and
# Study Root (PS3.4 C.6.2) information models.
PATIENT_ROOT_MOVE = UID("1.2.840.10008.5.1.4.1.2.1.2")
PATIENT_ROOT_GET = UID("1.2.840.10008.5.1.4.1.2.1.3")
STUDY_ROOT_MOVE = UID("1.2.840.10008.5.1.4.1.2.2.2")
STUDY_ROOT_GET = UID("1.2.840.10008.5.1.4.1.2.2.3")
RETRIEVE_SOP_CLASSES: tuple[UID, ...] = (
    PATIENT_ROOT_GET,
    STUDY_ROOT_GET,
    PATIENT_ROOT_MOVE,
    STUDY_ROOT_MOVE,
)


# Query/Retrieve, find side (PS3.4 C.6.1, C.6.2).
PATIENT_ROOT_FIND = UID("1.2.840.10008.5.1.4.1.2.1.1")
STUDY_ROOT_FIND = UID("1.2.840.10008.5.1.4.1.2.2.1")


def _supported() -> Mapping[str, SupportedContext]:
    basic = SupportedContext(BASIC_TRANSFER_SYNTAXES)
    # Either role for storage: a C-GET requester proposes the SCP role for the storage
    # SOP classes it wants its objects in (SCP/SCU Role Selection, PS3.7 D.3.3.4).
    storage = SupportedContext(STORAGE_TRANSFER_SYNTAXES, requestor_may_be_scp=True)
    supported: dict[str, SupportedContext] = {uid: storage for uid in STORAGE_SOP_CLASSES}
    for uid in (
        VERIFICATION,
        STORAGE_COMMITMENT_PUSH_MODEL,
        PATIENT_ROOT_FIND,
        STUDY_ROOT_FIND,
        *RETRIEVE_SOP_CLASSES,
    ):
        supported[uid] = basic
    return MappingProxyType(supported)


SUPPORTED_CONTEXTS: Mapping[str, SupportedContext] = _supported()
