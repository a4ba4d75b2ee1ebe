"""services.registry: Register Document Set-b (ITI-42) on SQLite and PostgreSQL.

The NIST samples are filled in as the XDS Toolkit does when it runs them: the
patient id of the test (a Finnish test identity code) and fresh uniqueIds.
Provide and Register (ITI-41) metadata gets the slots a Document Repository adds
(hash, size, repositoryUniqueId; ITI TF-2b 3.41.4.1.3) before it is registered.
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime

import pytest
from lxml import etree
from lxml.etree import _Element as Element
from sqlalchemy import Engine, func, insert, select

from kuva.index import schema
from kuva.index.registry import RegistryConflict
from kuva.index.uow import UnitOfWork
from kuva.model.directory import OrganizationState
from kuva.model.identity import TESTING_RULE
from kuva.model.xds import (
    ORIGINAL,
    REFERENCE,
    REGISTRY_PACKAGE_TYPE,
    AssociationType,
    AvailabilityStatus,
    Classification,
    Code,
    DocumentEntry,
    DocumentEntryScheme,
    ErrorCode,
    Folder,
    FolderScheme,
    NewDocumentEntry,
    NewSubmissionSet,
    PatientId,
    ResponseStatus,
    Slot,
    Submission,
    SubmissionSetScheme,
    code_classification,
    external_identifier,
    new_association,
    new_uuid,
)
from kuva.services.registry import RegistryOutcome, RegistryService
from kuva.xds import ebrim
from kuva.xds.namespaces import NSMAP, q
from tests.unit.test_ebrim import sample_payload

PATIENT = PatientId("010181-900C", "1.2.246.21")
OTHER_PATIENT = PatientId("020292-9188", "1.2.246.21")
ORG = "1.2.246.10.1234567.10"
NOW = datetime(2026, 3, 14, 9, 26, 53, tzinfo=UTC)
REPOSITORY = "1.2.246.10.0.10.1.1"
PATIENT_SCHEMES = {
    DocumentEntryScheme.PATIENT_ID,
    SubmissionSetScheme.PATIENT_ID,
    FolderScheme.PATIENT_ID,
}
UNIQUE_ID_SCHEMES = {
    DocumentEntryScheme.UNIQUE_ID,
    SubmissionSetScheme.UNIQUE_ID,
    FolderScheme.UNIQUE_ID,
}


def new_oid() -> str:
    return f"2.25.{uuid.uuid4().int}"


def fill(payload: Element, patient: PatientId = PATIENT) -> Element:
    """The payload with the test's patient id and fresh uniqueIds (a copy)."""
    filled = etree.fromstring(etree.tostring(payload))
    for identifier in filled.iter(q("rim", "ExternalIdentifier")):
        scheme = identifier.get("identificationScheme")
        if scheme in PATIENT_SCHEMES:
            identifier.set("value", str(patient))
        elif scheme in UNIQUE_ID_SCHEMES:
            identifier.set("value", new_oid())
    return filled


def with_repository_slots(submission: Submission) -> Submission:
    """What a Document Repository adds to ITI-41 metadata before ITI-42."""
    entries = tuple(
        ebrim.with_slots(
            entry,
            {
                "hash": [entry.hash or "da39a3ee5e6b4b0d3255bfef95601890afd80709"],
                "size": [str(entry.size if entry.size is not None else 0)],
                "repositoryUniqueId": [REPOSITORY],
            },
        )
        for entry in submission.document_entries
    )
    return dataclasses.replace(submission, document_entries=entries)


def sample(name: str, *, patient: PatientId = PATIENT, original: str = "") -> Submission:
    payload = fill(sample_payload(name), patient)
    if original:
        for element in payload.iter():
            for attribute, value in element.attrib.items():
                if value == "$original_doc_uuid$":
                    element.set(attribute, original)
    return with_repository_slots(ebrim.parse_submission(payload))


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def registry(engine: Engine, clock: Clock) -> RegistryService:
    return RegistryService(
        engine, trusted_assigning_authorities=["1.2.246.21"], render=ebrim.render, clock=clock
    )


def register(registry: RegistryService, submission: Submission) -> RegistryOutcome:
    return registry.register(submission, organization_oid=ORG)


def codes(outcome: RegistryOutcome) -> set[tuple[str, str]]:
    return {(e.code, e.location) for e in outcome.errors}


def assert_refused(outcome: RegistryOutcome, code: str, location: str, text: str = "") -> None:
    assert outcome.status is ResponseStatus.FAILURE
    matching = [e for e in outcome.errors if e.code == code and e.location == location]
    assert matching, outcome.errors
    if text:
        assert any(text in e.context for e in matching), matching


def count(engine: Engine, table: schema.Table) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def status_of(engine: Engine, entry_uuid: str) -> AvailabilityStatus:
    with UnitOfWork(engine, write=False) as uow:
        return uow.registry.find([entry_uuid])[entry_uuid].status


# --- objects built in code ---

REPORT = Code("11528-7", "2.16.840.1.113883.6.1", "Radiology report")


def new_entry(**overrides: object) -> DocumentEntry:
    values: dict[str, object] = {
        "patient": PATIENT,
        "unique_id": new_oid(),
        "mime_type": "text/xml",
        "class_code": Code("REPORTS", "1.3.6.1.4.1.19376.1.2.6.1", "Reports"),
        "type_code": REPORT,
        "format_code": Code("urn:ihe:rad:CDA:ImagingReportStructuredHeadings:2013", "1.3.6.1"),
        "healthcare_facility_type_code": Code("22232009", "2.16.840.1.113883.6.96", "Hospital"),
        "practice_setting_code": Code("394914008", "2.16.840.1.113883.6.96", "Radiology"),
        "confidentiality_codes": (Code("N", "2.16.840.1.113883.5.25", "normal"),),
        "creation_time": "20260314092653",
        "language_code": "fi-FI",
        "source_patient_id": str(PATIENT),
        "hash": "e543712c0e10501972de13a5bfcbe826c49feb75",
        "size": 4,
        "repository_unique_id": REPOSITORY,
    }
    values.update(overrides)
    return NewDocumentEntry(**values).build()  # type: ignore[arg-type]


def new_folder(patient: PatientId = PATIENT) -> Folder:
    me = new_uuid()
    return Folder(
        id=me,
        object_type=REGISTRY_PACKAGE_TYPE,
        name="Imaging",
        classifications=(
            Classification(
                id=new_uuid(), classified_object=me, classification_node=FolderScheme.NODE
            ),
            code_classification(
                FolderScheme.CODE_LIST,
                Code("CT", "1.2.840.10008.2.16.4", "CT"),
                classified_object=me,
            ),
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


def submission(
    *entries: DocumentEntry,
    patient: PatientId = PATIENT,
    folders: tuple[Folder, ...] = (),
    associations: tuple[object, ...] = (),
    members: bool = True,
) -> Submission:
    """A submission of ``entries`` (and folders), all members of a new SubmissionSet."""
    subset = NewSubmissionSet(
        patient=patient,
        unique_id=new_oid(),
        source_id="1.2.246.10.1234567",
        submission_time="20260314092700",
        content_type_code=REPORT,
    ).build()
    links = []
    if members:
        links += [
            new_association(
                AssociationType.HAS_MEMBER, subset.id, e.id, submission_set_status=ORIGINAL
            )
            for e in entries
        ]
        links += [new_association(AssociationType.HAS_MEMBER, subset.id, f.id) for f in folders]
    return Submission(
        submission_sets=(subset,),
        document_entries=entries,
        folders=folders,
        associations=(*links, *associations),  # type: ignore[arg-type]
    )


# --- the samples ---


def test_register_request_sample(engine: Engine, registry: RegistryService) -> None:
    """The ITI-42 sample is registered: objects Approved, query columns filled, UTC."""
    given = sample("iti42-RegisterDocumentSet-b-request.xml")
    outcome = register(registry, given)
    assert outcome.status is ResponseStatus.SUCCESS, outcome.errors
    entry = given.document_entries[0]
    subset = given.submission_sets[0]
    member = given.associations[0]
    assert set(outcome.registered) == {entry.id, subset.id, member.id}
    with UnitOfWork(engine, write=False) as uow:
        found = uow.registry.find(outcome.registered)
        stored = uow.registry.stored([entry.id])
    assert {o.status for o in found.values()} == {AvailabilityStatus.APPROVED}
    assert found[entry.id].patient == PATIENT
    assert found[entry.id].unique_id == entry.unique_id
    assert stored[0].ebxml == entry.ebxml
    with engine.connect() as conn:
        obj = conn.execute(
            select(schema.xds_object).where(schema.xds_object.c.entry_uuid == entry.id)
        ).one()
        row = conn.execute(
            select(schema.xds_document_entry).where(schema.xds_document_entry.c.pk == obj.pk)
        ).one()
        event = conn.execute(
            select(schema.xds_code.c.kind, schema.xds_code.c.code)
            .where(schema.xds_code.c.object_pk == obj.pk)
            .order_by(schema.xds_code.c.pk)
        ).all()
        authors = (
            conn.execute(
                select(schema.xds_author.c.person).where(schema.xds_author.c.object_pk == obj.pk)
            )
            .scalars()
            .all()
        )
        subset_row = conn.execute(select(schema.xds_submission_set)).one()
        link = conn.execute(select(schema.xds_association)).one()
    assert (obj.kind, obj.logical_id, obj.version) == ("DocumentEntry", entry.id, 1)
    assert obj.organization_oid == ORG
    assert obj.created_at == NOW
    assert (row.patient_id, row.patient_authority) == ("010181-900C", "1.2.246.21")
    assert (row.class_code, row.class_code_scheme) == ("REPORTS", "1.3.6.1.4.1.19376.1.2.6.1")
    assert row.creation_time == "20051224000000"
    assert row.service_start_time == "20041223080000"
    assert (row.hash, row.size) == ("e543712c0e10501972de13a5bfcbe826c49feb75", 4)
    assert row.document_availability == "urn:ihe:iti:2010:DocumentAvailability:Online"
    assert event == [
        ("eventCodeList", "urn:connectathon:policy:deny-access"),
        ("eventCodeList", "MPQ-eventcode-1"),
        ("confidentialityCode", "V"),
    ]
    assert sorted(authors) == ["^Dopplemeyer^Sherry^^^", "^Smitty^Gerald^^^"]
    assert subset_row.submission_time == "20041225235050"
    assert subset_row.content_type_code == "225728007"
    assert (link.source_object, link.target_object) == (subset.id, entry.id)
    assert link.submission_set_status == ORIGINAL


@pytest.mark.parametrize(
    "name",
    [
        "iti41-ProvideAndRegister-soap12-request.xml",
        "iti41-ProvideAndRegister-mtom-xop-http-body.txt",
        "rad68-iti41-PnR-KOS-captured-mime-body.txt",
        # Its SOAP fault (no wsa:Action) is the transport's; its metadata is valid.
        "invalid-iti41-soap12-missing-wsa-action.xml",
    ],
)
def test_provide_and_register_samples(registry: RegistryService, name: str) -> None:
    outcome = register(registry, sample(name))
    assert outcome.status is ResponseStatus.SUCCESS, outcome.errors


def test_bad_classification_uplink_sample(engine: Engine, registry: RegistryService) -> None:
    """classifiedObject names 'Document011', no object: XDSRegistryMetadataError."""
    outcome = register(registry, sample("invalid-iti41-pnr-bad-classification-uplink.xml"))
    assert_refused(outcome, ErrorCode.REGISTRY_METADATA_ERROR, "id_2", "Document011")
    assert len(outcome.errors) == 1
    assert count(engine, schema.xds_object) == 0


def test_association_to_self_sample(engine: Engine, registry: RegistryService) -> None:
    outcome = register(registry, sample("invalid-iti41-pnr-association-to-self.xml"))
    assert_refused(outcome, ErrorCode.REGISTRY_METADATA_ERROR, "ID_6144893_1", "itself")
    # Its DocumentEntry lost its HasMember with the change.
    assert_refused(outcome, ErrorCode.REGISTRY_METADATA_ERROR, "Document01", "not a member")
    assert count(engine, schema.xds_object) == 0


def test_kos_reference_metadata(engine: Engine, registry: RegistryService) -> None:
    """The toolkit's KOS reference metadata classifies its two event codes as
    'Document01', which it does not contain - the defect of the bad-uplink sample -
    and is refused for it; with the uplinks right it registers, referenceIdList too."""
    outcome = register(registry, sample("iti41-PnR-KOS-manifest-request.xml"))
    assert codes(outcome) == {
        (ErrorCode.REGISTRY_METADATA_ERROR, "id_101"),
        (ErrorCode.REGISTRY_METADATA_ERROR, "id_102"),
    }
    payload = sample_payload("iti41-PnR-KOS-manifest-request.xml")
    for element in payload.iter(q("rim", "Classification")):
        if element.get("classifiedObject") == "Document01":
            element.set("classifiedObject", "urn:uuid:94f30df9-d945-485e-9dbe-e61a63270c30")
    fixed = with_repository_slots(ebrim.parse_submission(fill(payload)))
    outcome = register(registry, fixed)
    assert outcome.status is ResponseStatus.SUCCESS, outcome.errors
    with engine.connect() as conn:
        assert conn.execute(select(schema.xds_reference_id.c.value)).scalars().all() == [
            "5347639127757044^^^&1.3.6.1.4.1.21367.13.202.2000&ISO^urn:ihe:iti:xds:2013:accession"
        ]
        entry = conn.execute(select(schema.xds_document_entry)).one()
    assert entry.format_code == "1.2.840.10008.5.1.4.1.1.88.59"
    assert entry.mime_type == "application/dicom"


def test_replace_round_trip(engine: Engine, registry: RegistryService) -> None:
    """Register, then replace with the RPLC sample: the original becomes Deprecated,
    and can be replaced no more."""
    first = sample("iti42-RegisterDocumentSet-b-request.xml")
    assert register(registry, first).status is ResponseStatus.SUCCESS
    original = first.document_entries[0].id
    replacement = sample("iti41-PnR-replace-RPLC-request.xml", original=original)
    outcome = register(registry, replacement)
    assert outcome.status is ResponseStatus.SUCCESS, outcome.errors
    assert outcome.deprecated == (original,)
    assert status_of(engine, original) is AvailabilityStatus.DEPRECATED
    new = replacement.document_entries[0].id
    assert status_of(engine, new) is AvailabilityStatus.APPROVED
    with UnitOfWork(engine, write=False) as uow:
        (answer,) = ebrim.leaf_class(uow.registry.stored([original]))
    assert answer.get("status") == AvailabilityStatus.DEPRECATED.value
    again = sample("iti41-PnR-replace-RPLC-request.xml", original=original)
    assert_refused(
        register(registry, again), ErrorCode.DEPRECATED_DOCUMENT, "myRplcAssocId", original
    )


def test_replace_unknown_or_symbolic_target(registry: RegistryService) -> None:
    unknown = sample("iti41-PnR-replace-RPLC-request.xml", original=new_uuid())
    assert_refused(register(registry, unknown), ErrorCode.UNRESOLVED_REFERENCE, "myRplcAssocId")
    symbolic = sample("iti41-PnR-replace-RPLC-request.xml", original="Document99")
    assert_refused(
        register(registry, symbolic),
        ErrorCode.REGISTRY_METADATA_ERROR,
        "myRplcAssocId",
        "Document99",
    )


# --- relationships and folders ---


def test_replacement_deprecates_transformations_and_addenda(
    engine: Engine, registry: RegistryService
) -> None:
    original = new_entry()
    assert register(registry, submission(original)).status is ResponseStatus.SUCCESS
    addendum, transform, unrelated = new_entry(), new_entry(), new_entry()
    linked = submission(
        addendum,
        transform,
        unrelated,
        associations=(
            new_association(AssociationType.APND, addendum.id, original.id),
            new_association(AssociationType.XFRM, transform.id, original.id),
        ),
    )
    assert register(registry, linked).status is ResponseStatus.SUCCESS
    # An addendum of the transformation goes too (recursively).
    nested = new_entry()
    outcome = register(
        registry,
        submission(
            nested, associations=(new_association(AssociationType.APND, nested.id, transform.id),)
        ),
    )
    assert outcome.status is ResponseStatus.SUCCESS
    replacement = new_entry()
    outcome = register(
        registry,
        submission(
            replacement,
            associations=(new_association(AssociationType.RPLC, replacement.id, original.id),),
        ),
    )
    assert outcome.status is ResponseStatus.SUCCESS, outcome.errors
    assert set(outcome.deprecated) == {original.id, addendum.id, transform.id, nested.id}
    assert status_of(engine, unrelated.id) is AvailabilityStatus.APPROVED
    assert status_of(engine, replacement.id) is AvailabilityStatus.APPROVED


def test_replacement_joins_the_folders_of_its_original(
    engine: Engine, registry: RegistryService, clock: Clock
) -> None:
    folder = new_folder()
    original = new_entry()
    filed = submission(
        original,
        folders=(folder,),
        associations=(new_association(AssociationType.HAS_MEMBER, folder.id, original.id),),
    )
    assert register(registry, filed).status is ResponseStatus.SUCCESS
    clock.now = NOW.replace(hour=12)
    replacement = new_entry()
    outcome = register(
        registry,
        submission(
            replacement,
            associations=(new_association(AssociationType.XFRM_RPLC, replacement.id, original.id),),
        ),
    )
    assert outcome.status is ResponseStatus.SUCCESS, outcome.errors
    with engine.connect() as conn:
        links = conn.execute(
            select(schema.xds_association.c.source_object, schema.xds_association.c.target_object)
            .where(schema.xds_association.c.target_object == replacement.id)
            .where(schema.xds_association.c.association_type == AssociationType.HAS_MEMBER.value)
            .where(schema.xds_association.c.source_object == folder.id)
        ).all()
    assert len(links) == 1
    with UnitOfWork(engine, write=False) as uow:
        (stored,) = uow.registry.stored([folder.id])
    assert stored.last_update_time == "20260314122653"
    (element,) = ebrim.leaf_class([stored])
    value = element.find("rim:Slot[@name='lastUpdateTime']/rim:ValueList/rim:Value", NSMAP)
    assert value is not None and value.text == "20260314122653"


def test_document_added_to_a_registered_folder(
    engine: Engine, registry: RegistryService, clock: Clock
) -> None:
    folder = new_folder()
    assert register(registry, submission(folders=(folder,))).status is ResponseStatus.SUCCESS
    clock.now = NOW.replace(hour=13)
    entry = new_entry()
    membership = new_association(AssociationType.HAS_MEMBER, folder.id, entry.id)
    outcome = register(registry, submission(entry, associations=(membership,)))
    assert outcome.status is ResponseStatus.SUCCESS, outcome.errors
    with UnitOfWork(engine, write=False) as uow:
        (stored,) = uow.registry.stored([folder.id])
    assert stored.last_update_time == "20260314132653"
    # A Folder of another patient may not hold it.
    other = new_folder(OTHER_PATIENT)
    registry_other = RegistryService(
        engine, trusted_assigning_authorities=["1.2.246.21"], render=ebrim.render
    )
    assert (
        register(registry_other, submission(folders=(other,), patient=OTHER_PATIENT)).status
        is ResponseStatus.SUCCESS
    )
    entry = new_entry()
    bad = new_association(AssociationType.HAS_MEMBER, other.id, entry.id)
    assert_refused(
        register(registry, submission(entry, associations=(bad,))),
        ErrorCode.PATIENT_ID_DOES_NOT_MATCH,
        bad.id,
    )


def test_reference_to_a_registered_document(engine: Engine, registry: RegistryService) -> None:
    first = new_entry()
    assert register(registry, submission(first)).status is ResponseStatus.SUCCESS
    reference = new_association(
        AssociationType.HAS_MEMBER, "", first.id, submission_set_status=REFERENCE
    )
    later = submission(new_entry())
    subset = later.submission_sets[0]
    reference = dataclasses.replace(reference, source_object=subset.id)
    outcome = register(
        registry, dataclasses.replace(later, associations=(*later.associations, reference))
    )
    assert outcome.status is ResponseStatus.SUCCESS, outcome.errors


def test_relationship_rules(registry: RegistryService) -> None:
    original = new_entry()
    assert register(registry, submission(original)).status is ResponseStatus.SUCCESS
    a, b = new_entry(), new_entry()
    # Two replacements of one original; a replacement whose target is in the submission.
    twice = new_association(AssociationType.RPLC, b.id, original.id)
    inside = new_association(AssociationType.APND, a.id, b.id)
    outcome = register(
        registry,
        submission(
            a,
            b,
            associations=(new_association(AssociationType.RPLC, a.id, original.id), twice, inside),
        ),
    )
    assert_refused(outcome, ErrorCode.REGISTRY_METADATA_ERROR, twice.id, "already replaced")
    assert_refused(outcome, ErrorCode.REGISTRY_METADATA_ERROR, inside.id, "already registered")
    # signs may name a document of the submission; an unknown type is refused.
    c, d = new_entry(), new_entry()
    strange = dataclasses.replace(
        new_association(AssociationType.SIGNS, c.id, d.id),
        association_type="urn:ihe:iti:2007:AssociationType:Likes",
    )
    outcome = register(
        registry,
        submission(
            c, d, associations=(new_association(AssociationType.SIGNS, c.id, d.id), strange)
        ),
    )
    assert codes(outcome) == {(ErrorCode.REGISTRY_METADATA_ERROR, strange.id)}
    # Across patients.
    e = new_entry(patient=OTHER_PATIENT, source_patient_id=str(OTHER_PATIENT))
    link = new_association(AssociationType.APND, e.id, original.id)
    assert_refused(
        register(registry, submission(e, patient=OTHER_PATIENT, associations=(link,))),
        ErrorCode.PATIENT_ID_DOES_NOT_MATCH,
        link.id,
    )


# --- patient ---


def test_patient_rules(engine: Engine, clock: Clock) -> None:
    """Unknown unless in the patient table or of a trusted assigning authority;
    every object the SubmissionSet's patient; CX with an OID authority."""
    strict = RegistryService(engine, trusted_assigning_authorities=[], render=ebrim.render)
    given = submission(new_entry())
    assert_refused(
        register(strict, given),
        ErrorCode.UNKNOWN_PATIENT_ID,
        given.submission_sets[0].id,
        "010181-900C",
    )
    with engine.begin() as conn:
        conn.execute(
            insert(schema.patient).values(
                patient_id=PATIENT.id, issuer=PATIENT.authority, created_at=NOW
            )
        )
    assert register(strict, given).status is ResponseStatus.SUCCESS

    wrong = new_entry(patient=OTHER_PATIENT)
    assert_refused(
        register(strict, submission(wrong)), ErrorCode.PATIENT_ID_DOES_NOT_MATCH, wrong.id
    )
    local = PatientId("12345", "1.2.246.10.1234567.22.2026")
    refused = submission(new_entry(patient=local), patient=local)
    assert ErrorCode.UNKNOWN_PATIENT_ID in {e.code for e in register(strict, refused).errors}
    malformed = new_entry()
    identifiers = tuple(
        dataclasses.replace(e, value="010181-900C^^^HETU")
        if e.identification_scheme == DocumentEntryScheme.PATIENT_ID
        else e
        for e in malformed.external_identifiers
    )
    malformed = dataclasses.replace(malformed, external_identifiers=identifiers)
    assert_refused(
        register(strict, submission(malformed)),
        ErrorCode.REGISTRY_METADATA_ERROR,
        malformed.id,
        "&OID&ISO",
    )


# --- uniqueIds and entryUUIDs ---


def test_unique_id_twice_in_message(registry: RegistryService) -> None:
    first = new_entry()
    second = new_entry(unique_id=first.unique_id)
    assert_refused(
        register(registry, submission(first, second)),
        ErrorCode.DUPLICATE_UNIQUE_ID_IN_MESSAGE,
        second.id,
        first.unique_id,
    )


def test_document_resubmitted(engine: Engine, registry: RegistryService) -> None:
    """Same uniqueId: the same document (hash and size) is registered again as a new
    entry; another hash or size is refused (ITI TF-3 Table 4.2.4.1-2)."""
    first = new_entry()
    assert register(registry, submission(first)).status is ResponseStatus.SUCCESS
    same = new_entry(unique_id=first.unique_id, hash=first.hash.upper())
    assert register(registry, submission(same)).status is ResponseStatus.SUCCESS
    other_hash = new_entry(unique_id=first.unique_id, hash="0" * 40)
    assert_refused(
        register(registry, submission(other_hash)), ErrorCode.NON_IDENTICAL_HASH, other_hash.id
    )
    other_size = new_entry(unique_id=first.unique_id, size=5)
    assert_refused(
        register(registry, submission(other_size)), ErrorCode.NON_IDENTICAL_SIZE, other_size.id
    )
    with engine.connect() as conn:
        rows = conn.execute(
            select(schema.xds_object.c.entry_uuid).where(
                schema.xds_object.c.unique_id == first.unique_id
            )
        ).all()
    assert len(rows) == 2


def test_submission_set_unique_id_reused(registry: RegistryService) -> None:
    first = submission(new_entry())
    assert register(registry, first).status is ResponseStatus.SUCCESS
    second = submission(new_entry())
    subset = second.submission_sets[0]
    identifiers = tuple(
        dataclasses.replace(e, value=first.submission_sets[0].unique_id)
        if e.identification_scheme == SubmissionSetScheme.UNIQUE_ID
        else e
        for e in subset.external_identifiers
    )
    second = dataclasses.replace(
        second, submission_sets=(dataclasses.replace(subset, external_identifiers=identifiers),)
    )
    assert_refused(register(registry, second), ErrorCode.DUPLICATE_UNIQUE_ID_IN_REGISTRY, subset.id)


def test_entry_uuid_already_registered(registry: RegistryService) -> None:
    entry = new_entry()
    assert register(registry, submission(entry)).status is ResponseStatus.SUCCESS
    again = dataclasses.replace(new_entry(), id=entry.id, lid=entry.id)
    again = dataclasses.replace(
        again,
        classifications=tuple(
            dataclasses.replace(c, classified_object=entry.id) for c in again.classifications
        ),
        external_identifiers=tuple(
            dataclasses.replace(e, registry_object=entry.id) for e in again.external_identifiers
        ),
    )
    assert_refused(
        register(registry, submission(again)),
        ErrorCode.REGISTRY_METADATA_ERROR,
        entry.id,
        "already registered",
    )


# --- attributes (ITI TF-3 Table 4.3.1-3) ---


def without_scheme(entry: DocumentEntry, scheme: str) -> DocumentEntry:
    return dataclasses.replace(
        entry,
        classifications=tuple(
            c for c in entry.classifications if c.classification_scheme != scheme
        ),
    )


def without_slot(entry: DocumentEntry, name: str) -> DocumentEntry:
    return dataclasses.replace(entry, slots=tuple(s for s in entry.slots if s.name != name))


def with_slot(entry: DocumentEntry, name: str, *values: str) -> DocumentEntry:
    return dataclasses.replace(
        entry, slots=(*(s for s in entry.slots if s.name != name), Slot(name, values))
    )


@pytest.mark.parametrize(
    ("change", "text"),
    [
        (lambda e: without_scheme(e, DocumentEntryScheme.CLASS_CODE), "classCode is required"),
        (
            lambda e: without_scheme(e, DocumentEntryScheme.CONFIDENTIALITY_CODE),
            "confidentialityCode",
        ),
        (lambda e: without_slot(e, "hash"), "hash is required"),
        (lambda e: without_slot(e, "size"), "size is required"),
        (lambda e: without_slot(e, "repositoryUniqueId"), "repositoryUniqueId is required"),
        (lambda e: without_slot(e, "creationTime"), "creationTime is required"),
        (lambda e: without_slot(e, "languageCode"), "languageCode is required"),
        (lambda e: without_slot(e, "sourcePatientId"), "sourcePatientId is required"),
        (lambda e: dataclasses.replace(e, mime_type=""), "mimeType is required"),
        (lambda e: with_slot(e, "creationTime", "2026-03-14"), "creationTime"),
        (lambda e: with_slot(e, "creationTime", "20260314", "20260315"), "one value"),
        (lambda e: with_slot(e, "hash", "abc"), "SHA-1"),
        (lambda e: with_slot(e, "size", "-1"), "not a number"),
        (lambda e: with_slot(e, "repositoryUniqueId", "repo"), "repositoryUniqueId"),
        (lambda e: with_slot(e, "documentAvailability", "Online"), "documentAvailability"),
        (lambda e: with_slot(e, "urn:ihe:iti:xds:2013:referenceIdList", "A1"), "CXi"),
        (lambda e: with_slot(e, "URI", "x" * 257), "256"),
        (
            lambda e: dataclasses.replace(
                e,
                classifications=(
                    *e.classifications,
                    code_classification(
                        DocumentEntryScheme.TYPE_CODE, REPORT, classified_object=e.id
                    ),
                ),
            ),
            "typeCode has one value",
        ),
        (
            lambda e: dataclasses.replace(
                e,
                classifications=(
                    *e.classifications,
                    code_classification(
                        DocumentEntryScheme.EVENT_CODE, Code("CT", ""), classified_object=e.id
                    ),
                ),
            ),
            "codingScheme",
        ),
        (
            lambda e: dataclasses.replace(
                e,
                classifications=(
                    *e.classifications,
                    Classification(
                        id=new_uuid(),
                        classified_object=e.id,
                        classification_scheme=DocumentEntryScheme.AUTHOR,
                    ),
                ),
            ),
            "authorPerson, authorInstitution",
        ),
        (
            lambda e: dataclasses.replace(
                e,
                classifications=(
                    *e.classifications,
                    code_classification(
                        DocumentEntryScheme.LIMITED_METADATA, Code("x", "y"), classified_object=e.id
                    ),
                ),
            ),
            "limitedMetadata",
        ),
        (
            lambda e: dataclasses.replace(
                e, object_type="urn:uuid:34268e47-fdf5-41a6-ba33-82133c465248"
            ),
            "Stable",
        ),
        (lambda e: dataclasses.replace(e, lid=new_uuid()), "ITI-57"),
        (
            lambda e: dataclasses.replace(
                e,
                external_identifiers=tuple(
                    dataclasses.replace(x, value="1.2.3^" + "x" * 130)
                    if x.identification_scheme == DocumentEntryScheme.UNIQUE_ID
                    else x
                    for x in e.external_identifiers
                ),
            ),
            "longer than 128",
        ),
    ],
)
def test_document_entry_attributes(
    engine: Engine, registry: RegistryService, change: object, text: str
) -> None:
    entry = change(new_entry())  # type: ignore[operator]
    assert_refused(
        register(registry, submission(entry)), ErrorCode.REGISTRY_METADATA_ERROR, entry.id, text
    )
    assert count(engine, schema.xds_object) == 0


def test_submission_structure(registry: RegistryService) -> None:
    entry = new_entry()
    lonely = submission(entry, members=False)
    assert_refused(
        register(registry, lonely), ErrorCode.REGISTRY_METADATA_ERROR, entry.id, "member"
    )
    none = dataclasses.replace(submission(entry), submission_sets=())
    assert_refused(
        register(registry, none), ErrorCode.REGISTRY_METADATA_ERROR, "", "no SubmissionSet"
    )
    given = submission(new_entry())
    subset = given.submission_sets[0]
    unmarked = dataclasses.replace(given.associations[0], slots=())  # SubmissionSetStatus missing
    outcome = register(registry, dataclasses.replace(given, associations=(unmarked,)))
    assert_refused(outcome, ErrorCode.REGISTRY_METADATA_ERROR, unmarked.id, "SubmissionSetStatus")
    without_content_type = dataclasses.replace(
        subset,
        classifications=tuple(
            c
            for c in subset.classifications
            if c.classification_scheme != SubmissionSetScheme.CONTENT_TYPE_CODE
        ),
        slots=(Slot("submissionTime", ("2026",)),),
    )
    outcome = register(
        registry, dataclasses.replace(given, submission_sets=(without_content_type,))
    )
    assert_refused(outcome, ErrorCode.REGISTRY_METADATA_ERROR, subset.id, "contentTypeCode")


def test_folder_needs_code_list(registry: RegistryService) -> None:
    folder = new_folder()
    bare = dataclasses.replace(
        folder,
        classifications=tuple(c for c in folder.classifications if c.classification_node),
    )
    assert_refused(
        register(registry, submission(folders=(bare,))),
        ErrorCode.REGISTRY_METADATA_ERROR,
        bare.id,
        "codeList",
    )


def test_nothing_written_on_failure(engine: Engine, registry: RegistryService) -> None:
    """All or nothing: one bad entry among good ones stores none of them."""
    good, bad = new_entry(), without_slot(new_entry(), "hash")
    assert register(registry, submission(good, bad)).status is ResponseStatus.FAILURE
    for table in (
        schema.xds_object,
        schema.xds_document_entry,
        schema.xds_code,
        schema.xds_association,
    ):
        assert count(engine, table) == 0


def test_register_within_a_callers_unit_of_work(engine: Engine, registry: RegistryService) -> None:
    """ITI-41: the repository registers inside its own transaction, and commits."""
    given = submission(new_entry())
    with UnitOfWork(engine) as uow:
        outcome = registry.register_within(uow, given, organization_oid=ORG)
        assert outcome.status is ResponseStatus.SUCCESS
    assert count(engine, schema.xds_object) == 0  # not committed: rolled back
    with UnitOfWork(engine) as uow:
        registry.register_within(uow, given, organization_oid=ORG)
        uow.commit()
    assert count(engine, schema.xds_object) == len(given.objects)


def test_entry_uuid_stored_meanwhile(engine: Engine) -> None:
    """The database refuses an entryUUID twice even when validation raced."""
    entry = dataclasses.replace(new_entry(), ebxml=ebrim.render(new_entry()))
    with UnitOfWork(engine) as uow:
        uow.registry.add([entry], organization_oid=ORG, created_at=NOW, last_update_time="2026")
        uow.commit()
    with UnitOfWork(engine) as uow, pytest.raises(RegistryConflict):
        uow.registry.add([entry], organization_oid=ORG, created_at=NOW, last_update_time="2026")


@pytest.mark.parametrize(
    ("state", "refusal"),
    [
        (OrganizationState.TESTING, TESTING_RULE),
        (OrganizationState.SUSPENDED, f"organisation {ORG} suspended"),
        (OrganizationState.TERMINATED, f"organisation {ORG} terminated"),
    ],
)
def test_the_submitting_organisations_state_is_enforced(
    engine: Engine, state: OrganizationState, refusal: str
) -> None:
    """services.directory: testing submits test identity codes only; suspended and
    terminated nothing."""
    registry = RegistryService(
        engine,
        trusted_assigning_authorities=["1.2.246.21", "1.2.246.10.1234567.22.2026"],
        render=ebrim.render,
        organization_state=lambda oid: state if oid == ORG else OrganizationState.ACTIVE,
    )
    local = PatientId("POTILAS123", "1.2.246.10.1234567.22.2026")
    refused = register(registry, submission(new_entry(patient=local), patient=local))
    assert refused.status is ResponseStatus.FAILURE
    assert [e.context for e in refused.errors] == [refusal]
    accepted = register(registry, submission(new_entry()))  # 010181-900C: a test code
    assert (accepted.status is ResponseStatus.SUCCESS) is (state is OrganizationState.TESTING)
