"""Helpers for the benchmarks in bench/: grow an index without sending pixel data.

``prefill_index`` writes synthetic study-tree rows through the index repository
(the same ``InstanceRepository.add`` the ingest service uses), in large
transactions; with ``fast=True`` it writes the same rows with ``kuva.index.bulk``
(many rows per statement), which is what an index of a million instances needs.
The rows reference blob keys that do not exist: the result is a benchmark index,
never an archive. It refuses to touch an index that is not empty.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from rich.progress import Progress

from kuva.config import LOCAL_ORGANIZATION_OID, load_settings
from kuva.index.bulk import bulk_add
from kuva.index.database import make_engine, migrate
from kuva.index.instances import NewInstance
from kuva.index.uow import UnitOfWork
from kuva.model.instance import (
    InstanceAttributes,
    PatientAttributes,
    SeriesAttributes,
    StudyAttributes,
)
from kuva.storage import blob_key

ROOT = "2.25.161420553127812870046235620843128813981.9"  # kuva's UID root + bench arc
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
INSTANCES_PER_SERIES = 100
SERIES_PER_STUDY = 4
STUDIES_PER_PATIENT = 3
STUDY_INTERVAL = timedelta(minutes=1)  # between consecutive synthetic studies
SYNTHETIC_BASE = datetime(2020, 1, 1, tzinfo=UTC)  # the first synthetic study


def _test_identity_code(number: int) -> str:
    """A Finnish test identity code (8th character 9) for synthetic patient ``number``."""
    day = 1 + number % 28
    month = 1 + (number // 28) % 12
    year = 40 + (number // 336) % 60
    individual = 900 + number % 100
    digits = f"{day:02d}{month:02d}{year:02d}{individual}"
    check = "0123456789ABCDEFHJKLMNPRSTUVWXY"[int(digits) % 31]
    return f"{digits[:6]}-{individual}{check}"


def synthetic_instance(
    n: int, base: datetime, *, study_interval: timedelta = STUDY_INTERVAL
) -> NewInstance:
    series_n, _ = divmod(n, INSTANCES_PER_SERIES)
    study_n, _ = divmod(series_n, SERIES_PER_STUDY)
    patient_n, _ = divmod(study_n, STUDIES_PER_PATIENT)
    when = base + study_interval * study_n
    digest = hashlib.sha256(f"bench-{n}".encode()).hexdigest()
    attributes = InstanceAttributes(
        sop_class_uid=CT_IMAGE_STORAGE,
        sop_instance_uid=f"{ROOT}.3.{n}",
        transfer_syntax_uid=EXPLICIT_VR_LE,
        patient=PatientAttributes(
            patient_id=_test_identity_code(patient_n),
            issuer="1.2.246.21",
            name=f"Testinen^Potilas{patient_n}",
            birth_date="19800101",
            sex="O",
        ),
        study=StudyAttributes(
            study_instance_uid=f"{ROOT}.1.{study_n}",
            study_date=when.strftime("%Y%m%d"),
            study_time=when.strftime("%H%M%S"),
            accession_number=f"B{study_n:09d}",
            study_id=str(study_n % 10000),
            description="TT keuhkot",
        ),
        series=SeriesAttributes(
            series_instance_uid=f"{ROOT}.2.{series_n}",
            modality="CT",
            series_number=series_n % SERIES_PER_STUDY + 1,
            description="Keuhkot",
        ),
        instance_number=n % INSTANCES_PER_SERIES + 1,
        rows=512,
        columns=512,
        dataset_json="{}",
    )
    return NewInstance(
        attributes=attributes,
        blob_key=blob_key(digest),
        size=525_000,
        sha256=digest,
        received_at=when,
        source_ae="BENCH",
        organization_oid=LOCAL_ORGANIZATION_OID,
    )


def prefill_index(
    config_path: str,
    n: int,
    batch: int = 2000,
    *,
    fast: bool = False,
    study_interval: timedelta = STUDY_INTERVAL,
) -> None:
    """Write ``n`` synthetic instances into the (empty) index of ``config_path``.

    ``fast``: through ``kuva.index.bulk.bulk_add`` (same rows, many per statement)
    rather than one ``InstanceRepository.add`` per instance.
    """
    settings = load_settings(config_path)
    engine = make_engine(settings.archive.resolved_database_url())
    migrate(engine)
    with UnitOfWork(engine, write=False) as uow:
        if uow.instances.count():
            raise RuntimeError("prefill_index only fills an empty index")
    base = SYNTHETIC_BASE
    if fast:
        with Progress() as progress:
            bar = progress.add_task("prefill index (bulk)", total=n)
            bulk_add(
                engine,
                (synthetic_instance(i, base, study_interval=study_interval) for i in range(n)),
                progress=lambda done: progress.update(bar, advance=done),
            )
        engine.dispose()
        return
    with Progress() as progress:
        bar = progress.add_task("prefill index", total=n)
        for start in range(0, n, batch):
            with UnitOfWork(engine) as uow:
                for i in range(start, min(start + batch, n)):
                    uow.instances.add(synthetic_instance(i, base, study_interval=study_interval))
                uow.commit()
            progress.update(bar, advance=min(batch, n - start))
    engine.dispose()
