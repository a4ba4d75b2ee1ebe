"""A kuva site for registration and correction tests: a running ``kuva serve`` of
one register holder with a modality node, an IAN receiver (the holder's RIS), a
commitment SCU node and another organisation's IAN receiver that must hear
nothing; and the ITI-18 / ITI-43 / RAD-69 and ``kuva tasks`` calls the tests make.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pydicom
from lxml import etree
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import Engine

from kuva.index.database import make_engine
from kuva.index.uow import UnitOfWork
from kuva.model.uids import made_by_kuva
from kuva.model.xds import AvailabilityStatus, ObjectKind, PatientId
from kuva.xds.namespaces import (
    NSMAP,
    REGISTRY_STORED_QUERY,
    q,
)
from tests.support.dcmjs import DcmjsIanReceiver, dcmjs_available
from tests.support.ian import IanReceiver
from tests.support.peers import LOOPBACK, dcmtk_env, storescu
from tests.support.server import KuvaServer, free_port
from tests.support.synthetic import (
    DEFAULT_PATIENT_ID,
    FINNISH_PIC_ISSUER,
    make_ct_series,
    write_series,
)
from tests.unit.test_ebrim import sample_payload
from tests.unit.test_repository import answer_of, mtom_documents, soap_envelope

HOLDER = "1.2.246.10.12345678.10"
OTHER = "1.2.246.10.87654321.10"
MODALITY = "STORESCU"  # storescu's calling AE title: a node of the holder
PATIENT = PatientId(DEFAULT_PATIENT_ID, FINNISH_PIC_ISSUER)
SUCCESS = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"
STABLE_SECONDS = 1
BASIS = "treatment relationship"


@dataclass
class Site:
    """A running kuva, the holder's IAN receiver port and the other organisation's."""

    server: KuvaServer
    engine: Engine
    client: httpx.Client
    tmp_path: Path
    ian_port: int
    other: IanReceiver
    # A second, independent IAN SCP of the holder (dcmjs-dimse), when Node.js is here.
    dcmjs: DcmjsIanReceiver | None = None
    receivers: list[IanReceiver] = field(default_factory=list)

    def receiver(self) -> IanReceiver:
        """Start (or start again) the holder's IAN SCP on its configured port."""
        scp = IanReceiver(self.ian_port, ae_title="RIS")
        self.receivers.append(scp)
        return scp

    def send(self, n: int, *, study_uid: str, series_number: int = 1) -> list[Path]:
        datasets = make_ct_series(
            n,
            rows=16,
            cols=16,
            patient_id=DEFAULT_PATIENT_ID,
            study_uid=study_uid,
            accession_number="T2026000077",
            series_number=series_number,
            seed=series_number,
        )
        paths = write_series(datasets, self.tmp_path / f"{study_uid}-{series_number}")
        result = self.store(paths)
        assert result.returncode == 0, result.stdout + result.stderr
        return paths

    def store(
        self, paths: list[Path], *, aet: str = MODALITY, debug: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """dcmtk storescu -v (-d: with each response's Status and Error Comment) of
        ``paths`` from node ``aet``; its exit status unchecked."""
        return storescu(
            paths,
            LOOPBACK,
            self.server.dicom_port,
            aet=aet,
            aec="KUVA",
            extra_args=["-d" if debug else "-v"],
        )

    def find(self, level: str, *keys: str) -> list[Dataset]:
        """dcmtk findscu (Study Root) from the modality node; the responses."""
        out = self.tmp_path / f"find-{generate_uid()[-12:]}"
        out.mkdir()
        command = ["findscu", "-S", "-X", "-od", str(out), "-aet", MODALITY, "-aec", "KUVA"]
        command += [LOOPBACK, str(self.server.dicom_port), "-k", f"QueryRetrieveLevel={level}"]
        for key in keys:
            command += ["-k", key]
        result = subprocess.run(command, capture_output=True, env=dcmtk_env(), timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]

    def tasks(self, kind: str) -> list[dict[str, str]]:
        listed = self.server.kuva("tasks", "list", "--plain", "--kind", kind).stdout
        keys = (
            "pk",
            "kind",
            "subject",
            "status",
            "attempts",
            "created",
            "next",
            "error",
            "to",
            "run_by",
        )
        return [dict(zip(keys, line.split("\t"), strict=True)) for line in listed.splitlines()]

    def wait_tasks(self, kind: str, test: Callable[[list[dict[str, str]]], bool]) -> None:
        deadline = time.monotonic() + 30
        while not test(self.tasks(kind)):
            assert time.monotonic() < deadline, self.tasks(kind)
            time.sleep(0.2)

    def stored_query(self, query: str, values: dict[str, str]) -> list[Any]:
        """ITI-18 with a NIST sample query, ``$name$`` values replaced; ExtrinsicObjects."""
        payload = sample_payload(query)
        for value in payload.iter(q("rim", "Value")):
            for name, replacement in values.items():
                if value.text and name in value.text:
                    value.text = value.text.replace(name, replacement)
        answer = self.registry(REGISTRY_STORED_QUERY, payload)
        assert answer.get("status") == SUCCESS, etree.tostring(answer)
        return list(answer.iterfind("rim:RegistryObjectList/rim:ExtrinsicObject", NSMAP))

    def registry(self, action: str, payload: Any) -> Any:
        """A SOAP request to the registry endpoint (ITI-18, ITI-42); its answer."""
        response = self.client.post(
            self.server.http + "/xds/registry",
            content=soap_envelope(action, payload),
            headers={"content-type": "application/soap+xml; charset=UTF-8"},
        )
        assert response.status_code == 200, response.text
        answer, _ = answer_of(response)
        return answer

    def find_documents(self) -> dict[str, str]:
        """uniqueId -> entryUUID of the patient's Approved DocumentEntries (FindDocuments)."""
        found = {}
        for entry in self.stored_query(
            "iti18-FindDocuments-request.xml", {"$patient_id$": str(PATIENT)}
        ):
            (unique_id,) = [
                identifier.get("value")
                for identifier in entry.iterfind("rim:ExternalIdentifier", NSMAP)
                if identifier.get("identificationScheme")
                == "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"
            ]
            found[unique_id] = entry.get("id")
        return found

    def manifests(self, study_uid: str) -> dict[str, AvailabilityStatus]:
        """The study's kuva-made manifests in the registry: uniqueId -> status."""
        with UnitOfWork(self.engine, write=False) as uow:
            ours = [d.unique_id for d in uow.documents.of_study(study_uid, "application/dicom")]
            return {
                found.unique_id or "": found.status
                for found in uow.registry.find_by_unique_ids(ours)
                if found.kind is ObjectKind.DOCUMENT_ENTRY
            }

    def blob(self, sop_uid: str) -> bytes:
        """The stored bytes of an instance (its blob: file meta + data set as received)."""
        with UnitOfWork(self.engine, write=False) as uow:
            stored = uow.instances.get(sop_uid)
        assert stored is not None, sop_uid
        return (self.server.blob_dir / stored.blob_key).read_bytes()

    def kuva_instances(self, study_uid: str) -> list[str]:
        """SOP Instance UIDs of the kuva-made objects (manifests) stored in the study."""
        with UnitOfWork(self.engine, write=False) as uow:
            holdings = uow.manifests.holdings(study_uid)
        assert holdings is not None
        return [h.sop_instance_uid for h in holdings.instances if made_by_kuva(h.sop_instance_uid)]

    def retrieve(self, action: str, body: Any, path: str) -> tuple[Any, dict[str, bytes]]:
        response = self.client.post(
            self.server.http + path,
            content=soap_envelope(action, body, OTHER),
            headers={"content-type": "application/soap+xml; charset=UTF-8"},
        )
        assert response.status_code == 200, response.text
        answer, parts = answer_of(response)
        registry = answer.find("rs:RegistryResponse", NSMAP)
        assert registry is not None and registry.get("status") == SUCCESS, response.text
        return answer, mtom_documents(answer, parts)


def node(ae_title: str, port: int, organization: str, ian: bool = False) -> dict[str, Any]:
    return {
        "ae_title": ae_title,
        "host": "127.0.0.1",
        "port": port,
        "organization": organization,
        "ian": ian,
    }


def start_site(
    kuva_server: Callable[..., KuvaServer],
    database_url: str,
    tmp_path: Path,
    *,
    dcmjs: bool = False,
    more_nodes: tuple[dict[str, Any], ...] = (),
    retention: dict[str, Any] | None = None,
    **registration: Any,
) -> Site:
    ian_port = free_port()
    other = IanReceiver(ae_title="OTHERRIS")
    second = DcmjsIanReceiver(ae_title="DCMJSRIS") if dcmjs and dcmjs_available() else None
    more = [node("DCMJSRIS", second.port, HOLDER, ian=True)] if second else []
    server = kuva_server(
        organizations=[
            {"oid": HOLDER, "name": "Testin sairaala"},
            {"oid": OTHER, "name": "Toinen sairaala"},
        ],
        nodes=[
            node(MODALITY, free_port(), HOLDER),
            node("RIS", ian_port, HOLDER, ian=True),
            node("PACS1", free_port(), HOLDER),  # the commitment SCU
            node("OTHERRIS", other.port, OTHER, ian=True),
            *more,
            *more_nodes,
        ],
        extra={
            "registration": {
                "enabled": True,
                "stable_seconds": STABLE_SECONDS,
                # As [tasks] backoff_max_seconds of the tests' servers: a node that
                # comes back gets its IANs within a second.
                "ian_backoff_max_seconds": 1.0,
                **registration,
            },
            "tasks": {"max_attempts": 30},
            "http": {"organization": HOLDER},  # STOW-RS stores for the holder
            **({"retention": retention} if retention is not None else {}),
        },
        # The other organisation reads the holder's material (ITI-43, RAD-69) on a
        # basis: each read is a disclosure (services.access).
        arrays={"access.rules": [{"register_holder": HOLDER, "recipient": OTHER, "basis": BASIS}]},
    )
    return Site(
        server,
        make_engine(database_url),
        httpx.Client(trust_env=False, timeout=30),
        tmp_path,
        ian_port,
        other,
        second,
    )


def close_site(site: Site) -> None:
    for scp in [*site.receivers, site.other]:
        scp.close()
    if site.dcmjs is not None:
        site.dcmjs.close()
    site.client.close()
    site.engine.dispose()
