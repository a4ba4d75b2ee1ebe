"""Retention policies as configuration: coverage, periods by anchor, the latest expiry
of the covering policies, legal hold, and the TOML form."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from pydantic import ValidationError

from kuva.config import load_settings
from kuva.model.retention import (
    Anchor,
    Expiry,
    Period,
    RetentionPolicy,
    StudyFacts,
    add_years,
    is_expired,
    parse_dicom_date,
    study_expiry,
)

CT = "1.2.840.10008.5.1.4.1.1.2"
HOSPITAL = "1.2.246.10.12345678.10"
OTHER = "1.2.246.10.87654321.10"

# STM decree 94/2022: 12 years after death, else 120 years after birth.
PATIENT_RECORDS = RetentionPolicy(
    "patient records", (Period(Anchor.DEATH, 12), Period(Anchor.BIRTH, 120))
)


def facts(**changes: object) -> StudyFacts:
    values: dict[str, object] = {
        "organization_oid": HOSPITAL,
        "modalities": frozenset({"CT"}),
        "sop_classes": frozenset({CT}),
        "study_date": date(2010, 5, 4),
        "birth_date": date(1981, 1, 1),
        "death_date": None,
    }
    values.update(changes)
    return StudyFacts(**values)  # type: ignore[arg-type]


def test_the_first_known_anchor_applies() -> None:
    assert PATIENT_RECORDS.expiry(facts()) == date(2101, 1, 1)  # death unknown: birth
    died = facts(death_date=date(2020, 6, 30))
    assert PATIENT_RECORDS.expiry(died) == date(2032, 6, 30)
    assert PATIENT_RECORDS.expiry(facts(birth_date=None)) is None  # nothing known: kept


def test_leap_day_and_dicom_dates() -> None:
    assert add_years(date(2024, 2, 29), 1) == date(2025, 2, 28)
    assert add_years(date(2024, 2, 29), 4) == date(2028, 2, 29)
    assert parse_dicom_date("20100504") == date(2010, 5, 4)
    for bad in ("", "2010", "20101345", "2010050x", " "):
        assert parse_dicom_date(bad) is None


def test_the_latest_expiry_of_the_covering_policies_wins() -> None:
    images = RetentionPolicy(
        "ct images", (Period(Anchor.STUDY_DATE, 10),), modalities=frozenset({"CT"})
    )
    mammography = RetentionPolicy(
        "mammography", (Period(Anchor.STUDY_DATE, 50),), modalities=frozenset({"MG"})
    )
    other_holder = RetentionPolicy(
        "other holder", (Period(Anchor.STUDY_DATE, 200),), organizations=frozenset({OTHER})
    )
    policies = [images, mammography, other_holder]
    assert study_expiry(policies, facts()) == Expiry(date(2020, 5, 4), "ct images")
    both = facts(modalities=frozenset({"CT", "MG"}))
    assert study_expiry(policies, both) == Expiry(date(2060, 5, 4), "mammography")
    assert study_expiry(policies, facts(modalities=frozenset({"US"}))) is None
    with_records = [*policies, PATIENT_RECORDS]
    assert study_expiry(with_records, facts()) == Expiry(date(2101, 1, 1), "patient records")
    by_class = RetentionPolicy(
        "by class", (Period(Anchor.STUDY_DATE, 1),), sop_classes=frozenset({"1.2.3"})
    )
    assert not by_class.covers(facts())


def test_a_legal_hold_keeps_an_expired_study() -> None:
    expiry = Expiry(date(2020, 5, 4), "ct images")
    assert is_expired(expiry, date(2020, 5, 4), held=False)
    assert not is_expired(expiry, date(2020, 5, 3), held=False)
    assert not is_expired(expiry, date(2030, 1, 1), held=True)
    assert not is_expired(None, date(2030, 1, 1), held=False)


def test_policies_from_the_configuration_file(tmp_path: Path) -> None:
    config = tmp_path / "kuva.toml"
    config.write_text(
        """
[[retention.policies]]
name = "patient records"
periods = [{ after = "death", years = 12 }, { after = "birth", years = 120 }]

[[retention.policies]]
name = "ct images"
modalities = ["ct"]
organizations = ["1.2.246.10.12345678.10"]
periods = [{ after = "study_date", years = 10 }]
""",
        encoding="utf-8",
    )
    rules = load_settings(config).retention.rules()
    assert rules[0] == PATIENT_RECORDS
    assert rules[1].modalities == frozenset({"CT"})
    assert rules[1].organizations == frozenset({HOSPITAL})
    assert study_expiry(rules, facts()) == Expiry(date(2101, 1, 1), "patient records")


@pytest.mark.parametrize(
    "policies",
    [
        '[[retention.policies]]\nname = "x"\nperiods = []\n',
        '[[retention.policies]]\nname = "x"\nperiods = [{ after = "funeral", years = 1 }]\n',
        '[[retention.policies]]\nname = "x"\nperiods = [{ after = "birth", years = -1 }]\n',
        '[[retention.policies]]\nname = "x"\nperiods = [{ after = "birth", years = 1 }]\n' * 2,
    ],
)
def test_malformed_policies_are_refused(tmp_path: Path, policies: str) -> None:
    config = tmp_path / "kuva.toml"
    config.write_text(policies, encoding="utf-8")
    with pytest.raises(ValidationError):
        load_settings(config)
