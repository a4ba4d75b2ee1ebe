"""The directory at runtime (services.directory), SQLite and PostgreSQL: an
organisation and node added to a running archive by ``kuva orgs`` / ``kuva nodes``
or the admin API associate at once; testing takes test identity codes only, over
DICOM (pynetdicom and dcmtk's storescu), STOW-RS (dicomweb-client) and HL7
(python-hl7's MLLP client); suspension refuses at once and lifting it restores
service; two nodes on one PostgreSQL see each other's changes."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage
from requests.exceptions import HTTPError

from kuva.model.identity import TESTING_RULE
from kuva.model.xds import PatientId
from kuva.xds.namespaces import PROVIDE_AND_REGISTER
from tests.support.hl7 import Hl7Site, adt, err, msa, pid
from tests.support.peers import LOOPBACK, dcmtk_available, storescu
from tests.support.server import KuvaServer
from tests.support.synthetic import DEFAULT_PATIENT_ID, make_ct_series, write_series
from tests.unit.test_ebrim import sample_payload
from tests.unit.test_registry_service import fill
from tests.unit.test_repository import (
    CDA,
    SUBMISSION_SAMPLE,
    entry_ids,
    soap_envelope,
    with_documents,
    wrapped,
)

pytestmark = pytest.mark.skipif(not dcmtk_available(), reason="dcmtk not installed")

HOLDER = "1.2.246.10.12345678.10"  # in the file: the archive is not open to anyone
CLINIC_ORG = "1.2.246.10.55555555.10"
CLINIC = "CLINIC"
# Not a test identity code: a local patient number (tests never make codes shaped
# like real ones, tests.support.synthetic).
NOT_A_TEST_CODE = "POTILAS12345"
NOT_AUTHORIZED = 0x0124


def _archive(
    kuva_server: Callable[..., KuvaServer], *, clinic: str = "", **extra: Any
) -> KuvaServer:
    """An archive whose file lists the holder and, with ``clinic`` (its state), the
    clinic and its node too."""
    organizations = [{"oid": HOLDER, "name": "Testin sairaala"}]
    nodes = [{"ae_title": "STORESCU", "organization": HOLDER}]
    if clinic:
        organizations.append({"oid": CLINIC_ORG, "name": "Test Clinic", "state": clinic})
        nodes.append({"ae_title": CLINIC, "organization": CLINIC_ORG})
    return kuva_server(organizations=organizations, nodes=nodes, **extra)


def _store(server: KuvaServer, patient_id: str, *, aet: str = CLINIC) -> Dataset | None:
    """C-STORE of one synthetic CT with pynetdicom calling as ``aet``: the response
    status data set, or None when the association was refused."""
    ae = AE(ae_title=aet)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate(LOOPBACK, server.dicom_port, ae_title=server.ae_title)
    if not assoc.is_established:
        return None
    try:
        [ds] = make_ct_series(1, rows=16, cols=16, patient_id=patient_id)
        status: Dataset = assoc.send_c_store(ds)
        return status
    finally:
        assoc.release()


def _until(test: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not test():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def _add_clinic(server: KuvaServer) -> None:
    server.kuva(
        "orgs", "add", CLINIC_ORG, "--name", "Test Clinic", "--testing", "--by", "operator1"
    )
    server.kuva(
        "nodes", "add", CLINIC, "--host", LOOPBACK, "--port", "1",
        "--organization", CLINIC_ORG, "--by", "operator1",
    )  # fmt: skip


def test_a_node_added_at_runtime_associates_and_testing_takes_test_codes_only(
    kuva_server: Callable[..., KuvaServer], tmp_path: Path
) -> None:
    server = _archive(kuva_server)
    assert _store(server, DEFAULT_PATIENT_ID) is None  # CLINIC is no node yet
    _add_clinic(server)
    # In force without a restart, within the directory's poll.
    _until(lambda: _store(server, DEFAULT_PATIENT_ID) is not None, "CLINIC never let in")
    stored = _store(server, DEFAULT_PATIENT_ID)
    assert stored is not None and stored.Status == 0x0000
    refused = _store(server, NOT_A_TEST_CODE)
    assert refused is not None and refused.Status == NOT_AUTHORIZED
    assert refused.ErrorComment == TESTING_RULE
    # dcmtk's storescu is told the same.
    [ds] = make_ct_series(1, rows=16, cols=16, patient_id=NOT_A_TEST_CODE)
    result = storescu(
        write_series([ds], tmp_path / "real"), LOOPBACK, server.dicom_port,
        aet=CLINIC, aec="KUVA", extra_args=["-v"],
    )  # fmt: skip
    # dcmtk names no text for this general status (PS3.7 C.5), only its code.
    assert "0x124" in result.stdout + result.stderr, result.stdout + result.stderr
    # Who changed the directory, and what, is in the audit trail.
    alerts = server.kuva("audit", "list", "--event", "110113", "--xml").stdout
    assert 'csd-code="110129"' in alerts and 'csd-code="110128"' in alerts
    assert 'UserID="operator1"' in alerts
    listed = server.kuva("orgs", "list", "--plain").stdout
    assert f"{CLINIC_ORG}\tTest Clinic\ttesting" in listed
    shown = json.loads(server.kuva("orgs", "show", CLINIC_ORG, "--json").stdout)
    assert shown["state"] == "testing" and shown["nodes"][0]["ae_title"] == CLINIC
    assert (
        f"{CLINIC}\t{LOOPBACK}\t1\t{CLINIC_ORG}" in server.kuva("nodes", "list", "--plain").stdout
    )
    early = server.kuva("orgs", "terminate", CLINIC_ORG, "--notice-date", "2099-01-31", check=False)
    assert early.returncode == 1 and "2099-02-28" in early.stdout
    unknown = server.kuva("nodes", "remove", "NOBODY", check=False)
    assert unknown.returncode == 1 and "no node NOBODY" in unknown.stdout
    server.kuva("nodes", "remove", CLINIC)
    _until(lambda: _store(server, DEFAULT_PATIENT_ID) is None, "removal not in force")


def test_suspension_refuses_at_once_and_activation_restores(
    kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path
) -> None:
    server = _archive(kuva_server, clinic="active", extra={"http": {"organization": CLINIC_ORG}})
    assert _store(server, DEFAULT_PATIENT_ID) is not None
    server.kuva("orgs", "suspend", CLINIC_ORG)
    _until(lambda: _store(server, DEFAULT_PATIENT_ID) is None, "suspension not in force")
    [ds] = make_ct_series(1, rows=16, cols=16)
    result = storescu(
        write_series([ds], tmp_path / "s"), LOOPBACK, server.dicom_port, aet=CLINIC, aec="KUVA"
    )
    assert result.returncode != 0 and "Association Rejected" in result.stdout + result.stderr
    # HTTP acting for the suspended organisation: a 403 problem; XDS: a SOAP fault.
    answer = httpx.get(f"{server.http}/dicom-web/studies", timeout=10)
    assert answer.status_code == 403 and "suspended" in answer.json()["detail"]
    fault = httpx.post(
        f"{server.http}/xds/registry",
        content=b"<x/>",
        headers={"Content-Type": "application/soap+xml"},
        timeout=10,
    )
    assert fault.status_code == 400 and b"suspended" in fault.content
    assert httpx.get(f"{server.http}/healthz", timeout=10).status_code == 200
    # HL7 from the suspended organisation: AR, naming the state.
    hl7 = Hl7Site(server, database_url, tmp_path)
    ack = hl7.mllp_send(adt("A08", pid(DEFAULT_PATIENT_ID), organization=CLINIC_ORG))
    assert msa(ack)[0] == "AR" and "suspended" in err(ack), ack
    server.kuva("orgs", "activate", CLINIC_ORG)
    _until(lambda: _store(server, DEFAULT_PATIENT_ID) is not None, "activation not in force")
    assert httpx.get(f"{server.http}/dicom-web/studies", timeout=10).status_code in (200, 204)


def test_stow_and_hl7_in_testing_take_test_codes_only(
    kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path
) -> None:
    server = _archive(kuva_server, clinic="testing", extra={"http": {"organization": CLINIC_ORG}})
    web = DICOMwebClient(f"{server.http}/dicom-web")
    [test_case, real] = [
        pydicom.dcmread(path)
        for path in write_series(
            [
                *make_ct_series(1, rows=16, cols=16),
                *make_ct_series(1, rows=16, cols=16, patient_id=NOT_A_TEST_CODE),
            ],
            tmp_path / "stow",
        )
    ]
    web.store_instances([test_case])
    with pytest.raises(HTTPError) as refused:
        web.store_instances([real])
    assert refused.value.response.status_code == 409
    [failed] = refused.value.response.json()["00081198"]["Value"]  # Failed SOP Sequence
    assert failed["00081197"]["Value"] == [NOT_AUTHORIZED]  # Failure Reason
    assert failed["00000902"]["Value"] == [TESTING_RULE]

    # ITI-41 of a patient by the clinic's temporary id (not a test identity code).
    temporary = PatientId(NOT_A_TEST_CODE, f"{CLINIC_ORG[:-3]}.22.2026")
    payload = wrapped(fill(sample_payload(SUBMISSION_SAMPLE), temporary))
    with_documents(payload, dict.fromkeys(entry_ids(payload), CDA))
    response = httpx.post(
        f"{server.http}/xds/repository",
        content=soap_envelope(PROVIDE_AND_REGISTER, payload, CLINIC_ORG),
        headers={"Content-Type": "application/soap+xml; charset=utf-8"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert b"ResponseStatusType:Failure" in response.content
    assert TESTING_RULE.encode() in response.content

    hl7 = Hl7Site(server, database_url, tmp_path)
    ack = hl7.mllp_send(adt("A08", pid(NOT_A_TEST_CODE), organization=CLINIC_ORG))
    assert msa(ack)[0] == "AR" and "test identity codes" in err(ack), ack
    ack = hl7.mllp_send(adt("A08", pid(DEFAULT_PATIENT_ID), organization=CLINIC_ORG))
    assert msa(ack)[0] == "AA", ack


def test_admin_api_changes_the_directory(
    kuva_server: Callable[..., KuvaServer],
) -> None:
    server = _archive(
        kuva_server, extra={"access": {"operators": [HOLDER]}, "http": {"organization": HOLDER}}
    )
    base = f"{server.http}/admin"
    created = httpx.post(
        f"{base}/organizations",
        json={"oid": CLINIC_ORG, "name": "Test Clinic", "state": "testing"},
        timeout=10,
    )
    assert created.status_code == 201, created.text
    again = httpx.post(f"{base}/organizations", json={"oid": CLINIC_ORG, "name": "x"}, timeout=10)
    assert again.status_code == 409
    bad = httpx.post(f"{base}/organizations", json={"oid": "not an oid", "name": "x"}, timeout=10)
    assert bad.status_code == 400 and "oid" in bad.json()["detail"]
    node = httpx.post(
        f"{base}/nodes",
        json={"ae_title": CLINIC, "host": LOOPBACK, "port": 1, "organization": CLINIC_ORG},
        timeout=10,
    )
    assert node.status_code == 201, node.text
    shown = httpx.get(f"{base}/organizations/{CLINIC_ORG}", timeout=10).json()
    assert shown["state"] == "testing" and [n["ae_title"] for n in shown["nodes"]] == [CLINIC]
    _until(lambda: _store(server, DEFAULT_PATIENT_ID) is not None, "CLINIC never let in")
    early = httpx.post(
        f"{base}/organizations/{CLINIC_ORG}/state",
        json={"state": "terminated", "notice_date": time.strftime("%Y-%m-%d")},
        timeout=10,
    )
    assert early.status_code == 409 and "notice period" in early.json()["detail"]
    forced = httpx.post(
        f"{base}/organizations/{CLINIC_ORG}/state",
        json={"state": "terminated", "notice_date": time.strftime("%Y-%m-%d"), "force": True},
        timeout=10,
    )
    assert forced.status_code == 200 and forced.json()["state"] == "terminated"
    assert forced.json()["termination_date"] == time.strftime("%Y-%m-%d")
    _until(lambda: _store(server, DEFAULT_PATIENT_ID) is None, "termination not in force")
    assert httpx.delete(f"{base}/nodes/{CLINIC}", timeout=10).status_code == 204
    assert httpx.delete(f"{base}/nodes/{CLINIC}", timeout=10).status_code == 404
    assert httpx.get(f"{base}/organizations/1.2.3", timeout=10).status_code == 404
    alerts = server.kuva("audit", "list", "--event", "110113", "--xml").stdout
    assert "forced before the notice period ended" in alerts


def test_a_change_through_one_node_is_in_force_on_the_other(
    kuva_server: Callable[..., KuvaServer], database_url: str
) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("nodes share a PostgreSQL index")
    first = _archive(
        kuva_server, extra={"access": {"operators": [HOLDER]}, "http": {"organization": HOLDER}}
    )
    second = _archive(kuva_server)
    assert (
        httpx.post(
            f"{first.http}/admin/organizations",
            json={"oid": CLINIC_ORG, "name": "Test Clinic"},
            timeout=10,
        ).status_code
        == 201
    )
    assert (
        httpx.post(
            f"{first.http}/admin/nodes",
            json={"ae_title": CLINIC, "host": LOOPBACK, "port": 1, "organization": CLINIC_ORG},
            timeout=10,
        ).status_code
        == 201
    )
    _until(lambda: _store(second, DEFAULT_PATIENT_ID) is not None, "not in force on the other")
    second.kuva("orgs", "suspend", CLINIC_ORG)
    _until(lambda: _store(first, DEFAULT_PATIENT_ID) is None, "suspension not in force")


def _two_holders(kuva_server: Callable[..., KuvaServer], clinic: str) -> KuvaServer:
    """The holder's FINDSCU/GETSCU read every other holder's material on a rule."""
    return kuva_server(
        organizations=[
            {"oid": HOLDER, "name": "Testin sairaala"},
            {"oid": CLINIC_ORG, "name": "Test Clinic", "state": clinic},
        ],
        nodes=[
            {"ae_title": "FINDSCU", "organization": HOLDER},
            {"ae_title": "GETSCU", "organization": HOLDER},
            {"ae_title": CLINIC, "organization": CLINIC_ORG},
        ],
        arrays={"access.rules": [{"register_holder": "*", "recipient": HOLDER, "basis": "care"}]},
    )


def _found(site: Hl7Site, study: str) -> bool:
    try:
        site.find_study(study)
    except ValueError:  # no match: nothing to unpack
        return False
    return True


def test_test_data_is_kept_apart_until_activation(
    kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path
) -> None:
    """A rule for every holder does not reach an organisation in testing."""
    server = _two_holders(kuva_server, "testing")
    site = Hl7Site(server, database_url, tmp_path)
    study = site.store(DEFAULT_PATIENT_ID, aet=CLINIC)
    assert not _found(site, study)
    assert site.getscu(study) == []
    server.kuva("orgs", "activate", CLINIC_ORG, "--force")
    _until(lambda: _found(site, study), "activated material not readable on the rule")


def test_termination_keeps_the_material_for_others(
    kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path
) -> None:
    """Terminated: the organisation is shut out, what it archived stays readable on
    the rules."""
    server = _two_holders(kuva_server, "active")
    site = Hl7Site(server, database_url, tmp_path)
    study = site.store(DEFAULT_PATIENT_ID, n=2, aet=CLINIC)
    server.kuva(
        "orgs", "terminate", CLINIC_ORG, "--notice-date", "2026-01-01", "--force", "--by", "op"
    )
    _until(lambda: _store(server, DEFAULT_PATIENT_ID) is None, "termination not in force")
    assert _found(site, study)
    assert len(site.getscu(study)) == 2


def test_purge_test_destroys_the_test_data_with_records(
    kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path
) -> None:
    server = _two_holders(kuva_server, "testing")
    site = Hl7Site(server, database_url, tmp_path)
    study = site.store(DEFAULT_PATIENT_ID, n=2, aet=CLINIC)
    purged = server.kuva("orgs", "purge-test", CLINIC_ORG, "--by", "operator1")
    assert f"1 stud(y/ies) of {CLINIC_ORG} destroyed: {study}" in purged.stdout
    records = server.kuva("retention", "list-destroyed", "--study", study, "--plain").stdout
    assert "test data" in records and "operator1" in records
    assert _store(server, DEFAULT_PATIENT_ID) is not None  # the clinic goes on testing
    server.kuva("orgs", "activate", CLINIC_ORG, "--force")
    refused = server.kuva("orgs", "purge-test", CLINIC_ORG, check=False)
    assert refused.returncode == 1 and "only test data is purged" in refused.stdout
