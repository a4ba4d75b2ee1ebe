"""SIGKILL mid-ingest: every acknowledged instance survives intact, nothing half-written."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
        # A C-STORE cut off by the kill is given up after this (pynetdicom's default
        # 30 s would be most of the test's time).
        ae.dimse_timeout = 10
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


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        found.update(int(child) for child in children)
    return found


def _serving(pids: set[int], port: int, state: str = "01") -> set[int]:
    """The processes among ``pids`` holding a socket on local ``port`` in ``state``
    (01 established, 0A listening: include/net/tcp_states.h)."""
    inodes: set[str] = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        if local_port == port and fields[3] == state:
            inodes.add(fields[9])
    serving: set[int] = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = fd.readlink().name
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                serving.add(pid)
    return serving


def test_sigkill_of_a_dicom_worker_mid_ingest(
    kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path
) -> None:
    """Two processes accept on one port ([dicom] workers = 2); SIGKILL of the worker
    mid-transfer loses nothing it acknowledged, the main process starts another, and
    the associations on the main process carry on."""
    server = kuva_server(nodes=NODES, extra={"dicom": {"workers": 2}})
    assert server.process is not None
    main = server.process.pid
    deadline = time.monotonic() + 30
    while not (workers := _children(main)) and time.monotonic() < deadline:
        time.sleep(0.1)
    [worker] = workers
    while worker not in _serving({worker}, server.dicom_port, "0A"):
        assert time.monotonic() < deadline, "the worker process does not listen"
        time.sleep(0.1)
    datasets = make_ct_series(96, rows=256, cols=256)
    files = write_series(datasets, tmp_path / "ct")
    acknowledged: list[str] = []
    lock = threading.Lock()
    # The kernel spreads connections over the processes by a hash of their
    # addresses: associate until both processes serve one (SO_REUSEPORT), and send
    # on every association opened.
    ae = AE(ae_title="MODALITY1")
    ae.dimse_timeout = 10  # a C-STORE cut off by the kill is given up after this
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    associations = []
    while len(associations) < 2 or _serving({main, worker}, server.dicom_port) != {main, worker}:
        assert len(associations) < 24, "every association went to one process"
        associations.append(ae.associate("127.0.0.1", server.dicom_port, ae_title="KUVA"))
    shares = [datasets[i :: len(associations)] for i in range(len(associations))]

    def send(assoc: Any, share: list[Any]) -> None:
        for ds in share:
            if not assoc.is_established:
                break
            status = assoc.send_c_store(ds)
            if getattr(status, "Status", None) == 0x0000:
                with lock:
                    acknowledged.append(ds.SOPInstanceUID)
        if assoc.is_established:
            assoc.release()

    senders = [
        threading.Thread(target=send, args=(assoc, share), daemon=True)
        for assoc, share in zip(associations, shares, strict=False)
    ]
    for sender in senders:
        sender.start()
    deadline = time.monotonic() + 60
    while len(acknowledged) < 16 and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(worker, signal.SIGKILL)
    for sender in senders:
        sender.join(120)
    assert 16 <= len(acknowledged) < 96, "the kill must land mid-transfer"

    rows = index_rows(database_url)
    by_uid = {ds.SOPInstanceUID: (number, ds) for number, ds in enumerate(datasets)}
    for uid in acknowledged:
        number, ds = by_uid[uid]
        assert uid in rows, f"acknowledged instance {number} not in the index"
        blob = (server.blob_dir / rows[uid].blob_key).read_bytes()
        assert blob == expected_blob(
            files[number], ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRLittleEndian
        )
    check_blob_integrity(server.blob_dir)
    # The main process started another worker; the rest of the series goes in.
    deadline = time.monotonic() + 30
    while not (_children(main) - {worker}) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _children(main) - {worker}, "no new worker process"
    remaining = [ds for ds in datasets if ds.SOPInstanceUID not in rows]
    ae = AE(ae_title="MODALITY1")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title="KUVA")
    for ds in remaining:
        status = assoc.send_c_store(ds)
        assert getattr(status, "Status", None) == 0x0000, status
    assoc.release()
    assert len(index_rows(database_url)) == 96
    assert server.stop() == 0
