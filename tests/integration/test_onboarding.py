"""The acceptance test of a customer in testing (services.onboarding), SQLite and
PostgreSQL: its systems work against a running archive with real clients - dcmtk's
storescu, findscu and getscu, pynetdicom's storage commitment, IOCM rejection notes
made with highdicom, python-hl7's MLLP client, ITI-18 and RAD-69 SOAP requests
built from the NIST samples, a disclosure notice over HTTP - and the report shows
each function passed, with its evidence; its IAN receiver is down, so ``ian``
failed and says why. Activation is refused until the required functions pass, and
``--force`` is audited."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from lxml import etree
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, generate_uid

from kuva.xds.namespaces import NSMAP, REGISTRY_STORED_QUERY, RETRIEVE_IMAGING_DOCUMENT_SET, q
from tests.integration.test_xds import rad69_request
from tests.support.commitment_scu import CommitmentSCU
from tests.support.disclosures import notice
from tests.support.hl7 import MERGED, SURVIVOR, Hl7Site, adt, mrg, msa, pid
from tests.support.iocm import INCORRECT_WORKLIST_ENTRY, QUALITY, rejection_note
from tests.support.peers import LOOPBACK, dcmtk_available, storescu
from tests.support.server import KuvaServer, free_port
from tests.support.synthetic import FINNISH_PIC_ISSUER, make_ct_series, write_series
from tests.unit.test_ebrim import sample_payload
from tests.unit.test_repository import answer_of, soap_envelope

pytestmark = pytest.mark.skipif(not dcmtk_available(), reason="dcmtk not installed")

HOLDER = "1.2.246.10.12345678.10"
CLINIC_ORG = "1.2.246.10.55555555.10"
DONE_BY_THE_CLINIC = (
    "archive", "query", "retrieve", "commitment", "name-update", "patient-merge",
    "metadata-correction", "content-correction", "report-search", "image-search",
    "image-retrieve", "disclosure-notice",
)  # fmt: skip
KOS_FORMAT = "1.2.840.10008.5.1.4.1.1.88.59^^1.2.840.10008.2.6.1"


def _soap(server: KuvaServer, path: str, action: str, payload: Any) -> Any:
    response = httpx.post(
        server.http + path,
        content=soap_envelope(action, payload, CLINIC_ORG),
        headers={"content-type": "application/soap+xml; charset=UTF-8"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return answer_of(response)[0]


def _find_documents(server: KuvaServer, *, manifests: bool) -> None:
    """ITI-18 FindDocuments of the clinic's patient; for manifests, by the KOS format
    code (XDS-I.b)."""
    payload = sample_payload("iti18-FindDocuments-request.xml")
    for value in payload.iter("{*}Value"):
        if value.text and "$patient_id$" in value.text:
            value.text = value.text.replace(
                "$patient_id$", f"{SURVIVOR}^^^&{FINNISH_PIC_ISSUER}&ISO"
            )
    if manifests:
        query = payload.find(".//rim:AdhocQuery", NSMAP)
        assert query is not None
        slot = etree.SubElement(query, q("rim", "Slot"), name="$XDSDocumentEntryFormatCode")
        values = etree.SubElement(slot, q("rim", "ValueList"))
        etree.SubElement(values, q("rim", "Value")).text = f"('{KOS_FORMAT}')"
    answer = _soap(server, "/xds/registry", REGISTRY_STORED_QUERY, payload)
    assert "Success" in str(answer.get("status")), etree.tostring(answer)


def _reject(server: KuvaServer, tmp_path: Path, title: Any, rejected: list[Dataset]) -> None:
    """An IOCM rejection note sent by the clinic's node with storescu."""
    note = rejection_note(title, rejected)
    paths = write_series([note], tmp_path / f"note-{generate_uid()[-8:]}")
    result = storescu(paths, LOOPBACK, server.dicom_port, aet="CLINIC", aec="KUVA")
    assert result.returncode == 0, result.stdout + result.stderr


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
            # The clinic's HTTP clients (XDS, notices); it may read its own report.
            "access": {"operators": [HOLDER, CLINIC_ORG]},
            "http": {"organization": CLINIC_ORG},
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

    # IOCM: a 113038 note (metadata) and a 113001 note (content) of a study of its own.
    corrected = make_ct_series(2, rows=16, cols=16, patient_id=SURVIVOR)
    paths = write_series(corrected, tmp_path / "corrected")
    assert storescu(paths, LOOPBACK, server.dicom_port, aet="CLINIC", aec="KUVA").returncode == 0
    _reject(server, tmp_path, INCORRECT_WORKLIST_ENTRY, [corrected[0]])
    _reject(server, tmp_path, QUALITY, [corrected[1]])
    # XDS: report and image searches (ITI-18), an image retrieve (RAD-69).
    _find_documents(server, manifests=False)
    _find_documents(server, manifests=True)
    series, sop = str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
    _soap(
        server,
        "/xds/imaging",
        RETRIEVE_IMAGING_DOCUMENT_SET,
        rad69_request([(str(ds.StudyInstanceUID), series, sop)]),
    )
    # A disclosure the clinic made itself, told to the archive.
    told = httpx.post(
        f"{server.http}/disclosures/notices",
        json=notice(SURVIVOR, "2026-12-01T10:00:00Z", studies=[study], recipient=HOLDER),
        timeout=30,
    )
    assert told.status_code == 201, told.text

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
    assert report["state"] == "testing" and report["missing"] == ["ian"]

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
