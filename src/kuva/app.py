"""Composition root: builds storage, index, services and adapters from the settings."""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from fastapi import APIRouter
from sqlalchemy import Engine
from starlette.middleware.cors import CORSMiddleware

from kuva import metrics
from kuva.audit import message as audit_message
from kuva.audit.listener import ExportReceiver, SyslogListener
from kuva.audit.syslog import SyslogSender
from kuva.config import S3Endpoint, S3Settings, Settings
from kuva.dicom.commitment import StorageCommitmentSCP
from kuva.dicom.connections import established_connections
from kuva.dicom.find_scp import FindSCP
from kuva.dicom.ian import IanSender
from kuva.dicom.retrieve_scp import RetrieveSCP
from kuva.dicom.server import DicomServer
from kuva.dicom.storage_scp import StorageSCP
from kuva.dicom.workers import WorkerProcesses, listening_socket
from kuva.dicomweb.metadata import metadata_router
from kuva.dicomweb.qido import qido_router
from kuva.dicomweb.rendered import ThumbnailCache, rendered_router
from kuva.dicomweb.stow import stow_router
from kuva.dicomweb.wado import wado_router
from kuva.dicomweb.wado_uri import wado_uri_router
from kuva.hl7.server import Hl7Server
from kuva.index.database import make_engine, ping, prepare_schema
from kuva.index.group_commit import GroupCommitter
from kuva.index.outbox import STATUSES
from kuva.index.uow import UnitOfWork
from kuva.services import audit, commitment, registration
from kuva.services.access import AccessPolicy, DisclosureProhibitions
from kuva.services.assertions import AssertionReplay
from kuva.services.audit import AuditTrail
from kuva.services.authentication import NodeAuthentication
from kuva.services.cluster import Heartbeat
from kuva.services.commitment import CommitmentService
from kuva.services.directory import DirectoryService, DirectoryWatcher
from kuva.services.disclosure import DisclosureLog
from kuva.services.figures import FiguresJob
from kuva.services.ian_backlog import IanBacklog
from kuva.services.imaging_document_source import ImagingDocumentSource
from kuva.services.ingest import IngestService
from kuva.services.integrity import IntegrityService, Scrubber
from kuva.services.limits import OrganizationLimiter
from kuva.services.manifest_publishing import ManifestPublisher
from kuva.services.notices import NoticeService
from kuva.services.onboarding import OnboardingService
from kuva.services.operations import Operations
from kuva.services.patients import PatientService, Senders, sender_networks
from kuva.services.query import QueryService
from kuva.services.registration import RegistrationService
from kuva.services.registry import RegistryService
from kuva.services.repository import RepositoryService
from kuva.services.retention import REJECTED_DESTRUCTION_TASK, RetentionScheduler, RetentionService
from kuva.services.retrieve import RetrieveService
from kuva.services.retrieve_imaging_document_set import ImagingDocumentSetRetrieval
from kuva.services.stored_query import StoredQueryService
from kuva.storage import BlobCopy, BlobStore
from kuva.storage.filesystem import FileBlobStore
from kuva.storage.mirror import MirroredBlobStore
from kuva.storage.s3 import S3BlobStore, S3Location, S3Options
from kuva.tasks.worker import TaskWorkers
from kuva.tls import CrlWatcher, server_context
from kuva.web.admin import admin_router, operator_check
from kuva.web.app import create_app
from kuva.web.console import Console, console_router
from kuva.web.console_records import records_router
from kuva.web.directory_admin import directory_router
from kuva.web.disclosures import disclosures_router
from kuva.web.limits import OrganizationLimitGuard
from kuva.web.organization_state import OrganizationStateGuard
from kuva.web.tls import protocol_class
from kuva.xds import ebrim, xua
from kuva.xds.endpoint import soap_router
from kuva.xds.iti18 import registry_stored_query
from kuva.xds.iti42 import register_document_set
from kuva.xds.rad69 import retrieve_imaging_document_set
from kuva.xds.repository import provide_and_register, retrieve_document_set
from kuva.xds.schema import compiled_schema

log = logging.getLogger(__name__)


def build_blob_store(settings: Settings) -> BlobStore:
    """The blob store of ``[archive]``: a folder or an S3 bucket, or two of them when
    a replica is configured (each may be either)."""
    primary = _blob_copy(settings.archive.resolved_blob_url(), settings.s3)
    if not settings.archive.replica_url:
        return primary
    endpoint = settings.s3.replica or settings.s3
    return MirroredBlobStore(
        primary, _blob_copy(settings.archive.replica_url, settings.s3, endpoint)
    )


def _blob_copy(url: str, s3: S3Settings, endpoint: S3Endpoint | None = None) -> BlobCopy:
    if url.startswith("file://"):
        return FileBlobStore(Path(url.removeprefix("file://")))
    endpoint = endpoint or s3
    options = S3Options(
        endpoint_url=endpoint.endpoint_url,
        region=endpoint.region,
        access_key_id=endpoint.access_key_id,
        secret_access_key=endpoint.secret_access_key,
        addressing_style=endpoint.addressing_style,
        part_size=s3.part_size_mb * 1024 * 1024,
    )
    return S3BlobStore(S3Location.parse(url), options)


@dataclass(frozen=True)
class XdsServices:
    """The XDS.b registry and repository and the XDS-I.b Imaging Document Source:
    its manifest publishing and its RAD-69."""

    registry: RegistryService
    stored_query: StoredQueryService
    repository: RepositoryService
    manifests: ManifestPublisher
    rad69: ImagingDocumentSetRetrieval
    replays: AssertionReplay


def build_xds(
    settings: Settings,
    engine: Engine,
    blobs: BlobStore,
    ingest: IngestService,
    retrieve: RetrieveService,
    audit_trail: AuditTrail | None = None,
) -> XdsServices:
    """The XDS services on one index and blob store (``kuva serve`` and ``kuva xds``)."""
    disclosures = DisclosureLog(engine, audit=audit_trail)
    access = AccessPolicy(settings)
    registry = RegistryService(
        engine,
        trusted_assigning_authorities=settings.xds.trusted_assigning_authorities,
        organizations=lambda: [org.oid for org in settings.directory.organizations],
        organization_state=settings.organization_state,
        render=ebrim.render,
    )
    repository = RepositoryService(
        engine,
        blobs,
        registry,
        repository_unique_id=settings.xds.repository_unique_id,
        home_community_id=settings.xds.home_community_id,
        with_slots=ebrim.with_slots,
        disclosures=disclosures,
        access=access,
        audit=audit_trail,
    )
    manifests = ManifestPublisher(
        engine, ImagingDocumentSource(engine, settings), ingest, repository, blobs, settings
    )
    rad69 = ImagingDocumentSetRetrieval(retrieve, settings, disclosures, access=access)
    stored_query = StoredQueryService(engine, disclosures=disclosures, access=access)
    replays = AssertionReplay(engine, reuse=settings.xds.xua_assertion_reuse)
    return XdsServices(registry, stored_query, repository, manifests, rad69, replays)


def xds_router(
    settings: Settings, xds: XdsServices, audit_trail: AuditTrail | None = None
) -> APIRouter:
    """The SOAP endpoints of docs/contract.md ("HTTP paths"), by WS-Addressing action."""
    return soap_router(
        {
            "/xds/registry": [
                register_document_set(xds.registry, settings, audit_trail),
                registry_stored_query(xds.stored_query, settings, audit_trail),
            ],
            "/xds/repository": [
                provide_and_register(xds.repository, settings, audit_trail),
                retrieve_document_set(xds.repository, settings),
            ],
            "/xds/imaging": [retrieve_imaging_document_set(xds.rad69, settings, audit_trail)],
        },
        settings.xds.max_request_bytes,
        xua.authentication(
            xua.XuaVerifier(settings.xds, xds.replays),
            audit_trail,
            state_of=settings.organization_state,
        ),
    )


def build_audit(settings: Settings, engine: Engine) -> AuditTrail:
    """The audit trail (services.audit), sending to ``[audit] repository`` when set."""
    return AuditTrail(
        engine,
        settings,
        render=audit_message.render,
        sender=SyslogSender(settings.audit) if settings.audit.repository else None,
    )


class Archive:
    """Every part of a running archive, wired together."""

    def __init__(self, settings: Settings, *, dicom_worker: bool = False) -> None:
        """``dicom_worker``: the archive of a DICOM worker process (kuva.dicom.workers),
        which leaves the schema and the blob stores' leftovers to the main process
        (it must never remove a partial blob the main process is writing)."""
        self.settings = settings
        settings.archive.data_dir.mkdir(parents=True, exist_ok=True)
        self.engine = make_engine(settings.archive.resolved_database_url())
        if not dicom_worker:
            prepare_schema(self.engine)
        self.blobs = build_blob_store(settings)
        if not dicom_worker:
            for name, copy in self.blobs.copies():
                try:
                    copy.clean_partial()
                except OSError as exc:
                    # A store out of reach at start (S3 down, credentials refused):
                    # the archive starts, /healthz says so, and C-STOREs get a
                    # failure status until the store is back.
                    log.error("blob store (%s) not usable at start: %s", name, exc)
        self.dicom_workers: WorkerProcesses | None = None
        self._dicom_port: int | None = None  # the DICOM port bound, once listening
        self.audit = build_audit(settings, self.engine)
        self.onboarding = OnboardingService(self.engine, settings)
        self.directory = DirectoryService(
            self.engine, audit=self.audit, acceptance=self.onboarding.missing
        )
        if not dicom_worker:
            self.directory.seed(settings.organizations, settings.nodes)
        self.directory_watcher = DirectoryWatcher(self.directory, settings)
        # [tls] crl_file read again when it changes, in this process's TLS contexts.
        tls = settings.tls
        self.crl_watcher = (
            CrlWatcher(tls.crl_file, tls.crl_check_seconds) if tls.crl_file is not None else None
        )
        self.directory_watcher.refresh()  # the index's directory in force before listening
        self.committer = GroupCommitter(self.engine)
        # Registration on: what the registry would not take is refused at the door.
        self.ingest = IngestService(
            self.blobs,
            self.committer,
            for_registry=settings.registration.enabled,
            organization_state=settings.organization_state,
        )
        self.commitment = CommitmentService(
            self.engine, self.blobs, max_attempts=settings.tasks.max_attempts
        )
        self.commitment_scp = StorageCommitmentSCP(settings, self.commitment)
        self.access = AccessPolicy(settings)
        self.disclosures = DisclosureLog(self.engine, audit=self.audit)
        self.retrieve = RetrieveService(
            self.engine,
            self.blobs,
            corrections=settings.archive.apply_corrections,
            disclosures=self.disclosures,
        )
        self.retrieve.audit = self.audit
        self.query = QueryService(self.engine, self.disclosures)
        self.xds = build_xds(
            settings, self.engine, self.blobs, self.ingest, self.retrieve, self.audit
        )
        self.registration = RegistrationService(
            self.engine, settings, self.xds.manifests, IanSender(settings)
        )
        networks = sender_networks(settings)  # [[hl7.senders]], parsed once
        # Every DICOM process of this node takes association slots from one folder.
        self.limiter = OrganizationLimiter(
            settings, settings.archive.data_dir / "run" / "associations"
        )
        self.patients = PatientService(
            self.engine,
            strict=settings.hl7.strict_merge,
            audit=self.audit,
            senders=lambda: Senders.of(settings, networks),
            rate_limit=lambda organization: self.limiter.request(organization, "hl7"),
        )
        self.integrity = IntegrityService(self.engine, self.blobs)
        self.integrity.on_problem = self.audit.integrity_finding
        rate = settings.integrity.scrub_bytes_per_second
        self.scrubber = (
            Scrubber(
                self.integrity,
                self.engine,
                rate,
                orphan_seconds=settings.integrity.orphan_check_hours * 3600,
            )
            if rate > 0
            else None
        )
        self.retention = RetentionService(self.engine, self.blobs, settings, audit=self.audit)
        self.ingest.on_added = self.retention.instance_added
        self.ingest.on_retention_expired = self.retention
        self.patients.on_retention = self.retention.studies_changed
        hours = settings.retention.run_every_hours
        self.retention_scheduler = (
            RetentionScheduler(
                self.retention,
                hours,
                duty=lambda seconds: self.heartbeat.take("retention", seconds),
            )
            if hours > 0
            else None
        )
        if settings.registration.enabled:
            self.ingest.on_indexed = self.registration.instance_indexed
            self.ingest.on_changed = self.registration.content_changed
            self.commitment.on_verified = self.registration.commitment_verified
            self.patients.on_changed = self.registration.content_changed
        self.workers = TaskWorkers(
            self.engine,
            settings.tasks,
            {
                commitment.TASK_KIND: self.commitment.run_task,
                registration.REGISTRATION_TASK: self.registration.run_registration,
                registration.REGISTRATION_BATCH_TASK: self.registration.run_registration_batch,
                registration.IAN_TASK: self.registration.run_ian,
                audit.DELIVERY_TASK: self.audit.run_delivery,
                REJECTED_DESTRUCTION_TASK: self.retention.run_rejected_task,
            },
            policies=registration.retry_policies(settings),
            node_name=settings.node_name,
            purge_duty=lambda seconds: self.heartbeat.take("purge-done-tasks", seconds),
        )
        self.heartbeat = Heartbeat(
            self.engine, settings.node_name, settings.archive.heartbeat_seconds, self.duties
        )
        self.figures = FiguresJob(
            self.engine, self.audit, duty=lambda seconds: self.heartbeat.take("figures", seconds)
        )
        self.ian_backlog = (
            IanBacklog(self.engine, settings) if settings.registration.enabled else None
        )
        self.retention.on_enqueued = self.workers.wake
        self.audit.on_enqueued = self.workers.wake
        self.commitment.on_enqueued = self.workers.wake
        self.registration.on_enqueued = self.workers.wake
        compiled_schema()  # built now (about 0.6 s), not on the first XDS request
        self.commitment.sender = self.commitment_scp
        self.authentication = NodeAuthentication(settings, self.audit)
        self.dicom = DicomServer(
            settings,
            StorageSCP(settings, self.ingest, self.blobs, self.audit),
            self.commitment_scp,
            FindSCP(settings, self.query, self.audit, self.access),
            RetrieveSCP(settings, self.retrieve, self.access, self.audit),
            self.audit,
            self.authentication,
            self.limiter,
        )
        self.hl7 = Hl7Server(settings, self.patients, self.authentication)
        self.notices = NoticeService(self.engine)
        self.syslog = (
            SyslogListener(
                settings.audit,
                ExportReceiver(
                    self.notices,
                    lambda: [org.oid for org in settings.directory.organizations],
                ).receive,
            )
            if settings.audit.listen
            else None
        )
        operators = operator_check(settings.access.operators, lambda: settings.open_access)
        operations = Operations(
            self.engine,
            settings,
            associations=self.associations_open,
            integrity=self.scrubber.health if self.scrubber is not None else None,
        )
        console = Console(self.query, operations, operators)
        prohibitions = DisclosureProhibitions(self.engine, audit=self.audit)
        self.http_app = create_app(
            {
                "index": lambda: ping(self.engine),
                "blobs": self.blobs.check,
                **({"integrity": self.scrubber.health} if self.scrubber is not None else {}),
            },
            refresh_metrics=self.refresh_task_metrics,
            routers=[
                ("/dicom-web", qido_router(self.query)),
                ("/dicom-web", metadata_router(self.query)),
                ("/dicom-web", stow_router(self.ingest, self.blobs)),
                ("/dicom-web", wado_router(self.retrieve)),
                (
                    "/dicom-web",
                    rendered_router(
                        self.retrieve,
                        ThumbnailCache(settings.archive.data_dir / "cache" / "thumbnails"),
                    ),
                ),
                ("", wado_uri_router(self.retrieve)),
                ("", xds_router(settings, self.xds, self.audit)),
                ("", admin_router(prohibitions, operators)),
                ("", directory_router(self.directory, self.onboarding, operators)),
                ("", console_router(console)),
                (
                    "",
                    records_router(
                        console,
                        self.directory,
                        self.onboarding,
                        self.notices,
                        self.retention,
                        self.figures,
                        prohibitions,
                    ),
                ),
                (
                    "",
                    disclosures_router(
                        self.notices,
                        operators=settings.access.operators,
                        max_message_bytes=settings.audit.listen_max_bytes,
                    ),
                ),
            ],
        )
        self.http_app.state.public_base_url = settings.http.base_url
        self.http_app.state.default_organization = settings.http_organization()
        self.http_app.state.access = self.access
        # Inner to outer: the limits count requests the state guard let through.
        self.http_app.add_middleware(OrganizationLimitGuard, limiter=self.limiter)
        self.http_app.add_middleware(
            OrganizationStateGuard, state_of=settings.organization_state, audit=self.audit
        )
        if settings.http.cors_origins:
            # Outermost: a browser's preflight is answered before anything else.
            self.http_app.add_middleware(
                CORSMiddleware,
                allow_origins=settings.http.cors_origins,
                allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
                allow_headers=["*"],
                expose_headers=["Content-Type", "Content-Location", "Warning"],
            )
        self.http_app.state.audit = self.audit
        self._http: uvicorn.Server | None = None
        self._http_thread: threading.Thread | None = None

    def refresh_task_metrics(self) -> None:
        with UnitOfWork(self.engine, write=False) as uow:
            counts = uow.tasks.counts()
        kinds = {kind for kind, _ in counts} | {
            commitment.TASK_KIND,
            registration.REGISTRATION_TASK,
            registration.REGISTRATION_BATCH_TASK,
            registration.IAN_TASK,
            audit.DELIVERY_TASK,
            REJECTED_DESTRUCTION_TASK,
        }
        for kind in kinds:
            for status in STATUSES:
                metrics.tasks.labels(kind, status).set(counts.get((kind, status), 0))
        if self.ian_backlog is not None:
            self.ian_backlog.check()
        writer = self.audit.writer
        metrics.audit_queued.set(writer.pending() if writer is not None else 0)

    def duties(self) -> list[str]:
        """What this node runs (its heartbeat says it; ``kuva cluster status``)."""
        running = [f"dicom x{self.settings.dicom_processes}", "http", "hl7", "tasks", "figures"]
        if self.scrubber is not None:
            running.append("integrity")
        if self.retention_scheduler is not None:
            running.append("retention")
        if self.ian_backlog is not None:
            running.append("ian-backlog")
        return running

    def start(self) -> None:
        if self.settings.open_access:
            log.warning(
                "no [[nodes]] configured: any calling AE title is accepted into one local "
                "organisation - fine for a first try, never for production"
            )
        self.audit.start_writer()
        self.directory_watcher.start()
        if self.crl_watcher is not None:
            self.crl_watcher.start()
        self.heartbeat.start()
        self.figures.start()
        self.workers.start()
        if self.scrubber is not None:
            self.scrubber.start()
        if self.retention_scheduler is not None:
            self.retention_scheduler.start()
        if self.ian_backlog is not None:
            self.ian_backlog.start()
        host, port = self._start_dicom()
        tls = {name: " over mutual TLS" for name in self.settings.tls_listeners}
        log.info(
            "ready: DICOM %s on %s:%d%s, %d process(es)",
            self.settings.dicom.ae_title,
            host,
            port,
            tls.get("dicom", ""),
            self.settings.dicom_processes,
        )
        self._start_http()
        if self.syslog is not None:
            for scheme, host, port in self.syslog.start():
                log.info("ready: syslog %s on %s:%d (ATNA Export messages)", scheme, host, port)
        hl7_host, hl7_port = self.hl7.start()
        log.info("ready: HL7 MLLP on %s:%d%s", hl7_host, hl7_port, tls.get("hl7", ""))
        log.info(
            "ready: HTTP%s on %s:%d (/dicom-web, /wado, /xds/registry, /xds/repository, "
            "/xds/imaging, /disclosures, /audit/messages, /admin, /healthz, /metrics)",
            "S" if self.settings.http.tls else "",
            self.settings.http.host,
            self.settings.http.port,
        )
        if not self.settings.audit.enabled:
            log.warning("[audit] enabled = false: nothing is audited - never in production")
        self.audit.application_started()

    def associations_open(self) -> int:
        """DICOM associations open on the archive's port, in every process serving it
        (the kernel's connection table; this process's own count where there is none)."""
        if self._dicom_port is not None:
            counted = established_connections(self._dicom_port)
            if counted is not None:
                return counted
        return len(self.dicom.associations)

    def _start_dicom(self) -> tuple[str, int]:
        dicom = self.settings.dicom
        count = self.settings.dicom_processes
        if count <= 1:
            address = self.dicom.start()
            self._dicom_port = address[1]
            return address
        address = self.dicom.start(sock=listening_socket(dicom.host, dicom.port))
        self._dicom_port = address[1]
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
        self.dicom_workers = WorkerProcesses(self.settings, address[1], count - 1, str(level))
        self.dicom_workers.start()
        return address

    def start_dicom_worker(self, sock: socket.socket) -> None:
        """A DICOM worker process's part: its audit writer and the DICOM listener on
        the main process's port (kuva.dicom.workers)."""
        self.audit.start_writer()
        self.directory_watcher.start()
        if self.crl_watcher is not None:
            self.crl_watcher.start()
        self.dicom.start(sock=sock)

    def stop_dicom_worker(self) -> None:
        self.dicom.stop()
        self.directory_watcher.stop()
        if self.crl_watcher is not None:
            self.crl_watcher.stop()
        self.audit.stop_writer()
        self.committer.close()
        self.blobs.close()
        self.engine.dispose()

    def _start_http(self) -> None:
        extra: dict[str, Any] = {}
        if self.settings.http.tls:
            # TLS is started by the protocol itself (kuva.web.tls), not by uvicorn.
            extra["http"] = protocol_class(
                server_context(self.settings.tls),
                self.authentication,
                self.settings.tls.handshake_seconds,
            )
        config = uvicorn.Config(
            self.http_app,
            host=self.settings.http.host,
            port=self.settings.http.port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            **extra,
        )
        self._http = uvicorn.Server(config)
        self._http_thread = threading.Thread(target=self._http.run, name="kuva-http", daemon=True)
        self._http_thread.start()
        ready = threading.Event()
        for _ in range(200):
            if self._http.started:
                ready.set()
                break
            if not self._http_thread.is_alive():
                break
            threading.Event().wait(0.05)
        if not ready.is_set():
            raise RuntimeError(
                f"HTTP listener could not start on {self.settings.http.host}:"
                f"{self.settings.http.port}"
            )

    def stop(self) -> None:
        """Stop listening, finish in-flight work, close everything."""
        log.info("stopping")
        self.dicom.stop()
        if self.dicom_workers is not None:
            self.dicom_workers.stop()
        self.hl7.stop()
        if self.syslog is not None:
            self.syslog.stop()
        if self._http is not None:
            self._http.should_exit = True
            if self._http_thread is not None:
                self._http_thread.join(timeout=10)
        if self.scrubber is not None:
            self.scrubber.stop()
        if self.retention_scheduler is not None:
            self.retention_scheduler.stop()
        if self.ian_backlog is not None:
            self.ian_backlog.stop()
        # Every queued record (queries, retrieves) is written before the stop's.
        self.audit.stop_writer()
        self.audit.application_stopped()
        self.workers.stop()
        self.figures.stop()
        self.heartbeat.stop()
        self.directory_watcher.stop()
        if self.crl_watcher is not None:
            self.crl_watcher.stop()
        self._deliver_audit()
        self.committer.close()
        self.blobs.close()
        self.engine.dispose()
        log.info("stopped")

    def _deliver_audit(self, seconds: float = 5.0) -> None:
        """Send the audit messages due now (the stop's among them) before exiting,
        for at most ``seconds``; what is left goes at the next start."""
        if not self.settings.audit.repository:
            return
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and self.workers.run_once(kinds=[audit.DELIVERY_TASK]):
            pass


def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then stop cleanly."""
    archive = Archive(settings)
    stop = threading.Event()

    def _signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _signal)
    signal.signal(signal.SIGINT, _signal)
    archive.start()
    while not stop.is_set():
        stop.wait(1.0)
    archive.stop()
