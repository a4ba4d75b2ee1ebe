"""The operator console in a real browser: Playwright for Python driving Debian's
chromium, against a running kuva on SQLite and PostgreSQL. It searches a study (by
accession number, and by a name with ä/ö typed in lower case), opens it, sees the
series' thumbnail, opens an image, changes the window and pages frames, retries an
undelivered IAN from the tasks page; a form without its CSRF token and an
organisation that is no operator get 403. Screenshots are kept beside the test's
temporary files (``console-*.png``)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.peers import LOOPBACK, dcmtk_available, storescu
from tests.support.server import KuvaServer, free_port
from tests.support.synthetic import FINNISH_LETTERS_PATIENT_NAME, make_ct_series, write_series

playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed"),
    pytest.mark.skipif(not dcmtk_available(), reason="dcmtk not installed"),
]

HOLDER = "1.2.246.10.12345678.10"
OTHER = "1.2.246.10.87654321.10"
ACCESSION = "ACC-CONSOLE-1"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


def _archive(kuva_server: Callable[..., KuvaServer], organization: str) -> KuvaServer:
    """HTTP clients act for ``organization``; the holder is the operator. IANs go to a
    node where nothing listens, so they wait undelivered."""
    return kuva_server(
        organizations=[{"oid": HOLDER, "name": "Testin sairaala"}, {"oid": OTHER, "name": "Muu"}],
        nodes=[
            {"ae_title": "STORESCU", "organization": HOLDER},
            {"ae_title": "RIS_IAN", "port": free_port(), "organization": HOLDER, "ian": True},
        ],
        extra={
            "http": {"organization": organization},
            "access": {"operators": [HOLDER]},
            "registration": {"enabled": True, "stable_seconds": 1},
        },
    )


def test_an_operator_searches_opens_pages_and_retries(
    kuva_server: Callable[..., KuvaServer], browser: Any, tmp_path: Path
) -> None:
    server = _archive(kuva_server, HOLDER)
    datasets = make_ct_series(
        2, rows=64, cols=64, accession_number=ACCESSION, patient_name=FINNISH_LETTERS_PATIENT_NAME
    )
    result = storescu(write_series(datasets, tmp_path / "ct"), LOOPBACK, server.dicom_port,
                      aet="STORESCU", aec="KUVA")  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<!doctype html>" in httpx.get(f"{server.http}/", follow_redirects=True).text

    page = browser.new_page()
    try:
        page.goto(f"{server.http}/console/studies?q={ACCESSION}")
        page.get_by_role("link", name="Äijälä^Öljy").wait_for()
        page.screenshot(path=str(tmp_path / "console-search.png"))
        # The same study by the start of the name, typed in lower case.
        page.fill("input[name=q]", "äijälä")
        page.keyboard.press("Enter")
        page.get_by_role("link", name="Äijälä^Öljy").click()
        thumbnail = page.locator(".thumbs img").first
        thumbnail.wait_for()
        page.wait_for_function(
            "img => img.complete && img.naturalWidth > 0", arg=thumbnail.element_handle()
        )
        page.screenshot(path=str(tmp_path / "console-study.png"))
        page.locator(".thumbs a").first.click()
        image = page.locator(".viewer img")
        page.wait_for_function(
            "img => img.complete && img.naturalWidth > 0", arg=image.element_handle()
        )
        page.get_by_role("button", name="Lung").click()
        assert "window=-600,1500" in (image.get_attribute("src") or "")
        page.keyboard.press("ArrowRight")  # one frame: paging stays on it
        assert page.locator("[data-frame-label]").inner_text() == "1 / 1"
        page.screenshot(path=str(tmp_path / "console-image.png"))

        # The study's registration queued an IAN to a node that is down.
        page.goto(f"{server.http}/console/tasks")
        retry = page.get_by_role("button", name="Retry all to RIS_IAN").first
        for _ in range(60):
            if retry.count():
                break
            page.wait_for_timeout(500)
            page.reload()
        retry.click()
        page.get_by_role("status").wait_for()
        assert "scheduled again" in page.get_by_role("status").inner_text()
        page.screenshot(path=str(tmp_path / "console-tasks.png"))
    finally:
        page.close()

    # A form without its token is refused.
    assert (
        httpx.post(f"{server.http}/console/tasks/retry", content=b"node=RIS_IAN").status_code == 403
    )


def test_an_organisation_that_is_no_operator_gets_403(
    kuva_server: Callable[..., KuvaServer], browser: Any, tmp_path: Path
) -> None:
    server = _archive(kuva_server, OTHER)
    page = browser.new_page()
    try:
        response = page.goto(f"{server.http}/console/")
        assert response is not None and response.status == 403
        assert "may not use the operator console" in page.inner_text("main")
        page.screenshot(path=str(tmp_path / "console-403.png"))
    finally:
        page.close()
