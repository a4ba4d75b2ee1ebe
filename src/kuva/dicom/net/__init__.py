"""kuva's own DICOM upper layer (PS3.8) and DIMSE (PS3.7) on asyncio.

Knows the protocol, not the archive: it imports nothing of kuva outside this package and
deals in bytes (data sets are opaque bytes in the presentation context's transfer syntax).
`pdu` is the PDU and item codec (PS3.8 9.3), `dimse` the command set codec (PS3.7 Annex E).
"""

from kuva.dicom.net.dimse import (
    NO_DATA_SET,
    Command,
    CommandField,
    DimseError,
    Tag,
    Value,
    decode_command,
    encode_command,
    request,
    response,
)
from kuva.dicom.net.pdu import (
    APPLICATION_CONTEXT,
    PDU_HEADER,
    PDV_HEADER,
    Abort,
    AbortReason,
    AssociateAccept,
    AssociateReject,
    AssociateRequest,
    ContextResult,
    Pdu,
    PduError,
    PduType,
    ProposedContext,
    ReleaseRequest,
    ReleaseResponse,
    RoleSelection,
    UserIdentity,
    UserInformation,
)

__all__ = [
    "APPLICATION_CONTEXT",
    "NO_DATA_SET",
    "PDU_HEADER",
    "PDV_HEADER",
    "Abort",
    "AbortReason",
    "AssociateAccept",
    "AssociateReject",
    "AssociateRequest",
    "Command",
    "CommandField",
    "ContextResult",
    "DimseError",
    "Pdu",
    "PduError",
    "PduType",
    "ProposedContext",
    "ReleaseRequest",
    "ReleaseResponse",
    "RoleSelection",
    "Tag",
    "UserIdentity",
    "UserInformation",
    "Value",
    "decode_command",
    "encode_command",
    "request",
    "response",
]
