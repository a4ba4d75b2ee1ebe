"""Query key matching rules (PS3.4 C.2.2.2) before they reach SQL."""

from __future__ import annotations

import pytest

from kuva.model.query import (
    Matcher,
    MatchKind,
    QueryError,
    like_pattern,
    parse_matcher,
    prefix_upper_bound,
)


@pytest.mark.parametrize(
    ("value", "vr", "expected"),
    [
        ("", "LO", Matcher(MatchKind.UNIVERSAL)),
        ("*", "PN", Matcher(MatchKind.UNIVERSAL)),
        ("CT", "CS", Matcher(MatchKind.SINGLE, ("CT",))),
        ("CT\\MR", "CS", Matcher(MatchKind.LIST, ("CT", "MR"))),
        ("1.2.3\\1.2.4", "UI", Matcher(MatchKind.LIST, ("1.2.3", "1.2.4"))),
        ("1.2.3", "UI", Matcher(MatchKind.SINGLE, ("1.2.3",))),
        ("Testi*", "PN", Matcher(MatchKind.WILDCARD, ("Testi*",))),
        ("20240101-20240131", "DA", Matcher(MatchKind.RANGE, low="20240101", high="20240131")),
        ("-20240131", "DA", Matcher(MatchKind.RANGE, low="", high="20240131")),
        ("20240101-", "DA", Matcher(MatchKind.RANGE, low="20240101", high="")),
        ("0900-1000", "TM", Matcher(MatchKind.RANGE, low="0900", high="1000")),
        ("20240101", "DA", Matcher(MatchKind.SINGLE, ("20240101",))),
    ],
)
def test_parse_matcher(value: str, vr: str, expected: Matcher) -> None:
    assert parse_matcher(value, vr, keyword="K") == expected


@pytest.mark.parametrize(
    ("value", "vr"), [("2024x", "DA"), ("2024-01-01", "DA"), ("1-2-3", "DA"), ("ab", "TM")]
)
def test_malformed_dates_refused(value: str, vr: str) -> None:
    with pytest.raises(QueryError, match="K"):
        parse_matcher(value, vr, keyword="K")


def test_prefix_only_for_a_single_trailing_star() -> None:
    assert parse_matcher("ÄIJÄ*", "PN", keyword="K").prefix == "ÄIJÄ"
    assert parse_matcher("*LÄ", "PN", keyword="K").prefix is None
    assert parse_matcher("A?B*", "PN", keyword="K").prefix is None
    assert prefix_upper_bound("ÄIJÄ") == "ÄIJÅ"


def test_like_pattern_escapes_sql_wildcards() -> None:
    assert like_pattern("50%_a*b?") == "50\\%\\_a%b_"
