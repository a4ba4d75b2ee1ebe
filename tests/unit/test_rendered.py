"""codec.rendered: frames as JPEG/PNG (PS3.18 rendered resources), with the
standard's grayscale pipeline, checked pixel by pixel on PNG output."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    RLELossless,
    generate_uid,
)

from kuva.codec.rendered import (
    JPEG,
    PNG,
    Rendering,
    RenderingError,
    Viewport,
    Window,
    parse_quality,
    render,
)
from tests.support.synthetic import ToolMissingError, make_transfer_syntax_files


def ct(values: np.ndarray, **attributes: object) -> io.BytesIO:
    """A CT whose stored values are ``values`` (Rescale -1024, so HU = value - 1024)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = values.shape[-2:]
    if values.ndim == 3:
        ds.NumberOfFrames = values.shape[0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.PixelData = values.astype(np.uint16).tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    out.seek(0)
    return out


def pixels(image: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(image)))


# HU -1000 .. 2000 in a row of 16 values.
RAMP = np.array([np.linspace(24, 3024, 16)] * 4, dtype=np.uint16)


def test_the_window_maps_hounsfield_units_as_the_standard_says() -> None:
    soft = pixels(render(ct(RAMP), 1, Rendering(PNG, Window(40, 400))))
    hu = RAMP[0].astype(float) - 1024
    assert soft.shape == RAMP.shape and soft.dtype == np.uint8
    assert all(soft[0][hu <= 40 - 200] == 0) and all(soft[0][hu >= 40 + 200] == 255)
    lung = pixels(render(ct(RAMP), 1, Rendering(PNG, Window(-600, 1500))))
    assert not np.array_equal(soft, lung)  # another window, other pixels
    linear = ((hu - (-600 - 0.5)) / (1500 - 1) + 0.5) * 255
    assert np.array_equal(lung[0], np.clip(np.rint(linear), 0, 255).astype(np.uint8))
    sigmoid = pixels(render(ct(RAMP), 1, Rendering(PNG, Window(40, 400, "sigmoid"))))
    expected = np.rint(255 / (1 + np.exp(-4 * (hu - 40) / 400))).astype(np.uint8)
    assert np.array_equal(sigmoid[0], expected)


def test_without_a_window_the_object_s_then_the_data_range() -> None:
    own = pixels(render(ct(RAMP, WindowCenter=40, WindowWidth=400), 1, Rendering(PNG)))
    assert np.array_equal(own, pixels(render(ct(RAMP), 1, Rendering(PNG, Window(40, 400)))))
    ranged = pixels(render(ct(RAMP), 1, Rendering(PNG)))
    assert ranged.min() == 0 and ranged.max() == 255 and list(ranged[0]) == sorted(ranged[0])
    inverted = pixels(render(ct(RAMP, PhotometricInterpretation="MONOCHROME1"), 1, Rendering(PNG)))
    assert np.array_equal(inverted, 255 - ranged)


def test_frames_viewport_and_formats() -> None:
    frames = np.stack([RAMP, RAMP[:, ::-1]])
    first = pixels(render(ct(frames), 1, Rendering(PNG)))
    second = pixels(render(ct(frames), 2, Rendering(PNG)))
    assert np.array_equal(first[:, ::-1], second)
    with pytest.raises(RenderingError, match="frame 3 of 2"):
        render(ct(frames), 3, Rendering(PNG))
    fitted = Image.open(io.BytesIO(render(ct(RAMP), 1, Rendering(JPEG, viewport=Viewport(8, 8)))))
    assert fitted.format == "JPEG" and fitted.size == (8, 2)  # 16x4 fitted into 8x8
    region = pixels(render(ct(RAMP), 1, Rendering(PNG, viewport=Viewport(4, 4, (0, 0, 4, 4)))))
    assert region.shape == (4, 4) and np.array_equal(region, first[:4, :4])


@pytest.mark.parametrize(
    ("text", "problem"),
    [("40", "center,width"), ("a,b", "numbers"), ("40,0", "width"), ("40,400,cubic", "function")],
)
def test_bad_windows(text: str, problem: str) -> None:
    with pytest.raises(RenderingError, match=problem):
        Window.parse(text)


def test_bad_viewports_and_quality() -> None:
    assert Viewport.parse("128,128") == Viewport(128, 128)
    assert Viewport.parse("64,32,0,0,16,8").region == (0, 0, 16, 8)
    for text in ("128", "0,10", "a,b", "10,10,-1,0,5,5", "99999,10"):
        with pytest.raises(RenderingError, match="viewport"):
            Viewport.parse(text)
    assert parse_quality(None) == 90 and parse_quality("55") == 55
    for text in ("0", "101", "x"):
        with pytest.raises(RenderingError, match="quality"):
            parse_quality(text)


def test_compressed_sources_render_as_their_decompressed_copy(tmp_path: Path) -> None:
    """JPEG Lossless (dcmtk's dcmcjpeg), JPEG 2000 and RLE, one frame decoded from the
    stream by pydicom with pylibjpeg: the same image as an uncompressed copy."""
    try:
        files = make_transfer_syntax_files(tmp_path, rows=32, cols=32)
    except ToolMissingError as exc:
        pytest.skip(str(exc))
    for syntax in (JPEGLosslessSV1, JPEG2000Lossless, RLELossless):
        source = pydicom.dcmread(files[syntax])
        assert source.file_meta.TransferSyntaxUID == syntax
        copy = ct(source.pixel_array, WindowCenter=40, WindowWidth=400)
        with files[syntax].open("rb") as stream:
            rendered = pixels(render(stream, 1, Rendering(PNG)))
        assert rendered.std() > 0 and np.array_equal(
            rendered, pixels(render(copy, 1, Rendering(PNG)))
        )
