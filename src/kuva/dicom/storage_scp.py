"""Storage SCP: C-STORE (PS3.4 Annex B) into the ingest service.

The hot path. When a C-STORE-RQ command is complete the engine asks for a
``DataSink`` (``StorageSCP.sink``, on the engine's event loop) and streams the data
set's P-DATA fragments into it as they arrive: a ``StoreSink`` writes kuva's
canonical File Meta Information (taken straight from the command's SOP Class and
Instance UIDs and the context's transfer syntax; kuva.codec.part10) and then every
fragment into a blob writer, which hashes on the way. The object is never held
whole. The first bytes of the data set are also kept (at most ``HEADER_BYTES``), so
that the header, up to the pixel data, is parsed from memory rather than read back
from disk; only a header longer than that is read from the blob file.

When the data set is complete its blob starts flushing to disk, in the background;
``handle_store`` (an engine handler thread) parses and checks the header meanwhile
and hands it to the ingest service, which answers only once the blob is durable
and its index row committed.

A node's ``default_character_set`` and ``default_issuer`` ([[nodes]]) fill in what
its data sets leave out, for the index only (``apply_sender_defaults``); the stored
bytes are the received ones.

What an association stored is audited when it ends (``association_closed``): one
110104 DICOM Instances Transferred message per study (services.audit), not one
per instance.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from pydicom import dcmread
from pydicom.dataset import Dataset

from kuva import metrics
from kuva.codec.part10 import (
    apply_sender_defaults,
    canonical_file_meta,
    extract_attributes,
    read_header,
)
from kuva.config import Settings
from kuva.dicom import status as st
from kuva.dicom.net import Association, Request
from kuva.model.instance import InstanceAttributes
from kuva.services.audit import AuditTrail, ReceivedStudy
from kuva.services.ingest import IncomingInstance, IngestService, StoreStatus
from kuva.storage import BlobStore, BlobWriter

log = logging.getLogger(__name__)

# At most this many bytes of a data set's beginning are kept in memory for its
# header (a CT or MR header is a few KB); a header (everything before the pixel
# data) longer than this is read back from the blob file instead. Kept small: every
# C-STORE copies this much of its data set.
HEADER_BYTES = 64 * 1024

_STATUS_OF = {
    StoreStatus.INVALID: st.CANNOT_UNDERSTAND,
    StoreStatus.CONFLICT: st.DUPLICATE_WITH_OTHER_CONTENT,
    StoreStatus.FAILED: st.OUT_OF_RESOURCES,
    StoreStatus.REJECTED: st.REJECTED_INSTANCE,
    StoreStatus.IGNORED: st.ELEMENTS_DISCARDED,
    StoreStatus.FOREIGN: st.NOT_REGISTER_HOLDER,
    StoreStatus.DESTROYED: st.STUDY_DESTROYED,
    StoreStatus.NOT_AUTHORIZED: st.NOT_AUTHORIZED,
}


class StoreSink:
    """Where one C-STORE data set streams to (the engine's ``DataSink``)."""

    def __init__(
        self, blob: BlobWriter, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str
    ) -> None:
        self.started = time.perf_counter()
        self.blob = blob
        self.transfer_syntax_uid = transfer_syntax
        self.meta = canonical_file_meta(sop_class_uid, sop_instance_uid, transfer_syntax)
        self.blob.write(self.meta)
        self.head = bytearray()
        self.size = 0  # data set bytes received
        self.complete = False

    def write(self, data: memoryview) -> None:
        self.blob.write(data)
        room = HEADER_BYTES - len(self.head)
        if room > 0:
            self.head += data[:room]
        self.size += len(data)

    def close(self) -> None:
        """The data set is complete: start flushing it to disk at once (in the
        background), so the flush runs while the handler parses the header."""
        self.complete = True
        self.blob.start_sync()

    def discard(self) -> None:
        self.blob.discard()

    def header(self) -> Dataset:
        """The data set up to its pixel data, from the kept bytes when they hold it."""
        if self.size > len(self.head):
            stream = io.BytesIO(self.meta + self.head)
            try:
                header = dcmread(stream, stop_before_pixels=True)
            except Exception:
                header = None  # cut inside the header: read it from the file
            if header is not None and stream.tell() < len(self.meta) + len(self.head):
                return header  # stopped at the pixel data, inside the kept bytes
            return read_header(self.blob.name)
        return dcmread(io.BytesIO(self.meta + self.head), stop_before_pixels=True)


@dataclass
class _Study:
    """What an association stored of one study so far (for its audit message)."""

    patient: tuple[str, str]
    sop_classes: Counter[str] = field(default_factory=Counter)
    failures: int = 0


class StorageSCP:
    def __init__(
        self,
        settings: Settings,
        ingest: IngestService,
        blobs: BlobStore,
        audit: AuditTrail | None = None,
    ) -> None:
        self._settings = settings
        self._ingest = ingest
        self._blobs = blobs
        self._audit = audit
        self._lock = threading.Lock()

    def sink(self, assoc: Association, req: Request) -> StoreSink:
        """The DataSink of a C-STORE-RQ (engine loop thread: only opens the blob file)."""
        command = req.command
        return StoreSink(
            self._blobs.open_writer(),
            command.affected_sop_class_uid,
            command.affected_sop_instance_uid,
            req.context.transfer_syntax,
        )

    def handle_store(self, assoc: Association, req: Request) -> None:
        """Answer one C-STORE-RQ whose data set is in its sink."""
        sink = req.sink
        if not isinstance(sink, StoreSink):
            assoc.respond(req, st.CANNOT_UNDERSTAND, error_comment="no data set received")
            return
        code, comment = self._store(assoc, req, sink)
        if comment:
            assoc.respond(req, code, error_comment=comment)
        else:
            assoc.respond(req, code)
        metrics.cstore_seconds.observe(time.perf_counter() - sink.started)

    def _store(self, assoc: Association, req: Request, sink: StoreSink) -> tuple[int, str]:
        calling_ae = assoc.calling_ae
        organization = self._settings.organization_of(calling_ae)
        if req.sink_error is not None:
            sink.discard()
            log.error(
                "C-STORE from %s: the data set could not be written: %s", calling_ae, req.sink_error
            )
            return st.OUT_OF_RESOURCES, "the data set could not be written"
        if organization is None:  # the association check lets no such AE in
            sink.discard()
            return st.CANNOT_UNDERSTAND, "calling AE title not recognized"
        if not sink.complete:
            sink.discard()
            return st.CANNOT_UNDERSTAND, "no data set received"
        try:
            header = sink.header()
        except Exception as exc:
            sink.discard()
            log.warning("C-STORE from %s: data set cannot be parsed: %s", calling_ae, exc)
            return st.CANNOT_UNDERSTAND, "data set cannot be parsed"

        node = self._settings.node(calling_ae)
        if node is not None:  # only the index sees these; the blob is as received
            apply_sender_defaults(
                header, issuer=node.default_issuer, character_set=node.default_character_set
            )
        attrs = extract_attributes(header, sink.transfer_syntax_uid)
        command = req.command
        if attrs.sop_class_uid and attrs.sop_class_uid != command.affected_sop_class_uid:
            sink.discard()
            return (
                st.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
                "SOPClassUID differs from Affected SOP Class UID",
            )
        if attrs.sop_instance_uid and attrs.sop_instance_uid != command.affected_sop_instance_uid:
            sink.discard()
            return st.CANNOT_UNDERSTAND, "SOPInstanceUID differs from Affected SOP Instance UID"

        outcome = self._ingest.store(
            IncomingInstance(
                attributes=attrs,
                blob=sink.blob,
                source_ae=calling_ae,
                organization_oid=organization,
            )
        )
        if self._audit is not None:
            self._note(assoc, attrs, outcome.ok)
        if outcome.status is StoreStatus.NOT_DESTROYED:
            return st.NOT_DESTROYED, outcome.message
        if outcome.ok:
            return st.SUCCESS, ""
        return _STATUS_OF[outcome.status], outcome.message

    def _note(self, assoc: Association, attrs: InstanceAttributes, stored: bool) -> None:
        study_uid = attrs.study.study_instance_uid
        with self._lock:
            studies: dict[str, _Study] = assoc.info.setdefault("received", {})  # type: ignore[assignment]
            study = studies.get(study_uid)
            if study is None:
                patient = (attrs.patient.patient_id, attrs.patient.issuer)
                study = studies[study_uid] = _Study(patient)
        if stored:
            study.sop_classes[attrs.sop_class_uid] += 1
        else:
            study.failures += 1

    def association_closed(self, assoc: Association) -> None:
        """The association ended: audit what it stored, if anything."""
        with self._lock:
            studies: dict[str, _Study] | None = assoc.info.pop("received", None)  # type: ignore[assignment]
        if not studies or self._audit is None:
            return
        try:
            self._audit.instances_received(
                assoc.calling_ae,
                assoc.peer_address[0],
                [
                    ReceivedStudy(
                        study_instance_uid=uid,
                        patient=study.patient if study.patient[0] else None,
                        sop_classes=dict(study.sop_classes),
                        failures=study.failures,
                    )
                    for uid, study in studies.items()
                ],
            )
        except Exception:
            log.exception("the transfer from %s could not be audited", assoc.calling_ae)
