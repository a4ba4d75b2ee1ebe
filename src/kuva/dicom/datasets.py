"""DIMSE data sets as pydicom Datasets: decoding what a peer sent in a presentation
context's transfer syntax, and encoding what kuva sends back (PS3.5 7, 10; PS3.7
6.3.1: a message's data set is encoded in its context's transfer syntax, without
File Meta Information).

The engine (kuva.dicom.net) hands data sets over as bytes; the adapters decode the
small ones they need to read (C-FIND and C-GET/C-MOVE identifiers, N-ACTION
Action Information) here. C-STORE data sets are never decoded whole: they stream
into the blob store (dicom.storage_scp).
"""

from __future__ import annotations

import io
import zlib

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.uid import UID


class DataSetError(ValueError):
    """A data set that cannot be decoded or encoded in its transfer syntax."""


def decode(data: bytes, transfer_syntax: str) -> Dataset:
    """The data set ``data`` encoded in ``transfer_syntax``; raises DataSetError."""
    syntax = UID(transfer_syntax)
    try:
        if syntax.is_deflated:
            data = zlib.decompress(data, -zlib.MAX_WBITS)
        return read_dataset(io.BytesIO(data), syntax.is_implicit_VR, syntax.is_little_endian)
    except Exception as exc:
        raise DataSetError(f"data set cannot be decoded ({type(exc).__name__})") from exc


def encode(ds: Dataset, transfer_syntax: str) -> bytes:
    """``ds`` encoded in ``transfer_syntax``; raises DataSetError."""
    syntax = UID(transfer_syntax)
    fp = DicomBytesIO()
    fp.is_implicit_VR = syntax.is_implicit_VR
    fp.is_little_endian = syntax.is_little_endian
    try:
        write_dataset(fp, ds)
    except Exception as exc:
        raise DataSetError(f"data set cannot be encoded ({type(exc).__name__}: {exc})") from exc
    data = fp.getvalue()
    if syntax.is_deflated:
        compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -zlib.MAX_WBITS)
        data = compressor.compress(data) + compressor.flush()
        if len(data) % 2:
            data += b"\x00"
    return data
