"""services.stored_query: every Registry Stored Query (ITI TF-2a 3.18.4.1.2.3.7) on
SQLite and PostgreSQL, its parameter rules (3.18.4.1.2.3.5-6) and errors, and the
NIST ITI-18 request samples with their placeholders filled in.

The registry holds, for the test patient 010181-900C (a Finnish test identity
code), SubmissionSet ss1 with entries e1 (a report) and e2 (a KOS manifest) and
Folder f1 holding e1; SubmissionSet ss2 with e3, which replaces e1 (RPLC: e1 is
Deprecated and e3 joins f1); and for another test patient, ss3 with e4.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from lxml import etree
from sqlalchemy import Engine, select

from kuva.index import schema
from kuva.index.database import make_engine, migrate
from kuva.index.registry_bulk import bulk_register
from kuva.index.registry_query import like_literal
from kuva.model.xds import (
    ON_DEMAND_DOCUMENT_ENTRY,
    ORIGINAL,
    REGISTRY_PACKAGE_TYPE,
    STABLE_DOCUMENT_ENTRY,
    Association,
    AssociationType,
    Author,
    AvailabilityStatus,
    Classification,
    Code,
    DocumentEntry,
    ErrorCode,
    Folder,
    FolderScheme,
    NewDocumentEntry,
    NewSubmissionSet,
    ObjectKind,
    PatientId,
    ResponseStatus,
    Submission,
    SubmissionSet,
    code_classification,
    external_identifier,
    new_association,
    new_uuid,
)
from kuva.services.registry import RegistryService
from kuva.services.stored_query import (
    QUERIES,
    QueryParameter,
    ReturnType,
    StoredQueryId,
    StoredQueryRequest,
    StoredQueryResult,
    StoredQueryService,
    parse_value,
)
from kuva.xds import ebrim
from kuva.xds.iti18 import read_request, response_body
from kuva.xds.namespaces import NSMAP
from kuva.xds.schema import validate

SAMPLES = Path(__file__).parents[1] / "data" / "xds" / "samples"
PATIENT = PatientId("010181-900C", "1.2.246.21")
OTHER = PatientId("020292-9188", "1.2.246.21")
ORG = "1.2.246.10.1234567.10"
NOW = datetime(2026, 3, 14, 9, 26, 53, tzinfo=UTC)
REPOSITORY = "1.2.246.10.0.10.1.1"
HOME = "urn:oid:1.2.246.10.0.10.1"

APPROVED = AvailabilityStatus.APPROVED.value
DEPRECATED = AvailabilityStatus.DEPRECATED.value
CLASS_SCHEME = "1.3.6.1.4.1.19376.1.2.6.1"
REPORTS = Code("REPORTS", CLASS_SCHEME, "Reports")
IMAGES = Code("IMAGES", CLASS_SCHEME, "Images")
DCM = "1.2.840.10008.2.16.4"
CT = Code("CT", DCM, "Computed Tomography")
MR = Code("MR", DCM, "Magnetic Resonance")
NORMAL = Code("N", "2.16.840.1.113883.5.25", "normal")
RESTRICTED = Code("R", "2.16.840.1.113883.5.25", "restricted")
KOS_FORMAT = Code("1.2.840.10008.5.1.4.1.1.88.59", "1.2.840.10008.2.6.1", "KOS")
CDA_FORMAT = Code("urn:ihe:rad:CDA:ImagingReportStructuredHeadings:2013", "1.3.6.1.4.1.19376.1.2.3")
REPORT_TYPE = Code("11528-7", "2.16.840.1.113883.6.1", "Radiology report")
HOSPITAL = Code("22232009", "2.16.840.1.113883.6.96", "Hospital")
RADIOLOGY = Code("394914008", "2.16.840.1.113883.6.96", "Radiology")
ACCESSION = "A1^^^&1.2.246.10.1234567.10.1&ISO^urn:ihe:iti:xds:2013:accession"
# The reference id of the FindDocumentsByReferenceId sample.
SAMPLE_REFERENCE = "20061223^^^&1.2.5643.2&ISO^urn:ihe:iti:xds:2013:uniqueId"


def quoted(value: object) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def listed(*values: object) -> str:
    return "(" + ", ".join(quoted(v) for v in values) + ")"


def new_oid() -> str:
    return f"2.25.{int(new_uuid()[9:].replace('-', ''), 16)}"


def entry(patient: PatientId = PATIENT, **overrides: Any) -> DocumentEntry:
    values: dict[str, Any] = {
        "patient": patient,
        "unique_id": new_oid(),
        "mime_type": "text/xml",
        "class_code": REPORTS,
        "type_code": REPORT_TYPE,
        "format_code": CDA_FORMAT,
        "healthcare_facility_type_code": HOSPITAL,
        "practice_setting_code": RADIOLOGY,
        "confidentiality_codes": (NORMAL,),
        "creation_time": "20240101120000",
        "language_code": "fi-FI",
        "source_patient_id": str(patient),
        "hash": "e543712c0e10501972de13a5bfcbe826c49feb75",
        "size": 4,
        "repository_unique_id": REPOSITORY,
    }
    values.update(overrides)
    return NewDocumentEntry(**values).build()


def folder(patient: PatientId = PATIENT) -> Folder:
    me = new_uuid()
    return Folder(
        id=me,
        lid=me,
        object_type=REGISTRY_PACKAGE_TYPE,
        name="Kuvantaminen",
        classifications=(
            Classification(
                id=new_uuid(), classified_object=me, classification_node=FolderScheme.NODE
            ),
            code_classification(FolderScheme.CODE_LIST, CT, classified_object=me),
        ),
        external_identifiers=(
            external_identifier(
                FolderScheme.UNIQUE_ID, new_oid(), "XDSFolder.uniqueId", registry_object=me
            ),
            external_identifier(
                FolderScheme.PATIENT_ID, str(patient), "XDSFolder.patientId", registry_object=me
            ),
        ),
    )


def submission_set(
    patient: PatientId = PATIENT,
    *,
    submitted: str = "20260314092700",
    source: str = "1.2.246.10.1234567",
    author: str = "^Lahettaja^Liisa^^^",
) -> SubmissionSet:
    return NewSubmissionSet(
        patient=patient,
        unique_id=new_oid(),
        source_id=source,
        submission_time=submitted,
        content_type_code=REPORT_TYPE,
        authors=(Author(person=author),),
    ).build()


@dataclasses.dataclass
class World:
    """What the registry holds (module docstring)."""

    ss1: SubmissionSet
    ss2: SubmissionSet
    ss3: SubmissionSet
    e1: DocumentEntry
    e2: DocumentEntry
    e3: DocumentEntry
    e4: DocumentEntry
    f1: Folder
    # Associations: ss1 -> e1, e2, f1, f1e1 (f1 -> e1), ss1 -> f1e1; ss2 -> e3,
    # e3 RPLC e1, and the f1 -> e3 the registry made; ss3 -> e4.
    ss1_e1: Association
    ss1_e2: Association
    ss1_f1: Association
    f1_e1: Association
    ss1_f1e1: Association
    ss2_e3: Association
    rplc: Association
    f1_e3: str
    ss3_e4: Association


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


def register(registry: RegistryService, submission: Submission) -> None:
    outcome = registry.register(submission, organization_oid=ORG)
    assert outcome.status is ResponseStatus.SUCCESS, outcome.errors


@pytest.fixture
def world(engine: Engine) -> World:
    return build_world(engine)


def build_world(engine: Engine) -> World:
    """Register the module docstring's objects."""
    clock = Clock()
    registry = RegistryService(
        engine, trusted_assigning_authorities=["1.2.246.21"], render=ebrim.render, clock=clock
    )
    e1 = entry(
        creation_time="20240101120000",
        service_start_time="20231231",
        service_stop_time="20240101",
        event_codes=(CT,),
        authors=(Author(person="^Virtanen^Ville^^^"),),
        reference_ids=(ACCESSION,),
        title="Lausunto",
    )
    e2 = entry(
        mime_type="application/dicom",
        class_code=IMAGES,
        format_code=KOS_FORMAT,
        creation_time="20240615103000",
        service_start_time="20240615",
        confidentiality_codes=(NORMAL, RESTRICTED),
        event_codes=(CT, MR),
        authors=(Author(person="^Nieminen^Nina^^^"), Author(person="^Virta^Veli^^^")),
        reference_ids=(ACCESSION, SAMPLE_REFERENCE),
    )
    f1 = folder()
    ss1 = submission_set(submitted="20240615110000", author="^Virtanen^Ville^^^")
    ss1_e1 = new_association(
        AssociationType.HAS_MEMBER, ss1.id, e1.id, submission_set_status=ORIGINAL
    )
    ss1_e2 = new_association(
        AssociationType.HAS_MEMBER, ss1.id, e2.id, submission_set_status=ORIGINAL
    )
    ss1_f1 = new_association(AssociationType.HAS_MEMBER, ss1.id, f1.id)
    f1_e1 = new_association(AssociationType.HAS_MEMBER, f1.id, e1.id)
    ss1_f1e1 = new_association(AssociationType.HAS_MEMBER, ss1.id, f1_e1.id)
    register(
        registry,
        Submission(
            submission_sets=(ss1,),
            document_entries=(e1, e2),
            folders=(f1,),
            associations=(ss1_e1, ss1_e2, ss1_f1, f1_e1, ss1_f1e1),
        ),
    )
    clock.now = NOW + timedelta(hours=1)
    e3 = entry(creation_time="20250101000000", confidentiality_codes=(RESTRICTED,))
    ss2 = submission_set(submitted="20250101000100", source="1.2.246.10.7654321")
    ss2_e3 = new_association(
        AssociationType.HAS_MEMBER, ss2.id, e3.id, submission_set_status=ORIGINAL
    )
    rplc = new_association(AssociationType.RPLC, e3.id, e1.id)
    register(
        registry,
        Submission(submission_sets=(ss2,), document_entries=(e3,), associations=(ss2_e3, rplc)),
    )
    e4 = entry(OTHER, creation_time="20240101120000")
    ss3 = submission_set(OTHER)
    ss3_e4 = new_association(
        AssociationType.HAS_MEMBER, ss3.id, e4.id, submission_set_status=ORIGINAL
    )
    register(
        registry,
        Submission(submission_sets=(ss3,), document_entries=(e4,), associations=(ss3_e4,)),
    )
    service = StoredQueryService(engine)
    made = ask(
        service,
        StoredQueryId.GET_ASSOCIATIONS,
        ("$uuid", listed(e3.id)),
        return_type="ObjectRef",
    ).references
    (f1_e3,) = set(made) - {ss2_e3.id, rplc.id}
    return World(
        ss1, ss2, ss3, e1, e2, e3, e4, f1, ss1_e1, ss1_e2, ss1_f1, f1_e1, ss1_f1e1, ss2_e3,
        rplc, f1_e3, ss3_e4,
    )  # fmt: skip


@pytest.fixture
def service(engine: Engine) -> StoredQueryService:
    return StoredQueryService(engine)


Param = tuple[str, ...]  # name, then the text of each rim:Value


def ask(
    service: StoredQueryService,
    query_id: str,
    *params: Param,
    return_type: str | None = "LeafClass",
) -> StoredQueryResult:
    request = StoredQueryRequest(
        query_id=query_id,
        parameters=tuple(QueryParameter(p[0], tuple(p[1:])) for p in params),
        return_type=return_type,
    )
    return service.query(request)


def ids(result: StoredQueryResult) -> list[str]:
    assert result.status is ResponseStatus.SUCCESS, result.errors
    if result.return_type is ReturnType.LEAF_CLASS:
        return [o.entry_uuid for o in result.objects]
    return list(result.references)


def refused(result: StoredQueryResult) -> set[tuple[str, str]]:
    """(code, location) of each error of a Failure."""
    assert result.status is ResponseStatus.FAILURE
    assert not result.objects and not result.references
    return {(e.code, e.location) for e in result.errors}


DE = "$XDSDocumentEntry"
BOTH = listed(APPROVED, DEPRECATED)


def find_documents(
    service: StoredQueryService,
    *params: Param,
    patient: PatientId = PATIENT,
    status: str = BOTH,
    return_type: str = "LeafClass",
) -> list[str]:
    return ids(
        ask(
            service,
            StoredQueryId.FIND_DOCUMENTS,
            (f"{DE}PatientId", quoted(patient)),
            (f"{DE}Status", status),
            *params,
            return_type=return_type,
        )
    )


# --- FindDocuments (3.18.4.1.2.3.7.1) ---


def test_find_documents_by_patient_and_status(world: World, service: StoredQueryService) -> None:
    w = world
    assert find_documents(service, status=listed(APPROVED)) == [w.e2.id, w.e3.id]
    assert find_documents(service, status=listed(DEPRECATED)) == [w.e1.id]
    assert find_documents(service) == [w.e1.id, w.e2.id, w.e3.id]
    assert find_documents(service, patient=OTHER) == [w.e4.id]
    # An unknown patient: Success, nothing; other statuses match nothing.
    assert find_documents(service, patient=PatientId("311299-999E", "1.2.246.21")) == []
    assert (
        find_documents(
            service, status=listed("urn:oasis:names:tc:ebxml-regrep:StatusType:Submitted")
        )
        == []
    )
    # The status list may come in several Value elements.
    assert find_documents(service, status=f"{listed(APPROVED)}") == [w.e2.id, w.e3.id]
    result = ask(
        service,
        StoredQueryId.FIND_DOCUMENTS,
        (f"{DE}PatientId", quoted(PATIENT)),
        (f"{DE}Status", listed(APPROVED), listed(DEPRECATED)),
    )
    assert ids(result) == [w.e1.id, w.e2.id, w.e3.id]


def test_find_documents_leaf_class_objects(world: World, service: StoredQueryService) -> None:
    """LeafClass: the objects as registered, with their current status."""
    result = ask(
        service,
        StoredQueryId.FIND_DOCUMENTS,
        (f"{DE}PatientId", quoted(PATIENT)),
        (f"{DE}Status", BOTH),
    )
    by_id = {o.entry_uuid: o for o in result.objects}
    assert by_id[world.e1.id].status is AvailabilityStatus.DEPRECATED
    assert by_id[world.e2.id].status is AvailabilityStatus.APPROVED
    assert by_id[world.e2.id].ebxml == ebrim.render(world.e2)
    assert {o.kind for o in result.objects} == {ObjectKind.DOCUMENT_ENTRY}
    refs = find_documents(service, return_type="ObjectRef")
    assert refs == [world.e1.id, world.e2.id, world.e3.id]


def test_find_documents_codes(world: World, service: StoredQueryService) -> None:
    w = world
    assert find_documents(service, (f"{DE}ClassCode", listed(f"REPORTS^^{CLASS_SCHEME}"))) == [
        w.e1.id,
        w.e3.id,
    ]
    # Code and scheme must both match.
    assert find_documents(service, (f"{DE}ClassCode", listed("REPORTS^^2.999"))) == []
    # Values of one Slot, and of several Value elements, are OR-ed.
    both = (f"{DE}ClassCode", listed(f"REPORTS^^{CLASS_SCHEME}", f"IMAGES^^{CLASS_SCHEME}"))
    assert find_documents(service, both) == [w.e1.id, w.e2.id, w.e3.id]
    split = (f"{DE}ClassCode", listed(f"IMAGES^^{CLASS_SCHEME}"), listed("X^^Y"))
    assert find_documents(service, split) == [w.e2.id]
    assert find_documents(service, (f"{DE}FormatCode", listed(str(KOS_FORMAT)))) == [w.e2.id]
    assert find_documents(service, (f"{DE}TypeCode", listed(str(REPORT_TYPE)))) == [
        w.e1.id,
        w.e2.id,
        w.e3.id,
    ]
    assert (
        find_documents(service, (f"{DE}TypeCode", listed("34133-9^^2.16.840.1.113883.6.1"))) == []
    )
    assert len(find_documents(service, (f"{DE}PracticeSettingCode", listed(str(RADIOLOGY))))) == 3
    assert (
        find_documents(
            service, (f"{DE}HealthcareFacilityTypeCode", listed("X^^2.16.840.1.113883.6.96"))
        )
        == []
    )
    # Everything at once.
    assert find_documents(
        service,
        (f"{DE}ClassCode", listed(str(IMAGES))),
        (f"{DE}TypeCode", listed(str(REPORT_TYPE))),
        (f"{DE}PracticeSettingCode", listed(str(RADIOLOGY))),
        (f"{DE}HealthcareFacilityTypeCode", listed(str(HOSPITAL))),
        (f"{DE}FormatCode", listed(str(KOS_FORMAT))),
    ) == [w.e2.id]


def test_find_documents_and_or_codes(world: World, service: StoredQueryService) -> None:
    """eventCodeList and confidentialityCode: Slots AND-ed, values OR-ed (3.18.4.1.2.3.6)."""
    w = world
    event = f"{DE}EventCodeList"
    assert find_documents(service, (event, listed(str(CT)))) == [w.e1.id, w.e2.id]
    assert find_documents(service, (event, listed(str(MR)))) == [w.e2.id]
    assert find_documents(service, (event, listed(str(CT), str(MR)))) == [w.e1.id, w.e2.id]
    assert find_documents(service, (event, listed(str(CT))), (event, listed(str(MR)))) == [w.e2.id]
    confidentiality = f"{DE}ConfidentialityCode"
    assert find_documents(service, (confidentiality, listed(str(RESTRICTED)))) == [w.e2.id, w.e3.id]
    assert find_documents(
        service, (confidentiality, listed(str(RESTRICTED))), (confidentiality, listed(str(NORMAL)))
    ) == [w.e2.id]


def test_find_documents_times(world: World, service: StoredQueryService) -> None:
    """From inclusive, To exclusive; a shorter DTM is the first second of its period.
    e1 20240101120000, e2 20240615103000, e3 20250101000000."""
    w = world

    def created(low: str | None, high: str | None) -> list[str]:
        params: list[Param] = []
        if low is not None:
            params.append((f"{DE}CreationTimeFrom", low))
        if high is not None:
            params.append((f"{DE}CreationTimeTo", high))
        return find_documents(service, *params)

    assert created("2024", "2025") == [w.e1.id, w.e2.id]
    assert created("20240615103000", None) == [w.e2.id, w.e3.id]
    assert created(None, "20240615103000") == [w.e1.id]
    assert created("202406", "202407") == [w.e2.id]
    assert created("2025", None) == [w.e3.id]
    assert created("20240101120001", "20240615103000") == []
    # Quoted times are read too.
    assert created("'2025'", None) == [w.e3.id]
    # serviceStartTime: e1 20231231, e2 20240615, e3 none (never matches a range).
    assert find_documents(service, (f"{DE}ServiceStartTimeFrom", "2023")) == [w.e1.id, w.e2.id]
    assert find_documents(service, (f"{DE}ServiceStartTimeTo", "20240615")) == [w.e1.id]
    # serviceStopTime: only e1 (20240101).
    assert find_documents(
        service, (f"{DE}ServiceStopTimeFrom", "20240101"), (f"{DE}ServiceStopTimeTo", "20240102")
    ) == [w.e1.id]
    assert find_documents(service, (f"{DE}ServiceStopTimeTo", "20240101")) == []


def test_find_documents_author_person(world: World, service: StoredQueryService) -> None:
    """LIKE patterns (% and _), case-sensitive, several values OR-ed."""
    w = world
    author = f"{DE}AuthorPerson"
    assert find_documents(service, (author, listed("%Virtanen%"))) == [w.e1.id]
    assert find_documents(service, (author, listed("%Virta%"))) == [w.e1.id, w.e2.id]
    assert find_documents(service, (author, listed("^Nieminen^Nina^^^"))) == [w.e2.id]
    assert find_documents(service, (author, listed("_Nieminen%"))) == [w.e2.id]
    assert find_documents(service, (author, listed("%virtanen%"))) == []
    assert find_documents(service, (author, listed("%Virtanen%", "%Nieminen%"))) == [
        w.e1.id,
        w.e2.id,
    ]
    # A single quote inside a value is written twice; a backslash is literal.
    assert find_documents(service, (author, "'%O''Brien%'")) == []
    assert find_documents(service, (author, listed("\\%"))) == []
    assert like_literal("a\\b%") == "a\\\\b%"


def test_find_documents_entry_type(world: World, service: StoredQueryService) -> None:
    """$XDSDocumentEntryType: stable when absent (3.18.4.1.2.3.6.2)."""
    w = world
    kind = f"{DE}Type"
    assert find_documents(service, (kind, listed(ON_DEMAND_DOCUMENT_ENTRY))) == []
    assert find_documents(service, (kind, listed(STABLE_DOCUMENT_ENTRY))) == [
        w.e1.id,
        w.e2.id,
        w.e3.id,
    ]
    assert (
        len(
            find_documents(service, (kind, listed(ON_DEMAND_DOCUMENT_ENTRY, STABLE_DOCUMENT_ENTRY)))
        )
        == 3
    )
    result = ask(
        service,
        StoredQueryId.FIND_DOCUMENTS,
        (f"{DE}PatientId", quoted(PATIENT)),
        (f"{DE}Status", BOTH),
        (kind, listed("urn:uuid:00000000-0000-4000-8000-000000000000")),
    )
    assert refused(result) == {(ErrorCode.REGISTRY_ERROR, kind)}


def test_find_documents_by_reference_id(world: World, service: StoredQueryService) -> None:
    w = world
    reference = f"{DE}ReferenceIdList"

    def by_reference(*params: Param, status: str = BOTH) -> list[str]:
        return ids(
            ask(
                service,
                StoredQueryId.FIND_DOCUMENTS_BY_REFERENCE_ID,
                (f"{DE}PatientId", quoted(PATIENT)),
                (f"{DE}Status", status),
                *params,
            )
        )

    assert by_reference((reference, listed(ACCESSION))) == [w.e1.id, w.e2.id]
    assert by_reference((reference, listed(ACCESSION)), status=listed(APPROVED)) == [w.e2.id]
    assert by_reference((reference, listed(SAMPLE_REFERENCE, "X^^^&1.2.3&ISO"))) == [w.e2.id]
    assert by_reference((reference, listed("A1"))) == []  # exact values only
    assert by_reference(
        (reference, listed(ACCESSION)), (f"{DE}ClassCode", listed(str(REPORTS)))
    ) == [w.e1.id]
    # Required here, and no parameter of FindDocuments.
    missing = ask(
        service,
        StoredQueryId.FIND_DOCUMENTS_BY_REFERENCE_ID,
        (f"{DE}PatientId", quoted(PATIENT)),
        (f"{DE}Status", BOTH),
    )
    assert refused(missing) == {(ErrorCode.STORED_QUERY_PARAM_NUMBER, reference)}
    unknown = ask(
        service,
        StoredQueryId.FIND_DOCUMENTS,
        (f"{DE}PatientId", quoted(PATIENT)),
        (f"{DE}Status", BOTH),
        (reference, listed(ACCESSION)),
    )
    assert refused(unknown) == {(ErrorCode.REGISTRY_ERROR, reference)}


# --- FindSubmissionSets, FindFolders, GetAll (3.18.4.1.2.3.7.2-4) ---


def test_find_submission_sets(world: World, service: StoredQueryService) -> None:
    w = world
    ss = "$XDSSubmissionSet"

    def find(*params: Param, patient: PatientId = PATIENT) -> list[str]:
        return ids(
            ask(
                service,
                StoredQueryId.FIND_SUBMISSION_SETS,
                (f"{ss}PatientId", quoted(patient)),
                (f"{ss}Status", listed(APPROVED)),
                *params,
            )
        )

    assert find() == [w.ss1.id, w.ss2.id]
    assert find(patient=OTHER) == [w.ss3.id]
    assert find((f"{ss}SourceId", listed("1.2.246.10.7654321"))) == [w.ss2.id]
    assert find((f"{ss}SubmissionTimeFrom", "2025")) == [w.ss2.id]
    assert find((f"{ss}SubmissionTimeTo", "20250101000100")) == [w.ss1.id]
    assert find((f"{ss}ContentType", listed(str(REPORT_TYPE)))) == [w.ss1.id, w.ss2.id]
    assert find((f"{ss}ContentType", listed("x^^y"))) == []
    assert find((f"{ss}AuthorPerson", quoted("%Virtanen%"))) == [w.ss1.id]
    # AuthorPerson takes one value here.
    many = ask(
        service,
        StoredQueryId.FIND_SUBMISSION_SETS,
        (f"{ss}PatientId", quoted(PATIENT)),
        (f"{ss}Status", listed(APPROVED)),
        (f"{ss}AuthorPerson", listed("%a%", "%b%")),
    )
    assert refused(many) == {(ErrorCode.STORED_QUERY_PARAM_NUMBER, f"{ss}AuthorPerson")}


def test_find_folders(world: World, service: StoredQueryService) -> None:
    w = world
    fd = "$XDSFolder"

    def find(*params: Param) -> list[str]:
        return ids(
            ask(
                service,
                StoredQueryId.FIND_FOLDERS,
                (f"{fd}PatientId", quoted(PATIENT)),
                (f"{fd}Status", listed(APPROVED)),
                *params,
            )
        )

    assert find() == [w.f1.id]
    # lastUpdateTime: set when e3 joined it, an hour after NOW.
    assert find((f"{fd}LastUpdateTimeFrom", "20260314102653")) == [w.f1.id]
    assert find((f"{fd}LastUpdateTimeTo", "20260314102653")) == []
    assert find((f"{fd}CodeList", listed(str(CT)))) == [w.f1.id]
    assert find((f"{fd}CodeList", listed(str(CT))), (f"{fd}CodeList", listed(str(MR)))) == []
    assert find((f"{fd}CodeList", listed(str(MR), str(CT)))) == [w.f1.id]
    (stored,) = ask(
        service,
        StoredQueryId.FIND_FOLDERS,
        (f"{fd}PatientId", quoted(PATIENT)),
        (f"{fd}Status", listed(APPROVED)),
    ).objects
    assert stored.last_update_time == "20260314102653"


def get_all(service: StoredQueryService, *params: Param, status: str = BOTH) -> list[str]:
    return ids(
        ask(
            service,
            StoredQueryId.GET_ALL,
            ("$patientId", quoted(PATIENT)),
            ("$XDSDocumentEntryStatus", status),
            ("$XDSSubmissionSetStatus", status),
            ("$XDSFolderStatus", status),
            *params,
        )
    )


def test_get_all(world: World, service: StoredQueryService) -> None:
    w = world
    everything = [
        w.ss1.id, w.ss2.id, w.e1.id, w.e2.id, w.e3.id, w.f1.id,
        w.ss1_e1.id, w.ss1_e2.id, w.ss1_f1.id, w.f1_e1.id, w.ss1_f1e1.id,
        w.ss2_e3.id, w.rplc.id, w.f1_e3,
    ]  # fmt: skip
    found = get_all(service)
    assert sorted(found) == sorted(everything)
    # By kind: SubmissionSets, DocumentEntries, Folders, Associations.
    assert found[:6] == everything[:6]
    # Approved only: e1 goes, and every Association that links it.
    approved = get_all(service, status=listed(APPROVED))
    assert sorted(approved) == sorted(
        [
            w.ss1.id,
            w.ss2.id,
            w.e2.id,
            w.e3.id,
            w.f1.id,
            w.ss1_e2.id,
            w.ss1_f1.id,
            w.ss2_e3.id,
            w.f1_e3,
        ]
    )
    # DocumentEntry filters.
    kos = get_all(service, ("$XDSDocumentEntryFormatCode", listed(str(KOS_FORMAT))))
    assert sorted(kos) == sorted([w.ss1.id, w.ss2.id, w.e2.id, w.f1.id, w.ss1_e2.id, w.ss1_f1.id])
    restricted = get_all(service, ("$XDSDocumentEntryConfidentialityCode", listed(str(RESTRICTED))))
    assert {w.e2.id, w.e3.id} < set(restricted) and w.e1.id not in restricted
    assert w.e4.id not in found and w.ss3.id not in found
    refs = ask(
        service,
        StoredQueryId.GET_ALL,
        ("$patientId", quoted(PATIENT)),
        ("$XDSDocumentEntryStatus", BOTH),
        ("$XDSSubmissionSetStatus", BOTH),
        ("$XDSFolderStatus", BOTH),
        return_type="ObjectRef",
    )
    assert ids(refs) == found


# --- the Get queries by id (3.18.4.1.2.3.7.5-13) ---


def test_get_documents(world: World, service: StoredQueryService) -> None:
    w = world
    by_uuid = ask(
        service, StoredQueryId.GET_DOCUMENTS, (f"{DE}EntryUUID", listed(w.e1.id, w.e2.id))
    )
    assert ids(by_uuid) == [w.e1.id, w.e2.id]  # any status
    by_unique = ask(service, StoredQueryId.GET_DOCUMENTS, (f"{DE}UniqueId", listed(w.e3.unique_id)))
    assert ids(by_unique) == [w.e3.id]
    # Ids naming nothing (or no DocumentEntry) are left out.
    missing = ask(
        service, StoredQueryId.GET_DOCUMENTS, (f"{DE}EntryUUID", listed(new_uuid(), w.f1.id))
    )
    assert ids(missing) == []
    # uuid XOR uniqueId.
    both = ask(
        service,
        StoredQueryId.GET_DOCUMENTS,
        (f"{DE}EntryUUID", listed(w.e1.id)),
        (f"{DE}UniqueId", listed(w.e1.unique_id)),
    )
    group = f"{DE}EntryUUID or {DE}UniqueId"
    assert refused(both) == {(ErrorCode.STORED_QUERY_PARAM_NUMBER, group)}
    assert refused(ask(service, StoredQueryId.GET_DOCUMENTS)) == {
        (ErrorCode.STORED_QUERY_PARAM_NUMBER, group)
    }
    # Two patients in one answer.
    mixed = ask(service, StoredQueryId.GET_DOCUMENTS, (f"{DE}EntryUUID", listed(w.e1.id, w.e4.id)))
    assert refused(mixed) == {(ErrorCode.RESULT_NOT_SINGLE_PATIENT, "GetDocuments")}
    bad = ask(service, StoredQueryId.GET_DOCUMENTS, (f"{DE}EntryUUID", listed("Document01")))
    assert refused(bad) == {(ErrorCode.REGISTRY_ERROR, f"{DE}EntryUUID")}


def test_get_folders(world: World, service: StoredQueryService) -> None:
    w = world
    assert ids(
        ask(service, StoredQueryId.GET_FOLDERS, ("$XDSFolderEntryUUID", listed(w.f1.id, w.e1.id)))
    ) == [w.f1.id]
    assert ids(
        ask(service, StoredQueryId.GET_FOLDERS, ("$XDSFolderUniqueId", listed(w.f1.unique_id)))
    ) == [w.f1.id]
    assert refused(ask(service, StoredQueryId.GET_FOLDERS)) == {
        (ErrorCode.STORED_QUERY_PARAM_NUMBER, "$XDSFolderEntryUUID or $XDSFolderUniqueId")
    }


def test_get_associations(world: World, service: StoredQueryService) -> None:
    w = world
    found = ids(ask(service, StoredQueryId.GET_ASSOCIATIONS, ("$uuid", listed(w.e1.id))))
    assert found == [w.ss1_e1.id, w.f1_e1.id, w.rplc.id]
    found = ids(ask(service, StoredQueryId.GET_ASSOCIATIONS, ("$uuid", listed(w.f1.id, w.e4.id))))
    assert found == [w.ss1_f1.id, w.f1_e1.id, w.f1_e3, w.ss3_e4.id]
    assert refused(ask(service, StoredQueryId.GET_ASSOCIATIONS)) == {
        (ErrorCode.STORED_QUERY_PARAM_NUMBER, "$uuid")
    }


def test_get_documents_and_associations(world: World, service: StoredQueryService) -> None:
    w = world
    found = ids(
        ask(
            service,
            StoredQueryId.GET_DOCUMENTS_AND_ASSOCIATIONS,
            (f"{DE}UniqueId", listed(w.e1.unique_id)),
        )
    )
    assert found == [w.e1.id, w.ss1_e1.id, w.f1_e1.id, w.rplc.id]


def test_get_submission_sets(world: World, service: StoredQueryService) -> None:
    w = world
    found = ids(
        ask(service, StoredQueryId.GET_SUBMISSION_SETS, ("$uuid", listed(w.e2.id, w.f1.id)))
    )
    assert found == [w.ss1.id, w.ss1_e2.id, w.ss1_f1.id]
    # e1 is held by ss1 and by the Folder: only the SubmissionSet's HasMember comes.
    assert ids(ask(service, StoredQueryId.GET_SUBMISSION_SETS, ("$uuid", listed(w.e1.id)))) == [
        w.ss1.id,
        w.ss1_e1.id,
    ]
    assert ids(ask(service, StoredQueryId.GET_SUBMISSION_SETS, ("$uuid", listed(new_uuid())))) == []


def test_get_submission_set_and_contents(world: World, service: StoredQueryService) -> None:
    w = world
    ss = "$XDSSubmissionSet"
    found = ids(
        ask(
            service,
            StoredQueryId.GET_SUBMISSION_SET_AND_CONTENTS,
            (f"{ss}EntryUUID", quoted(w.ss1.id)),
        )
    )
    assert found == [
        w.ss1.id, w.e1.id, w.e2.id, w.f1.id,
        w.ss1_e1.id, w.ss1_e2.id, w.ss1_f1.id, w.f1_e1.id, w.ss1_f1e1.id,
    ]  # fmt: skip
    by_unique = ask(
        service,
        StoredQueryId.GET_SUBMISSION_SET_AND_CONTENTS,
        (f"{ss}UniqueId", quoted(w.ss1.unique_id)),
        (f"{DE}FormatCode", listed(str(KOS_FORMAT))),
    )
    assert ids(by_unique) == [w.ss1.id, w.e2.id, w.f1.id, w.ss1_e2.id, w.ss1_f1.id]
    assert ids(
        ask(
            service,
            StoredQueryId.GET_SUBMISSION_SET_AND_CONTENTS,
            (f"{ss}EntryUUID", quoted(w.ss2.id)),
        )
    ) == [w.ss2.id, w.e3.id, w.ss2_e3.id]
    assert (
        ids(
            ask(
                service,
                StoredQueryId.GET_SUBMISSION_SET_AND_CONTENTS,
                (f"{ss}EntryUUID", quoted(new_uuid())),
            )
        )
        == []
    )
    # One SubmissionSet only.
    two = ask(
        service,
        StoredQueryId.GET_SUBMISSION_SET_AND_CONTENTS,
        (f"{ss}EntryUUID", listed(w.ss1.id, w.ss2.id)),
    )
    assert refused(two) == {(ErrorCode.STORED_QUERY_PARAM_NUMBER, f"{ss}EntryUUID")}


def test_get_folder_and_contents(world: World, service: StoredQueryService) -> None:
    w = world
    found = ids(
        ask(
            service,
            StoredQueryId.GET_FOLDER_AND_CONTENTS,
            ("$XDSFolderUniqueId", quoted(w.f1.unique_id)),
        )
    )
    assert found == [w.e1.id, w.e3.id, w.f1.id, w.f1_e1.id, w.f1_e3]
    restricted = ask(
        service,
        StoredQueryId.GET_FOLDER_AND_CONTENTS,
        ("$XDSFolderEntryUUID", quoted(w.f1.id)),
        (f"{DE}ConfidentialityCode", listed(str(RESTRICTED))),
    )
    assert ids(restricted) == [w.e3.id, w.f1.id, w.f1_e3]


def test_get_folders_for_document(world: World, service: StoredQueryService) -> None:
    w = world
    query = StoredQueryId.GET_FOLDERS_FOR_DOCUMENT
    assert ids(ask(service, query, (f"{DE}UniqueId", quoted(w.e3.unique_id)))) == [w.f1.id]
    assert ids(ask(service, query, (f"{DE}EntryUUID", quoted(w.e1.id)))) == [w.f1.id]
    assert ids(ask(service, query, (f"{DE}EntryUUID", quoted(w.e2.id)))) == []


def test_get_related_documents(world: World, service: StoredQueryService) -> None:
    w = world
    query = StoredQueryId.GET_RELATED_DOCUMENTS
    types = listed(AssociationType.RPLC.value, AssociationType.XFRM_RPLC.value)
    found = ids(
        ask(service, query, (f"{DE}EntryUUID", quoted(w.e1.id)), ("$AssociationTypes", types))
    )
    assert found == [w.e1.id, w.e3.id, w.rplc.id]
    found = ids(
        ask(service, query, (f"{DE}UniqueId", quoted(w.e3.unique_id)), ("$AssociationTypes", types))
    )
    assert found == [w.e1.id, w.e3.id, w.rplc.id]
    # Nothing related: nothing at all; HasMember links no DocumentEntries.
    assert (
        ids(ask(service, query, (f"{DE}EntryUUID", quoted(w.e2.id)), ("$AssociationTypes", types)))
        == []
    )
    has_member = listed(AssociationType.HAS_MEMBER.value)
    assert (
        ids(
            ask(
                service,
                query,
                (f"{DE}EntryUUID", quoted(w.e1.id)),
                ("$AssociationTypes", has_member),
            )
        )
        == []
    )
    unknown = ask(
        service, query, (f"{DE}EntryUUID", quoted(w.e1.id)), ("$AssociationTypes", listed("RPLC"))
    )
    assert refused(unknown) == {(ErrorCode.REGISTRY_ERROR, "$AssociationTypes")}


# --- parameters and errors (3.18.4.1.2.3.5-6, 3.18.4.1.3) ---


def test_parse_value() -> None:
    def texts(value: str) -> list[tuple[str, bool]]:
        return [(s.text, s.quoted) for s in parse_value(value)]

    assert texts("'a'") == [("a", True)]
    assert texts(" ( 'a' ,'b''c', 20040101 ) ") == [("a", True), ("b'c", True), ("20040101", False)]
    assert texts("''''") == [("'", True)]
    assert texts("'a,(b)'") == [("a,(b)", True)]
    assert texts("20041224") == [("20041224", False)]
    for bad in ("", "()", "('a'", "'a", "('a' 'b')", "'a' x", "(,)"):
        with pytest.raises(ValueError):
            parse_value(bad)


def find_with(service: StoredQueryService, *params: Param) -> StoredQueryResult:
    return ask(service, StoredQueryId.FIND_DOCUMENTS, *params)


PATIENT_PARAM = (f"{DE}PatientId", quoted(PATIENT))
STATUS_PARAM = (f"{DE}Status", listed(APPROVED))


@pytest.mark.parametrize(
    ("params", "code", "location"),
    [
        # Required parameters missing.
        ((PATIENT_PARAM,), ErrorCode.STORED_QUERY_PARAM_NUMBER, f"{DE}Status"),
        ((STATUS_PARAM,), ErrorCode.STORED_QUERY_PARAM_NUMBER, f"{DE}PatientId"),
        # One value where one is allowed.
        (
            ((f"{DE}PatientId", listed(PATIENT, OTHER)), STATUS_PARAM),
            ErrorCode.STORED_QUERY_PARAM_NUMBER,
            f"{DE}PatientId",
        ),
        (
            ((f"{DE}PatientId", quoted(PATIENT), quoted(OTHER)), STATUS_PARAM),
            ErrorCode.STORED_QUERY_PARAM_NUMBER,
            f"{DE}PatientId",
        ),
        (
            (PATIENT_PARAM, STATUS_PARAM, (f"{DE}CreationTimeFrom", "(2004, 2005)")),
            ErrorCode.STORED_QUERY_PARAM_NUMBER,
            f"{DE}CreationTimeFrom",
        ),
        # Several Slots where AND/OR is not allowed.
        (
            (
                PATIENT_PARAM,
                STATUS_PARAM,
                (f"{DE}ClassCode", listed(str(REPORTS))),
                (f"{DE}ClassCode", listed(str(IMAGES))),
            ),
            ErrorCode.STORED_QUERY_PARAM_NUMBER,
            f"{DE}ClassCode",
        ),
        # Values not in their form.
        (
            ((f"{DE}PatientId", str(PATIENT)), STATUS_PARAM),
            ErrorCode.REGISTRY_ERROR,
            f"{DE}PatientId",
        ),
        (
            ((f"{DE}PatientId", quoted("010181-900C")), STATUS_PARAM),
            ErrorCode.REGISTRY_ERROR,
            f"{DE}PatientId",
        ),
        (
            (PATIENT_PARAM, (f"{DE}Status", listed("Approved"))),
            ErrorCode.REGISTRY_ERROR,
            f"{DE}Status",
        ),
        (
            (PATIENT_PARAM, STATUS_PARAM, (f"{DE}ClassCode", listed("REPORTS"))),
            ErrorCode.REGISTRY_ERROR,
            f"{DE}ClassCode",
        ),
        (
            (PATIENT_PARAM, STATUS_PARAM, (f"{DE}ClassCode", listed("REPORTS^^"))),
            ErrorCode.REGISTRY_ERROR,
            f"{DE}ClassCode",
        ),
        (
            (PATIENT_PARAM, STATUS_PARAM, (f"{DE}CreationTimeFrom", "2004-12-24")),
            ErrorCode.REGISTRY_ERROR,
            f"{DE}CreationTimeFrom",
        ),
        (
            (PATIENT_PARAM, STATUS_PARAM, (f"{DE}CreationTimeFrom", "20041332")),
            ErrorCode.REGISTRY_ERROR,
            f"{DE}CreationTimeFrom",
        ),
        (
            (PATIENT_PARAM, STATUS_PARAM, (f"{DE}CreationTimeFrom",)),
            ErrorCode.REGISTRY_ERROR,
            f"{DE}CreationTimeFrom",
        ),
        (
            (PATIENT_PARAM, STATUS_PARAM, (f"{DE}AuthorPerson", "()")),
            ErrorCode.REGISTRY_ERROR,
            f"{DE}AuthorPerson",
        ),
        (
            (PATIENT_PARAM, STATUS_PARAM, (f"{DE}AuthorPerson", "('%a")),
            ErrorCode.REGISTRY_ERROR,
            f"{DE}AuthorPerson",
        ),
        # Parameters the query does not define; the old XDS.a scheme parameters.
        (
            (PATIENT_PARAM, STATUS_PARAM, (f"{DE}ClassCodeScheme", listed("x"))),
            ErrorCode.REGISTRY_ERROR,
            f"{DE}ClassCodeScheme",
        ),
        (
            (PATIENT_PARAM, STATUS_PARAM, ("$XDSFolderStatus", listed(APPROVED))),
            ErrorCode.REGISTRY_ERROR,
            "$XDSFolderStatus",
        ),
        # XDS Metadata Update is not supported.
        (
            (PATIENT_PARAM, STATUS_PARAM, ("$MetadataLevel", "2")),
            ErrorCode.REGISTRY_ERROR,
            "$MetadataLevel",
        ),
    ],
)
def test_parameter_errors(
    world: World, service: StoredQueryService, params: tuple[Param, ...], code: str, location: str
) -> None:
    result = find_with(service, *params)
    assert refused(result) == {(code, location)}, result.errors
    assert all(e.context for e in result.errors)


def test_every_problem_is_reported(world: World, service: StoredQueryService) -> None:
    result = find_with(
        service,
        (f"{DE}PatientId", str(PATIENT)),
        (f"{DE}ClassCode", listed("X")),
    )
    assert refused(result) == {
        (ErrorCode.REGISTRY_ERROR, f"{DE}PatientId"),
        (ErrorCode.REGISTRY_ERROR, f"{DE}ClassCode"),
        (ErrorCode.STORED_QUERY_PARAM_NUMBER, f"{DE}Status"),
    }


def test_common_parameters(world: World, service: StoredQueryService) -> None:
    """$homeCommunityId is accepted (and not used), $MetadataLevel 1 too."""
    result = find_with(
        service,
        PATIENT_PARAM,
        STATUS_PARAM,
        ("$MetadataLevel", "1"),
        ("$homeCommunityId", quoted(HOME)),
    )
    assert ids(result) == [world.e2.id, world.e3.id]
    result = ask(
        service,
        StoredQueryId.GET_DOCUMENTS,
        (f"{DE}EntryUUID", listed(world.e2.id)),
        ("$homeCommunityId", quoted(HOME)),
    )
    assert ids(result) == [world.e2.id]


def test_unknown_query_and_return_type(world: World, service: StoredQueryService) -> None:
    unknown = ask(service, "urn:uuid:3d1bdb10-39a2-11de-89c2-2f44d94eaf0d", PATIENT_PARAM)
    assert refused(unknown) == {(ErrorCode.REGISTRY_ERROR, "AdhocQuery/@id")}
    for return_type in ("RegistryObject", "LeafClassWithRepositoryItem", None):
        result = find_with_type(service, return_type)
        assert refused(result) == {(ErrorCode.REGISTRY_ERROR, "ResponseOption/@returnType")}
    # Query ids are matched whatever their case.
    upper = ask(service, StoredQueryId.FIND_DOCUMENTS.upper(), PATIENT_PARAM, STATUS_PARAM)
    assert ids(upper) == [world.e2.id, world.e3.id]
    paged = service.query(
        StoredQueryRequest(
            StoredQueryId.FIND_DOCUMENTS,
            (
                QueryParameter(*PATIENT_PARAM[:1], PATIENT_PARAM[1:]),
                QueryParameter(STATUS_PARAM[0], STATUS_PARAM[1:]),
            ),
            start_index=10,
        )
    )
    assert refused(paged) == {(ErrorCode.REGISTRY_ERROR, "AdhocQueryRequest")}


def find_with_type(service: StoredQueryService, return_type: str | None) -> StoredQueryResult:
    return ask(
        service, StoredQueryId.FIND_DOCUMENTS, PATIENT_PARAM, STATUS_PARAM, return_type=return_type
    )


def test_too_many_results(world: World, engine: Engine) -> None:
    """More objects than an answer may hold: XDSTooManyResults, nothing returned."""
    small = StoredQueryService(engine, leaf_class_limit=2, object_ref_limit=3)
    both = (f"{DE}Status", BOTH)
    result = find_with(small, PATIENT_PARAM, both)
    assert refused(result) == {(ErrorCode.TOO_MANY_RESULTS, "FindDocuments")}
    assert "ObjectRef" in result.errors[0].context
    refs = ask(small, StoredQueryId.FIND_DOCUMENTS, PATIENT_PARAM, both, return_type="ObjectRef")
    assert len(ids(refs)) == 3
    # Composite answers count every object.
    everything = ask(
        small,
        StoredQueryId.GET_ALL,
        ("$patientId", quoted(PATIENT)),
        ("$XDSDocumentEntryStatus", BOTH),
        ("$XDSSubmissionSetStatus", BOTH),
        ("$XDSFolderStatus", BOTH),
        return_type="ObjectRef",
    )
    assert refused(everything) == {(ErrorCode.TOO_MANY_RESULTS, "GetAll")}
    assert ids(find_with(small, PATIENT_PARAM, STATUS_PARAM)) == [world.e2.id, world.e3.id]
    with pytest.raises(ValueError):
        StoredQueryService(engine, leaf_class_limit=0)


def test_every_stored_query_is_served() -> None:
    assert {q.name for q in QUERIES.values()} == {
        "FindDocuments", "FindDocumentsByReferenceId", "FindSubmissionSets", "FindFolders",
        "GetAll", "GetDocuments", "GetFolders", "GetAssociations", "GetDocumentsAndAssociations",
        "GetSubmissionSets", "GetSubmissionSetAndContents", "GetFolderAndContents",
        "GetFoldersForDocument", "GetRelatedDocuments",
    }  # fmt: skip


# --- the NIST samples ---


def sample_request(name: str, fill: dict[str, str]) -> StoredQueryRequest:
    """The AdhocQueryRequest of a sample, placeholders filled, read as kuva.xds.iti18 does."""
    text = (SAMPLES / name).read_text()
    for placeholder, value in fill.items():
        text = text.replace(placeholder, value.replace("&", "&amp;"))
    assert not re.search(r"\$\w+\$", text), text
    root = etree.fromstring(text.encode())
    if etree.QName(root).localname == "Envelope":
        root = root.find(".//{*}Body")[0]  # type: ignore[index]
    assert validate(root) == []
    return read_request(root)


def sample_cases(w: World) -> Iterator[tuple[str, dict[str, str], list[str]]]:
    """(sample, placeholders, the answer's entryUUIDs)."""
    patient = {"$patient_id$": str(PATIENT)}
    yield "iti18-FindDocuments-request.xml", patient, [w.e2.id, w.e3.id]
    # A patient id of the NIST test data the registry does not hold.
    yield "iti18-FindDocuments-soap12-request.xml", {}, []
    yield "iti18-FindDocumentsByReferenceId-request.xml", patient, [w.e2.id]
    yield "iti18-FindSubmissionSets-request.xml", patient, [w.ss1.id, w.ss2.id]
    yield "iti18-FindFolders-request.xml", patient, [w.f1.id]
    yield (
        "iti18-GetAll-request.xml",
        {"$Patient_ID$": str(PATIENT), "$home$": HOME},
        [
            w.ss1.id, w.ss2.id, w.e1.id, w.e2.id, w.e3.id, w.f1.id,
            w.ss1_e1.id, w.ss1_e2.id, w.ss1_f1.id, w.f1_e1.id, w.ss1_f1e1.id,
            w.ss2_e3.id, w.rplc.id, w.f1_e3,
        ],
    )  # fmt: skip
    yield "iti18-GetDocuments-request.xml", {"$uid$": w.e2.unique_id}, [w.e2.id]
    yield "iti18-GetFolders-request.xml", {"$uuid1$": w.f1.id, "$uuid2$": new_uuid()}, [w.f1.id]
    yield (
        "iti18-GetAssociations-request.xml",
        {"$uuid$": w.e1.id},
        [w.ss1_e1.id, w.f1_e1.id, w.rplc.id],
    )
    yield (
        "iti18-GetDocumentsAndAssociations-request.xml",
        {"$uniqueid$": w.e1.unique_id},
        [w.e1.id, w.ss1_e1.id, w.f1_e1.id, w.rplc.id],
    )
    yield "iti18-GetSubmissionSets-request.xml", {"$uuid$": w.e2.id}, [w.ss1.id, w.ss1_e2.id]
    yield (
        "iti18-GetSubmissionSetAndContents-request.xml",
        {"$uniqueid$": w.ss2.unique_id},
        [w.ss2.id, w.e3.id, w.ss2_e3.id],
    )
    yield (
        "iti18-GetFolderAndContents-request.xml",
        {"$uniqueid$": w.f1.unique_id},
        [w.e1.id, w.e3.id, w.f1.id, w.f1_e1.id, w.f1_e3],
    )
    yield "iti18-GetFoldersForDocument-request.xml", {"$uniqueid$": w.e3.unique_id}, [w.f1.id]
    # As sent, its entryUUID names no entry; then the replaced entry's.
    yield "iti18-GetRelatedDocuments-request.xml", {}, []
    yield (
        "iti18-GetRelatedDocuments-request.xml",
        {"'urn:uuid:d90e5407-b356-4d91-a89f-873917b4b0e6'": quoted(w.e1.id)},
        [w.e1.id, w.e3.id, w.rplc.id],
    )


def test_request_samples(world: World, service: StoredQueryService) -> None:
    served = set()
    for name, fill, expected in sample_cases(world):
        request = sample_request(name, fill)
        result = service.query(request)
        assert ids(result) == expected, name
        served.add(request.query_id)
        # The answer as kuva.xds.iti18 writes it is schema-valid.
        assert validate(response_body(result, HOME)) == [], name
    assert served == set(QUERIES)


@pytest.mark.parametrize(
    ("name", "fill", "code", "location"),
    [
        (
            "invalid-iti18-FindDocuments-classcode-scheme-mismatch.xml",
            {"$patient_id$": str(PATIENT)},
            ErrorCode.REGISTRY_ERROR,
            f"{DE}ClassCode",
        ),
        (
            "invalid-iti18-FindDocuments-missing-status.xml",
            {},
            ErrorCode.STORED_QUERY_PARAM_NUMBER,
            f"{DE}Status",
        ),
        (
            "invalid-iti18-FindDocuments-unquoted-patientid.xml",
            {},
            ErrorCode.REGISTRY_ERROR,
            f"{DE}PatientId",
        ),
    ],
)
def test_invalid_request_samples(
    world: World,
    service: StoredQueryService,
    name: str,
    fill: dict[str, str],
    code: str,
    location: str,
) -> None:
    """Schema-valid, refused by the stored query's rules (SOURCES.md)."""
    result = service.query(sample_request(name, fill))
    assert refused(result) == {(code, location)}
    body = response_body(result, HOME)
    assert validate(body) == []
    assert body.find("rs:RegistryErrorList/rs:RegistryError", NSMAP) is not None


def test_answers_always_carry_object_type(world: World, service: StoredQueryService) -> None:
    """The response-side sample lacks the ExtrinsicObject's objectType, which tells a
    client stable from on-demand entries; every object kuva answers carries it."""
    sample = etree.parse(str(SAMPLES / "invalid-iti18-response-missing-objectType.xml")).getroot()
    assert [e.get("objectType") for e in sample.iterfind(".//rim:ExtrinsicObject", NSMAP)] == [
        None,
        "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1",
    ]
    result = ask(
        service,
        StoredQueryId.GET_ALL,
        ("$patientId", quoted(PATIENT)),
        ("$XDSDocumentEntryStatus", BOTH),
        ("$XDSSubmissionSetStatus", BOTH),
        ("$XDSFolderStatus", BOTH),
    )
    body = response_body(result, HOME)
    objects = list(body.find("rim:RegistryObjectList", NSMAP))  # type: ignore[arg-type]
    assert len(objects) == 14
    for element in objects:
        assert element.get("objectType"), etree.tostring(element)[:200]
    entries = body.findall("rim:RegistryObjectList/rim:ExtrinsicObject", NSMAP)
    assert {e.get("objectType") for e in entries} == {STABLE_DOCUMENT_ENTRY}


# --- the benchmark's bulk loader (kuva.index.registry_bulk) ---


def simple_submissions(count: int) -> list[Submission]:
    """Submissions that change nothing registered: a SubmissionSet, one or two
    entries and, every third time, a Folder holding the first."""
    made = []
    for n in range(count):
        patient = PATIENT if n % 2 else OTHER
        subset = submission_set(patient)
        entries = tuple(entry(patient, event_codes=(CT,)) for _ in range(1 + n % 2))
        links = [
            new_association(
                AssociationType.HAS_MEMBER, subset.id, e.id, submission_set_status=ORIGINAL
            )
            for e in entries
        ]
        folders: tuple[Folder, ...] = ()
        if n % 3 == 0:
            folders = (folder(patient),)
            filed = new_association(AssociationType.HAS_MEMBER, folders[0].id, entries[0].id)
            links += [
                new_association(AssociationType.HAS_MEMBER, subset.id, folders[0].id),
                filed,
                new_association(AssociationType.HAS_MEMBER, subset.id, filed.id),
            ]
        made.append(
            Submission(
                submission_sets=(subset,),
                document_entries=entries,
                folders=folders,
                associations=tuple(links),
            )
        )
    return made


REGISTRY_TABLES = (
    schema.xds_object,
    schema.xds_document_entry,
    schema.xds_code,
    schema.xds_author,
    schema.xds_reference_id,
    schema.xds_submission_set,
    schema.xds_folder,
    schema.xds_association,
)


def registry_rows(engine: Engine) -> list[list[tuple[Any, ...]]]:
    with engine.connect() as conn:
        return [
            [tuple(row) for row in conn.execute(select(t).order_by(t.c.pk))]
            for t in REGISTRY_TABLES
        ]


def test_bulk_register_writes_what_register_writes(engine: Engine, tmp_path: Path) -> None:
    """Rows of bulk_register (this database) equal those RegistryService.register
    writes (SQLite), key for key; and the queries find the objects."""
    given = simple_submissions(12)
    reference = make_engine(f"sqlite:///{tmp_path / 'reference.sqlite'}")
    migrate(reference)
    registry = RegistryService(
        reference,
        trusted_assigning_authorities=["1.2.246.21"],
        render=ebrim.render,
        clock=lambda: NOW,
    )
    for submission in given:
        register(registry, submission)
    stored = bulk_register(
        engine, given, organization_oid=ORG, created_at=NOW, render=ebrim.render, chunk_size=5
    )
    assert stored == sum(len(s.objects) for s in given)
    expected = registry_rows(reference)
    reference.dispose()
    assert registry_rows(engine) == expected
    assert len(expected[0]) == stored
    service = StoredQueryService(engine)
    assert len(find_documents(service)) == sum(
        len(s.document_entries) for s in given if s.submission_sets[0].patient == PATIENT
    )
    with pytest.raises(RuntimeError):
        bulk_register(engine, given[:1], organization_oid=ORG, created_at=NOW, render=ebrim.render)


def test_bulk_register_refuses_what_changes_the_registry(engine: Engine) -> None:
    (first,) = simple_submissions(1)
    later = entry()
    subset = submission_set()
    replacing = Submission(
        submission_sets=(subset,),
        document_entries=(later,),
        associations=(
            new_association(
                AssociationType.HAS_MEMBER, subset.id, later.id, submission_set_status=ORIGINAL
            ),
            new_association(AssociationType.RPLC, later.id, first.document_entries[0].id),
        ),
    )
    with pytest.raises(ValueError, match="leaves its submission"):
        bulk_register(
            engine, [first, replacing], organization_oid=ORG, created_at=NOW, render=ebrim.render
        )
