"""Accept headers and the transfer syntax chosen for WADO-RS parts (PS3.18 8.7)."""

from __future__ import annotations

import pytest
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
)

from kuva.dicomweb.media import (
    DICOM,
    OCTET_STREAM,
    NotAcceptable,
    dicom_transfer_syntax,
    frame_encoding,
    parse_accept,
)


def test_missing_header_and_wildcards_mean_the_default_part_type() -> None:
    for header in (None, "", "*/*", "multipart/related"):
        [entry] = parse_accept(header, DICOM)
        assert entry.part_type == DICOM
        assert entry.transfer_syntax is None


def test_entries_are_ordered_by_quality_then_position() -> None:
    header = (
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.5; q=0.5,'
        "multipart/related; type=application/dicom; transfer-syntax=*,"
        'multipart/related; type="application/dicom"; q=0'
    )
    entries = parse_accept(header, DICOM)
    assert [e.transfer_syntax for e in entries] == ["*", RLELossless]


def test_quoted_commas_do_not_split() -> None:
    [entry] = parse_accept('multipart/related; type="application/dicom"; x="a,b"', DICOM)
    assert entry.part_type == DICOM


@pytest.mark.parametrize("header", ["dicom", "multipart/related; q=high"])
def test_unreadable_entries(header: str) -> None:
    with pytest.raises(ValueError):
        parse_accept(header, DICOM)


def test_dicom_default_is_explicit_little_endian_and_star_is_as_stored() -> None:
    default = parse_accept(None, DICOM)
    assert dicom_transfer_syntax(ImplicitVRLittleEndian, default) == ExplicitVRLittleEndian
    assert dicom_transfer_syntax(JPEG2000Lossless, default) == ExplicitVRLittleEndian
    stored = parse_accept('multipart/related; type="application/dicom"; transfer-syntax=*', DICOM)
    assert dicom_transfer_syntax(JPEG2000Lossless, stored) == JPEG2000Lossless
    assert dicom_transfer_syntax(ExplicitVRBigEndian, stored) == ExplicitVRBigEndian


def test_dicom_never_converts_to_a_lossy_syntax_or_from_big_endian() -> None:
    lossy = parse_accept(
        f'multipart/related; type="application/dicom"; transfer-syntax={JPEGBaseline8Bit}', DICOM
    )
    with pytest.raises(NotAcceptable):
        dicom_transfer_syntax(ExplicitVRLittleEndian, lossy)
    with pytest.raises(NotAcceptable):
        dicom_transfer_syntax(ExplicitVRBigEndian, parse_accept(None, DICOM))
    fallback = parse_accept(
        f'multipart/related; type="application/dicom"; transfer-syntax={JPEGBaseline8Bit},'
        'multipart/related; type="application/dicom"; q=0.1',
        DICOM,
    )
    assert dicom_transfer_syntax(ExplicitVRLittleEndian, fallback) == ExplicitVRLittleEndian


def test_octet_stream_only_refuses_dicom() -> None:
    entries = parse_accept('multipart/related; type="application/octet-stream"', DICOM)
    with pytest.raises(NotAcceptable):
        dicom_transfer_syntax(ExplicitVRLittleEndian, entries)


def test_frames_compressed_as_stored_or_decoded() -> None:
    anything = parse_accept('multipart/related; type="*/*"', OCTET_STREAM)
    j2k = frame_encoding(JPEG2000Lossless, True, anything)
    assert (j2k.media_type, j2k.transfer_syntax, j2k.as_stored) == (
        "image/jp2",
        JPEG2000Lossless,
        True,
    )
    octet = parse_accept('multipart/related; type="application/octet-stream"', OCTET_STREAM)
    decoded = frame_encoding(JPEG2000Lossless, True, octet)
    assert (decoded.media_type, decoded.transfer_syntax, decoded.as_stored) == (
        OCTET_STREAM,
        ExplicitVRLittleEndian,
        False,
    )
    rle = parse_accept('multipart/related; type="image/x-dicom-rle"', OCTET_STREAM)
    assert frame_encoding(RLELossless, True, rle).media_type == "image/dicom-rle"
    with pytest.raises(NotAcceptable):
        frame_encoding(
            RLELossless, True, parse_accept('multipart/related; type="image/jp2"', OCTET_STREAM)
        )


def test_native_frames_are_octet_stream() -> None:
    native = frame_encoding(ExplicitVRLittleEndian, False, parse_accept(None, OCTET_STREAM))
    assert (native.media_type, native.as_stored) == (OCTET_STREAM, True)
    with pytest.raises(NotAcceptable):
        frame_encoding(
            ExplicitVRLittleEndian,
            False,
            parse_accept('multipart/related; type="image/jpeg"', OCTET_STREAM),
        )
