"""Rendered images (PS3.18 8.3.5, 10.4.1.1.5; PS3.4 Annex N): a frame of a stored
object as a consumer-format image, JPEG or PNG, for viewers and the console.

One frame is decoded (pydicom, with pylibjpeg for JPEG, JPEG-LS, JPEG 2000 and RLE),
never the whole object. The grayscale pipeline is the standard's (PS3.4 N.2.1):

1. Modality LUT: Rescale Slope/Intercept, or a Modality LUT Sequence.
2. VOI: the ``window`` parameter when given (``center,width[,function]``, function
   ``linear``, ``linear-exact`` or ``sigmoid``, PS3.3 C.11.2.1.2-3); else the
   object's first VOI LUT, or its first Window Center/Width with its VOI LUT
   Function; else the frame's data range.
3. MONOCHROME1 is inverted, so that white is the highest value on output.

Colour frames (RGB, YBR converted by the decoder, PALETTE COLOR through its
palette) are scaled to 8 bits. Then the ``viewport`` (``vw,vh[,sx,sy,sw,sh]``): the
source region ``sx,sy,sw,sh`` (default: the whole frame) is scaled to fit ``vw`` by
``vh`` keeping its aspect ratio. JPEG takes ``quality`` (1-100, default 90).

Pillow writes the JPEG and PNG files: pydicom's encoders make DICOM pixel data, not
viewable images.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import pydicom
from numpy.typing import NDArray
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi_lut
from pydicom.pixels.utils import pixel_array

JPEG = "image/jpeg"
PNG = "image/png"
MEDIA_TYPES = (JPEG, PNG)
DEFAULT_QUALITY = 90
MAX_VIEWPORT = 4096
FUNCTIONS = ("linear", "linear-exact", "sigmoid")


class RenderingError(ValueError):
    """A rendering parameter that cannot be used, or a frame that cannot be rendered;
    the message names the parameter."""


@dataclass(frozen=True)
class Window:
    center: float
    width: float
    function: str = "linear"

    @classmethod
    def parse(cls, text: str) -> Window:
        """``center,width[,function]`` (PS3.18 8.3.5.1.4)."""
        parts = [p.strip() for p in text.split(",")]
        if len(parts) not in (2, 3):
            raise RenderingError("window: center,width[,function]")
        try:
            center, width = float(parts[0]), float(parts[1])
        except ValueError:
            raise RenderingError("window: center and width must be numbers") from None
        function = parts[2].lower() if len(parts) == 3 else "linear"
        if function not in FUNCTIONS:
            raise RenderingError(f"window: function must be one of {', '.join(FUNCTIONS)}")
        if width <= 0 or (width < 1 and function == "linear"):
            raise RenderingError("window: width must be at least 1 (above 0 for linear-exact)")
        return cls(center, width, function)


@dataclass(frozen=True)
class Viewport:
    width: int
    height: int
    region: tuple[int, int, int, int] | None = None  # sx, sy, sw, sh

    @classmethod
    def parse(cls, text: str) -> Viewport:
        """``vw,vh[,sx,sy,sw,sh]`` (PS3.18 8.3.5.1.3)."""
        try:
            values = [int(p) for p in text.split(",")]
        except ValueError:
            raise RenderingError("viewport: vw,vh[,sx,sy,sw,sh] as integers") from None
        if len(values) not in (2, 6):
            raise RenderingError("viewport: vw,vh[,sx,sy,sw,sh]")
        width, height = values[:2]
        if not (0 < width <= MAX_VIEWPORT and 0 < height <= MAX_VIEWPORT):
            raise RenderingError(f"viewport: vw and vh from 1 to {MAX_VIEWPORT}")
        region = None
        if len(values) == 6:
            sx, sy, sw, sh = values[2:]
            if sx < 0 or sy < 0 or sw <= 0 or sh <= 0:
                raise RenderingError("viewport: sx, sy from 0; sw, sh above 0")
            region = (sx, sy, sw, sh)
        return cls(width, height, region)


@dataclass(frozen=True)
class Rendering:
    media_type: str = JPEG
    window: Window | None = None
    viewport: Viewport | None = None
    quality: int = DEFAULT_QUALITY

    def key(self) -> str:
        """The parameters as text (a cache key with the object's digest)."""
        return repr((self.media_type, self.window, self.viewport, self.quality))


def parse_quality(text: str | None) -> int:
    if text is None:
        return DEFAULT_QUALITY
    try:
        value = int(text)
    except ValueError:
        raise RenderingError("quality: an integer from 1 to 100") from None
    if not 1 <= value <= 100:
        raise RenderingError("quality: an integer from 1 to 100")
    return value


def render(stream: BinaryIO, frame: int, rendering: Rendering) -> bytes:
    """Frame ``frame`` (1-based) of the Part 10 object in ``stream`` as an image."""
    header = pydicom.dcmread(stream, stop_before_pixels=True)
    frames = int(header.get("NumberOfFrames", 1) or 1)
    if "Rows" not in header or "Columns" not in header:
        raise RenderingError("the instance has no pixel data to render")
    if not 1 <= frame <= frames:
        raise RenderingError(f"frame {frame} of {frames}: no such frame")
    stream.seek(0)
    try:
        pixels = pixel_array(stream, index=frame - 1)
    except Exception as exc:  # no decoder, corrupt data: not renderable
        raise RenderingError(f"the frame cannot be decoded: {type(exc).__name__}") from exc
    image = _to_8bit(pixels, header, rendering.window)
    return _encode(_viewport(image, rendering.viewport), rendering)


def _to_8bit(pixels: NDArray[np.generic], ds: Dataset, window: Window | None) -> Image.Image:
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(pixels, ds)
        return Image.fromarray(_scale(rgb.astype(np.float64), 0.0, float(rgb.max() or 1)), "RGB")
    if int(ds.get("SamplesPerPixel", 1) or 1) > 1:
        top = float(2 ** int(ds.get("BitsStored", 8)) - 1)
        return Image.fromarray(_scale(pixels.astype(np.float64), 0.0, top), "RGB")
    values = apply_modality_lut(pixels, ds).astype(np.float64)
    if window is not None:
        out = _windowed(values, window)
    elif "VOILUTSequence" in ds:
        lut = apply_voi_lut(values, ds, index=0, prefer_lut=True).astype(np.float64)
        depth = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        out = _scale(lut, 0.0, float(2**depth - 1))
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        center = ds.WindowCenter[0] if ds["WindowCenter"].VM > 1 else ds.WindowCenter
        width = ds.WindowWidth[0] if ds["WindowWidth"].VM > 1 else ds.WindowWidth
        function = str(ds.get("VOILUTFunction", "LINEAR")).lower().replace("_", "-")
        chosen = function if function in FUNCTIONS else "linear"
        out = _windowed(values, Window(float(center), max(float(width), 1.0), chosen))
    else:
        out = _scale(values, float(values.min()), float(values.max()))
    if photometric == "MONOCHROME1":
        out = 255 - out
    return Image.fromarray(out, "L")


def _windowed(values: NDArray[np.float64], window: Window) -> NDArray[np.uint8]:
    """PS3.3 C.11.2.1.2.1 (linear), C.11.2.1.3.2 (linear-exact), C.11.2.1.3.1
    (sigmoid), onto 0-255."""
    c, w = window.center, window.width
    if window.function == "sigmoid":
        out = 255.0 / (1.0 + np.exp(-4.0 * (values - c) / w))
    elif window.function == "linear-exact":
        out = ((values - (c - w / 2)) / w) * 255.0
    else:
        out = ((values - (c - 0.5)) / (w - 1) + 0.5) * 255.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _scale(values: NDArray[np.float64], low: float, high: float) -> NDArray[np.uint8]:
    span = high - low
    if span <= 0:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.clip(np.rint((values - low) / span * 255.0), 0, 255).astype(np.uint8)


def _viewport(image: Image.Image, viewport: Viewport | None) -> Image.Image:
    if viewport is None:
        return image
    if viewport.region is not None:
        sx, sy, sw, sh = viewport.region
        if sx >= image.width or sy >= image.height:
            raise RenderingError("viewport: the source region lies outside the frame")
        image = image.crop((sx, sy, min(sx + sw, image.width), min(sy + sh, image.height)))
    scale = min(viewport.width / image.width, viewport.height / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR)


def _encode(image: Image.Image, rendering: Rendering) -> bytes:
    out = io.BytesIO()
    if rendering.media_type == PNG:
        image.save(out, "PNG", optimize=False)
    else:
        image.save(out, "JPEG", quality=rendering.quality)
    return out.getvalue()
