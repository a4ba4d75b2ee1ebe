"""The blob store interface.

A blob is addressed by the SHA-256 of its bytes: key ``sha256/ab/cd/abcd...``.
It is written once and never overwritten; the digest is computed while the bytes
stream in, so storing an object reads it exactly once.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO


def blob_key(sha256_hex: str) -> str:
    """The storage key of a blob with the given SHA-256 (lower-case hex)."""
    return f"sha256/{sha256_hex[0:2]}/{sha256_hex[2:4]}/{sha256_hex}"


@dataclass(frozen=True)
class BlobRef:
    key: str
    sha256: str
    size: int
    created: bool  # False when an identical blob was already stored


@dataclass(frozen=True)
class BlobEntry:
    """A blob as its store lists it (the orphan walk, services.integrity)."""

    key: str
    size: int
    modified: float  # seconds since the epoch: when its bytes were last written


class BlobExistsError(Exception):
    """Raised when a key would be overwritten with other bytes (never allowed)."""


class BlobWriter(ABC):
    """A blob being written: a binary file-like that hashes as it goes.

    ``commit`` makes it durable and visible under its content address;
    ``discard`` throws it away. Until ``commit`` returns, nothing is visible.
    """

    name: str  # where the partial bytes live (for diagnostics)

    @abstractmethod
    def write(self, data: bytes | bytearray | memoryview) -> int: ...

    def flush(self) -> None:  # noqa: B027 - a no-op unless a store buffers
        """Writes go straight to the operating system; durability comes with commit."""

    def start_sync(self) -> None:  # noqa: B027 - optional optimisation
        """Optionally begin making the bytes durable ahead of ``commit``."""

    @property
    @abstractmethod
    def size(self) -> int: ...

    @abstractmethod
    def hexdigest(self) -> str: ...

    @property
    def key(self) -> str:
        """The key the bytes written so far are committed under (their address)."""
        return blob_key(self.hexdigest())

    @abstractmethod
    def commit(self) -> BlobRef: ...

    def commit_soon(self) -> Future[BlobRef]:
        """Begin ``commit`` and return at once; the future holds its outcome.

        Lets the caller index the object while its bytes are made durable
        (services.ingest): the index transaction waits for the future before it
        commits, so nothing is acknowledged before both are done. This default
        commits here and now; a store that can overlap the work overrides it.
        """
        future: Future[BlobRef] = Future()
        try:
            future.set_result(self.commit())
        except Exception as exc:
            future.set_exception(exc)
        return future

    @abstractmethod
    def discard(self) -> None: ...

    @abstractmethod
    def close(self) -> None:
        """Close without deciding; a closed, uncommitted writer is discarded."""

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CopyWriter(BlobWriter):
    """A writer of one physical copy (BlobCopy), which a mirror can commit under the
    digest its other copy's writer computed over the same bytes (``hashing=False``:
    that second copy's writer, which does not hash them again)."""

    def __init__(self, *, hashing: bool = True) -> None:
        self._hash = hashlib.sha256()
        self._hashing = hashing
        self._size = 0

    @property
    def size(self) -> int:
        return self._size

    def hexdigest(self) -> str:
        if not self._hashing:
            raise ValueError("this blob writer does not hash (a mirror's second copy)")
        return self._hash.hexdigest()

    @abstractmethod
    def commit_as(self, digest: str) -> BlobRef: ...

    @abstractmethod
    def commit_as_soon(self, digest: str) -> Future[BlobRef]:
        """``commit_as`` begun; the future holds its outcome (like ``commit_soon``)."""


class BlobStore(ABC):
    @abstractmethod
    def open_writer(self) -> BlobWriter: ...

    @abstractmethod
    def open(self, key: str) -> BinaryIO:
        """Open a stored blob for reading (raises FileNotFoundError when absent)."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def size(self, key: str) -> int: ...

    @abstractmethod
    def check(self) -> None:
        """Raise when the store cannot be written (for /healthz)."""

    @abstractmethod
    def delete(self, key: str) -> bool:
        """Destroy the blob ``key`` in every copy the store keeps, durably (the
        removal is fsynced before this returns); retention's destruction only
        (services.retention), never a correction. True when a copy was removed;
        a key already gone is no error (a destruction resumed after a crash)."""

    def local_path(self, key: str) -> Path | None:
        """The blob as a file on a local filesystem, when the store keeps it as one.

        Lets a sender hand the file to the network layer to read in chunks; a store
        without local files returns None and the caller reads ``open`` instead.
        """
        return None

    def iter_chunks(self, key: str, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        with self.open(key) as f:
            while chunk := f.read(chunk_size):
                yield chunk

    def close(self) -> None:  # noqa: B027 - a no-op unless a store holds threads
        """Release what the store holds (background threads); call when done with it."""

    @abstractmethod
    def copies(self) -> tuple[tuple[str, BlobCopy], ...]:
        """The independent copies the store keeps of every blob, each with its name
        ("primary", "replica"): integrity checks verify each and repair one from another."""


class BlobCopy(BlobStore):
    """One physical copy of the blobs, which can be listed and repaired."""

    @abstractmethod
    def open_writer(self, *, hashing: bool = True) -> CopyWriter:
        """``hashing=False``: a mirror's second copy, committed with ``commit_as``."""

    def copies(self) -> tuple[tuple[str, BlobCopy], ...]:
        return (("primary", self),)

    @abstractmethod
    def clean_partial(self) -> int:
        """Remove partial blobs left by a crash (never visible); only while nothing
        writes, at start. Returns how many were removed."""

    @abstractmethod
    def iter_keys(self) -> Iterator[BlobEntry]:
        """Every blob stored, in key order (the orphan walk; partial writes are not blobs)."""

    @abstractmethod
    def restore(self, key: str, chunks: Iterable[bytes], sha256: str, size: int) -> None:
        """Put back the blob ``key`` from ``chunks`` of a good copy (a repair).

        The bytes are checked against ``sha256`` and ``size`` before anything is
        replaced (ValueError otherwise), so a key only ever names its own content
        (docs/design.md principle 1); a damaged copy is kept aside, not destroyed.
        """
