"""Storage SCP: C-STORE (PS3.4 Annex B) into the ingest service.

Received data sets are streamed straight into the blob store while their P-DATA
arrives: pynetdicom's chunked receive mode (``STORE_RECV_CHUNKED_DATASET``) writes
each fragment to a temporary file, and kuva hands it a ``Part10Rewriter`` around a
blob writer instead (``install_streaming_receive``), which hashes on the way. The
file meta pynetdicom would build and write with pydicom is replaced by kuva's
canonical one, taken straight from the three UIDs (this path runs per object and the
pydicom route cost about a millisecond). The handler then only reads the header (up
to the pixel data) for validation and the index.

These hooks replace three names in ``pynetdicom.dimse_messages`` (pinned to
pynetdicom 3.x in pyproject.toml); each falls back to pynetdicom's own behaviour
for anything that is not a kuva storage association, and the C-STORE handler falls
back to copying the received file when the hook did not apply.

A node's ``default_character_set`` and ``default_issuer`` ([[nodes]]) fill in what
its data sets leave out, for the index only (``apply_sender_defaults``); the stored
bytes are the received ones.

What an association stored is audited when it ends (``association_closed``): one
110104 DICOM Instances Transferred message per study (services.audit), not one
per instance.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import _config, dimse_messages
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event

from kuva.config import Settings
from kuva.dicom import status as st
from kuva.dicom.codec.part10 import (
    Part10Rewriter,
    apply_sender_defaults,
    canonical_file_meta,
    extract_attributes,
    read_header,
)
from kuva.model.instance import InstanceAttributes
from kuva.services.audit import AuditTrail, ReceivedStudy
from kuva.services.ingest import IncomingInstance, IngestService, StoreStatus
from kuva.storage import BlobStore

log = logging.getLogger(__name__)

# Attribute on pynetdicom's ApplicationEntity through which a receiving association
# finds the blob store to stream into.
_AE_BLOB_STORE = "_kuva_blob_store"

_ORIGINAL_TEMPFILE = getattr(dimse_messages, "NamedTemporaryFile")  # noqa: B009
_ORIGINAL_CREATE_FILE_META = getattr(dimse_messages, "create_file_meta")  # noqa: B009
_ORIGINAL_WRITE_FILE_META = getattr(dimse_messages, "write_file_meta_info")  # noqa: B009
_install_lock = threading.Lock()


@dataclass(frozen=True)
class _FileMetaRequest:
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str


def _create_file_meta(
    *, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, **kwargs: Any
) -> Any:
    """Stand-in for pynetdicom's ``create_file_meta`` in the receive path: defer the work."""
    if kwargs:
        return _ORIGINAL_CREATE_FILE_META(
            sop_class_uid=sop_class_uid,
            sop_instance_uid=sop_instance_uid,
            transfer_syntax=transfer_syntax,
            **kwargs,
        )
    return _FileMetaRequest(str(sop_class_uid), str(sop_instance_uid), str(transfer_syntax))


def _write_file_meta(fp: Any, file_meta: Any, *args: Any, **kwargs: Any) -> None:
    """Stand-in for ``write_file_meta_info``: kuva's writer takes the three UIDs directly."""
    if isinstance(file_meta, _FileMetaRequest):
        if isinstance(fp, Part10Rewriter):
            fp.begin(file_meta.sop_class_uid, file_meta.sop_instance_uid, file_meta.transfer_syntax)
            return
        file_meta = _ORIGINAL_CREATE_FILE_META(
            sop_class_uid=file_meta.sop_class_uid,
            sop_instance_uid=file_meta.sop_instance_uid,
            transfer_syntax=file_meta.transfer_syntax,
        )
    _ORIGINAL_WRITE_FILE_META(fp, file_meta, *args, **kwargs)


def _receive_file(*args: Any, **kwargs: Any) -> Any:
    """Stand-in for ``NamedTemporaryFile`` in pynetdicom's C-STORE receive path.

    It is called in the association's DUL thread; when that association belongs
    to a kuva storage SCP, the data set goes into a blob writer. Anything else
    (pynetdicom used as a client in the same process) gets the usual file.
    """
    assoc = getattr(threading.current_thread(), "assoc", None)
    store = getattr(getattr(assoc, "ae", None), _AE_BLOB_STORE, None)
    if isinstance(store, BlobStore):
        return Part10Rewriter(store.open_writer())
    return _ORIGINAL_TEMPFILE(*args, **kwargs)


def install_streaming_receive(ae: Any, blobs: BlobStore) -> None:
    """Make C-STORE data sets received by ``ae`` stream into ``blobs``."""
    with _install_lock:
        _config.STORE_RECV_CHUNKED_DATASET = True
        setattr(dimse_messages, "NamedTemporaryFile", _receive_file)  # noqa: B010
        setattr(dimse_messages, "create_file_meta", _create_file_meta)  # noqa: B010
        setattr(dimse_messages, "write_file_meta_info", _write_file_meta)  # noqa: B010
    setattr(ae, _AE_BLOB_STORE, blobs)


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
        # Per association (its id()): Study Instance UID -> what was stored.
        self._received: dict[int, dict[str, _Study]] = {}
        self._received_lock = threading.Lock()

    def handle_store(self, event: Event) -> Dataset:
        """EVT_C_STORE handler. Returns the status data set of the C-STORE-RSP."""
        request = cast(C_STORE, event.request)
        calling_ae = event.assoc.requestor.ae_title
        organization = self._settings.organization_of(calling_ae)
        writer = getattr(request, "_dataset_file", None)
        if not isinstance(writer, Part10Rewriter):
            writer = self._copy_received(event)
        if organization is None:  # the association check lets no such AE in
            writer.blob.discard()
            return st.status(st.CANNOT_UNDERSTAND, "calling AE title not recognized")
        if not writer.complete:
            writer.blob.discard()
            return st.status(st.CANNOT_UNDERSTAND, "no data set received")
        # Flush to disk while the header is parsed and checked.
        writer.blob.start_sync()
        try:
            header = read_header(writer.name)
        except Exception as exc:
            writer.blob.discard()
            log.warning("C-STORE from %s: data set cannot be parsed: %s", calling_ae, exc)
            return st.status(st.CANNOT_UNDERSTAND, "data set cannot be parsed")

        node = self._settings.node(calling_ae)
        if node is not None:  # only the index sees these; the blob is as received
            apply_sender_defaults(
                header, issuer=node.default_issuer, character_set=node.default_character_set
            )
        attrs = extract_attributes(header, writer.transfer_syntax_uid)
        affected_class = str(request.AffectedSOPClassUID)
        affected_instance = str(request.AffectedSOPInstanceUID)
        if attrs.sop_class_uid and attrs.sop_class_uid != affected_class:
            writer.blob.discard()
            return st.status(
                st.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
                "SOPClassUID differs from Affected SOP Class UID",
            )
        if attrs.sop_instance_uid and attrs.sop_instance_uid != affected_instance:
            writer.blob.discard()
            return st.status(
                st.CANNOT_UNDERSTAND, "SOPInstanceUID differs from Affected SOP Instance UID"
            )

        outcome = self._ingest.store(
            IncomingInstance(
                attributes=attrs,
                blob=writer.blob,
                source_ae=calling_ae,
                organization_oid=organization,
            )
        )
        if self._audit is not None:
            self._note(event.assoc, attrs, outcome.ok)
        if outcome.status is StoreStatus.NOT_DESTROYED:
            return st.status(st.NOT_DESTROYED, outcome.message)
        if outcome.ok:
            return st.status(st.SUCCESS)
        code = {
            StoreStatus.INVALID: st.CANNOT_UNDERSTAND,
            StoreStatus.CONFLICT: st.DUPLICATE_WITH_OTHER_CONTENT,
            StoreStatus.FAILED: st.OUT_OF_RESOURCES,
            StoreStatus.REJECTED: st.REJECTED_INSTANCE,
            StoreStatus.IGNORED: st.ELEMENTS_DISCARDED,
            StoreStatus.FOREIGN: st.NOT_REGISTER_HOLDER,
            StoreStatus.DESTROYED: st.STUDY_DESTROYED,
        }[outcome.status]
        return st.status(code, outcome.message)

    def _note(self, assoc: Any, attrs: InstanceAttributes, stored: bool) -> None:
        study_uid = attrs.study.study_instance_uid
        with self._received_lock:
            studies = self._received.setdefault(id(assoc), {})
            study = studies.get(study_uid)
            if study is None:
                patient = (attrs.patient.patient_id, attrs.patient.issuer)
                study = studies[study_uid] = _Study(patient)
        if stored:
            study.sop_classes[attrs.sop_class_uid] += 1
        else:
            study.failures += 1

    def association_closed(self, event: Event) -> None:
        """EVT_RELEASED / EVT_ABORTED: audit what the association stored, if anything."""
        with self._received_lock:
            studies = self._received.pop(id(event.assoc), None)
        if not studies or self._audit is None:
            return
        requestor = event.assoc.requestor
        try:
            self._audit.instances_received(
                requestor.ae_title,
                str(requestor.address),
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
            log.exception("the transfer from %s could not be audited", requestor.ae_title)

    def _copy_received(self, event: Event) -> Part10Rewriter:
        """Fallback when pynetdicom did not stream into kuva (another receive path).

        Costs a second pass over the bytes; logged so that it does not go unseen.
        """
        log.warning("C-STORE data set was not streamed into the blob store; copying it")
        request = cast(C_STORE, event.request)
        writer = Part10Rewriter(self._blobs.open_writer())
        path = getattr(request, "_dataset_path", None)
        if path is not None:
            with open(path, "rb") as source:
                shutil.copyfileobj(source, writer, 1024 * 1024)
            return writer
        context = event.context
        writer.write(
            canonical_file_meta(
                str(request.AffectedSOPClassUID),
                str(request.AffectedSOPInstanceUID),
                str(context.transfer_syntax),
            )
        )
        with tempfile.SpooledTemporaryFile() as spool:
            data = request.DataSet
            spool.write(data.getvalue() if data is not None else b"")
            spool.seek(0)
            shutil.copyfileobj(spool, writer, 1024 * 1024)
        return writer
