"""Validation of XDS payloads against the bundled XML schemas.

The schemas in ``schemas/`` (NIST XDS Toolkit's flat set: ebRIM/ebRS 3.0, XDS.b
and XDS-I.b; ITI TF-3 4.2, ITI TF-2b 3.41/3.43, RAD TF-3 4.69) are compiled once,
on first use, from the entry point ``XDSI.b_ImagingDocumentSource.xsd``, which
imports the rest. Compilation takes a lock; validation needs none (each call
has its own validation context; the compiled schema is only read), so handlers
validate in parallel threads.

An MTOM request carries the bytes of ``xs:base64Binary`` elements as MIME parts,
each element holding an ``xop:Include`` instead of base64 text (XOP 1.0, 3.2).
The schema describes the *resolved* message, so :func:`validate` checks a copy in
which every ``xop:Include`` is replaced by empty text (a valid, empty
base64Binary); the element passed in is never changed.
"""

from __future__ import annotations

import copy
import re
import threading
from pathlib import Path

import xmlschema
from lxml import etree
from lxml.etree import _Element as Element

from kuva.xds.namespaces import NSMAP, XOP

__all__ = ["ENTRY_POINT", "SCHEMA_DIR", "compiled_schema", "validate"]

SCHEMA_DIR = Path(__file__).resolve().with_name("schemas")
ENTRY_POINT = "XDSI.b_ImagingDocumentSource.xsd"
#: At most this many problems are reported for one payload.
MAX_PROBLEMS = 50

_lock = threading.Lock()
_schema: xmlschema.XMLSchema10 | None = None
_PREFIX = {namespace: prefix for prefix, namespace in NSMAP.items()}
_CLARK = re.compile(r"\{([^}]*)\}")


def compiled_schema() -> xmlschema.XMLSchema10:
    """The compiled XDS schema set (built on the first call, under a lock).

    Only files under the schema directory may be read while building (the
    imports are relative, same-directory paths); nothing is fetched from a network.
    """
    global _schema
    schema = _schema
    if schema is None:
        with _lock:
            schema = _schema
            if schema is None:
                schema = xmlschema.XMLSchema10(str(SCHEMA_DIR / ENTRY_POINT), allow="sandbox")
                _schema = schema
    return schema


def validate(element: Element) -> list[str]:
    """The schema problems of a payload element; an empty list when it is valid.

    ``element`` must be a global element of the XDS schemas (a request or
    response payload, e.g. ``lcm:SubmitObjectsRequest``); any other element is
    reported as "not an element of the schema". ``xop:Include`` children are
    treated as resolved (see the module docstring). Each problem reads
    ``path: reason`` (with the line when known); values from the message may
    appear in a reason, so the list is for the sender, not for logs above DEBUG.
    """
    target = _resolve_xop(element)
    resource = xmlschema.XMLResource(target, allow="none")
    problems: list[str] = []
    for error in compiled_schema().iter_errors(resource):
        if len(problems) == MAX_PROBLEMS:
            problems.append("(further problems not listed)")
            break
        problems.append(_describe(error, target))
    return problems


def _resolve_xop(element: Element) -> Element:
    """``element``, or a copy of it with each xop:Include replaced by empty text."""
    include_tag = f"{{{XOP}}}Include"
    if next(element.iter(include_tag), None) is None:
        return element
    resolved = copy.deepcopy(element)
    for include in list(resolved.iter(include_tag)):
        parent = include.getparent()
        if parent is None:
            continue
        parent.remove(include)  # its tail (whitespace) goes with it
        parent.text = ""
    return resolved


def _prefixed(text: str) -> str:
    """Clark names in ``text`` written with kuva's usual prefixes (rim:, lcm:, ...)."""

    def replace(match: re.Match[str]) -> str:
        prefix = _PREFIX.get(match.group(1))
        return f"{prefix}:" if prefix else match.group(0)

    return _CLARK.sub(replace, text)


def _name(tag: str) -> str:
    return _prefixed(tag) if tag.startswith("{") else tag


def _path(element: Element, root: Element) -> str:
    """``/rim:RegistryObjectList/rim:ExtrinsicObject[2]`` from ``root`` to ``element``."""
    steps: list[str] = []
    current: Element | None = element
    while current is not None:
        parent = current.getparent() if current is not root else None
        step = _name(str(current.tag))
        if parent is not None:
            same = [child for child in parent if child.tag == current.tag]
            if len(same) > 1:
                step += f"[{same.index(current) + 1}]"
        steps.append(step)
        current = parent
    return "/" + "/".join(reversed(steps))


def _describe(error: xmlschema.XMLSchemaValidationError, root: Element) -> str:
    reason = error.reason or error.message
    element = error.elem
    if isinstance(element, etree._Element) and isinstance(element.tag, str):
        where = _path(element, root)
        line = element.sourceline
    else:
        where, line = _prefixed(error.path or "/"), None
    at = f" (line {line})" if isinstance(line, int) else ""
    return f"{where}{at}: {_prefixed(reason)}"
