"""Mutual TLS on the DICOM, HTTP and MLLP listeners, SQLite and PostgreSQL: one kuva
per database with all three listeners on TLS, certificates made here
(tests.support.pki). For each listener: the certificate of an organisation works
(dcmtk's storescu and findscu over TLS; httpx storing with STOW-RS and ITI-41 for
the certificate's organisation; MLLP over Python's ssl), and no client certificate, an
untrusted one, one of no organisation and (DICOM) a calling AE title of another
organisation are refused - each refusal an ATNA Security Alert in the audit trail."""

from __future__ import annotations

import base64
import contextlib
import io
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest
from lxml import etree
from pydicom.uid import generate_uid
from sqlalchemy import create_engine, text

from kuva.xds.namespaces import PROVIDE_AND_REGISTER
from tests.conftest import DATABASES, fresh_database
from tests.support.hl7 import END, SURVIVOR, VT, adt, pid
from tests.support.peers import LOOPBACK, dcmtk_available, dcmtk_env, storescu
from tests.support.pki import Identity, MutualTlsPki, make_mutual_tls_pki
from tests.support.server import KuvaServer
from tests.support.synthetic import make_ct_series, write_series
from tests.unit.test_repository import entry_ids, pnr, soap_envelope, unique_id_of

ORG_A = "1.2.246.10.12345678.10"
ORG_B = "1.2.246.10.87654321.10"
BOUNDARY = "kuva-mtls"

dcmtk = pytest.mark.skipif(not dcmtk_available(), reason="dcmtk not installed")


@dataclass
class Site:
    server: KuvaServer
    pki: MutualTlsPki
    database_url: str
    tmp: Path

    def query(self, sql: str) -> list[tuple[object, ...]]:
        engine = create_engine(self.database_url)
        try:
            with engine.connect() as conn:
                return [tuple(row) for row in conn.execute(text(sql)).all()]
        finally:
            engine.dispose()

    def alerts(self) -> list[str]:
        """The Alert Description of every Node Authentication alert (110113 / 110126)
        in the trail (not the directory's configuration alerts)."""
        found = []
        for (message,) in self.query(
            "SELECT message FROM audit_record WHERE event_id = '110113' ORDER BY seq"
        ):
            root = etree.fromstring(str(message).encode())
            types = [c.get("csd-code") for c in root.iter("EventTypeCode")]
            if types != ["110126"]:
                continue
            for detail in root.iter("ParticipantObjectDetail"):
                found.append(base64.b64decode(detail.get("value", "")).decode())
        return found

    def wait_alert(self, before: int, needle: str, timeout: float = 15.0) -> str:
        """The first alert after the first ``before`` that holds ``needle``."""
        deadline = time.monotonic() + timeout
        while True:
            new = [alert for alert in self.alerts()[before:] if needle in alert]
            if new:
                return new[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"no alert with {needle!r}: {self.alerts()[before:]}")
            time.sleep(0.1)


@pytest.fixture(scope="module", params=DATABASES)
def site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp(f"mtls-{request.param}")
    pki = make_mutual_tls_pki(tmp / "pki")
    with fresh_database(request.param, tmp) as database_url:
        workdir = tmp / "kuva"
        workdir.mkdir()
        server = KuvaServer(
            workdir=workdir,
            database_url=database_url,
            organizations=[
                {"oid": ORG_A, "name": "Testin sairaanhoitopiiri",
                 "certificates": [pki.hospital_a.subject]},
                {"oid": ORG_B, "name": "Toinen sairaanhoitopiiri",
                 "certificates": [pki.hospital_b.subject]},
            ],
            nodes=[
                {"ae_title": "STORESCU_A", "organization": ORG_A},
                {"ae_title": "FINDSCU_A", "organization": ORG_A},
                {"ae_title": "STORESCU_B", "organization": ORG_B},
            ],
            extra={
                "tls": pki.tls_section(),
                "dicom": {"tls": True},
                "http": {"tls": True},
                "hl7": {"tls": True},
                # The operator console and admin API: organisation A's certificate.
                "access": {"operators": [ORG_A]},
            },
            client_tls=pki.hospital_a.client_context(pki.ca),
        )  # fmt: skip
        server.start()
        try:
            yield Site(server, pki, database_url, tmp)
        finally:
            assert server.stop() == 0, server.log()


# ---------------------------------------------------------------- DICOM (dcmtk)


def _files(site: Site, name: str) -> list[Path]:
    datasets = make_ct_series(1, rows=16, cols=16, patient_id=SURVIVOR, seed=len(name))
    return write_series(datasets, site.tmp / name)


def _store(site: Site, tls: list[str], aet: str, name: str) -> subprocess.CompletedProcess[str]:
    return storescu(
        _files(site, name),
        LOOPBACK,
        site.server.dicom_port,
        aet=aet,
        aec="KUVA",
        extra_args=[*tls, "+cf", str(site.pki.ca)],
    )


def _tls(identity: Identity) -> list[str]:
    return ["+tls", str(identity.key), str(identity.cert)]


@dcmtk
def test_dicom_certificate_of_the_node_organisation(site: Site) -> None:
    paths = _files(site, "dicom-ok")
    sent = pydicom.dcmread(paths[0])
    result = storescu(
        paths,
        LOOPBACK,
        site.server.dicom_port,
        aet="STORESCU_A",
        aec="KUVA",
        extra_args=[*_tls(site.pki.hospital_a), "+cf", str(site.pki.ca)],
    )
    assert result.returncode == 0, result.stdout + result.stderr
    owners = site.query(
        f"SELECT organization_oid FROM instance WHERE sop_instance_uid = '{sent.SOPInstanceUID}'"
    )
    assert owners == [(ORG_A,)]
    out = site.tmp / "find"
    out.mkdir()
    command = [
        "findscu", "-S", "-X", "-od", str(out), "-aet", "FINDSCU_A", "-aec", "KUVA",
        *_tls(site.pki.hospital_a), "+cf", str(site.pki.ca),
        LOOPBACK, str(site.server.dicom_port), "-k", "QueryRetrieveLevel=STUDY",
        "-k", f"StudyInstanceUID={sent.StudyInstanceUID}",
    ]  # fmt: skip
    found = subprocess.run(command, capture_output=True, env=dcmtk_env(), timeout=60)
    assert found.returncode == 0, found.stdout + found.stderr
    (answer,) = [pydicom.dcmread(p) for p in out.glob("rsp*.dcm")]
    assert answer.StudyInstanceUID == sent.StudyInstanceUID


@dcmtk
@pytest.mark.parametrize(
    ("client", "aet", "expected", "dcmtk_says"),
    [
        ("none", "STORESCU_A", "no client certificate", ""),
        ("untrusted", "STORESCU_A", "client certificate not trusted", ""),
        ("stranger", "STORESCU_A", "client certificate of no configured organisation",
         "Association Rejected"),
        ("hospital_b", "STORESCU_A", "calling AE title STORESCU_A is a node of organisation",
         "Calling AE Title Not Recognized"),
    ],
)  # fmt: skip
def test_dicom_refused(site: Site, client: str, aet: str, expected: str, dcmtk_says: str) -> None:
    before = len(site.alerts())
    tls = ["+tla"] if client == "none" else _tls(getattr(site.pki, client))
    result = _store(site, tls, aet, f"dicom-{client}")
    assert result.returncode != 0, result.stdout + result.stderr
    assert dcmtk_says in result.stdout + result.stderr
    alert = site.wait_alert(before, expected)
    if client in ("stranger", "hospital_b"):
        assert getattr(site.pki, client).subject in alert


# ---------------------------------------------------------------- HTTP (httpx)


def _stow_body() -> tuple[bytes, str]:
    """A STOW-RS body of one synthetic CT, and its Study Instance UID."""
    (ds,) = make_ct_series(1, rows=16, cols=16, patient_id=SURVIVOR, seed=7)
    with io.BytesIO() as out:
        pydicom.dcmwrite(out, ds, enforce_file_format=True)
        part = out.getvalue()
    body = (
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + part
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    return body, str(ds.StudyInstanceUID)


def _client(site: Site, identity: Identity | None) -> httpx.Client:
    context = (
        site.pki.anonymous_context() if identity is None else identity.client_context(site.pki.ca)
    )
    return httpx.Client(base_url=site.server.http, verify=context, timeout=30)


def test_http_stores_for_the_certificate_organisation(site: Site) -> None:
    body, study_uid = _stow_body()
    with _client(site, site.pki.hospital_b) as client:
        response = client.post(
            "/dicom-web/studies",
            content=body,
            headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
            },
        )
    assert response.status_code == 200, response.text
    owners = site.query(
        f"SELECT organization_oid FROM study WHERE study_instance_uid = '{study_uid}'"
    )
    assert owners == [(ORG_B,)]


def test_xds_submission_for_the_certificate_organisation(site: Site) -> None:
    """ITI-41 over mutual TLS: the documents' register holder is the certificate's."""
    payload = pnr()
    (entry,) = entry_ids(payload)
    with _client(site, site.pki.hospital_b) as client:
        response = client.post(
            "/xds/repository",
            content=soap_envelope(PROVIDE_AND_REGISTER, payload),
            headers={"Content-Type": "application/soap+xml; charset=utf-8"},
        )
    assert response.status_code == 200, response.text
    assert b"ResponseStatusType:Success" in response.content, response.text
    owners = site.query(
        "SELECT organization_oid FROM xds_document WHERE unique_id = "
        f"'{unique_id_of(payload, entry)}'"
    )
    assert owners == [(ORG_B,)]


def test_the_console_is_for_the_operator_certificate(site: Site) -> None:
    """Operators are the organisations of [access] operators, by their certificate."""
    with _client(site, site.pki.hospital_a) as client:
        operator = client.get("/console/")
    assert operator.status_code == 200 and "<!doctype html>" in operator.text
    with _client(site, site.pki.hospital_b) as client:
        other = client.get("/console/")
    assert other.status_code == 403 and "may not use the operator console" in other.text


def test_http_certificate_of_no_organisation(site: Site) -> None:
    before = len(site.alerts())
    with _client(site, site.pki.stranger) as client:
        response = client.get("/dicom-web/studies")
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    assert site.pki.stranger.subject in response.json()["detail"]
    site.wait_alert(before, "client certificate of no configured organisation")


@pytest.mark.parametrize(
    ("client", "expected"),
    [("none", "no client certificate"), ("untrusted", "client certificate not trusted")],
)
def test_http_refused(site: Site, client: str, expected: str) -> None:
    before = len(site.alerts())
    identity = None if client == "none" else site.pki.untrusted
    with pytest.raises(httpx.TransportError), _client(site, identity) as http:
        http.get("/healthz")
    site.wait_alert(before, expected)


# ---------------------------------------------------------------- HL7 (MLLP over TLS)


def _mllp(site: Site, context: ssl.SSLContext, message: str) -> bytes:
    """Send one framed message; the bytes answered until the end of the frame or EOF."""
    with (
        socket.create_connection((LOOPBACK, site.server.hl7_port), timeout=15) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as sock,
    ):
        sock.sendall(VT + message.encode() + END)
        answer = b""
        while not answer.endswith(END):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


@pytest.mark.parametrize(
    ("organization", "expected"),
    [(ORG_A, "AA"), (ORG_B, "AR")],
)
def test_hl7_certificate_of_an_organisation(site: Site, organization: str, expected: str) -> None:
    """A message acts for the certificate's organisation: MSH-4 must name it."""
    control = generate_uid()[-16:]
    answer = _mllp(
        site,
        site.pki.hospital_a.client_context(site.pki.ca),
        adt("A08", pid(SURVIVOR), control=control, organization=organization),
    )
    assert answer.startswith(VT) and answer.endswith(END)
    segments = answer[1:-2].decode().split("\r")
    (msa,) = [s for s in segments if s.startswith("MSA|")]
    assert msa.split("|")[1:3] == [expected, control]
    if expected == "AR":
        (err,) = [s for s in segments if s.startswith("ERR|")]
        assert "204^" in err and "client certificate organisation" in err


@pytest.mark.parametrize(
    ("client", "expected"),
    [
        ("none", "no client certificate"),
        ("untrusted", "client certificate not trusted"),
        ("stranger", "client certificate of no configured organisation"),
    ],
)
def test_hl7_refused(site: Site, client: str, expected: str) -> None:
    before = len(site.alerts())
    if client == "none":
        context = site.pki.anonymous_context()
    else:
        context = getattr(site.pki, client).client_context(site.pki.ca)
    try:
        answer = _mllp(site, context, adt("A08", pid(SURVIVOR)))
    except OSError:
        answer = b""
    assert answer == b"", "no ACK on a refused connection"
    site.wait_alert(before, expected)


# ---------------------------------------------------------------- configuration


def test_a_key_of_another_certificate_stops_the_start(tmp_path: Path) -> None:
    """Checked at load: exit 2 with the reason, as for every configuration error."""
    pki = make_mutual_tls_pki(tmp_path / "pki")
    config = tmp_path / "kuva.toml"
    config.write_text(
        f'[archive]\ndata_dir = "{tmp_path / "data"}"\n[hl7]\ntls = true\n'
        f'[tls]\ncert_file = "{pki.server.cert}"\nkey_file = "{pki.hospital_a.key}"\n'
        f'ca_file = "{pki.ca}"\n[[organizations]]\noid = "{ORG_A}"\nname = "A"\n'
        f'certificates = ["{pki.hospital_a.subject}"]\n',
        encoding="utf-8",
    )
    result = subprocess.run(
        [sys.executable, "-m", "kuva", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "300"},
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "the key does not belong to the certificate" in result.stdout
    assert not (tmp_path / "data").exists(), "nothing started"


# ---------------------------------------------------------------- no TLS at all


@pytest.mark.parametrize("listener", ["dicom", "http", "hl7"])
def test_plain_tcp_is_refused(site: Site, listener: str) -> None:
    """A client that does not speak TLS: the handshake fails, the connection is
    closed, and the alert names the listener."""
    port = {
        "dicom": site.server.dicom_port,
        "http": site.server.http_port,
        "hl7": site.server.hl7_port,
    }[listener]
    before = len(site.alerts())
    with socket.create_connection((LOOPBACK, port), timeout=15) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: kuva\r\n\r\n")
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(65536)[:4] != b"HTTP"
            assert sock.recv(65536) == b""
    site.wait_alert(before, "TLS handshake failed")
    (message,) = site.query(
        "SELECT message FROM audit_record WHERE event_id = '110113' ORDER BY seq DESC LIMIT 1"
    )
    assert f"{listener}@127.0.0.1" in str(message[0])
