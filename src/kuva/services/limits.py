"""Per-organisation limits (``[[organizations]] limits``, model.directory
OrganizationLimits): one customer's runaway system must not starve the others.

The adapters ask here before they serve, and answer an excess with their protocol's
busy signal:

- DICOM associations open at once on this node: A-ASSOCIATE-RJ rejected-transient,
  source 3 (service provider, presentation), reason 2 "local-limit-exceeded"
  (PS3.8 9.3.4) - kuva.dicom.server;
- requests per second: HTTP 429 with Retry-After (RFC 6585; kuva.web.limits), a
  DIMSE request 0xA700/0xA701 "Out of Resources" or 0x0213 "Resource limitation"
  with an Error Comment (PS3.7 C.4), an HL7 message AE with ERR (kuva.hl7.server);
  C-ECHO, /healthz and /metrics are never limited;
- bytes of one STOW-RS or ITI-41 request body: HTTP 413 (kuva.web.limits).

How they are counted:

- Associations hold a slot: an exclusive ``flock`` on one of the organisation's
  ``limit`` slot files under ``data_dir/run/associations``. Every DICOM process of
  the node (kuva.dicom.workers) takes slots from the same files, so the limit is the
  node's, and a process that dies releases its slots with its file descriptors.
- Requests per second: a token bucket per organisation in each process (the HTTP
  and HL7 listeners run in the main process; each DICOM worker process has its own
  bucket), holding at most one second's worth.

Limits are read from the directory in force (services.directory) on every call: a
change through ``kuva orgs limits`` or the admin API applies within a second, on
every node. An organisation with no limits (or the local one of the embedded
default, which is not in the directory) is not counted at all.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kuva import metrics
from kuva.config import Settings
from kuva.model.directory import OrganizationLimits

log = logging.getLogger(__name__)

NO_LIMITS = OrganizationLimits()
# Slot files per organisation are made up to this many, whatever the limit says.
_MAX_SLOTS = 10_000


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass
class AssociationSlot:
    """A held slot: ``release`` when the association ends (idempotent)."""

    organization: str
    _fd: int | None = None
    _released: bool = field(default=False)

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        if self._fd is not None:
            os.close(self._fd)  # drops the flock
        if self.organization:
            metrics.organization_associations.labels(self.organization).dec()


class OrganizationLimiter:
    def __init__(
        self,
        settings: Settings,
        slots_dir: Path,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._slots_dir = slots_dir
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, _Bucket] = {}

    def limits(self, organization: str | None) -> OrganizationLimits:
        org = self._settings.directory.organization(organization) if organization else None
        return org.limits if org is not None else NO_LIMITS

    # ------------------------------------------------------------------ requests

    def request(self, organization: str | None, protocol: str) -> float:
        """Count one request of ``organization`` over ``protocol`` (http, dimse, hl7):
        0.0 when it may be served, else the seconds until it could be (it is then
        refused, and counted as such)."""
        if not organization:
            return 0.0
        metrics.organization_requests.labels(organization, protocol).inc()
        rate = self.limits(organization).requests_per_second
        if rate is None:
            return 0.0
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(organization)
            capacity = max(1.0, rate)
            if bucket is None:
                bucket = self._buckets[organization] = _Bucket(capacity, now)
            bucket.tokens = min(capacity, bucket.tokens + (now - bucket.updated) * rate)
            bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            wait = (1.0 - bucket.tokens) / rate
        metrics.organization_limited.labels(organization, "requests_per_second").inc()
        return wait

    def request_bytes(self, organization: str | None) -> int | None:
        """The most bytes one STOW-RS or ITI-41 request of ``organization`` may carry."""
        return self.limits(organization).request_bytes

    def too_large(self, organization: str | None) -> None:
        """Count a request refused for its size."""
        if organization:
            metrics.organization_limited.labels(organization, "request_bytes").inc()

    # ------------------------------------------------------------------ associations

    def open_association(self, organization: str | None) -> AssociationSlot | None:
        """A slot for one more association of ``organization``; None when all of its
        slots are held (the association must be refused)."""
        if not organization:
            return AssociationSlot("")
        limit = self.limits(organization).associations
        if limit is None:
            metrics.organization_associations.labels(organization).inc()
            return AssociationSlot(organization)
        directory = self._slots_dir / organization
        directory.mkdir(parents=True, exist_ok=True)
        for index in range(min(limit, _MAX_SLOTS)):
            fd = os.open(directory / f"slot-{index}", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            metrics.organization_associations.labels(organization).inc()
            return AssociationSlot(organization, fd)
        metrics.organization_limited.labels(organization, "associations").inc()
        log.warning(
            "association of organisation %s refused: its %d association(s) are open",
            organization,
            limit,
        )
        return None
