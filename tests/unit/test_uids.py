"""UID syntax rules (PS3.5 9.1): model.uids.uid_problem and is_valid_uid."""

from __future__ import annotations

import pytest

from kuva.model.uids import IMPLEMENTATION_CLASS_UID, KUVA_UID_ROOT, is_valid_uid, uid_problem

UID_64 = "1.2." + "3" * 60
UID_65 = "1.2." + "3" * 61


@pytest.mark.parametrize(
    "uid",
    [
        "1.2.840.10008.5.1.4.1.1.2",
        "1.2.246.10.0.10",
        "2.25.329800735698586629295641978511506172918",
        "0.0",
        "1.0.2",
        "1.2.0",
        KUVA_UID_ROOT,
        IMPLEMENTATION_CLASS_UID,
        UID_64,
    ],
)
def test_valid_uids(uid: str) -> None:
    """Well-formed UIDs, including components that are just ``0``, are accepted."""
    assert uid_problem(uid) is None
    assert is_valid_uid(uid)


def test_64_characters_is_the_limit() -> None:
    """64 characters are allowed, 65 are not."""
    assert len(UID_64) == 64
    assert len(UID_65) == 65
    assert is_valid_uid(UID_64)
    assert uid_problem(UID_65) == "longer than 64 characters (65)"
    assert not is_valid_uid(UID_65)


@pytest.mark.parametrize("uid", ["1.2.03", "01.2", "1.00", "1.2.840.010008"])
def test_leading_zeros_are_refused(uid: str) -> None:
    """A component with a leading zero is not a number in canonical form."""
    assert uid_problem(uid) == "empty component or component with a leading zero"
    assert not is_valid_uid(uid)


@pytest.mark.parametrize("uid", ["1..2", "1.2.", ".1.2", "."])
def test_empty_components_are_refused(uid: str) -> None:
    """Doubled, leading or trailing dots leave an empty component."""
    assert uid_problem(uid) == "empty component or component with a leading zero"
    assert not is_valid_uid(uid)


@pytest.mark.parametrize("uid", ["1.2.a", "1.2.840 ", "1,2,3", "abc", "1.2.3\x00", "1.2.٣"])
def test_other_characters_are_refused(uid: str) -> None:
    """Only ASCII digits and dots may appear."""
    assert uid_problem(uid) == "contains characters other than digits and dots"
    assert not is_valid_uid(uid)


def test_single_component_is_not_a_uid() -> None:
    """A UID has at least two components."""
    assert uid_problem("1") is not None
    assert not is_valid_uid("12345")


@pytest.mark.parametrize("value", [None, ""])
def test_missing(value: object) -> None:
    """None and the empty string are reported as missing."""
    assert uid_problem(value) == "missing"
    assert not is_valid_uid(value)


@pytest.mark.parametrize("value", [1.2, 12, b"1.2.3", ["1.2.3"]])
def test_not_a_string(value: object) -> None:
    """Values of other types are refused without raising."""
    assert uid_problem(value) == "not a string"
    assert not is_valid_uid(value)
