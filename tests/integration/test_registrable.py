"""No silent non-registration, end to end (SQLite and PostgreSQL).

While registration is on, an instance whose patient the XDS registry would not
take is refused at C-STORE (0xC000 with an Error Comment naming the attribute)
instead of being archived and never registered. A node with ``default_issuer``
has its instances without Issuer of Patient ID archived as sent, indexed under
that issuer, registered and announced. Finnish identity codes: a wrong check
character is refused, the century signs of 2023 are valid. With registration
off, nothing needs registering and such an instance is archived as before. The
registry knows the temporary ids of a configured organisation (ITI-42, ITI-18).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from kuva.index import schema
from kuva.index.uow import UnitOfWork
from kuva.model.xds import PatientId
from kuva.services.registration import IAN_TASK, REGISTRATION_TASK
from kuva.xds.namespaces import REGISTER_DOCUMENT_SET
from tests.support.archive import blob_files, expected_blob, index_rows
from tests.support.peers import LOOPBACK, dcmtk_available, storescu
from tests.support.server import KuvaServer, free_port
from tests.support.site import HOLDER, SUCCESS, Site, node
from tests.support.synthetic import (
    FINNISH_PIC_ISSUER,
    make_ct_series,
    write_series,
)
from tests.unit.test_ebrim import sample_payload
from tests.unit.test_registry_service import fill
from tests.unit.test_repository import count, status_and_errors

pytestmark = [
    pytest.mark.dcmtk,
    pytest.mark.skipif(not dcmtk_available(), reason="dcmtk not installed"),
]

DEFAULTING = "MODALITY2"  # a node of the holder with default_issuer


def without_issuer(tmp_path: Path, n: int = 2) -> tuple[str, list[Path]]:
    """A study of ``n`` instances with no Issuer of Patient ID; its UID and files."""
    study_uid = generate_uid()
    datasets = make_ct_series(n, rows=16, cols=16, study_uid=study_uid)
    for ds in datasets:
        del ds.IssuerOfPatientID
    return study_uid, write_series(datasets, tmp_path / study_uid)


def instances_of(site: Site, study_uid: str) -> int:
    with UnitOfWork(site.engine, write=False) as uow:
        holdings = uow.manifests.holdings(study_uid)
    return 0 if holdings is None else len(holdings.instances)


def test_no_issuer_refused_from_a_plain_node_archived_and_registered_from_a_defaulting_one(
    site_factory: Callable[..., Site], tmp_path: Path
) -> None:
    site = site_factory(
        more_nodes=(
            {**node(DEFAULTING, free_port(), HOLDER), "default_issuer": FINNISH_PIC_ISSUER},
        )
    )
    ris = site.receiver()
    study_uid, files = without_issuer(tmp_path)

    # --- a plain node: refused, named, nothing stored
    refused = site.store(files, debug=True)
    output = refused.stdout + refused.stderr
    assert "0xc000" in output.lower(), output
    assert "Issuer of Patient ID (0010,0021) missing" in output
    assert instances_of(site, study_uid) == 0
    assert blob_files(site.server.blob_dir) == []
    assert "Issuer of Patient ID (0010,0021) missing" in site.server.log()

    # --- the node with default_issuer: archived as sent, indexed under its issuer
    stored = site.store(files, aet=DEFAULTING)
    assert stored.returncode == 0, stored.stdout + stored.stderr
    assert instances_of(site, study_uid) == len(files)
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert "IssuerOfPatientID" not in ds
        assert site.blob(ds.SOPInstanceUID) == expected_blob(
            path, ds.SOPClassUID, ds.SOPInstanceUID, ds.file_meta.TransferSyntaxUID
        )
    (answer,) = site.find("STUDY", f"StudyInstanceUID={study_uid}", "IssuerOfPatientID")
    assert answer.IssuerOfPatientID == FINNISH_PIC_ISSUER

    # --- and registered: a manifest under the patient's CX, an IAN to the holder
    (ian,) = ris.wait_for(1)
    assert ian.study_uid == study_uid
    site.wait_tasks(REGISTRATION_TASK, lambda tasks: [t["status"] for t in tasks] == ["done"])
    site.wait_tasks(IAN_TASK, lambda tasks: [t["status"] for t in tasks] == ["done"])
    assert len(site.find_documents()) == 1
    assert len(site.manifests(study_uid)) == 1


def test_identity_codes_checked_new_century_signs_valid(
    site_factory: Callable[..., Site], tmp_path: Path
) -> None:
    site = site_factory()
    # 010181-900C is valid; the same person's code with a wrong check character is not.
    wrong = make_ct_series(1, rows=16, cols=16, patient_id="010181-900D")
    refused = site.store(write_series(wrong, tmp_path / "wrong"), debug=True)
    output = refused.stdout + refused.stderr
    assert "0xc000" in output.lower(), output
    assert "Patient ID (0010,0020) identity code: wrong check character" in output
    assert instances_of(site, wrong[0].StudyInstanceUID) == 0
    assert "010181-900D" not in site.server.log()  # an identity code is personal data

    # The century signs of 2023 (Y X W V U for the 1900s, B-F for the 2000s).
    for number, code in enumerate(("010181Y900C", "010181U900C", "010105B900S", "010105F900S")):
        datasets = make_ct_series(1, rows=16, cols=16, patient_id=code)
        result = site.store(write_series(datasets, tmp_path / f"new{number}"))
        assert result.returncode == 0, (code, result.stdout + result.stderr)
        assert instances_of(site, datasets[0].StudyInstanceUID) == 1


def test_registration_off_archives_without_issuer(
    kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path
) -> None:
    server = kuva_server(extra={"registration": {"enabled": False}})
    _, files = without_issuer(tmp_path, 1)
    result = storescu(files, LOOPBACK, server.dicom_port, aec=server.ae_title)
    assert result.returncode == 0, result.stdout + result.stderr
    (row,) = index_rows(database_url).values()
    assert (server.blob_dir / row.blob_key).is_file()


def test_embedded_default_refuses_what_it_cannot_register(
    kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path
) -> None:
    """No [[nodes]], registration on (the defaults): refused, not silently kept."""
    server = kuva_server(extra={"registration": {"enabled": True}})
    _, files = without_issuer(tmp_path, 1)
    result = storescu(files, LOOPBACK, server.dicom_port, aec=server.ae_title, extra_args=["-d"])
    assert "Issuer of Patient ID (0010,0021) missing" in result.stdout + result.stderr
    assert index_rows(database_url) == {}


# --------------------------------------------------------------------------- temporary ids


def test_temporary_ids_of_a_configured_organisation_are_known(
    site_factory: Callable[..., Site],
) -> None:
    site = site_factory()  # organisations 1.2.246.10.12345678.10 and 1.2.246.10.87654321.10
    temporary = PatientId(f"T{uuid.uuid4().hex[:10]}", "1.2.246.10.12345678.22.2026")
    unknown = PatientId(f"T{uuid.uuid4().hex[:10]}", "1.2.246.10.11111111.22.2026")
    register = sample_payload("iti42-RegisterDocumentSet-b-request.xml")
    # ITI-42: no image of the patient is archived, no identity feed, yet the id is known.
    answer = site.registry(REGISTER_DOCUMENT_SET, fill(register, temporary))
    assert status_and_errors(answer) == (SUCCESS, [])
    answer = site.registry(REGISTER_DOCUMENT_SET, fill(register, unknown))
    assert [code for code, _ in status_and_errors(answer)[1]] == ["XDSUnknownPatientId"]
    # ITI-18 finds the registered entry under the temporary id, and only that.
    find = "iti18-FindDocuments-request.xml"
    (entry,) = site.stored_query(find, {"$patient_id$": str(temporary)})
    assert entry.get("status") == "urn:oasis:names:tc:ebxml-regrep:StatusType:Approved"
    assert site.stored_query(find, {"$patient_id$": str(unknown)}) == []
    assert count(site.engine, schema.patient) == 0  # known without a patient row
