"""The nodes' undelivered IANs (services.ian_backlog) on SQLite and PostgreSQL: the
metric per node and one log line per threshold crossing."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from sqlalchemy import Engine

from kuva import metrics
from kuva.config import Settings
from kuva.index.uow import UnitOfWork
from kuva.model.directory import NodeSettings
from kuva.services.ian_backlog import IanBacklog
from kuva.services.registration import add_ian
from tests.unit.test_outbox import FakeClock, get

STUDY = "1.2.246.10.12345678.1.1"


def ian(engine: Engine, settings: Settings, node: str, at: FakeClock) -> int:
    with UnitOfWork(engine) as uow:
        pk = add_ian(settings, uow, STUDY, node, {"up_to": 1}, at())
        uow.commit()
    return pk


def gauge(node: str) -> float | None:
    return metrics.REGISTRY.get_sample_value("kuva_ian_undelivered_oldest_seconds", {"node": node})


def test_each_node_backlog_is_measured_and_logged_once_per_crossing(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(
        nodes=[
            NodeSettings(ae_title="RIS", ian=True),
            NodeSettings(ae_title="PACS", ian=True),
            NodeSettings(ae_title="MOD"),
        ]
    )
    clock = FakeClock()
    backlog = IanBacklog(engine, settings, clock=clock)
    caplog.set_level(logging.INFO, logger="kuva.services.ian_backlog")
    assert backlog.check() == {"RIS": timedelta(0), "PACS": timedelta(0)}
    assert gauge("RIS") == 0 and gauge("MOD") is None

    first = ian(engine, settings, "RIS", clock)
    clock.advance(minutes=59)
    assert backlog.check()["RIS"] == timedelta(minutes=59)
    assert gauge("RIS") == 59 * 60 and gauge("PACS") == 0
    assert caplog.records == []

    def logged() -> list[tuple[int, str]]:
        lines = [(r.levelno, r.getMessage()) for r in caplog.records]
        caplog.clear()
        return lines

    clock.advance(minutes=2)
    for _ in range(3):
        backlog.check()
    ((level, line),) = logged()
    assert level == logging.WARNING
    assert line.startswith("node RIS has not taken an IAN for 1.0 h")
    assert "kuva tasks retry --node RIS" in line and STUDY not in line

    clock.advance(hours=23)
    backlog.check()
    backlog.check()
    assert [level for level, _ in logged()] == [logging.ERROR]

    # A newer IAN of the study supersedes the undelivered one: nothing that old waits.
    newer = ian(engine, settings, "RIS", clock)
    assert (get(engine, first).status, get(engine, newer).status) == ("superseded", "pending")
    assert backlog.check()["RIS"] == timedelta(0)
    assert logged() == [
        (logging.INFO, "node RIS has no undelivered IAN older than an hour any more")
    ]
    clock.advance(hours=2)
    backlog.check()
    assert [level for level, _ in logged()] == [logging.WARNING]  # crossed again
    assert gauge("RIS") == 2 * 3600
