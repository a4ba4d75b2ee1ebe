"""A blob store kept twice: a primary copy and a replica (``[archive] replica_url``).

Every blob is written to both and made durable in both before ``commit`` returns,
so an object is acknowledged only once two copies exist (docs/design.md principle 2);
the bytes are hashed once, on the primary's writer. Reads come from the primary,
or from the replica when the primary copy is missing. A copy that goes bad is
repaired from the other (services.integrity), which is why both are kept.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import BinaryIO

from kuva.storage.base import BlobCopy, BlobRef, BlobStore, BlobWriter, CopyWriter

log = logging.getLogger(__name__)


class MirroredBlobWriter(BlobWriter):
    def __init__(self, primary: CopyWriter, replica: CopyWriter) -> None:
        self._primary = primary
        self._replica = replica
        self.name = primary.name  # the receive path parses the header from here

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._replica.write(data)
        return self._primary.write(data)

    def start_sync(self) -> None:
        self._primary.start_sync()
        self._replica.start_sync()

    @property
    def size(self) -> int:
        return self._primary.size

    def hexdigest(self) -> str:
        return self._primary.hexdigest()

    def commit(self) -> BlobRef:
        return self.commit_soon().result()

    def commit_soon(self) -> Future[BlobRef]:
        """Both copies made durable at once (fdatasync, link, folder fsync), each on
        its store's sync threads; done when both are. A replica copy whose primary
        failed is an orphan the integrity check reports."""
        replica = self._replica.commit_as_soon(self._primary.hexdigest())
        primary = self._primary.commit_soon()
        both: Future[BlobRef] = Future()
        lock = threading.Lock()

        def finish(_: Future[BlobRef]) -> None:
            with lock:
                if both.done() or not (primary.done() and replica.done()):
                    return
                error = primary.exception() or replica.exception()
                if error is not None:
                    both.set_exception(error)
                else:
                    both.set_result(primary.result())

        primary.add_done_callback(finish)
        replica.add_done_callback(finish)
        return both

    def discard(self) -> None:
        self.close()

    def close(self) -> None:
        self._primary.close()
        self._replica.close()


class MirroredBlobStore(BlobStore):
    def __init__(self, primary: BlobCopy, replica: BlobCopy) -> None:
        self.primary = primary
        self.replica = replica

    def open_writer(self) -> MirroredBlobWriter:
        return MirroredBlobWriter(
            self.primary.open_writer(), self.replica.open_writer(hashing=False)
        )

    def open(self, key: str) -> BinaryIO:
        try:
            return self.primary.open(key)
        except FileNotFoundError:
            log.warning("blob %s: primary copy missing, read from the replica", key)
            return self.replica.open(key)

    def local_path(self, key: str) -> Path | None:
        path = self.primary.local_path(key)
        if path is not None and path.is_file():
            return path
        return self.replica.local_path(key)

    def exists(self, key: str) -> bool:
        return self.primary.exists(key) or self.replica.exists(key)

    def size(self, key: str) -> int:
        try:
            return self.primary.size(key)
        except FileNotFoundError:
            return self.replica.size(key)

    def check(self) -> None:
        self.primary.check()
        self.replica.check()

    def delete(self, key: str) -> bool:
        """Both copies. A crash between the two leaves one copy of an instance the
        integrity check no longer reads (rejected 113039 on its way out); the
        resumed destruction removes it."""
        from_replica = self.replica.delete(key)
        from_primary = self.primary.delete(key)
        return from_primary or from_replica

    def close(self) -> None:
        self.primary.close()
        self.replica.close()

    def copies(self) -> tuple[tuple[str, BlobCopy], ...]:
        return (("primary", self.primary), ("replica", self.replica))
