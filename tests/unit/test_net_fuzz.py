"""Fuzzing the engine's decoders: whatever bytes a peer sends, `pdu.decode` answers a PDU or
PduError and `decode_command` a Command or DimseError - never another exception, and never
memory in proportion to a length field. What decodes encodes again to the same value."""

from __future__ import annotations

import struct
import tracemalloc

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kuva.dicom.net import pdu
from kuva.dicom.net.dimse import (
    NO_DATA_SET,
    CommandField,
    DimseError,
    Tag,
    decode_command,
    encode_command,
    request,
    response,
)
from kuva.dicom.net.pdu import (
    Abort,
    AbortReason,
    AssociateAccept,
    AssociateReject,
    AssociateRequest,
    ContextResult,
    PduError,
    ProposedContext,
    ReleaseRequest,
    ReleaseResponse,
    RoleSelection,
    UserIdentity,
    UserInformation,
)
from tests.unit.test_net_dimse import commands
from tests.unit.test_net_pdu import associate_accepts, associate_requests

FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CT = "1.2.840.10008.5.1.4.1.1.2"
IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"

USER = UserInformation(
    16384,
    "1.2.826.0.1.3680043.9.7433.1",
    "KUVA_1",
    (1, 1),
    (RoleSelection(CT, True, True),),
    (("1.2.840.10008.5.1.4.1.2.2.1", b"\x01\x01\x00"),),
    ((CT, "1.2.840.10008.4.2", ("1.2.840.10008.5.1.4.1.1.2.1",)),),
    UserIdentity(2, True, b"user", b"secret"),
)
SEEDS: list[pdu.Pdu] = [
    AssociateRequest(
        "KUVA",
        "MODALITY",
        (
            ProposedContext(1, CT, (EXPLICIT, IMPLICIT)),
            ProposedContext(3, "1.2.840.10008.1.1", (IMPLICIT,)),
            ProposedContext(255, "1.2.840.10008.5.1.4.1.2.2.1", (IMPLICIT, EXPLICIT)),
        ),
        USER,
    ),
    AssociateAccept(
        "KUVA",
        "MODALITY",
        (ContextResult(1, 0, EXPLICIT), ContextResult(3, 3, ""), ContextResult(5, 4, "")),
        UserInformation(0, "1.2.3", "X", (1, 1), user_identity_response=b"token"),
    ),
    AssociateReject(1, 1, 7),
    Abort(2, 6),
    ReleaseRequest(),
    ReleaseResponse(),
]
SEED_BYTES = [pdu.encode(seed) for seed in SEEDS]
PDU_TYPES = st.one_of(st.integers(1, 7), st.integers(0, 255))

STORE = request(
    CommandField.C_STORE_RQ,
    7,
    affected_sop_class_uid=CT,
    affected_sop_instance_uid="1.2.3.4.5",
    move_originator_ae="MOVER",
    move_originator_message_id=3,
)
COMMAND_SEEDS = [
    encode_command(STORE, has_data_set=True),
    encode_command(request(CommandField.C_MOVE_RQ, 2, move_destination="DEST"), has_data_set=True),
    encode_command(
        {
            **response(decode_command(encode_command(STORE, has_data_set=True)), 0xC000),
            Tag.ERROR_COMMENT: "cannot understand",
            Tag.OFFENDING_ELEMENT: (0x00100010, 0x00100020),
        },
        has_data_set=False,
    ),
    encode_command(
        request(
            CommandField.N_ACTION_RQ,
            9,
            requested_sop_class_uid="1.2.840.10008.1.20.1",
            requested_sop_instance_uid="1.2.840.10008.1.20.1.1",
            action_type_id=1,
            attribute_identifier_list=(0x00080016, 0x00080018),
        ),
        has_data_set=True,
    ),
]


# --- checks ------------------------------------------------------------------------------


def check_pdu(pdu_type: int, data: bytes) -> None:
    """decode answers a PDU or PduError; a PDU encodes to what decodes to it again."""
    try:
        value = pdu.decode(pdu_type, memoryview(data))
    except PduError as error:
        assert isinstance(error.reason, AbortReason)
        return
    again = pdu.encode(value)
    assert pdu.decode(again[0], again[6:]) == value


def check_command(data: bytes) -> None:
    """decode_command answers a Command or DimseError; a Command encodes again."""
    try:
        command = decode_command(memoryview(data))
    except DimseError:
        return
    again = decode_command(encode_command(command.fields, has_data_set=command.has_data_set))
    expected = dict(command.fields)
    expected[Tag.COMMAND_DATA_SET_TYPE] = 0x0001 if command.has_data_set else NO_DATA_SET
    assert again.fields == expected


# --- mutations ---------------------------------------------------------------------------

_ITEM_TYPES = {0x10, 0x20, 0x21, 0x30, 0x40, 0x50, *range(0x51, 0x5A)}


def _length_fields(data: bytes) -> list[tuple[int, int]]:
    """(offset, width) of the places that look like item or element length fields."""
    places = [
        (i + 2, 2) for i in range(len(data) - 3) if data[i] in _ITEM_TYPES and not data[i + 1]
    ]
    places += [(i, 2) for i in range(0, len(data) - 1)]  # the sub-item UID/field lengths
    places += [(i + 4, 4) for i in range(0, len(data) - 7)]  # element lengths of a command
    return places


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    """`seed` with 1-4 flips, overwrites, insertions, deletions, truncations or length fields."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "length"]))
        pos = draw(st.integers(0, len(data)))
        if kind == "flip" and pos < len(data):
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        elif kind == "truncate":
            del data[pos:]
        elif kind == "length":
            places = _length_fields(bytes(data))
            if places:
                offset, width = draw(st.sampled_from(places))
                value = draw(
                    st.one_of(
                        st.integers(0, (1 << (8 * width)) - 1),
                        st.sampled_from([0, 1, 2, 3, 4, 0xFF, 0xFFFF, (1 << (8 * width)) - 1]),
                    )
                )
                big_endian = draw(st.booleans())
                data[offset : offset + width] = value.to_bytes(
                    width, "big" if big_endian else "little"
                )
    return bytes(data)


@st.composite
def item_soup(draw: st.DrawFn, depth: int = 2) -> bytes:
    """Random items of the known types (and others), nested, with honest or lying lengths."""
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        item_type = draw(st.one_of(st.sampled_from(sorted(_ITEM_TYPES)), st.integers(0, 255)))
        if depth and draw(st.booleans()):
            value = draw(st.binary(max_size=4)) + draw(item_soup(depth - 1))
        else:
            value = draw(
                st.one_of(
                    st.binary(max_size=40),
                    st.text("0123456789.", min_size=1, max_size=70).map(str.encode),
                    st.builds(lambda u: struct.pack(">H", len(u)) + u, st.binary(max_size=20)),
                )
            )
        length = draw(st.one_of(st.just(len(value)), st.integers(0, 0xFFFF)))
        parts.append(struct.pack(">BxH", item_type, length) + value)
    return b"".join(parts)


# --- PDUs --------------------------------------------------------------------------------


@FUZZ
@given(PDU_TYPES, st.binary(max_size=800))
def test_random_bytes_into_pdu_decode(pdu_type: int, data: bytes) -> None:
    check_pdu(pdu_type, data)


@FUZZ
@given(st.sampled_from(SEED_BYTES).flatmap(mutated), st.booleans())
def test_mutated_pdus(data: bytes, other_type: bool) -> None:
    pdu_type = data[0] if data else 1
    check_pdu(3 - pdu_type if other_type and pdu_type in (1, 2) else pdu_type, data[6:])


@settings(FUZZ, max_examples=100)  # generating the PDUs costs more than decoding them
@given(st.one_of(associate_requests(), associate_accepts()).map(pdu.encode).flatmap(mutated))
def test_mutated_generated_associate_pdus(data: bytes) -> None:
    check_pdu(data[0] if data else 1, data[6:])


@FUZZ
@given(st.sampled_from([1, 2]), st.binary(min_size=68, max_size=68), item_soup())
def test_random_items_into_associate_pdus(pdu_type: int, fixed: bytes, items: bytes) -> None:
    if pdu_type == 1:  # valid AE titles, so that decoding goes on to the items
        fixed = fixed[:4] + b"CALLED".ljust(16) + b"CALLING".ljust(16) + fixed[36:]
    check_pdu(pdu_type, fixed + items)


# --- command sets ------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes_into_decode_command(data: bytes) -> None:
    check_command(data)


@FUZZ
@given(st.sampled_from(COMMAND_SEEDS).flatmap(mutated))
def test_mutated_command_sets(data: bytes) -> None:
    check_command(data)


@FUZZ
@given(
    st.builds(encode_command, commands, has_data_set=st.booleans()).flatmap(mutated),
)
def test_mutated_generated_command_sets(data: bytes) -> None:
    check_command(data)


@st.composite
def element_soup(draw: st.DrawFn) -> bytes:
    """Random group 0000 elements (known tags and others), in or out of order."""
    parts = []
    for _ in range(draw(st.integers(0, 10))):
        element = draw(st.one_of(st.sampled_from([int(t) for t in Tag]), st.integers(0, 0xFFFF)))
        group = draw(st.one_of(st.just(0), st.integers(0, 0xFFFF)))
        value = draw(st.binary(max_size=24))
        length = draw(st.one_of(st.just(len(value)), st.integers(0, 0xFFFFFFFF)))
        parts.append(struct.pack("<HHL", group, element, length) + value)
    if draw(st.booleans()):
        parts.sort()
    return b"".join(parts)


@FUZZ
@given(element_soup())
def test_random_elements_into_decode_command(data: bytes) -> None:
    check_command(data)


# --- memory ------------------------------------------------------------------------------


def test_length_fields_do_not_allocate() -> None:
    """Every length field of every seed saying 64 KiB or 4 GiB: memory stays small."""
    tracemalloc.start()
    try:
        for seed in SEED_BYTES:
            for offset, width in _length_fields(seed):
                data = seed[:offset] + b"\xff" * width + seed[offset + width :]
                tracemalloc.reset_peak()
                check_pdu(data[0], data[6:])
                assert tracemalloc.get_traced_memory()[1] < 1 << 20
        for seed in COMMAND_SEEDS:
            for offset in range(len(seed) - 3):
                data = seed[:offset] + b"\xff\xff\xff\xff" + seed[offset + 4 :]
                tracemalloc.reset_peak()
                check_command(data)
                assert tracemalloc.get_traced_memory()[1] < 1 << 20
    finally:
        tracemalloc.stop()
