"""Access control by register holder, every read path, on SQLite and PostgreSQL.

Organisation A archives two studies with dcmtk's storescu: one of patient P1 and
one of patient P2, whose disclosure prohibition is then set with ``kuva patients
prohibit``. Organisation B reads A's material on a basis that honours prohibitions
(``[[access.rules]]``); organisation C has no basis. Each organisation has a DICOM
node; each reads over HTTP through a kuva node of its own on the same index and
blobs (plain HTTP identifies a client by ``[http] organization``); XDS requests
name their organisation in an XUA assertion.

Every read path is tried from each side - C-FIND (findscu), C-MOVE (movescu into a
storescp), C-GET (getscu), QIDO-RS, WADO-RS (dicomweb-client), WADO-RS metadata,
WADO-URI, ITI-18, ITI-43, RAD-69 - and:

- A reads both studies and nothing is logged as a disclosure;
- B reads P1's study, never P2's, and every read leaves a disclosure record with
  the rule's basis;
- C reads nothing, and nothing of A's patients appears at the PATIENT level;
- lifting the prohibition (admin API, DELETE) lets B read P2's study.
"""

from __future__ import annotations

import base64
import re
import subprocess
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from lxml.etree import _Element as Element
from sqlalchemy import Engine, select

from kuva.config import Settings
from kuva.index.database import make_engine
from kuva.index.repository import Disclosure
from kuva.index.schema import audit_record
from kuva.index.uow import UnitOfWork
from kuva.xds.namespaces import (
    NSMAP,
    REGISTRY_STORED_QUERY,
    RETRIEVE_DOCUMENT_SET,
    RETRIEVE_IMAGING_DOCUMENT_SET,
)
from tests.integration.test_xds import rad69_request
from tests.support.peers import LOOPBACK, StoreSCP, dcmtk_available, dcmtk_env, storescu
from tests.support.server import KuvaServer, free_port
from tests.support.synthetic import FINNISH_PIC_ISSUER, make_ct_series, write_series
from tests.unit.test_ebrim import sample_payload
from tests.unit.test_repository import answer_of, retrieve_request, soap_envelope

pytestmark = [
    pytest.mark.dcmtk,
    pytest.mark.skipif(not dcmtk_available(), reason="dcmtk not installed"),
]

A = "1.2.246.10.11111111.10"
B = "1.2.246.10.22222222.10"
C = "1.2.246.10.33333333.10"
BASIS = "national archive: disclosure allowed unless the patient has prohibited it"
P1 = "010181-900C"
P2 = "020292-902R"
REPOSITORY = Settings().xds.repository_unique_id
STUDY_ROOT_FIND = "-S"
SUCCESS = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"
NODE_OF = {A: "PACSA", B: "PACSB", C: "PACSC"}


@dataclass
class Matrix:
    """The running kuva nodes (A's, B's and C's HTTP organisation) and the studies."""

    nodes: dict[str, KuvaServer]
    engine: Engine
    client: httpx.Client
    tmp_path: Path
    studies: dict[str, str]  # patient -> Study Instance UID
    sops: dict[str, list[tuple[str, str]]]  # patient -> (series, SOP Instance UID)
    manifests: dict[str, str]  # patient -> the manifest's DocumentUniqueId
    dest_ports: dict[str, int]

    @property
    def dicom(self) -> KuvaServer:
        return self.nodes[A]

    def disclosures(self) -> list[Disclosure]:
        with UnitOfWork(self.engine, write=False) as uow:
            return uow.disclosures.list(limit=10_000)

    # --- DICOM

    def find(self, org: str, level: str, *keys: str) -> list[pydicom.Dataset]:
        """findscu as ``org``'s node: Patient Root at the PATIENT level, else Study Root."""
        out = self.tmp_path / f"find-{pydicom.uid.generate_uid()[-12:]}"
        out.mkdir()
        model = "-P" if level == "PATIENT" else STUDY_ROOT_FIND
        command = ["findscu", model, "-X", "-od", str(out), "-aet", NODE_OF[org]]
        command += ["-aec", "KUVA", LOOPBACK, str(self.dicom.dicom_port)]
        command += ["-k", f"QueryRetrieveLevel={level}"]
        for key in keys:
            command += ["-k", key]
        result = subprocess.run(command, capture_output=True, env=dcmtk_env(), timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]

    def get(self, org: str, study_uid: str) -> int:
        """getscu of a study as ``org``'s node; the number of objects received."""
        out = self.tmp_path / f"get-{pydicom.uid.generate_uid()[-12:]}"
        out.mkdir()
        result = subprocess.run(
            [
                *("getscu", STUDY_ROOT_FIND, "-aet", NODE_OF[org], "-aec", "KUVA", "-od", str(out)),
                *("-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}"),
                *(LOOPBACK, str(self.dicom.dicom_port)),
            ],
            capture_output=True,
            text=True,
            env=dcmtk_env(),
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return len(list(out.iterdir()))

    def move(self, org: str, destination: str, study_uid: str) -> str:
        """movescu of a study as ``org``'s node to ``destination``; its output."""
        result = subprocess.run(
            [
                *("movescu", "-v", STUDY_ROOT_FIND, "-aet", NODE_OF[org], "-aec", "KUVA"),
                *("-aem", destination, "-k", "QueryRetrieveLevel=STUDY"),
                *("-k", f"StudyInstanceUID={study_uid}", LOOPBACK, str(self.dicom.dicom_port)),
            ],
            capture_output=True,
            text=True,
            env=dcmtk_env(),
            timeout=120,
        )
        return result.stdout + result.stderr

    # --- HTTP (each organisation through its own kuva node)

    def qido(self, org: str, path: str = "/studies") -> list[dict[str, Any]]:
        response = self.client.get(f"{self.nodes[org].http}/dicom-web{path}")
        assert response.status_code in (200, 204), response.text
        return response.json() if response.content else []

    def wado(self, org: str, study_uid: str) -> int:
        """WADO-RS of a study with dicomweb-client: the objects, or -1 for a 404."""
        client = DICOMwebClient(f"{self.nodes[org].http}/dicom-web")
        try:
            return len(client.retrieve_study(study_uid))
        except Exception as exc:  # requests.HTTPError
            assert "404" in str(exc), exc
            return -1

    def status(self, org: str, path: str) -> int:
        return self.client.get(f"{self.nodes[org].http}{path}").status_code

    def soap(self, org: str, path: str, action: str, payload: Element) -> Element:
        response = self.client.post(
            self.dicom.http + path,
            content=soap_envelope(action, payload, org),
            headers={"content-type": "application/soap+xml; charset=UTF-8"},
        )
        assert response.status_code == 200, response.text
        return answer_of(response)[0]

    def find_documents(self, org: str, patient: str) -> set[str]:
        payload = sample_payload("iti18-FindDocuments-request.xml")
        for value in payload.iter("{*}Value"):
            if value.text and "$patient_id$" in value.text:
                value.text = value.text.replace(
                    "$patient_id$", f"{patient}^^^&{FINNISH_PIC_ISSUER}&ISO"
                )
        answer = self.soap(org, "/xds/registry", REGISTRY_STORED_QUERY, payload)
        assert answer.get("status") == SUCCESS
        return {
            str(identifier.get("value"))
            for identifier in answer.iterfind(
                "rim:RegistryObjectList/rim:ExtrinsicObject/rim:ExternalIdentifier", NSMAP
            )
            if identifier.get("identificationScheme")
            == "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"
        }

    def retrieve_document(self, org: str, patient: str) -> list[str]:
        """ITI-43 of the patient's manifest: the errorCodes (none = returned)."""
        answer = self.soap(
            org,
            "/xds/repository",
            RETRIEVE_DOCUMENT_SET,
            retrieve_request((REPOSITORY, self.manifests[patient])),
        )
        return [e.get("errorCode", "") for e in answer.iterfind(".//rs:RegistryError", NSMAP)]

    def rad69(self, org: str, patient: str) -> tuple[int, list[str]]:
        """RAD-69 of the patient's first instance: (documents returned, errorCodes)."""
        series, sop = self.sops[patient][0]
        answer = self.soap(
            org,
            "/xds/imaging",
            RETRIEVE_IMAGING_DOCUMENT_SET,
            rad69_request([(self.studies[patient], series, sop)]),
        )
        documents = answer.findall("xdsb:DocumentResponse", NSMAP)
        errors = [e.get("errorCode", "") for e in answer.iterfind(".//rs:RegistryError", NSMAP)]
        return len(documents), errors


@pytest.fixture
def matrix(
    kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path
) -> Iterator[Matrix]:
    dest_ports = {name: free_port() for name in ("DESTA", "DESTB")}
    nodes = [
        {"ae_title": "STORESCU", "organization": A},
        {"ae_title": "PACSA", "organization": A},
        {"ae_title": "PACSB", "organization": B},
        {"ae_title": "PACSC", "organization": C},
        {"ae_title": "DESTA", "port": dest_ports["DESTA"], "organization": A},
        {"ae_title": "DESTB", "port": dest_ports["DESTB"], "organization": B},
    ]
    organizations = [{"oid": org, "name": f"Organisation {org[11:14]}"} for org in (A, B, C)]
    data_dir = tmp_path / "shared-data"
    servers: dict[str, KuvaServer] = {}
    for org in (A, B, C):  # one index and blob store, one HTTP organisation each
        servers[org] = kuva_server(
            nodes=nodes,
            organizations=organizations,
            extra={
                "archive": {"data_dir": str(data_dir)},
                "http": {"organization": org},
                "access": {"operators": [A]},
            },
            arrays={"access.rules": [{"register_holder": A, "recipient": B, "basis": BASIS}]},
        )
    studies: dict[str, str] = {}
    sops: dict[str, list[tuple[str, str]]] = {}
    for number, patient in enumerate((P1, P2), start=1):
        datasets = make_ct_series(2, rows=16, cols=16, patient_id=patient, seed=number)
        files = write_series(datasets, tmp_path / f"study{number}")
        result = storescu(files, LOOPBACK, servers[A].dicom_port, aec="KUVA")
        assert result.returncode == 0, result.stdout + result.stderr
        studies[patient] = datasets[0].StudyInstanceUID
        sops[patient] = [(ds.SeriesInstanceUID, ds.SOPInstanceUID) for ds in datasets]
    engine = make_engine(database_url)
    manifests: dict[str, str] = {}
    for patient, study_uid in studies.items():
        servers[A].kuva("xds", "publish", study_uid)
        with UnitOfWork(engine, write=False) as uow:
            (manifest,) = uow.documents.of_study(study_uid, "application/dicom")
        manifests[patient] = manifest.unique_id
    prohibited = servers[A].kuva(
        "patients", "prohibit", f"{P2}^^^&{FINNISH_PIC_ISSUER}&ISO", "--reason", "asked by P2"
    )
    assert "set" in prohibited.stdout, prohibited.stdout + prohibited.stderr
    with httpx.Client(trust_env=False, timeout=30) as client:
        yield Matrix(servers, engine, client, tmp_path, studies, sops, manifests, dest_ports)
    engine.dispose()


def test_access_matrix(matrix: Matrix) -> None:
    m = matrix
    s1, s2 = m.studies[P1], m.studies[P2]

    # --- C-FIND: A sees both, B only P1's study, C nothing; no patients of A for B/C
    def studies_found(org: str) -> set[str]:
        return {str(ds.StudyInstanceUID) for ds in m.find(org, "STUDY", "StudyInstanceUID")}

    assert studies_found(A) == {s1, s2}
    assert m.disclosures() == []  # the register holder's own reads are no disclosures
    assert studies_found(B) == {s1}
    assert studies_found(C) == set()
    assert m.find(B, "PATIENT", "PatientID") == []
    assert {str(ds.PatientID) for ds in m.find(A, "PATIENT", "PatientID")} == {P1, P2}
    assert m.find(B, "IMAGE", f"StudyInstanceUID={s2}", "SOPInstanceUID") == []
    records = m.disclosures()
    assert [(r.interface, r.recipient_organization, r.study_instance_uid) for r in records] == [
        ("C-FIND", B, s1)
    ]
    assert records[0].basis == BASIS
    assert (records[0].patient_id, records[0].register_holder) == (P1, A)

    # --- C-GET: B gets P1's study, nothing of P2's; C nothing
    # Each study: two CT images and the manifest ``kuva xds publish`` stored in it.
    assert m.get(B, s1) == 3
    assert m.get(B, s2) == 0
    assert m.get(C, s1) == 0
    assert m.get(A, s2) == 3

    # --- C-MOVE: to B's own node; never to a node of another organisation
    with StoreSCP(m.tmp_path / "destb", port=m.dest_ports["DESTB"], aet="DESTB") as scp:
        m.move(B, "DESTB", s1)
        assert len(scp.received()) == 3
        m.move(B, "DESTB", s2)
        assert len(scp.received()) == 3  # P2's study: no match for B
    refused = m.move(B, "DESTA", s1)
    assert "Refused: MoveDestinationUnknown" in refused
    assert "Move Destination DESTA belongs to another organisation" in m.dicom.log()

    # --- QIDO-RS, WADO-RS (dicomweb-client), metadata, WADO-URI through each org's node
    def qido_studies(org: str) -> set[str]:
        return {r["0020000D"]["Value"][0] for r in m.qido(org)}

    assert qido_studies(A) == {s1, s2}
    assert qido_studies(B) == {s1}
    assert qido_studies(C) == set()
    assert m.wado(B, s1) == 3
    assert m.wado(B, s2) == -1
    assert m.wado(C, s1) == -1
    assert m.status(B, f"/dicom-web/studies/{s1}/metadata") == 200
    assert m.status(B, f"/dicom-web/studies/{s2}/metadata") == 404
    assert m.status(C, f"/dicom-web/studies/{s1}/series") == 404
    series, sop = m.sops[P2][0]
    wado_uri = f"/wado?requestType=WADO&studyUID={s2}&seriesUID={series}&objectUID={sop}"
    wado_uri += "&contentType=application/dicom"
    assert m.status(B, wado_uri) == 404
    assert m.status(A, wado_uri) == 200

    # --- ITI-18, ITI-43, RAD-69 (the organisation named by XUA)
    assert m.find_documents(B, P1) == {m.manifests[P1]}
    assert m.find_documents(B, P2) == set()
    assert m.find_documents(C, P1) == set()
    assert m.find_documents(A, P2) == {m.manifests[P2]}
    assert m.retrieve_document(B, P1) == []
    assert m.retrieve_document(B, P2) == ["XDSDocumentUniqueIdError"]
    assert m.retrieve_document(C, P1) == ["XDSDocumentUniqueIdError"]
    assert m.rad69(B, P1) == (1, [])
    assert m.rad69(B, P2)[0] == 0
    assert m.rad69(C, P1)[0] == 0

    # --- every allowed read of another organisation's material left a record
    records = m.disclosures()
    assert {r.recipient_organization for r in records} == {B}
    assert {r.patient_id for r in records} == {P1}
    assert {r.basis for r in records} == {BASIS}
    interfaces = {r.interface for r in records}
    assert interfaces == {
        "C-FIND",
        "C-GET",
        "C-MOVE",
        "QIDO-RS",
        "WADO-RS",
        "ITI-18",
        "ITI-43",
        "RAD-69",
    }, interfaces
    # Requests for objects that exist but may not be read: Security Alerts (110132)
    with m.engine.connect() as conn:
        alerts = [
            message
            for (message,) in conn.execute(
                select(audit_record.c.message).where(audit_record.c.event_id == "110113")
            )
            if 'csd-code="110132"' in message
        ]
    # The Alert Description is a ParticipantObjectDetail: base64 in the message.
    described = " ".join(
        base64.b64decode(value).decode("utf-8", "replace")
        for alert in alerts
        for value in re.findall(r'value="([A-Za-z0-9+/=]+)"', alert)
    )
    for interface in ("C-GET", "C-MOVE", "WADO-RS", "WADO-URI", "ITI-43"):
        assert f"{interface}: the access rules" in described, interface

    # --- the admin API: only A's clients; lifting the prohibition lets B read P2's study
    patient = urllib.parse.quote(f"{P2}^^^&{FINNISH_PIC_ISSUER}&ISO", safe="")
    path = f"/admin/patients/{patient}/disclosure-prohibition"
    assert m.client.get(m.nodes[B].http + path).status_code == 403
    shown = m.client.get(m.nodes[A].http + path)
    assert shown.status_code == 200 and shown.json()["reason"] == "asked by P2"
    assert m.client.delete(m.nodes[B].http + path).status_code == 403
    assert m.client.delete(m.nodes[A].http + path).status_code == 204
    assert studies_found(B) == {s1, s2}
    assert m.client.put(m.nodes[A].http + path, json={"reason": "again"}).status_code == 201
    assert studies_found(B) == {s1}
    assert m.client.put(m.nodes[A].http + path, json={"bogus": 1}).status_code == 400
