"""kuva.dicom.net.dimse: DIMSE command sets (PS3.7 Annex E) - round trips, the bytes,
strict decoding, request/response building, and interoperation with pynetdicom/pydicom."""

from __future__ import annotations

import struct
from io import BytesIO

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pynetdicom import dimse_primitives as dp
from pynetdicom import pdu as pn_pdu
from pynetdicom import pdu_primitives as pn
from pynetdicom.dimse_messages import C_STORE_RQ as PnCStoreRq
from pynetdicom.dimse_messages import N_EVENT_REPORT_RQ as PnNEventReportRq
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dsutils import decode as pn_decode
from pynetdicom.dsutils import encode as pn_encode

from kuva.dicom.net import pdu
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
from tests.unit.test_net_pdu import ae_titles, uids

SETTINGS = settings(
    max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
CT = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = "1.2.840.10008.1.1"
COMMITMENT = "1.2.840.10008.1.20.1"
COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"

# Value representations of PS3.7 Table E.1-1, written out here independently of the module
VR: dict[int, str] = {
    Tag.AFFECTED_SOP_CLASS_UID: "UI",
    Tag.REQUESTED_SOP_CLASS_UID: "UI",
    Tag.COMMAND_FIELD: "US",
    Tag.MESSAGE_ID: "US",
    Tag.MESSAGE_ID_BEING_RESPONDED_TO: "US",
    Tag.MOVE_DESTINATION: "AE",
    Tag.PRIORITY: "US",
    Tag.STATUS: "US",
    Tag.OFFENDING_ELEMENT: "AT",
    Tag.ERROR_COMMENT: "LO",
    Tag.ERROR_ID: "US",
    Tag.AFFECTED_SOP_INSTANCE_UID: "UI",
    Tag.REQUESTED_SOP_INSTANCE_UID: "UI",
    Tag.EVENT_TYPE_ID: "US",
    Tag.ATTRIBUTE_IDENTIFIER_LIST: "AT",
    Tag.ACTION_TYPE_ID: "US",
    Tag.NUMBER_OF_REMAINING_SUBOPERATIONS: "US",
    Tag.NUMBER_OF_COMPLETED_SUBOPERATIONS: "US",
    Tag.NUMBER_OF_FAILED_SUBOPERATIONS: "US",
    Tag.NUMBER_OF_WARNING_SUBOPERATIONS: "US",
    Tag.MOVE_ORIGINATOR_AE_TITLE: "AE",
    Tag.MOVE_ORIGINATOR_MESSAGE_ID: "US",
}
_printable = st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="\\")
VALUES: dict[str, st.SearchStrategy[Value]] = {
    "US": st.integers(0, 0xFFFF),
    "UI": uids,
    "AE": ae_titles,
    "LO": st.text(_printable, max_size=64).map(str.strip),
    "AT": st.lists(st.integers(0, 0xFFFFFFFF), min_size=1, max_size=8).map(tuple),
}
commands = st.fixed_dictionaries(
    {Tag.COMMAND_FIELD: st.integers(0, 0xFFFF)},
    optional={tag: VALUES[vr] for tag, vr in VR.items() if tag != Tag.COMMAND_FIELD},
)


def decoded(fields: dict[int, Value], has_data_set: bool) -> dict[int, Value]:
    """What decode_command gives for `fields` encoded with `has_data_set`."""
    return {**fields, Tag.COMMAND_DATA_SET_TYPE: 0x0001 if has_data_set else NO_DATA_SET}


def element(tag: int, raw: bytes) -> bytes:
    return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, len(raw)) + raw


def us(tag: int, value: int) -> bytes:
    return element(tag, struct.pack("<H", value))


def with_group_length(elements: bytes) -> bytes:
    return element(0, struct.pack("<L", len(elements))) + elements


STORE = request(
    CommandField.C_STORE_RQ,
    7,
    affected_sop_class_uid=CT,
    affected_sop_instance_uid="1.2.3.4.5",
    move_originator_ae="MOVER",
    move_originator_message_id=3,
)


# --- round trips and layout --------------------------------------------------------------


@SETTINGS
@given(commands, st.booleans())
def test_command_round_trip(fields: dict[int, Value], has_data_set: bool) -> None:
    data = encode_command(fields, has_data_set=has_data_set)
    command = decode_command(memoryview(data))
    assert command.fields == decoded(fields, has_data_set)
    assert command.has_data_set is has_data_set


def test_store_request_layout() -> None:
    """PS3.7 E.1 / PS3.5 7.1.3: group length first, tag order, UIDs NUL- and AE space-padded."""
    data = encode_command(STORE, has_data_set=True)
    elements = (
        element(0x0002, CT.encode() + b"\x00")
        + us(0x0100, 0x0001)
        + us(0x0110, 7)
        + us(0x0700, 0)
        + us(0x0800, 0x0001)
        + element(0x1000, b"1.2.3.4.5\x00")
        + element(0x1030, b"MOVER ")
        + us(0x1031, 3)
    )
    assert data == with_group_length(elements)


def test_command_data_set_type_follows_the_argument() -> None:
    fields: dict[int, Value] = {
        **STORE,
        Tag.COMMAND_DATA_SET_TYPE: 0x0001,
        Tag.COMMAND_GROUP_LENGTH: 5,
    }
    command = decode_command(encode_command(fields, has_data_set=False))
    assert command.fields[Tag.COMMAND_DATA_SET_TYPE] == NO_DATA_SET
    assert not command.has_data_set


def test_error_comment_outside_ascii_is_sent_as_question_marks() -> None:
    fields: dict[int, Value] = {Tag.COMMAND_FIELD: 0x8001, Tag.ERROR_COMMENT: "Potilas ei löydy"}
    command = decode_command(encode_command(fields, has_data_set=False))
    assert command.error_comment == "Potilas ei l?ydy"
    fields[Tag.ERROR_COMMENT] = "C:\\kuva"  # a backslash would make two values of one
    assert decode_command(encode_command(fields, has_data_set=False)).error_comment == "C:?kuva"


@pytest.mark.parametrize(
    ("tag", "value"),
    [(Tag.STATUS, "0"), (Tag.AFFECTED_SOP_CLASS_UID, 1), (Tag.OFFENDING_ELEMENT, 0x00100010)],
)
def test_encoding_refuses_values_of_another_type(tag: Tag, value: Value) -> None:
    with pytest.raises(TypeError):
        encode_command({Tag.COMMAND_FIELD: 1, tag: value}, has_data_set=False)


def test_encoding_refuses_elements_outside_the_command_set() -> None:
    with pytest.raises(ValueError):
        encode_command({Tag.COMMAND_FIELD: 1, 0x00100010: "x"}, has_data_set=False)


# --- accessors ---------------------------------------------------------------------------


def test_accessors() -> None:
    command = decode_command(encode_command(STORE, has_data_set=True))
    assert command.command_field == CommandField.C_STORE_RQ
    assert command.message_id == 7
    assert command.affected_sop_class_uid == CT
    assert command.affected_sop_instance_uid == "1.2.3.4.5"
    assert command.move_originator_ae == "MOVER"
    assert command.move_originator_message_id == 3
    assert command.priority == 0
    assert command.has_data_set
    assert command.is_request and not command.is_response and not command.is_pending
    assert command.status is None and command.action_type_id is None
    assert command.event_type_id is None
    assert command.requested_sop_class_uid == command.requested_sop_instance_uid == ""
    assert command.move_destination == command.error_comment == ""
    assert command.message_id_being_responded_to == 0


@pytest.mark.parametrize(("status", "pending"), [(0xFF00, True), (0xFF01, True), (0, False)])
def test_pending(status: int, pending: bool) -> None:
    command = Command({Tag.COMMAND_FIELD: 0x8020, Tag.STATUS: status})
    assert command.is_response and command.is_pending is pending


# --- strict decoding ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        with_group_length(us(0x0110, 1)),  # no Command Field
        with_group_length(us(0x0100, 1))[:-1],  # truncated value
        with_group_length(us(0x0100, 1)) + b"\x00\x00\x10",  # truncated element header
        element(0, struct.pack("<L", 99)) + us(0x0100, 1),  # group length not the rest's
        element(0, b"\x0a\x00") + us(0x0100, 1),  # group length of 2 bytes
        with_group_length(us(0x0110, 1) + us(0x0100, 1)),  # out of tag order
        with_group_length(us(0x0100, 1) + us(0x0100, 1)),  # twice
        with_group_length(us(0x0100, 1) + element(0x00080016, b"1.2\x00")),  # group 0008
        with_group_length(element(0x0100, b"\x01\x00\x00\x00")),  # US of 4 bytes
        with_group_length(us(0x0100, 1) + element(0x0901, b"\x10\x00")),  # AT of 2 bytes
        with_group_length(element(0x0002, b"1.2\xff") + us(0x0100, 1)),  # non-ASCII UID
        with_group_length(us(0x0100, 1) + element(0x0600, "KÄÄ".encode())),  # non-ASCII AE
        with_group_length(us(0x0100, 1) + element(0x0600, b"A\\B ")),  # backslash in an AE
        with_group_length(us(0x0100, 1) + element(0x0600, b"A" * 18)),  # AE of 18 characters
        us(0x0100, 1) + struct.pack("<HHL", 0, 0x1000, 0xFFFFFFFF),  # length beyond the data
    ],
    ids=lambda data: data.hex()[:48],
)
def test_malformed_command_sets(data: bytes) -> None:
    with pytest.raises(DimseError):
        decode_command(data)


def test_without_group_length_and_with_retired_elements() -> None:
    """A command set without (0000,0000) decodes; elements PS3.7 retired are skipped."""
    data = (
        element(0x0001, b"\x00\x00\x00\x00")  # Command Length to End (retired)
        + us(0x0100, 0x0030)
        + us(0x0110, 9)
        + element(0x4000, b"old ")  # retired
    )
    assert decode_command(data).fields == {Tag.COMMAND_FIELD: 0x0030, Tag.MESSAGE_ID: 9}


def test_padding_and_empty_values() -> None:
    data = with_group_length(
        element(0x0002, b"1.2.3\x00")
        + us(0x0100, 0x8001)
        + element(0x0600, b" DEST ")
        + element(0x0900, b"")  # an empty number counts as absent
        + element(0x0902, b"")
        + element(0x1000, b"1.2 ")
    )
    command = decode_command(data)
    assert command.fields == {
        Tag.AFFECTED_SOP_CLASS_UID: "1.2.3",
        Tag.COMMAND_FIELD: 0x8001,
        Tag.MOVE_DESTINATION: "DEST",
        Tag.ERROR_COMMENT: "",
        Tag.AFFECTED_SOP_INSTANCE_UID: "1.2",
    }
    assert command.status is None


# --- request and response building -------------------------------------------------------


def test_request_defaults() -> None:
    assert request(CommandField.C_ECHO_RQ, 1, affected_sop_class_uid=VERIFICATION) == {
        Tag.COMMAND_FIELD: 0x0030,
        Tag.MESSAGE_ID: 1,
        Tag.AFFECTED_SOP_CLASS_UID: VERIFICATION,
    }
    find = request(CommandField.C_FIND_RQ, 2, affected_sop_class_uid="1.2", priority=2)
    assert find[Tag.PRIORITY] == 2
    assert request(CommandField.C_MOVE_RQ, 3, move_destination="X")[Tag.PRIORITY] == 0


def test_cancel_request_names_the_request_it_cancels() -> None:
    """PS3.7 9.3.2.3: C-CANCEL-RQ carries Message ID Being Responded To, no Message ID."""
    assert request(CommandField.C_CANCEL_RQ, 5) == {
        Tag.COMMAND_FIELD: 0x0FFF,
        Tag.MESSAGE_ID_BEING_RESPONDED_TO: 5,
    }


def test_request_refuses_unknown_names() -> None:
    with pytest.raises(TypeError):
        request(CommandField.C_ECHO_RQ, 1, patient_name="x")


def _response_to(fields: dict[int, Value], status: int = 0, **extra: Value) -> dict[int, Value]:
    return response(decode_command(encode_command(fields, has_data_set=False)), status, **extra)


def test_store_response_copies_the_affected_sop() -> None:
    assert _response_to(STORE) == {
        Tag.COMMAND_FIELD: 0x8001,
        Tag.MESSAGE_ID_BEING_RESPONDED_TO: 7,
        Tag.AFFECTED_SOP_CLASS_UID: CT,
        Tag.AFFECTED_SOP_INSTANCE_UID: "1.2.3.4.5",
        Tag.STATUS: 0,
    }


def test_find_response_copies_the_sop_class_only() -> None:
    find = request(CommandField.C_FIND_RQ, 4, affected_sop_class_uid="1.2.840.10008.5.1.4.1.2.2.1")
    rsp = _response_to(find, 0xFF00)
    assert rsp == {
        Tag.COMMAND_FIELD: 0x8020,
        Tag.MESSAGE_ID_BEING_RESPONDED_TO: 4,
        Tag.AFFECTED_SOP_CLASS_UID: "1.2.840.10008.5.1.4.1.2.2.1",
        Tag.STATUS: 0xFF00,
    }


def test_move_response_counts_and_error_comment() -> None:
    move = request(CommandField.C_MOVE_RQ, 4, affected_sop_class_uid="1.2", move_destination="D")
    rsp = _response_to(
        move,
        0xA702,
        number_of_remaining_suboperations=0,
        number_of_failed_suboperations=3,
        error_comment="x" * 100,
        offending_element=(0x00100010,),
    )
    assert rsp[Tag.ERROR_COMMENT] == "x" * 64
    assert rsp[Tag.NUMBER_OF_FAILED_SUBOPERATIONS] == 3
    assert rsp[Tag.OFFENDING_ELEMENT] == (0x00100010,)
    assert Tag.MOVE_DESTINATION not in rsp


def test_n_action_response_takes_the_requested_sop_and_action_type() -> None:
    """PS3.7 10.3.4: the response's Affected SOP are the request's Requested SOP."""
    action = request(
        CommandField.N_ACTION_RQ,
        8,
        requested_sop_class_uid=COMMITMENT,
        requested_sop_instance_uid=COMMITMENT_INSTANCE,
        action_type_id=1,
    )
    assert _response_to(action) == {
        Tag.COMMAND_FIELD: 0x8130,
        Tag.MESSAGE_ID_BEING_RESPONDED_TO: 8,
        Tag.AFFECTED_SOP_CLASS_UID: COMMITMENT,
        Tag.AFFECTED_SOP_INSTANCE_UID: COMMITMENT_INSTANCE,
        Tag.ACTION_TYPE_ID: 1,
        Tag.STATUS: 0,
    }


def test_n_event_report_response_keeps_the_event_type() -> None:
    report = request(
        CommandField.N_EVENT_REPORT_RQ,
        9,
        affected_sop_class_uid=COMMITMENT,
        affected_sop_instance_uid=COMMITMENT_INSTANCE,
        event_type_id=2,
    )
    rsp = _response_to(report)
    assert rsp[Tag.EVENT_TYPE_ID] == 2
    assert rsp[Tag.AFFECTED_SOP_INSTANCE_UID] == COMMITMENT_INSTANCE


def test_n_create_response_without_an_instance_uid_in_the_request() -> None:
    """PS3.7 10.3.5: the SCP may create the instance UID; the response then carries it."""
    create = request(CommandField.N_CREATE_RQ, 10, affected_sop_class_uid="1.2.840.10008.5.1.4.33")
    rsp = _response_to(create, affected_sop_instance_uid="1.2.3")
    assert rsp[Tag.AFFECTED_SOP_CLASS_UID] == "1.2.840.10008.5.1.4.33"
    assert rsp[Tag.AFFECTED_SOP_INSTANCE_UID] == "1.2.3"


@pytest.mark.parametrize("field", [CommandField.C_CANCEL_RQ, CommandField.C_STORE_RSP, 0x7777])
def test_no_response_to_a_cancel_a_response_or_an_unknown_command(field: int) -> None:
    with pytest.raises(ValueError):
        response(Command({Tag.COMMAND_FIELD: field}), 0)


# --- interoperation with pynetdicom / pydicom --------------------------------------------


def _pydicom_value(value: Value) -> object:
    return list(value) if isinstance(value, tuple) else value


@SETTINGS
@given(commands, st.booleans())
def test_pydicom_reads_our_command_set(fields: dict[int, Value], has_data_set: bool) -> None:
    data = encode_command(fields, has_data_set=has_data_set)
    dataset = pn_decode(BytesIO(data), True, True)
    assert dataset[0x00000000].value == len(data) - 12
    expected = decoded(fields, has_data_set)
    assert [int(elem.tag) for elem in dataset] == [0, *sorted(expected)]
    for tag, value in expected.items():
        theirs = dataset[tag].value
        if isinstance(value, tuple):
            theirs = [int(t) for t in (theirs if dataset[tag].VM > 1 else [theirs])]
        assert theirs == _pydicom_value(value), hex(tag)


@SETTINGS
@given(commands, st.booleans())
def test_we_read_pydicom_command_set(fields: dict[int, Value], has_data_set: bool) -> None:
    dataset = Dataset()
    for tag, value in decoded(fields, has_data_set).items():
        dataset.add_new(tag, VR.get(tag, "US"), _pydicom_value(value))
    elements = pn_encode(dataset, True, True)
    assert elements is not None
    data = with_group_length(elements)
    assert decode_command(data).fields == decoded(fields, has_data_set)
    assert encode_command(fields, has_data_set=has_data_set) == data


def _pn_message(data: bytes, data_set: bytes | None = None) -> DIMSEMessage:
    """pynetdicom's receiving side: one P-DATA with our command (and a data set) in PDVs."""
    pdvs = [[1, b"\x03" + data]]
    if data_set is not None:
        pdvs.append([1, b"\x02" + data_set])
    pdata = pn.P_DATA()
    # pynetdicom takes [id, bytes] lists here, whatever its annotation says
    pdata.presentation_data_value_list = pdvs  # type: ignore[assignment]
    message = DIMSEMessage()
    assert message.decode_msg(pdata)
    return message


def test_pynetdicom_understands_our_store_request() -> None:
    message = _pn_message(encode_command(STORE, has_data_set=False))
    primitive = message.message_to_primitive()
    assert isinstance(primitive, dp.C_STORE)
    assert primitive.MessageID == 7
    assert primitive.AffectedSOPClassUID == CT
    assert primitive.AffectedSOPInstanceUID == "1.2.3.4.5"
    assert primitive.MoveOriginatorApplicationEntityTitle == "MOVER"
    assert primitive.MoveOriginatorMessageID == 3
    assert primitive.Priority == 0


def test_pynetdicom_understands_our_responses() -> None:
    store = decode_command(encode_command(STORE, has_data_set=True))
    rsp = response(store, 0xC000, error_comment="cannot understand", offending_element=(0x10,))
    primitive = _pn_message(encode_command(rsp, has_data_set=False)).message_to_primitive()
    assert isinstance(primitive, dp.C_STORE)
    assert primitive.MessageIDBeingRespondedTo == 7
    assert primitive.Status == 0xC000
    assert primitive.ErrorComment == "cannot understand"
    assert primitive.AffectedSOPInstanceUID == "1.2.3.4.5"
    find = request(CommandField.C_FIND_RQ, 3, affected_sop_class_uid=CT)
    pending = response(decode_command(encode_command(find, has_data_set=True)), 0xFF00)
    primitive = _pn_message(
        encode_command(pending, has_data_set=True), b"\x10\x00\x10\x00\x00\x00\x00\x00"
    ).message_to_primitive()
    assert isinstance(primitive, dp.C_FIND)
    assert (primitive.MessageIDBeingRespondedTo, primitive.Status) == (3, 0xFF00)


def test_we_read_pynetdicom_requests() -> None:
    store = dp.C_STORE()
    store.MessageID = 12
    store.AffectedSOPClassUID = CT
    store.AffectedSOPInstanceUID = "1.2.3.4.5.6"
    store.Priority = 2
    store.MoveOriginatorApplicationEntityTitle = "ORIGIN"
    store.MoveOriginatorMessageID = 4
    store.DataSet = BytesIO(b"\x08\x00\x16\x00\x00\x00\x00\x00")
    message = PnCStoreRq()
    message.primitive_to_message(store)
    pdatas = list(message.encode_msg(1, 16382))
    context_id, command_pdv = pdatas[0].presentation_data_value_list[0]
    assert (context_id, command_pdv[0]) == (1, 0x03)
    command = decode_command(command_pdv[1:])
    assert command.fields == {
        Tag.AFFECTED_SOP_CLASS_UID: CT,
        Tag.COMMAND_FIELD: 0x0001,
        Tag.MESSAGE_ID: 12,
        Tag.PRIORITY: 2,
        Tag.COMMAND_DATA_SET_TYPE: 0x0001,
        Tag.AFFECTED_SOP_INSTANCE_UID: "1.2.3.4.5.6",
        Tag.MOVE_ORIGINATOR_AE_TITLE: "ORIGIN",
        Tag.MOVE_ORIGINATOR_MESSAGE_ID: 4,
    }
    assert command.has_data_set
    # the same command set, byte for byte, and the same P-DATA-TF framing (PS3.8 9.3.5, E.2)
    ours = encode_command(command.fields, has_data_set=True)
    assert ours == command_pdv[1:]
    pdata_tf = pn_pdu.P_DATA_TF()
    pdata_tf.from_primitive(pdatas[0])
    item = pdu.encode_pdv(1, 0x03, ours)
    assert pdata_tf.encode() == pdu.pdata_header(len(item)) + item


def test_we_read_pynetdicom_n_event_report() -> None:
    report = dp.N_EVENT_REPORT()
    report.MessageID = 2
    report.AffectedSOPClassUID = COMMITMENT
    report.AffectedSOPInstanceUID = COMMITMENT_INSTANCE
    report.EventTypeID = 1
    report.EventInformation = BytesIO(b"")
    message = PnNEventReportRq()
    message.primitive_to_message(report)
    elements = pn_encode(message.command_set, True, True)
    assert elements is not None
    command = decode_command(elements)
    assert command.command_field == CommandField.N_EVENT_REPORT_RQ
    assert (command.message_id, command.event_type_id) == (2, 1)
    assert command.affected_sop_instance_uid == COMMITMENT_INSTANCE
