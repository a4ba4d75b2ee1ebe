"""Rendered resources and thumbnails (PS3.18 10.4.1.1.5 and 10.4.1.1.6), for viewers
and the console: a frame as a JPEG or PNG image (kuva.codec.rendered).

* ``…/instances/{i}/rendered``: its first frame; ``…/frames/{n}/rendered``: frame n
  (one frame: a list is a 400).
* ``…/thumbnail`` of a study, a series or an instance: the instance's first frame,
  or for a study or series the middle instance of its first series, fitted into
  128 by 128 unless ``viewport`` says otherwise. Thumbnails are cached on the node's
  disk by the object's SHA-256 and the parameters (``[archive] data_dir/cache``): the
  stored object never changes, so neither does its thumbnail.

Query parameters: ``window`` (center,width[,function]), ``viewport``
(vw,vh[,sx,sy,sw,sh]) and ``quality`` (1-100, JPEG). The media type by Accept:
image/jpeg (the default, also for ``*/*`` and ``image/*``) or image/png; anything
else is a 406.

Every read goes through the same resolution as WADO-RS (dicomweb.wado.resolve): the
access rules, the disclosure log and the audit record of the register holder's own
retrieves. Errors are JSON problems: 400 naming the parameter, 404 when nothing
matches or the instance has no pixel data, 406.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import Response

from kuva.codec.rendered import (
    JPEG,
    MEDIA_TYPES,
    Rendering,
    RenderingError,
    Viewport,
    Window,
    parse_quality,
    render,
)
from kuva.dicomweb.wado import (
    WadoProblem,
    accepted,
    answering_problems,
    parse_frame_list,
    resolve,
)
from kuva.index.instances import StoredInstance
from kuva.model.query import QueryLevel
from kuva.services.retrieve import RetrieveService

log = logging.getLogger(__name__)

THUMBNAIL = Viewport(128, 128)


class ThumbnailCache:
    """Rendered thumbnails on local disk, by the object's digest and the rendering
    parameters; written atomically (a temporary file renamed), read back as bytes."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _path(self, digest: str, rendering: Rendering) -> Path:
        key = hashlib.sha256(f"{digest}|{rendering.key()}".encode()).hexdigest()
        return self.folder / key[:2] / key

    def get(self, digest: str, rendering: Rendering) -> bytes | None:
        try:
            return self._path(digest, rendering).read_bytes()
        except OSError:
            return None

    def put(self, digest: str, rendering: Rendering, image: bytes) -> None:
        path = self._path(digest, rendering)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".part-")
            with os.fdopen(handle, "wb") as out:
                out.write(image)
            os.replace(temporary, path)
        except OSError as exc:  # a cache: the image was made, only not kept
            log.warning("thumbnail not cached: %s", exc)


def _media_type(request: Request) -> str:
    """image/jpeg or image/png by Accept (PS3.18 8.3.3.1; parsed as every WADO-RS
    Accept is, dicomweb.media); WadoProblem 400 for a header that cannot be read,
    406 when neither is acceptable."""
    for entry in accepted(request, JPEG):
        if entry.part_type in MEDIA_TYPES:
            return entry.part_type
        if entry.part_type == "image/*":
            return JPEG
    raise WadoProblem(406, "Not Acceptable", f"rendered resources are {' or '.join(MEDIA_TYPES)}")


def _rendering(request: Request, *, thumbnail: bool = False) -> Rendering:
    params = request.query_params
    try:
        window = Window.parse(params["window"]) if "window" in params else None
        viewport = Viewport.parse(params["viewport"]) if "viewport" in params else None
        quality = parse_quality(params.get("quality"))
    except RenderingError as exc:
        parameter = str(exc).split(":", 1)[0]
        raise WadoProblem(400, "Bad Request", str(exc), parameter) from exc
    if thumbnail and viewport is None:
        viewport = THUMBNAIL
    return Rendering(_media_type(request), window, viewport, quality)


def representative(found: list[StoredInstance]) -> StoredInstance:
    """The middle instance of the first series."""
    first = [i for i in found if i.series_instance_uid == found[0].series_instance_uid]
    return first[len(first) // 2]


class Rendered:
    def __init__(self, retrieve: RetrieveService, thumbnails: ThumbnailCache | None) -> None:
        self.retrieve = retrieve
        self.thumbnails = thumbnails

    def frame(
        self, request: Request, keys: dict[str, str], frame: int, *, thumbnail: bool = False
    ) -> Response:
        rendering = _rendering(request, thumbnail=thumbnail)
        level = (
            QueryLevel.IMAGE
            if "SOPInstanceUID" in keys
            else QueryLevel.SERIES
            if "SeriesInstanceUID" in keys
            else QueryLevel.STUDY
        )
        found = resolve(self.retrieve, request, level, keys)
        instance = representative(found) if level is not QueryLevel.IMAGE else found[0]
        cache = self.thumbnails if thumbnail else None
        image = cache.get(instance.sha256, rendering) if cache is not None else None
        if image is None:
            obj = self.retrieve.open(instance)
            try:
                with obj.stream() as stream:
                    image = render(stream, frame, rendering)
            except RenderingError as exc:
                raise WadoProblem(404, "Not Found", str(exc)) from exc
            except OSError as exc:
                log.error(
                    "rendering %s: the object cannot be read: %s", instance.sop_instance_uid, exc
                )
                raise WadoProblem(
                    503, "Service Unavailable", "the object cannot be read now"
                ) from exc
            if cache is not None:
                cache.put(instance.sha256, rendering, image)
        return Response(image, media_type=rendering.media_type)


def rendered_router(retrieve: RetrieveService, thumbnails: ThumbnailCache | None) -> APIRouter:
    router = APIRouter()
    rendered = Rendered(retrieve, thumbnails)
    base = "/studies/{study}/series/{series}/instances/{instance}"

    def keys(study: str, series: str | None = None, instance: str | None = None) -> dict[str, str]:
        found = {"StudyInstanceUID": study}
        if series is not None:
            found["SeriesInstanceUID"] = series
        if instance is not None:
            found["SOPInstanceUID"] = instance
        return found

    @router.get(f"{base}/rendered")
    @answering_problems
    def instance_rendered(request: Request, study: str, series: str, instance: str) -> Response:
        return rendered.frame(request, keys(study, series, instance), 1)

    @router.get(f"{base}/frames/{{frames}}/rendered")
    @answering_problems
    def frame_rendered(
        request: Request, study: str, series: str, instance: str, frames: str
    ) -> Response:
        numbers = parse_frame_list(frames)
        if len(numbers) != 1:
            raise WadoProblem(400, "Bad Request", "one frame is rendered at a time", "frames")
        return rendered.frame(request, keys(study, series, instance), numbers[0])

    @router.get(f"{base}/thumbnail")
    @answering_problems
    def instance_thumbnail(request: Request, study: str, series: str, instance: str) -> Response:
        return rendered.frame(request, keys(study, series, instance), 1, thumbnail=True)

    @router.get("/studies/{study}/series/{series}/thumbnail")
    @answering_problems
    def series_thumbnail(request: Request, study: str, series: str) -> Response:
        return rendered.frame(request, keys(study, series), 1, thumbnail=True)

    @router.get("/studies/{study}/thumbnail")
    @answering_problems
    def study_thumbnail(request: Request, study: str) -> Response:
        return rendered.frame(request, keys(study), 1, thumbnail=True)

    return router
