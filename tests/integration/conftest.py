"""Fixtures for integration tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.query_data import Archive, build_archive
from tests.support.server import KuvaServer
from tests.support.site import Site, close_site, start_site


@pytest.fixture
def archive(kuva_server: Callable[..., KuvaServer], tmp_path: Path) -> Archive:
    """A running kuva holding three known studies of two patients."""
    return build_archive(kuva_server, tmp_path)


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
