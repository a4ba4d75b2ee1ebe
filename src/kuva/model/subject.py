"""Distinguished names of certificate subjects (X.501), written as RFC 4514 strings.

An organisation names the certificates it owns by their subjects
(``[[organizations]] certificates``); a client certificate's subject is compared
with them exactly:

- the same relative distinguished names (RDNs) in the same order (RFC 4514 writes
  the last RDN of the certificate first: ``CN=pacs.example.fi,O=Example``);
- attribute types by keyword or OID, case-insensitively (RFC 4512 1.4:
  descriptors are case-insensitive; ``cn`` = ``CN`` = ``2.5.4.3``);
- attribute values exactly, character for character after the escapes of RFC 4514
  2.4 are undone: no case folding, no space squashing. That is stricter than the
  matching rules of X.520 (caseIgnoreMatch), on purpose: a subject that is not
  written exactly as the operator configured it is not trusted.

Within a multi-valued RDN (``CN=a+UID=b``) the order does not count (RFC 4514 2.2).
"""

from __future__ import annotations

from dataclasses import dataclass

# RFC 4514 3: the keywords every implementation knows, with their OIDs (RFC 4519),
# and the long names OpenSSL gives the same attributes (Python's getpeercert()).
_KEYWORDS = {
    "CN": ("2.5.4.3", "commonName"),
    "L": ("2.5.4.7", "localityName"),
    "ST": ("2.5.4.8", "stateOrProvinceName"),
    "O": ("2.5.4.10", "organizationName"),
    "OU": ("2.5.4.11", "organizationalUnitName"),
    "C": ("2.5.4.6", "countryName"),
    "STREET": ("2.5.4.9", "streetAddress"),
    "DC": ("0.9.2342.19200300.100.1.25", "domainComponent"),
    "UID": ("0.9.2342.19200300.100.1.1", "userId"),
    "SERIALNUMBER": ("2.5.4.5", "serialNumber"),
    "EMAILADDRESS": ("1.2.840.113549.1.9.1", "emailAddress"),
}
_ALIASES = {
    alias.upper(): keyword
    for keyword, (oid, long_name) in _KEYWORDS.items()
    for alias in (keyword, oid, long_name)
}
_SPECIAL = ' "#+,;<=>\\'

Rdn = tuple[tuple[str, str], ...]  # (type, value) pairs, sorted


class SubjectError(ValueError):
    """A distinguished name that is not a valid RFC 4514 string."""


def attribute_type(name: str) -> str:
    """The canonical form of an attribute type: its RFC 4514 keyword when it has one,
    else the name (a dotted OID or another descriptor) in upper case."""
    name = name.strip()
    if name.lower().startswith("oid."):
        name = name[4:]
    return _ALIASES.get(name.upper(), name.upper())


@dataclass(frozen=True)
class Subject:
    """A distinguished name: its RDNs in the certificate's (DER) order, most
    significant first (C, O, ..., CN)."""

    rdns: tuple[Rdn, ...]

    @classmethod
    def of(cls, rdns: list[list[tuple[str, str]]]) -> Subject:
        """From (type, value) pairs per RDN in DER order, types in any known form."""
        return cls(
            tuple(
                tuple(sorted((attribute_type(kind), value) for kind, value in rdn)) for rdn in rdns
            )
        )

    @classmethod
    def parse(cls, text: str) -> Subject:
        """An RFC 4514 string (``CN=pacs.example.fi,O=Example Hospital District``).
        Values in the ``#hex`` form (BER) are not supported."""
        rdns = [_parse_rdn(part, text) for part in _split(text, ",")]
        if not rdns:
            raise SubjectError(f"{text!r}: an empty distinguished name")
        return cls(tuple(reversed(rdns)))

    def __str__(self) -> str:
        return ",".join(
            "+".join(f"{kind}={_escape(value)}" for kind, value in rdn)
            for rdn in reversed(self.rdns)
        )


def _split(text: str, separator: str) -> list[str]:
    """``text`` split at each ``separator`` not escaped by a backslash."""
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if escaped:
        raise SubjectError(f"{text!r}: ends in a lone backslash")
    parts.append("".join(current))
    return parts


def _parse_rdn(part: str, text: str) -> Rdn:
    pairs: list[tuple[str, str]] = []
    for ava in _split(part, "+"):
        kind, sep, value = ava.partition("=")
        kind = kind.strip()
        if not sep or not kind or (not kind[0].isalpha() and not kind[0].isdigit()):
            raise SubjectError(f"{text!r}: {ava.strip()!r} is not TYPE=value")
        value = value.lstrip(" ")
        if value.startswith("#"):
            raise SubjectError(f"{text!r}: values in the #hex form are not supported")
        pairs.append((attribute_type(kind), _unescape(_strip_trailing(value), text)))
    return tuple(sorted(pairs))


def _strip_trailing(value: str) -> str:
    """Drop unescaped trailing spaces (written after a value, before a comma)."""
    end = len(value)
    while end > 0 and value[end - 1] == " ":
        backslashes = 0
        i = end - 2
        while i >= 0 and value[i] == "\\":
            backslashes += 1
            i -= 1
        if backslashes % 2:
            break
        end -= 1
    return value[:end]


def _unescape(value: str, text: str) -> str:
    out = bytearray()
    i = 0
    while i < len(value):
        char = value[i]
        if char != "\\":
            out += char.encode()
            i += 1
            continue
        pair = value[i + 1 : i + 3]
        if len(pair) == 2 and all(c in "0123456789abcdefABCDEF" for c in pair):
            out.append(int(pair, 16))
            i += 3
        elif i + 1 < len(value) and value[i + 1] in _SPECIAL:
            out += value[i + 1].encode()
            i += 2
        else:
            raise SubjectError(f"{text!r}: a backslash escapes nothing valid in {value!r}")
    try:
        return out.decode()
    except UnicodeDecodeError as exc:
        raise SubjectError(f"{text!r}: escaped bytes are not UTF-8") from exc


def _escape(value: str) -> str:
    """RFC 4514 2.4."""
    out = []
    for index, char in enumerate(value):
        if (
            char in '"+,;<>\\'
            or (char == "#" and index == 0)
            or (char == " " and index in (0, len(value) - 1))
        ):
            out.append("\\" + char)
        elif char == "\x00":
            out.append("\\00")
        else:
            out.append(char)
    return "".join(out)
