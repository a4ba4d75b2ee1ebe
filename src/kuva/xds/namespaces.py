"""XML namespaces and WS-Addressing actions of the XDS transactions (ITI TF-2a/2b, RAD TF-3)."""

from __future__ import annotations

SOAP = "http://www.w3.org/2003/05/soap-envelope"  # SOAP 1.2
WSA = "http://www.w3.org/2005/08/addressing"
XOP = "http://www.w3.org/2004/08/xop/include"
RIM = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"
RS = "urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0"
LCM = "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0"
QUERY = "urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0"
XDSB = "urn:ihe:iti:xds-b:2007"
XDSIB = "urn:ihe:rad:xdsi-b:2009"

NSMAP = {
    "soap": SOAP,
    "wsa": WSA,
    "xop": XOP,
    "rim": RIM,
    "rs": RS,
    "lcm": LCM,
    "query": QUERY,
    "xdsb": XDSB,
    "xdsi": XDSIB,
}


def q(prefix: str, local: str) -> str:
    """Clark notation ``{namespace}local`` for lxml, from a prefix of NSMAP."""
    return f"{{{NSMAP[prefix]}}}{local}"


# WS-Addressing actions, request -> response (ITI TF-2a 3.18.5, 3.42.5; TF-2b 3.41.5,
# 3.43.5; RAD TF-3 4.69.4).
REGISTRY_STORED_QUERY = "urn:ihe:iti:2007:RegistryStoredQuery"
REGISTER_DOCUMENT_SET = "urn:ihe:iti:2007:RegisterDocumentSet-b"
PROVIDE_AND_REGISTER = "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"
RETRIEVE_DOCUMENT_SET = "urn:ihe:iti:2007:RetrieveDocumentSet"
RETRIEVE_IMAGING_DOCUMENT_SET = "urn:ihe:rad:2009:RetrieveImagingDocumentSet"

RESPONSE_ACTIONS = {
    REGISTRY_STORED_QUERY: "urn:ihe:iti:2007:RegistryStoredQueryResponse",
    REGISTER_DOCUMENT_SET: "urn:ihe:iti:2007:RegisterDocumentSet-bResponse",
    PROVIDE_AND_REGISTER: "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-bResponse",
    RETRIEVE_DOCUMENT_SET: "urn:ihe:iti:2007:RetrieveDocumentSetResponse",
    RETRIEVE_IMAGING_DOCUMENT_SET: "urn:ihe:rad:2009:RetrieveImagingDocumentSetResponse",
}
