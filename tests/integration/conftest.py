"""Fixtures for integration tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.query_data import Archive, build_archive
from tests.support.server import KuvaServer


@pytest.fixture
def archive(kuva_server: Callable[..., KuvaServer], tmp_path: Path) -> Archive:
    """A running kuva holding three known studies of two patients."""
    return build_archive(kuva_server, tmp_path)
