"""C-ECHO and C-STORE against a running kuva with dcmtk's echoscu and storescu."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.support.archive import (
    blob_files,
    check_blob_integrity,
    dataset_bytes,
    expected_blob,
    index_rows,
)
from tests.support.peers import dcmtk_available, dcmtk_env
from tests.support.server import KuvaServer
from tests.support.synthetic import (
    make_bad_objects,
    make_ct_series,
    make_transfer_syntax_files,
    write_series,
)

pytestmark = [
    pytest.mark.dcmtk,
    pytest.mark.skipif(not dcmtk_available(), reason="dcmtk not installed"),
]

NODES = [
    {"ae_title": "MODALITY1", "host": "127.0.0.1", "port": 1, "organization": ""},
]


# storescu option proposing each transfer syntax (dcmtk 3.6.7).
PROPOSE = {
    "1.2.840.10008.1.2": "-xi",
    "1.2.840.10008.1.2.1": "-xe",
    "1.2.840.10008.1.2.1.99": "-xd",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.5": "-xr",
}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, env=dcmtk_env(), timeout=120)


def storescu(
    server: KuvaServer, *paths: Path, aet: str = "MODALITY1", options: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    return run(
        "storescu",
        "-v",
        "-aet",
        aet,
        "-aec",
        server.ae_title,
        *options,
        "127.0.0.1",
        str(server.dicom_port),
        *map(str, paths),
    )


def assert_stored_as_sent(server: KuvaServer, database_url: str, files: list[Path]) -> None:
    """Each file is indexed once and its blob is canonical meta + the data set as sent."""
    rows = index_rows(database_url)
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        row = rows[ds.SOPInstanceUID]
        blob = (server.blob_dir / row.blob_key).read_bytes()
        assert blob == expected_blob(
            path, ds.SOPClassUID, ds.SOPInstanceUID, ds.file_meta.TransferSyntaxUID
        )
        assert blob.endswith(dataset_bytes(path))
        assert row.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID
        assert row.size == len(blob)


def test_echo_and_unknown_calling_ae(kuva_server: Callable[..., KuvaServer]) -> None:
    server = kuva_server(nodes=NODES)
    ok = run("echoscu", "-aet", "MODALITY1", "-aec", "KUVA", "127.0.0.1", str(server.dicom_port))
    assert ok.returncode == 0, ok.stderr
    stranger = run(
        "echoscu", "-v", "-aet", "STRANGER", "-aec", "KUVA", "127.0.0.1", str(server.dicom_port)
    )
    assert stranger.returncode != 0
    assert "Calling AE Title Not Recognized" in stranger.stdout + stranger.stderr
    wrong_called = run(
        "echoscu", "-v", "-aet", "MODALITY1", "-aec", "OTHER", "127.0.0.1", str(server.dicom_port)
    )
    assert wrong_called.returncode != 0
    assert "Called AE Title Not Recognized" in wrong_called.stdout + wrong_called.stderr
    assert "rejected" in server.log()


def test_store_series_byte_for_byte(
    kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path
) -> None:
    server = kuva_server(nodes=NODES)
    files = write_series(make_ct_series(12, rows=256, cols=256), tmp_path / "ct")
    result = storescu(server, *files)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = index_rows(database_url)
    assert len(rows) == 12
    assert {r.source_ae for r in rows.values()} == {"MODALITY1"}
    assert_stored_as_sent(server, database_url, files)
    check_blob_integrity(server.blob_dir)
    assert list((server.blob_dir / "tmp").iterdir()) == []


def test_every_transfer_syntax_stored_unchanged(
    kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path
) -> None:
    server = kuva_server(nodes=NODES)
    files = make_transfer_syntax_files(tmp_path / "ts")
    for transfer_syntax, path in files.items():
        # Propose the file's own transfer syntax, so storescu sends it unconverted.
        option = PROPOSE[transfer_syntax]
        result = storescu(server, path, options=("-R", option))
        assert result.returncode == 0, (transfer_syntax, result.stdout + result.stderr)
    rows = index_rows(database_url)
    assert {r.transfer_syntax_uid for r in rows.values()} == set(files)
    assert_stored_as_sent(server, database_url, list(files.values()))


def test_invalid_objects_refused_and_nothing_stored(
    kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path
) -> None:
    server = kuva_server(nodes=NODES)
    bad = make_bad_objects(tmp_path / "bad")
    expected_comment = {
        "study_uid_leading_zero": "StudyInstanceUID",
        "study_uid_non_numeric": "StudyInstanceUID",
        "study_uid_too_long": "StudyInstanceUID",
        "missing_patient_id": "PatientID missing",
        "missing_study_instance_uid": "StudyInstanceUID missing",
        "missing_series_instance_uid": "SeriesInstanceUID missing",
    }
    for defect, comment in expected_comment.items():
        result = storescu(server, bad[defect], options=("-d",))
        output = result.stdout + result.stderr
        assert "0xc000" in output.lower(), (defect, output)
        assert comment in output, (defect, output)
    assert index_rows(database_url) == {}
    assert blob_files(server.blob_dir) == []
    assert list((server.blob_dir / "tmp").iterdir()) == []


def send_file_unchanged(server: KuvaServer, path: Path, sop_class: str) -> Any:
    """Send a file's data set bytes unchanged with pynetdicom (chunked send mode takes
    the Affected SOP Class/Instance UIDs from the file meta, not the data set)."""
    from pynetdicom import AE, _config

    ae = AE(ae_title="MODALITY1")
    ae.add_requested_context(sop_class, pydicom.uid.ExplicitVRLittleEndian)
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title="KUVA")
        assert assoc.is_established
        status = assoc.send_c_store(path)
        assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
    return status


def test_missing_sop_instance_uid_refused(
    kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path
) -> None:
    """storescu will not send it; pynetdicom sends the data set bytes unchanged."""
    server = kuva_server(nodes=NODES)
    path = make_bad_objects(tmp_path / "bad")["missing_sop_instance_uid"]
    status = send_file_unchanged(server, path, pydicom.uid.CTImageStorage)
    assert status.Status == 0xC000
    assert "SOPInstanceUID missing" in status.ErrorComment
    assert index_rows(database_url) == {}
    assert blob_files(server.blob_dir) == []


def test_duplicates(
    kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path
) -> None:
    server = kuva_server(nodes=NODES)
    [original] = write_series(make_ct_series(1, rows=64, cols=64), tmp_path / "a")
    assert storescu(server, original).returncode == 0
    stored = index_rows(database_url)
    [row] = stored.values()
    blob_path = server.blob_dir / row.blob_key
    before = blob_path.read_bytes()
    mtime = blob_path.stat().st_mtime_ns

    # Identical content again: success, nothing new stored.
    again = storescu(server, original)
    assert again.returncode == 0, again.stdout + again.stderr
    assert index_rows(database_url) == stored
    assert len(blob_files(server.blob_dir)) == 1

    # Same SOP Instance UID, other content: refused, the original untouched.
    ds = pydicom.dcmread(original)
    ds.PatientName = "Korjattu^Nimi"
    changed = tmp_path / "changed.dcm"
    ds.save_as(changed, enforce_file_format=True)
    refused = storescu(server, changed, options=("-d",))
    output = refused.stdout + refused.stderr
    assert "0xc001" in output.lower(), output
    assert "IOCM" in output
    assert index_rows(database_url) == stored
    assert blob_path.read_bytes() == before
    assert blob_path.stat().st_mtime_ns == mtime
    assert len(blob_files(server.blob_dir)) == 1
    assert "already archived with other content" in server.log()


def test_sop_class_mismatch_refused(
    kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path
) -> None:
    """Affected SOP Class (command) MR, SOPClassUID in the data set CT: 0xA900."""
    server = kuva_server(nodes=NODES)
    [ds] = make_ct_series(1, rows=32, cols=32)
    ds.SOPClassUID = pydicom.uid.MRImageStorage
    path = tmp_path / "mismatch.dcm"
    ds.save_as(path, enforce_file_format=True)
    # MR in the file meta (-> Affected SOP Class UID), CT in the data set. The two
    # UIDs have the same length, so the file stays well formed.
    data = path.read_bytes()
    mr, ct = pydicom.uid.MRImageStorage.encode(), pydicom.uid.CTImageStorage.encode()
    meta_end = data.index(mr) + len(mr)
    path.write_bytes(data[:meta_end] + data[meta_end:].replace(mr, ct, 1))
    status = send_file_unchanged(server, path, pydicom.uid.MRImageStorage)
    assert status.Status == 0xA900
    assert "SOPClassUID" in status.ErrorComment
    assert index_rows(database_url) == {}
    assert blob_files(server.blob_dir) == []


def test_open_access_default_accepts_any_ae(
    kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path
) -> None:
    server = kuva_server()  # no nodes: the embedded default
    files = write_series(
        make_ct_series(2, rows=32, cols=32, study_uid=generate_uid()), tmp_path / "ct"
    )
    assert storescu(server, *files, aet="ANYONE").returncode == 0
    assert len(index_rows(database_url)) == 2
    assert "any calling AE title is accepted" in server.log()
