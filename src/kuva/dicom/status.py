"""DIMSE status codes kuva answers with (PS3.7 Annex C, PS3.4 B.2.3 / J.3.2)."""

from __future__ import annotations

from pydicom.dataset import Dataset

SUCCESS = 0x0000
# C-STORE (PS3.4 Table B.2-1)
OUT_OF_RESOURCES = 0xA700
DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000  # invalid object: missing or malformed required attributes
# ... and, while registration is on, a patient the XDS registry would not take (no
# OID Issuer of Patient ID, a wrong identity code): "Error: Cannot understand"
# (PS3.4 B.2.3), not A900 - the data set may match its SOP Class (the issuer is
# Type 3), yet the archive cannot do with it what it is for.
# kuva-specific code in the "Cannot understand" family (Cxxx): the SOP Instance UID
# is already archived with other content. Corrections go through IOCM.
DUPLICATE_WITH_OTHER_CONTENT = 0xC001
# kuva-specific Cxxx codes of IOCM (services.iocm): an instance rejected for patient
# safety or an incorrect worklist entry, sent again; a rejection note from an
# organisation that is not the register holder of a study it names.
# NOT_REGISTER_HOLDER also answers an instance of a study another organisation
# archived (a study has one register holder).
REJECTED_INSTANCE = 0xC410
NOT_REGISTER_HOLDER = 0xC411
# kuva-specific Cxxx: an instance of a study the archive destroyed (retention or an
# IOCM 113039 note) while no operator has allowed it to be sent again.
STUDY_DESTROYED = 0xC412
# Warning "Elements Discarded" (PS3.4 B.2.3): an instance rejected for quality
# reasons or by retention, sent again, is not stored again; the Error Comment says so.
ELEMENTS_DISCARDED = 0xB006
# kuva-specific Bxxx warning of IOCM, beside its C410/C411: a 113039 (Data Retention
# Policy Expired) note was stored and its instances rejected, but retention keeps
# them (a legal hold, or the archive's own expiry still ahead); the Error Comment
# says which. PS3.4 B.2.3 names no warning for this.
NOT_DESTROYED = 0xB410
# Refused: Not Authorized (PS3.7 C.5.x general status): what the calling
# organisation's state forbids (services.directory: testing takes test identity
# codes only); the Error Comment names the rule.
NOT_AUTHORIZED = 0x0124
# N-ACTION (PS3.7 C.4.2.1.x / PS3.4 J.3.2.1.2)
PROCESSING_FAILURE = 0x0110
NO_SUCH_ACTION_TYPE = 0x0123
INVALID_ARGUMENT_VALUE = 0x0115
MISSING_ATTRIBUTE = 0x0120

ERROR_COMMENT_MAX = 64  # Error Comment (0000,0902) is LO


def status(code: int, comment: str = "") -> Dataset:
    """A status data set with an Error Comment cut to its 64 characters."""
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:ERROR_COMMENT_MAX]
    return ds
