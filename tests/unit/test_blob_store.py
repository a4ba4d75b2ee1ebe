"""storage.filesystem.FileBlobStore: content-addressed, write-once, never half visible."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from kuva.storage import blob_key
from kuva.storage.base import BlobExistsError
from kuva.storage.filesystem import FileBlobStore

CHUNKS = [b"\x00" * 128, b"DICM", bytes(range(256)) * 40, b"tail"]
CONTENT = b"".join(CHUNKS)
DIGEST = hashlib.sha256(CONTENT).hexdigest()


def visible_files(store: FileBlobStore) -> list[Path]:
    """Every file under the store's content-addressed tree."""
    return sorted(p for p in (store.root / "sha256").rglob("*") if p.is_file())


def write_blob(store: FileBlobStore, chunks: list[bytes]) -> tuple[str, int, bool]:
    """Stream ``chunks`` into a new blob; return key, size and created."""
    writer = store.open_writer()
    for chunk in chunks:
        assert writer.write(chunk) == len(chunk)
    ref = writer.commit()
    return ref.key, ref.size, ref.created


def test_blob_key_layout() -> None:
    """The key fans out by the first two byte pairs of the digest."""
    assert blob_key(DIGEST) == f"sha256/{DIGEST[:2]}/{DIGEST[2:4]}/{DIGEST}"


def test_streaming_write_gives_content_address(tmp_path: Path) -> None:
    """Chunks are hashed as they stream in; the key, digest and size are right."""
    store = FileBlobStore(tmp_path)
    writer = store.open_writer()
    for chunk in CHUNKS:
        writer.write(chunk)
    assert writer.size == len(CONTENT)
    assert writer.hexdigest() == DIGEST
    ref = writer.commit()
    assert ref.key == f"sha256/{DIGEST[:2]}/{DIGEST[2:4]}/{DIGEST}"
    assert ref.sha256 == DIGEST
    assert ref.size == len(CONTENT)
    assert ref.created is True
    assert store.exists(ref.key)
    assert store.size(ref.key) == len(CONTENT)


def test_memoryview_and_bytearray_are_accepted(tmp_path: Path) -> None:
    """Any bytes-like value can be written."""
    store = FileBlobStore(tmp_path)
    writer = store.open_writer()
    writer.write(bytearray(CHUNKS[0]))
    writer.write(memoryview(b"".join(CHUNKS[1:])))
    ref = writer.commit()
    assert ref.sha256 == DIGEST


def test_committed_blob_is_read_only_and_identical(tmp_path: Path) -> None:
    """The stored file has the exact bytes and no write permission for anyone."""
    store = FileBlobStore(tmp_path)
    key, _size, _created = write_blob(store, CHUNKS)
    path = store.path_of(key)
    assert path.read_bytes() == CONTENT
    with store.open(key) as f:
        assert f.read() == CONTENT
    assert b"".join(store.iter_chunks(key, chunk_size=1000)) == CONTENT
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) == 0
    assert mode & stat.S_IRUSR


def test_same_bytes_again_is_not_overwritten(tmp_path: Path) -> None:
    """Storing identical bytes again reports created=False and leaves the file alone."""
    store = FileBlobStore(tmp_path)
    key, _size, created = write_blob(store, CHUNKS)
    assert created is True
    path = store.path_of(key)
    before = path.stat()
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns - 10_000_000_000))
    before = path.stat()

    again_key, again_size, again_created = write_blob(store, [CONTENT])

    after = path.stat()
    assert (again_key, again_size, again_created) == (key, len(CONTENT), False)
    assert after.st_ino == before.st_ino
    assert after.st_mtime_ns == before.st_mtime_ns
    assert after.st_nlink == 1  # the temporary name was removed
    assert path.read_bytes() == CONTENT
    assert visible_files(store) == [path]
    assert list(store.tmp_dir.iterdir()) == []


def test_discard_leaves_nothing(tmp_path: Path) -> None:
    """A discarded writer leaves neither a partial file nor a visible blob."""
    store = FileBlobStore(tmp_path)
    writer = store.open_writer()
    writer.write(CONTENT)
    assert len(list(store.tmp_dir.iterdir())) == 1
    writer.discard()
    assert list(store.tmp_dir.iterdir()) == []
    assert visible_files(store) == []
    assert not store.exists(blob_key(DIGEST))
    with pytest.raises(ValueError):
        writer.write(b"more")
    with pytest.raises(ValueError):
        writer.commit()


def test_close_without_commit_discards(tmp_path: Path) -> None:
    """Leaving the ``with`` block uncommitted throws the bytes away."""
    store = FileBlobStore(tmp_path)
    with store.open_writer() as writer:
        writer.write(CONTENT)
    assert list(store.tmp_dir.iterdir()) == []
    assert visible_files(store) == []


def test_close_after_commit_keeps_blob(tmp_path: Path) -> None:
    """Closing a committed writer (as ``with`` does) keeps the blob."""
    store = FileBlobStore(tmp_path)
    with store.open_writer() as writer:
        writer.write(CONTENT)
        ref = writer.commit()
    assert store.exists(ref.key)
    assert list(store.tmp_dir.iterdir()) == []


def test_partial_blob_is_never_visible(tmp_path: Path) -> None:
    """While bytes stream in, only a temporary file in tmp/ exists."""
    store = FileBlobStore(tmp_path)
    writer = store.open_writer()
    writer.write(CHUNKS[0])
    writer.write(CHUNKS[1])
    partial_digest = hashlib.sha256(CHUNKS[0] + CHUNKS[1]).hexdigest()
    assert visible_files(store) == []
    assert not store.exists(blob_key(partial_digest))
    assert not store.exists(blob_key(DIGEST))
    partials = list(store.tmp_dir.iterdir())
    assert len(partials) == 1
    assert Path(writer.name) == partials[0]
    assert partials[0].read_bytes() == CHUNKS[0] + CHUNKS[1]
    writer.write(b"".join(CHUNKS[2:]))
    assert visible_files(store) == []
    ref = writer.commit()
    assert visible_files(store) == [store.path_of(ref.key)]
    assert list(store.tmp_dir.iterdir()) == []


def test_clean_partial_removes_leftovers(tmp_path: Path) -> None:
    """Leftovers of an interrupted write are removed at start; blobs stay."""
    store = FileBlobStore(tmp_path)
    key, _size, _created = write_blob(store, CHUNKS)
    abandoned = store.open_writer()  # a writer whose process died mid-write
    abandoned.write(b"half an object")
    (store.tmp_dir / "stray.part").write_bytes(b"x")

    reopened = FileBlobStore(tmp_path)
    assert reopened.clean_partial() == 2
    assert list(reopened.tmp_dir.iterdir()) == []
    assert reopened.exists(key)
    assert reopened.path_of(key).read_bytes() == CONTENT
    assert reopened.clean_partial() == 0
    abandoned.close()
    assert reopened.exists(key)


def test_different_content_gets_different_key(tmp_path: Path) -> None:
    """Two objects differing in one byte are two blobs."""
    store = FileBlobStore(tmp_path)
    key1, _, _ = write_blob(store, [CONTENT])
    key2, _, created = write_blob(store, [CONTENT[:-1] + b"X"])
    assert created is True
    assert key1 != key2
    assert len(visible_files(store)) == 2


def test_empty_blob(tmp_path: Path) -> None:
    """An empty object is stored under the digest of no bytes."""
    store = FileBlobStore(tmp_path)
    ref = store.open_writer().commit()
    assert ref.sha256 == hashlib.sha256(b"").hexdigest()
    assert ref.size == 0
    assert store.path_of(ref.key).read_bytes() == b""


@pytest.mark.parametrize("key", ["partial/abc", "sha256/../partial/x", "../sha256/ab", ""])
def test_path_of_refuses_other_keys(tmp_path: Path, key: str) -> None:
    """Only keys inside the content-addressed tree map to paths."""
    store = FileBlobStore(tmp_path)
    with pytest.raises(ValueError):
        store.path_of(key)


def test_missing_blob(tmp_path: Path) -> None:
    """Opening an absent blob raises FileNotFoundError; exists() is False."""
    store = FileBlobStore(tmp_path)
    key = blob_key(DIGEST)
    assert not store.exists(key)
    with pytest.raises(FileNotFoundError):
        store.open(key)


def test_check_passes_on_writable_store(tmp_path: Path) -> None:
    """check() does not raise on a writable folder and creates the layout."""
    store = FileBlobStore(tmp_path / "blobs")
    store.check()
    assert (tmp_path / "blobs" / "tmp").is_dir()
    assert (tmp_path / "blobs" / "sha256").is_dir()


def test_delete_removes_the_blob_from_every_copy(tmp_path: Path) -> None:
    """Retention's delete: the (read-only) file is gone, in both copies of a mirror;
    a key already gone is no error (a destruction resumed)."""
    from kuva.storage.mirror import MirroredBlobStore

    store = FileBlobStore(tmp_path / "one")
    key, _, _ = write_blob(store, CHUNKS)
    assert store.delete(key) is True
    assert not store.exists(key) and visible_files(store) == []
    assert store.delete(key) is False

    primary, replica = FileBlobStore(tmp_path / "p"), FileBlobStore(tmp_path / "r")
    mirror = MirroredBlobStore(primary, replica)
    try:
        writer = mirror.open_writer()
        writer.write(CONTENT)
        ref = writer.commit()
        assert primary.exists(ref.key) and replica.exists(ref.key)
        assert mirror.delete(ref.key) is True
        assert visible_files(primary) == [] and visible_files(replica) == []
        assert mirror.delete(ref.key) is False
    finally:
        mirror.close()
    with pytest.raises(ValueError):
        store.delete("../etc/passwd")


def test_commit_soon_makes_the_blob_durable_in_the_background(tmp_path: Path) -> None:
    """``commit_soon`` gives the same result as ``commit``, in both copies of a
    mirror; a commit that fails (a name taken by other bytes) fails its future."""
    from kuva.storage.mirror import MirroredBlobStore

    store = FileBlobStore(tmp_path / "one")
    writer = store.open_writer()
    writer.write(CONTENT)
    writer.start_sync()
    ref = writer.commit_soon().result(timeout=30)
    assert (ref.key, ref.sha256, ref.size, ref.created) == (
        blob_key(DIGEST),
        DIGEST,
        len(CONTENT),
        True,
    )
    assert store.path_of(ref.key).read_bytes() == CONTENT
    assert list(store.tmp_dir.iterdir()) == []

    primary, replica = FileBlobStore(tmp_path / "p"), FileBlobStore(tmp_path / "r")
    mirror = MirroredBlobStore(primary, replica)
    try:
        writer = mirror.open_writer()
        writer.write(CONTENT)
        ref = writer.commit_soon().result(timeout=30)
        assert ref.created and primary.exists(ref.key) and replica.exists(ref.key)
        # The replica's name holds other bytes of the same size: the mirror's
        # future fails, though the primary's copy was made.
        other = FileBlobStore(tmp_path / "r2")
        forged = other.path_of(blob_key(DIGEST))
        forged.parent.mkdir(parents=True)
        forged.write_bytes(b"x" * (len(CONTENT) + 1))
        mirror2 = MirroredBlobStore(FileBlobStore(tmp_path / "p2"), other)
        try:
            writer = mirror2.open_writer()
            writer.write(CONTENT)
            with pytest.raises(BlobExistsError):
                writer.commit_soon().result(timeout=30)
        finally:
            mirror2.close()
    finally:
        mirror.close()
    store.close()


def test_a_new_folder_is_fsynced_in_its_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first blob in a new leaf folder fsyncs that folder's parent as well as
    the folder, both after the link; the next blob there fsyncs only the folder."""
    from kuva.storage import filesystem

    store = FileBlobStore(tmp_path)
    synced: list[Path] = []
    real = filesystem._fsync_dir
    monkeypatch.setattr(filesystem, "_fsync_dir", lambda p: (synced.append(p), real(p)))
    key, _, _ = write_blob(store, CHUNKS)
    leaf = store.path_of(key).parent
    assert synced == [leaf, leaf.parent]
    synced.clear()
    # Same leaf folder, other content: find one with the same first four hex digits.
    n = 0
    while not hashlib.sha256(b"%d" % n).hexdigest().startswith(DIGEST[:4]):
        n += 1
    write_blob(store, [b"%d" % n])
    assert synced == [leaf]
