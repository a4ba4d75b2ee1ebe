"""Unit of work: one transaction, with the repositories that work inside it."""

from __future__ import annotations

from types import TracebackType

from sqlalchemy import Connection, Engine

from kuva.index.access import ProhibitionRepository
from kuva.index.assertions import AssertionRepository
from kuva.index.audit import AuditRepository
from kuva.index.cluster import ClusterRepository
from kuva.index.commitments import CommitmentRepository
from kuva.index.corrections import CorrectionLog
from kuva.index.database import WRITE_OPTION
from kuva.index.directory import DirectoryRepository
from kuva.index.instances import InstanceRepository
from kuva.index.integrity import IntegrityRepository
from kuva.index.manifests import ManifestRepository
from kuva.index.onboarding import OnboardingEvidence
from kuva.index.outbox import TaskRepository
from kuva.index.overview import OverviewRepository
from kuva.index.patients import PatientRepository
from kuva.index.query import QueryRepository
from kuva.index.registry import RegistryRepository
from kuva.index.registry_query import RegistryQueryRepository
from kuva.index.rejections import RejectionRepository
from kuva.index.repository import DisclosureRepository, DocumentRepository
from kuva.index.retention import RetentionRepository
from kuva.index.retrieval import RetrievalRepository


class UnitOfWork:
    """``with UnitOfWork(engine) as uow: ...; uow.commit()`` - rolled back unless committed."""

    def __init__(self, engine: Engine, *, write: bool = True) -> None:
        self._engine = engine
        self._write = write
        self._conn: Connection | None = None

    @property
    def conn(self) -> Connection:
        if self._conn is None:
            raise RuntimeError("unit of work not entered")
        return self._conn

    def __enter__(self) -> UnitOfWork:
        conn = self._engine.connect()
        if self._write:
            conn = conn.execution_options(**{WRITE_OPTION: True})
        conn.begin()
        self._conn = conn
        self.instances = InstanceRepository(conn)
        self.tasks = TaskRepository(conn)
        self.commitments = CommitmentRepository(conn)
        self.query = QueryRepository(conn)
        self.retrieval = RetrievalRepository(conn)
        self.registry = RegistryRepository(conn)
        self.registry_query = RegistryQueryRepository(conn)
        self.manifests = ManifestRepository(conn)
        self.documents = DocumentRepository(conn)
        self.disclosures = DisclosureRepository(conn)
        self.prohibitions = ProhibitionRepository(conn)
        self.rejections = RejectionRepository(conn)
        self.corrections = CorrectionLog(conn)
        self.patients = PatientRepository(conn)
        self.audit = AuditRepository(conn)
        self.integrity = IntegrityRepository(conn)
        self.retention = RetentionRepository(conn)
        self.cluster = ClusterRepository(conn)
        self.directory = DirectoryRepository(conn)
        self.onboarding = OnboardingEvidence(conn)
        self.overview = OverviewRepository(conn)
        self.assertions = AssertionRepository(conn)
        return self

    def commit(self) -> None:
        self.conn.commit()

    def rollback(self) -> None:
        self.conn.rollback()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn = self.conn
        try:
            if conn.in_transaction():
                conn.rollback()
        finally:
            conn.close()
            self._conn = None
