"""The acceptance test of a customer in testing (services.onboarding), SQLite and
PostgreSQL: its systems work against a running archive with real clients - dcmtk's
storescu, findscu and getscu, pynetdicom's storage commitment, python-hl7's MLLP
client - and the report shows each of those functions passed, with audit record
ids and times; its IAN receiver is down, so ``ian`` failed and says why; what it
never did is not-run. Activation is refused until the required functions pass, and
``--force`` is audited."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.uid import CTImageStorage

from tests.support.commitment_scu import CommitmentSCU
from tests.support.hl7 import MERGED, SURVIVOR, Hl7Site, adt, mrg, msa, pid
from tests.support.peers import dcmtk_available
from tests.support.server import KuvaServer, free_port
from tests.support.synthetic import make_ct_series

pytestmark = pytest.mark.skipif(not dcmtk_available(), reason="dcmtk not installed")

HOLDER = "1.2.246.10.12345678.10"
CLINIC_ORG = "1.2.246.10.55555555.10"
DONE_BY_THE_CLINIC = (
    "archive", "query", "retrieve", "commitment", "name-update", "patient-merge",
)  # fmt: skip


def _report(server: KuvaServer) -> dict[str, Any]:
    shown = server.kuva("onboarding", "report", CLINIC_ORG, "--format", "json", check=False)
    assert shown.returncode in (0, 1), shown.stdout + shown.stderr
    report: dict[str, Any] = json.loads(shown.stdout)
    return report


def _functions(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["id"]: f for f in report["functions"]}


def test_an_acceptance_run_with_real_clients(
    kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path
) -> None:
    dead_ian_port = free_port()  # nothing listens there: the clinic's IAN receiver is down
    server = kuva_server(
        organizations=[
            {"oid": HOLDER, "name": "Testin sairaala"},
            {"oid": CLINIC_ORG, "name": "Test Clinic", "state": "testing"},
        ],
        nodes=[
            {"ae_title": "STORESCU", "organization": HOLDER},
            {"ae_title": "CLINIC", "organization": CLINIC_ORG},
            {
                "ae_title": "CLINIC_IAN",
                "host": "127.0.0.1",
                "port": dead_ian_port,
                "organization": CLINIC_ORG,
                "ian": True,
            },
        ],
        extra={
            "registration": {"enabled": True, "stable_seconds": 1},
            "access": {"operators": [HOLDER]},
            "http": {"organization": HOLDER},
        },
    )
    before = _functions(_report(server))
    assert {f["status"] for f in before.values()} == {"not-run"}
    assert before["ian"]["required"] is True

    site = Hl7Site(server, database_url, tmp_path)
    study = site.store(SURVIVOR, aet="CLINIC")  # archive
    site.store(MERGED, aet="CLINIC")
    assert site.find_study(study, aet="CLINIC").PatientID == SURVIVOR  # query
    assert site.getscu(study, aet="CLINIC")  # retrieve
    scu = CommitmentSCU("CLINIC")  # commitment, its report on the same association
    assoc = scu.associate(server.dicom_port, storage=[CTImageStorage])
    [ds] = make_ct_series(1, rows=16, cols=16, patient_id=SURVIVOR)
    assert assoc.send_c_store(ds).Status == 0x0000
    status, _ = scu.request(assoc, [(str(ds.SOPClassUID), str(ds.SOPInstanceUID))])
    assert status == 0x0000
    scu.wait_report(timeout=30)
    assoc.release()
    ack = site.mllp_send(adt("A08", pid(SURVIVOR, "Korjattu^Maija"), organization=CLINIC_ORG))
    assert msa(ack)[0] == "AA", ack  # name-update
    ack = site.mllp_send(adt("A40", pid(SURVIVOR), mrg(MERGED), organization=CLINIC_ORG))
    assert msa(ack)[0] == "AA", ack  # patient-merge

    deadline = time.monotonic() + 60
    while (report := _report(server)) and _functions(report)["ian"]["status"] != "failed":
        assert time.monotonic() < deadline, _functions(report)["ian"]
        time.sleep(0.5)
    functions = _functions(report)
    for name in DONE_BY_THE_CLINIC:
        assert functions[name]["status"] == "passed", functions[name]
        evidence = functions[name]["evidence"]
        assert evidence and all(e["ok"] and e["time"].endswith("Z") for e in evidence)
    assert functions["archive"]["evidence"][0]["source"] == "audit"
    assert "CLINIC_IAN" in functions["ian"]["reason"], functions["ian"]
    for name in ("metadata-correction", "content-correction", "report-search", "image-search",
                 "image-retrieve", "disclosure-notice"):  # fmt: skip
        assert functions[name]["status"] == "not-run", functions[name]
    assert report["state"] == "testing" and "ian" in report["missing"]

    # The admin API gives the same; the HTML page names every function.
    served = httpx.get(f"{server.http}/admin/onboarding/{CLINIC_ORG}", timeout=30).json()
    assert {f["id"]: f["status"] for f in served["functions"]} == {
        name: f["status"] for name, f in functions.items()
    }
    html = server.kuva("onboarding", "report", CLINIC_ORG, "--format", "html", check=False).stdout
    assert html.startswith("<!doctype html>") and html.count("<tr>") == len(functions) + 1

    # Activation waits for the acceptance test; --force is audited.
    refused = server.kuva("orgs", "activate", CLINIC_ORG, check=False)
    assert refused.returncode == 1 and "acceptance test not passed" in refused.stdout
    server.kuva("orgs", "activate", CLINIC_ORG, "--force", "--by", "operator1")
    assert "\tactive\t" in server.kuva("orgs", "list", "--plain").stdout
    alerts = server.kuva("audit", "list", "--event", "110113", "--xml").stdout
    assert "forced without passing" in alerts
