"""xds.ebrim: ebRIM 3.0 XML to the registry's model and back."""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from lxml import etree
from lxml.etree import _Element as Element

from kuva.model.xds import (
    ASSOCIATION_TYPE,
    REGISTRY_PACKAGE_TYPE,
    STABLE_DOCUMENT_ENTRY,
    AssociationType,
    AvailabilityStatus,
    Code,
    Folder,
    FolderScheme,
    NewDocumentEntry,
    NewSubmissionSet,
    ObjectKind,
    PatientId,
    StoredObject,
    new_association,
)
from kuva.xds import ebrim
from kuva.xds.namespaces import NSMAP, RIM

SAMPLES = Path(__file__).parents[1] / "data" / "xds" / "samples"
SCHEMAS = Path(ebrim.__file__).parent / "schemas"
PATIENT = PatientId("010181-900C", "1.2.246.21")


def sample_payload(name: str) -> Element:
    """The payload of a sample: the SOAP Body's child, or the file's root element."""
    data = (SAMPLES / name).read_bytes()
    if name.endswith(".txt"):  # a raw MIME body: its first part is the envelope
        start = re.search(rb"<(\w+:)?Envelope", data)
        end = re.search(rb"</(\w+:)?Envelope>", data)
        assert start and end
        data = data[start.start() : end.end()]
    root = etree.fromstring(data)
    if etree.QName(root).localname == "Envelope":
        body = root.find(f"{{{etree.QName(root).namespace}}}Body")
        assert body is not None
        root = body[0]
    return root


def counter() -> Callable[[], str]:
    numbers = itertools.count(1)
    return lambda: f"urn:uuid:00000000-0000-4000-8000-{next(numbers):012d}"


@pytest.fixture(scope="module")
def rim_schema() -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(SCHEMAS / "rim.xsd")))


def stored(ebxml: str) -> Element:
    return etree.fromstring(ebxml.encode())


def test_register_request_read() -> None:
    """The ITI-42 sample: one DocumentEntry, its SubmissionSet and their HasMember."""
    submission = ebrim.parse_submission(
        sample_payload("iti42-RegisterDocumentSet-b-request.xml"), new_id=counter()
    )
    assert len(submission.document_entries) == 1
    assert len(submission.submission_sets) == 1
    assert len(submission.associations) == 1
    assert not submission.folders and not submission.others and not submission.unattached
    entry = submission.document_entries[0]
    subset = submission.submission_set
    assert subset is not None
    # Symbolic ids are replaced, references follow them.
    assert entry.symbolic_id == "Document01"
    assert entry.id.startswith("urn:uuid:00000000-")
    assert subset.symbolic_id == "SubmissionSet01"
    member = submission.associations[0]
    assert member.type is AssociationType.HAS_MEMBER
    assert (member.source_object, member.target_object) == (subset.id, entry.id)
    assert (member.symbolic_source, member.symbolic_target) == ("SubmissionSet01", "Document01")
    assert member.submission_set_status == "Original"
    assert all(c.classified_object == entry.id for c in entry.classifications)
    assert all(e.registry_object == entry.id for e in entry.external_identifiers)
    # Metadata attributes.
    assert entry.object_type == STABLE_DOCUMENT_ENTRY
    assert entry.mime_type == "text/plain"
    assert entry.class_code == Code("REPORTS", "1.3.6.1.4.1.19376.1.2.6.1", "Reports")
    assert entry.type_code == Code("11369-6", "2.16.840.1.113883.6.1", "Immunization")
    assert entry.format_code == Code(
        "urn:ihe:rad:TEXT", "1.3.6.1.4.1.19376.1.2.3", "urn:ihe:rad:TEXT"
    )
    assert entry.confidentiality_codes == [Code("V", "2.16.840.1.113883.5.25", "very restricted")]
    assert [c.code for c in entry.event_codes] == [
        "urn:connectathon:policy:deny-access",
        "MPQ-eventcode-1",
    ]
    assert [a.person for a in entry.authors] == ["^Smitty^Gerald^^^", "^Dopplemeyer^Sherry^^^"]
    assert entry.authors[0].institutions == (
        "Cleveland Clinic^^^^^&1.2.3&ISO^^^^CleveClin",
        "Parma Community^^^^^^^^^1.2.3",
    )
    assert entry.creation_time == "20051224"
    assert entry.service_start_time == "200412230800"
    assert entry.hash == "e543712c0e10501972de13a5bfcbe826c49feb75"
    assert entry.size == 4
    assert entry.repository_unique_id == "1.19.6.24.109.42.1"
    assert entry.patient_id == "SELF-5^^^&1.3.6.1.4.1.21367.2005.3.7&ISO"
    assert entry.unique_id == "Document01"
    assert entry.title == "Physical"
    assert subset.submission_time == "20041225235050"
    assert subset.source_id == "1.3.6.1.4.1.21367.2008.1.2.178"
    assert subset.content_type_code == Code(
        "225728007", "2.16.840.1.113883.6.96", "Accident and Emergency department"
    )
    assert subset.description == "Annual physical"


def test_stored_form(rim_schema: etree.XMLSchema) -> None:
    """What the registry keeps: ids replaced, lid = id, version 1, no status, top-level
    classifications nested, valid per rim.xsd, canonical."""
    submission = ebrim.parse_submission(
        sample_payload("iti42-RegisterDocumentSet-b-request.xml"), new_id=counter()
    )
    for obj in submission.objects:
        element = stored(obj.ebxml)
        rim_schema.assertValid(element)
        assert element.get("id") == obj.id
        assert element.get("lid") == obj.id
        assert element.get("status") is None
        version = element.find("rim:VersionInfo", NSMAP)
        assert version is not None and version.get("versionName") == "1"
        assert element.prefix == "rim"
        assert "Document01" not in obj.ebxml.replace('value="Document01"', "")
        assert "\n" not in obj.ebxml  # ignorable whitespace dropped
        assert etree.tostring(element, method="c14n", exclusive=True).decode() == obj.ebxml
    subset = submission.submission_sets[0]
    node = stored(subset.ebxml).find(
        "rim:Classification[@classificationNode='urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd']",
        NSMAP,
    )
    assert node is not None and node.get("classifiedObject") == subset.id
    assert node.get("id", "").startswith("urn:uuid:")
    entry = submission.document_entries[0]
    for child in stored(entry.ebxml).iter(f"{{{RIM}}}Classification"):
        assert child.get("classifiedObject") == entry.id
        assert child.get("id", "").startswith("urn:uuid:")


def test_request_is_not_changed() -> None:
    payload = sample_payload("iti42-RegisterDocumentSet-b-request.xml")
    before = etree.tostring(payload)
    ebrim.parse_submission(payload)
    assert etree.tostring(payload) == before


@pytest.mark.parametrize(
    "name",
    [
        "iti41-ProvideAndRegister-soap12-request.xml",
        "iti41-ProvideAndRegister-mtom-xop-http-body.txt",
        "rad68-iti41-PnR-KOS-captured-mime-body.txt",
        "iti41-PnR-KOS-manifest-request.xml",
        "iti41-PnR-replace-RPLC-request.xml",
        "invalid-iti41-pnr-bad-classification-uplink.xml",
        "invalid-iti41-pnr-association-to-self.xml",
    ],
)
def test_provide_and_register_metadata_read(name: str, rim_schema: etree.XMLSchema) -> None:
    """The RegistryObjectList inside an ITI-41 request reads the same way."""
    submission = ebrim.parse_submission(sample_payload(name))
    assert len(submission.submission_sets) == 1
    assert submission.document_entries
    for obj in submission.objects:
        rim_schema.assertValid(stored(obj.ebxml))


def test_default_namespaces_and_object_refs() -> None:
    """The vendor capture: default namespaces, no objectType attributes, ObjectRefs."""
    submission = ebrim.parse_submission(
        sample_payload("rad68-iti41-PnR-KOS-captured-mime-body.txt")
    )
    subset = submission.submission_sets[0]
    assert subset.object_type == REGISTRY_PACKAGE_TYPE
    assert submission.associations[0].object_type == ASSOCIATION_TYPE
    assert not submission.others
    entry = submission.document_entries[0]
    assert entry.mime_type == "application/dicom"
    assert entry.slot("urn:acuo:accessionNumber") == ("IDC027-a",)  # extra metadata kept
    assert 'name="urn:acuo:accessionNumber"' in entry.ebxml
    element = stored(subset.ebxml)
    assert element.get("objectType") == REGISTRY_PACKAGE_TYPE
    for child in element.iter(f"{{{RIM}}}Classification"):
        assert child.get("objectType") is not None


def test_kos_reference_metadata_keeps_wrong_uplinks() -> None:
    """The toolkit's KOS reference metadata classifies event codes as 'Document01', an
    id it does not have: reading keeps that for the registry to judge."""
    submission = ebrim.parse_submission(sample_payload("iti41-PnR-KOS-manifest-request.xml"))
    entry = submission.document_entries[0]
    assert entry.reference_ids == (
        "5347639127757044^^^&1.3.6.1.4.1.21367.13.202.2000&ISO^urn:ihe:iti:xds:2013:accession",
    )
    wrong = [c for c in entry.classifications if c.classified_object != entry.id]
    assert [(c.symbolic_id, c.classified_object) for c in wrong] == [
        ("id_101", "Document01"),
        ("id_102", "Document01"),
    ]


def test_unattached_and_duplicate_ids() -> None:
    payload = etree.fromstring(
        f"""<rim:RegistryObjectList xmlns:rim="{RIM}">
          <rim:ExtrinsicObject id="Doc" objectType="{STABLE_DOCUMENT_ENTRY}" mimeType="text/plain"/>
          <rim:ExtrinsicObject id="Doc" objectType="{STABLE_DOCUMENT_ENTRY}" mimeType="text/plain"/>
          <rim:Classification id="c1" classifiedObject="Nothing" classificationScheme="urn:uuid:x"
              nodeRepresentation="a"/>
          <rim:ExternalIdentifier id="e1"
              registryObject="urn:uuid:00000000-0000-4000-8000-0000000000ff"
              identificationScheme="urn:uuid:y" value="v"/>
          <rim:RegistryPackage id="Pkg"/>
          <rim:ExternalLink id="link" externalURI="http://example.org"/>
        </rim:RegistryObjectList>""".encode()
    )
    submission = ebrim.parse_submission(payload)
    assert submission.duplicate_ids == ("Doc",)
    assert {u.location for u in submission.unattached} == {"c1", "e1"}
    assert {(o.element, o.symbolic_id) for o in submission.others} == {
        ("RegistryPackage", "Pkg"),
        ("ExternalLink", "link"),
    }


def test_folder_read() -> None:
    payload = etree.fromstring(
        f"""<rim:RegistryObjectList xmlns:rim="{RIM}">
          <rim:RegistryPackage id="F">
            <rim:Classification id="f1" classifiedObject="F"
                classificationScheme="{FolderScheme.CODE_LIST}" nodeRepresentation="CT">
              <rim:Slot name="codingScheme">
                <rim:ValueList><rim:Value>DCM</rim:Value></rim:ValueList>
              </rim:Slot>
            </rim:Classification>
          </rim:RegistryPackage>
          <rim:Classification id="f0" classifiedObject="F"
              classificationNode="{FolderScheme.NODE}"/>
        </rim:RegistryObjectList>""".encode()
    )
    submission = ebrim.parse_submission(payload)
    (folder,) = submission.folders
    assert isinstance(folder, Folder)
    assert folder.code_list == [Code("CT", "DCM")]


@pytest.mark.parametrize(
    "xml",
    [
        f'<rim:ObjectRef xmlns:rim="{RIM}" id="x"/>',
        '<lcm:SubmitObjectsRequest xmlns:lcm="urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0"/>',
        '<xdsb:ProvideAndRegisterDocumentSetRequest xmlns:xdsb="urn:ihe:iti:xds-b:2007"/>',
    ],
)
def test_not_metadata(xml: str) -> None:
    with pytest.raises(ebrim.EbrimError, match="RegistryObjectList"):
        ebrim.parse_submission(etree.fromstring(xml))


def test_with_slots_adds_and_replaces() -> None:
    """The repository's hash, size and repositoryUniqueId, in the model and the XML."""
    submission = ebrim.parse_submission(sample_payload("iti41-PnR-replace-RPLC-request.xml"))
    entry = submission.document_entries[0]
    assert entry.slot("hash") is None
    updated = ebrim.with_slots(
        entry,
        {"hash": ["0" * 40], "size": ["12"], "repositoryUniqueId": ["1.2.246.10.0.10.1.1"]},
    )
    again = ebrim.with_slots(updated, {"size": ["13"]})
    assert again.size == 13 and again.hash == "0" * 40
    assert again.repository_unique_id == "1.2.246.10.0.10.1.1"
    element = stored(again.ebxml)
    sizes = element.findall("rim:Slot[@name='size']/rim:ValueList/rim:Value", NSMAP)
    assert [v.text for v in sizes] == ["13"]
    assert element.find("rim:Slot[@name='hash']", NSMAP) is not None
    slots = [child for child in element if etree.QName(child).localname == "Slot"]
    assert element.index(slots[-1]) == len(slots) - 1  # slots stay first


def built_objects() -> tuple[NewDocumentEntry, NewSubmissionSet]:
    report = Code("11528-7", "2.16.840.1.113883.6.1", "Radiology report")
    new_entry = NewDocumentEntry(
        patient=PATIENT,
        unique_id="1.2.246.10.1234567.99.1",
        mime_type="application/dicom",
        class_code=Code("IMAGES", "1.3.6.1.4.1.19376.1.2.6.1", "Images"),
        type_code=report,
        format_code=Code("1.2.840.10008.5.1.4.1.1.88.59", "1.2.840.10008.2.6.1"),
        healthcare_facility_type_code=Code("22232009", "2.16.840.1.113883.6.96", "Hospital"),
        practice_setting_code=Code("394914008", "2.16.840.1.113883.6.96", "Radiology"),
        confidentiality_codes=(Code("N", "2.16.840.1.113883.5.25", "normal"),),
        creation_time="20260314092653",
        language_code="fi-FI",
        source_patient_id=str(PATIENT),
        hash="0" * 40,
        size=1234,
        repository_unique_id="1.2.246.10.0.10.1.2",
        reference_ids=("A1^^^&1.2.246.10.1&ISO^urn:ihe:iti:xds:2013:accession",),
        service_start_time="20260314",
        title="Manifest",
    )
    new_set = NewSubmissionSet(
        patient=PATIENT,
        unique_id="1.2.246.10.1234567.98.1",
        source_id="1.2.246.10.0.10.1.2",
        submission_time="20260314092700",
        content_type_code=report,
    )
    return new_entry, new_set


def test_render_round_trip(rim_schema: etree.XMLSchema) -> None:
    """Objects built in code are written in the stored form and read back the same."""
    new_entry, new_set = built_objects()
    entry, subset = new_entry.build(), new_set.build()
    member = new_association(
        AssociationType.HAS_MEMBER, subset.id, entry.id, submission_set_status="Original"
    )
    listing = ebrim.object_list([stored(ebrim.render(obj)) for obj in (entry, subset, member)])
    for child in listing:
        rim_schema.assertValid(child)
    read = ebrim.parse_submission(listing)
    (again,) = read.document_entries
    assert again.id == entry.id
    assert again.slots == entry.slots

    def plain(items: tuple[Any, ...]) -> list[Any]:
        return [dataclasses.replace(item, symbolic_id="") for item in items]

    assert plain(again.classifications) == plain(entry.classifications)
    assert plain(again.external_identifiers) == plain(entry.external_identifiers)
    assert again.ebxml == ebrim.render(entry)
    assert plain(read.submission_sets[0].classifications) == plain(subset.classifications)
    assert read.associations[0].submission_set_status == "Original"
    filled = ebrim.with_ebxml(read)
    assert filled.document_entries[0].ebxml == again.ebxml


def test_leaf_class_patches_status_home_and_folder_time(rim_schema: etree.XMLSchema) -> None:
    new_entry, _ = built_objects()
    entry = new_entry.build()
    folder_xml = ebrim.render(
        Folder(
            id="urn:uuid:00000000-0000-4000-8000-000000000001", object_type=REGISTRY_PACKAGE_TYPE
        )
    )
    answer = ebrim.leaf_class(
        [
            StoredObject(
                entry.id,
                ObjectKind.DOCUMENT_ENTRY,
                AvailabilityStatus.DEPRECATED,
                ebrim.render(entry),
            ),
            StoredObject(
                "urn:uuid:00000000-0000-4000-8000-000000000001",
                ObjectKind.FOLDER,
                AvailabilityStatus.APPROVED,
                folder_xml,
                last_update_time="20260314100000",
            ),
        ],
        home="urn:oid:1.2.246.10.0.10.1",
    )
    document, folder = answer
    assert document.get("status") == AvailabilityStatus.DEPRECATED.value
    assert document.get("home") == "urn:oid:1.2.246.10.0.10.1"
    times = folder.findall("rim:Slot[@name='lastUpdateTime']/rim:ValueList/rim:Value", NSMAP)
    assert [t.text for t in times] == ["20260314100000"]
    for element in answer:
        rim_schema.assertValid(element)


def test_object_refs() -> None:
    refs = ebrim.object_refs(["urn:uuid:a", "urn:uuid:b"], home="urn:oid:1.2")
    listing = ebrim.object_list(refs)
    assert [(r.get("id"), r.get("home")) for r in listing] == [
        ("urn:uuid:a", "urn:oid:1.2"),
        ("urn:uuid:b", "urn:oid:1.2"),
    ]
    assert ebrim.object_refs(["urn:uuid:a"])[0].get("home") is None
