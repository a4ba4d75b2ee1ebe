"""Per-organisation limits (services.limits): the token bucket of requests per
second, association slots shared by processes and given back when one dies, and the
limits kept in the directory (seeded from the file, changed at runtime, audited)."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest
from sqlalchemy import Engine

from kuva.config import Settings
from kuva.model.directory import OrganizationLimits, OrganizationSettings
from kuva.services.limits import OrganizationLimiter
from tests.unit.test_directory import service

LIMITED = "1.2.246.10.11111111.10"
FREE = "1.2.246.10.22222222.10"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def limiter(tmp_path: Path, clock: Clock | None = None, **limits: object) -> OrganizationLimiter:
    settings = Settings.model_validate(
        {
            "archive": {"data_dir": str(tmp_path)},
            "organizations": [
                {"oid": LIMITED, "name": "Limited", "limits": limits},
                {"oid": FREE, "name": "Free"},
            ],
        }
    )
    return OrganizationLimiter(settings, tmp_path / "slots", clock=clock or Clock())


def test_requests_per_second_allow_a_burst_then_the_rate(tmp_path: Path) -> None:
    clock = Clock()
    limits = limiter(tmp_path, clock, requests_per_second=2)
    assert [limits.request(LIMITED, "http") for _ in range(2)] == [0.0, 0.0]
    wait = limits.request(LIMITED, "http")
    assert wait == pytest.approx(0.5)
    clock.now += 0.5
    assert limits.request(LIMITED, "http") == 0.0
    assert limits.request(LIMITED, "hl7") > 0  # one bucket for every protocol
    clock.now += 10  # a long pause fills the bucket to one second's worth, no more
    assert [limits.request(LIMITED, "dimse") for _ in range(3)][-1] > 0
    # Others and the unknown are not counted.
    assert all(limits.request(FREE, "http") == 0.0 for _ in range(100))
    assert limits.request(None, "http") == 0.0
    assert limits.request("1.2.3.4", "http") == 0.0


def test_a_slow_rate_still_allows_one_request(tmp_path: Path) -> None:
    clock = Clock()
    limits = limiter(tmp_path, clock, requests_per_second=0.5)
    assert limits.request(LIMITED, "http") == 0.0
    assert limits.request(LIMITED, "http") == pytest.approx(2.0)


def _hold(slots: Path, ready: multiprocessing.synchronize.Event) -> None:
    """In another process: take a slot, then die holding it."""
    limits = limiter(slots.parent, associations=1)
    slot = limits.open_association(LIMITED)
    assert slot is not None
    ready.set()
    os._exit(0)  # the slot's descriptor closes with the process


def test_association_slots(tmp_path: Path) -> None:
    limits = limiter(tmp_path, associations=2)
    first, second = limits.open_association(LIMITED), limits.open_association(LIMITED)
    assert first is not None and second is not None
    assert limits.open_association(LIMITED) is None
    first.release()
    first.release()  # idempotent
    third = limits.open_association(LIMITED)
    assert third is not None
    assert all(limits.open_association(FREE) is not None for _ in range(10))
    second.release()
    third.release()


def test_a_process_that_dies_gives_its_slots_back(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    child = context.Process(target=_hold, args=(tmp_path / "slots", ready))
    child.start()
    assert ready.wait(10)
    child.join(10)
    # Another process (this one) takes the only slot the dead one held.
    limits = limiter(tmp_path, associations=1)
    slot = limits.open_association(LIMITED)
    assert slot is not None
    assert limits.open_association(LIMITED) is None
    slot.release()


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError):
        OrganizationLimits(associations=0)
    with pytest.raises(ValueError):
        OrganizationLimits(requests_per_second=0)
    with pytest.raises(ValueError):
        OrganizationLimits(request_bytes=10)
    with pytest.raises(ValueError):
        OrganizationLimits.model_validate({"connections": 3})


def test_limits_live_in_the_directory(engine: Engine) -> None:
    directory = service(engine)
    seeded = OrganizationSettings(
        oid=LIMITED, name="Limited", limits=OrganizationLimits(associations=3)
    )
    directory.seed([seeded], [])
    assert directory.organization(LIMITED).limits.associations == 3
    after = directory.set_limits(
        LIMITED, OrganizationLimits(requests_per_second=20.5), by="operator"
    )
    assert after.limits == OrganizationLimits(requests_per_second=20.5)
    _, snapshot = directory.load()
    found = snapshot.organization(LIMITED)
    assert found is not None and found.limits.requests_per_second == 20.5
    assert directory.seed([seeded], []) == 0  # changed at runtime: the index owns it
