"""The directory: customer organisations and their DICOM nodes, changed at runtime.

The directory lives in the index (index.directory). ``[[organizations]]`` and
``[[nodes]]`` in the configuration file seed it at each start, idempotently: an
entry missing from the index is added; one the file added before (origin
"config") follows the file, and goes when the file drops it; one changed since by
CLI or admin API (origin "runtime") is the index's, and the file no longer touches
it. So the embedded default and existing configurations work as before, and an
operator's runtime changes survive restarts.

Every change is one transaction: the row, the directory's version, and an audit
record (110113 Security Alert, 110128 Network Configuration for a node, 110129
Security Configuration for an organisation) naming who changed what, with the
entry before and after. ``DirectoryWatcher`` polls the version on every node
(``kuva serve`` and its DICOM worker processes) and puts a changed directory in
force whole (Settings.use_directory): a change is in force across the cluster
within ``POLL_SECONDS``, without a restart.

Organisation states (model.directory.OrganizationState) and their rules:

* testing -> active: ``activate``, refused while a required function of the
  acceptance test has not passed (services.onboarding) unless forced; the force is
  audited.
* any -> suspended -> active: ``suspend`` and ``activate``.
* any -> terminated: ``terminate`` with the date written notice was given; the
  termination is refused before one month has passed since it (the service
  description's notice period) unless forced, and the force is audited.
"""

from __future__ import annotations

import calendar
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import date
from functools import partial

from sqlalchemy import Engine

from kuva.config import Settings
from kuva.index.directory import CONFIG, RUNTIME, organization_values
from kuva.index.uow import UnitOfWork
from kuva.model.clock import Clock, utcnow
from kuva.model.directory import (
    Directory,
    NodeSettings,
    OrganizationLimits,
    OrganizationSettings,
    OrganizationState,
)
from kuva.services.audit import AuditTrail
from kuva.tasks.periodic import Periodic

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
NOTICE_MONTHS = 1


Entry = OrganizationSettings | NodeSettings
# (entry kind "organization" or "node", its key, before, after): one audited change.
Change = tuple[str, str, Entry | None, Entry | None]


class DirectoryError(ValueError):
    """A change the directory refuses; the message says why."""


class NotFound(DirectoryError):
    """No such organisation or node."""


def one_month_after(day: date) -> date:
    """The same day of the next month, or its last day when it has fewer days."""
    year, month = (day.year + 1, 1) if day.month == 12 else (day.year, day.month + 1)
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def _json(entry: Entry | None) -> str:
    if entry is None:
        return ""
    values = (
        organization_values(entry)
        if isinstance(entry, OrganizationSettings)
        else entry.model_dump()
    )
    return json.dumps(values, default=str, ensure_ascii=False, sort_keys=True)


def _seeded(
    kind: str,
    in_file: Mapping[str, Entry],
    present: Mapping[str, tuple[Entry, str]],
    writes: tuple[Callable[[Entry], bool], Callable[[Entry], None], Callable[[str], bool]],
) -> list[Change]:
    """The file's entries of one kind brought into the index (module docstring),
    with ``writes``: add, put and remove; the changes made."""
    add, put, remove = writes
    changes: list[Change] = []
    for key, entry in in_file.items():
        found = present.get(key)
        if found is None:
            if add(entry):
                changes.append((kind, key, None, entry))
        elif found[1] == CONFIG and found[0] != entry:
            put(entry)
            changes.append((kind, key, found[0], entry))
    for key, (entry, origin) in present.items():
        if origin == CONFIG and key not in in_file:
            remove(key)
            changes.append((kind, key, entry, None))
    return changes


class DirectoryService:
    def __init__(
        self,
        engine: Engine,
        *,
        audit: AuditTrail | None = None,
        acceptance: Callable[[str], list[str]] | None = None,
        clock: Clock = utcnow,
    ) -> None:
        """``acceptance``: the required functions an organisation in testing has not
        passed (OnboardingService.missing); None: activation is not checked."""
        self._engine = engine
        self._audit = audit
        self._acceptance = acceptance
        self._clock = clock

    # ------------------------------------------------------------------ reads

    def load(self) -> tuple[int, Directory]:
        """The directory in the index, with its version."""
        with UnitOfWork(self._engine, write=False) as uow:
            version = uow.directory.version()
            organizations = [org for org, _ in uow.directory.organizations()]
            nodes = [node for node, _ in uow.directory.nodes()]
        return version, Directory(organizations, nodes)

    def version(self) -> int:
        with UnitOfWork(self._engine, write=False) as uow:
            return uow.directory.version()

    def organization(self, oid: str) -> OrganizationSettings:
        with UnitOfWork(self._engine, write=False) as uow:
            found = uow.directory.organization(oid)
        if found is None:
            raise NotFound(f"no organisation {oid} in the directory")
        return found

    def nodes_of(self, oid: str) -> list[NodeSettings]:
        with UnitOfWork(self._engine, write=False) as uow:
            return uow.directory.nodes_of(oid)

    # ------------------------------------------------------------------ seeding

    def seed(
        self, organizations: Sequence[OrganizationSettings], nodes: Sequence[NodeSettings]
    ) -> int:
        """Bring the file's entries into the index (module docstring); how many
        entries were added, changed or removed."""
        now = self._clock()
        changes = 0
        with UnitOfWork(self._engine) as uow:
            directory = uow.directory
            add = partial(directory.add_entry, origin=CONFIG, now=now)
            put = partial(directory.put_entry, origin=CONFIG, now=now)
            events = _seeded(
                "organization",
                {org.oid: org for org in organizations},
                {org.oid: (org, origin) for org, origin in directory.organizations()},
                (add, put, directory.remove_organization),
            )
            events += _seeded(
                "node",
                {node.ae_title: node for node in nodes},
                {node.ae_title: (node, origin) for node, origin in directory.nodes()},
                (add, put, directory.remove_node),
            )
            if events:
                directory.bump()
                self._record(uow, "configuration file", events)
            uow.commit()
            changes = len(events)
        if changes:
            log.info("directory: %d entr(y/ies) from the configuration file", changes)
        return changes

    # ------------------------------------------------------------------ changes

    def add_organization(self, org: OrganizationSettings, *, by: str) -> None:
        with UnitOfWork(self._engine) as uow:
            if not uow.directory.add_organization(org, origin=RUNTIME, now=self._clock()):
                raise DirectoryError(f"organisation {org.oid} is in the directory already")
            self._check_certificates(uow, org)
            uow.directory.bump()
            self._record(uow, by, [("organization", org.oid, None, org)])
            uow.commit()
        log.info("directory: organisation %s added (%s) by %s", org.oid, org.state, by)

    def set_state(
        self,
        oid: str,
        state: OrganizationState,
        *,
        by: str,
        notice_date: date | None = None,
        force: bool = False,
    ) -> OrganizationSettings:
        """Move an organisation to ``state`` (module docstring); the entry after."""
        today = self._clock().date()
        # Read before the write transaction (the report reads the audit trail).
        active = state is OrganizationState.ACTIVE
        missing = self._acceptance(oid) if active and self._acceptance is not None else []
        with UnitOfWork(self._engine) as uow:
            before = uow.directory.organization(oid)
            if before is None:
                raise NotFound(f"no organisation {oid} in the directory")
            changes: dict[str, object] = {"state": state}
            forced = ""
            if state is OrganizationState.TERMINATED:
                notice = notice_date or before.notice_date
                if notice is None:
                    raise DirectoryError(
                        "termination needs the date written notice was given (--notice-date)"
                    )
                earliest = one_month_after(notice)
                if today < earliest:
                    if not force:
                        raise DirectoryError(
                            f"notice given on {notice}: the one-month notice period ends "
                            f"on {earliest}; --force terminates before it"
                        )
                    forced = f"; forced before the notice period ended on {earliest}"
                changes |= {"notice_date": notice, "termination_date": today}
            elif before.state is OrganizationState.TERMINATED:
                raise DirectoryError(f"organisation {oid} is terminated: it cannot be {state}")
            elif before.state is OrganizationState.TESTING and missing:
                if not force:
                    raise DirectoryError(
                        f"acceptance test not passed: {', '.join(missing)} (kuva onboarding "
                        f"report {oid}); --force activates all the same"
                    )
                forced = f"; forced without passing {', '.join(missing)}"
            after = before.model_copy(update=changes)
            uow.directory.put_organization(after, origin=RUNTIME, now=self._clock())
            uow.directory.bump()
            self._record(uow, by + forced, [("organization", oid, before, after)])
            uow.commit()
        log.info("directory: organisation %s now %s (by %s%s)", oid, state, by, forced)
        return after

    def set_limits(self, oid: str, limits: OrganizationLimits, *, by: str) -> OrganizationSettings:
        """Put ``limits`` (services.limits) on an organisation, in force on every node
        within a second; audited with the entry before and after."""
        with UnitOfWork(self._engine) as uow:
            before = uow.directory.organization(oid)
            if before is None:
                raise NotFound(f"no organisation {oid} in the directory")
            after = before.model_copy(update={"limits": limits})
            uow.directory.put_organization(after, origin=RUNTIME, now=self._clock())
            uow.directory.bump()
            self._record(uow, by, [("organization", oid, before, after)])
            uow.commit()
        log.info("directory: limits of organisation %s now %s (by %s)", oid, limits, by)
        return after

    def add_node(self, node: NodeSettings, *, by: str) -> None:
        with UnitOfWork(self._engine) as uow:
            if node.organization and uow.directory.organization(node.organization) is None:
                raise DirectoryError(
                    f"organisation {node.organization} is not in the directory (kuva orgs add)"
                )
            if not uow.directory.add_node(node, origin=RUNTIME, now=self._clock()):
                raise DirectoryError(f"node {node.ae_title} is in the directory already")
            uow.directory.bump()
            self._record(uow, by, [("node", node.ae_title, None, node)])
            uow.commit()
        log.info("directory: node %s added by %s", node.ae_title, by)

    def remove_node(self, ae_title: str, *, by: str) -> None:
        with UnitOfWork(self._engine) as uow:
            before = uow.directory.node(ae_title)
            if before is None or not uow.directory.remove_node(ae_title):
                raise NotFound(f"no node {ae_title} in the directory")
            uow.directory.bump()
            self._record(uow, by, [("node", ae_title, before, None)])
            uow.commit()
        log.info("directory: node %s removed by %s", ae_title, by)

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _check_certificates(uow: UnitOfWork, org: OrganizationSettings) -> None:
        mine = set(org.subjects())
        for other, _ in uow.directory.organizations():
            if other.oid != org.oid and mine & set(other.subjects()):
                raise DirectoryError(
                    f"a certificate subject of {org.oid} is listed by organisation "
                    f"{other.oid}: a certificate maps to one organisation"
                )

    def _record(
        self,
        uow: UnitOfWork,
        by: str,
        events: Sequence[Change],
    ) -> None:
        if self._audit is None:
            return
        self._audit.record(
            uow,
            [
                self._audit.directory_changed(by, entry, key, _json(before), _json(after))
                for entry, key, before, after in events
            ],
        )


class DirectoryWatcher:
    """Keeps ``settings``' directory in step with the index's (module docstring)."""

    def __init__(
        self,
        service: DirectoryService,
        settings: Settings,
        *,
        interval: float = POLL_SECONDS,
    ) -> None:
        self._service = service
        self._settings = settings
        self._version: int | None = None
        self._periodic = Periodic(
            "kuva-directory",
            self.refresh,
            interval,
            failure="the directory could not be read from the index",
        )

    def refresh(self) -> bool:
        """Put the index's directory in force if it changed; whether it did."""
        if self._service.version() == self._version:
            return False
        version, directory = self._service.load()
        self._settings.use_directory(directory)
        changed = self._version is not None
        self._version = version
        if changed:
            log.info(
                "directory version %d in force: %d organisation(s), %d node(s)",
                version,
                len(directory.organizations),
                len(directory.nodes),
            )
        return True

    def start(self) -> None:
        self._periodic.start()

    def stop(self) -> None:
        self._periodic.stop()
