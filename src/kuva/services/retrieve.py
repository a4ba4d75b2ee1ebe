"""Retrieve: which stored objects a request asks for, and what goes out for each.

Shared by C-GET, C-MOVE and (later) WADO. A request names a Query/Retrieve Level and
the unique keys at and above it (PS3.4 C.4.2.2.1 for C-MOVE, C.4.3.2.1 for C-GET);
the index resolves them to stored instances without opening a blob.

Every outgoing object passes through this service (``open``): the stored bytes
are immutable (DESIGN.md principle 1), so corrections such as a patient merge or a
name update are applied on the way out by one coercion step, ``coerce``. When no
coercion applies to an object (``StoredObject.verbatim``), the stored bytes go out
as they are and nothing needs to be decoded: a sender can stream the file, however
large.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import Engine

from kuva.index.instances import StoredInstance
from kuva.index.retrieval import RetrieveKeys
from kuva.index.uow import UnitOfWork
from kuva.model.query import QueryLevel
from kuva.model.uids import uid_problem
from kuva.storage import BlobStore

log = logging.getLogger(__name__)

# Number of Remaining / Completed Sub-operations are US (PS3.7 9.1.3.1, 9.1.4.1):
# a C-GET or C-MOVE can report on at most this many objects.
MAX_MATCHES = 65535

_LEVELS = (QueryLevel.PATIENT, QueryLevel.STUDY, QueryLevel.SERIES, QueryLevel.IMAGE)
# The unique key of each Query/Retrieve Level (PS3.4 C.6.1.1 and C.6.2.1).
UNIQUE_KEYS: dict[QueryLevel, str] = {
    QueryLevel.PATIENT: "PatientID",
    QueryLevel.STUDY: "StudyInstanceUID",
    QueryLevel.SERIES: "SeriesInstanceUID",
    QueryLevel.IMAGE: "SOPInstanceUID",
}

KeyValue = str | Sequence[str] | None


class RetrieveError(ValueError):
    """A malformed retrieve request; the message fits a DICOM Error Comment."""


class TooManyMatches(RetrieveError):
    """More objects match than one retrieve can report on (MAX_MATCHES)."""


@dataclass(frozen=True)
class StoredObject:
    """One stored object on its way out.

    ``verbatim``: no coercion applies, the stored bytes are what goes out.
    ``path``: the stored Part 10 file when the blob store keeps a local file
    (kuva's canonical File Meta Information followed by the data set as received).
    """

    instance: StoredInstance
    verbatim: bool
    path: Path | None
    _service: RetrieveService

    def stream(self) -> BinaryIO:
        """The stored Part 10 object, to be read in chunks (the caller closes it)."""
        return self._service.blobs.open(self.instance.blob_key)

    def dataset(self) -> Dataset:
        """The whole object decoded, pixel data included, after the coercion step.

        Holds the object in memory: for transcoding or coercion only.
        """
        with self.stream() as stream:
            ds = dcmread(stream)
        return self._service.coerce(ds)


def _values(keyword: str, value: KeyValue) -> tuple[str, ...]:
    """A key's value(s): one string, or a list (a UID list, PS3.4 C.2.2.2.2)."""
    if value is None:
        return ()
    items = value.split("\\") if isinstance(value, str) else list(value)
    cleaned = tuple(str(item).strip(" \x00") for item in items)
    if all(item == "" for item in cleaned):
        return ()
    if any(item == "" for item in cleaned):
        raise RetrieveError(f"{keyword}: empty value in a list")
    return cleaned


def _check_uids(keyword: str, uids: tuple[str, ...]) -> None:
    for uid in uids:
        if "*" in uid or "?" in uid:
            raise RetrieveError(f"{keyword}: wildcards are not allowed in a retrieve")
        problem = uid_problem(uid)
        if problem is not None:
            raise RetrieveError(f"{keyword} malformed: {problem}")


def parse_keys(level: QueryLevel, keys: Mapping[str, KeyValue]) -> RetrieveKeys:
    """Check a hierarchical retrieve's keys (PS3.4 C.4.2.2.1 / C.4.3.2.1).

    * The unique key of the level must be present: one Patient ID, or one or more
      UIDs. Universal and wildcard matching are not retrieve keys.
    * Unique keys above the level narrow the match when given; as lists too.
    * A unique key below the level would be a relational retrieve, which kuva
      does not support: refused rather than silently widened.
    * Anything else in the identifier is not a retrieve key and is ignored.
    """
    depth = _LEVELS.index(level)
    values = {lvl: _values(UNIQUE_KEYS[lvl], keys.get(UNIQUE_KEYS[lvl])) for lvl in _LEVELS}
    required = UNIQUE_KEYS[level]
    if not values[level]:
        raise RetrieveError(f"{required} missing: required at the {level.value} level")
    for lvl in _LEVELS[depth + 1 :]:
        if values[lvl]:
            raise RetrieveError(
                f"{UNIQUE_KEYS[lvl]} below {level.value} level: no relational retrieve"
            )
    patient_ids = values[QueryLevel.PATIENT]
    if len(patient_ids) > 1:
        raise RetrieveError("PatientID: one value only")
    if patient_ids and ("*" in patient_ids[0] or "?" in patient_ids[0]):
        raise RetrieveError("PatientID: wildcards are not allowed in a retrieve")
    for lvl in _LEVELS[1:]:
        _check_uids(UNIQUE_KEYS[lvl], values[lvl])
    issuer = _values("IssuerOfPatientID", keys.get("IssuerOfPatientID"))
    return RetrieveKeys(
        patient_id=patient_ids[0] if patient_ids else "",
        issuer=issuer[0] if issuer and patient_ids else None,
        study_uids=values[QueryLevel.STUDY],
        series_uids=values[QueryLevel.SERIES],
        sop_instance_uids=values[QueryLevel.IMAGE],
    )


class RetrieveService:
    def __init__(self, engine: Engine, blobs: BlobStore) -> None:
        self._engine = engine
        self.blobs = blobs

    def resolve(self, level: QueryLevel, keys: Mapping[str, KeyValue]) -> list[StoredInstance]:
        """The stored instances a retrieve asks for, in study/series/instance order.

        ``keys`` maps attribute keywords (PatientID, IssuerOfPatientID,
        StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID) to a value or a list
        of values. Raises RetrieveError for a malformed request and TooManyMatches
        beyond MAX_MATCHES objects. No match is an empty list, not an error.
        """
        parsed = parse_keys(level, keys)
        with UnitOfWork(self._engine, write=False) as uow:
            found = uow.retrieval.instances(parsed, limit=MAX_MATCHES)
        if len(found) > MAX_MATCHES:
            raise TooManyMatches(f"more than {MAX_MATCHES} objects match; retrieve a lower level")
        return found

    def open(self, instance: StoredInstance) -> StoredObject:
        """The stored object of ``instance``, as it is to go out."""
        return StoredObject(
            instance=instance,
            verbatim=not self.coerces(instance),
            path=self.blobs.local_path(instance.blob_key),
            _service=self,
        )

    def coerces(self, instance: StoredInstance) -> bool:
        """Whether ``coerce`` would change this object.

        Always False today: nothing is corrected yet, every object goes out as
        stored. Patient merges and name updates (later issues) will answer True
        for the instances they touch, from the index, without opening the blob.
        """
        return False

    def coerce(self, dataset: Dataset) -> Dataset:
        """The one coercion step every decoded outgoing object goes through.

        Identity today. Patient merges (the surviving Patient ID and issuer) and
        name corrections recorded in the index are to be applied here, to the
        data set only: the stored bytes never change.
        """
        return dataset
