"""index.cluster on SQLite and PostgreSQL: heartbeats and duties one node at a time runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from kuva.index.uow import UnitOfWork

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def take(engine: Engine, node: str, now: datetime, seconds: float = 60.0) -> bool:
    with UnitOfWork(engine) as uow:
        taken = uow.cluster.take_duty("retention", node, now=now, seconds=seconds)
        uow.commit()
    return taken


def test_a_duty_is_held_by_one_node_until_its_time_passes(engine: Engine) -> None:
    assert take(engine, "node-a", NOW)  # nobody had it
    assert not take(engine, "node-b", NOW + timedelta(seconds=30))  # a holds it
    assert take(engine, "node-a", NOW + timedelta(seconds=50))  # a renews it
    assert not take(engine, "node-b", NOW + timedelta(seconds=100))  # until 110 s
    assert take(engine, "node-b", NOW + timedelta(seconds=111))  # a is late: b takes over
    assert not take(engine, "node-a", NOW + timedelta(seconds=120))


def test_heartbeats_list_nodes_and_their_age(engine: Engine) -> None:
    with UnitOfWork(engine) as uow:
        for name in ("node-b", "node-a"):
            uow.cluster.beat(
                name,
                version="0.1.0",
                pid=42,
                started_at=NOW,
                interval_seconds=10.0,
                duties=["tasks", "retention"],
                now=NOW,
            )
        uow.cluster.beat(
            "node-a", version="0.1.0", pid=42, started_at=NOW, interval_seconds=10.0,
            duties=["tasks"], now=NOW + timedelta(seconds=25),
        )  # fmt: skip
        uow.commit()
    with UnitOfWork(engine, write=False) as uow:
        nodes = uow.cluster.nodes()
    assert [n.name for n in nodes] == ["node-a", "node-b"]
    later = NOW + timedelta(seconds=31)
    assert [n.alive(later) for n in nodes] == [True, False]  # b: three beats missed
    assert nodes[0].duties == ("tasks",)
    with UnitOfWork(engine) as uow:
        uow.cluster.leave("node-b", pid=7)  # another process's row: kept
        uow.cluster.leave("node-a", pid=42)
        uow.commit()
    with UnitOfWork(engine, write=False) as uow:
        assert [n.name for n in uow.cluster.nodes()] == ["node-b"]
