"""DICOM Unique Identifiers (PS3.5 9.1) and OIDs.

A UID is at most 64 characters of digits and dots; each component is a number
without leading zeros (a component of just ``0`` is allowed).
"""

from __future__ import annotations

import re
import secrets

_COMPONENT = r"(0|[1-9][0-9]*)"
_UID_RE = re.compile(rf"^{_COMPONENT}(\.{_COMPONENT})+$")

# kuva's own UID root. 2.25 is the ISO/ITU-T arc for UUID-derived OIDs (PS3.5 B.2):
# the root below is 2.25 + a fixed UUID, so no registration is needed.
KUVA_UID_ROOT = "2.25.161420553127812870046235620843128813981"
IMPLEMENTATION_CLASS_UID = KUVA_UID_ROOT + ".1"
# Fixed forever: the file meta of a stored object must not depend on the version
# that stored it, or an identical resend would look like different content.
IMPLEMENTATION_VERSION_NAME = "KUVA"


# Generated UIDs: kuva's root, then one component of 19 digits starting with a
# non-zero digit (the 64-character limit leaves 19 digits after the 44 of the
# root). Structured arcs under the root (``.1`` = implementation class) stay
# short, so the two never meet.
_RANDOM_LOW = 10**18
_RANDOM_SPAN = 9 * 10**18


def new_uid() -> str:
    """A new UID under kuva's root (PS3.5 9.1; 2.25 arc, PS3.5 B.2)."""
    return f"{KUVA_UID_ROOT}.{_RANDOM_LOW + secrets.randbelow(_RANDOM_SPAN)}"


def made_by_kuva(uid: str) -> bool:
    """True for UIDs kuva made (its manifests and the series that hold them)."""
    return uid.startswith(KUVA_UID_ROOT + ".")


def uid_problem(value: object) -> str | None:
    """Return why ``value`` is not a well-formed UID, or None when it is."""
    if value is None or value == "":
        return "missing"
    if not isinstance(value, str):
        return "not a string"
    if len(value) > 64:
        return f"longer than 64 characters ({len(value)})"
    if not _UID_RE.match(value):
        if any(c not in "0123456789." for c in value):
            return "contains characters other than digits and dots"
        return "empty component or component with a leading zero"
    return None


def is_valid_uid(value: object) -> bool:
    return uid_problem(value) is None
