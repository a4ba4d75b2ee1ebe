"""The DICOM Audit Message (PS3.15 A.5.1) kuva renders, checked structure by
structure: no copy of the standard's RELAX NG schema is at hand here, so these
tests state the schema's rules that kuva's messages rely on (element order,
required attributes, coded values, base64 and dateTime types)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta, timezone

import pytest
from lxml import etree

from kuva.audit.message import render, xml_datetime
from kuva.model import audit as a
from kuva.services.audit import by_user
from tests.support.xua import verified

WHEN = datetime(2026, 11, 28, 9, 30, 15, 123456, tzinfo=UTC)
SOURCE = a.AuditSource("KUVA", enterprise_site_id="1.2.246.10.0.10")
ARCHIVE = a.ActiveParticipant(
    "KUVA",
    requestor=False,
    roles=(a.DESTINATION,),
    alternative_user_id="4242",
    network_access_point="kuva-node-1",
    access_point_type=a.AccessPointType.MACHINE_NAME,
)
PACS = a.ActiveParticipant(
    "PACS1", requestor=True, roles=(a.SOURCE,), network_access_point="10.0.0.5"
)
CT = "1.2.840.10008.5.1.4.1.1.2"
STUDY = "1.2.246.10.1.2.3"
PIC_OID = "1.2.246.21"

# PS3.15 A.5.1: the children of AuditMessage, in this order.
ORDER = [
    "EventIdentification",
    "ActiveParticipant",
    "AuditSourceIdentification",
    "ParticipantObjectIdentification",
]
CODED = {"csd-code", "codeSystemName", "originalText"}


def _xml(event: a.AuditEvent) -> etree._Element:
    return etree.fromstring(render(event).encode())


def _check_schema_rules(root: etree._Element) -> None:
    """What the PS3.15 A.5.1 schema requires of every message."""
    assert root.tag == "AuditMessage" and root.nsmap == {}
    tags = [child.tag for child in root]
    ranks = [ORDER.index(tag) for tag in tags]
    assert ranks == sorted(ranks), tags
    assert tags.count("EventIdentification") == 1
    assert tags.count("AuditSourceIdentification") == 1
    assert tags.count("ActiveParticipant") >= 1
    event = root.find("EventIdentification")
    assert event is not None
    assert event.get("EventActionCode") in {"C", "R", "U", "D", "E"}
    assert event.get("EventOutcomeIndicator") in {"0", "4", "8", "12"}
    instant = event.get("EventDateTime") or ""
    assert instant.endswith("Z")
    assert datetime.fromisoformat(instant).utcoffset() == timedelta(0)
    assert event[0].tag == "EventID"
    # EventID, EventTypeCode*, PurposeOfUse* (in that order).
    kinds = ["EventID", "EventTypeCode", "PurposeOfUse"]
    assert {child.tag for child in event} <= set(kinds)
    ranked = [kinds.index(child.tag) for child in event]
    assert ranked == sorted(ranked)
    for coded in root.iter(
        "EventID",
        "EventTypeCode",
        "PurposeOfUse",
        "RoleIDCode",
        "AuditSourceTypeCode",
        "ParticipantObjectIDTypeCode",
    ):
        assert set(coded.attrib) == CODED, coded.attrib
    for participant in root.iter("ActiveParticipant"):
        assert participant.get("UserID")
        assert participant.get("UserIsRequestor") in {"true", "false"}
        if participant.get("NetworkAccessPointID"):
            assert participant.get("NetworkAccessPointTypeCode") in {"1", "2"}
        assert {child.tag for child in participant} <= {"RoleIDCode"}
    source = root.find("AuditSourceIdentification")
    assert source is not None and source.get("AuditSourceID")
    for item in root.iter("ParticipantObjectIdentification"):
        assert item.get("ParticipantObjectID")
        assert item.get("ParticipantObjectTypeCode") in {"1", "2", "3", "4"}
        assert 1 <= int(item.get("ParticipantObjectTypeCodeRole") or 0) <= 24
        children = [child.tag for child in item]
        assert children[0] == "ParticipantObjectIDTypeCode"
        # ParticipantObjectName | ParticipantObjectQuery, then details, description, SOPClass
        order = [
            "ParticipantObjectIDTypeCode",
            "ParticipantObjectName",
            "ParticipantObjectQuery",
            "ParticipantObjectDetail",
            "ParticipantObjectDescription",
            "SOPClass",
        ]
        assert [order.index(c) for c in children] == sorted(order.index(c) for c in children)
        assert not {"ParticipantObjectName", "ParticipantObjectQuery"} <= set(children)
        for detail in item.iter("ParticipantObjectDetail"):
            assert detail.get("type")
            base64.b64decode(detail.get("value") or "", validate=True)


def test_application_start_and_stop() -> None:
    for started, type_code in ((True, "110120"), (False, "110121")):
        root = _xml(
            a.application_activity(
                started,
                source=SOURCE,
                application=a.ActiveParticipant("KUVA", requestor=False, roles=(a.APPLICATION,)),
                launcher=a.ActiveParticipant(
                    "kuva", requestor=True, roles=(a.APPLICATION_LAUNCHER,)
                ),
                occurred_at=WHEN,
            )
        )
        _check_schema_rules(root)
        event = root.find("EventIdentification")
        assert event is not None
        assert event.attrib == {
            "EventActionCode": "E",
            "EventDateTime": "2026-11-28T09:30:15.123Z",
            "EventOutcomeIndicator": "0",
        }
        assert event.find("EventID").attrib == {  # type: ignore[union-attr]
            "csd-code": "110100",
            "codeSystemName": "DCM",
            "originalText": "Application Activity",
        }
        assert event.find("EventTypeCode").get("csd-code") == type_code  # type: ignore[union-attr]
        roles = [r.get("csd-code") for r in root.iter("RoleIDCode")]
        assert roles == ["110150", "110151"]
        source = root.find("AuditSourceIdentification")
        assert source is not None
        assert source.get("AuditSourceID") == "KUVA"
        assert source.get("AuditEnterpriseSiteID") == "1.2.246.10.0.10"
        assert source.find("AuditSourceTypeCode").get("csd-code") == "4"  # type: ignore[union-attr]
        assert root.find("ParticipantObjectIdentification") is None


def test_instances_transferred_names_study_sop_classes_and_patient() -> None:
    root = _xml(
        a.instances_transferred(
            source=SOURCE,
            sender=PACS,
            receiver=ARCHIVE,
            study_instance_uid=STUDY,
            sop_classes=(a.SopClass(CT, 3),),
            patient=("010181-900C", PIC_OID),
            outcome=a.Outcome.SUCCESS,
            occurred_at=WHEN,
        )
    )
    _check_schema_rules(root)
    assert root.find("EventIdentification").get("EventActionCode") == "C"  # type: ignore[union-attr]
    sender, receiver = root.findall("ActiveParticipant")
    assert sender.attrib == {
        "UserID": "PACS1",
        "UserIsRequestor": "true",
        "NetworkAccessPointID": "10.0.0.5",
        "NetworkAccessPointTypeCode": "2",
    }
    assert receiver.get("UserIsRequestor") == "false"
    assert receiver.get("AlternativeUserID") == "4242"
    assert receiver.get("NetworkAccessPointTypeCode") == "1"
    study, patient = root.findall("ParticipantObjectIdentification")
    assert study.get("ParticipantObjectID") == STUDY
    assert (study.get("ParticipantObjectTypeCode"), study.get("ParticipantObjectTypeCodeRole")) == (
        "2",
        "3",
    )
    assert study.find("ParticipantObjectIDTypeCode").get("csd-code") == "110180"  # type: ignore[union-attr]
    assert study.find("SOPClass").attrib == {"UID": CT, "NumberOfInstances": "3"}  # type: ignore[union-attr]
    # The patient as a CX with its assigning authority (IHE ITI TF-2a 3.20.7).
    assert patient.get("ParticipantObjectID") == f"010181-900C^^^&{PIC_OID}&ISO"
    assert (
        patient.get("ParticipantObjectTypeCode"),
        patient.get("ParticipantObjectTypeCodeRole"),
    ) == ("1", "1")
    id_type = patient.find("ParticipantObjectIDTypeCode")
    assert id_type is not None and id_type.attrib == {
        "csd-code": "2",
        "codeSystemName": "RFC-3881",
        "originalText": "Patient Number",
    }


def test_query_carries_the_identifier_in_base64() -> None:
    identifier = b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY "
    root = _xml(
        a.query(
            source=SOURCE,
            requestor=PACS,
            responder=ARCHIVE,
            sop_class_uid="1.2.840.10008.5.1.4.1.2.2.1",
            identifier=identifier,
            transfer_syntax="1.2.840.10008.1.2",
            outcome=a.Outcome.SUCCESS,
            occurred_at=WHEN,
        )
    )
    _check_schema_rules(root)
    (item,) = root.findall("ParticipantObjectIdentification")
    assert item.find("ParticipantObjectIDTypeCode").get("csd-code") == "110181"  # type: ignore[union-attr]
    assert base64.b64decode(item.findtext("ParticipantObjectQuery") or "") == identifier
    detail = item.find("ParticipantObjectDetail")
    assert detail is not None and detail.get("type") == "TransferSyntax"
    assert base64.b64decode(detail.get("value") or "") == b"1.2.840.10008.1.2"


def test_patient_record_update_names_both_patients_of_a_merge() -> None:
    root = _xml(
        a.patient_record(
            source=SOURCE,
            requestor=a.ActiveParticipant("RIS|TESTSAIRAALA", requestor=True, roles=(a.SOURCE,)),
            archive=ARCHIVE,
            patients=(("010181-900C", PIC_OID), ("LOCAL7", "")),
            description="merge",
            message_control_id="MERGE-1",
            occurred_at=WHEN,
        )
    )
    _check_schema_rules(root)
    event = root.find("EventIdentification")
    assert event is not None and event.get("EventActionCode") == "U"
    assert event.find("EventID").get("csd-code") == "110110"  # type: ignore[union-attr]
    survivor, merged = root.findall("ParticipantObjectIdentification")
    assert survivor.get("ParticipantObjectID") == f"010181-900C^^^&{PIC_OID}&ISO"
    assert merged.get("ParticipantObjectID") == "LOCAL7"
    detail = survivor.find("ParticipantObjectDetail")
    assert detail is not None and detail.get("type") == "MSH-10"
    assert base64.b64decode(detail.get("value") or "") == b"MERGE-1"
    assert survivor.findtext("ParticipantObjectDescription") == "merge"


def test_export_of_documents() -> None:
    root = _xml(
        a.export(
            source=SOURCE,
            exporter=a.ActiveParticipant("KUVA", requestor=False, roles=(a.SOURCE,)),
            recipient=a.ActiveParticipant("1.2.246.10.99", requestor=True, roles=(a.DESTINATION,)),
            transaction=a.ITI_43,
            patient=("010181-900C", PIC_OID),
            handed_out=(a.document_object("1.2.3.4"),),
            occurred_at=WHEN,
        )
    )
    _check_schema_rules(root)
    event = root.find("EventIdentification")
    assert event is not None and event.get("EventActionCode") == "R"
    assert event.find("EventTypeCode").attrib == {  # type: ignore[union-attr]
        "csd-code": "ITI-43",
        "codeSystemName": "IHE Transactions",
        "originalText": "Retrieve Document Set",
    }
    patient, document = root.findall("ParticipantObjectIdentification")
    assert patient.get("ParticipantObjectTypeCodeRole") == "1"
    assert document.get("ParticipantObjectID") == "1.2.3.4"
    assert document.find("ParticipantObjectIDTypeCode").get("csd-code") == "9"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("alert", "code"),
    [
        (a.ALERT_REJECTED_ASSOCIATION, "110126"),
        (a.ALERT_BAD_CERTIFICATE, "110126"),
        (a.ALERT_REFUSED_ACCESS, "110132"),
    ],
)
def test_security_alert(alert: a.Code, code: str) -> None:
    root = _xml(
        a.security_alert(
            alert,
            source=SOURCE,
            reporter=ARCHIVE,
            offender=a.ActiveParticipant(
                "INTRUDER", requestor=True, network_access_point="10.9.9.9"
            ),
            subject="INTRUDER@10.9.9.9",
            subject_type=a.NODE_ID,
            description="calling AE title not recognized",
            occurred_at=WHEN,
        )
    )
    _check_schema_rules(root)
    event = root.find("EventIdentification")
    assert event is not None
    assert event.get("EventOutcomeIndicator") == "4"
    assert event.find("EventID").get("csd-code") == "110113"  # type: ignore[union-attr]
    assert event.find("EventTypeCode").get("csd-code") == code  # type: ignore[union-attr]
    (item,) = root.findall("ParticipantObjectIdentification")
    assert item.find("ParticipantObjectIDTypeCode").get("csd-code") == "110182"  # type: ignore[union-attr]
    detail = item.find("ParticipantObjectDetail")
    assert detail is not None and detail.get("type") == "Alert Description"
    assert base64.b64decode(detail.get("value") or "") == b"calling AE title not recognized"


def test_user_authentication_failed() -> None:
    root = _xml(
        a.user_authentication(
            source=SOURCE,
            user=a.ActiveParticipant("dr<idp>", requestor=True, network_access_point="10.9.9.9"),
            node=ARCHIVE,
            description="the assertion has expired (NotOnOrAfter)",
            occurred_at=WHEN,
        )
    )
    _check_schema_rules(root)
    event = root.find("EventIdentification")
    assert event is not None and event.get("EventOutcomeIndicator") == "4"
    assert event.find("EventID").get("csd-code") == "110114"  # type: ignore[union-attr]
    assert event.find("EventTypeCode").get("csd-code") == "110122"  # type: ignore[union-attr]
    (item,) = root.findall("ParticipantObjectIdentification")
    assert item.get("ParticipantObjectTypeCode") == "1"  # a person
    assert item.find("ParticipantObjectIDTypeCode").get("csd-code") == "11"  # type: ignore[union-attr]


def test_an_event_by_a_verified_user() -> None:
    """The human requestor of a verified XUA assertion (ITI TF-2b 3.40.4.2) and its
    purpose of use in EventIdentification."""
    user = verified("1.2.246.10.55555555.10")
    event = by_user(
        a.export(
            source=SOURCE,
            exporter=ARCHIVE,
            recipient=a.ActiveParticipant("1.2.246.10.55555555.10", requestor=True),
            transaction=a.ITI_43,
            patient=None,
            handed_out=(a.document_object("1.2.3.4"),),
            occurred_at=WHEN,
        ),
        user,
    )
    root = _xml(event)
    _check_schema_rules(root)
    purpose = root.find("EventIdentification/PurposeOfUse")
    assert purpose is not None and purpose.get("csd-code") == "TREAT"
    human = root.findall("ActiveParticipant")[-1]
    assert human.get("UserID") == user.name_id
    assert human.get("UserName") == user.user_name()
    assert human.find("RoleIDCode").get("csd-code") == "309343006"  # type: ignore[union-attr]
    assert by_user(event, None) is event


def test_study_deleted() -> None:
    root = _xml(
        a.study_deleted(
            source=SOURCE,
            deleter=ARCHIVE,
            study_instance_uid=STUDY,
            sop_classes=(a.SopClass(CT, 2),),
            patient=None,
            occurred_at=WHEN,
        )
    )
    _check_schema_rules(root)
    event = root.find("EventIdentification")
    assert event is not None and event.get("EventActionCode") == "D"
    assert event.find("EventID").get("csd-code") == "110105"  # type: ignore[union-attr]


def test_times_are_utc_with_z() -> None:
    helsinki = timezone(timedelta(hours=2))
    assert xml_datetime(datetime(2026, 1, 1, 2, 0, tzinfo=helsinki)) == "2026-01-01T00:00:00.000Z"
    with pytest.raises(ValueError):
        xml_datetime(datetime(2026, 1, 1))


def test_patient_cx() -> None:
    assert a.patient_cx("123", "") == "123"
    assert a.patient_cx("123", PIC_OID) == f"123^^^&{PIC_OID}&ISO"
    assert a.patient_cx("123", "HOSP") == "123^^^HOSP"


def test_markup_in_values_is_escaped() -> None:
    root = _xml(
        a.patient_record(
            source=SOURCE,
            requestor=a.ActiveParticipant('<RIS>&"x"', requestor=True),
            archive=ARCHIVE,
            patients=(("A<1>&", ""),),
            description="update",
            message_control_id="",
            occurred_at=WHEN,
        )
    )
    assert root.find("ActiveParticipant").get("UserID") == '<RIS>&"x"'  # type: ignore[union-attr]
    assert root.find("ParticipantObjectIdentification").get("ParticipantObjectID") == "A<1>&"  # type: ignore[union-attr]


# ---------------------------------------------------------------- the messages of
# QIDO-RS, ITI-18, retrieves by the register holder, ITI-41/42, refused HL7


CLIENT = a.ActiveParticipant(
    "1.2.246.10.1", requestor=True, roles=(a.SOURCE,), network_access_point="10.0.0.9"
)
ENDPOINT = a.ActiveParticipant(
    "https://kuva.example/xds/registry",
    requestor=False,
    roles=(a.DESTINATION,),
    alternative_user_id="4242",
    network_access_point="kuva-node-1",
    access_point_type=a.AccessPointType.MACHINE_NAME,
)
CX = f"010181-900C^^^&{PIC_OID}&ISO"


def _roles(root: etree._Element) -> list[tuple[str | None, str | None, list[str | None]]]:
    return [
        (
            p.get("UserID"),
            p.get("UserIsRequestor"),
            [r.get("csd-code") for r in p.iter("RoleIDCode")],
        )
        for p in root.iter("ActiveParticipant")
    ]


def _event(root: etree._Element) -> tuple[str | None, str | None, str | None, list[str | None]]:
    event = root.find("EventIdentification")
    assert event is not None
    return (
        event.find("EventID").get("csd-code"),  # type: ignore[union-attr]
        event.get("EventActionCode"),
        event.get("EventOutcomeIndicator"),
        [c.get("csd-code") for c in event.iter("EventTypeCode")],
    )


def test_web_query_carries_the_request_target() -> None:
    target = "/dicom-web/studies?PatientID=010181-900C&StudyDate=20260101-"
    root = _xml(
        a.web_query(
            source=SOURCE,
            requestor=CLIENT,
            responder=ARCHIVE,
            target=target,
            outcome=a.Outcome.MINOR_FAILURE,
            occurred_at=WHEN,
        )
    )
    _check_schema_rules(root)
    assert _event(root) == ("110112", "E", "4", [])
    assert _roles(root) == [("1.2.246.10.1", "true", ["110153"]), ("KUVA", "false", ["110152"])]
    (item,) = root.findall("ParticipantObjectIdentification")
    assert item.get("ParticipantObjectID") == a.STUDY_ROOT_FIND
    assert item.find("ParticipantObjectIDTypeCode").get("csd-code") == "110181"  # type: ignore[union-attr]
    assert base64.b64decode(item.findtext("ParticipantObjectQuery") or "") == target.encode()
    detail = item.find("ParticipantObjectDetail")
    assert detail is not None and detail.get("type") == "QueryEncoding"
    assert base64.b64decode(detail.get("value") or "") == b"UTF-8"


def test_stored_query_names_patient_and_query() -> None:
    request = b"<query:AdhocQueryRequest/>"
    query_id = "urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d"
    root = _xml(
        a.stored_query(
            source=SOURCE,
            consumer=CLIENT,
            registry=ENDPOINT,
            query_id=query_id,
            request=request,
            patient=CX,
            outcome=a.Outcome.SUCCESS,
            occurred_at=WHEN,
        )
    )
    _check_schema_rules(root)
    assert _event(root) == ("110112", "E", "0", ["ITI-18"])
    assert _roles(root) == [
        ("1.2.246.10.1", "true", ["110153"]),
        ("https://kuva.example/xds/registry", "false", ["110152"]),
    ]
    patient, query = root.findall("ParticipantObjectIdentification")
    assert (patient.get("ParticipantObjectID"), patient.get("ParticipantObjectTypeCode")) == (
        CX,
        "1",
    )
    assert query.get("ParticipantObjectID") == query_id
    assert (query.get("ParticipantObjectTypeCode"), query.get("ParticipantObjectTypeCodeRole")) == (
        "2",
        "24",
    )
    assert query.find("ParticipantObjectIDTypeCode").attrib == {  # type: ignore[union-attr]
        "csd-code": "ITI-18",
        "codeSystemName": "IHE Transactions",
        "originalText": "Registry Stored Query",
    }
    assert base64.b64decode(query.findtext("ParticipantObjectQuery") or "") == request
    # No patient named: the query alone.
    root = _xml(
        a.stored_query(
            source=SOURCE,
            consumer=CLIENT,
            registry=ENDPOINT,
            query_id=query_id,
            request=request,
            patient=None,
            outcome=a.Outcome.SUCCESS,
            occurred_at=WHEN,
        )
    )
    assert len(root.findall("ParticipantObjectIdentification")) == 1


def test_instances_read_by_the_register_holder() -> None:
    """A C-MOVE: kuva Source, the Move Destination Destination, the calling node the
    requestor without a role (PS3.15 A.5.3.4)."""
    mover = a.ActiveParticipant("VIEWER", requestor=True, network_access_point="10.0.0.7")
    destination = a.ActiveParticipant(
        "STORE", requestor=False, roles=(a.DESTINATION,), network_access_point="10.0.0.8"
    )
    sender = a.ActiveParticipant("KUVA", requestor=False, roles=(a.SOURCE,))
    root = _xml(
        a.instances_transferred(
            source=SOURCE,
            sender=sender,
            receiver=destination,
            study_instance_uid=STUDY,
            sop_classes=(a.SopClass(CT, 2),),
            patient=("010181-900C", PIC_OID),
            outcome=a.Outcome.SUCCESS,
            occurred_at=WHEN,
            action=a.Action.READ,
            others=(mover,),
            transaction=a.RAD_16,
        )
    )
    _check_schema_rules(root)
    assert _event(root) == ("110104", "R", "0", ["RAD-16"])
    assert _roles(root) == [
        ("KUVA", "false", ["110153"]),
        ("STORE", "false", ["110152"]),
        ("VIEWER", "true", []),
    ]
    study, patient = root.findall("ParticipantObjectIdentification")
    assert study.find("SOPClass").attrib == {"UID": CT, "NumberOfInstances": "2"}  # type: ignore[union-attr]
    assert patient.get("ParticipantObjectID") == CX


@pytest.mark.parametrize("transaction", [a.ITI_41, a.ITI_42])
def test_import_of_a_submission(transaction: a.Code) -> None:
    root = _xml(
        a.imported(
            source=SOURCE,
            document_source=CLIENT,
            recipient=ENDPOINT,
            transaction=transaction,
            submission_set="1.2.246.10.1.99.1",
            patient=CX,
            outcome=a.Outcome.SUCCESS,
            occurred_at=WHEN,
        )
    )
    _check_schema_rules(root)
    assert _event(root) == ("110107", "C", "0", [transaction.code])
    assert [r[2] for r in _roles(root)] == [["110153"], ["110152"]]
    patient, submission = root.findall("ParticipantObjectIdentification")
    assert (patient.get("ParticipantObjectID"), patient.get("ParticipantObjectTypeCodeRole")) == (
        CX,
        "1",
    )
    assert submission.get("ParticipantObjectID") == "1.2.246.10.1.99.1"
    assert submission.get("ParticipantObjectTypeCodeRole") == "20"
    assert submission.find("ParticipantObjectIDTypeCode").get("csd-code") == (  # type: ignore[union-attr]
        "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"
    )


def test_refused_patient_record_is_a_minor_failure() -> None:
    root = _xml(
        a.patient_record(
            source=SOURCE,
            requestor=a.ActiveParticipant("RIS|SAIRAALA", requestor=True, roles=(a.SOURCE,)),
            archive=ARCHIVE,
            patients=(("010181-900C", PIC_OID),),
            description="ADT^A40 refused: the patient to merge is unknown",
            message_control_id="MSG-1",
            occurred_at=WHEN,
            outcome=a.Outcome.MINOR_FAILURE,
        )
    )
    _check_schema_rules(root)
    assert _event(root) == ("110110", "U", "4", [])
    (patient,) = root.findall("ParticipantObjectIdentification")
    assert patient.findtext("ParticipantObjectDescription", "").endswith("unknown")
