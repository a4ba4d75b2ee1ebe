"""Transfer syntax conversion of outgoing objects (PS3.5 Section 10 and Annex A).

An object goes out in the transfer syntax it was stored in whenever the peer
accepted that one. Otherwise it is converted to one the peer accepted, preferring
uncompressed syntaxes, and never to a lossy one: compressed pixel data is decoded
with pydicom's decoders (pylibjpeg and its plugins); compression uses the
*lossless* encoders installed (RLE Lossless, JPEG 2000 Lossless; JPEG-LS Lossless
when an encoder for it is installed). Converting keeps the SOP Instance UID: the
pixel values are not changed by it.

Converting means decoding the whole object in memory; streaming is for objects
going out as stored.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydicom.dataset import Dataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.encoders.base import get_encoder
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

# Targets when the stored transfer syntax is not accepted, best first. Lossy
# syntaxes are never a target: an archive does not degrade what it holds.
TARGETS: tuple[UID, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    JPEGLSLossless,
)
_UNCOMPRESSED_LE = frozenset(
    {ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian}
)


class TranscodeError(Exception):
    """The object cannot be converted; the message says why (for the log)."""


def can_decode(transfer_syntax: UID) -> bool:
    """Whether an object stored in ``transfer_syntax`` can be turned into Explicit VR LE."""
    if transfer_syntax in _UNCOMPRESSED_LE:
        return True
    if transfer_syntax == ExplicitVRBigEndian or not transfer_syntax.is_compressed:
        # pydicom converts between little and big endian only by hand: not done.
        return False
    try:
        return bool(get_decoder(transfer_syntax).is_available)
    except (NotImplementedError, ValueError):
        return False


def can_encode(transfer_syntax: UID) -> bool:
    """Whether kuva can write ``transfer_syntax`` (a TARGETS entry) here."""
    if transfer_syntax in _UNCOMPRESSED_LE:
        return True
    if transfer_syntax not in TARGETS:
        return False
    try:
        return bool(get_encoder(transfer_syntax).is_available)
    except (NotImplementedError, ValueError):
        return False


def choose(stored: str, accepted: Iterable[str]) -> UID | None:
    """The transfer syntax to send an object stored as ``stored`` in, or None.

    ``accepted``: the transfer syntaxes the peer accepted for the object's SOP
    class. The stored one when accepted (the bytes go out unchanged), else the
    first of TARGETS the peer accepted that kuva can convert to.
    """
    stored_uid = UID(stored)
    offered = {UID(ts) for ts in accepted}
    if stored_uid in offered:
        return stored_uid
    if not can_decode(stored_uid):
        return None
    for target in TARGETS:
        if target in offered and can_encode(target):
            return target
    return None


def transcode(ds: Dataset, target: str) -> Dataset:
    """Convert ``ds`` (read from a Part 10 file) to ``target`` in place, and return it.

    Raises TranscodeError when a decoder or encoder is missing or fails.
    """
    target_uid = UID(target)
    source = UID(ds.file_meta.TransferSyntaxUID)
    if source == target_uid:
        return ds
    if not can_decode(source):
        raise TranscodeError(f"no decoder for {source.name} here")
    if not can_encode(target_uid):
        raise TranscodeError(f"no lossless encoder for {target_uid.name} here")
    if "PixelData" not in ds:
        # No pixel data, nothing to decode or encode: the writer puts the data set
        # in the target syntax's encoding.
        ds.file_meta.TransferSyntaxUID = target_uid
        return ds
    try:
        if source.is_compressed:
            ds.decompress(generate_instance_uid=False)
        if target_uid.is_compressed:
            ds.compress(target_uid, generate_instance_uid=False)
        else:
            ds.file_meta.TransferSyntaxUID = target_uid
    except Exception as exc:
        raise TranscodeError(
            f"{source.name} to {target_uid.name} failed: {type(exc).__name__}: {exc}"
        ) from exc
    return ds
