"""Frames and bulk data read out of stored Part 10 objects at their offsets (PS3.5 8.1.1, A.4)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

from kuva.codec.bulkdata import (
    BulkDataError,
    check_frames,
    decoded_frames,
    element_value,
    native_pixel_chunks,
    read_header,
    stored_frames,
)
from tests.support.synthetic import make_ct_series, make_multiframe


def opener(path: Path) -> Callable[[], BinaryIO]:
    return lambda: path.open("rb")


def test_native_frames_at_their_offsets(tmp_path: Path) -> None:
    path = make_multiframe(tmp_path / "mf.dcm", 5 * 16 * 16 * 2, rows=16, cols=16)
    with path.open("rb") as stream:
        _, pixels = read_header(stream)
    assert pixels is not None and pixels.native_little_endian
    assert pixels.number_of_frames == 5 and pixels.frame_size == 512
    data = pydicom.dcmread(path).PixelData
    frames = list(stored_frames(opener(path), pixels, [5, 2, 2]))
    assert frames == [data[2048:2560], data[512:1024], data[512:1024]]
    assert b"".join(native_pixel_chunks(opener(path), pixels, chunk_size=100)) == data
    with pytest.raises(BulkDataError):
        check_frames(pixels, [6])


def _save(ds: Dataset, path: Path, syntax: str) -> Path:
    ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path, enforce_file_format=True)
    return path


def test_implicit_vr_header(tmp_path: Path) -> None:
    [ds] = make_ct_series(1, rows=8, cols=8)
    path = _save(ds, tmp_path / "implicit.dcm", ImplicitVRLittleEndian)
    with path.open("rb") as stream:
        _, pixels = read_header(stream)
    assert pixels is not None and pixels.length == 128
    assert next(stored_frames(opener(path), pixels, [1])) == ds.PixelData


def test_encapsulated_frames_with_several_fragments(tmp_path: Path) -> None:
    [ds] = make_ct_series(1, rows=8, cols=8)
    frames = [bytes([n]) * 40 for n in range(1, 4)]
    ds.PixelData = encapsulate(frames, fragments_per_frame=2, has_bot=True)
    ds.NumberOfFrames = 3
    ds["PixelData"].VR = "OB"
    path = _save(ds, tmp_path / "encapsulated.dcm", RLELossless)
    with path.open("rb") as stream:
        _, pixels = read_header(stream)
    assert pixels is not None and pixels.encapsulated
    assert list(stored_frames(opener(path), pixels, [3, 1])) == [frames[2], frames[0]]


def test_decoded_frames_are_little_endian_native(tmp_path: Path) -> None:
    [ds] = make_ct_series(1, rows=8, cols=8)
    ds.compress(RLELossless, generate_instance_uid=False)
    path = tmp_path / "rle.dcm"
    ds.save_as(path, enforce_file_format=True)
    with path.open("rb") as stream:
        _, pixels = read_header(stream)
    assert pixels is not None
    [frame] = decoded_frames(opener(path), pixels, [1])
    expected = pydicom.dcmread(path).pixel_array
    assert frame == expected.astype(expected.dtype.newbyteorder("<")).tobytes()


def test_element_value_and_no_pixel_data(tmp_path: Path) -> None:
    [ds] = make_ct_series(1, rows=8, cols=8)
    ds.add_new(0x00420011, "OB", b"\x01\x02" * 600)  # Encapsulated Document, as bulk data
    del ds.PixelData
    path = _save(ds, tmp_path / "doc.dcm", ExplicitVRLittleEndian)
    assert element_value(opener(path), 0x00420011) == b"\x01\x02" * 600
    with pytest.raises(BulkDataError):
        element_value(opener(path), 0x00100010)  # a name is not bulk data
    with path.open("rb") as stream:
        _, pixels = read_header(stream)
    assert pixels is None
    with pytest.raises(BulkDataError):
        check_frames(pixels, [1])
