"""The C-STORE hot path's sink (dicom.storage_scp.StoreSink): canonical file meta plus
the data set as it streams in, and the header parsed from the kept first bytes, or
from the blob file when the header is longer than what is kept."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from kuva.codec.part10 import canonical_file_meta
from kuva.dicom import storage_scp
from kuva.dicom.storage_scp import StoreSink
from kuva.storage.filesystem import FileBlobStore
from tests.support.synthetic import make_ct_series


def _data_set(description_length: int = 0) -> tuple[str, bytes]:
    (ds,) = make_ct_series(1, rows=64, cols=64)
    if description_length:
        ds.ImageComments = "x" * description_length  # a long header element (LT)
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_dataset(fp, ds)
    return str(ds.SOPInstanceUID), fp.getvalue()


def _fed(tmp_path: Path, uid: str, data: bytes, chunk: int) -> StoreSink:
    sink = StoreSink(
        FileBlobStore(tmp_path).open_writer(), CTImageStorage, uid, ExplicitVRLittleEndian
    )
    view = memoryview(data)
    for start in range(0, len(data), chunk):
        sink.write(view[start : start + chunk])
    sink.close()
    return sink


@pytest.mark.parametrize("chunk", [1, 1000, 1 << 20])
def test_blob_is_canonical_meta_and_the_data_set(tmp_path: Path, chunk: int) -> None:
    uid, data = _data_set()
    sink = _fed(tmp_path, uid, data, chunk)
    ref = sink.blob.commit()
    stored = (tmp_path / ref.key).read_bytes()
    assert stored == canonical_file_meta(CTImageStorage, uid, ExplicitVRLittleEndian) + data
    assert sink.size == len(data)


@pytest.mark.parametrize("kept", [200, 5000, 9000, 1 << 20])
def test_header_from_the_kept_bytes_or_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kept: int
) -> None:
    """Whether the kept bytes end before, inside or after the header (an 8 KB
    element in it), the header read is the object's up to its pixel data."""
    monkeypatch.setattr(storage_scp, "HEADER_BYTES", kept)
    uid, data = _data_set(description_length=8000)
    sink = _fed(tmp_path, uid, data, 4096)
    sink.blob.flush()
    header = sink.header()
    assert str(header.SOPInstanceUID) == uid
    assert len(header.ImageComments) == 8000
    assert "PixelData" not in header
    assert len(sink.head) == min(kept, len(data))
    whole = dcmread(sink.blob.name, stop_before_pixels=True)
    assert header == whole
    sink.discard()
