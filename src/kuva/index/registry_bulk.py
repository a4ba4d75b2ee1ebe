"""Bulk registration of XDS submissions into an empty registry, for benchmarks.

``bulk_register`` writes the rows that ``RegistryService.register`` writes for the
same submissions, in the same order, through the same ``RegistryRepository.add``
(so the same row builders, the same keys, the same query columns) - but the
objects of ``chunk_size`` submissions go into one ``add``: one statement (an
``executemany``) per table and chunk, one transaction per chunk, instead of a
handful of statements and a transaction per submission. Keys come out as when the
submissions are registered one after the other: ``add`` inserts objects, and
then each child table's rows, in the order given. Statements are SQLAlchemy Core,
so it runs unchanged on SQLite and PostgreSQL.

It is for growing a benchmark registry quickly, never for registration: it fills
an empty registry only, applies none of the registry's rules (kuva.services.registry),
and takes only submissions whose Associations stay inside the submission (new
objects and their HasMembers), because those are the ones whose registration
changes nothing already registered (no replacement deprecates, no Folder gets a
new member); anything else is a ValueError. All objects are Approved.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from datetime import datetime
from itertools import islice

from sqlalchemy import Engine, func, select

from kuva.index.database import WRITE_OPTION
from kuva.index.registry import RegistryRepository
from kuva.index.schema import xds_object
from kuva.model.xds import RegistryObject, Submission, format_dtm


def _chunks(items: Iterable[Submission], size: int) -> Iterator[list[Submission]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _objects(
    submission: Submission, render: Callable[[RegistryObject], str]
) -> list[RegistryObject]:
    """The submission's objects in storing order, each with its ebRIM XML (rendered
    when it has none, as the registry service does)."""
    own = {obj.id for obj in submission.objects}
    for association in submission.associations:
        if association.source_object not in own or association.target_object not in own:
            raise ValueError(
                f"association {association.id} leaves its submission; bulk_register only "
                "stores submissions that change nothing registered"
            )
    return [obj if obj.ebxml else replace(obj, ebxml=render(obj)) for obj in submission.objects]


def bulk_register(
    engine: Engine,
    submissions: Iterable[Submission],
    *,
    organization_oid: str,
    created_at: datetime,
    render: Callable[[RegistryObject], str],
    chunk_size: int = 2_000,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Store ``submissions`` in the empty registry of ``engine``, as registered by
    ``organization_oid`` at ``created_at`` (UTC); returns the number of objects.

    One transaction per ``chunk_size`` submissions; ``progress`` is called with the
    number of submissions of each committed chunk.
    """
    stamp = format_dtm(created_at)
    stored = 0
    with engine.connect() as conn:
        conn = conn.execution_options(**{WRITE_OPTION: True})
        with conn.begin():
            if conn.execute(select(func.count()).select_from(xds_object)).scalar_one():
                raise RuntimeError("bulk_register only fills an empty registry")
        repository = RegistryRepository(conn)
        for chunk in _chunks(submissions, chunk_size):
            objects = [obj for submission in chunk for obj in _objects(submission, render)]
            with conn.begin():
                repository.add(
                    objects,
                    organization_oid=organization_oid,
                    created_at=created_at,
                    last_update_time=stamp,
                )
            stored += len(objects)
            if progress is not None:
                progress(len(chunk))
    return stored
