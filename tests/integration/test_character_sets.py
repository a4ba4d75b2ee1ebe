"""Undeclared character sets, end to end (SQLite and PostgreSQL).

Some systems send non-ASCII text without Specific Character Set (0008,0005). A
node's ``default_character_set`` decodes what it sends without one: the objects it
stores (dcmtk storescu; the stored bytes stay exactly as sent, only the index reads
the text so) and its C-FIND identifiers (dcmtk findscu; answered in that character
set, declared). A node without it is answered as before.
"""

from __future__ import annotations

import datetime as dt
import subprocess
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from tests.support.archive import expected_blob, index_rows
from tests.support.peers import LOOPBACK, dcmtk_available, dcmtk_env, storescu
from tests.support.server import KuvaServer
from tests.support.synthetic import (
    FINNISH_LETTERS_PATIENT_NAME,
    finnish_test_pic,
    make_ct_series,
    without_specific_character_set,
    write_series,
)

pytestmark = [
    pytest.mark.dcmtk,
    pytest.mark.skipif(not dcmtk_available(), reason="dcmtk not installed"),
]

PLAIN = "MODALITY1"
UTF8 = "UTF8PACS"  # default_character_set = "ISO_IR 192"
LATIN1 = "LATIN1RIS"  # default_character_set = "ISO_IR 100"
NODES = [
    {"ae_title": PLAIN, "port": 1},
    {"ae_title": UTF8, "port": 1, "default_character_set": "ISO_IR 192"},
    {"ae_title": LATIN1, "port": 1, "default_character_set": "ISO_IR 100"},
]


def undeclared(tmp_path: Path, name: str, charset: str, born: dt.date) -> tuple[Path, Dataset]:
    """A CT file of a patient of its own whose Patient's Name is in ``charset``, with
    no (0008,0005) at all."""
    (ds,) = make_ct_series(
        1,
        rows=16,
        cols=16,
        study_uid=generate_uid(),
        patient_id=finnish_test_pic(born),
        specific_character_set=charset,
    )
    ds.PatientName = name
    (path,) = write_series([ds], tmp_path / generate_uid())
    path.write_bytes(without_specific_character_set(path.read_bytes()))
    sent = pydicom.dcmread(path, stop_before_pixels=True)
    assert "SpecificCharacterSet" not in sent
    return path, sent


def store(server: KuvaServer, path: Path, aet: str) -> None:
    result = storescu([path], LOOPBACK, server.dicom_port, aet=aet, aec=server.ae_title)
    assert result.returncode == 0, result.stdout + result.stderr


def find(server: KuvaServer, tmp_path: Path, aet: str, name: bytes) -> tuple[list[Dataset], str]:
    """findscu (Study Root) by Patient's Name as raw bytes, no (0008,0005) in the
    identifier; the responses and findscu's debug output."""
    out = tmp_path / f"find-{generate_uid()[-12:]}"
    out.mkdir()
    command: list[str | bytes] = ["findscu", "-S", "-d", "-X", "-od", str(out)]
    command += ["-aet", aet, "-aec", server.ae_title, LOOPBACK, str(server.dicom_port)]
    for key in (b"QueryRetrieveLevel=STUDY", b"PatientName=" + name, b"StudyInstanceUID"):
        command += ["-k", key]
    result = subprocess.run(command, capture_output=True, env=dcmtk_env(), timeout=60)
    output = (result.stdout + result.stderr).decode("utf-8", "replace")
    assert result.returncode == 0, output
    request = output.split("Request Identifier", 1)[1].split("=====", 1)[0]
    assert "(0008,0005)" not in request  # the query declares no character set
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))], output


def test_stored_objects_read_in_the_node_character_set_bytes_kept(
    kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path
) -> None:
    server = kuva_server(nodes=NODES)
    utf8, utf8_sent = undeclared(tmp_path, "Öberg^Anna", "ISO_IR 192", dt.date(1990, 2, 2))
    latin1, latin1_sent = undeclared(tmp_path, "Äijälä^Öljy", "ISO_IR 100", dt.date(1985, 3, 3))
    store(server, utf8, UTF8)
    store(server, latin1, LATIN1)
    rows = index_rows(database_url)
    for path, sent in ((utf8, utf8_sent), (latin1, latin1_sent)):
        row = rows[sent.SOPInstanceUID]
        assert (server.blob_dir / row.blob_key).read_bytes() == expected_blob(
            path, sent.SOPClassUID, sent.SOPInstanceUID, sent.file_meta.TransferSyntaxUID
        )

    # The index holds the names as their senders meant them: each node finds its
    # own by a query in its own character set, undeclared too.
    (found,), _ = find(server, tmp_path, UTF8, "Öberg*".encode())
    assert (str(found.PatientName), found.SpecificCharacterSet) == ("Öberg^Anna", "ISO_IR 192")
    assert found.StudyInstanceUID == utf8_sent.StudyInstanceUID
    (found,), _ = find(server, tmp_path, LATIN1, "ÄIJÄLÄ*".encode("latin-1"))
    assert (str(found.PatientName), found.SpecificCharacterSet) == ("Äijälä^Öljy", "ISO_IR 100")
    assert found.StudyInstanceUID == latin1_sent.StudyInstanceUID


def test_query_without_character_set_read_in_the_node_character_set(
    kuva_server: Callable[..., KuvaServer], tmp_path: Path
) -> None:
    server = kuva_server(nodes=NODES)
    # Stored with (0008,0005) ISO_IR 192 declared, from the node without a default.
    (ds,) = make_ct_series(
        1, rows=16, cols=16, study_uid=generate_uid(), patient_name=FINNISH_LETTERS_PATIENT_NAME
    )
    (path,) = write_series([ds], tmp_path / "declared")
    store(server, path, PLAIN)

    # A UTF-8 query with no character set, from the ISO_IR 192 node: found, and
    # answered in UTF-8 with (0008,0005) saying so.
    responses, output = find(server, tmp_path, UTF8, "Äij*".encode())
    assert [r.StudyInstanceUID for r in responses] == [ds.StudyInstanceUID], output
    (answer,) = responses
    assert answer.SpecificCharacterSet == "ISO_IR 192"
    assert str(answer.PatientName) == FINNISH_LETTERS_PATIENT_NAME

    # The same bytes from a node without a default: read as before, nothing found.
    responses, _ = find(server, tmp_path, PLAIN, "Äij*".encode())
    assert responses == []
