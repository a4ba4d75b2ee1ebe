"""Index queries of the integrity check (services.integrity): which blobs the index
references, walked in key order one batch at a time, and where the continuous
check stands.

Every table that references a blob is here: ``instance`` and ``xds_document``. A
document whose blob is an instance's (a KOS manifest) or another document's is
left out of the document walk, so each blob is read once.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Select, exists, func, or_, select, union, update

from kuva.index.schema import instance, integrity_scrub, series, study, xds_document
from kuva.model.rejection import RETENTION_EXPIRED

INSTANCE, DOCUMENT = "instance", "document"


@dataclass(frozen=True)
class IndexedBlob:
    """A blob the index references, with what names it in a report."""

    table: str  # INSTANCE or DOCUMENT
    pk: int
    blob_key: str
    sha256: str
    size: int
    sop_instance_uid: str  # "" for a document
    document_unique_id: str  # "" for an instance
    study_instance_uid: str  # "" when the document names no study


@dataclass(frozen=True)
class ScrubPosition:
    phase: str  # INSTANCE or DOCUMENT: the table being walked
    after_pk: int
    pass_started_at: datetime | None
    last_pass_at: datetime | None


# Instances rejected 113039 (Data Retention Policy Expired) are on their way to
# destruction (services.retention), whose blobs go before their rows: not read.
# A key range this many times a sample's size or narrower is read whole (sample).
_SMALL_RANGE = 16

_INSTANCE_BLOBS = (
    select(
        instance.c.pk,
        instance.c.blob_key,
        instance.c.sha256,
        instance.c.size,
        instance.c.sop_instance_uid,
        study.c.study_instance_uid,
    )
    .select_from(
        instance.join(series, instance.c.series_pk == series.c.pk).join(
            study, series.c.study_pk == study.c.pk
        )
    )
    .where(or_(instance.c.rejection_code.is_(None), instance.c.rejection_code != RETENTION_EXPIRED))
)

_EARLIER = xds_document.alias("earlier")
_DOCUMENT_BLOBS = (
    select(
        xds_document.c.pk,
        xds_document.c.blob_key,
        xds_document.c.sha256,
        xds_document.c.size,
        xds_document.c.unique_id,
        xds_document.c.study_instance_uid,
    )
    .where(~exists().where(instance.c.blob_key == xds_document.c.blob_key))
    .where(
        ~exists().where(
            _EARLIER.c.blob_key == xds_document.c.blob_key, _EARLIER.c.pk < xds_document.c.pk
        )
    )
)


def _instance_blob(row: Any) -> IndexedBlob:
    return IndexedBlob(
        INSTANCE, row.pk, row.blob_key, row.sha256, row.size, row.sop_instance_uid, "",
        row.study_instance_uid,
    )  # fmt: skip


def _document_blob(row: Any) -> IndexedBlob:
    return IndexedBlob(
        DOCUMENT, row.pk, row.blob_key, row.sha256, row.size, "", row.unique_id,
        row.study_instance_uid or "",
    )  # fmt: skip


class IntegrityRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def blobs(
        self, table: str, after_pk: int, limit: int, study_uid: str | None = None
    ) -> list[IndexedBlob]:
        """The next ``limit`` blobs of ``table`` after ``after_pk``, in pk order (keyset
        pagination: each batch is an index range, whatever the table's size)."""
        if table == INSTANCE:
            statement = _INSTANCE_BLOBS.where(instance.c.pk > after_pk)
            if study_uid is not None:
                statement = statement.where(study.c.study_instance_uid == study_uid)
            statement = statement.order_by(instance.c.pk).limit(limit)
            return [_instance_blob(row) for row in self.conn.execute(statement)]
        statement = _DOCUMENT_BLOBS.where(xds_document.c.pk > after_pk)
        if study_uid is not None:
            statement = statement.where(xds_document.c.study_instance_uid == study_uid)
        statement = statement.order_by(xds_document.c.pk).limit(limit)
        return [_document_blob(row) for row in self.conn.execute(statement)]

    def sample(self, count: int, rng: random.Random) -> list[IndexedBlob]:
        """``count`` instances picked at random (all of them when there are fewer), in
        pk order, without a scan: each is the first row at or after a random key
        between the smallest and the largest (rows after a gap in the keys are a
        little more likely). A key range at most ``_SMALL_RANGE`` times ``count``
        wide is read whole and sampled, so that few keys never leave a sample short
        of ``count`` by drawing the same key again."""
        bounds = select(func.min(instance.c.pk), func.max(instance.c.pk))
        low, high = self.conn.execute(bounds).one()
        if low is None:
            return []
        if high - low < count * _SMALL_RANGE:
            rows = self.blobs(INSTANCE, low - 1, count * _SMALL_RANGE)
            picked = rng.sample(rows, min(count, len(rows)))
            return sorted(picked, key=lambda blob: blob.pk)
        chosen: dict[int, IndexedBlob] = {}
        statement = _INSTANCE_BLOBS.order_by(instance.c.pk).limit(1)
        for _ in range(8 * count):  # bounded: a sparse key range repeats picks
            if len(chosen) == count:
                break
            row = self.conn.execute(
                statement.where(instance.c.pk >= rng.randint(low, high))
            ).first()
            if row is not None:
                chosen[row.pk] = _instance_blob(row)
        return [chosen[pk] for pk in sorted(chosen)]

    def totals(self, study_uid: str | None = None) -> tuple[int, int]:
        """How many blobs the walk of ``blobs`` reads (both tables), and their bytes."""
        instances: Select[Any] = _INSTANCE_BLOBS.with_only_columns(
            func.count(), func.coalesce(func.sum(instance.c.size), 0)
        )
        documents: Select[Any] = _DOCUMENT_BLOBS.with_only_columns(
            func.count(), func.coalesce(func.sum(xds_document.c.size), 0)
        )
        if study_uid is not None:
            instances = instances.where(study.c.study_instance_uid == study_uid)
            documents = documents.where(xds_document.c.study_instance_uid == study_uid)
        count, size = 0, 0
        for statement in (instances, documents):
            rows, total = self.conn.execute(statement).one()
            count, size = count + int(rows), size + int(total)
        return count, size

    def referenced(self, keys: Iterable[str]) -> set[str]:
        """Those of ``keys`` (a few hundred) that a row of the index references."""
        chunk = list(keys)
        statement = union(
            select(instance.c.blob_key).where(instance.c.blob_key.in_(chunk)),
            select(xds_document.c.blob_key).where(xds_document.c.blob_key.in_(chunk)),
        )
        return {row[0] for row in self.conn.execute(statement)}

    def scrub_position(self, *, lock: bool = True) -> ScrubPosition:
        """The continuous check's position, locked until the transaction ends (unless
        ``lock`` is false: a look, as the console takes, in a read transaction)."""
        statement = select(
            integrity_scrub.c.phase,
            integrity_scrub.c.after_pk,
            integrity_scrub.c.pass_started_at,
            integrity_scrub.c.last_pass_at,
        ).where(integrity_scrub.c.pk == 1)
        row = self.conn.execute(statement.with_for_update() if lock else statement).one()
        return ScrubPosition(row.phase, row.after_pk, row.pass_started_at, row.last_pass_at)

    def move_scrub(self, position: ScrubPosition) -> None:
        self.conn.execute(
            update(integrity_scrub)
            .where(integrity_scrub.c.pk == 1)
            .values(
                phase=position.phase,
                after_pk=position.after_pk,
                pass_started_at=position.pass_started_at,
                last_pass_at=position.last_pass_at,
            )
        )
