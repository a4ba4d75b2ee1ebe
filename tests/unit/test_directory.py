"""services.directory on SQLite and PostgreSQL: seeding from the file, changes and
their rules, the version every node polls, and the watcher that puts a new
directory in force."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from sqlalchemy import Engine

from kuva.config import Settings
from kuva.model.directory import NodeSettings, OrganizationSettings, OrganizationState
from kuva.services.directory import (
    DirectoryError,
    DirectoryService,
    DirectoryWatcher,
    NotFound,
    one_month_after,
)

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
ORG = OrganizationSettings(oid="1.2.246.10.12345678.10", name="Testin sairaala")
CLINIC = OrganizationSettings(oid="1.2.246.10.55555555.10", name="Test Clinic")
NODE = NodeSettings(ae_title="PACS1", host="10.0.0.5", port=104, organization=ORG.oid)


def service(engine: Engine, now: datetime = NOW) -> DirectoryService:
    return DirectoryService(engine, clock=lambda: now)


def test_the_file_seeds_once_and_then_follows_only_what_it_added(engine: Engine) -> None:
    directory = service(engine)
    assert directory.seed([ORG], [NODE]) == 2
    assert directory.seed([ORG], [NODE]) == 0  # idempotent
    version, snapshot = directory.load()
    assert [o.oid for o in snapshot.organizations] == [ORG.oid]
    assert snapshot.node("PACS1") == NODE
    # The file changed: its own entries follow it.
    moved = NODE.model_copy(update={"port": 11112})
    assert directory.seed([ORG], [moved]) == 1
    assert directory.load()[1].node("PACS1") == moved
    assert directory.load()[0] == version + 1
    # Changed at runtime: the file no longer touches the entry.
    directory.set_state(ORG.oid, OrganizationState.SUSPENDED, by="operator")
    assert directory.seed([ORG], [moved]) == 0
    assert directory.organization(ORG.oid).state is OrganizationState.SUSPENDED
    # Dropped from the file: its node goes; the organisation changed at runtime stays.
    assert directory.seed([ORG], []) == 1
    assert directory.load()[1].node("PACS1") is None
    assert directory.seed([], []) == 0
    assert directory.organization(ORG.oid).oid == ORG.oid


def test_runtime_changes_and_their_refusals(engine: Engine) -> None:
    directory = service(engine)
    directory.add_organization(CLINIC, by="operator")
    with pytest.raises(DirectoryError, match="already"):
        directory.add_organization(CLINIC, by="operator")
    with pytest.raises(DirectoryError, match="not in the directory"):
        directory.add_node(NODE, by="operator")  # its organisation is unknown
    clinic_node = NODE.model_copy(update={"ae_title": "CLINIC", "organization": CLINIC.oid})
    directory.add_node(clinic_node, by="operator")
    assert directory.nodes_of(CLINIC.oid) == [clinic_node]
    with pytest.raises(NotFound):
        directory.remove_node("NOBODY", by="operator")
    directory.remove_node("CLINIC", by="operator")
    with pytest.raises(NotFound):
        directory.set_state("1.2.3", OrganizationState.ACTIVE, by="operator")
    certified = OrganizationSettings(
        oid="1.2.246.10.1.10", name="A", certificates=["CN=pacs.example.fi,O=A"]
    )
    directory.add_organization(certified, by="operator")
    twin = certified.model_copy(update={"oid": "1.2.246.10.2.10"})
    with pytest.raises(DirectoryError, match="a certificate maps to one organisation"):
        directory.add_organization(twin, by="operator")


def test_termination_keeps_the_notice_period_unless_forced(engine: Engine) -> None:
    service(engine).add_organization(CLINIC, by="operator")
    early = service(engine, datetime(2026, 12, 20, tzinfo=UTC))
    with pytest.raises(DirectoryError, match="needs the date written notice"):
        early.set_state(CLINIC.oid, OrganizationState.TERMINATED, by="operator")
    with pytest.raises(DirectoryError, match="ends on 2026-12-30"):
        early.set_state(
            CLINIC.oid, OrganizationState.TERMINATED, by="op", notice_date=date(2026, 11, 30)
        )
    on_time = service(engine, datetime(2026, 12, 30, tzinfo=UTC))
    after = on_time.set_state(
        CLINIC.oid, OrganizationState.TERMINATED, by="op", notice_date=date(2026, 11, 30)
    )
    assert (after.notice_date, after.termination_date) == (date(2026, 11, 30), date(2026, 12, 30))
    with pytest.raises(DirectoryError, match="terminated"):
        on_time.set_state(CLINIC.oid, OrganizationState.ACTIVE, by="op")


def test_forced_termination(engine: Engine) -> None:
    directory = service(engine)
    directory.add_organization(CLINIC, by="operator")
    after = directory.set_state(
        CLINIC.oid, OrganizationState.TERMINATED, by="op", notice_date=NOW.date(), force=True
    )
    assert after.state is OrganizationState.TERMINATED and after.termination_date == NOW.date()


@pytest.mark.parametrize(
    ("notice", "earliest"),
    [
        (date(2026, 1, 31), date(2026, 2, 28)),
        (date(2024, 1, 31), date(2024, 2, 29)),
        (date(2026, 12, 15), date(2027, 1, 15)),
        (date(2026, 3, 1), date(2026, 4, 1)),
    ],
)
def test_one_month_after(notice: date, earliest: date) -> None:
    assert one_month_after(notice) == earliest


def test_the_watcher_puts_a_changed_directory_in_force(engine: Engine) -> None:
    settings = Settings(
        organizations=[ORG], nodes=[NODE], archive={"database_url": str(engine.url)}
    )
    directory = service(engine)
    directory.seed(settings.organizations, settings.nodes)
    watcher = DirectoryWatcher(directory, settings)
    assert watcher.refresh() is True
    assert watcher.refresh() is False  # nothing changed
    assert settings.node("CLINIC") is None and not settings.open_access
    directory.add_organization(
        CLINIC.model_copy(update={"state": OrganizationState.TESTING}), by="op"
    )
    directory.add_node(
        NODE.model_copy(update={"ae_title": "CLINIC", "organization": CLINIC.oid}), by="op"
    )
    assert watcher.refresh() is True
    assert settings.organization_of("CLINIC") == CLINIC.oid
    assert settings.organization_state(CLINIC.oid) is OrganizationState.TESTING
    assert settings.organization_state("1.2.3") is OrganizationState.ACTIVE  # not listed
