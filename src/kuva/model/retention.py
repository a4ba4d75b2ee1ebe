"""Retention: how long the archive keeps a study, as configuration, not code.

A policy says which studies it covers (register holder, modality, SOP class; empty
means any) and how long they are kept: a list of periods, each counted from an
anchor date, the first whose anchor is known applying. The Finnish rule for patient
records (STM decree 94/2022) is two periods: 12 years after death, else 120 years
after birth when the date of death is unknown. An image rule is typically one
period from the study date.

A study's expiry is the latest one of every policy that covers it: the archive keeps
a study as long as any rule requires. A study no policy covers, or whose anchors
are all unknown, has no expiry: it is kept. A legal hold (on the patient or the
study) keeps it whatever its expiry.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum


class Anchor(StrEnum):
    """The date a retention period is counted from."""

    STUDY_DATE = "study_date"
    DEATH = "death"
    BIRTH = "birth"


@dataclass(frozen=True)
class Period:
    """``years`` counted from ``anchor``."""

    anchor: Anchor
    years: int

    def __post_init__(self) -> None:
        if self.years < 0:
            raise ValueError(f"retention period of {self.years} years: not negative")


@dataclass(frozen=True)
class StudyFacts:
    """What the index knows of a study that retention decides on."""

    organization_oid: str
    modalities: frozenset[str]
    sop_classes: frozenset[str]
    study_date: date | None
    birth_date: date | None
    death_date: date | None = None


@dataclass(frozen=True)
class RetentionPolicy:
    """A named rule: which studies it covers and their periods, first known anchor first."""

    name: str
    periods: tuple[Period, ...]
    organizations: frozenset[str] = field(default_factory=frozenset)
    modalities: frozenset[str] = field(default_factory=frozenset)
    sop_classes: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if not self.periods:
            raise ValueError(f"retention policy {self.name!r}: no period")

    def covers(self, study: StudyFacts) -> bool:
        return (
            (not self.organizations or study.organization_oid in self.organizations)
            and (not self.modalities or bool(self.modalities & study.modalities))
            and (not self.sop_classes or bool(self.sop_classes & study.sop_classes))
        )

    def expiry(self, study: StudyFacts) -> date | None:
        """The day the study may be destroyed under this policy; None when none of
        its anchors is known for the study."""
        anchors = {
            Anchor.STUDY_DATE: study.study_date,
            Anchor.DEATH: study.death_date,
            Anchor.BIRTH: study.birth_date,
        }
        for period in self.periods:
            start = anchors[period.anchor]
            if start is not None:
                return add_years(start, period.years)
        return None


@dataclass(frozen=True)
class Expiry:
    """A study's expiry and the policy that sets it (the latest of those covering it)."""

    expires_on: date
    policy: str


def add_years(start: date, years: int) -> date:
    """``start`` plus whole years; 29 February becomes 28 February in common years."""
    try:
        return start.replace(year=start.year + years)
    except ValueError:
        return start.replace(year=start.year + years, day=28)


def study_expiry(policies: Iterable[RetentionPolicy], study: StudyFacts) -> Expiry | None:
    """The latest expiry of every policy covering ``study``; None (kept) when no policy
    covers it or none can tell."""
    found: Expiry | None = None
    for policy in policies:
        if not policy.covers(study):
            continue
        expires_on = policy.expiry(study)
        if expires_on is not None and (found is None or expires_on > found.expires_on):
            found = Expiry(expires_on, policy.name)
    return found


def is_expired(expiry: Expiry | None, today: date, *, held: bool) -> bool:
    """Whether a study may be destroyed on ``today``: it has an expiry that has come
    and no legal hold keeps it."""
    return expiry is not None and not held and expiry.expires_on <= today


def parse_dicom_date(value: str) -> date | None:
    """A DICOM DA value (YYYYMMDD) as a date; None when empty or malformed."""
    text = value.strip()
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None
