"""Query matching (PS3.4 C.2.2.2): what a key's value in a query asks for.

A key's value is turned into one matcher; the index turns matchers into SQL on its
columns. Values are already decoded to Unicode by the adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any


class QueryLevel(Enum):
    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"


class MatchKind(Enum):
    UNIVERSAL = "universal"  # empty value: every entity matches (C.2.2.2.3)
    SINGLE = "single"  # C.2.2.2.1
    LIST = "list"  # UID list matching (C.2.2.2.2) and multi-valued keys
    WILDCARD = "wildcard"  # * and ? (C.2.2.2.4)
    RANGE = "range"  # dates and times (C.2.2.2.5); either bound may be open


@dataclass(frozen=True)
class Matcher:
    kind: MatchKind
    values: tuple[str, ...] = ()
    low: str = ""
    high: str = ""

    @property
    def prefix(self) -> str | None:
        """For ``ABC*``: ``ABC`` (answered as a range on an index); else None."""
        if self.kind is not MatchKind.WILDCARD:
            return None
        (pattern,) = self.values
        head = pattern[:-1]
        if pattern.endswith("*") and head and "*" not in head and "?" not in head:
            return head
        return None


class QueryError(ValueError):
    """A key value that cannot be matched, with a reason fit for an Error Comment."""


RANGE_VRS = frozenset({"DA", "TM", "DT"})


def parse_matcher(value: str, vr: str, *, keyword: str) -> Matcher:
    """Interpret a query key's value (already decoded, trailing padding removed)."""
    value = value.strip() if vr != "PN" else value.strip(" ")
    if value == "" or value == "*":
        return Matcher(MatchKind.UNIVERSAL)
    if vr == "UI":
        uids = tuple(v.strip() for v in value.split("\\") if v.strip())
        if len(uids) == 1:
            return Matcher(MatchKind.SINGLE, uids)
        return Matcher(MatchKind.LIST, uids)
    if vr in RANGE_VRS and "-" in value:
        low, _, high = value.partition("-")
        low, high = low.strip(), high.strip()
        if "-" in high:
            raise QueryError(f"{keyword}: malformed range")
        _check_range_bound(low, vr, keyword)
        _check_range_bound(high, vr, keyword)
        return Matcher(MatchKind.RANGE, low=low, high=high)
    if vr in RANGE_VRS:
        _check_range_bound(value, vr, keyword)
    if "\\" in value:
        return Matcher(MatchKind.LIST, tuple(v for v in value.split("\\") if v))
    if "*" in value or "?" in value:
        return Matcher(MatchKind.WILDCARD, (value,))
    return Matcher(MatchKind.SINGLE, (value,))


def _check_range_bound(bound: str, vr: str, keyword: str) -> None:
    if not bound:
        return
    if vr == "DA":
        ok = len(bound) == 8 and bound.isdigit()
    elif vr == "TM":
        digits = bound.replace(".", "", 1).replace(":", "")
        ok = digits.isdigit() and 2 <= len(bound) <= 16
    else:  # DT
        ok = bound[:8].isdigit() and len(bound) >= 4
    if not ok:
        raise QueryError(f"{keyword}: {bound!r} is not a valid {vr}")


def like_pattern(pattern: str) -> str:
    """A DICOM wildcard pattern as an SQL LIKE pattern with ``\\`` as escape."""
    out = []
    for char in pattern:
        if char in "%_\\":
            out.append("\\" + char)
        elif char == "*":
            out.append("%")
        elif char == "?":
            out.append("_")
        else:
            out.append(char)
    return "".join(out)


def prefix_upper_bound(prefix: str) -> str:
    """The smallest string greater than every string starting with ``prefix``."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


@dataclass(frozen=True)
class QueryResult:
    """One match of a query: the requested keys' values, from the index."""

    values: dict[str, Any]
    # DICOM JSON of the instance (IMAGE level, when keys beyond the columns are asked).
    dataset_json: dict[str, Any] | None = None
    # (Study Instance UID, register holder) of the study the match belongs to, when
    # the query was restricted by access rules (services.access): for the disclosure log.
    study: tuple[str, str] | None = None
