"""Synthetic DICOM test data for kuva's tests and benchmarks.

Everything produced here is made up. Patients carry Finnish *test* personal
identity codes (individual number 900-999, so the 8th character is ``9``, for
example ``010181-900C``) and names such as ``Testinen^Maija`` or ``Äijälä^Öljy``;
pixel data is computed from numpy gradients and seeded noise. Nothing is derived
from real people or real images, and :func:`make_ct_series` refuses identity
codes that are not test codes.

Generators:

* :func:`make_ct_series`: a CT Image Storage series with the attributes a real
  scanner writes (512 x 512, 16 bits allocated, about 0.5 MB per instance).
* :func:`write_series`: save datasets as DICOM Part 10 files.
* :func:`make_transfer_syntax_files`: one small CT per transfer syntax kuva must
  accept (dcmtk encodes the JPEG and JPEG-LS variants, pydicom the others).
* :func:`make_multiframe`: a multi-frame object of up to a few GB, streamed to
  disk without holding the pixel data in memory.
* :func:`make_bad_objects`: Part 10 files an archive must refuse (see there for
  the ``storescu`` options that send them anyway).
"""

from __future__ import annotations

import copy
import datetime as dt
import os
import re
import shutil
import struct
import subprocess
import tempfile
import warnings
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    RLELossless,
    generate_uid,
)

from kuva.model.identity import FINNISH_PIC_OID, PIC_CENTURIES, pic_check_character, pic_problem

__all__ = [
    "BAD_STUDY_UIDS",
    "DEFAULT_PATIENT_ID",
    "DEFAULT_PATIENT_NAME",
    "FINNISH_LETTERS_PATIENT_NAME",
    "FINNISH_PIC_ISSUER",
    "STORESCU_BAD_OBJECT_ARGS",
    "TRANSFER_SYNTAX_FILE_NAMES",
    "ToolMissingError",
    "finnish_test_pic",
    "is_finnish_test_pic",
    "make_bad_objects",
    "make_ct_series",
    "make_multiframe",
    "make_transfer_syntax_files",
    "parse_finnish_pic",
    "without_specific_character_set",
    "write_series",
]

StrPath = str | os.PathLike[str]
Pixels = npt.NDArray[np.uint16]

#: Issuer of Patient ID for Finnish personal identity codes (the DVV OID).
FINNISH_PIC_ISSUER = FINNISH_PIC_OID
#: A valid Finnish test identity code (born 1981-01-01, individual number 900: female).
DEFAULT_PATIENT_ID = "010181-900C"
DEFAULT_PATIENT_NAME = "Testinen^Maija"
#: A name that needs a character set beyond ASCII (Finnish letters).
FINNISH_LETTERS_PATIENT_NAME = "Äijälä^Öljy"

_PIC_PATTERN = re.compile(r"^(\d{2})(\d{2})(\d{2})([-+A-FU-Y])(\d{3})([0-9A-Y])$")
_PIC_CENTURY_SIGN = {1800: "+", 1900: "-", 2000: "A"}

_IMPLEMENTATION_VERSION = "KUVA_TEST_1"
_FIELD_OF_VIEW_MM = 350.0
_HU_OFFSET = 1024  # stored value = HU + 1024 (RescaleIntercept -1024)


class ToolMissingError(RuntimeError):
    """A command line tool (dcmtk) needed to produce a file is not installed."""


# --------------------------------------------------------------------------- identity codes


def finnish_test_pic(birth_date: dt.date, individual_number: int = 900) -> str:
    """Return a valid Finnish *test* personal identity code.

    Test codes have an individual number from 900 to 999; an even number means
    female, an odd one male. The check character is computed as the real
    algorithm does, so validators accept the code.
    """
    if not 900 <= individual_number <= 999:
        raise ValueError("test identity codes use individual numbers 900-999")
    century = birth_date.year // 100 * 100
    if century not in _PIC_CENTURY_SIGN:
        raise ValueError(f"no century sign for year {birth_date.year}")
    digits = f"{birth_date:%d%m%y}{individual_number:03d}"
    check = pic_check_character(digits)
    return f"{digits[:6]}{_PIC_CENTURY_SIGN[century]}{digits[6:]}{check}"


def parse_finnish_pic(pic: str) -> tuple[dt.date, str] | None:
    """Return (birth date, DICOM sex "M"/"F") of a valid identity code, else None."""
    if pic_problem(pic) is not None:
        return None
    born = dt.date(PIC_CENTURIES[pic[6]] + int(pic[4:6]), int(pic[2:4]), int(pic[:2]))
    return born, "M" if int(pic[7:10]) % 2 else "F"


def is_finnish_test_pic(pic: str) -> bool:
    """True if ``pic`` is a valid Finnish identity code reserved for testing."""
    return parse_finnish_pic(pic) is not None and pic[7] == "9"


def _require_test_identity(patient_id: str) -> None:
    """Refuse anything shaped like a real (non-test) Finnish identity code."""
    if _PIC_PATTERN.match(patient_id) and patient_id[7] != "9":
        raise ValueError(
            f"{patient_id!r} looks like a real identity code; use a test code "
            "(individual number 900-999, e.g. finnish_test_pic())"
        )


# --------------------------------------------------------------------------- pixel data


def _phantom_slice(
    rows: int, cols: int, position: float, rng: np.random.Generator, max_value: int
) -> Pixels:
    """A CT-like axial slice: body ellipse, two lungs, a spine, gradients and noise.

    ``position`` in [0, 1] moves through the volume (the lungs grow and shrink).
    Values are stored values, i.e. Hounsfield units + 1024, clipped to ``max_value``.
    """
    y = np.linspace(-1.0, 1.0, rows, dtype=np.float32)[:, None]
    x = np.linspace(-1.0, 1.0, cols, dtype=np.float32)[None, :]
    body = (x / 0.9) ** 2 + (y / 0.7) ** 2 < 1.0
    lung_radius = 0.2 + 0.15 * float(np.sin(np.pi * position))
    lungs = ((np.abs(x) - 0.4) ** 2 + (y + 0.05) ** 2) < lung_radius**2
    spine = (x**2 + (y - 0.5) ** 2) < 0.01
    hu = np.where(body, 40.0 + 60.0 * x + 30.0 * y, -1000.0)
    hu = np.where(body & lungs, -850.0, hu)
    hu = np.where(spine, 700.0, hu)
    hu = hu + rng.normal(0.0, 12.0, size=(rows, cols))
    stored: Pixels = np.clip(hu + _HU_OFFSET, 0, max_value).astype(np.uint16)
    return stored


# --------------------------------------------------------------------------- datasets


def _ds(value: float) -> str:
    """Format a number for a DS element (8 significant digits fit in 16 characters)."""
    return f"{value + 0.0:.8g}"  # + 0.0 turns -0.0 into 0


def _file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> FileMetaDataset:
    """File meta information for a Part 10 file."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = _IMPLEMENTATION_VERSION
    return meta


def _accession_number(study_uid: str) -> str:
    """A stable, accession-number-looking string derived from the Study UID."""
    return f"T{zlib.crc32(study_uid.encode()) % 10**9:09d}"


def _patient_age(born: dt.date, on: dt.date) -> str:
    """DICOM AS value (e.g. "043Y") of a person born ``born`` on date ``on``."""
    years = on.year - born.year - ((on.month, on.day) < (born.month, born.day))
    return f"{max(years, 0):03d}Y"


def _patient_study_series(
    *,
    patient_id: str,
    patient_name: str | None,
    study_uid: str,
    series_uid: str,
    accession_number: str | None,
    when: dt.datetime,
    study_description: str,
    series_description: str,
    series_number: int,
    modality: str,
    body_part: str,
    specific_character_set: str,
) -> Dataset:
    """Patient, General Study, General Series and General Equipment attributes."""
    _require_test_identity(patient_id)
    parsed = parse_finnish_pic(patient_id)
    ds = Dataset()
    ds.SpecificCharacterSet = specific_character_set
    ds.StudyDate = ds.SeriesDate = f"{when:%Y%m%d}"
    ds.StudyTime = f"{when:%H%M%S}"
    ds.SeriesTime = f"{when + dt.timedelta(minutes=2):%H%M%S}"
    ds.AccessionNumber = accession_number or _accession_number(study_uid)
    ds.Modality = modality
    ds.Manufacturer = "kuva synthetic"
    ds.InstitutionName = "Testisairaala"
    ds.ReferringPhysicianName = "Testilaakari^Ville"
    ds.StationName = "KUVA-TEST01"
    ds.StudyDescription = study_description
    ds.SeriesDescription = series_description
    ds.ManufacturerModelName = "Synthetic"
    ds.PatientName = patient_name or DEFAULT_PATIENT_NAME
    ds.PatientID = patient_id
    ds.IssuerOfPatientID = FINNISH_PIC_ISSUER
    ds.PatientBirthDate = f"{parsed[0]:%Y%m%d}" if parsed else ""
    ds.PatientSex = parsed[1] if parsed else "O"
    if parsed:
        ds.PatientAge = _patient_age(parsed[0], when.date())
    ds.BodyPartExamined = body_part
    ds.DeviceSerialNumber = "0000"
    ds.SoftwareVersions = "kuva-tests"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = str(zlib.crc32(study_uid.encode()) % 10**6)
    ds.SeriesNumber = series_number
    ds.FrameOfReferenceUID = generate_uid()
    ds.PositionReferenceIndicator = ""
    return ds


def _ct_series_template(
    base: Dataset, *, rows: int, cols: int, bits_stored: int, slice_thickness: float
) -> Dataset:
    """Add CT Image, Image Plane and Image Pixel attributes shared by a series."""
    ds = base
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.AcquisitionDate = ds.ContentDate = ds.StudyDate
    ds.SliceThickness = _ds(slice_thickness)
    ds.KVP = "120"
    ds.DataCollectionDiameter = "500"
    ds.ReconstructionDiameter = _ds(_FIELD_OF_VIEW_MM)
    ds.ConvolutionKernel = "B30f"
    ds.PatientPosition = "HFS"
    ds.ProtocolName = "Synthetic thorax"
    ds.AcquisitionNumber = 1
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.PixelSpacing = [_ds(_FIELD_OF_VIEW_MM / rows), _ds(_FIELD_OF_VIEW_MM / cols)]
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.RescaleIntercept = str(-_HU_OFFSET)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    return ds


def make_ct_series(
    n: int,
    *,
    rows: int = 512,
    cols: int = 512,
    patient_id: str = DEFAULT_PATIENT_ID,
    patient_name: str | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    accession_number: str | None = None,
    study_datetime: dt.datetime | None = None,
    study_description: str = "TT keuhkot",
    series_description: str = "Keuhkot 1.0 B30f",
    series_number: int = 1,
    body_part: str = "CHEST",
    specific_character_set: str = "ISO_IR 192",
    bits_stored: int = 12,
    slice_thickness: float = 1.0,
    seed: int = 0,
) -> list[Dataset]:
    """Return ``n`` CT Image Storage instances of one series, in memory.

    Each dataset is Explicit VR Little Endian with file meta information and
    carries the patient, study, series, equipment, frame of reference, image
    plane and image pixel attributes a real CT writes. Pixels are 16 bits
    allocated, ``bits_stored`` stored (unsigned; RescaleIntercept -1024), so a
    default 512 x 512 slice holds 512 KiB of pixel data.

    Args:
        n: number of instances (slices).
        rows: image rows.
        cols: image columns.
        patient_id: a Finnish *test* identity code (8th character ``9``) or any
            non-identity-code string; real-looking identity codes are refused.
            Birth date, sex and age are derived from an identity code.
        patient_name: PN value; defaults to ``Testinen^Maija``.
        study_uid: StudyInstanceUID; a new UID by default.
        series_uid: SeriesInstanceUID; a new UID by default.
        accession_number: defaults to a value derived from the Study UID.
        study_datetime: study date and time; defaults to now.
        study_description: StudyDescription.
        series_description: SeriesDescription.
        series_number: SeriesNumber.
        body_part: BodyPartExamined.
        specific_character_set: SpecificCharacterSet (UTF-8 by default).
        bits_stored: BitsStored, 12 to 16.
        slice_thickness: slice thickness and spacing in mm.
        seed: seed for the pixel noise (same seed, same pixels).
    """
    if n < 0:
        raise ValueError("n must not be negative")
    if not 12 <= bits_stored <= 16:
        raise ValueError("CT stores 12 to 16 bits")
    study_uid = study_uid or generate_uid()
    when = (study_datetime or dt.datetime.now()).replace(microsecond=0)
    base = _patient_study_series(
        patient_id=patient_id,
        patient_name=patient_name,
        study_uid=study_uid,
        series_uid=series_uid or generate_uid(),
        accession_number=accession_number,
        when=when,
        study_description=study_description,
        series_description=series_description,
        series_number=series_number,
        modality="CT",
        body_part=body_part,
        specific_character_set=specific_character_set,
    )
    template = _ct_series_template(
        base, rows=rows, cols=cols, bits_stored=bits_stored, slice_thickness=slice_thickness
    )
    rng = np.random.default_rng(seed)
    return [_ct_instance(template, index, n, when, rng, slice_thickness) for index in range(n)]


def _ct_instance(
    template: Dataset,
    index: int,
    count: int,
    when: dt.datetime,
    rng: np.random.Generator,
    slice_thickness: float,
) -> Dataset:
    """One slice of a series: instance-level attributes, pixels and file meta."""
    ds = copy.deepcopy(template)
    sop_instance_uid = generate_uid()
    ds.file_meta = _file_meta(CTImageStorage, sop_instance_uid, ExplicitVRLittleEndian)
    acquired = when + dt.timedelta(minutes=3, milliseconds=250 * index)
    ds.InstanceCreationDate = f"{when:%Y%m%d}"
    ds.InstanceCreationTime = f"{acquired:%H%M%S}"
    ds.SOPInstanceUID = sop_instance_uid
    ds.AcquisitionTime = ds.ContentTime = f"{acquired:%H%M%S.%f}"[:10]  # milliseconds
    ds.InstanceNumber = index + 1
    z = -slice_thickness * index
    ds.ImagePositionPatient = [
        _ds(-_FIELD_OF_VIEW_MM / 2),
        _ds(-_FIELD_OF_VIEW_MM / 2),
        _ds(z),
    ]
    ds.SliceLocation = _ds(z)
    position = index / max(count - 1, 1)
    pixels = _phantom_slice(ds.Rows, ds.Columns, position, rng, (1 << ds.BitsStored) - 1)
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OW"
    return ds


_SPECIFIC_CHARACTER_SET = b"\x08\x00\x05\x00CS"  # tag and VR, explicit VR little endian


def without_specific_character_set(data: bytes) -> bytes:
    """An encoded data set or Part 10 file (explicit VR little endian) with its
    Specific Character Set (0008,0005) cut out: its text stays in the bytes of the
    character set it was written in, now undeclared."""
    at = data.index(_SPECIFIC_CHARACTER_SET, 132 if data[128:132] == b"DICM" else 0)
    length = int.from_bytes(data[at + 6 : at + 8], "little")
    return data[:at] + data[at + 8 + length :]


def write_series(datasets: Iterable[Dataset], directory: StrPath) -> list[Path]:
    """Save datasets as Part 10 files named ``<SOPInstanceUID>.dcm`` in ``directory``.

    The directory is created if needed; the paths are returned in input order.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for ds in datasets:
        path = out / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- transfer syntaxes

#: File name used by :func:`make_transfer_syntax_files` for each transfer syntax.
TRANSFER_SYNTAX_FILE_NAMES: dict[str, str] = {
    ImplicitVRLittleEndian: "implicit_vr_little_endian.dcm",
    ExplicitVRLittleEndian: "explicit_vr_little_endian.dcm",
    DeflatedExplicitVRLittleEndian: "deflated_explicit_vr_little_endian.dcm",
    JPEGBaseline8Bit: "jpeg_baseline_8bit.dcm",
    JPEGLosslessSV1: "jpeg_lossless_sv1.dcm",
    JPEGLSLossless: "jpeg_ls_lossless.dcm",
    JPEG2000Lossless: "jpeg_2000_lossless.dcm",
    RLELossless: "rle_lossless.dcm",
}

# dcmtk encoders; "+un" keeps our (unique, never otherwise sent) SOP Instance UID.
# JPEG Baseline is 8-bit: dcmcjpeg scales the 12-bit CT pixels to 8 bits and adjusts
# RescaleSlope/Intercept, sets LossyImageCompression "01" and ImageType DERIVED.
_DCMTK_ENCODERS: dict[str, tuple[str, ...]] = {
    JPEGBaseline8Bit: ("dcmcjpeg", "+eb", "+un"),
    JPEGLosslessSV1: ("dcmcjpeg", "+e1", "+un"),
    JPEGLSLossless: ("dcmcjpls", "+el", "+un"),
}
_PYDICOM_ENCODERS: dict[str, str] = {
    JPEG2000Lossless: "pylibjpeg",  # pylibjpeg-openjpeg
    RLELossless: "pydicom",  # pydicom's own RLE encoder
}


def _run_tool(args: list[str]) -> None:
    """Run a dcmtk tool, raising ToolMissingError / CalledProcessError on failure."""
    if shutil.which(args[0]) is None:
        raise ToolMissingError(f"{args[0]} (dcmtk) is not installed")
    subprocess.run(args, check=True, capture_output=True, timeout=120)


def _encode_to(ds: Dataset, transfer_syntax: str, target: Path, scratch: Path) -> None:
    """Write ``ds`` to ``target`` in ``transfer_syntax``."""
    if transfer_syntax in _DCMTK_ENCODERS:
        source = scratch / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(source, enforce_file_format=True)
        _run_tool([*_DCMTK_ENCODERS[transfer_syntax], str(source), str(target)])
        return
    if transfer_syntax in _PYDICOM_ENCODERS:
        ds.compress(UID(transfer_syntax), encoding_plugin=_PYDICOM_ENCODERS[transfer_syntax])
    else:
        ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    ds.save_as(target, enforce_file_format=True)


def _check_transfer_syntax(path: Path, expected: str) -> None:
    """Fail loudly if an encoder wrote a different transfer syntax than asked for."""
    meta = pydicom.filereader.read_file_meta_info(path)
    if meta.TransferSyntaxUID != expected:
        raise RuntimeError(f"{path.name}: wrote {meta.TransferSyntaxUID}, expected {expected}")


def make_transfer_syntax_files(
    directory: StrPath,
    *,
    rows: int = 64,
    cols: int = 64,
    patient_id: str = DEFAULT_PATIENT_ID,
    study_uid: str | None = None,
) -> dict[str, Path]:
    """Write one small CT per transfer syntax; return {transfer syntax UID: path}.

    Covers Implicit VR LE, Explicit VR LE, Deflated Explicit VR LE, JPEG Baseline
    (8-bit, lossy), JPEG Lossless SV1, JPEG-LS lossless, JPEG 2000 lossless and RLE
    lossless (see :data:`TRANSFER_SYNTAX_FILE_NAMES`). The files are instances of
    one series with distinct SOP Instance UIDs, so all can be stored together.
    The JPEG and JPEG-LS files need dcmtk (``dcmcjpeg``, ``dcmcjpls``); without it
    :class:`ToolMissingError` is raised.

    To keep each syntax on the wire, send each file with its own storescu call
    and the option from ``peers.storescu_propose_args(path)`` (``-xy`` for JPEG
    Baseline, ``-xs``, ``-xt``, ``-xv``, ``-xr``, ``-xd``, ``-xi``); without it
    storescu proposes only uncompressed syntaxes and fails on the JPEG files.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    syntaxes = list(TRANSFER_SYNTAX_FILE_NAMES)
    datasets = make_ct_series(
        len(syntaxes),
        rows=rows,
        cols=cols,
        patient_id=patient_id,
        study_uid=study_uid,
        series_description="Siirtosyntaksit",
        seed=7,
    )
    written: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="kuva-ts-") as scratch:
        for transfer_syntax, ds in zip(syntaxes, datasets, strict=True):
            target = out / TRANSFER_SYNTAX_FILE_NAMES[transfer_syntax]
            _encode_to(ds, transfer_syntax, target, Path(scratch))
            _check_transfer_syntax(target, transfer_syntax)
            written[transfer_syntax] = target
    return written


# --------------------------------------------------------------------------- multi-frame


def _multiframe_header(
    *,
    rows: int,
    cols: int,
    frames: int,
    patient_id: str,
    patient_name: str | None,
    study_uid: str | None,
    series_uid: str | None,
) -> Dataset:
    """Multi-frame Grayscale Word Secondary Capture attributes, without PixelData."""
    study_uid = study_uid or generate_uid()
    when = dt.datetime.now().replace(microsecond=0)
    ds = _patient_study_series(
        patient_id=patient_id,
        patient_name=patient_name,
        study_uid=study_uid,
        series_uid=series_uid or generate_uid(),
        accession_number=None,
        when=when,
        study_description="Suuri monikehyskuva",
        series_description="Synthetic multi-frame",
        series_number=900,
        modality="OT",
        body_part="CHEST",
        specific_character_set="ISO_IR 192",
    )
    sop_instance_uid = generate_uid()
    sop_class_uid = MultiFrameGrayscaleWordSecondaryCaptureImageStorage
    ds.file_meta = _file_meta(sop_class_uid, sop_instance_uid, ExplicitVRLittleEndian)
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = ds.StudyTime
    ds.ConversionType = "SYN"  # Synthetic Image (SC Equipment module)
    ds.FrameTime = "40"
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.BurnedInAnnotation = "NO"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = pydicom.tag.Tag("FrameTime")
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    return ds


def _write_pixel_data_header(fp: BinaryIO, length: int) -> None:
    """Write the (7FE0,0010) OW element header, Explicit VR Little Endian, long form."""
    fp.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length))


def make_multiframe(
    path: StrPath,
    size_bytes: int,
    *,
    rows: int = 512,
    cols: int = 512,
    patient_id: str = DEFAULT_PATIENT_ID,
    patient_name: str | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    seed: int = 0,
) -> Path:
    """Write a Multi-frame Grayscale Word Secondary Capture file of about ``size_bytes``.

    The header is written by pydicom; then the PixelData element is streamed as
    its tag, VR, 32-bit length and one frame (``rows * cols * 2`` bytes) at a time,
    so memory use stays at a few frames whatever the size. The number of frames is
    ``size_bytes`` divided by the frame size, rounded, at least 1. The pixel data
    must stay below 4 GiB (the 32-bit element length).
    """
    frame_bytes = rows * cols * 2
    frames = max(1, round(size_bytes / frame_bytes))
    length = frames * frame_bytes
    if length >= 0xFFFFFFFF:
        raise ValueError("pixel data must be smaller than 4 GiB")
    header = _multiframe_header(
        rows=rows,
        cols=cols,
        frames=frames,
        patient_id=patient_id,
        patient_name=patient_name,
        study_uid=study_uid,
        series_uid=series_uid,
    )
    rng = np.random.default_rng(seed)
    base = _phantom_slice(rows, cols, 0.5, rng, 4095 - 255)
    frame = np.empty_like(base)
    target = Path(path)
    with target.open("wb") as fp:
        pydicom.dcmwrite(fp, header, enforce_file_format=True)
        _write_pixel_data_header(fp, length)
        for index in range(frames):
            np.add(base, index % 256, out=frame)
            fp.write(frame.tobytes())
    return target


# --------------------------------------------------------------------------- bad objects

#: Malformed StudyInstanceUID values used by :func:`make_bad_objects`.
BAD_STUDY_UIDS: dict[str, str] = {
    "study_uid_leading_zero": "1.2.03.4",
    "study_uid_non_numeric": "1.2.abc",
    "study_uid_too_long": ("1.2.246.999." + "1234567890" * 6)[:70],
}

#: Extra storescu (dcmtk 3.6.7) arguments to send every file of make_bad_objects().
STORESCU_BAD_OBJECT_ARGS: tuple[str, ...] = ("--no-halt",)


def make_bad_objects(directory: StrPath, *, rows: int = 32, cols: int = 32) -> dict[str, Path]:
    """Write Part 10 files an archive must refuse; return {defect: path}.

    Defects (keys):

    * ``missing_sop_instance_uid``: no SOPInstanceUID in the data set (the file
      meta MediaStorageSOPInstanceUID is still there).
    * ``study_uid_leading_zero``: StudyInstanceUID ``1.2.03.4``.
    * ``study_uid_non_numeric``: StudyInstanceUID ``1.2.abc``.
    * ``study_uid_too_long``: a 70-character StudyInstanceUID (maximum is 64).
    * ``missing_patient_id``: no PatientID element.
    * ``missing_study_instance_uid``: no StudyInstanceUID element.
    * ``missing_series_instance_uid``: no SeriesInstanceUID element.

    Each file is otherwise a complete small CT with its own SOP Instance UID.

    Sending them with dcmtk ``storescu`` (checked with dcmtk 3.6.7):

    * storescu only checks that SOPClassUID and SOPInstanceUID are present in the
      data set. Every file except ``missing_sop_instance_uid`` is sent by a plain
      ``storescu HOST PORT FILE``; malformed UIDs go out exactly as written. 3.6.7
      has no ``--no-uid-checks`` (``-nuc``) option and needs none.
    * To send several in one call, add ``--no-halt`` (``-nh``, see
      :data:`STORESCU_BAD_OBJECT_ARGS`): by default storescu stops at the first
      file it cannot send or the first failure status, so the files after it are
      never offered. With ``+sd`` (scan a directory) the unsendable file is just
      skipped at scan time.
    * ``missing_sop_instance_uid`` is never sent by storescu, whatever the options:
      it reports "No SOP Class or Instance UID in file" and exits with 1 (``+II``
      would invent a UID and so remove the defect). pynetdicom can send it:
      set ``pynetdicom._config.STORE_SEND_CHUNKED_DATASET = True``, then
      ``Association.send_c_store(path)`` takes the C-STORE Affected SOP Instance
      UID from the file meta and sends the data set bytes unchanged (without that
      setting pynetdicom refuses the data set too).
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    defects = [
        "missing_sop_instance_uid",
        *BAD_STUDY_UIDS,
        "missing_patient_id",
        "missing_study_instance_uid",
        "missing_series_instance_uid",
    ]
    datasets = make_ct_series(
        len(defects), rows=rows, cols=cols, series_description="Virheelliset", seed=13
    )
    written: dict[str, Path] = {}
    for defect, ds in zip(defects, datasets, strict=True):
        _apply_defect(ds, defect)
        path = out / f"{defect}.dcm"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about the invalid UIDs
            ds.save_as(path, enforce_file_format=True)
        written[defect] = path
    return written


def _apply_defect(ds: Dataset, defect: str) -> None:
    """Damage ``ds`` in the way named by ``defect``."""
    removals = {
        "missing_sop_instance_uid": "SOPInstanceUID",
        "missing_patient_id": "PatientID",
        "missing_study_instance_uid": "StudyInstanceUID",
        "missing_series_instance_uid": "SeriesInstanceUID",
    }
    if defect in removals:
        del ds[removals[defect]]
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.StudyInstanceUID = BAD_STUDY_UIDS[defect]
