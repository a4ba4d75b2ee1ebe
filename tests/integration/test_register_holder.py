"""A study has one register holder: an instance of a study another organisation
archived is refused, over C-STORE (dcmtk storescu) and STOW-RS (dicomweb-client),
and nothing of it is written; SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from pydicom.uid import generate_uid

from kuva.dicom.status import NOT_REGISTER_HOLDER
from tests.integration.test_stow import failed, first, read_files, web
from tests.support.archive import blob_files, index_rows
from tests.support.peers import LOOPBACK, dcmtk_available, storescu
from tests.support.server import KuvaServer, free_port
from tests.support.site import HOLDER, OTHER, node
from tests.support.synthetic import DEFAULT_PATIENT_ID, make_ct_series, write_series

pytestmark = [
    pytest.mark.dcmtk,
    pytest.mark.skipif(not dcmtk_available(), reason="dcmtk not installed"),
]

REFUSED = "study archived by another register holder; refused"


def test_instance_of_another_holders_study_is_refused(
    kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path
) -> None:
    server = kuva_server(
        organizations=[
            {"oid": HOLDER, "name": "Testin sairaala"},
            {"oid": OTHER, "name": "Toinen sairaala"},
        ],
        nodes=[node("STORESCU", free_port(), HOLDER), node("OTHERPACS", free_port(), OTHER)],
        extra={"http": {"organization": OTHER}},  # STOW-RS stores for the other one
    )
    study_uid = generate_uid()
    images = make_ct_series(4, rows=16, cols=16, patient_id=DEFAULT_PATIENT_ID, study_uid=study_uid)
    ours = write_series(images[:2], tmp_path / "holder")
    stored = storescu(ours, LOOPBACK, server.dicom_port, aet="STORESCU", aec="KUVA")
    assert stored.returncode == 0, stored.stdout + stored.stderr
    rows, blobs = index_rows(database_url), blob_files(server.blob_dir)

    theirs = write_series(images[2:3], tmp_path / "other")
    refused = storescu(
        theirs, LOOPBACK, server.dicom_port, aet="OTHERPACS", aec="KUVA", extra_args=["-d"]
    )
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0
    assert f"0x{NOT_REGISTER_HOLDER:04x}" in output.lower(), output
    assert REFUSED in output

    with pytest.raises(requests.HTTPError) as caught:
        web(server).store_instances(read_files(write_series(images[3:], tmp_path / "web")))
    assert caught.value.response is not None and caught.value.response.status_code == 409
    [item] = failed(caught.value.response.json())
    assert first(item, "00081197") == NOT_REGISTER_HOLDER
    assert first(item, "00000902") == REFUSED

    # nothing written: no row, no blob (the refused blobs were not left behind)
    assert index_rows(database_url) == rows
    assert blob_files(server.blob_dir) == blobs
    assert "refused instance" in server.log()

    # its own studies the other organisation archives as ever
    own = make_ct_series(1, rows=16, cols=16, patient_id=DEFAULT_PATIENT_ID, seed=9)
    mine = storescu(
        write_series(own, tmp_path / "own"), LOOPBACK, server.dicom_port, aet="OTHERPACS",
        aec="KUVA",
    )  # fmt: skip
    assert mine.returncode == 0, mine.stdout + mine.stderr
    assert str(own[0].SOPInstanceUID) in index_rows(database_url)
