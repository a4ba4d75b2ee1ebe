"""Repository of the directory: customer organisations and their DICOM nodes
(services.directory), and the version counter every node polls."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Connection, delete, select, update

from kuva.index.dialect import insert_ignoring_conflict
from kuva.index.schema import directory_node, directory_organization, directory_version
from kuva.model.directory import NodeSettings, OrganizationSettings

Origin = Literal["config", "runtime"]
CONFIG: Origin = "config"
RUNTIME: Origin = "runtime"

# Kept as JSON text: the lists, and the limits (model.directory.OrganizationLimits).
_ORGANIZATION_LISTS = ("contacts", "certificates", "limits")
_BOOKKEEPING = ("origin", "created_at", "updated_at")


def _organization(row: Any) -> OrganizationSettings:
    values = {k: v for k, v in row._mapping.items() if k not in _BOOKKEEPING}
    for key in _ORGANIZATION_LISTS:
        values[key] = json.loads(values[key])
    return OrganizationSettings.model_validate(values)


def _node(row: Any) -> NodeSettings:
    return NodeSettings.model_validate(
        {k: v for k, v in row._mapping.items() if k not in _BOOKKEEPING}
    )


def organization_values(org: OrganizationSettings) -> dict[str, Any]:
    values = org.model_dump()
    values["state"] = str(org.state)
    for key in _ORGANIZATION_LISTS:
        values[key] = json.dumps(values[key], ensure_ascii=False)
    return values


def node_values(node: NodeSettings) -> dict[str, Any]:
    return node.model_dump()


class DirectoryRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    # ------------------------------------------------------------------ version

    def version(self) -> int:
        """The directory's version: one more for every committed change."""
        found = self.conn.execute(
            select(directory_version.c.version).where(directory_version.c.id == 1)
        ).scalar_one_or_none()
        return int(found or 0)

    def bump(self) -> None:
        """Count a change (in the change's transaction; the row lock orders writers)."""
        self.conn.execute(
            update(directory_version)
            .where(directory_version.c.id == 1)
            .values(version=directory_version.c.version + 1)
        )

    # ------------------------------------------------------------------ reads

    def organizations(self) -> list[tuple[OrganizationSettings, Origin]]:
        rows = self.conn.execute(
            select(directory_organization).order_by(directory_organization.c.oid)
        )
        return [(_organization(row), row.origin) for row in rows]

    def nodes(self) -> list[tuple[NodeSettings, Origin]]:
        rows = self.conn.execute(select(directory_node).order_by(directory_node.c.ae_title))
        return [(_node(row), row.origin) for row in rows]

    def organization(self, oid: str) -> OrganizationSettings | None:
        row = self.conn.execute(
            select(directory_organization).where(directory_organization.c.oid == oid)
        ).first()
        return _organization(row) if row is not None else None

    def node(self, ae_title: str) -> NodeSettings | None:
        row = self.conn.execute(
            select(directory_node).where(directory_node.c.ae_title == ae_title)
        ).first()
        return _node(row) if row is not None else None

    def nodes_of(self, oid: str) -> list[NodeSettings]:
        rows = self.conn.execute(
            select(directory_node)
            .where(directory_node.c.organization == oid)
            .order_by(directory_node.c.ae_title)
        )
        return [_node(row) for row in rows]

    # ------------------------------------------------------------------ writes

    def add_organization(self, org: OrganizationSettings, *, origin: Origin, now: datetime) -> bool:
        """Insert unless the OID is there; whether it was inserted."""
        values = {**organization_values(org), "origin": origin, "created_at": now}
        inserted = insert_ignoring_conflict(
            self.conn, directory_organization, {**values, "updated_at": now}, ["oid"]
        )
        return inserted is not None

    def put_organization(self, org: OrganizationSettings, *, origin: Origin, now: datetime) -> None:
        self.conn.execute(
            update(directory_organization)
            .where(directory_organization.c.oid == org.oid)
            .values(**organization_values(org), origin=origin, updated_at=now)
        )

    def remove_organization(self, oid: str) -> bool:
        result = self.conn.execute(
            delete(directory_organization).where(directory_organization.c.oid == oid)
        )
        return bool(result.rowcount)

    def add_node(self, node: NodeSettings, *, origin: Origin, now: datetime) -> bool:
        values = {**node_values(node), "origin": origin, "created_at": now, "updated_at": now}
        return insert_ignoring_conflict(self.conn, directory_node, values, ["ae_title"]) is not None

    def put_node(self, node: NodeSettings, *, origin: Origin, now: datetime) -> None:
        self.conn.execute(
            update(directory_node)
            .where(directory_node.c.ae_title == node.ae_title)
            .values(**node_values(node), origin=origin, updated_at=now)
        )

    def add_entry(
        self, entry: OrganizationSettings | NodeSettings, *, origin: Origin, now: datetime
    ) -> bool:
        """``add_organization`` or ``add_node``, by what ``entry`` is."""
        if isinstance(entry, OrganizationSettings):
            return self.add_organization(entry, origin=origin, now=now)
        return self.add_node(entry, origin=origin, now=now)

    def put_entry(
        self, entry: OrganizationSettings | NodeSettings, *, origin: Origin, now: datetime
    ) -> None:
        """``put_organization`` or ``put_node``, by what ``entry`` is."""
        if isinstance(entry, OrganizationSettings):
            self.put_organization(entry, origin=origin, now=now)
        else:
            self.put_node(entry, origin=origin, now=now)

    def remove_node(self, ae_title: str) -> bool:
        result = self.conn.execute(
            delete(directory_node).where(directory_node.c.ae_title == ae_title)
        )
        return bool(result.rowcount)
