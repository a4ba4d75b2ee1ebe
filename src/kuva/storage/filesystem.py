"""Blob store on a local (or mounted) filesystem.

Durability (docs/design.md, Data): a blob is written to a temporary name in ``tmp/``,
fsynced, linked to its final name ``sha256/ab/cd/<digest>`` and the folder fsynced.
``os.link`` fails when the name exists, so an object is never overwritten; a final
name only ever appears for complete, fsynced bytes. Files are made read-only.
Leftovers in ``tmp/`` (a crash mid-write) are removed at start. ``delete`` (retention's
destruction only) unlinks a blob and fsyncs its folder. A repair
(``restore``) puts verified bytes back under their name and keeps the damaged file
in ``quarantine/``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from kuva.storage.base import (
    BlobCopy,
    BlobEntry,
    BlobExistsError,
    BlobRef,
    CopyWriter,
    blob_key,
)

log = logging.getLogger(__name__)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileBlobWriter(CopyWriter):
    """``hashing=False`` is for a mirror's second copy: the same bytes as a hashing
    writer's, committed under its digest (``commit_as``), so they are hashed once."""

    def __init__(self, store: FileBlobStore, *, hashing: bool = True) -> None:
        super().__init__(hashing=hashing)
        self._store = store
        self._path = store.tmp_dir / f"{uuid.uuid4().hex}.part"
        self.name = str(self._path)
        self._fd: int | None = os.open(
            self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
        )
        self._done = False
        self._sync: Future[None] | None = None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._fd is None:
            raise ValueError("write to a closed blob writer")
        view = memoryview(data)
        if self._hashing:
            self._hash.update(view)
        total = 0
        while total < len(view):
            total += os.write(self._fd, view[total:])
        self._size += total
        return total

    def start_sync(self) -> None:
        """Begin flushing the bytes to disk in the background (the GIL is released),
        so that the caller can parse and validate meanwhile; ``commit`` waits for it."""
        if self._fd is not None and self._sync is None:
            self._sync = self._store.sync_pool.submit(os.fdatasync, self._fd)

    def commit(self) -> BlobRef:
        return self.commit_as(self.hexdigest())

    def commit_soon(self) -> Future[BlobRef]:
        """``commit`` on the store's sync threads (its fdatasync was queued there
        first by ``start_sync``, so it is running or done when this runs)."""
        return self._store.sync_pool.submit(self.commit)

    def commit_as_soon(self, digest: str) -> Future[BlobRef]:
        """``commit_as`` on the store's sync threads, like ``commit_soon``."""
        return self._store.sync_pool.submit(self.commit_as, digest)

    def commit_as(self, digest: str) -> BlobRef:
        """Commit under ``digest``, which the caller computed over the same bytes.

        Every change of names (new folders, the link) is made first and the folders
        fsynced after: the first fsync then commits them all in one journal
        transaction (ext4, xfs) and the others find nothing left to write.
        """
        key = blob_key(digest)
        final = self._store.path_of(key)
        self._sync_and_close()
        created = True
        changed: list[Path] = []
        try:
            changed = self._store.ensure_parent(final)
            os.chmod(self._path, 0o444)
            os.link(self._path, final)
        except FileExistsError:
            created = False
            if final.stat().st_size != self._size:
                raise BlobExistsError(f"{key} exists with another size") from None
        finally:
            self._path.unlink(missing_ok=True)
        if created:
            changed.append(final.parent)
        for folder in reversed(changed):
            _fsync_dir(folder)
        self._store.folder_durable(final.parent)
        return BlobRef(key=key, sha256=digest, size=self._size, created=created)

    def replace(self) -> None:
        """Make the bytes durable under their name, in place of a damaged file there
        (a repair: the caller checked them against the name). The damaged file is
        kept in ``quarantine/`` as evidence."""
        key = blob_key(self.hexdigest())
        final = self._store.path_of(key)
        self._sync_and_close()
        try:
            for folder in self._store.ensure_parent(final):
                _fsync_dir(folder)
            self._store.folder_durable(final.parent)
            os.chmod(self._path, 0o444)
            if final.exists():
                kept = self._store.quarantine_dir / f"{final.name}.{time.time_ns()}"
                os.link(final, kept)
                _fsync_dir(kept.parent)
            # One atomic rename: a reader sees the damaged file or the good one.
            os.replace(self._path, final)
        finally:
            self._path.unlink(missing_ok=True)
        _fsync_dir(final.parent)

    def _sync_and_close(self) -> None:
        if self._fd is None or self._done:
            raise ValueError("blob writer already closed")
        try:
            if self._sync is not None:
                self._sync.result()
            else:
                os.fdatasync(self._fd)
        finally:
            os.close(self._fd)
            self._fd = None
        self._done = True

    def discard(self) -> None:
        self.close()

    def close(self) -> None:
        if self._sync is not None:
            self._sync.exception()  # never close the descriptor under a running fdatasync
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if not self._done:
            self._done = True
            self._path.unlink(missing_ok=True)

    def __del__(self) -> None:
        # An association aborted mid-transfer leaves its writer behind: free the
        # descriptor and the partial file.
        if not self._done:
            try:
                self.close()
            except Exception:
                log.debug("could not clean an abandoned blob writer", exc_info=True)


class FileBlobStore(BlobCopy):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp_dir = root / "tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.quarantine_dir = root / "quarantine"
        self.quarantine_dir.mkdir(exist_ok=True)
        (root / "sha256").mkdir(exist_ok=True)
        self._prepare_fanout()
        top = root / "sha256"
        self._known_dirs: set[Path] = {top / f"{a:02x}" for a in range(256)}
        self.sync_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="kuva-fsync")

    def _prepare_fanout(self) -> None:
        """Create the 256 first-level folders ``sha256/ab`` once, durably.

        The second level (``ab/cd``, 65,536 folders) is created on first use: creating
        it up front takes seconds, and an object landing in a new folder pays one
        extra folder fsync (made in the journal commit of its link) only until the
        archive holds some 100,000 objects.
        """
        top = self.root / "sha256"
        if (self.root / ".fanout").exists():
            return
        for a in range(256):
            (top / f"{a:02x}").mkdir(exist_ok=True)
        _fsync_dir(top)
        (self.root / ".fanout").touch()
        _fsync_dir(self.root)

    def clean_partial(self) -> int:
        """Remove partial blobs left by a crash; they were never visible."""
        count = 0
        for leftover in self.tmp_dir.iterdir():
            leftover.unlink(missing_ok=True)
            count += 1
        if count:
            log.warning("removed %d partial blob(s) left from an interrupted write", count)
        return count

    def path_of(self, key: str) -> Path:
        if not key.startswith("sha256/") or ".." in key:
            raise ValueError(f"not a blob key: {key!r}")
        return self.root / key

    def ensure_parent(self, path: Path) -> list[Path]:
        """Create ``path``'s folder if missing and return the folders to fsync
        before the new names may be relied on; ``folder_durable`` afterwards.

        A folder not yet known durable to this process is fsynced in its parent even
        when it exists: another writer may have just made it, its fsync still
        running. Each folder pays this once per process.
        """
        parent = path.parent
        if parent in self._known_dirs:
            return []
        changed: list[Path] = []
        for level in (parent.parent, parent):
            if level not in self._known_dirs:
                with contextlib.suppress(FileExistsError):
                    level.mkdir()
                changed.append(level.parent)
        return changed

    def folder_durable(self, folder: Path) -> None:
        """``folder`` and the folders above it are durable: no more fsyncs for them."""
        self._known_dirs.update((folder, folder.parent))

    def open_writer(self, *, hashing: bool = True) -> FileBlobWriter:
        return FileBlobWriter(self, hashing=hashing)

    def open(self, key: str) -> BinaryIO:
        return open(self.path_of(key), "rb")

    def local_path(self, key: str) -> Path:
        return self.path_of(key)

    def exists(self, key: str) -> bool:
        return self.path_of(key).is_file()

    def size(self, key: str) -> int:
        return self.path_of(key).stat().st_size

    def delete(self, key: str) -> bool:
        """Unlink the blob and fsync its folder, so the removal survives a crash."""
        path = self.path_of(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        _fsync_dir(path.parent)
        return True

    def close(self) -> None:
        self.sync_pool.shutdown()

    def check(self) -> None:
        if not os.access(self.tmp_dir, os.W_OK):
            raise OSError(f"blob store {self.root} is not writable")

    def iter_keys(self) -> Iterator[BlobEntry]:
        """Walk ``sha256/ab/cd/`` in name order, one folder in memory at a time."""
        top = self.root / "sha256"
        for first in _sorted_entries(top, folders=True):
            for second in _sorted_entries(top / first, folders=True):
                folder = top / first / second
                for name in _sorted_entries(folder, folders=False):
                    try:
                        stat = (folder / name).stat()
                    except FileNotFoundError:  # pragma: no cover - removed meanwhile
                        continue
                    yield BlobEntry(f"sha256/{first}/{second}/{name}", stat.st_size, stat.st_mtime)

    def restore(self, key: str, chunks: Iterable[bytes], sha256: str, size: int) -> None:
        if key != blob_key(sha256):
            raise ValueError(f"{key} is not the address of sha256 {sha256}")
        writer = FileBlobWriter(self)
        try:
            for chunk in chunks:
                writer.write(chunk)
            if writer.size != size or writer.hexdigest() != sha256:
                raise ValueError(f"{key}: the source copy does not match its hash, not restored")
            writer.replace()
        finally:
            writer.close()


def _sorted_entries(folder: Path, *, folders: bool) -> list[str]:
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.is_dir() == folders)
