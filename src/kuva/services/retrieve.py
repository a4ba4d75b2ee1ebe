"""Retrieve: which stored objects a request asks for, and what goes out for each.

Shared by C-GET, C-MOVE and (later) WADO. A request names a Query/Retrieve Level and
the unique keys at and above it (PS3.4 C.4.2.2.1 for C-MOVE, C.4.3.2.1 for C-GET);
the index resolves them to stored instances without opening a blob.

Every outgoing object passes through this service (``open``): the stored bytes
are immutable (docs/design.md principle 1), so patient corrections (a merge, a name
update, an identifier change) are applied on the way out by one step,
``apply_correction``, which records the values as stored in the Original Attributes
Sequence. The index says which objects a correction applies to without opening a
blob; when none does (``StoredObject.verbatim``), the stored bytes go out as they
are and a sender can stream the file, however large.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import Engine

from kuva.index.instances import StoredInstance
from kuva.index.retrieval import RetrieveKeys
from kuva.index.uow import UnitOfWork
from kuva.model.access import AccessScope
from kuva.model.clock import utcnow
from kuva.model.outgoing import CORRECTED_KEYWORDS
from kuva.model.query import QueryLevel
from kuva.model.uids import uid_problem
from kuva.services.access import AccessPolicy, Read, recipient
from kuva.services.audit import AuditTrail, SentStudy
from kuva.services.disclosure import DisclosureLog, Interface
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
    """One stored object on its way out (kuva.codec.outgoing.OutgoingObject).

    ``verbatim``: no correction applies, the stored bytes are what goes out.
    ``path``: the stored Part 10 file when the blob store keeps a local file
    (kuva's canonical File Meta Information followed by the data set as received).
    ``correction``: the patient attributes the object goes out with (keyword to
    value) when a correction applies to its study, else None.
    """

    instance: StoredInstance
    path: Path | None
    correction: Mapping[str, str] | None
    _service: RetrieveService

    @property
    def verbatim(self) -> bool:
        return self.correction is None

    def stream(self) -> BinaryIO:
        """The stored Part 10 object, to be read in chunks (the caller closes it)."""
        return self._service.blobs.open(self.instance.blob_key)

    def coerce(self, dataset: Dataset) -> bool:
        """Apply the correction to ``dataset`` (the whole object or its header up to
        the pixel data); whether anything changed. See ``apply_correction``."""
        if self.correction is None:
            return False
        return apply_correction(dataset, self.correction, self.instance.organization_oid)

    def dataset(self) -> Dataset:
        """The whole object decoded, pixel data included, correction applied.

        Holds the object in memory: for transcoding only.
        """
        with self.stream() as stream:
            ds = dcmread(stream)
        self.coerce(ds)
        return ds


# Python codecs of the single-byte and UTF-8 character sets kuva keeps when the
# corrected values fit them (PS3.3 C.12.1.1.2); any other goes to ISO_IR 192.
_CODECS = {"": "ascii", "ISO_IR 6": "ascii", "ISO_IR 100": "latin_1", "ISO_IR 192": "utf-8"}
MODIFYING_SYSTEM = "kuva"


def _fits(charset: str, values: Iterable[str]) -> bool:
    codec = _CODECS.get(charset)
    if codec is None:
        return False
    try:
        for value in values:
            value.encode(codec)
    except UnicodeEncodeError:
        return False
    return True


def apply_correction(dataset: Dataset, values: Mapping[str, str], source: str) -> bool:
    """Put the current patient ``values`` into ``dataset``, in place, and record the
    values as stored in a new Original Attributes Sequence item (PS3.3 C.12.1.1.9.2:
    Reason CORRECT, Modifying System kuva, Source of Previous Values the register
    holder's OID). Returns False, changing nothing, when the object already carries
    the current values.

    When a new value does not fit the object's Specific Character Set, the object
    goes out in ISO_IR 192 (UTF-8): every text value is decoded first, so the rest
    of the header is re-encoded, not mislabelled.
    """
    changed = [kw for kw in CORRECTED_KEYWORDS if str(dataset.get(kw, "") or "") != values[kw]]
    if not changed:
        return False
    original = Dataset()
    for keyword in changed:
        setattr(original, keyword, dataset[keyword].value if keyword in dataset else "")
    charset = dataset.get("SpecificCharacterSet", "")
    if not isinstance(charset, str):  # a multi-valued set (code extensions)
        charset = "\\".join(charset)
    if not _fits(charset, (values[kw] for kw in changed)):
        dataset.decode()
        original.SpecificCharacterSet = dataset.get("SpecificCharacterSet", "")
        dataset.SpecificCharacterSet = "ISO_IR 192"
    for keyword in changed:
        setattr(dataset, keyword, values[keyword])
    item = Dataset()
    item.ModifiedAttributesSequence = [original]
    item.AttributeModificationDateTime = utcnow().strftime("%Y%m%d%H%M%S.%f+0000")
    item.ModifyingSystem = MODIFYING_SYSTEM
    item.SourceOfPreviousValues = source
    item.ReasonForTheAttributeModification = "CORRECT"
    history = list(dataset.get("OriginalAttributesSequence", []))
    dataset.OriginalAttributesSequence = [*history, item]
    return True


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
    def __init__(
        self,
        engine: Engine,
        blobs: BlobStore,
        *,
        corrections: bool = True,
        disclosures: DisclosureLog | None = None,
    ) -> None:
        self._engine = engine
        self.blobs = blobs
        self._disclosures = disclosures
        # Refused accesses are audited here (set by the composition root).
        self.audit: AuditTrail | None = None
        # False: every object goes out exactly as received ([archive] apply_corrections).
        self._corrections = corrections

    def resolve(
        self,
        level: QueryLevel,
        keys: Mapping[str, KeyValue],
        *,
        scope: AccessScope | None = None,
        interface: Interface | None = None,
    ) -> list[StoredInstance]:
        """The stored instances a retrieve asks for, in study/series/instance order.

        ``keys`` maps attribute keywords (PatientID, IssuerOfPatientID,
        StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID) to a value or a list
        of values. Raises RetrieveError for a malformed request and TooManyMatches
        beyond MAX_MATCHES objects. No match is an empty list, not an error.

        ``scope``: what the requester may read (services.access; None = all): other
        instances do not match. With ``interface``, the studies of another
        organisation among those found are recorded as disclosures before this
        returns (raises when that fails: hand nothing out then).
        """
        parsed = parse_keys(level, keys)
        with UnitOfWork(self._engine, write=False) as uow:
            found = uow.retrieval.instances(parsed, limit=MAX_MATCHES, scope=scope)
            refused = (
                not found
                and scope is not None
                and not scope.unrestricted
                and interface is not None
                and bool(uow.retrieval.instances(parsed, limit=0))
            )
        if len(found) > MAX_MATCHES:
            raise TooManyMatches(f"more than {MAX_MATCHES} objects match; retrieve a lower level")
        if refused and scope is not None and interface is not None:
            self._refused(scope, parsed, interface)
        if scope is not None and interface is not None:
            self.disclose(scope, found, interface)
        return found

    def _refused(self, scope: AccessScope, keys: RetrieveKeys, interface: Interface) -> None:
        """A retrieve of objects that exist but that the requester may not read: it
        is answered as no match, and audited as a refused access (services.access)."""
        what = ", ".join(
            uids[0] + (f" (+{len(uids) - 1})" if len(uids) > 1 else "")
            for uids in (keys.study_uids, keys.series_uids, keys.sop_instance_uids)
            if uids
        )
        self.access_refused(scope, what, interface)

    def access_refused(self, scope: AccessScope, what: str, interface: Interface) -> None:
        """Audit a read of objects ``what`` names (by UIDs) that exist but that the
        access rules do not let ``scope`` read (110113 / 110132)."""
        log.warning("%s: a retrieve refused by the access rules", interface.value)
        if self.audit is not None:
            try:
                self.audit.access_refused(
                    scope.organization or "",
                    what or "a patient's objects",
                    f"{interface.value}: the access rules do not allow these objects to be read",
                )
            except Exception:
                log.exception("%s: the refused access could not be audited", interface.value)

    def disclose(
        self, scope: AccessScope, instances: Sequence[StoredInstance], interface: Interface
    ) -> None:
        """Record the studies of another organisation among ``instances`` as
        disclosures over ``interface`` (one record per study)."""
        handouts = AccessPolicy.disclosures(
            scope,
            (
                Read(
                    register_holder=found.organization_oid,
                    study_instance_uid=found.study_instance_uid,
                )
                for found in instances
            ),
        )
        if handouts and self._disclosures is not None:
            self._disclosures.record(recipient(scope), handouts, interface)

    @staticmethod
    def own_studies(
        scope: AccessScope | None, instances: Iterable[StoredInstance]
    ) -> list[SentStudy]:
        """The studies among ``instances`` that are the requester's own (its
        organisation is their register holder; ``scope`` None: every one), with
        the instances of each SOP class: what a retrieve audits as the register
        holder's own read (services.audit ``instances_sent``), the rest being
        disclosures (``disclose``)."""
        studies: dict[str, dict[str, int]] = {}
        for found in instances:
            if scope is not None and not scope.is_own(found.organization_oid):
                continue
            classes = studies.setdefault(found.study_instance_uid, {})
            classes[found.sop_class_uid] = classes.get(found.sop_class_uid, 0) + 1
        return [SentStudy(uid, classes) for uid, classes in studies.items()]

    def open(self, instance: StoredInstance, *, as_received: bool = False) -> StoredObject:
        """The stored object of ``instance``, as it is to go out.

        Patient corrections (HL7 merge, update, identifier change) recorded in the
        index are applied on the way out; the stored bytes never change (docs/design.md
        principle 1). ``as_received`` (an operator's choice, per node or for the
        whole archive) sends the object exactly as it was received.
        """
        patient = instance.corrected_patient
        correction = None
        if patient is not None and not as_received and self._corrections:
            correction = {
                "PatientID": patient.patient_id,
                "IssuerOfPatientID": patient.issuer,
                "PatientName": patient.name,
                "PatientBirthDate": patient.birth_date,
                "PatientSex": patient.sex,
            }
        return StoredObject(
            instance=instance,
            path=self.blobs.local_path(instance.blob_key),
            correction=correction,
            _service=self,
        )
