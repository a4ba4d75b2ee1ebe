"""WADO-RS (PS3.18 10.4): studies, series, instances, frames and bulk data.

Instances go out as ``multipart/related; type="application/dicom"``, one Part 10
object per part, through the retrieve service like every C-GET or C-MOVE: the
same resolution from the index, the same coercion step. An object that needs no
coercion and is wanted in its stored transfer syntax (``transfer-syntax=*``, or
the syntax it was stored in) is streamed from its blob, however large. Otherwise
it is decoded, coerced and converted (kuva.codec.transcode), which holds that
one object in memory. Without a ``transfer-syntax`` parameter an object goes out
in Explicit VR Little Endian, the default of PS3.18 8.7.3.5.2.

Frames (PS3.18 10.4.1.1.3) and bulk data (10.4.1.1.4) are read out of the stored
object at their offsets (kuva.codec.bulkdata): a frame of a gigabyte multi-frame
object costs one frame's bytes. They come from the stored bytes directly: the
coercion step changes identifying attributes, never pixel data or other bulk data.

Errors before the first byte is sent are JSON problem bodies (RFC 9457): 400 for a
malformed UID, frame list or tag (naming the parameter), 404 when nothing
matches, 406 when nothing the client accepts can be produced. A failure after
streaming has begun (a blob gone missing) ends the response early, so the client
sees a broken multipart body rather than a complete-looking partial one.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Iterator
from itertools import chain
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydicom.uid import UID

from kuva.codec.bulkdata import (
    PIXEL_DATA,
    BulkDataError,
    PixelData,
    check_frames,
    decoded_frames,
    element_value,
    native_pixel_chunks,
    read_header,
    stored_frames,
)
from kuva.codec.outgoing import encoded
from kuva.codec.transcode import TranscodeError
from kuva.dicomweb.media import (
    DICOM,
    OCTET_STREAM,
    Acceptable,
    NotAcceptable,
    dicom_transfer_syntax,
    frame_encoding,
    parse_accept,
)
from kuva.dicomweb.multipart import Part, body, content_type, new_boundary
from kuva.index.instances import StoredInstance
from kuva.model import audit as a
from kuva.model.query import QueryLevel
from kuva.services.audit import audit_failed
from kuva.services.disclosure import Interface
from kuva.services.retrieve import RetrieveError, RetrieveService, StoredObject, TooManyMatches
from kuva.web.auditing import audit_of, requester
from kuva.web.identity import request_scope
from kuva.web.problem import problem

log = logging.getLogger(__name__)

_FRAME_LIST = re.compile(r"^\d+(,\d+)*$")
_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
# Path parameters by the attribute they carry, to name them in a 400 answer.
_PARAMETERS = {
    "StudyInstanceUID": "study",
    "SeriesInstanceUID": "series",
    "SOPInstanceUID": "instance",
}


class WadoProblem(Exception):
    """An error answered before the body starts: status, title, detail, parameter."""

    def __init__(self, status: int, title: str, detail: str, parameter: str | None = None):
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.parameter = parameter

    def response(self) -> Response:
        extra = {"parameter": self.parameter} if self.parameter else {}
        return problem(self.status, self.title, self.detail, **extra)


def resolve(
    retrieve: RetrieveService,
    request: Request,
    level: QueryLevel,
    keys: dict[str, str],
    interface: Interface = Interface.WADO_RS,
) -> list[StoredInstance]:
    """The stored instances the path names and the requester may read (their
    disclosures recorded); WadoProblem for a bad or unknown UID."""
    scope = request_scope(request)
    try:
        found = retrieve.resolve(level, keys, scope=scope, interface=interface)
    except TooManyMatches as exc:
        raise WadoProblem(400, "Bad Request", f"{exc}") from exc
    except RetrieveError as exc:
        keyword = str(exc).split(" ", 1)[0].rstrip(":")
        raise WadoProblem(400, "Bad Request", str(exc), _PARAMETERS.get(keyword)) from exc
    except Exception as exc:
        # The index or the disclosure log failed (database errors quote their
        # parameters, patient ids among them: the traceback at DEBUG only).
        log.error("%s: the index cannot answer: %s", interface.value, type(exc).__name__)
        log.debug("%s failure", interface.value, exc_info=True)
        raise WadoProblem(503, "Service Unavailable", "the archive cannot answer now") from exc
    if not found:
        raise WadoProblem(404, "Not Found", f"no such {level.value.lower()}")
    audit = audit_of(request)
    if audit is not None:
        # The register holder's own studies: 110104 (queued); the others were
        # disclosures, audited as Export by the disclosure log.
        try:
            audit.web_retrieved(
                requester(request),
                RetrieveService.own_studies(scope, found),
                transaction=a.RAD_55 if interface is Interface.WADO_URI else a.RAD_107,
            )
        except Exception as exc:
            audit_failed(log, f"a {interface.value} retrieve", exc)
    return found


def accepted(request: Request, default_part_type: str) -> list[Acceptable]:
    try:
        return parse_accept(request.headers.get("accept"), default_part_type)
    except ValueError as exc:
        raise WadoProblem(400, "Bad Request", str(exc), "Accept") from exc


def object_parts(
    retrieve: RetrieveService, plan: list[tuple[StoredInstance, UID]]
) -> Iterator[Part]:
    for instance, target in plan:
        try:
            chunks, length = encoded(retrieve.open(instance), target)
        except (OSError, TranscodeError) as exc:
            log.error("WADO-RS: instance %s cannot be sent: %s", instance.sop_instance_uid, exc)
            raise
        yield Part(f"{DICOM}; transfer-syntax={target}", chunks, length)


def _multipart(part_type: str, parts: Iterator[Part], syntax: str | None = None) -> Response:
    boundary = new_boundary()
    return StreamingResponse(
        body(parts, boundary), media_type=content_type(part_type, boundary, syntax)
    )


def _first_then_rest(parts: Iterator[Part]) -> Iterator[Part]:
    """Produce the first part before the answer starts, so that its failure is a 4xx/5xx."""
    try:
        first = next(parts)
    except StopIteration:
        return iter(())
    except BulkDataError as exc:
        raise WadoProblem(406, "Not Acceptable", str(exc)) from exc
    except TranscodeError as exc:
        raise WadoProblem(406, "Not Acceptable", str(exc)) from exc
    return chain((first,), parts)


def parse_frame_list(value: str) -> list[int]:
    """``1,3,5`` (PS3.18 10.4.1.1.3): 1-based frame numbers."""
    if not _FRAME_LIST.match(value) or any(int(n) < 1 for n in value.split(",")):
        raise WadoProblem(
            400, "Bad Request", "frames must be a comma-separated list of numbers from 1", "frames"
        )
    return [int(n) for n in value.split(",")]


class Wado:
    """The WADO-RS resources; methods raise WadoProblem for an error answer."""

    def __init__(self, retrieve: RetrieveService) -> None:
        self.retrieve = retrieve

    def instances(self, request: Request, level: QueryLevel, keys: dict[str, str]) -> Response:
        accept = accepted(request, DICOM)
        if not any(entry.accepts_part(DICOM) for entry in accept):
            raise WadoProblem(
                406,
                "Not Acceptable",
                "studies, series and instances are sent as multipart/related; "
                'type="application/dicom" (bulk data of a whole study is not supported)',
            )
        found = resolve(self.retrieve, request, level, keys)
        try:
            plan = [(i, dicom_transfer_syntax(i.transfer_syntax_uid, accept)) for i in found]
        except NotAcceptable as exc:
            raise WadoProblem(406, "Not Acceptable", str(exc)) from exc
        syntaxes = {str(target) for _, target in plan}
        syntax = syntaxes.pop() if len(syntaxes) == 1 else None
        parts = _first_then_rest(object_parts(self.retrieve, plan))
        return _multipart(DICOM, parts, syntax)

    def _one(self, request: Request, keys: dict[str, str]) -> StoredObject:
        return self.retrieve.open(resolve(self.retrieve, request, QueryLevel.IMAGE, keys)[0])

    def frames(self, request: Request, keys: dict[str, str], frame_list: str) -> Response:
        numbers = parse_frame_list(frame_list)
        accept = accepted(request, OCTET_STREAM)
        obj = self._one(request, keys)
        with obj.stream() as stream:
            _, pixels = read_header(stream)
        try:
            pixels = check_frames(pixels, numbers)
        except BulkDataError as exc:
            raise WadoProblem(404, "Not Found", str(exc), "frames") from exc
        return _frames(obj, pixels, numbers, accept)

    def bulk(self, request: Request, keys: dict[str, str], tag_text: str) -> Response:
        if not _TAG.match(tag_text):
            raise WadoProblem(400, "Bad Request", "tag must be 8 hexadecimal digits", "tag")
        tag = int(tag_text, 16)
        accept = accepted(request, OCTET_STREAM)
        obj = self._one(request, keys)
        if tag == PIXEL_DATA:
            return self._pixel_bulk(obj, accept)
        if not any(entry.accepts_part(OCTET_STREAM) for entry in accept):
            raise WadoProblem(406, "Not Acceptable", f"bulk data is sent as {OCTET_STREAM}")
        try:
            value = element_value(obj.stream, tag)
        except BulkDataError as exc:
            raise WadoProblem(404, "Not Found", str(exc), "tag") from exc
        return _multipart(OCTET_STREAM, iter((Part(OCTET_STREAM, (value,), len(value)),)))

    def _pixel_bulk(self, obj: StoredObject, accept: list[Acceptable]) -> Response:
        """Pixel Data as bulk data: the native value in one part, else one part per frame."""
        with obj.stream() as stream:
            _, pixels = read_header(stream)
        if pixels is None:
            raise WadoProblem(404, "Not Found", "the instance has no pixel data", "tag")
        if pixels.native_little_endian and pixels.length is not None:
            if not any(entry.accepts_part(OCTET_STREAM) for entry in accept):
                raise WadoProblem(406, "Not Acceptable", f"native pixel data is {OCTET_STREAM}")
            part = Part(OCTET_STREAM, native_pixel_chunks(obj.stream, pixels), pixels.length)
            return _multipart(OCTET_STREAM, iter((part,)))
        return _frames(obj, pixels, list(range(1, pixels.number_of_frames + 1)), accept)


def _frames(
    obj: StoredObject, pixels: PixelData, numbers: list[int], accept: list[Acceptable]
) -> Response:
    """Frames, one part each: as stored where the client takes that, else decoded."""
    try:
        encoding = frame_encoding(str(pixels.transfer_syntax), pixels.encapsulated, accept)
    except NotAcceptable as exc:
        raise WadoProblem(406, "Not Acceptable", str(exc)) from exc
    readable = pixels.encapsulated or pixels.native_little_endian
    frames = (
        stored_frames(obj.stream, pixels, numbers)
        if encoding.as_stored and readable
        else decoded_frames(obj.stream, pixels, numbers)
    )
    part_type = f"{encoding.media_type}; transfer-syntax={encoding.transfer_syntax}"
    parts = (Part(part_type, (frame,), len(frame)) for frame in frames)
    return _multipart(encoding.media_type, _first_then_rest(parts), encoding.transfer_syntax)


def answering_problems(endpoint: Callable[..., Response]) -> Callable[..., Response]:
    """Turn a WadoProblem raised by ``endpoint`` into its JSON problem answer."""

    @functools.wraps(endpoint)
    def wrapper(*args: Any, **kwargs: Any) -> Response:
        try:
            return endpoint(*args, **kwargs)
        except WadoProblem as exc:
            return exc.response()

    return wrapper


def wado_router(retrieve: RetrieveService) -> APIRouter:
    router = APIRouter()
    wado = Wado(retrieve)

    def instance_keys(study: str, series: str, instance: str) -> dict[str, str]:
        return {"StudyInstanceUID": study, "SeriesInstanceUID": series, "SOPInstanceUID": instance}

    @router.get("/studies/{study}")
    @answering_problems
    def study(request: Request, study: str) -> Response:
        return wado.instances(request, QueryLevel.STUDY, {"StudyInstanceUID": study})

    @router.get("/studies/{study}/series/{series}")
    @answering_problems
    def series(request: Request, study: str, series: str) -> Response:
        keys = {"StudyInstanceUID": study, "SeriesInstanceUID": series}
        return wado.instances(request, QueryLevel.SERIES, keys)

    @router.get("/studies/{study}/series/{series}/instances/{instance}")
    @answering_problems
    def instance(request: Request, study: str, series: str, instance: str) -> Response:
        return wado.instances(request, QueryLevel.IMAGE, instance_keys(study, series, instance))

    @router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frames}")
    @answering_problems
    def frames(request: Request, study: str, series: str, instance: str, frames: str) -> Response:
        return wado.frames(request, instance_keys(study, series, instance), frames)

    @router.get("/studies/{study}/series/{series}/instances/{instance}/bulk/{tag}")
    @answering_problems
    def bulk(request: Request, study: str, series: str, instance: str, tag: str) -> Response:
        return wado.bulk(request, instance_keys(study, series, instance), tag)

    return router
