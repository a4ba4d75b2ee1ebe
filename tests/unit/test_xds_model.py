"""model.xds: identifiers, times, codes and the registry's objects (no I/O)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from kuva.model.xds import (
    ORIGINAL,
    STABLE_DOCUMENT_ENTRY,
    AssociationType,
    Author,
    Code,
    DocumentAvailability,
    DocumentEntryScheme,
    NewDocumentEntry,
    NewSubmissionSet,
    PatientId,
    RegistryError,
    ResponseStatus,
    Severity,
    SubmissionSetScheme,
    dtm_instant,
    dtm_problem,
    format_dtm,
    is_uuid_urn,
    new_association,
    new_uuid,
    oid_problem,
    patient_id_problem,
    status_of,
)

PATIENT = PatientId("010181-900C", "1.2.246.21")
REPORT = Code("11528-7", "2.16.840.1.113883.6.1", "Radiology report")


def entry(**overrides: object) -> NewDocumentEntry:
    values: dict[str, object] = {
        "patient": PATIENT,
        "unique_id": "1.2.246.10.1234567.99.1",
        "mime_type": "text/xml",
        "class_code": Code("REPORTS", "1.3.6.1.4.1.19376.1.2.6.1", "Reports"),
        "type_code": REPORT,
        "format_code": Code("urn:ihe:rad:CDA:ImagingReportStructuredHeadings:2013", "1.3.6.1"),
        "healthcare_facility_type_code": Code("22232009", "2.16.840.1.113883.6.96"),
        "practice_setting_code": Code("394914008", "2.16.840.1.113883.6.96", "Radiology"),
        "confidentiality_codes": (Code("N", "2.16.840.1.113883.5.25", "normal"),),
        "creation_time": "20260314092653",
        "language_code": "fi-FI",
        "source_patient_id": "010181-900C^^^&1.2.246.21&ISO",
        "hash": "e543712c0e10501972de13a5bfcbe826c49feb75",
        "size": 4,
        "repository_unique_id": "1.2.246.10.0.10.1.1",
    }
    values.update(overrides)
    return NewDocumentEntry(**values)  # type: ignore[arg-type]


def test_patient_id_parse_and_format() -> None:
    """A CX value id^^^&OID&ISO parses to its id and assigning authority and back."""
    parsed = PatientId.parse("010181-900C^^^&1.2.246.21&ISO")
    assert parsed == PATIENT
    assert str(parsed) == "010181-900C^^^&1.2.246.21&ISO"
    assert patient_id_problem(str(parsed)) is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("010181-900C", "CX form"),
        ("^^^&1.2.246.21&ISO", "empty"),
        ("010181-900C^^^1.2.246.21", "&OID&ISO"),
        ("010181-900C^^^HETU&1.2.246.21&ISO", "namespace"),
        ("010181-900C^^^&1.2.246.21&DNS", "ISO"),
        ("010181-900C^^^&3.4.5&ISO", "first arc"),
        ("010181-900C^^^&1.2.03&ISO", "leading zeros"),
        ("010181-900C^^^&&ISO", "missing"),
        ("010181-900C^x^^&1.2.246.21&ISO", "only the id"),
        ("010181-900C^^^&1.2.246.21&ISO^PI", "only the id"),
        ("a&b^^^&1.2.246.21&ISO", "'&'"),
        ("x" * 65 + "^^^&1.2.246.21&ISO", "longer"),
    ],
)
def test_patient_id_refused(value: str, reason: str) -> None:
    """Only CX.1 and CX.4 (&OID&ISO with a valid OID) are allowed (ITI TF-3 4.2.3.1.7)."""
    with pytest.raises(ValueError, match=reason):
        PatientId.parse(value)
    assert patient_id_problem(value)


def test_trailing_empty_cx_components_are_allowed() -> None:
    assert PatientId.parse("010181-900C^^^&1.2.246.21&ISO^") == PATIENT


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("1.2.246.21", None),
        ("2.25.161420553127812870046235620843128813981", None),
        ("0.0", None),
        ("", "missing"),
        ("1", "not an OID"),
        ("1..2", "not an OID"),
        ("1.2.x", "not an OID"),
        ("1.40.3", "second below 40"),
        ("3.1", "first arc"),
        ("1." + "2" * 64, "longer than 64"),
    ],
)
def test_oid_problem(value: str, problem: str | None) -> None:
    found = oid_problem(value)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_uuid_urn() -> None:
    assert is_uuid_urn(new_uuid())
    assert is_uuid_urn("urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1")
    assert not is_uuid_urn("7edca82f-054d-47f2-a032-9b2a5b5186c1")
    assert not is_uuid_urn("urn:uuid:Document01")
    assert new_uuid() != new_uuid()


@pytest.mark.parametrize(
    ("value", "instant"),
    [
        ("2005", "20050101000000"),
        ("200512", "20051201000000"),
        ("20051224", "20051224000000"),
        ("2005122408", "20051224080000"),
        ("200512240801", "20051224080100"),
        ("20051224080159", "20051224080159"),
    ],
)
def test_dtm_precisions(value: str, instant: str) -> None:
    """Every DTM precision is valid and stands for the first second of its period."""
    assert dtm_problem(value) is None
    assert dtm_instant(value) == instant


@pytest.mark.parametrize(
    "value",
    [
        "",
        "05",
        "2005122",
        "200512241",
        "20051332",
        "20050230",
        "2005-12-24",
        "\uff12\uff10\uff10\uff15",
    ],
)
def test_dtm_refused(value: str) -> None:
    assert dtm_problem(value) is not None


def test_format_dtm_is_utc() -> None:
    helsinki = timezone(timedelta(hours=2))
    assert format_dtm(datetime(2026, 3, 14, 11, 26, 53, tzinfo=helsinki)) == "20260314092653"
    with pytest.raises(ValueError, match="naive"):
        format_dtm(datetime(2026, 3, 14))


def test_code_in_stored_query_form() -> None:
    assert str(REPORT) == "11528-7^^2.16.840.1.113883.6.1"


def test_association_types() -> None:
    assert AssociationType.of("urn:ihe:iti:2007:AssociationType:RPLC") is AssociationType.RPLC
    assert AssociationType.of("urn:ihe:iti:2007:AssociationType:Unknown") is None
    assert AssociationType.SIGNS.value == "urn:ihe:iti:2007:AssociationType:signs"


def test_status_of() -> None:
    warning = RegistryError("XDSExtraMetadataNotSaved", "", severity=Severity.WARNING)
    error = RegistryError("XDSRegistryMetadataError", "")
    assert status_of([]) is ResponseStatus.SUCCESS
    assert status_of([warning]) is ResponseStatus.SUCCESS
    assert status_of([error]) is ResponseStatus.FAILURE
    assert status_of([error], partial=True) is ResponseStatus.PARTIAL_SUCCESS


def test_document_entry_built_in_code() -> None:
    """A DocumentEntry made in code has every attribute where ebRIM puts it."""
    author = Author(person="^Radiologi^Rami", institutions=("HUS^^^^^^^^^1.2.246.10.1",))
    built = entry(
        event_codes=(Code("CT", "1.2.840.10008.2.16.4", "CT"),),
        reference_ids=("A1^^^&1.2.246.10.1&ISO^urn:ihe:iti:xds:2013:accession",),
        authors=(author,),
        title="CT thorax",
    ).build()
    assert built.id == built.lid and built.object_type == STABLE_DOCUMENT_ENTRY
    assert built.patient == PATIENT
    assert built.patient_id == str(PATIENT)
    assert built.unique_id == "1.2.246.10.1234567.99.1"
    assert built.class_code == Code("REPORTS", "1.3.6.1.4.1.19376.1.2.6.1", "Reports")
    assert built.type_code == REPORT
    assert built.confidentiality_codes == [Code("N", "2.16.840.1.113883.5.25", "normal")]
    assert built.event_codes == [Code("CT", "1.2.840.10008.2.16.4", "CT")]
    assert built.authors == [author]
    assert built.creation_time == "20260314092653"
    assert built.service_start_time == ""
    assert built.slot("serviceStartTime") is None
    assert built.size == 4
    assert built.hash == "e543712c0e10501972de13a5bfcbe826c49feb75"
    assert built.reference_ids == ("A1^^^&1.2.246.10.1&ISO^urn:ihe:iti:xds:2013:accession",)
    assert built.document_availability == DocumentAvailability.ONLINE.value
    assert built.title == "CT thorax"
    assert all(c.classified_object == built.id for c in built.classifications)
    assert all(e.registry_object == built.id for e in built.external_identifiers)
    assert built.identifiers(DocumentEntryScheme.UNIQUE_ID)[0].name == "XDSDocumentEntry.uniqueId"


def test_size_that_is_no_number() -> None:
    from dataclasses import replace

    from kuva.model.xds import Slot

    built = entry().build()
    assert replace(built, slots=(Slot("size", ("4k",)),)).size is None


def test_submission_set_and_association_built_in_code() -> None:
    subset = NewSubmissionSet(
        patient=PATIENT,
        unique_id="1.2.246.10.1234567.98.1",
        source_id="1.2.246.10.1234567",
        submission_time="20260314092700",
        content_type_code=REPORT,
    ).build()
    assert subset.patient == PATIENT
    assert subset.source_id == "1.2.246.10.1234567"
    assert subset.content_type_code == REPORT
    assert any(c.classification_node == SubmissionSetScheme.NODE for c in subset.classifications)
    member = new_association(
        AssociationType.HAS_MEMBER, subset.id, "urn:uuid:x", submission_set_status=ORIGINAL
    )
    assert member.type is AssociationType.HAS_MEMBER
    assert member.submission_set_status == ORIGINAL
    assert (member.source_object, member.target_object) == (subset.id, "urn:uuid:x")
    replacement = new_association(AssociationType.RPLC, "urn:uuid:a", "urn:uuid:b")
    assert replacement.slots == ()
