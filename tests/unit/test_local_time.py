"""Local dates and times and their UTC offset (model.local_time; PS3.3 C.12.1.1.8,
ITI TF-3 4.2.3.1.5)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from kuva.model.local_time import format_offset, parse_offset, study_offset, utc_dtm

HELSINKI = ZoneInfo("Europe/Helsinki")
NOW = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "hours"),
    [("+0200", 2), ("-0530", -5.5), ("+1400", 14), ("-1200", -12), (" +0000 ", 0)],
)
def test_offsets_read_and_written(value: str, hours: float) -> None:
    offset = parse_offset(value)
    assert offset == timezone(timedelta(hours=hours))
    assert format_offset(offset) == value.strip()


@pytest.mark.parametrize("value", ["", "0200", "+02", "+0260", "+1500", "-1300", "UTC"])
def test_malformed_offsets_are_none(value: str) -> None:
    assert parse_offset(value) is None


def test_the_study_offset_is_its_own_else_the_zone_at_its_date() -> None:
    assert format_offset(study_offset("20260115", "120000", "-0500", HELSINKI, NOW)) == "-0500"
    assert format_offset(study_offset("20260115", "120000", "", HELSINKI, NOW)) == "+0200"
    assert format_offset(study_offset("20260701", "120000", "", HELSINKI, NOW)) == "+0300"
    # the night daylight saving time ends (25 October 2026, 04:00 EEST -> 03:00 EET)
    assert format_offset(study_offset("20261025", "0230", "", HELSINKI, NOW)) == "+0300"
    assert format_offset(study_offset("20261025", "0430", "", HELSINKI, NOW)) == "+0200"
    # no valid date: the zone's offset now (December: winter)
    assert format_offset(study_offset("", "", "junk", HELSINKI, NOW)) == "+0200"


@pytest.mark.parametrize(
    ("date", "time", "expected"),
    [
        ("20260701", "103015", "20260701073015"),  # summer: UTC+3
        ("20260115", "103015.123456", "20260115083015"),  # winter: UTC+2
        ("20260115", "0130", "202601142330"),  # the day before in UTC
        ("20260115", "10", "2026011508"),
        ("20260115", "", "20260115"),
        ("20260115", "25xx", "20260115"),
        ("20260115", "25", "20260115"),
        ("", "103015", ""),
        ("2026011", "", ""),
    ],
)
def test_study_time_in_utc(date: str, time: str, expected: str) -> None:
    offset = study_offset(date, time, "", HELSINKI, NOW)
    assert utc_dtm(date, time, offset) == expected
