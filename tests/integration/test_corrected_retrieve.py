"""Objects go out with the patient's current identity after HL7 corrections.

A study stored with dcmtk's storescu for one patient is merged (ADT^A40, python-hl7's
``mllp_send``) into another whose name is then corrected (ADT^A08, a Finnish name).
dcmtk's movescu and getscu, dicomweb-client (WADO-RS) and WADO-URI then receive
objects carrying the survivor's Patient ID, issuer and current name, with the values
as stored in the Original Attributes Sequence and the stored pixel data byte for
byte; a node configured ``as_received`` receives the stored objects exactly. After
an A37 unlink the objects go out as stored again. SQLite and PostgreSQL.
"""

from __future__ import annotations

import io
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from kuva.config import LOCAL_ORGANIZATION_OID
from tests.support.archive import dataset_bytes
from tests.support.hl7 import MERGED, SURVIVOR, Hl7Site, adt, mrg, msa, pid
from tests.support.peers import LOOPBACK, StoreSCP, dcmtk_available, dcmtk_env, free_port
from tests.support.server import KuvaServer
from tests.support.synthetic import FINNISH_PIC_ISSUER

pytestmark = [
    pytest.mark.dcmtk,
    pytest.mark.skipif(not dcmtk_available(), reason="dcmtk not installed"),
]

CORRECTED = "CORRECTED"  # a Move Destination receiving corrected objects
RAW = "ASRECEIVED"  # one configured as_received
GETSCU = "GETSCU"
NEW_NAME = "Äijälä^Öljymäki"


def _node(ae_title: str, port: int, **extra: Any) -> dict[str, Any]:
    return {"ae_title": ae_title, "host": LOOPBACK, "port": port, "organization": "", **extra}


def _movescu(server: KuvaServer, destination: str, study_uid: str) -> None:
    command = [
        "movescu", "-S", "-aet", "MOVESCU", "-aec", server.ae_title, "-aem", destination,
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
        LOOPBACK, str(server.dicom_port),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=dcmtk_env(), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def _assert_corrected(ds: Dataset, stored: dict[str, Path]) -> None:
    assert ds.PatientID == SURVIVOR
    assert ds.IssuerOfPatientID == FINNISH_PIC_ISSUER
    assert str(ds.PatientName) == NEW_NAME
    item = ds.OriginalAttributesSequence[-1]
    original = item.ModifiedAttributesSequence[0]
    assert original.PatientID == MERGED
    assert str(original.PatientName) == "Testinen^Maija"
    assert item.ReasonForTheAttributeModification == "CORRECT"
    assert item.ModifyingSystem == "kuva"
    as_stored = pydicom.dcmread(stored[ds.SOPInstanceUID])
    assert ds.PixelData == as_stored.PixelData
    assert as_stored.PatientID == MERGED  # the stored object itself is unchanged


def _stored_files(site: Hl7Site, study_uid: str) -> dict[str, Path]:
    files = sorted((site.tmp / study_uid).iterdir())
    return {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in files}


def test_retrieves_carry_the_corrected_identity(
    kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path
) -> None:
    corrected_port, raw_port = free_port(), free_port()
    with (
        StoreSCP(tmp_path / "corrected", aet=CORRECTED, port=corrected_port) as corrected,
        StoreSCP(tmp_path / "raw", aet=RAW, port=raw_port, extra_args=["+B"]) as raw,
    ):
        server = kuva_server(
            nodes=[
                _node("STORESCU", 1),
                _node("MOVESCU", 1),
                _node(GETSCU, 1),
                _node(CORRECTED, corrected_port),
                _node(RAW, raw_port, as_received=True),
            ],
            # HTTP clients (WADO) act for the nodes' organisation, the local one.
            extra={"http": {"organization": LOCAL_ORGANIZATION_OID}},
        )
        site = Hl7Site(server, database_url, tmp_path)
        site.store(SURVIVOR)
        study_uid = site.store(MERGED, n=3)
        stored = _stored_files(site, study_uid)

        merge = adt("A40", pid(SURVIVOR), mrg(MERGED), structure="ADT_A39")
        assert msa(site.mllp_send(merge))[0] == "AA"
        update = adt("A08", pid(SURVIVOR, name=NEW_NAME), structure="ADT_A01")
        assert msa(site.mllp_send(update))[0] == "AA"

        # C-MOVE: corrected for one node, exactly as received for the other
        _movescu(server, CORRECTED, study_uid)
        moved = [pydicom.dcmread(p) for p in corrected.received()]
        assert len(moved) == 3
        for ds in moved:
            _assert_corrected(ds, stored)
        _movescu(server, RAW, study_uid)
        assert len(raw.received()) == 3
        for path in raw.received():
            uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
            assert dataset_bytes(path) == dataset_bytes(stored[uid])

        # C-GET
        got = site.getscu(study_uid, aet=GETSCU)
        assert len(got) == 3
        for ds in got:
            _assert_corrected(ds, stored)

        # WADO-RS (dicomweb-client) and WADO-URI
        first = pydicom.dcmread(next(iter(stored.values())), stop_before_pixels=True)
        client = DICOMwebClient(f"http://{LOOPBACK}:{server.http_port}/dicom-web")
        ds = client.retrieve_instance(study_uid, first.SeriesInstanceUID, first.SOPInstanceUID)
        _assert_corrected(ds, stored)
        response = httpx.get(
            f"http://{LOOPBACK}:{server.http_port}/wado",
            params={
                "requestType": "WADO",
                "studyUID": study_uid,
                "seriesUID": first.SeriesInstanceUID,
                "objectUID": first.SOPInstanceUID,
                "contentType": "application/dicom",
            },
            timeout=30,
        )
        assert response.status_code == 200, response.text
        _assert_corrected(pydicom.dcmread(io.BytesIO(response.content)), stored)

        # undone (A37 unlink): the objects go out as stored again
        unlink = adt("A37", pid(SURVIVOR), pid(MERGED))
        assert msa(site.mllp_send(unlink))[0] == "AA"
        for ds in site.getscu(study_uid, aet=GETSCU):
            assert ds.PatientID == MERGED
            assert "OriginalAttributesSequence" not in ds
