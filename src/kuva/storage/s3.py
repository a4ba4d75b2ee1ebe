"""Blobs in S3-compatible object storage (``[archive] blob_url = "s3://bucket/prefix"``).

The same content addresses as the folder store (``sha256/ab/cd/<digest>`` under the
prefix), written once and never overwritten:

* A blob up to ``part_size`` bytes is kept in memory while it arrives (hashed on
  the way) and stored with one PUT that is conditional (``If-None-Match: *``: an
  existing object is never replaced) and carries its SHA-256 as the object's
  checksum (``x-amz-checksum-sha256``), so the store checks what it received.
* A larger blob streams, as it arrives, into a multipart upload under
  ``incoming/<uuid>`` (each part with its SHA-256 checksum; at most two parts in
  flight, so memory stays bounded whatever the object's size), and is then copied
  inside the store to its content address, unless an object is there already, and
  the staging object deleted. S3's CopyObject takes at most 5 GiB: a larger object
  is refused at commit (a storage failure, said so), not stored.
* Success is given only after the store acknowledged the write; S3 stores an
  acknowledged object durably.
* Reads stream (``open`` is a seekable reader doing ranged GETs), so frames and bulk
  data are read by range, never the whole object.

Client library: obstore (Rust's object_store crate), chosen by measurement against
boto3 on this machine with SeaweedFS (bench/s3_client.py, median of 5 rounds): a
0.5 MB create-only PUT 8.0 ms with 0.85 ms of the client's CPU against boto3's 10.6
ms and 3.3 ms; a 0.5 MB GET 2.4 ms (0.62 ms CPU) against 4.7 ms (2.7 ms); an 8 KB
range 1.0 ms (0.21 ms) against 2.7 ms (1.4 ms). kuva's ingest is CPU-bound, so
boto3's extra 2.4 ms of CPU per object would cost a third of it. obstore takes the
standard AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL and AWS_REGION
from the environment; ``[s3]`` settings override them.

Left by a process killed mid-upload: a staging object or an incomplete multipart
upload. At start (``clean_partial``) both are removed once an hour old: the objects
through obstore, the uploads by ListMultipartUploads and AbortMultipartUpload, which
obstore lacks (``storage.s3_uploads``). A bucket lifecycle rule
(AbortIncompleteMultipartUpload, docs/deployment.md) does it too, also where kuva
holds no static keys to sign those requests with.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, BinaryIO, cast
from urllib.parse import urlsplit

import obstore
from obstore.exceptions import AlreadyExistsError
from obstore.store import S3Store

from kuva.storage.base import BlobCopy, BlobEntry, BlobExistsError, BlobRef, CopyWriter, blob_key
from kuva.storage.s3_uploads import MultipartUploads

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig, S3Config

log = logging.getLogger(__name__)

MIB = 1024 * 1024
# S3 parts are at least 5 MiB (all but the last) and at most 10,000 per upload.
MIN_PART_SIZE = 5 * MIB
# CopyObject's limit (the copy from the staging object to the content address).
MAX_COPY_BYTES = 5 * 1024 * MIB
STAGING = "incoming/"
QUARANTINE = "quarantine/"
# A staging object older than this at start was left by a process that died.
STALE_STAGING_SECONDS = 3600.0


@dataclass(frozen=True)
class S3Location:
    """``s3://bucket/prefix``: where the blobs are kept."""

    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, url: str) -> S3Location:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"{url!r} is not an s3://bucket/prefix URL")
        return cls(parts.netloc, parts.path.strip("/"))

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


@dataclass(frozen=True)
class S3Options:
    """How to reach the store; empty values come from the environment (AWS_*)."""

    endpoint_url: str = ""
    region: str = ""
    access_key_id: str = ""
    secret_access_key: str = ""
    addressing_style: str = "path"  # "path" or "virtual" (bucket.host)
    part_size: int = 8 * MIB


def _client(location: S3Location, options: S3Options) -> S3Store:
    config: S3Config = {
        "checksum_algorithm": "sha256",
        "virtual_hosted_style_request": options.addressing_style == "virtual",
    }
    if options.endpoint_url:
        config["endpoint"] = options.endpoint_url
    if options.region:
        config["region"] = options.region
    if options.access_key_id:
        config["access_key_id"] = options.access_key_id
    if options.secret_access_key:
        config["secret_access_key"] = options.secret_access_key
    endpoint = options.endpoint_url or os.environ.get("AWS_ENDPOINT_URL", "")
    # obstore speaks HTTPS only unless told otherwise; a plain-HTTP endpoint (a test
    # store on loopback) is allowed when it is the one configured.
    client_options: ClientConfig = {
        # A store that does not answer is an outage, not a wait: a C-STORE gets its
        # failure status within seconds, and the sender retries later.
        "connect_timeout": timedelta(seconds=5),
        "timeout": timedelta(seconds=120),
    }
    if endpoint.startswith("http://"):
        client_options["allow_http"] = True
    retry: RetryConfig = {
        "max_retries": 3,
        "retry_timeout": timedelta(seconds=15),
        "backoff": {
            "init_backoff": timedelta(milliseconds=100),
            "max_backoff": timedelta(seconds=2),
            "base": 2,
        },
    }
    return S3Store(
        location.bucket,
        prefix=location.prefix or None,
        client_options=client_options,
        retry_config=retry,
        config=config,
    )


class _Staging:
    """The multipart upload of a large blob, fed part by part off the caller's thread
    (the engine's loop): at most two parts in flight, then ``write`` waits."""

    def __init__(self, store: S3BlobStore) -> None:
        self.path = f"{STAGING}{uuid.uuid4().hex}"
        self._writer = obstore.open_writer(store.client, self.path, buffer_size=store.part_size)
        self._pool = store.pool
        self._last: Future[None] | None = None
        self._in_flight: deque[Future[None]] = deque()

    def send(self, part: bytearray) -> None:
        while len(self._in_flight) >= 2:
            self._in_flight.popleft().result()
        previous = self._last

        def upload() -> None:
            if previous is not None:
                previous.result()  # parts go in order
            self._writer.write(part)

        self._last = self._pool.submit(upload)
        self._in_flight.append(self._last)

    def finish(self) -> None:
        if self._last is not None:
            self._last.result()
        self._writer.close()

    def abandon(self) -> None:
        for future in self._in_flight:
            future.exception()
        with contextlib.suppress(Exception):
            self._writer.close()  # completes it: the caller deletes the staging object


class S3BlobWriter(CopyWriter):
    """``hashing=False`` is a mirror's second copy: committed under the digest the
    first copy's writer computed over the same bytes (``commit_as``)."""

    def __init__(self, store: S3BlobStore, *, hashing: bool = True) -> None:
        super().__init__(hashing=hashing)
        self._store = store
        self._buffer = bytearray()
        self._staging: _Staging | None = None
        self._pending: Future[BlobRef] | None = None
        self._done = False
        self.name = f"{store.location}/{STAGING}(in memory)"

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._done:
            raise ValueError("write to a closed blob writer")
        if self._hashing:
            self._hash.update(data)
        self._buffer += data
        self._size += len(data)
        if len(self._buffer) >= self._store.part_size:
            if self._staging is None:
                self._staging = _Staging(self._store)
                self.name = f"{self._store.location}/{self._staging.path}"
            part, self._buffer = self._buffer, bytearray()
            self._staging.send(part)
        return len(data)

    def start_sync(self) -> None:
        """The data set is complete: its upload starts now, while the receiver parses
        the header and indexes it (``commit_soon`` then returns this upload). If the
        object is not kept after all, ``discard`` deletes what the upload created."""
        if self._hashing and not self._done:
            self.commit_soon()

    def commit(self) -> BlobRef:
        return self.commit_soon().result()

    def commit_soon(self) -> Future[BlobRef]:
        if self._pending is None:
            self._pending = self._store.pool.submit(self.commit_as, self.hexdigest())
        return self._pending

    def commit_as_soon(self, digest: str) -> Future[BlobRef]:
        return self._store.pool.submit(self.commit_as, digest)

    def commit_as(self, digest: str) -> BlobRef:
        try:
            return self._commit_as(digest)
        except (BlobExistsError, OSError):
            raise
        except Exception as exc:  # the store's own errors: one line, no request dump
            raise _store_error(self._store.location, exc) from None

    def _commit_as(self, digest: str) -> BlobRef:
        if self._done:
            raise ValueError("blob writer already closed")
        self._done = True
        key = blob_key(digest)
        client = self._store.client
        staging = self._staging
        if staging is None:
            body, self._buffer = self._buffer, bytearray()
            try:
                obstore.put(client, key, body, mode="create")
            except AlreadyExistsError:
                return self._existing(key, digest)
            return BlobRef(key=key, sha256=digest, size=self._size, created=True)
        with self._staged(staging):
            if self._size > MAX_COPY_BYTES:
                raise OSError(
                    27, "object larger than 5 GiB: not supported on S3 storage (CopyObject)"
                )
            if self._store.exists(key):
                return self._existing(key, digest)
            obstore.copy(client, staging.path, key)
            return BlobRef(key=key, sha256=digest, size=self._size, created=True)

    @contextlib.contextmanager
    def _staged(self, staging: _Staging) -> Iterator[None]:
        """The staging upload completed with the last bytes, for the caller to copy
        from; deleted afterwards, whatever happened."""
        try:
            if self._buffer:
                part, self._buffer = self._buffer, bytearray()
                staging.send(part)
            staging.finish()
            yield
        except BaseException:
            staging.abandon()
            raise
        finally:
            self._store.delete_quietly(staging.path)

    def replace(self, key: str) -> None:
        """Store the bytes under ``key`` in place of what is there (a repair: the
        caller checked them against the name)."""
        if self._done:
            raise ValueError("blob writer already closed")
        self._done = True
        staging = self._staging
        if staging is None:
            body, self._buffer = self._buffer, bytearray()
            obstore.put(self._store.client, key, body, mode="overwrite")
            return
        with self._staged(staging):
            obstore.copy(self._store.client, staging.path, key)

    def _existing(self, key: str, digest: str) -> BlobRef:
        if self._store.size(key) != self._size:
            raise BlobExistsError(f"{key} exists with another size")
        return BlobRef(key=key, sha256=digest, size=self._size, created=False)

    def discard(self) -> None:
        pending = self._pending
        if pending is not None:
            # Uploaded already (start_sync): no row will name it, unless it was there.
            try:
                ref = pending.result()
            except Exception:
                return
            if ref.created:
                self._store.delete_quietly(ref.key)
            return
        self.close()

    def close(self) -> None:
        if self._done:
            return
        self._done = True
        self._buffer = bytearray()
        if self._staging is not None:
            self._staging.abandon()
            self._store.delete_quietly(self._staging.path)


class S3BlobStore(BlobCopy):
    def __init__(self, location: S3Location, options: S3Options | None = None) -> None:
        options = options or S3Options()
        if options.part_size < MIN_PART_SIZE:
            raise ValueError(f"S3 part size below {MIN_PART_SIZE} bytes")
        self.location = location
        self.part_size = options.part_size
        self.client = _client(location, options)
        self.pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="kuva-s3")
        self.uploads = MultipartUploads.from_settings(
            location.bucket,
            endpoint_url=options.endpoint_url,
            region=options.region,
            access_key_id=options.access_key_id,
            secret_access_key=options.secret_access_key,
            virtual_hosted=options.addressing_style == "virtual",
        )

    def open_writer(self, *, hashing: bool = True) -> S3BlobWriter:
        return S3BlobWriter(self, hashing=hashing)

    def open(self, key: str) -> BinaryIO:
        """A seekable reader; each read past its buffer is one ranged GET."""
        try:
            reader = obstore.open_reader(self.client, key, buffer_size=MIB)
        except FileNotFoundError:
            raise
        except Exception as exc:  # the store out of reach: an OSError like a disk's
            raise _store_error(self.location, exc) from None
        return cast(BinaryIO, _Reader(reader, str(self.location)))

    def exists(self, key: str) -> bool:
        try:
            obstore.head(self.client, key)
        except FileNotFoundError:
            return False
        return True

    def size(self, key: str) -> int:
        return int(obstore.head(self.client, key)["size"])

    def check(self) -> None:
        """A small object written and deleted: the store is reachable, the bucket
        there and the credentials allow writing. The error names the store, never a
        secret."""
        probe = f"health/{uuid.uuid4().hex}"
        try:
            obstore.put(self.client, probe, b"kuva")
            obstore.delete(self.client, probe)
        except Exception as exc:
            raise _store_error(self.location, exc) from None

    def delete(self, key: str) -> bool:
        """S3 acknowledges a DELETE once it is durable."""
        existed = self.exists(key)
        obstore.delete(self.client, key)
        return existed

    def delete_quietly(self, path: str) -> None:
        try:
            obstore.delete(self.client, path)
        except Exception as exc:
            log.warning("could not delete %s/%s: %s", self.location, path, _reason(exc))

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    def clean_partial(self, older_than: float = STALE_STAGING_SECONDS) -> int:
        """Delete staging objects and abort multipart uploads left by a process that
        died mid-upload, once ``older_than`` seconds old (an hour: another node may
        be writing the younger ones); how many."""
        cutoff = time.time() - older_than
        removed = 0
        try:
            for batch in obstore.list(self.client, prefix=STAGING):
                for meta in batch:
                    if meta["last_modified"].timestamp() < cutoff:
                        self.delete_quietly(meta["path"])
                        removed += 1
        except Exception as exc:
            raise _store_error(self.location, exc) from None
        if self.uploads is None:
            log.info(
                "%s: no static S3 keys to list incomplete multipart uploads with; "
                "the bucket's lifecycle rule must abort them",
                self.location,
            )
            return removed
        prefix = f"{self.location.prefix}/{STAGING}" if self.location.prefix else STAGING
        try:
            aborted = self.uploads.sweep(prefix, older_than=older_than)
        except OSError as exc:  # a store without ListMultipartUploads: its lifecycle rule
            log.warning("%s: incomplete multipart uploads not swept: %s", self.location, exc)
            return removed
        if aborted:
            log.info("%s: aborted %d incomplete multipart upload(s)", self.location, aborted)
        return removed + aborted

    def iter_keys(self) -> Iterator[BlobEntry]:
        """Every blob, in key order (S3 lists keys in UTF-8 byte order)."""
        for batch in obstore.list(self.client, prefix="sha256/"):
            for meta in batch:
                yield BlobEntry(
                    key=meta["path"],
                    size=int(meta["size"]),
                    modified=meta["last_modified"].timestamp(),
                )

    def restore(self, key: str, chunks: Iterable[bytes], sha256: str, size: int) -> None:
        """Checked against ``sha256`` and ``size`` first; the damaged object is
        copied to ``quarantine/`` before it is replaced."""
        if blob_key(sha256) != key:
            raise ValueError(f"restore of {key}: not the key of {sha256}")
        writer = self.open_writer()
        try:
            for chunk in chunks:
                writer.write(chunk)
            if writer.hexdigest() != sha256 or writer.size != size:
                raise ValueError(f"restore of {key}: the bytes do not match their name")
            if self.exists(key):
                kept = f"{QUARANTINE}{key.rsplit('/', 1)[-1]}.{time.time_ns()}"
                obstore.copy(self.client, key, kept)
            writer.replace(key)
        finally:
            writer.close()


class _Reader(io.RawIOBase):
    """obstore's buffered ranged reader as a binary file (BinaryIO for callers)."""

    def __init__(self, reader: Any, location: str) -> None:
        self._reader = reader
        self._location = location

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._read(len(buffer))
        n = len(data)
        memoryview(buffer).cast("B")[:n] = memoryview(data).cast("B")
        return n

    def read(self, size: int | None = -1) -> bytes:
        return bytes(self._read(None if size is None or size < 0 else size))

    def _read(self, size: int | None) -> Any:
        try:
            return self._reader.read() if size is None else self._reader.read(size)
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise _store_error(self._location, exc) from None

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return int(self._reader.seek(offset, whence))

    def tell(self) -> int:
        return int(self._reader.tell())

    def close(self) -> None:
        if not self.closed:
            self._reader.close()
        super().close()


def _reason(exc: BaseException) -> str:
    """The first line of a store error, without request details."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"{type(exc).__name__}: {text[:200]}"


def _store_error(location: object, exc: BaseException) -> OSError:
    """A store's error as an OSError like a disk's: one line naming the store, never
    the request (or a secret)."""
    return OSError(f"S3 store {location}: {_reason(exc)}")
