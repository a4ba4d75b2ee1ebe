"""Local dates and times of DICOM objects and their UTC offset.

DICOM dates and times (DA, TM) are local; Timezone Offset From UTC (0008,0201,
PS3.3 C.12.1.1.8) says in which offset every one of them in a data set is, and
without it they are in the offset of the place the object was made. kuva reads a
study's Study Date and Time in the study's own offset when its objects carry one,
else in the archive's local time zone (``[archive] local_time_zone``) at that date
(daylight saving time aware); XDS wants UTC (ITI TF-3 4.2.3.1.5).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone, tzinfo

from kuva.model.retention import parse_dicom_date

# &ZZXX: a sign, hours and minutes; -1200 to +1400 (PS3.3 C.12.1.1.8).
_OFFSET = re.compile(r"([+-])(\d{2})(\d{2})")


def parse_offset(value: str) -> timezone | None:
    """A Timezone Offset From UTC value as a fixed offset; None when empty or malformed."""
    found = _OFFSET.fullmatch(value.strip())
    if found is None:
        return None
    sign, hours, minutes = found.groups()
    delta = timedelta(hours=int(hours), minutes=int(minutes))
    if int(minutes) >= 60 or delta > timedelta(hours=14):
        return None
    if sign == "-":
        if delta > timedelta(hours=12):
            return None
        delta = -delta
    return timezone(delta)


def format_offset(offset: timezone) -> str:
    """``+HHMM`` or ``-HHMM`` of a fixed offset (Timezone Offset From UTC)."""
    delta = offset.utcoffset(None)
    sign = "-" if delta < timedelta(0) else "+"
    minutes = abs(int(delta.total_seconds())) // 60
    return f"{sign}{minutes // 60:02d}{minutes % 60:02d}"


def _time_digits(study_time: str) -> str | None:
    """HH, HHMM or HHMMSS of a TM value (fraction dropped); None when unreadable."""
    digits = study_time.split(".", 1)[0].replace(":", "").strip()
    return digits if len(digits) in (2, 4, 6) and digits.isdigit() else None


def local_instant(study_date: str, study_time: str, zone: tzinfo) -> datetime | None:
    """Study Date and Time as an aware instant in ``zone`` (midnight without a
    readable time); None without a valid date or with a time out of range."""
    day = parse_dicom_date(study_date)
    if day is None:
        return None
    digits = _time_digits(study_time) or "00"
    try:
        return datetime(
            day.year,
            day.month,
            day.day,
            int(digits[0:2]),
            int(digits[2:4] or 0),
            int(digits[4:6] or 0),
            tzinfo=zone,
        )
    except ValueError:
        return None


def study_offset(
    study_date: str, study_time: str, own: str, zone: tzinfo, now: datetime
) -> timezone:
    """The offset a study's dates and times are in: its own Timezone Offset From UTC
    when it has one, else ``zone``'s at the study's date and time (at ``now`` when
    the study has no valid date)."""
    parsed = parse_offset(own)
    if parsed is not None:
        return parsed
    instant = local_instant(study_date, study_time, zone) or now.astimezone(zone)
    delta = instant.utcoffset()
    return timezone(delta) if delta is not None else UTC


def utc_dtm(study_date: str, study_time: str, offset: timezone) -> str:
    """A study's date and time in UTC as an XDS DTM (ITI TF-3 4.2.3.1.5), to the
    precision given; the date alone when the time is absent or unreadable; "" without
    a valid date."""
    if parse_dicom_date(study_date) is None:
        return ""
    digits = _time_digits(study_time)
    instant = local_instant(study_date, study_time, offset) if digits else None
    if digits is None or instant is None:
        return study_date.strip()
    return instant.astimezone(UTC).strftime("%Y%m%d%H%M%S")[: 8 + len(digits)]
