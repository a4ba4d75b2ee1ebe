"""Fuzzing the parsers of DICOM data at the edge (issue 19), bounded for CI: STOW-RS
multipart bodies (and the media types that name their boundary), the STOW-RS receiver
end to end, C-STORE data sets as kuva reads their header, and the DICOM JSON the index
keeps of them. Whatever the bytes, each parser answers a value or its documented
error, in memory bounded by the input. The checks are in tests/support/fuzzing.py;
the strategies and settings are test_edge_fuzz.py's."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import fuzzing as f
from tests.support.fuzzing import BIG_ENDIAN, BOUNDARY, EXPLICIT, IMPLICIT, bounded_memory
from tests.unit.test_edge_fuzz import CUTS, FUZZ, mutated

# ============================================================================ multipart, STOW-RS


@FUZZ
@given(
    mutated(f.stow_seeds(), f.MIME_TOKENS),
    CUTS,
    st.sampled_from([BOUNDARY, BOUNDARY[:-1], "b" * 70, " x", "a b"]),
)
def test_mutated_multipart_bodies(body: bytes, cuts: list[int], boundary: str) -> None:
    f.check_multipart(boundary, body, cuts)


@FUZZ
@given(
    st.lists(st.one_of(st.sampled_from(f.MIME_TOKENS), st.binary(max_size=30)), max_size=12).map(
        b"".join
    ),
    CUTS,
)
def test_random_multipart_bodies(body: bytes, cuts: list[int]) -> None:
    f.check_multipart(BOUNDARY, body, cuts)


@FUZZ
@given(
    st.one_of(
        st.text(max_size=120),
        mutated([ct.encode() for ct, _ in f.mtom_seeds()], [b";", b"=", b'"', b"\\", b" "]).map(
            lambda b: b.decode("latin-1")
        ),
    )
)
def test_content_types(value: str) -> None:
    f.check_content_type(value)


@pytest.mark.parametrize(
    "value",
    [
        "a/b" + '; x="' + "\\" * 50_000,
        "a/b" + ";" * 50_000 + "x",
        "a/b" + "; x=" * 20_000,
        "a/b" + '; x="' + '\\"' * 25_000,
        "a" * 100_000 + "/b",
    ],
)
def test_content_types_parse_in_linear_time(value: str) -> None:
    started = time.perf_counter()
    f.check_content_type(value)
    assert time.perf_counter() - started < 1.0


def test_multipart_memory_stays_within_a_read() -> None:
    """8 MB of one part, or of preamble, in 64 KB reads: the parser keeps no more
    than a read and a delimiter (the events hand the content on)."""
    part = (
        b"--" + BOUNDARY.encode() + b"\r\n\r\n" + b"\r" * (8 << 20) + b"\r\n--" + BOUNDARY.encode()
    )
    part, preamble = part + b"--", b"\r\n-" * (3 << 20)
    with bounded_memory(0, slack=1 << 20):
        f.check_multipart(BOUNDARY, part, [65536])
        f.check_multipart(BOUNDARY, preamble, [65536])


@pytest.fixture(scope="module")
def stow() -> Iterator[f.StowCheck]:
    check = f.StowCheck()
    yield check
    check.close()


@FUZZ
@given(mutated(f.stow_seeds(), f.MIME_TOKENS + f.DICOM_TOKENS), CUTS)
def test_mutated_stow_bodies(stow: f.StowCheck, body: bytes, cuts: list[int]) -> None:
    """Through kuva's STOW-RS receiver: Part 10 files that cannot be stored get a
    Failure Reason, never 0110 (an exception inside)."""
    stow(BOUNDARY, body, cuts)


def test_stow_lying_file_meta_length_stays_small(stow: f.StowCheck) -> None:
    seed = f.part10_seeds()[0]
    for length in (0xFFFFFFFF, 1 << 20, 0, 3):
        data = seed[:140] + length.to_bytes(4, "little") + seed[144:]
        body = f.stow_body([data, b"\x00" * (4 << 20)])
        with bounded_memory(0, slack=1 << 20):
            assert stow(BOUNDARY, body, [65536]) == "stored-0"


# ============================================================================ Part 10, DICOM JSON


def data_sets() -> st.SearchStrategy[bytes]:
    """A data set seed, with its transfer syntax as the first byte (fuzzing._data_set)."""
    syntaxes = [EXPLICIT, IMPLICIT, BIG_ENDIAN]
    seeds = [bytes([syntaxes.index(s)]) + data for s, data in f.data_set_seeds()]
    return mutated(seeds, f.DICOM_TOKENS)


@settings(FUZZ, max_examples=200)
@given(data_sets(), st.booleans())
def test_mutated_data_sets(data: bytes, defaults: bool) -> None:
    syntax = [EXPLICIT, IMPLICIT, BIG_ENDIAN][data[0] % 3] if data else EXPLICIT
    f.check_data_set(syntax, data[1:], defaults=defaults)


KEYWORD_TAGS = [0x00080005, 0x00080016, 0x00080018, 0x00100010, 0x00100020, 0x00100021,
                0x00100024, 0x00100030, 0x00100040, 0x0020000D, 0x0020000E, 0x00200011,
                0x00200013, 0x00280008, 0x00280010, 0x00280011, 0x0040A375, 0x0040A043,
                0x00080100, 0x00080102, 0x00081115, 0x00081199, 0x00081150, 0x00081155,
                0x00400032, 0x00400033, 0x00091010, 0x7FE00010, 0xFFFEE000, 0xFFFEE0DD]  # fmt: skip
VRS = ["AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "OB", "OW", "PN", "SH", "SQ",
       "SL", "SS", "ST", "TM", "UI", "UL", "UN", "US", "UT", "UR", "UC", "FD", "FL", "AT",
       "OD", "OF", "OL", "OV", "SV", "UV", "XX"]  # fmt: skip
ODD_VALUES = [b"ISO_IR 100", b"ISO 2022 IR 6\\ISO 2022 IR 87", b"ISO_IR 192", b"\x1b$B",
              b"1.2.840.10008.5.1.4.1.1.88.59", b"113037", b"DCM", b"12", b" 1e400",
              b"Doe^John=\x1b$B", b"\xff\xfe", b"nan"]  # fmt: skip
VALUES = st.one_of(
    st.binary(max_size=24),
    st.sampled_from(ODD_VALUES),
)


@st.composite
def element_soup(draw: st.DrawFn, depth: int = 2) -> bytes:
    """Explicit VR little endian elements (known tags and others, any VR, honest or
    lying lengths, sequences with items of undefined length), in or out of order."""
    parts: list[tuple[int, bytes]] = []
    for _ in range(draw(st.integers(0, 8))):
        tag = draw(st.one_of(st.sampled_from(KEYWORD_TAGS), st.integers(0, 0xFFFFFFFF)))
        vr = draw(st.sampled_from(VRS))
        if vr == "SQ" and depth:
            items = b"".join(
                b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + draw(element_soup(depth - 1))
                + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
                for _ in range(draw(st.integers(0, 2)))
            )  # fmt: skip
            value = items + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
            length = 0xFFFFFFFF
        else:
            value = draw(VALUES)
            length = draw(st.one_of(st.just(len(value)), st.integers(0, 0xFFFFFFFF)))
        head = (tag >> 16).to_bytes(2, "little") + (tag & 0xFFFF).to_bytes(2, "little")
        if vr in ("OB", "OW", "SQ", "UN", "UT", "UR", "UC", "OD", "OF", "OL", "OV", "SV", "UV"):
            head += vr.encode() + b"\x00\x00" + length.to_bytes(4, "little")
        else:
            head += vr.encode() + (length & 0xFFFF).to_bytes(2, "little")
        parts.append((tag, head + value))
    if draw(st.booleans()):
        parts.sort()
    return b"".join(part for _, part in parts)


@settings(FUZZ, max_examples=200)
@given(element_soup(), st.booleans())
def test_random_elements_as_data_sets(data: bytes, defaults: bool) -> None:
    f.check_data_set(EXPLICIT, data, defaults=defaults)


def test_data_set_length_fields_do_not_allocate() -> None:
    """Every fourth byte of each seed's header (up to its pixel data) saying 4 GiB."""
    rng = random.Random(19)
    tracemalloc_bound = bounded_memory
    for syntax, data in f.data_set_seeds():
        header = data[: data.find(b"\xe0\x7f\x10\x00")] if b"\xe0\x7f\x10\x00" in data else data
        for offset in rng.sample(range(0, len(header) - 4), min(60, len(header) - 4)):
            mutant = data[:offset] + b"\xff\xff\xff\xff" + data[offset + 4 :]
            with tracemalloc_bound(len(mutant)):
                f.check_data_set(syntax, mutant)


@pytest.mark.parametrize(
    "data",
    [  # what a node's defaults replace, unreadable as sent (found by the longer runs)
        b"\x08\x00\x05\x00IS\x00\x00\x10\x00\x10\x00PN\x08\x00Doe^John",  # character set
        b"\x10\x00!\x00SV\x00\x00\x01\x00\x00\x00\x08",  # Issuer of Patient ID
    ],
)
def test_sender_defaults_over_unreadable_elements(data: bytes) -> None:
    assert f.check_data_set(EXPLICIT, data, defaults=True) == "read"
