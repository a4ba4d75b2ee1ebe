"""STOW-RS (PS3.18 10.5, Store Transaction): DICOM objects over HTTP, into the same
ingest path as C-STORE.

``POST /dicom-web/studies`` and ``POST /dicom-web/studies/{study}`` take
``multipart/related; type="application/dicom"; boundary=...`` (PS3.18 8.6.1.2, RFC
2387), one DICOM Part 10 file (PS3.10: preamble, ``DICM``, File Meta Information,
data set) per body part. The body is read chunk by chunk and parsed as it arrives
(kuva.dicomweb.multipart_parser); each part's bytes go straight into a
``Part10Rewriter`` around a blob writer, exactly as a C-STORE data set does
(kuva.dicom.storage_scp): the object is hashed on the way and stored as kuva's
canonical File Meta Information followed by the data set as sent, so the same object
gets the same bytes and the same SHA-256 whichever interface brought it. Neither the
body nor a part is ever held whole in memory. Blob writes, header parsing and
``IngestService.store`` (which fsyncs and commits) run in worker threads, never on
the event loop.

The answer is the Store Instances Response Module (PS3.18 Annex I, Table I.1-1) as
DICOM JSON (PS3.18 F.2): Retrieve URL (0008,1190) of the study when the stored
instances belong to one study (empty otherwise: the attribute is Type 2), Referenced
SOP Sequence (0008,1199) for each instance archived (or already archived with the
same bytes), each with its Retrieve URL, and Failed SOP Sequence (0008,1198) with a
Failure Reason (0008,1197) for each one that was not. A failed item also carries
kuva's reason text as Error Comment (0000,0902) (LO, at most 64 characters), the
text C-STORE gives in its status (PS3.7 C.5); it is a kuva addition, not part of
Table I.1-1, and clients may ignore it. A part whose SOP Class and SOP Instance UIDs
cannot be read gets a failed item without them.

Failure Reason values (PS3.18 I.2.2, Table I.2-2; implementation-specific values in
the Cxxx "Cannot understand" range are allowed there and listed here):

* 0xC000 Cannot understand: the part is not a Part 10 file (no preamble and
  ``DICM``, no File Meta Information group length), its data set cannot be parsed,
  its SOP Instance UID differs from the file meta's, its part headers name another
  media type or a content transfer encoding, or the instance breaks kuva's rules
  (``StoreStatus.INVALID``, same rules as C-STORE).
* 0xA900 Data Set does not match SOP Class: SOPClassUID differs from the file meta's
  MediaStorageSOPClassUID (as C-STORE answers for the Affected SOP Class UID).
* 0xC001 (kuva, Cxxx): the SOP Instance UID is already archived with other content
  (``StoreStatus.CONFLICT``); stored objects are never replaced, corrections go
  through IOCM. Same code as C-STORE (kuva.dicom.status).
* 0xC409 (kuva, Cxxx): ``/studies/{study}`` and the instance's StudyInstanceUID
  differ; the instance is not stored. Table I.2-2 has no code of its own for this (the
  A9xx codes mean the data set does not conform to its SOP Class), so it is a Cannot
  understand code; 0xC409 is the value dcm4chee-arc uses for the same condition.
* 0xC410 (kuva, Cxxx): the instance was rejected by IOCM for patient safety reasons
  or an incorrect worklist entry (113037, 113038) and is refused when sent again;
  0xC411 (kuva, Cxxx): a rejection note names a study held for another organisation,
  or the instance belongs to a study another organisation archived; 0xC412 (kuva,
  Cxxx): the instance starts a study the archive destroyed and no operator allowed
  it to be sent again. Same codes as C-STORE (kuva.dicom.status).
* 0xA700 Refused out of Resources: the archive could not write the blob or commit
  the index row (``StoreStatus.FAILED``; the same code C-STORE answers), so the
  client may retry later.
* 0x0110 Processing failure: an unexpected error in this adapter.

Warning Reason 0xB006 Elements Discarded, with the Error Comment: the instance was
rejected for quality reasons or by retention (113001, 113039) and is not stored
again; it is listed in the Referenced SOP Sequence. Warning Reason 0xB410 (kuva's,
as over C-STORE): a 113039 rejection note stored and applied whose instances
retention keeps (legal hold, expiry ahead), not destroyed.

HTTP status (PS3.18 10.5.3.1, Table 10.5.3-1): 200 when every instance was stored,
202 when some were stored and others failed or had warnings, 409 when none was stored (the request
was well formed), 400 when the body holds no parts or is not valid multipart and
nothing from it was stored, 415 for a Content-Type other than multipart/related with
``type`` application/dicom (or none) and a boundary (metadata + bulk data STOW with
``application/dicom+json`` or ``+xml`` parts is not supported), 406 when ``Accept``
allows no JSON answer (XML responses are not supported), 403 when the request acts
for no organisation (kuva.web.identity: the client certificate's with mutual TLS,
else ``[http] organization``). The instances are stored for that organisation.

A body that turns out not to be valid multipart (garbage, no closing delimiter, a
cut-off upload) stops being read where the error is found. A part that was open
then is discarded: nothing of it is stored. Every part that was complete before the
error has already been archived durably (fsynced and committed), and stays. So the
answer tells the truth about them: when at least one instance was stored, it is a
202 Store Instances Response that references them and holds a failed item for the
unreadable rest of the body (with the open part's UIDs when its file meta had been
read, Error Comment naming the error); when nothing was stored, it is a 400 problem
body (RFC 9457). Resending the whole body after fixing it is safe: identical
instances answer success (0008,1199) again.
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydicom import dcmread
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from kuva.codec.part10 import Part10Rewriter, extract_attributes, read_header
from kuva.dicom import status as st
from kuva.dicomweb.multipart_parser import (
    MultipartError,
    MultipartParser,
    PartData,
    PartEnd,
    PartEvent,
    PartHeaders,
    PartStart,
    parse_content_type,
    valid_boundary,
)
from kuva.dicomweb.qido import DICOM_JSON
from kuva.dicomweb.urls import dicomweb_root
from kuva.model.uids import is_valid_uid
from kuva.services.audit import ReceivedStudy, audit_failed
from kuva.services.ingest import IncomingInstance, IngestService, StoreStatus
from kuva.storage import BlobStore
from kuva.web.auditing import audit_of, requester
from kuva.web.identity import client_organization
from kuva.web.problem import problem

log = logging.getLogger(__name__)

DICOM = "application/dicom"
# What the index records as the source (instance.source_ae) of objects stored over HTTP.
SOURCE = "STOW-RS"

# Failure Reason (0008,1197) values, PS3.18 Table I.2-2 (see the module docstring).
OUT_OF_RESOURCES = st.OUT_OF_RESOURCES  # A7xx Refused out of Resources
DATA_SET_DOES_NOT_MATCH_SOP_CLASS = st.DATA_SET_DOES_NOT_MATCH_SOP_CLASS  # A9xx
CANNOT_UNDERSTAND = st.CANNOT_UNDERSTAND  # Cxxx
DUPLICATE_WITH_OTHER_CONTENT = st.DUPLICATE_WITH_OTHER_CONTENT  # kuva-specific Cxxx
STUDY_INSTANCE_UID_MISMATCH = 0xC409  # kuva-specific Cxxx
PROCESSING_FAILURE = st.PROCESSING_FAILURE  # 0110 Processing failure

_OUTCOME_REASONS = {
    StoreStatus.INVALID: CANNOT_UNDERSTAND,
    StoreStatus.CONFLICT: DUPLICATE_WITH_OTHER_CONTENT,
    StoreStatus.FAILED: OUT_OF_RESOURCES,
    StoreStatus.REJECTED: st.REJECTED_INSTANCE,
    StoreStatus.FOREIGN: st.NOT_REGISTER_HOLDER,
    StoreStatus.DESTROYED: st.STUDY_DESTROYED,
    StoreStatus.NOT_AUTHORIZED: st.NOT_AUTHORIZED,
}
# Stored, or not stored again, with a warning (Warning Reason, PS3.18 I.2.2).
_WARNINGS = {
    StoreStatus.IGNORED: st.ELEMENTS_DISCARDED,
    StoreStatus.NOT_DESTROYED: st.NOT_DESTROYED,
}

# The body is handed to a worker thread in batches of about this size: few thread
# hops per object, and at most this much of the body in memory per request.
BATCH_BYTES = 1024 * 1024
# Preamble (128) + "DICM" + the File Meta Information Group Length element (12).
_PART10_HEAD = 144
_GROUP_LENGTH_ELEMENT = b"\x02\x00\x00\x00UL\x04\x00"  # (0002,0000) UL, length 4
# A File Meta Information group longer than this is refused (it is held in memory
# while it is replaced by kuva's canonical one).
MAX_FILE_META_LENGTH = 1024 * 1024
# How much of a part that is not a Part 10 file is kept to look for its UIDs.
SNIFF_BYTES = 64 * 1024
ERROR_COMMENT_MAX = st.ERROR_COMMENT_MAX


@dataclass(frozen=True)
class PartResult:
    """What became of one body part: archived (``failure_reason`` None) or not."""

    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    failure_reason: int | None = None
    comment: str = ""
    warning_reason: int | None = None
    # The instance's Patient ID and issuer when its data set was read (for the audit).
    patient: tuple[str, str] = ("", "")

    @property
    def stored(self) -> bool:
        return self.failure_reason is None


def _part_problem(headers: PartHeaders) -> str | None:
    """Why a part's own headers rule it out, or None (RFC 2387 3.1, RFC 2045 6)."""
    content_type = headers.get("Content-Type")
    if content_type is not None:
        try:
            media_type = parse_content_type(content_type).media_type
        except ValueError:
            return "part Content-Type cannot be parsed"
        if media_type != DICOM:
            return f"part Content-Type is not {DICOM}"
    encoding = headers.get("Content-Transfer-Encoding")
    if encoding is not None and encoding.strip().lower() not in ("binary", "8bit", "7bit"):
        return "part Content-Transfer-Encoding not supported (binary only)"
    return None


def _sniff_uids(head: bytes) -> tuple[str, str]:
    """SOP Class and SOP Instance UIDs from the start of an object that is not Part 10.

    Best effort, for the Failed SOP Sequence item only: pydicom reads what it can of
    a data set with or without file meta (``force``); anything that is not a valid
    UID is left out.
    """
    try:
        ds = dcmread(
            io.BytesIO(head),
            force=True,
            stop_before_pixels=True,
            specific_tags=["SOPClassUID", "SOPInstanceUID"],
        )
    except Exception:
        return "", ""
    meta = getattr(ds, "file_meta", None)
    uids: list[str] = []
    for keyword, meta_keyword in (
        ("SOPClassUID", "MediaStorageSOPClassUID"),
        ("SOPInstanceUID", "MediaStorageSOPInstanceUID"),
    ):
        value = ""
        for source, key in ((ds, keyword), (meta, meta_keyword)):
            try:
                found = source.get(key) if source is not None else None
            except Exception:
                found = None
            if found is not None and is_valid_uid(str(found)):
                value = str(found)
                break
        uids.append(value)
    return uids[0], uids[1]


class _Part:
    """One body part on its way into the blob store (runs in worker threads)."""

    def __init__(self, number: int, headers: PartHeaders, blobs: BlobStore) -> None:
        self.number = number
        self._blobs = blobs
        self._head = bytearray()
        self.rewriter: Part10Rewriter | None = None
        self.failure: tuple[int, str] | None = None
        self.sniff: bytearray | None = None
        problem_text = _part_problem(headers)
        if problem_text is not None:
            self.failure = (CANNOT_UNDERSTAND, problem_text)
            self.sniff = bytearray()

    def write(self, data: bytes) -> None:
        if self.failure is not None:
            if self.sniff is not None and len(self.sniff) < SNIFF_BYTES:
                self.sniff += data[: SNIFF_BYTES - len(self.sniff)]
            return
        if self.rewriter is None:
            self._head += data
            if len(self._head) < _PART10_HEAD:
                return
            head, self._head = bytes(self._head), bytearray()
            not_part10 = self._part10_problem(head)
            if not_part10 is not None:
                self._fail(CANNOT_UNDERSTAND, not_part10)
                self.sniff = bytearray(head[:SNIFF_BYTES])
                return
            self.rewriter = Part10Rewriter(self._blobs.open_writer())
            data = head
        try:
            self.rewriter.write(data)
        except OSError as exc:
            log.error("STOW-RS part %d: could not write its blob: %s", self.number, exc)
            self._fail(OUT_OF_RESOURCES, f"storage failure: {exc.strerror or exc}")
        except Exception as exc:
            log.debug("STOW-RS part %d: file meta unreadable", self.number, exc_info=exc)
            self._fail(CANNOT_UNDERSTAND, "File Meta Information cannot be parsed")

    @staticmethod
    def _part10_problem(head: bytes) -> str | None:
        """Why ``head`` does not open a PS3.10 file (7.1: preamble, DICM, group length)."""
        if head[128:132] != b"DICM":
            return "not a DICOM Part 10 file (no preamble and DICM prefix)"
        if head[132:140] != _GROUP_LENGTH_ELEMENT:
            return "File Meta Information Group Length missing"
        if int.from_bytes(head[140:144], "little") > MAX_FILE_META_LENGTH:
            return "File Meta Information too long"
        return None

    def short(self) -> None:
        """The part ended before its first 144 bytes: it cannot be a Part 10 file."""
        if self.failure is None and self.rewriter is None:
            self.failure = (
                CANNOT_UNDERSTAND,
                "not a DICOM Part 10 file (no preamble and DICM prefix)",
            )
            self.sniff = self._head

    def _fail(self, reason: int, comment: str) -> None:
        self.failure = (reason, comment)
        self.discard()

    def discard(self) -> None:
        if self.rewriter is not None:
            self.rewriter.blob.discard()

    def failed(self, reason: int, comment: str) -> PartResult:
        """The result of this part when it was not stored; its blob is discarded."""
        self.discard()
        sop_class, sop_instance = "", ""
        if self.rewriter is not None and self.rewriter.sop_instance_uid:  # file meta read
            sop_class, sop_instance = self.rewriter.sop_class_uid, self.rewriter.sop_instance_uid
        elif self.sniff:
            sop_class, sop_instance = _sniff_uids(bytes(self.sniff))
        return PartResult(sop_class, sop_instance, failure_reason=reason, comment=comment)


class StowReceiver:
    """Turns the body of one STOW-RS request into archived instances.

    ``feed``, ``finish`` and ``abort`` do blocking work (disk, database) and are run
    in worker threads, one call at a time. ``results`` lists one entry per part in
    the order of the body (plus one for the malformed rest of a body, if any).
    """

    def __init__(
        self,
        boundary: str,
        ingest: IngestService,
        blobs: BlobStore,
        organization: str,
        study: str | None,
    ) -> None:
        self._parser = MultipartParser(boundary)
        self._ingest = ingest
        self._blobs = blobs
        self._organization = organization
        self._study = study
        self._part: _Part | None = None
        self.results: list[PartResult] = []
        self.malformed: str | None = None
        self.parts = 0

    @property
    def done(self) -> bool:
        return self.malformed is not None or self._parser.complete

    def feed(self, data: bytes) -> None:
        """Parse and store the next piece of the body."""
        if self.done:
            return
        try:
            events = self._parser.feed(data)
        except MultipartError as exc:
            self._handle(exc.events)
            self._malformed(str(exc))
            return
        self._handle(events)

    def finish(self, data: bytes = b"") -> None:
        """The last piece of the body (possibly empty): the body must now be complete."""
        self.feed(data)
        if self.done:
            return
        try:
            self._parser.finish()
        except MultipartError as exc:
            self._malformed(str(exc))

    def abort(self, reason: str) -> None:
        """The body cannot be read any further: the open part (if any) is not stored."""
        if self.malformed is None:
            self._malformed(reason)

    def _malformed(self, reason: str) -> None:
        self.malformed = reason
        part, self._part = self._part, None
        if part is not None:
            part.short()
            self._record(part, part.failed(CANNOT_UNDERSTAND, reason))
        elif any(r.stored for r in self.results):
            self._record(None, PartResult(failure_reason=CANNOT_UNDERSTAND, comment=reason))

    def _handle(self, events: Iterable[PartEvent]) -> None:
        for event in events:
            if isinstance(event, PartStart):
                self.parts += 1
                self._part = _Part(self.parts, event.headers, self._blobs)
            elif isinstance(event, PartData):
                assert self._part is not None
                self._part.write(event.data)
            elif isinstance(event, PartEnd):
                part, self._part = self._part, None
                assert part is not None
                self._record(part, self._complete(part))

    def _record(self, part: _Part | None, result: PartResult) -> None:
        self.results.append(result)
        if result.failure_reason is not None:
            log.warning(
                "STOW-RS part %s not stored (failure reason %04X, %s): SOP Instance %s",
                part.number if part is not None else "(rest of body)",
                result.failure_reason,
                result.comment,
                result.sop_instance_uid or "(unknown)",
            )

    def _complete(self, part: _Part) -> PartResult:
        try:
            return self._store(part)
        except Exception:
            log.exception("STOW-RS part %d: processing failed", part.number)
            return part.failed(PROCESSING_FAILURE, "processing failure")

    def _store(self, part: _Part) -> PartResult:
        part.short()
        if part.failure is not None:
            return part.failed(*part.failure)
        writer = part.rewriter
        assert writer is not None
        if not writer.complete:
            return part.failed(CANNOT_UNDERSTAND, "part ends inside the File Meta Information")
        # Flush to disk while the header is parsed and checked (as C-STORE does).
        writer.blob.start_sync()
        try:
            header = read_header(writer.name)
        except Exception as exc:
            log.debug("STOW-RS part %d: data set unreadable", part.number, exc_info=exc)
            return part.failed(CANNOT_UNDERSTAND, "data set cannot be parsed")
        attrs = extract_attributes(header, writer.transfer_syntax_uid)
        if attrs.sop_class_uid and attrs.sop_class_uid != writer.sop_class_uid:
            return part.failed(
                DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
                "SOPClassUID differs from MediaStorageSOPClassUID",
            )
        if attrs.sop_instance_uid and attrs.sop_instance_uid != writer.sop_instance_uid:
            return part.failed(
                CANNOT_UNDERSTAND, "SOPInstanceUID differs from MediaStorageSOPInstanceUID"
            )
        if self._study is not None and attrs.study.study_instance_uid != self._study:
            return part.failed(
                STUDY_INSTANCE_UID_MISMATCH, "StudyInstanceUID differs from the study in the URL"
            )
        outcome = self._ingest.store(
            IncomingInstance(
                attributes=attrs,
                blob=writer.blob,
                source_ae=SOURCE,
                organization_oid=self._organization,
            )
        )
        patient = (attrs.patient.patient_id, attrs.patient.issuer)
        if outcome.status in _WARNINGS:
            return PartResult(
                attrs.sop_class_uid,
                attrs.sop_instance_uid,
                attrs.study.study_instance_uid,
                attrs.series.series_instance_uid,
                comment=outcome.message,
                warning_reason=_WARNINGS[outcome.status],
                patient=patient,
            )
        if not outcome.ok:
            # The ingest service has discarded the blob already.
            return PartResult(
                writer.sop_class_uid,
                writer.sop_instance_uid,
                attrs.study.study_instance_uid,
                failure_reason=_OUTCOME_REASONS[outcome.status],
                comment=outcome.message,
                patient=patient,
            )
        return PartResult(
            attrs.sop_class_uid,
            attrs.sop_instance_uid,
            attrs.study.study_instance_uid,
            attrs.series.series_instance_uid,
            patient=patient,
        )


# ---------------------------------------------------------------------- HTTP


def _accepts_json(values: list[str]) -> bool:
    """Whether the Accept header fields allow a DICOM JSON answer (RFC 9110 12.5.1)."""
    ranges = [r for value in values for r in value.split(",") if r.strip()]
    if not ranges:
        return True
    for media_range in ranges:
        try:
            parsed = parse_content_type(media_range)
        except ValueError:
            continue
        try:
            quality = float(parsed.parameters.get("q", "1"))
        except ValueError:
            quality = 1.0
        if quality > 0 and parsed.media_type in (
            "*/*",
            "application/*",
            DICOM_JSON,
            "application/json",
        ):
            return True
    return False


def _boundary(content_type: str | None) -> str | Response:
    """The multipart boundary of a STOW-RS request, or the 415 answer (PS3.18 10.5.1)."""
    expected = f'expected multipart/related; type="{DICOM}"; boundary=...'
    if not content_type:
        return problem(415, "Unsupported Media Type", f"Content-Type missing: {expected}")
    try:
        parsed = parse_content_type(content_type)
    except ValueError:
        return problem(415, "Unsupported Media Type", f"Content-Type malformed: {expected}")
    if parsed.media_type != "multipart/related":
        return problem(
            415,
            "Unsupported Media Type",
            f"Content-Type {parsed.media_type} is not supported: {expected}",
        )
    part_type = parsed.parameters.get("type")
    if part_type is not None:
        part_type = part_type.split(";", 1)[0].strip().lower()
        if part_type != DICOM:
            return problem(
                415,
                "Unsupported Media Type",
                f"multipart/related type {part_type} is not supported: only {DICOM} parts "
                "(DICOM Part 10 files); storing metadata and bulk data "
                "(application/dicom+json, application/dicom+xml) is not supported",
            )
    boundary = parsed.parameters.get("boundary")
    if not boundary:
        return problem(
            415,
            "Unsupported Media Type",
            f"boundary parameter missing (RFC 2046 5.1.1): {expected}",
        )
    if not valid_boundary(boundary):
        return problem(
            415,
            "Unsupported Media Type",
            "boundary parameter is not valid (RFC 2046 5.1.1: 1 to 70 characters)",
        )
    return boundary


def _uid(value: str) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def _url(value: str) -> dict[str, Any]:
    return {"vr": "UR", "Value": [value]} if value else {"vr": "UR"}


def store_response(results: list[PartResult], base: str) -> dict[str, Any]:
    """The Store Instances Response Module (PS3.18 Table I.1-1) as DICOM JSON."""
    referenced: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    studies: set[str] = set()
    for result in results:
        item: dict[str, Any] = {}
        if result.sop_class_uid:
            item["00081150"] = _uid(result.sop_class_uid)  # ReferencedSOPClassUID
        if result.sop_instance_uid:
            item["00081155"] = _uid(result.sop_instance_uid)  # ReferencedSOPInstanceUID
        if result.failure_reason is None:
            studies.add(result.study_instance_uid)
            item["00081190"] = _url(
                f"{base}/studies/{result.study_instance_uid}/series/"
                f"{result.series_instance_uid}/instances/{result.sop_instance_uid}"
            )
            if result.warning_reason is not None:
                item["00081196"] = {"vr": "US", "Value": [result.warning_reason]}  # WarningReason
                item["00000902"] = {"vr": "LO", "Value": [result.comment[:ERROR_COMMENT_MAX]]}
            referenced.append(dict(sorted(item.items())))
        else:
            item["00081197"] = {"vr": "US", "Value": [result.failure_reason]}  # FailureReason
            if result.comment:
                item["00000902"] = {  # ErrorComment (PS3.7 C.5), a kuva addition
                    "vr": "LO",
                    "Value": [result.comment[:ERROR_COMMENT_MAX]],
                }
            failed.append(dict(sorted(item.items())))
    out: dict[str, Any] = {
        "00081190": _url(f"{base}/studies/{next(iter(studies))}" if len(studies) == 1 else "")
    }
    if failed:
        out["00081198"] = {"vr": "SQ", "Value": failed}  # FailedSOPSequence
    if referenced:
        out["00081199"] = {"vr": "SQ", "Value": referenced}  # ReferencedSOPSequence
    return out


def stow_router(ingest: IngestService, blobs: BlobStore) -> APIRouter:
    """The Store Transaction resources (PS3.18 Table 10.5.1-1) under the DICOMweb root."""
    router = APIRouter()

    async def store(request: Request, study: str | None) -> Response:
        organization = client_organization(request)
        if organization is None:
            return problem(
                403,
                "Forbidden",
                "no organisation is known for this client (no client certificate, and "
                "no http.organization configured): STOW-RS is refused",
            )
        if not _accepts_json(request.headers.getlist("accept")):
            return problem(
                406,
                "Not Acceptable",
                f"the response can only be {DICOM_JSON}; XML responses "
                "(application/dicom+xml) are not supported",
            )
        boundary = _boundary(request.headers.get("content-type"))
        if isinstance(boundary, Response):
            return boundary
        receiver = StowReceiver(boundary, ingest, blobs, organization, study)
        try:
            await _receive(request, receiver)
        except ClientDisconnect:
            await run_in_threadpool(receiver.abort, "client disconnected before the body ended")
        finally:
            if not receiver.done:  # cancelled or failed unexpectedly: drop the open part
                receiver.abort("request not completed")
        audit = audit_of(request)
        studies = received_studies(receiver.results, study)
        if audit is not None and studies:
            try:
                await run_in_threadpool(audit.instances_posted, requester(request), studies)
            except Exception as exc:
                audit_failed(log, "a STOW-RS request", exc)
        return _answer(receiver, dicomweb_root(request))

    @router.post("/studies")
    async def store_instances(request: Request) -> Response:
        return await store(request, None)

    @router.post("/studies/{study}")
    async def store_study_instances(request: Request, study: str) -> Response:
        return await store(request, study)

    return router


def received_studies(results: Iterable[PartResult], study: str | None) -> list[ReceivedStudy]:
    """What a request stored of each study, for its audit (110104, services.audit):
    a part refused before its data set was read counts as a failure of the study in
    the URL, when there is one, else of none."""
    studies: dict[str, tuple[list[tuple[str, str]], Counter[str], list[int]]] = {}
    for result in results:
        uid = result.study_instance_uid or study
        if not uid:
            continue
        patients, classes, failures = studies.setdefault(uid, ([], Counter(), [0]))
        if result.patient[0]:
            patients.append(result.patient)
        if result.stored:
            classes[result.sop_class_uid] += 1
        else:
            failures[0] += 1
    return [
        ReceivedStudy(
            study_instance_uid=uid,
            patient=patients[0] if patients else None,
            sop_classes=dict(classes),
            failures=failures[0],
        )
        for uid, (patients, classes, failures) in studies.items()
    ]


async def _receive(request: Request, receiver: StowReceiver) -> None:
    """Read the body chunk by chunk and hand it to ``receiver`` in batches, in threads."""
    pending = bytearray()
    async for chunk in request.stream():
        pending += chunk
        if len(pending) >= BATCH_BYTES:
            batch, pending = bytes(pending), bytearray()
            await run_in_threadpool(receiver.feed, batch)
            if receiver.done:
                return  # malformed, or complete: the rest is epilogue
    await run_in_threadpool(receiver.finish, bytes(pending))


def _answer(receiver: StowReceiver, base: str) -> Response:
    results = receiver.results
    stored = sum(1 for r in results if r.stored)
    failed = len(results) - stored
    log.info("STOW-RS: %d part(s), %d stored, %d not stored", receiver.parts, stored, failed)
    if receiver.malformed is not None and not stored:
        return problem(
            400,
            "Bad Request",
            f"the body is not valid multipart/related: {receiver.malformed}; nothing was stored",
        )
    if not results:
        return problem(400, "Bad Request", "the body holds no parts: nothing to store")
    warned = any(r.warning_reason is not None for r in results)
    status = 200 if not failed and not warned else 202 if stored else 409
    return JSONResponse(store_response(results, base), status_code=status, media_type=DICOM_JSON)
