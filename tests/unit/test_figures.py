"""services.figures on SQLite and PostgreSQL: the storage used and the audit chain's
verification, computed in the background and kept with their time; the duty keeps
a second node from computing them at once."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine

from kuva.app import build_audit
from kuva.config import Settings
from kuva.index.uow import UnitOfWork
from kuva.services.figures import AUDIT_CHAIN, STORAGE, FiguresJob
from tests.unit.test_index import attributes, new_instance

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def test_storage_and_chain_figures(engine: Engine, tmp_path: Path) -> None:
    settings = Settings(archive={"data_dir": str(tmp_path), "database_url": str(engine.url)})
    audit = build_audit(settings, engine)
    audit.application_started()
    with UnitOfWork(engine) as uow:
        for n in (1, 2):
            uow.instances.add(new_instance(attributes(n)))
        uow.commit()
    taken: list[float] = []
    job = FiguresJob(
        engine, audit, duty=lambda seconds: bool(taken.append(seconds)), clock=lambda: NOW
    )
    job.run()  # another node holds the duty: nothing computed
    assert taken and _figures(engine) == {}
    job = FiguresJob(engine, audit, clock=lambda: NOW)
    job.run()
    figures = _figures(engine)
    assert figures[STORAGE] == ({"instances": 2, "bytes": 1001 + 1002}, NOW)
    assert figures[AUDIT_CHAIN][0] == {"records": 1, "breaks": 0, "first": ""}
    job.count_storage(NOW)  # computed again: replaced, not added
    assert len(_figures(engine)) == 2


def _figures(engine: Engine) -> dict[str, object]:
    with UnitOfWork(engine, write=False) as uow:
        return dict(uow.overview.figures())
