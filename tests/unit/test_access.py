"""Access rules by register holder: the scope of a requester (model.access) and the
index's conditions (index.access) on both databases, with prohibitions and merges."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, select

from kuva.index.access import visible_studies
from kuva.index.schema import study
from kuva.index.uow import UnitOfWork
from kuva.model.access import ANY, AccessRule, AccessScope, Basis, scope_of
from kuva.model.patient import PatientKey
from kuva.services.access import AccessPolicy, DisclosureProhibitions, Read
from tests.unit.test_index import ROOT, attributes, new_instance

A, B, C = "1.2.246.10.1.10", "1.2.246.10.2.10", "1.2.246.10.3.10"
NATIONAL = Basis("national archive")
STATUTORY = Basis("statutory", honour_prohibition=False)


def test_scope_most_specific_rule_wins() -> None:
    rules = [
        AccessRule(ANY, ANY, NATIONAL),
        AccessRule(A, B, STATUTORY),
    ]
    scope = scope_of(B, rules)
    assert scope.basis_for(A) == STATUTORY  # named holder and recipient beat ANY
    assert scope.basis_for(C) == NATIONAL
    assert scope.basis_for(B) is None  # its own
    assert scope.readable(A, prohibited=True)  # statutory: a prohibition does not apply
    assert not scope.readable(C, prohibited=True)
    assert scope.readable(C, prohibited=False)
    assert scope.holders(honouring=True) == (frozenset(), True)
    assert scope.holders(honouring=False) == (frozenset({A}), False)


def test_holders_in_testing_are_kept_apart() -> None:
    """No rule discloses a testing organisation's material; it reads its own."""
    rules = [AccessRule(ANY, ANY, NATIONAL), AccessRule(A, B, STATUTORY)]
    scope = scope_of(B, rules, apart=frozenset({A, C}))
    assert scope.basis_for(A) is None and scope.basis_for(C) is None
    assert not scope.readable(A, prohibited=False)
    assert scope.holders(honouring=False) == (frozenset(), False)
    assert scope_of(A, rules, apart=frozenset({A})).readable(A, prohibited=True)


def test_scope_without_rules_reads_only_its_own() -> None:
    scope = scope_of(C, [AccessRule(A, B, NATIONAL)])
    assert scope.bases == {}
    assert scope.readable(C, prohibited=True)
    assert not scope.readable(A, prohibited=False)
    unknown = scope_of(None, [AccessRule(A, B, NATIONAL)])
    assert not unknown.readable(A, prohibited=False)


def test_disclosures_are_the_other_holders_reads_once_per_study() -> None:
    scope = scope_of(B, [AccessRule(A, ANY, NATIONAL)])
    handouts = AccessPolicy.disclosures(
        scope,
        [
            Read(A, study_instance_uid="1.2.3"),
            Read(A, study_instance_uid="1.2.3"),
            Read(B, study_instance_uid="1.2.4"),
        ],
    )
    assert [(h.study_instance_uid, h.basis) for h in handouts] == [("1.2.3", NATIONAL.text)]


def _fill(engine: Engine) -> dict[str, str]:
    """Three studies: A's of patient 1, A's of patient 2, C's of patient 1."""
    studies = {"a1": f"{ROOT}.1", "a2": f"{ROOT}.2", "c1": f"{ROOT}.3"}
    rows = [
        (attributes(1, study=studies["a1"], series=f"{ROOT}.1.1"), A),
        (attributes(1, study=studies["a2"], series=f"{ROOT}.2.1", patient_id="020292-902R"), A),
        (attributes(2, study=studies["c1"], series=f"{ROOT}.3.1"), C),
    ]
    with UnitOfWork(engine) as uow:
        for attrs, holder in rows:
            uow.instances.add(new_instance(attrs, organization_oid=holder))
        uow.commit()
    return studies


def _visible(engine: Engine, scope: AccessScope) -> set[str]:
    statement = select(study.c.study_instance_uid)
    condition = visible_studies(scope)
    if condition is not None:
        statement = statement.where(condition)
    with engine.connect() as conn:
        return set(conn.execute(statement).scalars())


def test_visible_studies_with_prohibitions(engine: Engine) -> None:
    studies = _fill(engine)
    national = scope_of(B, [AccessRule(ANY, B, NATIONAL)])
    statutory_a = scope_of(B, [AccessRule(ANY, B, NATIONAL), AccessRule(A, B, STATUTORY)])
    assert _visible(engine, national) == set(studies.values())
    assert _visible(engine, scope_of(C, [])) == {studies["c1"]}
    assert _visible(engine, scope_of(None, [])) == set()

    prohibitions = DisclosureProhibitions(engine)
    patient2 = PatientKey("020292-902R", attributes(1).patient.issuer or "")
    assert prohibitions.prohibit(patient2, by="test", reason="asked")
    assert not prohibitions.prohibit(patient2, by="test", reason="again")  # in force
    assert _visible(engine, national) == {studies["a1"], studies["c1"]}
    # A statutory basis does not honour the prohibition; ANY others' does.
    assert _visible(engine, statutory_a) == set(studies.values())
    # The register holder reads its own, prohibited or not.
    assert _visible(engine, scope_of(A, [])) == {studies["a1"], studies["a2"]}

    # After a merge of patient 2 into patient 1, the prohibition still holds for the
    # study received for patient 2 (received_patient_pk), and patient 1's do not
    # become prohibited by it.
    with UnitOfWork(engine) as uow:
        source = uow.patients.find(patient2)
        target = uow.patients.find(PatientKey(attributes(1).patient.patient_id, patient2.issuer))
        assert source is not None and target is not None
        uow.patients.merge(source.pk, target.pk)
        uow.commit()
    assert _visible(engine, national) == {studies["a1"], studies["c1"]}

    assert prohibitions.permit(patient2, by="test")
    assert not prohibitions.permit(patient2, by="test")
    assert _visible(engine, national) == set(studies.values())


def test_prohibition_of_an_unknown_patient_makes_its_record(engine: Engine) -> None:
    prohibitions = DisclosureProhibitions(engine, clock=lambda: datetime(2026, 1, 1, tzinfo=UTC))
    key = PatientKey("030393-903F", "1.2.246.21")
    assert prohibitions.current(key) is None
    assert prohibitions.prohibit(key, by="operator", reason="")
    current = prohibitions.current(key)
    assert current is not None and current[1] == "operator"


@pytest.mark.parametrize("unrestricted", [True])
def test_unrestricted_scope_has_no_condition(unrestricted: bool) -> None:
    assert visible_studies(AccessScope(A, unrestricted=unrestricted)) is None
