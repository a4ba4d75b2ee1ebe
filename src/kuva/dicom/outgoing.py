"""The bytes of an outgoing object in the transfer syntax it goes out in.

Shared by every HTTP path that sends whole objects (WADO-RS, WADO-URI, RAD-69).
An object that needs no coercion and goes out in its stored transfer syntax is
streamed from its blob; otherwise it is decoded, coerced by the retrieve service
and converted (kuva.dicom.transcode), one object in memory at a time.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

from pydicom.uid import UID

from kuva.dicom.transcode import transcode
from kuva.services.retrieve import StoredObject

CHUNK = 1024 * 1024


def _blob_chunks(obj: StoredObject) -> Iterator[bytes]:
    with obj.stream() as stream:
        while chunk := stream.read(CHUNK):
            yield chunk


def encoded(obj: StoredObject, target: UID) -> tuple[Iterator[bytes], int]:
    """The Part 10 object as it goes out in ``target``: its chunks and its length.

    Raises TranscodeError when it cannot be converted, OSError when the blob
    cannot be read.
    """
    if obj.verbatim and target == obj.instance.transfer_syntax_uid:
        return _blob_chunks(obj), obj.instance.size
    ds = transcode(obj.dataset(), target)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    data = out.getvalue()
    return iter((data,)), len(data)
