"""Per-organisation limits against a real ``kuva serve`` (services.limits), on SQLite
and PostgreSQL: one organisation saturating its limits while another keeps its
service and its latency.

Organisation A may hold two associations, make five requests a second and send 64
KiB per STOW-RS or ITI-41 request; B has no limits. Plain HTTP acts for A
(``[http] organization``).

- Associations: A holds two (pynetdicom); dcmtk's echoscu as A is rejected
  transient, "local limit exceeded"; B associates and echoes meanwhile; once A
  releases one, A gets in again.
- DIMSE: A's C-FINDs beyond its rate are answered 0xA700 with an Error Comment
  while a thread of B's C-FINDs all succeed, their latency measured.
- HTTP: A's QIDO-RS burst gets 429 with Retry-After; a STOW-RS over 64 KiB 413; an
  ITI-41 over it a SOAP fault with 413.
- HL7 (python-hl7's MLLP client): A's burst of A08s beyond its rate gets AE with
  an ERR naming the limit.
- The limits change at runtime (``kuva orgs limits``), and /metrics counts what each
  limit refused, per organisation.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from hl7.client import MLLPClient
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind, Verification

from kuva.xds.namespaces import PROVIDE_AND_REGISTER
from tests.support.hl7 import adt, msa, pid
from tests.support.peers import LOOPBACK, dcmtk_available, echoscu
from tests.support.server import KuvaServer
from tests.unit.test_repository import soap_envelope

pytestmark = [
    pytest.mark.dcmtk,
    pytest.mark.skipif(not dcmtk_available(), reason="dcmtk not installed"),
]

ORG_A = "1.2.246.10.11111111.10"
ORG_B = "1.2.246.10.22222222.10"
LIMITS = {"associations": 2, "requests_per_second": 5, "request_bytes": 65536}


@pytest.fixture
def server(kuva_server: Callable[..., KuvaServer]) -> KuvaServer:
    return kuva_server(
        organizations=[
            {"oid": ORG_A, "name": "Clinic A", "limits": LIMITS},
            {"oid": ORG_B, "name": "Clinic B"},
        ],
        nodes=[
            {"ae_title": "CLINIC_A", "host": LOOPBACK, "port": 1, "organization": ORG_A},
            {"ae_title": "CLINIC_B", "host": LOOPBACK, "port": 1, "organization": ORG_B},
        ],
        extra={"http": {"organization": ORG_A}},
    )


def associate(server: KuvaServer, ae_title: str) -> Any:
    ae = AE(ae_title=ae_title)
    ae.add_requested_context(Verification)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    return ae.associate(LOOPBACK, server.dicom_port, ae_title="KUVA")


def find_statuses(assoc: Any) -> list[int]:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    return [
        int(status.Status)
        for status, _ in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
        if status is not None
    ]


def limited(server: KuvaServer, organization: str, limit: str) -> float:
    text = httpx.get(f"{server.http}/metrics", timeout=10).text
    prefix = f'kuva_organization_limited_total{{limit="{limit}",organization="{organization}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0


def test_associations_are_limited_per_organisation(server: KuvaServer) -> None:
    held = [associate(server, "CLINIC_A") for _ in range(2)]
    try:
        assert all(assoc.is_established for assoc in held)
        refused = echoscu(LOOPBACK, server.dicom_port, aet="CLINIC_A", aec="KUVA")
        output = refused.stdout + refused.stderr
        assert refused.returncode != 0
        assert "Rejected Transient" in output, output
        assert "Local Limit Exceeded" in output, output
        other = echoscu(LOOPBACK, server.dicom_port, aet="CLINIC_B", aec="KUVA")
        assert other.returncode == 0, other.stdout + other.stderr
        held.pop().release()
        time.sleep(0.3)  # the slot is given back when kuva sees the release
        again = echoscu(LOOPBACK, server.dicom_port, aet="CLINIC_A", aec="KUVA")
        assert again.returncode == 0, again.stdout + again.stderr
    finally:
        for assoc in held:
            assoc.release()
    assert limited(server, ORG_A, "associations") == 1
    assert limited(server, ORG_B, "associations") == 0


def test_one_organisation_saturates_its_rate_while_another_keeps_its_latency(
    server: KuvaServer,
) -> None:
    # B's C-FINDs, one after another, measured while A floods.
    b_latencies: list[float] = []
    b_statuses: list[int] = []
    flooding = threading.Event()

    def b_queries() -> None:
        assoc = associate(server, "CLINIC_B")
        try:
            for _ in range(40):
                started = time.perf_counter()
                b_statuses.extend(find_statuses(assoc))
                b_latencies.append(time.perf_counter() - started)
                flooding.wait(0.02)
        finally:
            assoc.release()

    assoc = associate(server, "CLINIC_A")
    worker = threading.Thread(target=b_queries)
    worker.start()
    a_statuses: list[int] = []
    try:
        while worker.is_alive():
            a_statuses.extend(find_statuses(assoc))
    finally:
        flooding.set()
        worker.join()
        assoc.release()
    assert 0xA700 in a_statuses, a_statuses[:20]
    assert a_statuses.count(0x0000) >= 5  # served up to its rate
    assert set(b_statuses) == {0x0000}, "B was refused"
    assert len(b_latencies) == 40
    p95 = sorted(b_latencies)[int(len(b_latencies) * 0.95) - 1]
    print(
        f"B's C-FIND while A floods: median {statistics.median(b_latencies) * 1000:.1f} ms, "
        f"p95 {p95 * 1000:.1f} ms; A refused {a_statuses.count(0xA700)} of "
        f"{len(a_statuses)} answers"
    )
    # Generous: the point is B is served, not refused or queued behind A's flood.
    assert p95 < 2.0
    assert limited(server, ORG_A, "requests_per_second") >= 1
    assert limited(server, ORG_B, "requests_per_second") == 0


def test_http_and_hl7_get_their_protocols_busy_signals(server: KuvaServer, tmp_path: Path) -> None:
    # QIDO-RS, acting for A on plain HTTP: over 5 a second, 429 with Retry-After.
    answers = [httpx.get(f"{server.http}/dicom-web/studies", timeout=10) for _ in range(20)]
    busy = [answer for answer in answers if answer.status_code == 429]
    assert busy, [answer.status_code for answer in answers]
    assert int(busy[0].headers["retry-after"]) >= 1
    assert busy[0].headers["content-type"] == "application/problem+json"
    assert "requests per second" in busy[0].json()["detail"]
    time.sleep(1.5)  # the bucket fills again

    # Bodies over 64 KiB: STOW-RS 413 (before a byte is read), ITI-41 a SOAP fault.
    big = b"x" * 70_000
    stow = httpx.post(
        f"{server.http}/dicom-web/studies",
        content=big,
        headers={"content-type": 'multipart/related; type="application/dicom"; boundary=b'},
        timeout=10,
    )
    assert stow.status_code == 413, stow.text
    assert "65536 bytes" in stow.json()["detail"]

    def chunks() -> Any:
        for _ in range(10):
            yield b"<!-- padding -->" * 500

    iti41 = httpx.post(
        f"{server.http}/xds/repository",
        content=chunks(),  # chunked: counted while read
        headers={"content-type": "application/soap+xml; charset=UTF-8"},
        timeout=10,
    )
    assert iti41.status_code == 413, iti41.text
    assert b"Fault" in iti41.content and b"65536 bytes" in iti41.content
    small = httpx.post(
        f"{server.http}/xds/repository",
        content=soap_envelope(PROVIDE_AND_REGISTER, b"<x/>"),
        headers={"content-type": "application/soap+xml; charset=UTF-8"},
        timeout=10,
    )
    assert small.status_code != 413
    assert limited(server, ORG_A, "request_bytes") == 2
    time.sleep(1.5)

    # HL7 from A: a burst of A08s on one connection; beyond the rate, AE naming it.
    client = MLLPClient(LOOPBACK, server.hl7_port)
    try:
        acks = [
            client.send_message(adt("A08", pid("010181-900C"), organization=ORG_A)).decode()
            for _ in range(15)
        ]
    finally:
        client.close()
    codes = [msa(ack)[0] for ack in acks]
    assert "AE" in codes, codes
    refused = next(ack for ack in acks if msa(ack)[0] == "AE")
    assert "rate limit" in refused


def test_limits_change_at_runtime(server: KuvaServer) -> None:
    result = server.kuva("orgs", "limits", ORG_A, "--associations", "1", "--by", "ops")
    assert "associations 1" in result.stdout
    time.sleep(2.5)  # every node polls the directory each second
    held = associate(server, "CLINIC_A")
    try:
        assert held.is_established
        refused = echoscu(LOOPBACK, server.dicom_port, aet="CLINIC_A", aec="KUVA")
        assert "Local Limit Exceeded" in refused.stdout + refused.stderr
    finally:
        held.release()
