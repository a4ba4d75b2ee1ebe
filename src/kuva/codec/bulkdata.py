"""Frames and bulk data read straight out of a stored Part 10 object.

WADO-RS frame and bulk data retrieval (PS3.18 10.4.1.1.3-4) needs a few frames or
one element of an object that may be a gigabyte. Nothing here reads the whole
object: the header is parsed up to the Pixel Data element (PS3.5 7.1), whose file
offset is then known, and

* native (uncompressed, little endian) frames are read at their offset,
  ``(n - 1) * frame size`` bytes into the value (PS3.5 8.1.1);
* encapsulated frames are read fragment by fragment (PS3.5 A.4), skipping the
  frames before the one asked for;
* frames of any other encoding (big endian, deflated) and compressed frames a
  client wants decoded are decoded one at a time with pydicom's pixel decoders,
  which hold one frame in memory.

Stored objects are never changed: this module only reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels.utils import pixel_array
from pydicom.tag import Tag
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

PIXEL_DATA = 0x7FE00010
_UNDEFINED = 0xFFFFFFFF
_NATIVE_LITTLE_ENDIAN = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})

Opener = Callable[[], BinaryIO]


class BulkDataError(Exception):
    """The object has no such frame or element, or it cannot be read as asked."""


@dataclass(frozen=True)
class PixelData:
    """Where an object's Pixel Data is, and how its frames are laid out."""

    transfer_syntax: UID
    number_of_frames: int
    value_offset: int  # file offset of the first byte of the value
    length: int | None  # None: undefined length (encapsulated, PS3.5 A.4)
    frame_size: int  # bytes per native frame (0 when frames are not byte aligned)

    @property
    def encapsulated(self) -> bool:
        return self.length is None

    @property
    def native_little_endian(self) -> bool:
        """Frames can be read at their offset, as stored."""
        return (
            not self.encapsulated
            and self.value_offset >= 0
            and self.transfer_syntax in _NATIVE_LITTLE_ENDIAN
        )


def read_header(stream: BinaryIO) -> tuple[Dataset, PixelData | None]:
    """The data set up to Pixel Data, and the Pixel Data's layout (None without one).

    ``stream`` is left just after the Pixel Data element's header.
    """
    ds = dcmread(stream, stop_before_pixels=True)
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    frames = max(int(ds.get("NumberOfFrames") or 1), 1)
    bits = int(ds.get("Rows", 0)) * int(ds.get("Columns", 0)) * int(ds.get("SamplesPerPixel", 1))
    bits *= int(ds.get("BitsAllocated", 8))
    frame_size = bits // 8 if bits % 8 == 0 else 0
    if syntax.is_deflated or not syntax.is_little_endian:
        # The file offset means nothing in a deflated data set, and big endian
        # values need swapping: such frames are always decoded.
        if "Rows" not in ds:
            return ds, None
        return ds, PixelData(syntax, frames, value_offset=-1, length=0, frame_size=frame_size)
    header = stream.read(8)
    if len(header) < 8 or int.from_bytes(header[0:2], "little") != 0x7FE0:
        return ds, None
    if int.from_bytes(header[2:4], "little") != 0x0010:
        return ds, None  # Float / Double Float Pixel Data: not frames kuva serves
    if syntax.is_implicit_VR:
        length = int.from_bytes(header[4:8], "little")
    else:
        length = int.from_bytes(stream.read(4), "little")  # OB/OW: 2 reserved bytes first
    return ds, PixelData(
        transfer_syntax=syntax,
        number_of_frames=frames,
        value_offset=stream.tell(),
        length=None if length == _UNDEFINED else length,
        frame_size=frame_size,
    )


def check_frames(pixels: PixelData | None, numbers: list[int]) -> PixelData:
    """Raise BulkDataError unless every frame number exists (1-based)."""
    if pixels is None:
        raise BulkDataError("the instance has no pixel data")
    beyond = [n for n in numbers if n < 1 or n > pixels.number_of_frames]
    if beyond:
        raise BulkDataError(
            f"frame {beyond[0]} does not exist: the instance has {pixels.number_of_frames} frame(s)"
        )
    return pixels


def stored_frames(open_stream: Opener, pixels: PixelData, numbers: list[int]) -> Iterator[bytes]:
    """The requested frames' bytes as stored: native little endian or compressed."""
    if pixels.native_little_endian:
        if pixels.frame_size == 0:
            raise BulkDataError("frames of 1-bit pixel data are not byte aligned")
        with open_stream() as stream:
            for number in numbers:
                stream.seek(pixels.value_offset + (number - 1) * pixels.frame_size)
                data = stream.read(pixels.frame_size)
                if len(data) != pixels.frame_size:
                    raise BulkDataError(f"frame {number}: the stored object is truncated")
                yield data
        return
    if not pixels.encapsulated:
        raise BulkDataError(f"{pixels.transfer_syntax.name}: frames must be decoded")
    wanted = set(numbers)
    last = max(wanted)
    found: dict[int, bytes] = {}
    with open_stream() as stream:
        stream.seek(pixels.value_offset)
        for index, frame in enumerate(
            generate_frames(stream, number_of_frames=pixels.number_of_frames), start=1
        ):
            if index in wanted:
                found[index] = frame
            if index >= last:
                break
    # Frames may be asked for in any order, or twice; kept only while needed.
    for number in numbers:
        if number not in found:
            raise BulkDataError(f"frame {number} could not be read from the stored object")
        yield found[number]


def decoded_frames(open_stream: Opener, pixels: PixelData, numbers: list[int]) -> Iterator[bytes]:
    """The requested frames decoded to native little endian bytes, one at a time.

    Colour frames come out interleaved (Planar Configuration 0) and, for YBR
    JPEG, converted to RGB, as pydicom's decoders give them. pydicom decodes a
    frame straight from the file, except in a deflated data set: that one is
    inflated once, whole, in memory (deflate is rare for images).
    """
    inflated: Dataset | None = None
    if pixels.transfer_syntax.is_deflated:
        with open_stream() as stream:
            inflated = dcmread(stream)
    for number in numbers:
        try:
            if inflated is not None:
                array = pixel_array(inflated, index=number - 1)
            else:
                with open_stream() as stream:
                    array = pixel_array(stream, index=number - 1)
        except Exception as exc:
            raise BulkDataError(
                f"frame {number} cannot be decoded here: {type(exc).__name__}: {exc}"
            ) from exc
        yield np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def _find(ds: Dataset, tag: int) -> DataElement | None:
    """The element with ``tag``: at the top level first, else the first in a sequence."""
    if tag in ds:
        return ds[tag]
    for element in ds:
        if element.VR == "SQ":
            for item in element.value:
                found = _find(item, tag)
                if found is not None:
                    return found
    return None


def element_value(open_stream: Opener, tag: int) -> bytes:
    """The raw value of a (non pixel data) bulk data element.

    The index's DICOM JSON names bulk data by tag (``bulk:<tag>``); an element
    nested in a sequence is found by the first one with that tag, depth first.
    """
    with open_stream() as stream:
        ds = dcmread(stream, stop_before_pixels=True)
    element = _find(ds, Tag(tag))
    if element is None or element.value is None:
        raise BulkDataError(f"no bulk data element ({tag >> 16:04X},{tag & 0xFFFF:04X})")
    value = element.value
    if isinstance(value, bytes):
        return value
    raise BulkDataError(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) is not bulk data")


def native_pixel_chunks(
    open_stream: Opener, pixels: PixelData, chunk_size: int = 1024 * 1024
) -> Iterator[bytes]:
    """The whole native Pixel Data value as stored, in chunks."""
    assert pixels.length is not None
    with open_stream() as stream:
        stream.seek(pixels.value_offset)
        remaining = pixels.length
        while remaining > 0:
            chunk = stream.read(min(chunk_size, remaining))
            if not chunk:
                raise BulkDataError("the stored object is truncated")
            remaining -= len(chunk)
            yield chunk
