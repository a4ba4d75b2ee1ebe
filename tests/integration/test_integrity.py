"""Integrity against a running kuva: ``kuva verify`` after damage done while it was
stopped, repairs from a replica, the continuous check of ``kuva serve``, and storage
commitment with a replica. Objects arrive with dcmtk's storescu (commitment: pynetdicom)."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.uid import CTImageStorage

from tests.support.archive import flip_byte, index_rows
from tests.support.commitment_scu import CommitmentSCU, committed, failed
from tests.support.peers import dcmtk_available, dcmtk_env
from tests.support.server import KuvaServer, free_port
from tests.support.synthetic import make_ct_series, write_series

pytestmark = [
    pytest.mark.dcmtk,
    pytest.mark.skipif(not dcmtk_available(), reason="dcmtk not installed"),
]

MODALITY = "MODALITY1"
NODES = [{"ae_title": MODALITY, "host": "127.0.0.1", "port": 1, "organization": ""}]


def store(server: KuvaServer, tmp_path: Path, count: int) -> list[str]:
    """Send ``count`` small CT instances with storescu; their SOP Instance UIDs."""
    datasets = make_ct_series(count, rows=64, cols=64)
    paths = write_series(datasets, tmp_path / f"sent{time.monotonic_ns()}")
    result = subprocess.run(
        ["storescu", "-aet", MODALITY, "-aec", server.ae_title, "127.0.0.1",
         str(server.dicom_port), *map(str, paths)],
        capture_output=True, text=True, env=dcmtk_env(), timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [str(ds.SOPInstanceUID) for ds in datasets]


def blob_paths(server: KuvaServer, database_url: str, root: Path) -> dict[str, Path]:
    """Each instance's blob under ``root`` (the primary's folder or the replica's)."""
    return {uid: root / row.blob_key for uid, row in index_rows(database_url).items()}


def add_orphan(root: Path) -> str:
    """A blob no index row references, stored a day ago; its key."""
    content = b"bytes that nothing in the index refers to"
    digest = hashlib.sha256(content).hexdigest()
    key = f"sha256/{digest[:2]}/{digest[2:4]}/{digest}"
    (root / key).parent.mkdir(parents=True, exist_ok=True)
    (root / key).write_bytes(content)
    day_ago = time.time() - 86400
    os.utime(root / key, (day_ago, day_ago))
    return key


def problem_lines(output: str) -> dict[str, str]:
    """The report's problem lines by what they name (an instance UID or a blob key)."""
    lines = {}
    for line in output.splitlines():
        match = re.match(
            r"(?:MISSING|CORRUPT|ORPHANED) \w+ (?:instance (\S+) .*?|no index row )(sha256/\S+):",
            line,
        )
        if match:
            lines[match.group(1) or match.group(2)] = line
    return lines


def test_verify_names_missing_corrupt_and_orphaned_blobs(
    kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path
) -> None:
    server = kuva_server(nodes=NODES)
    uids = store(server, tmp_path, 4)
    assert server.stop() == 0
    paths = blob_paths(server, database_url, server.blob_dir)
    assert set(paths) == set(uids), server.log()  # every store was acknowledged
    flip_byte(paths[uids[0]])
    paths[uids[1]].unlink()
    orphan = add_orphan(server.blob_dir)

    result = server.kuva("verify", check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = problem_lines(result.stdout)
    assert set(lines) == {uids[0], uids[1], orphan}, result.stdout
    assert lines[uids[0]].startswith("CORRUPT primary")
    assert lines[uids[1]].startswith("MISSING primary")
    assert lines[orphan].startswith("ORPHANED primary")
    assert "(study " in lines[uids[0]]
    assert re.search(r"objects checked\s*│?\s*4", result.stdout), result.stdout
    # each problem is an ATNA Security Alert in the audit trail
    alerts = server.kuva("audit", "list", "--event", "110113", "--xml").stdout
    assert alerts.count("Stored Object Integrity Failure") == 3, alerts
    assert uids[0] in alerts and uids[1] in alerts

    # One study, or a sample: instances only, no orphan walk.
    sampled = server.kuva("verify", "--sample", "2", check=False)
    unknown = server.kuva("verify", "--study", "1.2.3.4", check=False)
    assert unknown.returncode == 1 and "no study 1.2.3.4" in unknown.stdout
    assert "ORPHANED" not in sampled.stdout
    assert re.search(r"objects checked\s*│?\s*2", sampled.stdout), sampled.stdout


def test_repair_from_replica_restores_the_exact_bytes(
    kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path
) -> None:
    replica = tmp_path / "replica"
    server = kuva_server(nodes=NODES, extra={"archive": {"replica_url": f"file://{replica}"}})
    uids = store(server, tmp_path, 3)
    assert server.stop() == 0
    primary = blob_paths(server, database_url, server.blob_dir)
    copies = blob_paths(server, database_url, replica)
    originals = {uid: path.read_bytes() for uid, path in primary.items()}
    assert {uid: path.read_bytes() for uid, path in copies.items()} == originals
    flip_byte(primary[uids[0]])
    copies[uids[1]].unlink()

    first = server.kuva("verify", check=False)
    assert first.returncode == 1
    lines = problem_lines(first.stdout)
    assert lines[uids[0]].startswith("CORRUPT primary")
    assert lines[uids[1]].startswith("MISSING replica")

    repaired = server.kuva("verify", "--repair", check=False)
    assert repaired.returncode == 0, repaired.stdout
    assert all("repaired" in line for line in problem_lines(repaired.stdout).values())
    for uid, content in originals.items():
        assert primary[uid].read_bytes() == copies[uid].read_bytes() == content

    again = server.kuva("verify", check=False)
    assert again.returncode == 0, again.stdout
    assert problem_lines(again.stdout) == {}


def metric(server: KuvaServer, name: str) -> float:
    with urllib.request.urlopen(f"{server.http}/metrics", timeout=5) as response:
        text = response.read().decode()
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_continuous_check_finds_and_repairs_a_flipped_byte(
    kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path
) -> None:
    replica = tmp_path / "replica"
    server = kuva_server(
        nodes=NODES,
        extra={
            "archive": {"replica_url": f"file://{replica}"},
            # The orphan walk after every pass (about 0.4 s apart at most).
            "integrity": {"scrub_bytes_per_second": 20_000_000, "orphan_check_hours": 0.0001},
        },
    )
    uids = store(server, tmp_path, 3)
    path = blob_paths(server, database_url, server.blob_dir)[uids[1]]
    original = path.read_bytes()
    flip_byte(path)
    # A blob no index row refers to, older than the grace period of new blobs.
    orphan_key = "sha256/00/00/" + "0" * 64
    orphan = server.blob_dir / orphan_key
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"left behind")
    old = time.time() - 3600
    os.utime(orphan, (old, old))

    corrupt = 'kuva_integrity_failures_total{kind="corrupt"}'
    deadline = time.monotonic() + 20
    while metric(server, corrupt) < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert metric(server, corrupt) >= 1, server.log()
    assert metric(server, "kuva_integrity_checked_total") >= 3
    while metric(server, "kuva_integrity_repairs_total") < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert path.read_bytes() == original
    assert re.search(
        rf"ERROR .*primary copy of instance {re.escape(uids[1])} .*corrupt", server.log()
    )
    alerts = server.kuva("audit", "list", "--event", "110113", "--xml").stdout
    assert "Stored Object Integrity Failure" in alerts and uids[1] in alerts, alerts
    while metric(server, "kuva_integrity_last_full_pass_timestamp_seconds") == 0:
        assert time.monotonic() < deadline, "no full pass finished"
        time.sleep(0.2)
    # The orphan walk after a pass: reported (log, metric, audit), never deleted.
    orphaned = 'kuva_integrity_failures_total{kind="orphaned"}'
    while metric(server, orphaned) < 1:
        assert time.monotonic() < deadline, "no orphan walk reported the orphan"
        time.sleep(0.2)
    assert f"primary copy of blob {orphan_key} is orphaned" in server.log()
    assert orphan.read_bytes() == b"left behind"
    alerts = server.kuva("audit", "list", "--event", "110113", "--xml").stdout
    assert orphan_key in alerts, alerts


def test_commitment_requires_the_replica_copy(
    kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path
) -> None:
    replica = tmp_path / "replica"
    node = {"ae_title": "PACS1", "host": "127.0.0.1", "port": free_port(), "organization": ""}
    server = kuva_server(nodes=[node], extra={"archive": {"replica_url": f"file://{replica}"}})
    scu = CommitmentSCU("PACS1")
    datasets = make_ct_series(2, rows=32, cols=32)
    assoc = scu.associate(server.dicom_port, storage=[CTImageStorage])
    for ds in datasets:
        assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    kept, lost = (str(ds.SOPInstanceUID) for ds in datasets)
    blob_paths(server, database_url, replica)[lost].unlink()

    assoc = scu.associate(server.dicom_port)
    status, _ = scu.request(assoc, [(str(CTImageStorage), kept), (str(CTImageStorage), lost)])
    assert status == 0x0000
    event_type, info, _where = scu.wait_report()
    assoc.release()
    assert event_type == 2
    assert committed(info) == {kept}
    assert failed(info) == {lost: 0x0110}
