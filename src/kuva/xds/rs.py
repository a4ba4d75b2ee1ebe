"""ebRS 3.0 RegistryResponse and RegistryErrorList (rs.xsd; ITI TF-3 4.2.4)."""

from __future__ import annotations

from collections.abc import Iterable

from lxml import etree
from lxml.etree import _Element as Element

from kuva.model.xds import RegistryError, ResponseStatus
from kuva.xds.namespaces import RS, q


def error_list(errors: Iterable[RegistryError]) -> Element | None:
    """rs:RegistryErrorList, or None when there are no errors."""
    errors = list(errors)
    if not errors:
        return None
    listing = etree.Element(q("rs", "RegistryErrorList"), nsmap={"rs": RS})
    for error in errors:
        item = etree.SubElement(listing, q("rs", "RegistryError"))
        item.set("errorCode", error.code)
        item.set("codeContext", error.context)
        item.set("severity", error.severity.value)
        if error.location:
            item.set("location", error.location)
    return listing


def registry_response(status: ResponseStatus, errors: Iterable[RegistryError] = ()) -> Element:
    """rs:RegistryResponse with its status and, when any, the RegistryErrorList."""
    response = etree.Element(q("rs", "RegistryResponse"), nsmap={"rs": RS})
    response.set("status", status.value)
    listing = error_list(errors)
    if listing is not None:
        response.append(listing)
    return response
