"""The operator console in a real browser: Playwright for Python driving Debian's
chromium, against a running kuva on SQLite and PostgreSQL. It searches a study (by
accession number, and by a name with ä/ö typed in lower case), opens it, sees the
series' thumbnail, opens an image, changes the window and pages the frames of a
multi-frame object, retries an undelivered IAN from the tasks page, sets and
releases a legal hold, filters the disclosure log and exports it as CSV, reads an
organisation's acceptance report, sets and lifts a disclosure prohibition, and
filters and verifies the audit trail; a form
without its CSRF token and an organisation that is no operator get 403. Screenshots
(``console-*.png``) are kept in the test's folder, and in ``$KUVA_TEST_ARTEFACTS``
when that names a folder."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from tests.support.disclosures import cx, notice
from tests.support.peers import LOOPBACK, dcmtk_available, storescu
from tests.support.server import KuvaServer, free_port
from tests.support.synthetic import (
    DEFAULT_PATIENT_ID,
    FINNISH_LETTERS_PATIENT_NAME,
    make_ct_series,
    make_multiframe,
    write_series,
)

playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed"),
    pytest.mark.skipif(not dcmtk_available(), reason="dcmtk not installed"),
]

HOLDER = "1.2.246.10.12345678.10"
OTHER = "1.2.246.10.87654321.10"
ACCESSION = "ACC-CONSOLE-1"


def shot(page: Any, tmp_path: Path, name: str) -> None:
    """A screenshot in the test's folder and, when KUVA_TEST_ARTEFACTS names a
    folder, there too (kept after the run)."""
    page.screenshot(path=str(tmp_path / name))
    folder = os.environ.get("KUVA_TEST_ARTEFACTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / name, Path(folder) / f"{tmp_path.name}-{name}")


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
    # An association held open is counted on the overview.
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate(LOOPBACK, server.dicom_port, ae_title="KUVA")
    assert assoc.is_established
    try:
        overview = httpx.get(f"{server.http}/", follow_redirects=True).text
    finally:
        assoc.release()
    assert "<!doctype html>" in overview and "continuous integrity check" in overview
    counted = re.search(r"<b>(\d+)</b>DICOM associations open", overview)
    assert counted is not None and int(counted.group(1)) >= 1, overview

    page = browser.new_page()
    try:
        page.goto(f"{server.http}/console/studies?q={ACCESSION}")
        page.get_by_role("link", name="Äijälä^Öljy").wait_for()
        shot(page, tmp_path, "console-search.png")
        # The same study by the start of the name, typed in lower case.
        page.fill("input[name=q]", "äijälä")
        page.keyboard.press("Enter")
        page.get_by_role("link", name="Äijälä^Öljy").click()
        thumbnail = page.locator(".thumbs img").first
        thumbnail.wait_for()
        page.wait_for_function(
            "img => img.complete && img.naturalWidth > 0", arg=thumbnail.element_handle()
        )
        # The study's register holder and its registration task.
        assert page.get_by_role("cell", name=HOLDER).count() == 1
        assert page.get_by_role("cell", name="study-registration").count() >= 1
        shot(page, tmp_path, "console-study.png")
        page.locator(".thumbs a").first.click()
        image = page.locator(".viewer img")
        page.wait_for_function(
            "img => img.complete && img.naturalWidth > 0", arg=image.element_handle()
        )
        page.get_by_role("button", name="Lung").click()
        assert "window=-600,1500" in (image.get_attribute("src") or "")
        page.keyboard.press("ArrowRight")  # one frame: paging stays on it
        assert page.locator("[data-frame-label]").inner_text() == "1 / 1"
        shot(page, tmp_path, "console-image.png")

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
        shot(page, tmp_path, "console-tasks.png")
    finally:
        page.close()

    # Frames of a multi-frame object, paged with the keyboard.
    multiframe = make_multiframe(tmp_path / "mf.dcm", 4 * 32 * 32 * 2, rows=32, cols=32)
    result = storescu([multiframe], LOOPBACK, server.dicom_port, aet="STORESCU", aec="KUVA")
    assert result.returncode == 0, result.stdout + result.stderr
    mf = pydicom.dcmread(multiframe, stop_before_pixels=True)
    page = browser.new_page()
    try:
        page.goto(
            f"{server.http}/console/studies/{mf.StudyInstanceUID}/series/"
            f"{mf.SeriesInstanceUID}/instances/{mf.SOPInstanceUID}"
        )
        label = page.locator("[data-frame-label]")
        assert label.inner_text() == f"1 / {mf.NumberOfFrames}"
        page.keyboard.press("ArrowRight")
        page.keyboard.press("ArrowRight")
        assert label.inner_text() == f"3 / {mf.NumberOfFrames}"
        image = page.locator(".viewer img")
        assert "/frames/3/rendered" in (image.get_attribute("src") or "")
        page.wait_for_function(
            "img => img.complete && img.naturalWidth > 0", arg=image.element_handle()
        )

        # A legal hold set and released from the retention page.
        study = str(datasets[0].StudyInstanceUID)
        page.goto(f"{server.http}/console/retention")
        page.fill("input[name=study]", study)
        page.fill("input[name=reason]", "court order 123")
        page.get_by_role("button", name="Set hold").click()
        assert "held" in page.get_by_role("status").inner_text()
        assert page.get_by_role("cell", name="court order 123").count() == 1
        page.get_by_role("button", name="Release").click()
        assert "1 hold(s)" in page.get_by_role("status").inner_text()
        shot(page, tmp_path, "console-retention.png")
        # The study's page keeps the hold's history among its corrections.
        page.goto(f"{server.http}/console/studies/{study}")
        assert page.get_by_role("cell", name="legal-hold", exact=True).count() == 1
        assert page.get_by_role("cell", name="legal-hold-release").count() == 1
        # The search by register holder.
        page.goto(f"{server.http}/console/studies?q={ACCESSION}&organization={OTHER}")
        assert page.get_by_text("no study matches").count() == 1
        page.goto(f"{server.http}/console/studies?q={ACCESSION}&organization={HOLDER}")
        assert page.get_by_role("link", name="Äijälä^Öljy").count() == 1

        # The disclosure log of a patient, filtered and exported.
        told = httpx.post(
            f"{server.http}/disclosures/notices",
            json=notice(
                DEFAULT_PATIENT_ID, "2026-11-30T10:00:00Z", studies=[study], recipient=OTHER
            ),
            timeout=30,
        )
        assert told.status_code == 201, told.text
        page.goto(f"{server.http}/console/disclosures")
        page.fill("input[name=patient]", cx(DEFAULT_PATIENT_ID))
        page.fill("input[name=from]", "2026-11-01")
        page.get_by_role("button", name="Show").click()
        assert page.get_by_role("cell", name=OTHER).count() == 1
        with page.expect_download() as download:
            page.get_by_role("link", name="Export as CSV").click()
        exported = Path(download.value.path()).read_text()
        assert exported.startswith("disclosed_at,recipient_organization")
        assert OTHER in exported and DEFAULT_PATIENT_ID in exported
        page.fill("input[name=organization]", "1.2.246.10.11111111.10")  # neither party
        page.get_by_role("button", name="Show").click()
        assert page.get_by_text("no disclosures in this period").count() == 1
        page.fill("input[name=organization]", OTHER)
        page.get_by_role("button", name="Show").click()
        assert page.get_by_role("cell", name=OTHER).count() == 1
        # Without a patient: the organisation's disclosures over the period.
        page.fill("input[name=patient]", "")
        page.get_by_role("button", name="Show").click()
        assert page.get_by_role("cell", name=OTHER).count() == 1
        page.fill("input[name=patient]", cx(DEFAULT_PATIENT_ID))
        page.fill("input[name=from]", "2026-12-01")  # after the disclosure: none
        page.get_by_role("button", name="Show").click()
        assert page.get_by_text("no disclosures in this period").count() == 1
        shot(page, tmp_path, "console-disclosures.png")

        # A patient's disclosure prohibition set and lifted.
        page.goto(f"{server.http}/console/prohibitions")
        page.fill("input[name=patient]", cx(DEFAULT_PATIENT_ID))
        page.get_by_role("button", name="Look up").click()
        page.fill("input[name=reason]", "patient's request")
        page.get_by_role("button", name="Prohibit disclosure").click()
        assert page.get_by_role("status").inner_text() == "prohibition set"
        assert "patient's request" in page.inner_text("main")
        page.get_by_role("button", name="Lift the prohibition").click()
        assert page.get_by_role("status").inner_text() == "prohibition lifted"
        shot(page, tmp_path, "console-prohibitions.png")

        # The directory and an organisation's acceptance report.
        page.goto(f"{server.http}/console/organisations")
        page.get_by_role("link", name=HOLDER).click()
        assert page.locator("tbody tr").count() == 13
        shot(page, tmp_path, "console-organisation.png")

        # The audit trail, filtered by who, and its chain verified on demand.
        page.goto(f"{server.http}/console/audit")
        page.fill("input[name=who]", "STORESCU")
        page.get_by_role("button", name="Filter").click()
        assert page.locator("tbody tr").count() >= 1
        assert all("STORESCU" in row for row in page.locator("tbody tr").all_inner_texts())
        page.get_by_role("button", name="Verify the chain").click()
        assert "audit trail intact" in page.get_by_role("status").inner_text()
        shot(page, tmp_path, "console-audit.png")
        # The verification is kept: the overview says when the chain was found intact.
        page.goto(f"{server.http}/console/")
        assert "intact" in page.locator("#audit-chain").inner_text()
        shot(page, tmp_path, "console-overview.png")
    finally:
        page.close()

    # An integrity problem on the overview: a blob gone, found by kuva verify.
    blob = next(path for path in server.blob_dir.rglob("sha256/*/*/*") if path.is_file())
    blob.unlink()
    assert server.kuva("verify", check=False).returncode == 1
    overview = httpx.get(f"{server.http}/console/", timeout=30).text
    section = overview.split("Integrity problems")[1].split("Outbox")[0]
    assert "the latest 1" in section and "missing" in section.lower(), section

    # A form without its token is refused; an unknown study is a 404 page.
    retried = httpx.post(f"{server.http}/console/tasks/retry", content=b"node=RIS_IAN")
    assert retried.status_code == 403
    second = httpx.get(
        f"{server.http}/console/studies", params={"q": ACCESSION, "page": "1"}, timeout=10
    ).text
    assert "0 studies on page 2" in second and "Previous page" in second
    assert "Next page" not in second
    missing = httpx.get(f"{server.http}/console/studies/1.2.3", timeout=10)
    assert missing.status_code == 404 and "No such study" in missing.text


def test_an_organisation_that_is_no_operator_gets_403(
    kuva_server: Callable[..., KuvaServer], browser: Any, tmp_path: Path
) -> None:
    server = _archive(kuva_server, OTHER)
    page = browser.new_page()
    try:
        response = page.goto(f"{server.http}/console/")
        assert response is not None and response.status == 403
        assert "may not use the operator console" in page.inner_text("main")
        shot(page, tmp_path, "console-403.png")
    finally:
        page.close()
