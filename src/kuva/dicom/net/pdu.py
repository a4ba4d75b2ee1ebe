"""The PDU and item codec of the DICOM upper layer (PS3.8 9.3): pure functions, no I/O.

`encode` gives a whole PDU with its 6-byte header; `decode` takes a PDU type and the PDU's
variable part (the bytes after the header) and returns its dataclass, or raises `PduError`
carrying the A-ABORT reason to answer with (PS3.8 Table 9-26). Decoding is total: any bytes
either decode or raise `PduError`. P-DATA-TF bodies are not decoded here: the association
parses them PDV by PDV (PS3.8 9.3.5); `pdata_header`, `PDV_HEADER` and `encode_pdv` build them.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import TypeAlias

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"  # DICOM Application Context Name (PS3.7 A.2.1)
MAX_ASSOCIATE_LENGTH = 1 << 20  # largest A-ASSOCIATE-RQ/AC body decoded (a limit of kuva's)
MAX_CONTEXTS = 128  # odd presentation context ids 1..255 (PS3.8 9.3.2.2)


class PduType(IntEnum):
    """PDU types (PS3.8 9.3.1)."""

    ASSOCIATE_RQ = 1
    ASSOCIATE_AC = 2
    ASSOCIATE_RJ = 3
    P_DATA_TF = 4
    RELEASE_RQ = 5
    RELEASE_RP = 6
    ABORT = 7


class AbortReason(IntEnum):
    """A-ABORT reasons when the source is the service provider (PS3.8 Table 9-26, source 2)."""

    NOT_SPECIFIED = 0
    UNRECOGNIZED_PDU = 1
    UNEXPECTED_PDU = 2
    UNRECOGNIZED_PDU_PARAMETER = 4
    UNEXPECTED_PDU_PARAMETER = 5
    INVALID_PDU_PARAMETER_VALUE = 6


class PduError(Exception):
    """Malformed PDU input; `reason` is the A-ABORT reason to send (PS3.8 9.3.8)."""

    def __init__(self, reason: AbortReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ProposedContext:
    """A presentation context item of an A-ASSOCIATE-RQ (PS3.8 9.3.2.2)."""

    id: int  # odd 1..255
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ContextResult:
    """A presentation context item of an A-ASSOCIATE-AC (PS3.8 9.3.3.2).

    result: 0 acceptance, 1 user-rejection, 2 no-reason (provider rejection),
    3 abstract-syntax-not-supported, 4 transfer-syntaxes-not-supported (provider rejection).
    """

    id: int
    result: int
    transfer_syntax: str  # "" when not accepted


@dataclass(frozen=True, slots=True)
class RoleSelection:
    """An SCP/SCU Role Selection sub-item (PS3.7 D.3.3.4)."""

    sop_class_uid: str
    scu_role: bool
    scp_role: bool


@dataclass(frozen=True, slots=True)
class UserIdentity:
    """A User Identity sub-item of an A-ASSOCIATE-RQ (PS3.7 D.3.3.7.1).

    type: 1 username, 2 username and passcode, 3 Kerberos ticket, 4 SAML assertion, 5 JWT.
    """

    type: int
    positive_response_requested: bool
    primary: bytes
    secondary: bytes = b""


@dataclass(frozen=True, slots=True)
class UserInformation:
    """The User Information item and its sub-items (PS3.8 9.3.2.3, PS3.7 D.3.3)."""

    max_pdu_length: int = 0  # 0 = unlimited (PS3.8 D.1)
    implementation_class_uid: str = ""
    implementation_version_name: str = ""
    async_ops: tuple[int, int] | None = None  # (invoked, performed) PS3.7 D.3.3.3
    roles: tuple[RoleSelection, ...] = ()
    extended_negotiation: tuple[tuple[str, bytes], ...] = ()  # SOP Class Extended, D.3.3.5
    # (SOP class, service class, related general SOP classes): SOP Class Common Extended, D.3.3.6
    common_extended_negotiation: tuple[tuple[str, str, tuple[str, ...]], ...] = ()
    user_identity: UserIdentity | None = None  # in an RQ
    user_identity_response: bytes | None = None  # in an AC: the server response, D.3.3.7.2


@dataclass(frozen=True, slots=True)
class AssociateRequest:
    """An A-ASSOCIATE-RQ PDU (PS3.8 9.3.2); AE titles without their padding."""

    called_ae: str
    calling_ae: str
    contexts: tuple[ProposedContext, ...]
    user: UserInformation
    application_context: str = APPLICATION_CONTEXT
    protocol_version: int = 1


@dataclass(frozen=True, slots=True)
class AssociateAccept:
    """An A-ASSOCIATE-AC PDU (PS3.8 9.3.3)."""

    called_ae: str
    calling_ae: str
    contexts: tuple[ContextResult, ...]
    user: UserInformation
    application_context: str = APPLICATION_CONTEXT
    protocol_version: int = 1


@dataclass(frozen=True, slots=True)
class AssociateReject:
    """An A-ASSOCIATE-RJ PDU (PS3.8 9.3.4); result, source and reason of PS3.8 Table 9-21."""

    result: int
    source: int
    reason: int


@dataclass(frozen=True, slots=True)
class Abort:
    """An A-ABORT PDU (PS3.8 9.3.8); source 0 service user, 2 service provider."""

    source: int
    reason: int


@dataclass(frozen=True, slots=True)
class ReleaseRequest:
    """An A-RELEASE-RQ PDU (PS3.8 9.3.6)."""


@dataclass(frozen=True, slots=True)
class ReleaseResponse:
    """An A-RELEASE-RP PDU (PS3.8 9.3.7)."""


Pdu: TypeAlias = (
    AssociateRequest | AssociateAccept | AssociateReject | ReleaseRequest | ReleaseResponse | Abort
)

PDU_HEADER = struct.Struct(">BxL")  # PDU type, reserved, PDU length (PS3.8 9.3.1)
PDV_HEADER = struct.Struct(">LBB")  # PDV item length, context id, message control header (9.3.5.1)

# Item types (PS3.8 9.3.2, PS3.7 D.3.3)
_APPLICATION_CONTEXT = 0x10
_CONTEXT_RQ = 0x20
_CONTEXT_AC = 0x21
_ABSTRACT_SYNTAX = 0x30
_TRANSFER_SYNTAX = 0x40
_USER_INFORMATION = 0x50
_MAX_LENGTH = 0x51
_IMPLEMENTATION_CLASS_UID = 0x52
_ASYNC_OPS = 0x53
_ROLE_SELECTION = 0x54
_IMPLEMENTATION_VERSION_NAME = 0x55
_EXTENDED_NEGOTIATION = 0x56
_COMMON_EXTENDED_NEGOTIATION = 0x57
_USER_IDENTITY_RQ = 0x58
_USER_IDENTITY_AC = 0x59
# Sub-items that occur at most once in a User Information item (PS3.7 D.3.3)
_SINGLE_SUB_ITEMS = frozenset(
    {
        _MAX_LENGTH,
        _IMPLEMENTATION_CLASS_UID,
        _ASYNC_OPS,
        _IMPLEMENTATION_VERSION_NAME,
        _USER_IDENTITY_RQ,
        _USER_IDENTITY_AC,
    }
)

_ITEM = struct.Struct(">BxH")  # item type, reserved, item length
_ASSOCIATE_FIXED = struct.Struct(">H2x16s16s32x")  # version, called AE, calling AE (9.3.2)
_CONTEXT_HEAD = struct.Struct(">BxBx")  # context id, reserved, result/reason, reserved
_UL = struct.Struct(">L")
_US = struct.Struct(">H")
_US_US = struct.Struct(">HH")
_BB = struct.Struct(">BB")
_REJECT = struct.Struct(">xBBB")  # reserved, result, source, reason/diag. (9.3.4)
_ABORT = struct.Struct(">xxBB")  # reserved, reserved, source, reason/diag. (9.3.8)
_FIXED_BODY = b"\x00\x00\x00\x00"  # A-RELEASE-RQ/RP variable part: 4 reserved bytes

# A UID (PS3.5 9.1): digits and dots, at most 64 characters.
_UID = re.compile(rb"[0-9.]{1,64}")
# An AE title (PS3.5 6.2 AE): 1-16 characters of the default repertoire, no backslash,
# no control characters.
_AE = re.compile(rb"[ -\[\]-~]{1,16}")

# Valid UIDs read before, by their bytes: the same SOP classes and transfer syntaxes come in
# every A-ASSOCIATE-RQ. Filled up to its size, never emptied (a few hundred KiB at most).
_UID_CACHE: dict[bytes, str] = {}
_UID_CACHE_SIZE = 4096

_INVALID = AbortReason.INVALID_PDU_PARAMETER_VALUE
_UNEXPECTED = AbortReason.UNEXPECTED_PDU_PARAMETER
_UNRECOGNIZED = AbortReason.UNRECOGNIZED_PDU_PARAMETER


# --- decoding ----------------------------------------------------------------------------


def decode(pdu_type: int, body: bytes | memoryview) -> Pdu:
    """Decode the variable part of a PDU of `pdu_type` (PS3.8 9.3); raises `PduError`.

    P-DATA-TF (9.3.5) is parsed incrementally by the association, not here.
    """
    if pdu_type == PduType.ASSOCIATE_RQ or pdu_type == PduType.ASSOCIATE_AC:
        if len(body) > MAX_ASSOCIATE_LENGTH:
            raise PduError(
                _INVALID,
                f"A-ASSOCIATE PDU of {len(body)} bytes, above the {MAX_ASSOCIATE_LENGTH} allowed",
            )
        data = bytes(body)
        if pdu_type == PduType.ASSOCIATE_RQ:
            return _associate_request(data)
        return _associate_accept(data)
    if pdu_type == PduType.ASSOCIATE_RJ:
        result, source, reason = _REJECT.unpack(_fixed(body, "A-ASSOCIATE-RJ"))
        return AssociateReject(result, source, reason)
    if pdu_type == PduType.ABORT:
        source, reason = _ABORT.unpack(_fixed(body, "A-ABORT"))
        return Abort(source, reason)
    if pdu_type == PduType.RELEASE_RQ:
        _fixed(body, "A-RELEASE-RQ")
        return ReleaseRequest()
    if pdu_type == PduType.RELEASE_RP:
        _fixed(body, "A-RELEASE-RP")
        return ReleaseResponse()
    if pdu_type == PduType.P_DATA_TF:
        raise PduError(AbortReason.UNEXPECTED_PDU, "P-DATA-TF is parsed by the association")
    raise PduError(AbortReason.UNRECOGNIZED_PDU, f"unrecognized PDU type 0x{pdu_type:02X}")


def _fixed(body: bytes | memoryview, what: str) -> bytes:
    """The 4-byte variable part of A-ASSOCIATE-RJ, A-RELEASE-RQ/RP and A-ABORT (PS3.8 9.3.4-8)."""
    if len(body) != 4:
        raise PduError(_INVALID, f"{what} PDU length {len(body)}, expected 4")
    return bytes(body)


def _items(data: bytes, pos: int, end: int, what: str) -> Iterator[tuple[int, int, int]]:
    """(item type, value start, value end) of the items in data[pos:end] (PS3.8 9.3.2)."""
    while pos < end:
        if end - pos < 4:
            raise PduError(_INVALID, f"{what}: {end - pos} bytes left, too few for an item")
        item_type, length = _ITEM.unpack_from(data, pos)
        start = pos + 4
        pos = start + length
        if pos > end:
            raise PduError(
                _INVALID, f"{what}: item 0x{item_type:02X} of length {length} overruns its parent"
            )
        yield item_type, start, pos


def _uid(data: bytes, start: int, end: int, what: str) -> str:
    """A UID of an item (PS3.8 9.3.2.2.1, PS3.5 9.1), trailing NUL/space padding removed."""
    raw = data[start:end]
    uid = _UID_CACHE.get(raw)
    if uid is not None:
        return uid
    stripped = raw.rstrip(b"\x00 ")
    if _UID.fullmatch(stripped) is None:
        raise PduError(_INVALID, f"{what} is not a UID: {stripped[:80]!r}")
    uid = stripped.decode("ascii")
    if len(_UID_CACHE) < _UID_CACHE_SIZE:
        _UID_CACHE[raw] = uid
    return uid


def _u16_prefixed(data: bytes, pos: int, end: int, what: str) -> tuple[int, int]:
    """(start, end) of a field led by its 2-byte length (PS3.7 D.3.3.4-7)."""
    if end - pos < 2:
        raise PduError(_INVALID, f"{what}: truncated length field")
    (length,) = _US.unpack_from(data, pos)
    start = pos + 2
    if start + length > end:
        raise PduError(_INVALID, f"{what}: length {length} overruns its item")
    return start, start + length


def _ae_title(raw: bytes, what: str) -> str:
    """A called/calling AE title of an A-ASSOCIATE-RQ (PS3.8 9.3.2), padding removed."""
    title = raw.rstrip(b" \x00").lstrip(b" ")
    if _AE.fullmatch(title) is None:
        raise PduError(_INVALID, f"{what} AE title {raw!r} is not 1-16 printable ASCII characters")
    return title.decode("ascii")


def _ac_ae_title(raw: bytes) -> str:
    """An AE title field of an A-ASSOCIATE-AC: reserved, "not tested" (PS3.8 9.3.3)."""
    return _ascii(raw.rstrip(b" \x00").lstrip(b" "))


def _ascii(raw: bytes) -> str:
    """Text of a field not tested: bytes outside ASCII read as "?", so it encodes again."""
    return raw.decode("ascii", "replace").replace("\ufffd", "?")


def _associate_fixed(data: bytes, what: str) -> tuple[int, bytes, bytes]:
    if len(data) < _ASSOCIATE_FIXED.size:
        raise PduError(_INVALID, f"{what} PDU of {len(data)} bytes, too short")
    version, called, calling = _ASSOCIATE_FIXED.unpack_from(data)
    return version, called, calling


def _associate_request(data: bytes) -> AssociateRequest:
    """A-ASSOCIATE-RQ variable part (PS3.8 9.3.2)."""
    version, called, calling = _associate_fixed(data, "A-ASSOCIATE-RQ")
    called_ae = _ae_title(called, "called")
    calling_ae = _ae_title(calling, "calling")
    application_context: str | None = None
    user: UserInformation | None = None
    contexts: list[ProposedContext] = []
    for item_type, start, end in _items(data, _ASSOCIATE_FIXED.size, len(data), "A-ASSOCIATE-RQ"):
        if item_type == _CONTEXT_RQ:
            contexts.append(_proposed_context(data, start, end))
        elif item_type == _APPLICATION_CONTEXT:
            if application_context is not None:
                raise PduError(_UNEXPECTED, "A-ASSOCIATE-RQ: two application context items")
            application_context = _uid(data, start, end, "application context name")
        elif item_type == _USER_INFORMATION:
            if user is not None:
                raise PduError(_UNEXPECTED, "A-ASSOCIATE-RQ: two user information items")
            user = _user_information(data, start, end)
        elif item_type == _CONTEXT_AC:
            raise PduError(_UNEXPECTED, "A-ASSOCIATE-RQ: an A-ASSOCIATE-AC context item")
        else:
            raise PduError(_UNRECOGNIZED, f"A-ASSOCIATE-RQ: unrecognized item 0x{item_type:02X}")
    if not contexts:
        raise PduError(_INVALID, "A-ASSOCIATE-RQ without a presentation context item")
    _check_context_ids([c.id for c in contexts])
    if application_context is None or user is None:
        raise PduError(_INVALID, "A-ASSOCIATE-RQ without application context or user information")
    return AssociateRequest(
        called_ae, calling_ae, tuple(contexts), user, application_context, version
    )


def _associate_accept(data: bytes) -> AssociateAccept:
    """A-ASSOCIATE-AC variable part (PS3.8 9.3.3)."""
    version, called, calling = _associate_fixed(data, "A-ASSOCIATE-AC")
    application_context: str | None = None
    user: UserInformation | None = None
    contexts: list[ContextResult] = []
    for item_type, start, end in _items(data, _ASSOCIATE_FIXED.size, len(data), "A-ASSOCIATE-AC"):
        if item_type == _CONTEXT_AC:
            contexts.append(_context_result(data, start, end))
        elif item_type == _APPLICATION_CONTEXT:
            if application_context is not None:
                raise PduError(_UNEXPECTED, "A-ASSOCIATE-AC: two application context items")
            application_context = _uid(data, start, end, "application context name")
        elif item_type == _USER_INFORMATION:
            if user is not None:
                raise PduError(_UNEXPECTED, "A-ASSOCIATE-AC: two user information items")
            user = _user_information(data, start, end)
        elif item_type == _CONTEXT_RQ:
            raise PduError(_UNEXPECTED, "A-ASSOCIATE-AC: an A-ASSOCIATE-RQ context item")
        else:
            raise PduError(_UNRECOGNIZED, f"A-ASSOCIATE-AC: unrecognized item 0x{item_type:02X}")
    _check_context_ids([c.id for c in contexts])
    if application_context is None or user is None:
        raise PduError(_INVALID, "A-ASSOCIATE-AC without application context or user information")
    return AssociateAccept(
        _ac_ae_title(called),
        _ac_ae_title(calling),
        tuple(contexts),
        user,
        application_context,
        version,
    )


def _check_context_ids(ids: list[int]) -> None:
    if len(ids) > MAX_CONTEXTS:
        raise PduError(_INVALID, f"{len(ids)} presentation contexts, at most {MAX_CONTEXTS}")
    if len(set(ids)) != len(ids):
        raise PduError(_INVALID, "presentation context ids repeat")


def _context_id(data: bytes, start: int, end: int) -> tuple[int, int]:
    if end - start < 4:
        raise PduError(_INVALID, "presentation context item shorter than 4 bytes")
    context_id, result = _CONTEXT_HEAD.unpack_from(data, start)
    if not context_id & 1:
        raise PduError(_INVALID, f"presentation context id {context_id} is not odd")
    return context_id, result


def _proposed_context(data: bytes, start: int, end: int) -> ProposedContext:
    """A-ASSOCIATE-RQ presentation context item (PS3.8 9.3.2.2)."""
    context_id, _ = _context_id(data, start, end)
    abstract_syntax: str | None = None
    transfer_syntaxes: list[str] = []
    pos = start + 4
    while pos < end:  # the sub-items, as _items() but inline: 128 of these per RQ
        if end - pos < 4:
            raise PduError(_INVALID, f"context {context_id}: too few bytes for a sub-item")
        item_type, length = _ITEM.unpack_from(data, pos)
        s = pos + 4
        pos = e = s + length
        if e > end:
            raise PduError(_INVALID, f"context {context_id}: a sub-item overruns its item")
        if item_type == _TRANSFER_SYNTAX:
            transfer_syntaxes.append(_uid(data, s, e, "transfer syntax name"))
        elif item_type == _ABSTRACT_SYNTAX:
            if abstract_syntax is not None:
                raise PduError(_UNEXPECTED, f"context {context_id}: two abstract syntax sub-items")
            abstract_syntax = _uid(data, s, e, "abstract syntax name")
        else:
            raise PduError(
                _UNRECOGNIZED, f"context {context_id}: unrecognized sub-item 0x{item_type:02X}"
            )
    if abstract_syntax is None or not transfer_syntaxes:
        raise PduError(_INVALID, f"context {context_id}: no abstract or no transfer syntax")
    return ProposedContext(context_id, abstract_syntax, tuple(transfer_syntaxes))


def _context_result(data: bytes, start: int, end: int) -> ContextResult:
    """A-ASSOCIATE-AC presentation context item (PS3.8 9.3.3.2).

    The transfer syntax sub-item of a context not accepted is "not tested".
    """
    context_id, result = _context_id(data, start, end)
    if result > 4:
        raise PduError(_INVALID, f"context {context_id}: result/reason {result}")
    span: tuple[int, int] | None = None
    for item_type, s, e in _items(data, start + 4, end, "presentation context"):
        if item_type != _TRANSFER_SYNTAX:
            raise PduError(
                _UNRECOGNIZED, f"context {context_id}: unrecognized sub-item 0x{item_type:02X}"
            )
        if span is not None:
            raise PduError(_UNEXPECTED, f"context {context_id}: two transfer syntax sub-items")
        span = (s, e)
    if result != 0:
        return ContextResult(context_id, result, "")
    if span is None:
        raise PduError(_INVALID, f"context {context_id}: accepted without a transfer syntax")
    return ContextResult(context_id, 0, _uid(data, span[0], span[1], "transfer syntax name"))


def _user_information(data: bytes, start: int, end: int) -> UserInformation:
    """User Information item (PS3.8 9.3.2.3, PS3.7 D.3.3); unknown sub-items are ignored."""
    max_pdu_length = 0
    implementation_class_uid = ""
    implementation_version_name = ""
    async_ops: tuple[int, int] | None = None
    roles: list[RoleSelection] = []
    extended: list[tuple[str, bytes]] = []
    common: list[tuple[str, str, tuple[str, ...]]] = []
    identity: UserIdentity | None = None
    identity_response: bytes | None = None
    seen: set[int] = set()
    for item_type, s, e in _items(data, start, end, "user information"):
        if item_type in _SINGLE_SUB_ITEMS:
            if item_type in seen:
                raise PduError(_UNEXPECTED, f"user information: two sub-items 0x{item_type:02X}")
            seen.add(item_type)
        if item_type == _MAX_LENGTH:  # PS3.8 D.1
            if e - s != 4:
                raise PduError(_INVALID, "maximum length sub-item of length other than 4")
            (max_pdu_length,) = _UL.unpack_from(data, s)
        elif item_type == _IMPLEMENTATION_CLASS_UID:  # PS3.7 D.3.3.2
            implementation_class_uid = _uid(data, s, e, "implementation class UID")
        elif item_type == _IMPLEMENTATION_VERSION_NAME:  # PS3.7 D.3.3.2
            try:
                implementation_version_name = data[s:e].rstrip(b" \x00").decode("ascii")
            except UnicodeDecodeError:
                raise PduError(_INVALID, "implementation version name is not ASCII") from None
        elif item_type == _ASYNC_OPS:  # PS3.7 D.3.3.3
            if e - s != 4:
                raise PduError(_INVALID, "asynchronous operations window of length other than 4")
            async_ops = _US_US.unpack_from(data, s)
        elif item_type == _ROLE_SELECTION:  # PS3.7 D.3.3.4
            us, ue = _u16_prefixed(data, s, e, "role selection")
            if e - ue != 2:
                raise PduError(_INVALID, "role selection: not UID + SCU role + SCP role")
            scu, scp = _BB.unpack_from(data, ue)
            if scu > 1 or scp > 1:
                raise PduError(_INVALID, f"role selection: roles {scu}, {scp} are not 0 or 1")
            uid = _uid(data, us, ue, "role selection SOP class UID")
            roles.append(RoleSelection(uid, scu == 1, scp == 1))
        elif item_type == _EXTENDED_NEGOTIATION:  # PS3.7 D.3.3.5
            us, ue = _u16_prefixed(data, s, e, "SOP class extended negotiation")
            uid = _uid(data, us, ue, "extended negotiation SOP class UID")
            extended.append((uid, data[ue:e]))
        elif item_type == _COMMON_EXTENDED_NEGOTIATION:  # PS3.7 D.3.3.6
            common.append(_common_extended_negotiation(data, s, e))
        elif item_type == _USER_IDENTITY_RQ:  # PS3.7 D.3.3.7.1
            if e - s < 2:
                raise PduError(_INVALID, "user identity sub-item too short")
            identity_type, positive = _BB.unpack_from(data, s)
            if positive > 1:
                raise PduError(_INVALID, f"user identity: positive response requested {positive}")
            ps, pe = _u16_prefixed(data, s + 2, e, "user identity primary field")
            ss, se = _u16_prefixed(data, pe, e, "user identity secondary field")
            if se != e:
                raise PduError(_INVALID, "user identity: bytes after the secondary field")
            identity = UserIdentity(identity_type, positive == 1, data[ps:pe], data[ss:se])
        elif item_type == _USER_IDENTITY_AC:  # PS3.7 D.3.3.7.2
            rs, re_ = _u16_prefixed(data, s, e, "user identity server response")
            if re_ != e:
                raise PduError(_INVALID, "user identity: bytes after the server response")
            identity_response = data[rs:re_]
    return UserInformation(
        max_pdu_length,
        implementation_class_uid,
        implementation_version_name,
        async_ops,
        tuple(roles),
        tuple(extended),
        tuple(common),
        identity,
        identity_response,
    )


def _common_extended_negotiation(
    data: bytes, start: int, end: int
) -> tuple[str, str, tuple[str, ...]]:
    """SOP Class Common Extended Negotiation sub-item (PS3.7 D.3.3.6)."""
    what = "common extended negotiation"
    cs, ce = _u16_prefixed(data, start, end, what)
    ss, se = _u16_prefixed(data, ce, end, what)
    rs, re_ = _u16_prefixed(data, se, end, what)
    if re_ != end:
        raise PduError(_INVALID, f"{what}: bytes after the related general SOP classes")
    related: list[str] = []
    pos = rs
    while pos < re_:
        us, ue = _u16_prefixed(data, pos, re_, what)
        related.append(_uid(data, us, ue, "related general SOP class UID"))
        pos = ue
    return (
        _uid(data, cs, ce, "common extended negotiation SOP class UID"),
        _uid(data, ss, se, "service class UID"),
        tuple(related),
    )


# --- encoding ----------------------------------------------------------------------------


def encode(pdu: Pdu) -> bytes:
    """The whole PDU with its 6-byte header (PS3.8 9.3)."""
    if isinstance(pdu, AssociateRequest):
        return _associate(
            PduType.ASSOCIATE_RQ,
            pdu.protocol_version,
            pdu.called_ae,
            pdu.calling_ae,
            pdu.application_context,
            [_proposed_context_item(c) for c in pdu.contexts],
            pdu.user,
        )
    if isinstance(pdu, AssociateAccept):
        return _associate(
            PduType.ASSOCIATE_AC,
            pdu.protocol_version,
            pdu.called_ae,
            pdu.calling_ae,
            pdu.application_context,
            [_context_result_item(c) for c in pdu.contexts],
            pdu.user,
        )
    if isinstance(pdu, AssociateReject):
        return PDU_HEADER.pack(PduType.ASSOCIATE_RJ, 4) + _REJECT.pack(
            pdu.result, pdu.source, pdu.reason
        )
    if isinstance(pdu, Abort):
        return PDU_HEADER.pack(PduType.ABORT, 4) + _ABORT.pack(pdu.source, pdu.reason)
    if isinstance(pdu, ReleaseRequest):
        return PDU_HEADER.pack(PduType.RELEASE_RQ, 4) + _FIXED_BODY
    return PDU_HEADER.pack(PduType.RELEASE_RP, 4) + _FIXED_BODY


def pdata_header(length: int) -> bytes:
    """The 6-byte header of a P-DATA-TF PDU whose variable part is `length` bytes (9.3.5)."""
    return PDU_HEADER.pack(PduType.P_DATA_TF, length)


def encode_pdv(context_id: int, control: int, data: bytes | memoryview) -> bytes:
    """One presentation data value item, header and data (PS3.8 9.3.5.1, E.2).

    `control` is the message control header: bit 0 set = command, clear = data set;
    bit 1 set = last fragment.
    """
    return PDV_HEADER.pack(len(data) + 2, context_id, control) + data


def _item(item_type: int, value: bytes) -> bytes:
    return _ITEM.pack(item_type, len(value)) + value


def _u16_field(value: bytes) -> bytes:
    return _US.pack(len(value)) + value


def _ae_field(title: str) -> bytes:
    """An AE title field: ASCII padded with spaces to 16 bytes (PS3.8 9.3.2)."""
    raw = title.encode("ascii")
    if len(raw) > 16:
        raise ValueError(f"AE title {title!r} is longer than 16 characters")
    return raw.ljust(16)


def _associate(
    pdu_type: PduType,
    version: int,
    called_ae: str,
    calling_ae: str,
    application_context: str,
    context_items: list[bytes],
    user: UserInformation,
) -> bytes:
    """A-ASSOCIATE-RQ/AC (PS3.8 9.3.2, 9.3.3): fixed fields, then the items."""
    parts = [
        b"",
        _ASSOCIATE_FIXED.pack(version, _ae_field(called_ae), _ae_field(calling_ae)),
        _item(_APPLICATION_CONTEXT, application_context.encode("ascii")),
        *context_items,
        _item(_USER_INFORMATION, _user_information_value(user)),
    ]
    parts[0] = PDU_HEADER.pack(pdu_type, sum(map(len, parts)))
    return b"".join(parts)


def _proposed_context_item(context: ProposedContext) -> bytes:
    """A-ASSOCIATE-RQ presentation context item (PS3.8 9.3.2.2); UIDs unpadded."""
    parts = [
        _CONTEXT_HEAD.pack(context.id, 0),
        _item(_ABSTRACT_SYNTAX, context.abstract_syntax.encode("ascii")),
    ]
    parts += [_item(_TRANSFER_SYNTAX, ts.encode("ascii")) for ts in context.transfer_syntaxes]
    return _item(_CONTEXT_RQ, b"".join(parts))


def _context_result_item(context: ContextResult) -> bytes:
    """A-ASSOCIATE-AC presentation context item (PS3.8 9.3.3.2)."""
    return _item(
        _CONTEXT_AC,
        _CONTEXT_HEAD.pack(context.id, context.result)
        + _item(_TRANSFER_SYNTAX, context.transfer_syntax.encode("ascii")),
    )


def _user_information_value(user: UserInformation) -> bytes:
    """User Information sub-items in the order of PS3.7 D.3.3 (PS3.8 9.3.2.3)."""
    parts = [_item(_MAX_LENGTH, _UL.pack(user.max_pdu_length))]
    if user.implementation_class_uid:
        parts.append(
            _item(_IMPLEMENTATION_CLASS_UID, user.implementation_class_uid.encode("ascii"))
        )
    if user.async_ops is not None:
        parts.append(_item(_ASYNC_OPS, _US_US.pack(*user.async_ops)))
    for role in user.roles:
        parts.append(
            _item(
                _ROLE_SELECTION,
                _u16_field(role.sop_class_uid.encode("ascii"))
                + _BB.pack(role.scu_role, role.scp_role),
            )
        )
    if user.implementation_version_name:
        parts.append(
            _item(_IMPLEMENTATION_VERSION_NAME, user.implementation_version_name.encode("ascii"))
        )
    for uid, info in user.extended_negotiation:
        parts.append(_item(_EXTENDED_NEGOTIATION, _u16_field(uid.encode("ascii")) + info))
    for sop_class, service_class, related in user.common_extended_negotiation:
        related_field = b"".join(_u16_field(r.encode("ascii")) for r in related)
        parts.append(
            _item(
                _COMMON_EXTENDED_NEGOTIATION,
                _u16_field(sop_class.encode("ascii"))
                + _u16_field(service_class.encode("ascii"))
                + _u16_field(related_field),
            )
        )
    identity = user.user_identity
    if identity is not None:
        parts.append(
            _item(
                _USER_IDENTITY_RQ,
                _BB.pack(identity.type, identity.positive_response_requested)
                + _u16_field(identity.primary)
                + _u16_field(identity.secondary),
            )
        )
    if user.user_identity_response is not None:
        parts.append(_item(_USER_IDENTITY_AC, _u16_field(user.user_identity_response)))
    return b"".join(parts)
