"""The patient merge overlay on the XDS registry (issue 6), on SQLite and PostgreSQL:
HL7 merges (A40, kuva.services.patients) and unlinks (A37) change what ITI-18
Registry Stored Queries answer - as an XDS registry answers after a Patient
Identity Merge (ITI-44 Resolve Duplicates, ITI TF-2b 3.44.4.2.4) - without
rewriting a registry row; ITI-42 relates a merged patient's entries to the
survivor's.

Three Finnish test identity codes, each with a SubmissionSet and a report
DocumentEntry: SURVIVOR (T), MERGED (S) with a Folder holding its entry, and THIRD
(C). C is merged into S and S into T, a chain C -> S -> T.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import pytest
from sqlalchemy import Engine, event, text

from kuva.index.uow import UnitOfWork
from kuva.model.patient import MergePatients, PatientCommand, PatientKey, UnlinkPatients
from kuva.model.xds import (
    ORIGINAL,
    AssociationType,
    DocumentEntry,
    DocumentEntryScheme,
    ErrorCode,
    Folder,
    FolderScheme,
    PatientId,
    ResponseStatus,
    SlotName,
    Submission,
    SubmissionSet,
    SubmissionSetScheme,
    new_association,
    new_uuid,
)
from kuva.services.patients import MessageRef, PatientService
from kuva.services.registry import RegistryService
from kuva.services.stored_query import StoredQueryId, StoredQueryResult, StoredQueryService
from kuva.xds import ebrim
from kuva.xds.iti18 import response_body
from kuva.xds.namespaces import NSMAP, q
from tests.support.hl7 import MERGED, SURVIVOR, THIRD
from tests.unit.test_stored_query import (
    APPROVED,
    BOTH,
    IMAGES,
    KOS_FORMAT,
    ORG,
    Param,
    ask,
    entry,
    folder,
    ids,
    listed,
    quoted,
    refused,
    submission_set,
)

PIC = "1.2.246.21"  # the Finnish personal identity code
T = PatientId(SURVIVOR, PIC)
S = PatientId(MERGED, PIC)
C = PatientId(THIRD, PIC)
DE = "$XDSDocumentEntry"
SS = "$XDSSubmissionSet"
FD = "$XDSFolder"


@dataclasses.dataclass
class Registered:
    """One patient's objects: SubmissionSet, entry, HasMember, and maybe a Folder."""

    ss: SubmissionSet
    entry: DocumentEntry
    member: str
    folder: Folder | None = None


@dataclasses.dataclass
class Site:
    engine: Engine
    registry: RegistryService
    queries: StoredQueryService
    patients: PatientService
    t: Registered
    s: Registered
    c: Registered

    def hl7(self, *commands: PatientCommand) -> None:
        ref = MessageRef("RIS", "TESTSAIRAALA", new_uuid(), "ADT")
        ack = self.patients.handle(ref, commands, lambda error: "AA" if error is None else "AE")
        assert ack == "AA"

    def merge(self, source: PatientId, target: PatientId) -> None:
        self.hl7(MergePatients(target=key(target), source=key(source)))

    def unlink(self, source: PatientId, target: PatientId) -> None:
        self.hl7(UnlinkPatients(target=key(target), source=key(source)))

    def find(self, patient: PatientId, *params: Param, return_type: str = "LeafClass") -> list[str]:
        return ids(self.find_documents(patient, *params, return_type=return_type))

    def find_documents(
        self, patient: PatientId, *params: Param, return_type: str = "LeafClass"
    ) -> StoredQueryResult:
        return ask(
            self.queries,
            StoredQueryId.FIND_DOCUMENTS,
            (f"{DE}PatientId", quoted(patient)),
            (f"{DE}Status", listed(APPROVED)),
            *params,
            return_type=return_type,
        )


def key(patient: PatientId) -> PatientKey:
    """The index patient of a registry patient: the CX.4 OID is its issuer."""
    return PatientKey(patient.id, patient.authority)


def register(registry: RegistryService, patient: PatientId, *, with_folder: bool) -> Registered:
    document = entry(patient)
    ss = submission_set(patient)
    member = new_association(
        AssociationType.HAS_MEMBER, ss.id, document.id, submission_set_status=ORIGINAL
    )
    associations = [member]
    folders: tuple[Folder, ...] = ()
    if with_folder:
        folders = (folder(patient),)
        associations += [
            new_association(AssociationType.HAS_MEMBER, ss.id, folders[0].id),
            new_association(AssociationType.HAS_MEMBER, folders[0].id, document.id),
        ]
    outcome = registry.register(
        Submission(
            submission_sets=(ss,),
            document_entries=(document,),
            folders=folders,
            associations=tuple(associations),
        ),
        organization_oid=ORG,
    )
    assert outcome.status is ResponseStatus.SUCCESS, outcome.errors
    return Registered(ss, document, member.id, folders[0] if folders else None)


@pytest.fixture
def site(engine: Engine) -> Site:
    # Registered under a trusted assigning authority: the patients need no index
    # rows; the merges create them, as an A40 for patients without images does.
    registry = RegistryService(engine, trusted_assigning_authorities=[PIC], render=ebrim.render)
    t = register(registry, T, with_folder=False)
    s = register(registry, S, with_folder=True)
    c = register(registry, C, with_folder=False)
    return Site(engine, registry, StoredQueryService(engine), PatientService(engine), t, s, c)


def patient_ids(result: StoredQueryResult) -> dict[str, tuple[str, str]]:
    """entryUUID -> (patientId, sourcePatientId or "") as the ITI-18 answer writes them,
    for each object but Associations."""
    schemes = {
        DocumentEntryScheme.PATIENT_ID,
        SubmissionSetScheme.PATIENT_ID,
        FolderScheme.PATIENT_ID,
    }
    answer: dict[str, tuple[str, str]] = {}
    body = response_body(result, None)
    for element in body.iterfind("rim:RegistryObjectList/*", NSMAP):
        if element.tag == q("rim", "Association"):
            continue
        (patient,) = [
            e.get("value", "")
            for e in element.iterfind("rim:ExternalIdentifier", NSMAP)
            if e.get("identificationScheme") in schemes
        ]
        source = element.findtext(
            f"rim:Slot[@name='{SlotName.SOURCE_PATIENT_ID}']/rim:ValueList/rim:Value", "", NSMAP
        )
        answer[element.get("id", "")] = (patient, source)
    return answer


def test_merged_patients_objects_are_found_by_the_survivor(site: Site) -> None:
    t, s, c = site.t, site.s, site.c
    assert site.find(T) == [t.entry.id]
    assert site.find(S) == [s.entry.id]
    before = ask(
        site.queries,
        StoredQueryId.GET_DOCUMENTS,
        (f"{DE}EntryUUID", listed(t.entry.id, s.entry.id)),
    )
    assert refused(before) == {(ErrorCode.RESULT_NOT_SINGLE_PATIENT, "GetDocuments")}

    site.merge(C, S)
    site.merge(S, T)  # C -> S -> T

    # FindDocuments: the survivor's own and the merged ones, each with the survivor's
    # patientId; sourcePatientId as submitted.
    found = site.find_documents(T)
    assert ids(found) == [t.entry.id, s.entry.id, c.entry.id]
    assert patient_ids(found) == {
        t.entry.id: (str(T), str(T)),
        s.entry.id: (str(T), str(S)),
        c.entry.id: (str(T), str(C)),
    }
    assert found.patients == {s.entry.id: T, c.entry.id: T}
    assert site.find(T, return_type="ObjectRef") == [t.entry.id, s.entry.id, c.entry.id]
    # The merged-away ids are no current patients: nothing is found by them.
    assert site.find(S) == []
    assert site.find(C) == []

    sets = ask(
        site.queries,
        StoredQueryId.FIND_SUBMISSION_SETS,
        (f"{SS}PatientId", quoted(T)),
        (f"{SS}Status", listed(APPROVED)),
    )
    assert ids(sets) == [t.ss.id, s.ss.id, c.ss.id]
    assert {patient for patient, _ in patient_ids(sets).values()} == {str(T)}
    assert s.folder is not None
    folders = ask(
        site.queries,
        StoredQueryId.FIND_FOLDERS,
        (f"{FD}PatientId", quoted(T)),
        (f"{FD}Status", listed(APPROVED)),
    )
    assert ids(folders) == [s.folder.id]
    assert patient_ids(folders) == {s.folder.id: (str(T), "")}

    everything = get_all(site, T)
    assert set(ids(everything)) >= {
        *(r.ss.id for r in (t, s, c)),
        *(r.entry.id for r in (t, s, c)),
        *(r.member for r in (t, s, c)),
        s.folder.id,
    }
    assert {patient for patient, _ in patient_ids(everything).values()} == {str(T)}
    assert ids(get_all(site, S)) == []

    # By id: one current patient now, so no XDSResultNotSinglePatient.
    by_id = ask(
        site.queries,
        StoredQueryId.GET_DOCUMENTS,
        (f"{DE}EntryUUID", listed(t.entry.id, s.entry.id)),
    )
    assert ids(by_id) == [t.entry.id, s.entry.id]
    assert patient_ids(by_id)[s.entry.id] == (str(T), str(S))
    contents = ask(
        site.queries,
        StoredQueryId.GET_SUBMISSION_SET_AND_CONTENTS,
        (f"{SS}EntryUUID", quoted(c.ss.id)),
    )
    assert {patient for patient, _ in patient_ids(contents).values()} == {str(T)}

    # Nothing of the registry was rewritten.
    with UnitOfWork(site.engine, write=False) as uow:
        stored = uow.registry.find([s.entry.id, c.entry.id, s.ss.id])
    assert {o.patient for o in stored.values()} == {S, C}

    # --- A37: S is unlinked from T; C stays merged into S
    site.unlink(S, T)
    assert site.find(T) == [t.entry.id]
    back = site.find_documents(S)
    assert ids(back) == [s.entry.id, c.entry.id]
    assert patient_ids(back)[c.entry.id] == (str(S), str(C))
    assert patient_ids(back)[s.entry.id] == (str(S), str(S))
    assert site.find(C) == []
    site.unlink(C, S)
    assert site.find(S) == [s.entry.id]
    assert site.find(C) == [c.entry.id]
    assert refused(
        ask(
            site.queries,
            StoredQueryId.GET_DOCUMENTS,
            (f"{DE}EntryUUID", listed(t.entry.id, s.entry.id)),
        )
    ) == {(ErrorCode.RESULT_NOT_SINGLE_PATIENT, "GetDocuments")}


def get_all(site: Site, patient: PatientId) -> StoredQueryResult:
    return ask(
        site.queries,
        StoredQueryId.GET_ALL,
        ("$patientId", quoted(patient)),
        (f"{DE}Status", BOTH),
        (f"{SS}Status", BOTH),
        (f"{FD}Status", BOTH),
    )


def test_filters_apply_to_every_merged_identity(site: Site) -> None:
    """Codes and times narrow the survivor's answer across its merged identities."""
    images = {
        patient: register_image(site.registry, patient, created)
        for patient, created in ((T, "20240101"), (S, "20250101"))
    }
    site.merge(S, T)
    kos = (f"{DE}ClassCode", listed(str(IMAGES)))
    assert site.find(T, kos) == [images[T].id, images[S].id]
    assert site.find(T, kos, (f"{DE}CreationTimeFrom", "2025")) == [images[S].id]
    assert site.find(T, (f"{DE}FormatCode", listed(str(KOS_FORMAT)))) == [
        images[T].id,
        images[S].id,
    ]


def register_image(registry: RegistryService, patient: PatientId, created: str) -> DocumentEntry:
    manifest = entry(
        patient,
        mime_type="application/dicom",
        class_code=IMAGES,
        format_code=KOS_FORMAT,
        creation_time=created + "120000",
    )
    ss = submission_set(patient)
    member = new_association(
        AssociationType.HAS_MEMBER, ss.id, manifest.id, submission_set_status=ORIGINAL
    )
    outcome = registry.register(
        Submission(submission_sets=(ss,), document_entries=(manifest,), associations=(member,)),
        organization_oid=ORG,
    )
    assert outcome.status is ResponseStatus.SUCCESS, outcome.errors
    return manifest


def test_unknown_and_unmerged_patients_are_matched_as_they_are(site: Site) -> None:
    """A patient the index does not hold (trusted authority) is only itself."""
    with UnitOfWork(site.engine, write=False) as uow:
        assert uow.registry_query.merged_into(T) == []
        assert uow.registry_query.survivors([T, S]) == {}
    assert site.find(T) == [site.t.entry.id]
    site.merge(S, T)
    site.merge(C, S)  # S is merged already: C resolves through it
    with UnitOfWork(site.engine, write=False) as uow:
        assert uow.registry_query.merged_into(T) == [S, C]
        assert uow.registry_query.merged_into(S) == [C]
        assert uow.registry_query.survivors([T, S, C]) == {S: T, C: T}
    assert site.find(T) == [site.t.entry.id, site.s.entry.id, site.c.entry.id]


def test_merged_patients_queries_read_the_patient_indexes(site: Site) -> None:
    """FindDocuments and FindSubmissionSets of a survivor with merged identities read
    ix_xds_document_entry_find / ix_xds_object_patient as ranges on the patient."""
    site.merge(S, T)
    site.merge(C, S)
    statements: list[tuple[str, Any]] = []

    def capture(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        if "patient_authority IN" in statement:
            statements.append((statement, parameters))

    event.listen(site.engine, "before_cursor_execute", capture)
    try:
        assert len(site.find(T)) == 3
        ask(
            site.queries,
            StoredQueryId.FIND_SUBMISSION_SETS,
            (f"{SS}PatientId", quoted(T)),
            (f"{SS}Status", listed(APPROVED)),
        )
    finally:
        event.remove(site.engine, "before_cursor_execute", capture)
    assert len(statements) == 2
    postgres = site.engine.dialect.name == "postgresql"
    for (statement, parameters), index in zip(
        statements, ("ix_xds_document_entry_find", "ix_xds_object_patient"), strict=True
    ):
        plan = explain(site.engine, statement, parameters)
        if postgres:
            assert f"Index Scan using {index}" in plan or f"Bitmap Index Scan on {index}" in plan
            assert "Index Cond: (((patient_id)" in plan, plan
        else:
            assert f"INDEX {index} (patient_id=? AND patient_authority=?" in plan, plan


def explain(engine: Engine, statement: str, parameters: Sequence[Any] | dict[str, Any]) -> str:
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SET enable_seqscan = off"))
            prefix = "EXPLAIN "
        else:
            prefix = "EXPLAIN QUERY PLAN "
        rows = conn.exec_driver_sql(prefix + statement, parameters)
        return "\n".join(str(row[-1]) for row in rows)


def replace_entry(site: Site, patient: PatientId, original: str) -> tuple[str, list[str]]:
    """Register a new entry of ``patient`` replacing ``original`` (RPLC): its entryUUID
    and the error codes."""
    replacement = entry(patient)
    ss = submission_set(patient)
    outcome = site.registry.register(
        Submission(
            submission_sets=(ss,),
            document_entries=(replacement,),
            associations=(
                new_association(
                    AssociationType.HAS_MEMBER,
                    ss.id,
                    replacement.id,
                    submission_set_status=ORIGINAL,
                ),
                new_association(AssociationType.RPLC, replacement.id, original),
            ),
        ),
        organization_oid=ORG,
    )
    return replacement.id, [e.code for e in outcome.errors]


def test_merged_patients_entry_is_replaced_under_the_survivor(site: Site) -> None:
    """ITI-42 after a merge: an entry registered under S is the survivor's, so the
    survivor's replacement of it is accepted (the imaging source registers a grown
    study's manifest so); one of a patient merged nowhere is still refused."""
    _, errors = replace_entry(site, T, site.s.entry.id)
    assert errors == [ErrorCode.PATIENT_ID_DOES_NOT_MATCH]
    site.merge(S, T)
    replacement, errors = replace_entry(site, T, site.s.entry.id)
    assert errors == []
    assert site.find(T) == [site.t.entry.id, replacement]
    _, errors = replace_entry(site, T, site.c.entry.id)
    assert errors == [ErrorCode.PATIENT_ID_DOES_NOT_MATCH]
