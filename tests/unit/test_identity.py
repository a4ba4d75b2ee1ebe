"""model.identity: the patient ids the XDS registry takes, Finnish identity codes
and the temporary ids of configured organisations."""

from __future__ import annotations

import itertools

import pytest

from kuva.model.identity import (
    FINNISH_PIC_OID,
    PIC_CHECK_CHARACTERS,
    KnownAuthorities,
    business_id,
    pic_problem,
    registry_patient_id,
    registry_patient_problem,
    temporary_id_business,
)
from kuva.model.xds import PatientId


@pytest.mark.parametrize(
    "code",
    [
        "010181-900C",  # the tests' default patient
        "131052-308T",  # DVV's example
        "010594Y9021",  # the 2023 signs: Y X W V U for the 1900s ...
        "010594X9021",
        "010594W9021",
        "010594V9021",
        "010594U9021",
        "020502E902X",  # ... and B C D E F for the 2000s
        "020502A902X",
        "020502B902X",
        "020502F902X",
        "010199+9001",  # the 1800s
        "290200A900B",  # 29 February 2000
    ],
)
def test_valid_identity_codes(code: str) -> None:
    assert pic_problem(code) is None


@pytest.mark.parametrize(
    ("code", "problem"),
    [
        ("010181-900D", "wrong check character"),
        ("010181-900", "not in the form DDMMYYCNNNX"),
        ("010181G900C", "not in the form DDMMYYCNNNX"),  # G is no century sign
        ("010181-900c", "not in the form DDMMYYCNNNX"),
        ("010181-900G", "not in the form DDMMYYCNNNX"),  # G is no check character
        (" 010181-900C", "not in the form DDMMYYCNNNX"),
        ("290201A900X", "not a date of birth"),  # 2001 was no leap year
        ("320181-900U", "not a date of birth"),
    ],
)
def test_invalid_identity_codes(code: str, problem: str) -> None:
    if problem == "not a date of birth":  # the check character itself is right
        digits = code[:6] + code[7:10]
        code = code[:10] + PIC_CHECK_CHARACTERS[int(digits) % 31]
    assert pic_problem(code) == problem


def test_exactly_one_check_character_is_right() -> None:
    for date, number in itertools.product(("010181", "311299", "290200"), ("900", "901", "999")):
        right = [c for c in PIC_CHECK_CHARACTERS if pic_problem(f"{date}A{number}{c}") is None]
        assert len(right) == 1, (date, number)


@pytest.mark.parametrize(
    ("patient_id", "issuer", "problem"),
    [
        ("010181-900C", "", "Issuer of Patient ID (0010,0021) missing"),
        ("010181-900C", "KANTA", "Issuer of Patient ID (0010,0021) not an OID"),
        ("010181-900C", "1.2.0246.21", "Issuer of Patient ID (0010,0021) not an OID"),
        ("", "1.2.246.21", "Patient ID (0010,0020) missing"),
        (
            "010181-900D",
            FINNISH_PIC_OID,
            "Patient ID (0010,0020) identity code: wrong check character",
        ),
        ("A&B", "1.2.3.4", "Patient ID (0010,0020) contains ^ or &: not usable in XDS"),
        ("A^B", "1.2.3.4", "Patient ID (0010,0020) contains ^ or &: not usable in XDS"),
        ("X" * 65, "1.2.3.4", "Patient ID (0010,0020) not usable in XDS (CX.1)"),
    ],
)
def test_what_the_registry_would_not_take(patient_id: str, issuer: str, problem: str) -> None:
    found = registry_patient_problem(patient_id, issuer)
    assert found is not None and found.startswith(problem)
    assert len(found) <= 64  # fits a DICOM Error Comment
    assert patient_id not in found or not patient_id  # names the attribute, not the id


def test_what_the_registry_takes() -> None:
    assert registry_patient_id("010181-900C", FINNISH_PIC_OID) == PatientId(
        "010181-900C", FINNISH_PIC_OID
    )
    # Other issuers' ids are not identity codes.
    assert registry_patient_problem("T-123", "1.2.246.10.12345678.22.2026") is None


def test_business_ids_and_temporary_ids() -> None:
    assert business_id("1.2.246.10.12345678.10") == "12345678"
    assert business_id("1.2.246.10.12345678.10.99") == "12345678"
    assert business_id("1.2.246.10") is None
    assert business_id("1.2.246.21") is None
    assert business_id("2.25.1234") is None
    assert temporary_id_business("1.2.246.10.12345678.22.2026") == "12345678"
    for other in (
        "1.2.246.10.12345678.22",  # no year
        "1.2.246.10.12345678.22.26",  # not a year
        "1.2.246.10.12345678.10.2026",  # not the temporary-id arc
        "1.2.246.10.12345678.22.2026.1",
        "1.2.246.21",
    ):
        assert temporary_id_business(other) is None, other


def test_known_authorities() -> None:
    known = KnownAuthorities.of(
        [FINNISH_PIC_OID], ["1.2.246.10.12345678.10", "2.25.99", "1.2.246.10.0.10"]
    )
    assert FINNISH_PIC_OID in known
    assert "1.2.246.10.12345678.22.2026" in known
    assert "1.2.246.10.12345678.22.1999" in known
    assert "1.2.246.10.87654321.22.2026" not in known  # not a configured organisation
    assert "1.2.246.10.12345678.10" not in known  # the organisation itself issues no ids
    assert "1.2.246.10.0.22.2026" not in known
    assert None not in known
    assert FINNISH_PIC_OID not in KnownAuthorities.of([])
