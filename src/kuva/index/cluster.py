"""Repository of the cluster's nodes: one row per ``kuva serve`` sharing the index,
kept fresh by its heartbeat (services.cluster)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, delete, or_, select, update

from kuva.index.dialect import insert_ignoring_conflict
from kuva.index.schema import cluster_duty, cluster_node


@dataclass(frozen=True)
class ClusterNode:
    name: str
    version: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    interval_seconds: float
    duties: tuple[str, ...]

    def alive(self, now: datetime) -> bool:
        """Beat within three of its intervals (a missed beat or two is no death)."""
        return (now - self.heartbeat_at).total_seconds() <= 3 * self.interval_seconds


class ClusterRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def beat(
        self,
        name: str,
        *,
        version: str,
        pid: int,
        started_at: datetime,
        interval_seconds: float,
        duties: Sequence[str],
        now: datetime,
    ) -> None:
        """This node is alive now (its row made on the first beat, or taken over
        from an earlier process of the same name)."""
        values = {
            "version": version,
            "pid": pid,
            "started_at": started_at,
            "heartbeat_at": now,
            "interval_seconds": interval_seconds,
            "duties": ",".join(duties),
        }
        updated = self.conn.execute(
            update(cluster_node).where(cluster_node.c.name == name).values(**values)
        )
        if updated.rowcount == 0:
            self.conn.execute(cluster_node.insert().values(name=name, **values))

    def leave(self, name: str, pid: int) -> None:
        """This node stopped (only its own row: a restarted process may own it now)."""
        self.conn.execute(
            delete(cluster_node).where(cluster_node.c.name == name, cluster_node.c.pid == pid)
        )

    def nodes(self) -> list[ClusterNode]:
        rows = self.conn.execute(select(cluster_node).order_by(cluster_node.c.name))
        return [
            ClusterNode(
                name=row.name,
                version=row.version,
                pid=int(row.pid),
                started_at=row.started_at,
                heartbeat_at=row.heartbeat_at,
                interval_seconds=float(row.interval_seconds),
                duties=tuple(d for d in row.duties.split(",") if d),
            )
            for row in rows
        ]

    def take_duty(self, duty: str, node: str, *, now: datetime, seconds: float) -> bool:
        """Hold ``duty`` for ``seconds`` from ``now``: True when ``node`` holds it
        already (renewed) or its holder's time has passed (taken over), or nobody
        had it; False while another node holds it."""
        until = now + timedelta(seconds=seconds)
        renewed = self.conn.execute(
            update(cluster_duty)
            .where(
                cluster_duty.c.name == duty,
                or_(cluster_duty.c.node == node, cluster_duty.c.until < now),
            )
            .values(node=node, until=until)
        )
        if renewed.rowcount:
            return True
        added = insert_ignoring_conflict(
            self.conn, cluster_duty, {"name": duty, "node": node, "until": until}, ["name"]
        )
        return added is not None
