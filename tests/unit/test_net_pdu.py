"""kuva.dicom.net.pdu: the upper layer PDU codec (PS3.8 9.3) - round trips, the bytes on the
wire, strict decoding with the A-ABORT reasons, and interoperation with pynetdicom's PDUs."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pynetdicom import pdu as pn_pdu
from pynetdicom import pdu_primitives as pn
from pynetdicom.presentation import PresentationContext

from kuva.dicom.net import pdu
from kuva.dicom.net.pdu import (
    Abort,
    AbortReason,
    AssociateAccept,
    AssociateReject,
    AssociateRequest,
    ContextResult,
    PduError,
    PduType,
    ProposedContext,
    ReleaseRequest,
    ReleaseResponse,
    RoleSelection,
    UserIdentity,
    UserInformation,
)

SETTINGS = settings(
    max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
CT = "1.2.840.10008.5.1.4.1.1.2"
IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"

# --- strategies (also used by test_net_fuzz) ---------------------------------------------

_component = st.one_of(st.just("0"), st.integers(1, 10**15).map(str))
uids = st.lists(_component, min_size=2, max_size=10).map(".".join).filter(lambda u: len(u) <= 64)
_printable = st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="\\")
ae_titles = st.text(_printable, min_size=1, max_size=16).map(str.strip).filter(bool)
version_names = st.text(_printable, min_size=1, max_size=16).map(str.strip).filter(bool)
u16 = st.integers(0, 0xFFFF)
roles = st.builds(RoleSelection, uids, st.booleans(), st.booleans()).filter(
    lambda r: r.scu_role or r.scp_role  # pynetdicom will not send a role item saying neither
)
identities = st.builds(
    UserIdentity,
    st.integers(1, 5),
    st.booleans(),
    st.binary(min_size=1, max_size=64),
    st.binary(min_size=1, max_size=64),
)


@st.composite
def user_informations(draw: st.DrawFn, *, accept: bool) -> UserInformation:
    return UserInformation(
        max_pdu_length=draw(st.integers(0, 0xFFFFFFFF)),
        implementation_class_uid=draw(uids),
        implementation_version_name=draw(st.one_of(st.just(""), version_names)),
        async_ops=draw(st.none() | st.tuples(u16, u16)),
        roles=tuple(draw(st.lists(roles, max_size=4))),
        extended_negotiation=tuple(
            draw(st.lists(st.tuples(uids, st.binary(min_size=1, max_size=32)), max_size=3))
        ),
        common_extended_negotiation=tuple(
            draw(st.lists(st.tuples(uids, uids, st.lists(uids, max_size=3).map(tuple)), max_size=3))
        ),
        user_identity=None if accept else draw(st.none() | identities),
        user_identity_response=draw(st.none() | st.binary(max_size=64)) if accept else None,
    )


_context_ids = st.lists(st.integers(0, 127), min_size=1, max_size=12, unique=True)


@st.composite
def associate_requests(draw: st.DrawFn, *, protocol_version: int | None = None) -> AssociateRequest:
    contexts = tuple(
        ProposedContext(
            2 * i + 1, draw(uids), tuple(draw(st.lists(uids, min_size=1, max_size=4, unique=True)))
        )
        for i in draw(_context_ids)
    )
    return AssociateRequest(
        called_ae=draw(ae_titles),
        calling_ae=draw(ae_titles),
        contexts=contexts,
        user=draw(user_informations(accept=False)),
        application_context=draw(st.one_of(st.just(pdu.APPLICATION_CONTEXT), uids)),
        protocol_version=draw(u16) if protocol_version is None else protocol_version,
    )


@st.composite
def associate_accepts(draw: st.DrawFn, *, protocol_version: int | None = None) -> AssociateAccept:
    contexts = []
    for i in draw(st.lists(st.integers(0, 127), max_size=12, unique=True)):
        result = draw(st.integers(0, 4))
        contexts.append(ContextResult(2 * i + 1, result, draw(uids) if result == 0 else ""))
    return AssociateAccept(
        called_ae=draw(ae_titles),
        calling_ae=draw(ae_titles),
        contexts=tuple(contexts),
        user=draw(user_informations(accept=True)),
        application_context=draw(st.one_of(st.just(pdu.APPLICATION_CONTEXT), uids)),
        protocol_version=draw(u16) if protocol_version is None else protocol_version,
    )


fixed_pdus = st.one_of(
    st.builds(AssociateReject, st.integers(0, 255), st.integers(0, 255), st.integers(0, 255)),
    st.builds(Abort, st.integers(0, 255), st.integers(0, 255)),
    st.just(ReleaseRequest()),
    st.just(ReleaseResponse()),
)


def roundtrip(value: pdu.Pdu) -> pdu.Pdu:
    data = pdu.encode(value)
    pdu_type, length = pdu.PDU_HEADER.unpack_from(data)
    assert length == len(data) - 6
    return pdu.decode(pdu_type, memoryview(data)[6:])


def body(value: pdu.Pdu) -> bytes:
    return pdu.encode(value)[6:]


def request(**changes: object) -> AssociateRequest:
    fields: dict[str, object] = {
        "called_ae": "KUVA",
        "calling_ae": "MODALITY",
        "contexts": (ProposedContext(1, CT, (EXPLICIT, IMPLICIT)),),
        "user": UserInformation(16384, "1.2.826.0.1.3680043.9.7433.1", "KUVA_1"),
    }
    fields.update(changes)
    return AssociateRequest(**fields)  # type: ignore[arg-type]


def item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BxH", item_type, len(value)) + value


def associate_body(
    *items: bytes, application: bytes = pdu.APPLICATION_CONTEXT.encode(), pdu_type: int = 2
) -> bytes:
    """An A-ASSOCIATE-RQ (pdu_type 1) or -AC variable part around hand-made context items."""
    fixed = body(request())[:68]
    user = item(0x50, item(0x51, b"\x00\x00\x40\x00"))
    return fixed + item(0x10, application) + b"".join(items) + user


def expect(reason: AbortReason, pdu_type: int, data: bytes | memoryview) -> PduError:
    with pytest.raises(PduError) as caught:
        pdu.decode(pdu_type, data)
    assert caught.value.reason == reason, caught.value
    return caught.value


# --- round trips ------------------------------------------------------------------------


@SETTINGS
@given(associate_requests())
def test_associate_request_round_trip(value: AssociateRequest) -> None:
    assert roundtrip(value) == value


@SETTINGS
@given(associate_accepts())
def test_associate_accept_round_trip(value: AssociateAccept) -> None:
    assert roundtrip(value) == value


@SETTINGS
@given(fixed_pdus)
def test_fixed_length_pdus_round_trip(value: pdu.Pdu) -> None:
    assert roundtrip(value) == value


def test_largest_request_round_trips() -> None:
    """128 contexts (every odd id) with three transfer syntaxes each."""
    value = request(
        contexts=tuple(
            ProposedContext(i, f"{CT}.{i}", (EXPLICIT, IMPLICIT, "1.2.840.10008.1.2.4.50"))
            for i in range(1, 256, 2)
        )
    )
    assert roundtrip(value) == value


def test_empty_user_information_round_trips() -> None:
    value = AssociateAccept("A", "B", (), UserInformation())
    assert roundtrip(value) == value


# --- the bytes on the wire --------------------------------------------------------------


def test_associate_request_layout() -> None:
    """PS3.8 9.3.2: fixed fields, AE titles padded with spaces, items with unpadded UIDs."""
    data = pdu.encode(request(user=UserInformation(16384, "1.2.3")))
    assert data[:6] == struct.pack(">BxL", 1, len(data) - 6)
    assert data[6:8] == b"\x00\x01" and data[8:10] == b"\x00\x00"
    assert data[10:26] == b"KUVA            "
    assert data[26:42] == b"MODALITY        "
    assert data[42:74] == bytes(32)
    # application context item: 21 characters, odd, not padded
    assert data[74:78] == b"\x10\x00\x00\x15" and data[78:99] == b"1.2.840.10008.3.1.1.1"
    # presentation context item: id 1, abstract syntax and two transfer syntaxes
    abstract = b"\x30\x00\x00\x19" + CT.encode()
    transfers = b"\x40\x00\x00\x13" + EXPLICIT.encode() + b"\x40\x00\x00\x11" + IMPLICIT.encode()
    context = b"\x01\x00\x00\x00" + abstract + transfers
    assert data[99:103] == b"\x20\x00" + struct.pack(">H", len(context))
    assert data[103 : 103 + len(context)] == context
    user = data[103 + len(context) :]
    assert (
        user == b"\x50\x00\x00\x11" + b"\x51\x00\x00\x04\x00\x00\x40\x00" + b"\x52\x00\x00\x051.2.3"
    )


def test_accept_rejected_context_has_an_empty_transfer_syntax_item() -> None:
    data = body(AssociateAccept("A", "B", (ContextResult(3, 3, ""),), UserInformation()))
    assert b"\x21\x00\x00\x08\x03\x00\x03\x00\x40\x00\x00\x00" in data


def test_fixed_length_pdus_layout() -> None:
    assert pdu.encode(AssociateReject(1, 2, 3)) == b"\x03\x00\x00\x00\x00\x04\x00\x01\x02\x03"
    assert pdu.encode(Abort(2, 6)) == b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x06"
    assert pdu.encode(ReleaseRequest()) == b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00"
    assert pdu.encode(ReleaseResponse()) == b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00"


def test_pdata_header_and_pdv() -> None:
    """PS3.8 9.3.5: the PDV item length counts the context id and the control header."""
    assert pdu.pdata_header(12) == b"\x04\x00\x00\x00\x00\x0c"
    assert pdu.encode_pdv(5, 0x03, b"abcd") == b"\x00\x00\x00\x06\x05\x03abcd"
    assert pdu.encode_pdv(1, 0x00, memoryview(b"xy")) == b"\x00\x00\x00\x04\x01\x00xy"
    assert pdu.PDV_HEADER.unpack(b"\x00\x00\x00\x06\x05\x03") == (6, 5, 3)


def test_encoding_refuses_an_ae_title_over_16_characters() -> None:
    with pytest.raises(ValueError):
        pdu.encode(request(called_ae="A" * 17))


# --- decoding: padding and leniency the standard asks for --------------------------------


def test_padding_is_removed() -> None:
    data = bytearray(body(request()))
    data[4:20] = b"  KUVA          "  # leading spaces of a called AE title
    data[20:36] = b"MODALITY\x00\x00\x00\x00\x00\x00\x00\x00"
    value = pdu.decode(1, bytes(data))
    assert isinstance(value, AssociateRequest)
    assert (value.called_ae, value.calling_ae) == ("KUVA", "MODALITY")
    # a transfer syntax padded with a NUL, as some older implementations send it
    padded = pdu.encode(request(contexts=(ProposedContext(1, CT, (IMPLICIT + "\x00",)),)))
    value = pdu.decode(1, padded[6:])
    assert isinstance(value, AssociateRequest)
    assert value.contexts[0].transfer_syntaxes == (IMPLICIT,)


def test_unknown_user_information_sub_items_are_ignored() -> None:
    """PS3.8 9.3.2.3 / PS3.7 D.3.3: a sub-item this side does not know is skipped."""
    plain = body(request())
    user_at = plain.index(b"\x50\x00")
    (length,) = struct.unpack_from(">H", plain, user_at + 2)
    unknown = b"\x5f\x00\x00\x03abc"
    data = (
        plain[:user_at]
        + b"\x50\x00"
        + struct.pack(">H", length + len(unknown))
        + unknown
        + plain[user_at + 4 :]
    )
    assert pdu.decode(1, data) == request()


def test_rejected_context_transfer_syntax_is_not_tested() -> None:
    """PS3.8 9.3.3.2: a context not accepted may carry any transfer syntax sub-item."""
    context = item(0x21, b"\x01\x00\x04\x00" + item(0x40, b"not a uid, any #!"))
    value = pdu.decode(2, associate_body(context))
    assert isinstance(value, AssociateAccept)
    assert value.contexts == (ContextResult(1, 4, ""),)


def test_accept_ae_title_fields_are_not_tested() -> None:
    """PS3.8 9.3.3: the AE titles of an A-ASSOCIATE-AC are reserved, sent back as received."""
    data = bytearray(body(AssociateAccept("A", "B", (), UserInformation())))
    data[4:20] = bytes(16)
    data[20:36] = b"\xe4" + b" " * 15
    value = pdu.decode(2, bytes(data))
    assert isinstance(value, AssociateAccept)
    assert (value.called_ae, value.calling_ae) == ("", "?")


# --- decoding: malformed input and its A-ABORT reason ------------------------------------


@pytest.mark.parametrize("pdu_type", [0, 8, 0x0A, 0xFF])
def test_unknown_pdu_type(pdu_type: int) -> None:
    expect(AbortReason.UNRECOGNIZED_PDU, pdu_type, b"\x00\x00\x00\x00")


def test_p_data_is_not_decoded_here() -> None:
    expect(AbortReason.UNEXPECTED_PDU, PduType.P_DATA_TF, b"\x00\x00\x00\x02\x01\x03")


@pytest.mark.parametrize("pdu_type", [3, 5, 6, 7])
@pytest.mark.parametrize("length", [0, 3, 5, 100])
def test_fixed_length_pdus_of_another_length(pdu_type: int, length: int) -> None:
    expect(AbortReason.INVALID_PDU_PARAMETER_VALUE, pdu_type, bytes(length))


@pytest.mark.parametrize(
    "title", [b" " * 16, bytes(16), b"A\\B" + b" " * 13, b"AB\x07" + b" " * 13]
)
@pytest.mark.parametrize("offset", [4, 20])
def test_invalid_request_ae_titles(title: bytes, offset: int) -> None:
    data = bytearray(body(request()))
    data[offset : offset + 16] = title
    expect(AbortReason.INVALID_PDU_PARAMETER_VALUE, 1, bytes(data))


def test_non_ascii_ae_title() -> None:
    data = bytearray(body(request()))
    data[4:20] = "KÄYTTÖ".encode("latin-1").ljust(16)
    expect(AbortReason.INVALID_PDU_PARAMETER_VALUE, 1, bytes(data))


@pytest.mark.parametrize(
    "raw",
    [b"1." + b"2" * 63, b"1.2.abc", b"1.2.3-4", b"", b"1.2 .3", "\u0661.\u0662".encode(), b"\xff"],
    ids=repr,
)
@pytest.mark.parametrize("where", ["abstract", "transfer", "application"])
def test_invalid_uids(raw: bytes, where: str) -> None:
    abstract = raw if where == "abstract" else CT.encode()
    transfer = raw if where == "transfer" else IMPLICIT.encode()
    application = raw if where == "application" else pdu.APPLICATION_CONTEXT.encode()
    context = item(0x20, b"\x01\x00\x00\x00" + item(0x30, abstract) + item(0x40, transfer))
    data = associate_body(context, application=application, pdu_type=1)
    expect(AbortReason.INVALID_PDU_PARAMETER_VALUE, 1, data)


def test_body_above_one_mebibyte_is_refused_without_copying() -> None:
    big = memoryview(bytearray(pdu.MAX_ASSOCIATE_LENGTH + 1))
    error = expect(AbortReason.INVALID_PDU_PARAMETER_VALUE, 1, big)
    assert "above" in str(error)


def test_more_than_128_contexts() -> None:
    contexts = tuple(ProposedContext(1 + 2 * (i % 128), CT, (IMPLICIT,)) for i in range(129))
    expect(AbortReason.INVALID_PDU_PARAMETER_VALUE, 1, body(request(contexts=contexts)))


@pytest.mark.parametrize("ids", [(2,), (0,), (1, 1), (1, 3, 1)])
def test_invalid_context_ids(ids: tuple[int, ...]) -> None:
    contexts = tuple(ProposedContext(i, CT, (IMPLICIT,)) for i in ids)
    expect(AbortReason.INVALID_PDU_PARAMETER_VALUE, 1, body(request(contexts=contexts)))


def test_request_without_contexts() -> None:
    expect(AbortReason.INVALID_PDU_PARAMETER_VALUE, 1, body(request(contexts=())))


def test_context_without_transfer_syntax() -> None:
    contexts = (ProposedContext(1, CT, ()),)
    expect(AbortReason.INVALID_PDU_PARAMETER_VALUE, 1, body(request(contexts=contexts)))


@pytest.mark.parametrize("sub_items", [b"", item(0x40, b"")], ids=["none", "empty"])
def test_accepted_context_without_transfer_syntax(sub_items: bytes) -> None:
    context = item(0x21, b"\x01\x00\x00\x00" + sub_items)
    expect(AbortReason.INVALID_PDU_PARAMETER_VALUE, 2, associate_body(context))


def test_accept_context_with_two_transfer_syntaxes() -> None:
    ts = item(0x40, IMPLICIT.encode())
    context = item(0x21, b"\x01\x00\x00\x00" + ts + ts)
    expect(AbortReason.UNEXPECTED_PDU_PARAMETER, 2, associate_body(context))


@pytest.mark.parametrize("result", [5, 0xFF])
def test_unknown_context_result(result: int) -> None:
    context = item(0x21, bytes([1, 0, result, 0]) + item(0x40, b""))
    expect(AbortReason.INVALID_PDU_PARAMETER_VALUE, 2, associate_body(context))


def test_unknown_item_at_associate_level() -> None:
    expect(AbortReason.UNRECOGNIZED_PDU_PARAMETER, 1, body(request()) + b"\x60\x00\x00\x00")


def test_unknown_sub_item_in_a_presentation_context() -> None:
    data = body(request()).replace(b"\x30\x00\x00\x19", b"\x31\x00\x00\x19")
    expect(AbortReason.UNRECOGNIZED_PDU_PARAMETER, 1, data)


def test_accept_context_item_in_a_request() -> None:
    item = b"\x21\x00\x00\x08\x03\x00\x00\x00\x40\x00\x00\x00"
    expect(AbortReason.UNEXPECTED_PDU_PARAMETER, 1, body(request()) + item)


def test_request_context_item_in_an_accept() -> None:
    context = item(0x20, b"\x01\x00\x00\x00" + item(0x30, CT.encode()))
    expect(AbortReason.UNEXPECTED_PDU_PARAMETER, 2, associate_body(context))


def test_two_abstract_syntaxes() -> None:
    abstract = item(0x30, CT.encode())
    context = item(0x20, b"\x01\x00\x00\x00" + abstract + abstract + item(0x40, b"1.2"))
    expect(AbortReason.UNEXPECTED_PDU_PARAMETER, 1, associate_body(context, pdu_type=1))


def test_two_user_information_items() -> None:
    data = body(request())
    expect(AbortReason.UNEXPECTED_PDU_PARAMETER, 1, data + data[data.index(b"\x50\x00") :])


def test_two_maximum_length_sub_items() -> None:
    data = body(request(user=UserInformation(16384)))
    user_at = data.index(b"\x50\x00\x00\x08")
    twice = b"\x50\x00\x00\x10" + data[user_at + 4 :] * 2
    expect(AbortReason.UNEXPECTED_PDU_PARAMETER, 1, data[:user_at] + twice)


def test_missing_user_information() -> None:
    data = body(request())
    expect(AbortReason.INVALID_PDU_PARAMETER_VALUE, 1, data[: data.index(b"\x50\x00")])


def test_missing_application_context() -> None:
    data = body(request())
    application_item_length = 4 + len(pdu.APPLICATION_CONTEXT)
    expect(
        AbortReason.INVALID_PDU_PARAMETER_VALUE, 1, data[:68] + data[68 + application_item_length :]
    )


def test_two_application_context_items() -> None:
    data = body(request())
    expect(AbortReason.UNEXPECTED_PDU_PARAMETER, 1, data[:68] + data[68:93] + data[68:])


@pytest.mark.parametrize("cut", [1, 2, 3, 4, 10, 40])
def test_truncated_request(cut: int) -> None:
    expect(AbortReason.INVALID_PDU_PARAMETER_VALUE, 1, body(request())[:-cut])


def test_item_length_overruns_the_pdu() -> None:
    data = bytearray(body(request()))
    data[70:72] = b"\xff\xff"  # the application context item's length
    expect(AbortReason.INVALID_PDU_PARAMETER_VALUE, 1, bytes(data))


@pytest.mark.parametrize(
    "sub_item",
    [
        b"\x51\x00\x00\x02\x40\x00",  # maximum length of 2 bytes
        b"\x53\x00\x00\x02\x00\x01",  # asynchronous operations window of 2 bytes
        b"\x54\x00\x00\x07\x00\x031.2\x01\x02",  # role 2
        b"\x54\x00\x00\x06\x00\x031.2\x01",  # role item without the SCP role
        b"\x54\x00\x00\x07\x00\x091.2\x01\x01",  # UID length overrunning the item
        b"\x55\x00\x00\x02\xc3\xa4",  # non-ASCII implementation version name
        b"\x56\x00\x00\x01\x00",  # extended negotiation without a UID length
        b"\x57\x00\x00\x08\x00\x011\x00\x012\x00\x00\x00",  # bytes after the related classes
        b"\x57\x00\x00\x09\x00\x011\x00\x012\x00\x02\x00\x05",  # related UID overruns
        b"\x58\x00\x00\x06\x01\x02\x00\x00\x00\x00",  # positive response requested 2
        b"\x58\x00\x00\x07\x01\x00\x00\x00\x00\x00\x00",  # bytes after the secondary field
        b"\x58\x00\x00\x04\x01\x00\x00\x05",  # primary field overruns
        b"\x59\x00\x00\x03\x00\x00\x00",  # bytes after the server response
    ],
    ids=lambda b: b.hex(),
)
def test_invalid_user_information_sub_items(sub_item: bytes) -> None:
    data = body(request())
    user_at = data.index(b"\x50\x00")
    expect(AbortReason.INVALID_PDU_PARAMETER_VALUE, 1, data[:user_at] + item(0x50, sub_item))


# --- interoperation with pynetdicom ------------------------------------------------------


def _pn_user_information(user: UserInformation) -> list[object]:
    items: list[object] = []
    maximum = pn.MaximumLengthNotification()
    maximum.maximum_length_received = user.max_pdu_length
    items.append(maximum)
    implementation = pn.ImplementationClassUIDNotification()
    implementation.implementation_class_uid = user.implementation_class_uid
    items.append(implementation)
    if user.async_ops is not None:
        window = pn.AsynchronousOperationsWindowNegotiation()
        window.maximum_number_operations_invoked = user.async_ops[0]
        window.maximum_number_operations_performed = user.async_ops[1]
        items.append(window)
    for role in user.roles:
        item = pn.SCP_SCU_RoleSelectionNegotiation()
        item.sop_class_uid = role.sop_class_uid
        item.scu_role = role.scu_role
        item.scp_role = role.scp_role
        items.append(item)
    if user.implementation_version_name:
        version = pn.ImplementationVersionNameNotification()
        version.implementation_version_name = user.implementation_version_name
        items.append(version)
    for uid, info in user.extended_negotiation:
        extended = pn.SOPClassExtendedNegotiation()
        extended.sop_class_uid = uid
        extended.service_class_application_information = info
        items.append(extended)
    for sop_class, service_class, related in user.common_extended_negotiation:
        common = pn.SOPClassCommonExtendedNegotiation()
        common.sop_class_uid = sop_class
        common.service_class_uid = service_class
        common.related_general_sop_class_identification = list(related)
        items.append(common)
    if user.user_identity is not None:
        identity = pn.UserIdentityNegotiation()
        identity.user_identity_type = user.user_identity.type
        identity.positive_response_requested = user.user_identity.positive_response_requested
        identity.primary_field = user.user_identity.primary
        identity.secondary_field = user.user_identity.secondary
        items.append(identity)
    if user.user_identity_response is not None:
        response = pn.UserIdentityNegotiation()
        response.server_response = user.user_identity_response
        items.append(response)
    return items


def _from_pn_user_information(items: list[object]) -> UserInformation:
    fields: dict[str, object] = {}
    roles: list[RoleSelection] = []
    extended: list[tuple[str, bytes]] = []
    common: list[tuple[str, str, tuple[str, ...]]] = []
    for item in items:
        if isinstance(item, pn.MaximumLengthNotification):
            fields["max_pdu_length"] = item.maximum_length_received
        elif isinstance(item, pn.ImplementationClassUIDNotification):
            fields["implementation_class_uid"] = str(item.implementation_class_uid)
        elif isinstance(item, pn.ImplementationVersionNameNotification):
            fields["implementation_version_name"] = item.implementation_version_name
        elif isinstance(item, pn.AsynchronousOperationsWindowNegotiation):
            fields["async_ops"] = (
                item.maximum_number_operations_invoked,
                item.maximum_number_operations_performed,
            )
        elif isinstance(item, pn.SCP_SCU_RoleSelectionNegotiation):
            roles.append(
                RoleSelection(str(item.sop_class_uid), bool(item.scu_role), bool(item.scp_role))
            )
        elif isinstance(item, pn.SOPClassExtendedNegotiation):
            assert item.service_class_application_information is not None
            extended.append((str(item.sop_class_uid), item.service_class_application_information))
        elif isinstance(item, pn.SOPClassCommonExtendedNegotiation):
            related = tuple(str(u) for u in item.related_general_sop_class_identification)
            common.append((str(item.sop_class_uid), str(item.service_class_uid), related))
        elif isinstance(item, pn.UserIdentityNegotiation):
            if item.server_response is not None:
                fields["user_identity_response"] = item.server_response
            else:
                assert item.user_identity_type is not None and item.primary_field is not None
                fields["user_identity"] = UserIdentity(
                    item.user_identity_type,
                    item.positive_response_requested,
                    item.primary_field,
                    item.secondary_field or b"",
                )
        else:
            raise AssertionError(item)
    return UserInformation(
        roles=tuple(roles),
        extended_negotiation=tuple(extended),
        common_extended_negotiation=tuple(common),
        **fields,  # type: ignore[arg-type]
    )


def pynetdicom_encode(value: AssociateRequest | AssociateAccept) -> bytes:
    """The PDU as pynetdicom builds it from its A-ASSOCIATE primitive."""
    primitive = pn.A_ASSOCIATE()
    primitive.application_context_name = value.application_context
    primitive.called_ae_title = value.called_ae
    primitive.calling_ae_title = value.calling_ae
    primitive.user_information = _pn_user_information(value.user)  # type: ignore[assignment]
    contexts = []
    if isinstance(value, AssociateRequest):
        for proposed in value.contexts:
            context = PresentationContext()
            context.context_id = proposed.id
            context.abstract_syntax = proposed.abstract_syntax
            context.transfer_syntax = list(proposed.transfer_syntaxes)
            contexts.append(context)
        primitive.presentation_context_definition_list = contexts
        rq = pn_pdu.A_ASSOCIATE_RQ()
        rq.from_primitive(primitive)
        return rq.encode()
    for result in value.contexts:
        context = PresentationContext()
        context.context_id = result.id
        context.result = result.result
        # pynetdicom sends the proposed transfer syntax also in a rejected context
        context.transfer_syntax = [result.transfer_syntax or IMPLICIT]
        contexts.append(context)
    primitive.presentation_context_definition_results_list = contexts
    ac = pn_pdu.A_ASSOCIATE_AC()
    ac.from_primitive(primitive)
    return ac.encode()


def pynetdicom_decode(data: bytes) -> AssociateRequest | AssociateAccept:
    """What pynetdicom reads from a whole A-ASSOCIATE-RQ/AC PDU, as kuva's dataclass."""
    if data[0] == 1:
        rq = pn_pdu.A_ASSOCIATE_RQ()
        rq.decode(data)
        primitive = rq.to_primitive()
        return AssociateRequest(
            called_ae=primitive.called_ae_title,
            calling_ae=primitive.calling_ae_title,
            contexts=tuple(
                ProposedContext(
                    c.context_id,
                    str(c.abstract_syntax),
                    tuple(str(t) for t in c.transfer_syntax),
                )
                for c in primitive.presentation_context_definition_list
                if c.context_id is not None
            ),
            user=_from_pn_user_information(list(primitive.user_information)),
            application_context=str(primitive.application_context_name),
            protocol_version=rq.protocol_version,
        )
    ac = pn_pdu.A_ASSOCIATE_AC()
    ac.decode(data)
    primitive = ac.to_primitive()
    results = []
    for c in primitive.presentation_context_definition_results_list:
        assert c.context_id is not None and c.result is not None
        accepted = str(c.transfer_syntax[0]) if c.result == 0 else ""
        results.append(ContextResult(c.context_id, c.result, accepted))
    return AssociateAccept(
        called_ae=primitive.called_ae_title.strip(),
        calling_ae=primitive.calling_ae_title.strip(),
        contexts=tuple(results),
        user=_from_pn_user_information(list(primitive.user_information)),
        application_context=str(primitive.application_context_name),
        protocol_version=ac.protocol_version,
    )


INTEROP = settings(SETTINGS, max_examples=60)


@INTEROP
@given(associate_requests(protocol_version=1))
def test_pynetdicom_reads_our_request(value: AssociateRequest) -> None:
    assert pynetdicom_decode(pdu.encode(value)) == value


@INTEROP
@given(associate_requests(protocol_version=1))
def test_we_read_pynetdicom_request(value: AssociateRequest) -> None:
    data = pynetdicom_encode(value)
    assert pdu.decode(data[0], data[6:]) == value


@INTEROP
@given(associate_accepts(protocol_version=1))
def test_pynetdicom_reads_our_accept(value: AssociateAccept) -> None:
    assert pynetdicom_decode(pdu.encode(value)) == value


@INTEROP
@given(associate_accepts(protocol_version=1))
def test_we_read_pynetdicom_accept(value: AssociateAccept) -> None:
    data = pynetdicom_encode(value)
    assert pdu.decode(data[0], data[6:]) == value


def test_same_bytes_as_pynetdicom() -> None:
    """Item order and padding as pynetdicom (and dcmtk) send them: the same bytes."""
    value = request(
        user=UserInformation(
            16384,
            "1.2.826.0.1.3680043.9.7433.1",
            "KUVA_1",
            (1, 1),
            (RoleSelection(CT, True, True),),
            user_identity=UserIdentity(2, True, b"user", b"secret"),
        )
    )
    assert pdu.encode(value) == pynetdicom_encode(value)


def test_fixed_length_pdus_interoperate() -> None:
    cases: list[tuple[pdu.Pdu, pn_pdu.PDU]] = [
        (AssociateReject(1, 1, 7), pn_pdu.A_ASSOCIATE_RJ()),
        (Abort(2, 6), pn_pdu.A_ABORT_RQ()),
        (ReleaseRequest(), pn_pdu.A_RELEASE_RQ()),
        (ReleaseResponse(), pn_pdu.A_RELEASE_RP()),
    ]
    for ours, theirs in cases:
        data = pdu.encode(ours)
        theirs.decode(data)
        assert theirs.encode() == data
    rj = pn_pdu.A_ASSOCIATE_RJ()
    rj.decode(pdu.encode(AssociateReject(2, 3, 2)))
    assert (rj.result, rj.source, rj.reason_diagnostic) == (2, 3, 2)
    abort = pn_pdu.A_ABORT_RQ()
    abort.decode(pdu.encode(Abort(2, 6)))
    assert (abort.source, abort.reason_diagnostic) == (2, 6)
