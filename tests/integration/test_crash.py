"""SIGKILL mid-ingest: every acknowledged instance survives intact, nothing half-written."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE

from tests.support.archive import blob_files, check_blob_integrity, expected_blob, index_rows
from tests.support.server import KuvaServer
from tests.support.synthetic import make_ct_series, write_series

NODES = [{"ae_title": "MODALITY1", "host": "127.0.0.1", "port": 1, "organization": ""}]


def test_sigkill_mid_ingest(
    kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path
) -> None:
    server = kuva_server(nodes=NODES)
    datasets = make_ct_series(200, rows=256, cols=256)
    files = write_series(datasets, tmp_path / "ct")
    acknowledged: list[int] = []
    finished = threading.Event()

    def send() -> None:
        ae = AE(ae_title="MODALITY1")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title="KUVA")
        try:
            for number, ds in enumerate(datasets):
                if not assoc.is_established:
                    break
                status = assoc.send_c_store(ds)
                if getattr(status, "Status", None) == 0x0000:
                    acknowledged.append(number)
            if assoc.is_established:
                assoc.release()
        finally:
            finished.set()

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    deadline = time.monotonic() + 60
    while len(acknowledged) < 80 and time.monotonic() < deadline:
        time.sleep(0.005)
    server.kill()
    assert finished.wait(60)
    assert 80 <= len(acknowledged) < 200, "the kill must land mid-transfer"

    # Partial blobs are never visible, even before the restart cleans tmp/.
    check_blob_integrity(server.blob_dir)
    server.start()
    assert list((server.blob_dir / "tmp").iterdir()) == []

    rows = index_rows(database_url)
    for number in acknowledged:
        ds = datasets[number]
        row = rows[ds.SOPInstanceUID]
        blob = (server.blob_dir / row.blob_key).read_bytes()
        assert blob == expected_blob(
            files[number], ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRLittleEndian
        )
    # No orphan index rows: every row's blob exists and matches its hash and size.
    for row in rows.values():
        path = server.blob_dir / row.blob_key
        assert path.is_file(), f"index row without blob: {row.sop_instance_uid}"
        assert path.stat().st_size == row.size
    check_blob_integrity(server.blob_dir)
    # At most the in-flight instance may be stored without having been acknowledged.
    assert len(rows) - len(acknowledged) <= 1
    assert len(blob_files(server.blob_dir)) >= len(rows)

    # The archive carries on: the rest of the series goes in.
    remaining = [ds for i, ds in enumerate(datasets) if ds.SOPInstanceUID not in rows]
    ae = AE(ae_title="MODALITY1")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title="KUVA")
    for ds in remaining:
        assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    assert len(index_rows(database_url)) == 200
