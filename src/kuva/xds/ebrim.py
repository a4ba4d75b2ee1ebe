"""ebRIM 3.0 XML <-> the registry's model (ITI TF-3 4.2.1, 4.2.3; OASIS ebRIM 3.0).

Reading (``parse_submission``): the ``rim:RegistryObjectList`` of an
``lcm:SubmitObjectsRequest`` (Register Document Set-b, ITI TF-2b 3.42.4.1) or of
the one inside ``xdsb:ProvideAndRegisterDocumentSetRequest`` (ITI-41) becomes a
``Submission``. Every symbolic id (one not of the form ``urn:uuid:``) is replaced
by a new ``urn:uuid:``, and so is every reference to it (classifiedObject,
registryObject, sourceObject, targetObject): "by the time an object is stored in
the registry it has a UUID id" (ebRS 3.0; ITI TF-3 4.2.3.1.2). References that
name nothing of the submission are left as sent, for the registry to refuse.
Reading is lenient: it records what was sent, and kuva.services.registry judges it.

Storing: each DocumentEntry, SubmissionSet, Folder and Association keeps its
ebRIM XML as received (``ebxml``), in a canonical form: ids replaced as above,
top-level Classifications and ExternalIdentifiers moved into the object they
classify, ``lid`` = ``id`` and ``VersionInfo`` 1 (the registry's first version),
``status`` and ``home`` removed (the registry decides them), ignorable whitespace
dropped, rim namespace prefix ``rim``, exclusive XML canonicalization. Extra
metadata slots (ITI TF-3 4.2.3.1.6) stay as sent.

Answering (ITI-18): ``leaf_class`` turns stored objects back into elements with
the current ``status`` (a Folder's ``lastUpdateTime``, the current patientId of
an object whose patient was merged into another) patched in;
``object_refs`` makes ``rim:ObjectRef`` lists.

Objects built in code (``render``) are written in the same form.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypedDict, TypeVar

from lxml import etree
from lxml.etree import _Element as Element

from kuva.model.xds import (
    ASSOCIATION_TYPE,
    CLASSIFICATION_TYPE,
    EXTERNAL_IDENTIFIER_TYPE,
    REGISTRY_PACKAGE_TYPE,
    Association,
    Classification,
    DocumentEntry,
    DocumentEntryScheme,
    ExternalIdentifier,
    Folder,
    FolderScheme,
    ObjectKind,
    OtherObject,
    PatientId,
    RegistryObject,
    Slot,
    SlotName,
    StoredObject,
    Submission,
    SubmissionSet,
    SubmissionSetScheme,
    new_uuid,
)
from kuva.xds.namespaces import RIM, q


class EbrimError(ValueError):
    """The payload holds no ebRIM metadata kuva can read."""


_UUID_PREFIX = "urn:uuid:"
_REFERENCES = ("classifiedObject", "registryObject", "sourceObject", "targetObject")
# The children of a RegistryObject, in the order rim.xsd requires them.
_ORDER = (
    "Slot",
    "Name",
    "Description",
    "VersionInfo",
    "Classification",
    "ExternalIdentifier",
    "ContentVersionInfo",
    "RegistryObjectList",
)
_FIRST_VERSION = "1"


def _rim(local: str) -> str:
    return q("rim", local)


def _local(element: Element) -> str:
    return etree.QName(element).localname


def _is_rim(element: Element) -> bool:
    return isinstance(element.tag, str) and etree.QName(element).namespace == RIM


def _is(element: Element, local: str) -> bool:
    return element.tag == _rim(local)


# --- reading ---


def object_list_of(payload: Element) -> Element:
    """The rim:RegistryObjectList of an lcm:SubmitObjectsRequest (ITI-42), of the one
    in an xdsb:ProvideAndRegisterDocumentSetRequest (ITI-41), or the list itself."""
    element: Element | None = payload
    if payload.tag == q("xdsb", "ProvideAndRegisterDocumentSetRequest"):
        element = payload.find(q("lcm", "SubmitObjectsRequest"))
    if element is not None and element.tag == q("lcm", "SubmitObjectsRequest"):
        element = element.find(_rim("RegistryObjectList"))
    if element is None or element.tag != _rim("RegistryObjectList"):
        raise EbrimError(f"no rim:RegistryObjectList in {payload.tag}")
    return element


def _slots(element: Element) -> tuple[Slot, ...]:
    slots = []
    for slot in element.findall(_rim("Slot")):
        values = tuple(
            (value.text or "").strip()
            for value in slot.findall(f"{_rim('ValueList')}/{_rim('Value')}")
        )
        slots.append(Slot(slot.get("name", ""), values))
    return tuple(slots)


def _string(element: Element, local: str) -> str:
    found = element.find(f"{_rim(local)}/{_rim('LocalizedString')}")
    return found.get("value", "") if found is not None else ""


class _Common(TypedDict):
    id: str
    symbolic_id: str
    object_type: str
    lid: str
    status: str
    name: str
    description: str
    slots: tuple[Slot, ...]
    classifications: tuple[Classification, ...]
    external_identifiers: tuple[ExternalIdentifier, ...]


class _Reader:
    """One submission's ids: symbolic ones mapped to new UUIDs."""

    def __init__(self, root: Element, new_id: Callable[[], str]) -> None:
        seen: dict[str, int] = {}
        self.mapping: dict[str, str] = {}
        for element in root.iter():
            if not _is_rim(element) or _local(element) == "ObjectRef":
                continue
            ident = element.get("id")
            if ident is None:
                continue
            seen[ident] = seen.get(ident, 0) + 1
            if not ident.startswith(_UUID_PREFIX) and ident not in self.mapping:
                self.mapping[ident] = new_id()
        self.duplicates = tuple(ident for ident, count in seen.items() if count > 1)

    def resolve(self, value: str) -> str:
        return self.mapping.get(value, value)

    def common(self, element: Element, attached: list[Element]) -> _Common:
        """What every object has; ``attached``: its top-level Classifications and
        ExternalIdentifiers."""
        symbolic = element.get("id", "")
        children = [*element, *attached]
        return {
            "id": self.resolve(symbolic),
            "symbolic_id": symbolic,
            "object_type": element.get("objectType", "") or _DEFAULT_TYPES.get(_local(element), ""),
            "lid": self.resolve(element.get("lid", "")),
            "status": element.get("status", ""),
            "name": _string(element, "Name"),
            "description": _string(element, "Description"),
            "slots": _slots(element),
            "classifications": tuple(
                self.classification(c) for c in children if _is(c, "Classification")
            ),
            "external_identifiers": tuple(
                self.external_identifier(e) for e in children if _is(e, "ExternalIdentifier")
            ),
        }

    def classification(self, element: Element) -> Classification:
        symbolic = element.get("id", "")
        return Classification(
            id=self.resolve(symbolic),
            classified_object=self.resolve(element.get("classifiedObject", "")),
            classification_scheme=element.get("classificationScheme", ""),
            classification_node=element.get("classificationNode", ""),
            node_representation=element.get("nodeRepresentation", ""),
            name=_string(element, "Name"),
            slots=_slots(element),
            symbolic_id=symbolic,
        )

    def external_identifier(self, element: Element) -> ExternalIdentifier:
        symbolic = element.get("id", "")
        return ExternalIdentifier(
            id=self.resolve(symbolic),
            registry_object=self.resolve(element.get("registryObject", "")),
            identification_scheme=element.get("identificationScheme", ""),
            value=(element.get("value") or "").strip(),
            name=_string(element, "Name"),
            symbolic_id=symbolic,
        )

    def rewrite(self, root: Element) -> None:
        """Replace symbolic ids and references to them, in place."""
        for element in root.iter():
            if not _is_rim(element):
                continue
            for attribute in ("id", "lid", *_REFERENCES):
                value = element.get(attribute)
                if value is not None and value in self.mapping:
                    element.set(attribute, self.mapping[value])


def parse_submission(payload: Element, *, new_id: Callable[[], str] = new_uuid) -> Submission:
    """The Submission in ``payload`` (see ``object_list_of``). Raises EbrimError."""
    root = _rebuild(object_list_of(payload))
    reader = _Reader(root, new_id)
    top = [child for child in root if _is_rim(child)]
    # Top-level Classifications and ExternalIdentifiers, by the object they name.
    loose: dict[str, list[Element]] = {}
    objects: list[Element] = []
    others: list[OtherObject] = []
    for element in top:
        local = _local(element)
        if local == "Classification":
            loose.setdefault(reader.resolve(element.get("classifiedObject", "")), []).append(
                element
            )
        elif local == "ExternalIdentifier":
            loose.setdefault(reader.resolve(element.get("registryObject", "")), []).append(element)
        elif local in ("ExtrinsicObject", "RegistryPackage", "Association"):
            objects.append(element)
        elif local != "ObjectRef":
            symbolic = element.get("id", "")
            others.append(OtherObject(reader.resolve(symbolic), local, symbolic))

    entries: list[DocumentEntry] = []
    sets: list[SubmissionSet] = []
    folders: list[Folder] = []
    associations: list[Association] = []
    elements: dict[str, Element] = {}
    for element in objects:
        ident = reader.resolve(element.get("id", ""))
        attached = loose.pop(ident, []) if ident else []
        common = reader.common(element, attached)
        local = _local(element)
        obj: RegistryObject
        if local == "ExtrinsicObject":
            obj = DocumentEntry(**common, mime_type=element.get("mimeType", ""))
            entries.append(obj)
        elif local == "Association":
            source, target = element.get("sourceObject", ""), element.get("targetObject", "")
            obj = Association(
                **common,
                association_type=element.get("associationType", ""),
                source_object=reader.resolve(source),
                target_object=reader.resolve(target),
                symbolic_source=source,
                symbolic_target=target,
            )
            associations.append(obj)
        else:
            nodes = {c.classification_node for c in common["classifications"]}
            is_set = SubmissionSetScheme.NODE in nodes
            is_folder = FolderScheme.NODE in nodes
            if is_set and not is_folder:
                obj = SubmissionSet(**common)
                sets.append(obj)
            elif is_folder and not is_set:
                obj = Folder(**common)
                folders.append(obj)
            else:
                what = "RegistryPackage classified as both SubmissionSet and Folder"
                others.append(OtherObject(ident, what if is_set else local, common["symbolic_id"]))
                continue
        for child in attached:
            _insert(element, child)
        elements[obj.id] = element

    unattached = tuple(
        reader.classification(e) if _is(e, "Classification") else reader.external_identifier(e)
        for found in loose.values()
        for e in found
    )
    reader.rewrite(root)
    return Submission(
        submission_sets=tuple(_with_xml(o, elements) for o in sets),
        document_entries=tuple(_with_xml(o, elements) for o in entries),
        folders=tuple(_with_xml(o, elements) for o in folders),
        associations=tuple(_with_xml(o, elements) for o in associations),
        unattached=unattached,
        others=tuple(others),
        duplicate_ids=reader.duplicates,
    )


_T = TypeVar("_T", bound=RegistryObject)


def _with_xml(obj: _T, elements: dict[str, Element]) -> _T:
    return dataclasses.replace(obj, ebxml=_serialize(elements[obj.id]))


_DEFAULT_TYPES = {
    "RegistryPackage": REGISTRY_PACKAGE_TYPE,
    "Association": ASSOCIATION_TYPE,
    "Classification": CLASSIFICATION_TYPE,
    "ExternalIdentifier": EXTERNAL_IDENTIFIER_TYPE,
}


def _finish(element: Element) -> Element:
    """lid = id, VersionInfo 1, no status or home (ITI TF-2b 3.42.4.1.3: the
    registry assigns them); objectType, where left to its ebRIM default, written
    out (ITI-18 answers carry it, ITI TF-2a 3.18.4.1.3)."""
    for child in element.iter():
        default = _DEFAULT_TYPES.get(_local(child)) if _is_rim(child) else None
        if default and not child.get("objectType"):
            child.set("objectType", default)
    element.set("lid", element.get("id", ""))
    for attribute in ("status", "home"):
        if attribute in element.attrib:
            del element.attrib[attribute]
    version = element.find(_rim("VersionInfo"))
    if version is None:
        version = etree.Element(_rim("VersionInfo"))
        _insert(element, version)
    version.set("versionName", _FIRST_VERSION)
    return element


def _insert(parent: Element, child: Element) -> None:
    """Put ``child`` among ``parent``'s children where rim.xsd wants it."""
    rank = _ORDER.index(_local(child)) if _local(child) in _ORDER else len(_ORDER)
    for index, existing in enumerate(parent):
        local = _local(existing)
        if local in _ORDER and _ORDER.index(local) > rank:
            parent.insert(index, child)
            return
    parent.append(child)


def _rebuild(element: Element, parent: Element | None = None) -> Element:
    """A copy with the rim prefix and without ignorable whitespace or comments."""
    if parent is None:
        copy = etree.Element(element.tag, nsmap={"rim": RIM})
    else:
        copy = etree.SubElement(parent, element.tag)
    for name, value in element.attrib.items():
        copy.set(name, value)
    children = [child for child in element if isinstance(child.tag, str)]
    if not children or (element.text and element.text.strip()):
        copy.text = element.text
    for child in children:
        _rebuild(child, copy)
    return copy


def _serialize(element: Element) -> str:
    standalone = _rebuild(_finish(element))
    return etree.tostring(standalone, method="c14n", exclusive=True).decode("utf-8")


# --- the repository's slots (ITI TF-2b 3.41.4.1.3: hash, size, repositoryUniqueId) ---


def with_slots(entry: DocumentEntry, slots: Mapping[str, Sequence[str]]) -> DocumentEntry:
    """``entry`` with the slots ``slots`` set (added, or their values replaced), in
    the model and in its stored XML: how a Document Repository adds hash, size and
    repositoryUniqueId before registering (ITI TF-2b 3.41.4.1.3)."""
    updated = list(entry.slots)
    for name, values in slots.items():
        slot = Slot(name, tuple(values))
        for index, existing in enumerate(updated):
            if existing.name == name:
                updated[index] = slot
                break
        else:
            updated.append(slot)
    ebxml = entry.ebxml
    if ebxml:
        element = _parse(ebxml)
        for name, values in slots.items():
            _set_slot(element, name, values)
        ebxml = _serialize(element)
    return dataclasses.replace(entry, slots=tuple(updated), ebxml=ebxml)


def _slot_element(name: str, values: Iterable[str]) -> Element:
    slot = etree.Element(_rim("Slot"), nsmap={"rim": RIM})
    slot.set("name", name)
    value_list = etree.SubElement(slot, _rim("ValueList"))
    for value in values:
        etree.SubElement(value_list, _rim("Value")).text = value
    return slot


def _set_slot(element: Element, name: str, values: Iterable[str]) -> None:
    replacement = _slot_element(name, values)
    for existing in element.findall(_rim("Slot")):
        if existing.get("name") == name:
            existing.addprevious(replacement)
            element.remove(existing)
            return
    _insert(element, replacement)


def _parse(ebxml: str) -> Element:
    # A parser per call: lxml parsers must not be shared between threads.
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    return etree.fromstring(ebxml.encode("utf-8"), parser)


# --- writing objects built in code ---


def _add_name(parent: Element, local: str, value: str) -> None:
    if value:
        holder = etree.SubElement(parent, _rim(local))
        etree.SubElement(holder, _rim("LocalizedString")).set("value", value)


def _add_slots(parent: Element, slots: Iterable[Slot]) -> None:
    for slot in slots:
        parent.append(_slot_element(slot.name, slot.values))


def _classification_element(classification: Classification) -> Element:
    element = etree.Element(_rim("Classification"), nsmap={"rim": RIM})
    element.set("id", classification.id)
    element.set("objectType", CLASSIFICATION_TYPE)
    element.set("classifiedObject", classification.classified_object)
    if classification.classification_node:
        element.set("classificationNode", classification.classification_node)
    else:
        element.set("classificationScheme", classification.classification_scheme)
        element.set("nodeRepresentation", classification.node_representation)
    _add_slots(element, classification.slots)
    _add_name(element, "Name", classification.name)
    return element


def _identifier_element(identifier: ExternalIdentifier) -> Element:
    element = etree.Element(_rim("ExternalIdentifier"), nsmap={"rim": RIM})
    element.set("id", identifier.id)
    element.set("objectType", EXTERNAL_IDENTIFIER_TYPE)
    element.set("registryObject", identifier.registry_object)
    element.set("identificationScheme", identifier.identification_scheme)
    element.set("value", identifier.value)
    _add_name(element, "Name", identifier.name)
    return element


def to_element(obj: RegistryObject) -> Element:
    """The ebRIM element of a model object (ExtrinsicObject, RegistryPackage or
    Association), in the stored form."""
    if isinstance(obj, DocumentEntry):
        element = etree.Element(_rim("ExtrinsicObject"), nsmap={"rim": RIM})
        element.set("id", obj.id)
        element.set("objectType", obj.object_type)
        element.set("mimeType", obj.mime_type)
    elif isinstance(obj, Association):
        element = etree.Element(_rim("Association"), nsmap={"rim": RIM})
        element.set("id", obj.id)
        element.set("objectType", obj.object_type or ASSOCIATION_TYPE)
        element.set("associationType", obj.association_type)
        element.set("sourceObject", obj.source_object)
        element.set("targetObject", obj.target_object)
    else:
        element = etree.Element(_rim("RegistryPackage"), nsmap={"rim": RIM})
        element.set("id", obj.id)
        element.set("objectType", obj.object_type or REGISTRY_PACKAGE_TYPE)
    _add_slots(element, obj.slots)
    _add_name(element, "Name", obj.name)
    _add_name(element, "Description", obj.description)
    for classification in obj.classifications:
        element.append(_classification_element(classification))
    for identifier in obj.external_identifiers:
        element.append(_identifier_element(identifier))
    return _finish(element)


def render(obj: RegistryObject) -> str:
    """The stored ebRIM XML of an object built in code (see ``to_element``)."""
    return _serialize(to_element(obj))


def with_ebxml(submission: Submission) -> Submission:
    """``submission`` with ``ebxml`` rendered for every object that has none."""

    def filled(objects: tuple[_T, ...]) -> tuple[_T, ...]:
        return tuple(o if o.ebxml else dataclasses.replace(o, ebxml=render(o)) for o in objects)

    return dataclasses.replace(
        submission,
        submission_sets=filled(submission.submission_sets),
        document_entries=filled(submission.document_entries),
        folders=filled(submission.folders),
        associations=filled(submission.associations),
    )


# --- answering (ITI-18) ---


_PATIENT_ID_SCHEMES = frozenset(
    (DocumentEntryScheme.PATIENT_ID, SubmissionSetScheme.PATIENT_ID, FolderScheme.PATIENT_ID)
)


def leaf_class(
    objects: Iterable[StoredObject],
    *,
    home: str | None = None,
    patients: Mapping[str, PatientId] | None = None,
) -> list[Element]:
    """The registered objects as ebRIM elements for a LeafClass answer (ITI TF-2a
    3.18.4.1.2.3.5, 3.18.4.1.3): exactly what was registered, with the current
    availabilityStatus, the Folder's lastUpdateTime (ITI TF-3 4.2.3.4.5), when
    given, the home community id (``home`` attribute, ITI TF-2a 3.18.4.1.3) and the
    current patientId of the objects in ``patients`` (entryUUID -> patient id: a
    merge, as after ITI-44; sourcePatientId stays as registered) patched in."""
    answer = []
    for obj in objects:
        element = _parse(obj.ebxml)
        element.set("status", obj.status.value)
        if home:
            element.set("home", home)
        if obj.kind is ObjectKind.FOLDER and obj.last_update_time:
            _set_slot(element, SlotName.LAST_UPDATE_TIME, [obj.last_update_time])
        current = patients.get(obj.entry_uuid) if patients else None
        if current is not None:
            for identifier in element.iterfind(_rim("ExternalIdentifier")):
                if identifier.get("identificationScheme") in _PATIENT_ID_SCHEMES:
                    identifier.set("value", str(current))
        answer.append(element)
    return answer


def object_refs(uuids: Iterable[str], *, home: str | None = None) -> list[Element]:
    """rim:ObjectRef elements for an ObjectRef answer (ITI TF-2a 3.18.4.1.2.3.5)."""
    refs = []
    for ident in uuids:
        ref = etree.Element(_rim("ObjectRef"), nsmap={"rim": RIM})
        ref.set("id", ident)
        if home:
            ref.set("home", home)
        refs.append(ref)
    return refs


def object_list(elements: Iterable[Element]) -> Element:
    """rim:RegistryObjectList holding ``elements`` (of leaf_class or object_refs)."""
    listing = etree.Element(_rim("RegistryObjectList"), nsmap={"rim": RIM})
    listing.extend(elements)
    return listing
