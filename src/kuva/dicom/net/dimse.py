"""DIMSE command sets (PS3.7 9.3, 10.3, Annex E): group 0000 in implicit VR little endian.

`encode_command` writes a command set, `decode_command` reads one (or raises `DimseError`);
`request` and `response` build the fields of the messages of PS3.7 9.3 and 10.3. The data
set that may follow a command is not handled here: it is opaque bytes to the engine.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import TypeAlias


class CommandField(IntEnum):
    """Command Field (0000,0100) values (PS3.7 E.1)."""

    C_STORE_RQ = 0x0001
    C_STORE_RSP = 0x8001
    C_GET_RQ = 0x0010
    C_GET_RSP = 0x8010
    C_FIND_RQ = 0x0020
    C_FIND_RSP = 0x8020
    C_MOVE_RQ = 0x0021
    C_MOVE_RSP = 0x8021
    C_ECHO_RQ = 0x0030
    C_ECHO_RSP = 0x8030
    N_EVENT_REPORT_RQ = 0x0100
    N_EVENT_REPORT_RSP = 0x8100
    N_GET_RQ = 0x0110
    N_GET_RSP = 0x8110
    N_SET_RQ = 0x0120
    N_SET_RSP = 0x8120
    N_ACTION_RQ = 0x0130
    N_ACTION_RSP = 0x8130
    N_CREATE_RQ = 0x0140
    N_CREATE_RSP = 0x8140
    N_DELETE_RQ = 0x0150
    N_DELETE_RSP = 0x8150
    C_CANCEL_RQ = 0x0FFF


NO_DATA_SET = 0x0101  # Command Data Set Type (0000,0800): no data set follows (PS3.7 E.1)
DATA_SET_PRESENT = 0x0001  # any other value means a data set follows
ERROR_COMMENT_MAX = 64  # Error Comment (0000,0902) is LO


class Tag(IntEnum):
    """Command elements of group 0000 (PS3.7 Table E.1-1): value (group << 16) | element."""

    COMMAND_GROUP_LENGTH = 0x00000000
    AFFECTED_SOP_CLASS_UID = 0x00000002
    REQUESTED_SOP_CLASS_UID = 0x00000003
    COMMAND_FIELD = 0x00000100
    MESSAGE_ID = 0x00000110
    MESSAGE_ID_BEING_RESPONDED_TO = 0x00000120
    MOVE_DESTINATION = 0x00000600
    PRIORITY = 0x00000700
    COMMAND_DATA_SET_TYPE = 0x00000800
    STATUS = 0x00000900
    OFFENDING_ELEMENT = 0x00000901
    ERROR_COMMENT = 0x00000902
    ERROR_ID = 0x00000903
    AFFECTED_SOP_INSTANCE_UID = 0x00001000
    REQUESTED_SOP_INSTANCE_UID = 0x00001001
    EVENT_TYPE_ID = 0x00001002
    ATTRIBUTE_IDENTIFIER_LIST = 0x00001005
    ACTION_TYPE_ID = 0x00001008
    NUMBER_OF_REMAINING_SUBOPERATIONS = 0x00001020
    NUMBER_OF_COMPLETED_SUBOPERATIONS = 0x00001021
    NUMBER_OF_FAILED_SUBOPERATIONS = 0x00001022
    NUMBER_OF_WARNING_SUBOPERATIONS = 0x00001023
    MOVE_ORIGINATOR_AE_TITLE = 0x00001030
    MOVE_ORIGINATOR_MESSAGE_ID = 0x00001031


class DimseError(Exception):
    """A malformed command set (PS3.7 Annex E)."""


# US/UL -> int; UI/AE/LO -> str (padding stripped); AT -> (group << 16) | element ints
Value: TypeAlias = int | str | tuple[int, ...]

# Value representations of the command elements (PS3.7 Table E.1-1)
_US, _UL, _UI, _AE, _LO, _AT = range(6)
_VR: dict[int, int] = {
    Tag.COMMAND_GROUP_LENGTH: _UL,
    Tag.AFFECTED_SOP_CLASS_UID: _UI,
    Tag.REQUESTED_SOP_CLASS_UID: _UI,
    Tag.COMMAND_FIELD: _US,
    Tag.MESSAGE_ID: _US,
    Tag.MESSAGE_ID_BEING_RESPONDED_TO: _US,
    Tag.MOVE_DESTINATION: _AE,
    Tag.PRIORITY: _US,
    Tag.COMMAND_DATA_SET_TYPE: _US,
    Tag.STATUS: _US,
    Tag.OFFENDING_ELEMENT: _AT,
    Tag.ERROR_COMMENT: _LO,
    Tag.ERROR_ID: _US,
    Tag.AFFECTED_SOP_INSTANCE_UID: _UI,
    Tag.REQUESTED_SOP_INSTANCE_UID: _UI,
    Tag.EVENT_TYPE_ID: _US,
    Tag.ATTRIBUTE_IDENTIFIER_LIST: _AT,
    Tag.ACTION_TYPE_ID: _US,
    Tag.NUMBER_OF_REMAINING_SUBOPERATIONS: _US,
    Tag.NUMBER_OF_COMPLETED_SUBOPERATIONS: _US,
    Tag.NUMBER_OF_FAILED_SUBOPERATIONS: _US,
    Tag.NUMBER_OF_WARNING_SUBOPERATIONS: _US,
    Tag.MOVE_ORIGINATOR_AE_TITLE: _AE,
    Tag.MOVE_ORIGINATOR_MESSAGE_ID: _US,
}

# An AE title (PS3.5 6.2): at most 16 characters of the default repertoire, no backslash,
# no control characters
_AE_TITLE = re.compile(rb"[ -\[\]-~]{0,16}")
_HEADER = struct.Struct("<HHL")  # group, element, value length (PS3.5 7.1.3, implicit VR)
_US_ELEMENT = struct.Struct("<HHLH")
_UL_ELEMENT = struct.Struct("<HHLL")
_US_VALUE = struct.Struct("<H")
_UL_VALUE = struct.Struct("<L")
_TAG_VALUE = struct.Struct("<HH")


@dataclass(slots=True)
class Command:
    """A decoded command set: its elements by tag, with typed read accessors (PS3.7 E.1).

    `fields` holds every known group 0000 element but the Command Group Length; elements
    of group 0000 PS3.7 no longer defines are skipped.
    """

    fields: dict[int, Value]

    def _int(self, tag: Tag) -> int | None:
        value = self.fields.get(tag)
        return value if isinstance(value, int) else None

    def _str(self, tag: Tag) -> str:
        value = self.fields.get(tag)
        return value if isinstance(value, str) else ""

    @property
    def command_field(self) -> int:
        return self._int(Tag.COMMAND_FIELD) or 0

    @property
    def message_id(self) -> int:
        return self._int(Tag.MESSAGE_ID) or 0

    @property
    def message_id_being_responded_to(self) -> int:
        return self._int(Tag.MESSAGE_ID_BEING_RESPONDED_TO) or 0

    @property
    def status(self) -> int | None:
        return self._int(Tag.STATUS)

    @property
    def affected_sop_class_uid(self) -> str:
        return self._str(Tag.AFFECTED_SOP_CLASS_UID)

    @property
    def affected_sop_instance_uid(self) -> str:
        return self._str(Tag.AFFECTED_SOP_INSTANCE_UID)

    @property
    def requested_sop_class_uid(self) -> str:
        return self._str(Tag.REQUESTED_SOP_CLASS_UID)

    @property
    def requested_sop_instance_uid(self) -> str:
        return self._str(Tag.REQUESTED_SOP_INSTANCE_UID)

    @property
    def move_destination(self) -> str:
        return self._str(Tag.MOVE_DESTINATION)

    @property
    def move_originator_ae(self) -> str:
        return self._str(Tag.MOVE_ORIGINATOR_AE_TITLE)

    @property
    def move_originator_message_id(self) -> int | None:
        return self._int(Tag.MOVE_ORIGINATOR_MESSAGE_ID)

    @property
    def priority(self) -> int:
        return self._int(Tag.PRIORITY) or 0

    @property
    def has_data_set(self) -> bool:
        """Command Data Set Type (0000,0800) other than 0x0101 (PS3.7 E.1)."""
        return self._int(Tag.COMMAND_DATA_SET_TYPE) not in (None, NO_DATA_SET)

    @property
    def action_type_id(self) -> int | None:
        return self._int(Tag.ACTION_TYPE_ID)

    @property
    def event_type_id(self) -> int | None:
        return self._int(Tag.EVENT_TYPE_ID)

    @property
    def error_comment(self) -> str:
        return self._str(Tag.ERROR_COMMENT)

    @property
    def is_request(self) -> bool:
        return not self.command_field & 0x8000

    @property
    def is_response(self) -> bool:
        return bool(self.command_field & 0x8000)

    @property
    def is_pending(self) -> bool:
        """A pending response of C-FIND/C-GET/C-MOVE (PS3.7 C.4.1.1.4)."""
        return self.status in (0xFF00, 0xFF01)


# --- encoding ----------------------------------------------------------------------------


def encode_command(fields: Mapping[int, Value], *, has_data_set: bool) -> bytes:
    """A command set in implicit VR little endian, elements in tag order (PS3.7 6.3.1, E.1).

    The Command Group Length (0000,0000) comes first and Command Data Set Type (0000,0800)
    says whether a data set follows, whatever `fields` holds for either. UIDs are padded
    with NUL, AE and LO values with a space to an even length (PS3.5 6.2).
    """
    elements = dict(fields)
    elements.pop(Tag.COMMAND_GROUP_LENGTH, None)
    elements[Tag.COMMAND_DATA_SET_TYPE] = DATA_SET_PRESENT if has_data_set else NO_DATA_SET
    parts = [b""]
    for tag in sorted(elements):
        parts.append(_element(tag, elements[tag]))
    length = sum(map(len, parts))
    parts[0] = _UL_ELEMENT.pack(0, 0, 4, length)
    return b"".join(parts)


def _element(tag: int, value: Value) -> bytes:
    vr = _VR.get(tag)
    if vr is None:
        raise ValueError(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) is not a command element")
    element = tag & 0xFFFF
    if vr in (_US, _UL):
        if not isinstance(value, int):
            raise TypeError(f"(0000,{element:04X}) takes an int, not {value!r}")
        if vr == _US:
            return _US_ELEMENT.pack(0, element, 2, value)
        return _UL_ELEMENT.pack(0, element, 4, value)
    if vr == _AT:
        if not isinstance(value, tuple):
            raise TypeError(f"(0000,{element:04X}) takes a tuple of tags, not {value!r}")
        raw = b"".join(_TAG_VALUE.pack(t >> 16, t & 0xFFFF) for t in value)
    else:
        if not isinstance(value, str):
            raise TypeError(f"(0000,{element:04X}) takes a str, not {value!r}")
        if vr == _UI:
            raw = value.encode("ascii")
            if len(raw) & 1:
                raw += b"\x00"
        else:  # AE, LO: the default character repertoire (PS3.7 E.1); a backslash would
            # split the value in two (PS3.5 6.2)
            raw = value.encode("ascii", "replace").replace(b"\\", b"?")
            if len(raw) & 1:
                raw += b" "
    return _HEADER.pack(0, element, len(raw)) + raw


# --- decoding ----------------------------------------------------------------------------


def decode_command(data: bytes | memoryview) -> Command:
    """Decode a command set (PS3.7 E.1, implicit VR little endian); raises `DimseError`.

    Elements must be of group 0000, in ascending tag order, inside the data, with the
    lengths of their VRs; a Command Group Length, when present, must say the rest's length;
    UIDs ASCII and AE titles of PS3.5 6.2. An element of a number VR with an empty value
    counts as absent. An Error Comment is read whatever it holds: bytes outside ASCII and a
    backslash as "?".
    """
    data = bytes(data)
    end = len(data)
    fields: dict[int, Value] = {}
    pos = 0
    previous = -1
    while pos < end:
        if end - pos < 8:
            raise DimseError(f"command set: {end - pos} bytes left, too few for an element")
        group, element, length = _HEADER.unpack_from(data, pos)
        start = pos + 8
        pos = start + length
        if pos > end:
            raise DimseError(f"command element (0000,{element:04X}) overruns the command set")
        if group != 0:
            raise DimseError(f"element ({group:04X},{element:04X}) in a command set")
        if element <= previous:
            raise DimseError(f"command element (0000,{element:04X}) out of order")
        previous = element
        vr = _VR.get(element)
        if vr is None:
            continue  # an element PS3.7 no longer defines (PS3.7 E.2)
        if vr in (_US, _UL):
            if length == 0:
                continue
            number = _US_VALUE if vr == _US else _UL_VALUE
            if length != number.size:
                raise DimseError(f"command element (0000,{element:04X}) of length {length}")
            value: Value = number.unpack_from(data, start)[0]
            if element == Tag.COMMAND_GROUP_LENGTH:  # first, being the lowest tag
                if value != end - pos:
                    raise DimseError(f"command group length {value}, not {end - pos}")
                continue
        elif vr == _AT:
            if length & 3:
                raise DimseError(f"command element (0000,{element:04X}) of length {length}")
            value = tuple((g << 16) | e for g, e in _TAG_VALUE.iter_unpack(data[start:pos]))
        elif vr == _LO:  # an Error Comment: read whatever it holds
            raw = data[start:pos].replace(b"\\", b"?").strip(b" \x00")
            value = raw.decode("ascii", "replace").replace("\ufffd", "?")
        elif vr == _AE:
            raw = data[start:pos].strip(b" \x00")
            if _AE_TITLE.fullmatch(raw) is None:
                raise DimseError(f"command element (0000,{element:04X}) is not an AE title")
            value = raw.decode("ascii")
        else:
            try:
                value = data[start:pos].rstrip(b"\x00 ").decode("ascii")
            except UnicodeDecodeError:
                raise DimseError(f"command element (0000,{element:04X}) is not ASCII") from None
        fields[element] = value
    if Tag.COMMAND_FIELD not in fields:
        raise DimseError("command set without a Command Field (0000,0100)")
    return Command(fields)


# --- building requests and responses -----------------------------------------------------

_ALIASES = {"move_originator_ae": Tag.MOVE_ORIGINATOR_AE_TITLE}
_PRIORITY_REQUESTS = frozenset(
    {
        CommandField.C_STORE_RQ,
        CommandField.C_FIND_RQ,
        CommandField.C_GET_RQ,
        CommandField.C_MOVE_RQ,
    }
)


def _tag(name: str) -> Tag:
    """The command element named `name`: a Tag member's name in lower case."""
    alias = _ALIASES.get(name)
    if alias is not None:
        return alias
    try:
        return Tag[name.upper()]
    except KeyError:
        raise TypeError(f"{name!r} is not a command element") from None


def request(field: CommandField, message_id: int, **kwargs: Value) -> dict[int, Value]:
    """The fields of a request message (PS3.7 9.3, 10.3), elements named by `Tag` in lower case.

    Priority (0000,0700) defaults to 0 (MEDIUM) where the request has one. For C-CANCEL-RQ
    (PS3.7 9.3.2.3) `message_id` is the Message ID of the request to cancel, sent as
    Message ID Being Responded To.
    """
    fields: dict[int, Value] = {Tag.COMMAND_FIELD: int(field)}
    if field == CommandField.C_CANCEL_RQ:
        fields[Tag.MESSAGE_ID_BEING_RESPONDED_TO] = message_id
    else:
        fields[Tag.MESSAGE_ID] = message_id
    if field in _PRIORITY_REQUESTS:
        fields[Tag.PRIORITY] = 0
    for name, value in kwargs.items():
        fields[_tag(name)] = value
    return fields


# Response elements taken from the request (PS3.7 9.3, 10.3): (response tag, request tag)
_AFFECTED_CLASS = ((Tag.AFFECTED_SOP_CLASS_UID, Tag.AFFECTED_SOP_CLASS_UID),)
_AFFECTED = (*_AFFECTED_CLASS, (Tag.AFFECTED_SOP_INSTANCE_UID, Tag.AFFECTED_SOP_INSTANCE_UID))
_REQUESTED = (
    (Tag.AFFECTED_SOP_CLASS_UID, Tag.REQUESTED_SOP_CLASS_UID),
    (Tag.AFFECTED_SOP_INSTANCE_UID, Tag.REQUESTED_SOP_INSTANCE_UID),
)
_COPIED: dict[int, tuple[tuple[Tag, Tag], ...]] = {
    CommandField.C_STORE_RQ: _AFFECTED,  # 9.3.1.2
    CommandField.C_FIND_RQ: _AFFECTED_CLASS,  # 9.3.2.2
    CommandField.C_GET_RQ: _AFFECTED_CLASS,  # 9.3.3.2
    CommandField.C_MOVE_RQ: _AFFECTED_CLASS,  # 9.3.4.2
    CommandField.C_ECHO_RQ: _AFFECTED_CLASS,  # 9.3.5.2
    CommandField.N_EVENT_REPORT_RQ: (*_AFFECTED, (Tag.EVENT_TYPE_ID, Tag.EVENT_TYPE_ID)),  # 10.3.1
    CommandField.N_GET_RQ: _REQUESTED,  # 10.3.2
    CommandField.N_SET_RQ: _REQUESTED,  # 10.3.3
    CommandField.N_ACTION_RQ: (*_REQUESTED, (Tag.ACTION_TYPE_ID, Tag.ACTION_TYPE_ID)),  # 10.3.4
    CommandField.N_CREATE_RQ: _AFFECTED,  # 10.3.5
    CommandField.N_DELETE_RQ: _REQUESTED,  # 10.3.6
}


def response(req: Command, status: int, **extra: Value) -> dict[int, Value]:
    """The fields of the response to `req` with `status` (PS3.7 9.3, 10.3).

    Message ID Being Responded To is the request's Message ID; the Affected SOP Class and
    Instance UIDs (and Event/Action Type ID) are taken from the request as the response
    type requires; `extra` (elements named by `Tag` in lower case) adds or overrides
    elements. An Error Comment is cut to its 64 characters.
    """
    copied = _COPIED.get(req.command_field)
    if copied is None:
        raise ValueError(f"command field 0x{req.command_field:04X} has no response")
    fields: dict[int, Value] = {
        Tag.COMMAND_FIELD: req.command_field | 0x8000,
        Tag.MESSAGE_ID_BEING_RESPONDED_TO: req.message_id,
    }
    for target, source in copied:
        value = req.fields.get(source)
        if value is not None and value != "":
            fields[target] = value
    fields[Tag.STATUS] = status
    for name, value in extra.items():
        tag = _tag(name)
        if tag == Tag.ERROR_COMMENT and isinstance(value, str):
            value = value[:ERROR_COMMENT_MAX]
        fields[tag] = value
    return fields
